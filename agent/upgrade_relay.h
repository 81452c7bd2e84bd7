// An upgrade request (WebSocket or any HTTP/1.1 Upgrade) to a local service,
// up to the service's answer. Neither cpp-httplib nor libcurl relays a
// generic upgrade, so the agent speaks HTTP/1.1 itself on a raw connection:
// it sends the head and reads the response head. A 101 is sent on towards
// the gateway and the connection handed back for the UpgradeLoop to relay;
// any other answer is relayed here as an ordinary response. Blocking: runs
// on a worker thread, for the handshake only.
#ifndef TUNNEL_AGENT_UPGRADE_RELAY_H_
#define TUNNEL_AGENT_UPGRADE_RELAY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/agent_stream.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::agent {

// What the relay sends towards the gateway for its stream (the session).
class StreamSender {
 public:
  virtual ~StreamSender() = default;
  // A response head (data lane).
  virtual void SendHead(tunnel::v1::Envelope head) = 0;
  // Body bytes against the stream's credit; blocks for credit and room.
  // False when the stream ended or the wait passed its deadline.
  virtual bool SendBody(AgentStream& s, const char* data, size_t n) = 0;
  // The end of the stream's body.
  virtual void SendEnd(uint64_t id) = 0;
  // A window update or another control message.
  virtual void SendControl(tunnel::v1::Envelope e) = 0;
  virtual void SendClose(uint64_t id, tunnel::v1::TunnelClose::Reason reason,
                         absl::string_view message) = 0;
};

// The connection to the service after its 101, and the bytes it sent after
// its head.
struct UpgradedConnection {
  int fd = -1;
  std::string early;
};

// Sends `s`'s upgrade request and relays the answer's head; `timeout`: the
// service silent this long fails it. The connection after a 101 (the head
// sent on already), nullopt when the stream is over (refused, failed,
// cancelled: the gateway has been told).
std::optional<UpgradedConnection> UpgradeHandshake(
    const std::shared_ptr<AgentStream>& s, StreamSender& out,
    absl::Duration timeout);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_UPGRADE_RELAY_H_
