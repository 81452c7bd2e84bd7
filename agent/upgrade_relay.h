// An upgrade request (WebSocket or any HTTP/1.1 Upgrade) relayed to a local
// service. Neither cpp-httplib nor libcurl relays a generic upgrade, so the
// agent speaks HTTP/1.1 itself on a raw connection: it sends the head, reads
// the response head, and after a 101 relays raw bytes both ways (half-close
// carried, against the stream's credit). Any other answer is relayed as an
// ordinary response. Runs on a thread of its own for the connection's life.
#ifndef TUNNEL_AGENT_UPGRADE_RELAY_H_
#define TUNNEL_AGENT_UPGRADE_RELAY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
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

// Relays `s` (an upgrade) until either side ends it; `timeout`: the local
// service or the visitor silent this long ends it.
void RelayUpgrade(const std::shared_ptr<AgentStream>& s, StreamSender& out,
                  absl::Duration timeout);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_UPGRADE_RELAY_H_
