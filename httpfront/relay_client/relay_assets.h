// The encrypted relay's client page (httpfront/relay_client/), built into
// the gateway, which serves it at /relay/, and into the agent, which prints
// its script's hash so a user can check what the gateway serves.
#ifndef TUNNEL_HTTPFRONT_RELAY_CLIENT_RELAY_ASSETS_H_
#define TUNNEL_HTTPFRONT_RELAY_CLIENT_RELAY_ASSETS_H_

#include <string>

#include "absl/strings/string_view.h"

namespace tunnel::httpfront {

// The files as built (cmake/embed.cmake). The page has the placeholder
// {{RELAY_JS_INTEGRITY}} where its script's integrity attribute goes.
absl::string_view RelayIndexHtml();
absl::string_view RelayJs();
absl::string_view RelaySwJs();
absl::string_view RelayCss();

// "sha256-<base64 of SHA-256(relay.js)>": the script's Subresource
// Integrity value.
std::string RelayScriptIntegrity();
// The page with its script's integrity filled in.
std::string RelayIndexPage();

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_RELAY_CLIENT_RELAY_ASSETS_H_
