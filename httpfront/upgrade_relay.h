// The upgrade relay: after the service answered an Upgrade request with 101
// (a WebSocket, a dev server's hot reload), raw bytes flow both ways between
// the visitor's connection and the stream. The gateway never parses them.
//
// Threads: the request's fiber relays visitor → service, a second fiber of
// the same loop service → visitor; both yield while they wait, so a quiet
// upgraded connection costs no thread.
#ifndef TUNNEL_HTTPFRONT_UPGRADE_RELAY_H_
#define TUNNEL_HTTPFRONT_UPGRADE_RELAY_H_

#include <string>

#include "absl/time/time.h"
#include "httpfront/request_record.h"
#include "server/tunnel_router.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::httpfront {

struct UpgradeOptions {
  // A direction that moves no byte this long closes the connection.
  absl::Duration idle_timeout = absl::Hours(1);
  // Writing the 101 to the visitor.
  absl::Duration write_timeout = absl::Seconds(60);
  std::string request_id;  // sent as X-Request-Id with the 101
};

// Takes the calling fiber's connection over (FrontServer::Hijack…), writes
// the service's 101 `resp` to the visitor, then relays until both
// directions ended (a half-close is carried), either failed, or one idled
// past the timeout. Counts the bytes in `record`; marks it cut if the
// relay could not start.
void RelayUpgrade(server::TunnelStream& stream,
                  const tunnel::v1::TunnelResponse& resp, RequestRecord* record,
                  const UpgradeOptions& options);

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_UPGRADE_RELAY_H_
