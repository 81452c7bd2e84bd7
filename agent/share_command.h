// `agent-tunnel share`: one local service, end-to-end encrypted between the
// browser and this agent, through a gateway that only relays (docs/RELAY.md).
#ifndef TUNNEL_AGENT_SHARE_COMMAND_H_
#define TUNNEL_AGENT_SHARE_COMMAND_H_

#include <string>

#include "common/relay_protocol.h"

namespace tunnel::agent {

// argv[1] is "share". Returns the exit code (0 stopped, 1 error, 2 usage).
int RunShare(int argc, char** argv);

// The link to open: page_url#session=…&key=… (and &gw=<the gateway's
// WebSocket URL> when the page is not the gateway's own at relay_url).
std::string ShareLink(const std::string& page_url, const std::string& relay_url,
                      const common::relay::ShareSecrets& secrets,
                      bool own_page);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_SHARE_COMMAND_H_
