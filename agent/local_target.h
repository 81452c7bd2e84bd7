// Where a tunnel's traffic goes on the device: parsed --to values.
#ifndef TUNNEL_AGENT_LOCAL_TARGET_H_
#define TUNNEL_AGENT_LOCAL_TARGET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tunnel::agent {

struct LocalTarget {
  std::string name;    // "" for the default tunnel
  std::string slug;    // public slug
  std::string scheme;  // http or https
  std::string host;    // e.g. 127.0.0.1
  int port = 0;
  std::string base_path;  // prefix put before every request path ("" or "/x")
  std::string url;        // as given, for messages
};

// Parses one --to value: "URL" or "NAME=URL", URL being
// http[s]://host[:port][/base]. A bare "host:port" or "port" means http.
absl::StatusOr<LocalTarget> ParseTarget(absl::string_view spec);

// Parses all --to values and assigns slugs: the unnamed tunnel gets
// `base_slug`; a tunnel named NAME gets "NAME-<base_slug>". Fails on
// duplicate names, more than one unnamed tunnel, or a slug breaking the
// rules (common/slug.h), saying what to change.
absl::StatusOr<std::vector<LocalTarget>> ParseTargets(
    const std::vector<std::string>& specs, absl::string_view base_slug);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_LOCAL_TARGET_H_
