// Maps a public request to a tunnel: by subdomain (<slug>.<domain>, from the
// Host header) or by path (/t/<slug>/rest -> /rest). Pure functions.
#ifndef TUNNEL_HTTPFRONT_ROUTING_H_
#define TUNNEL_HTTPFRONT_ROUTING_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::httpfront {

struct Route {
  std::string slug;
  // Request target (path and query, raw) the local service should see.
  std::string target;
  // "/t/<slug>" for path routing (sent as X-Forwarded-Prefix), else "".
  std::string prefix;
  // Path routing named the tunnel without the slash after it ("/t/<slug>",
  // "/t/<slug>?q"): relative links would resolve outside the tunnel.
  bool missing_slash = false;
};

// Host without port, lowercased; handles "[v6]:port".
std::string HostWithoutPort(absl::string_view host);

// Subdomain routing wins when Host is exactly one label under `domain`;
// otherwise a target starting with /t/<slug> routes by path ("/t/<slug>"
// alone and "/t/<slug>?q" map to "/" and "/?q"). nullopt: no tunnel named.
std::optional<Route> ResolveRoute(absl::string_view host,
                                  absl::string_view target,
                                  absl::string_view domain);

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_ROUTING_H_
