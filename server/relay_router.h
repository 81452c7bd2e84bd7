// What the front door sees of the encrypted relay (docs/RELAY.md): browsers
// join a share and send it frames; the hub (server/relay_hub.h) delivers the
// host's frames back through RelayClient. Like TunnelRouter, this keeps
// httpfront free of the gateway core.
#ifndef TUNNEL_SERVER_RELAY_ROUTER_H_
#define TUNNEL_SERVER_RELAY_ROUTER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tunnel::server {

// One browser connection, as the hub sees it (the front door's WebSocket).
// Called from any thread; never blocks.
class RelayClient {
 public:
  virtual ~RelayClient() = default;
  // A binary frame from the agent for the browser.
  virtual void Deliver(std::string frame) = 0;
  // An unencrypted status for the browser: HOST_CONNECTED,
  // HOST_DISCONNECTED.
  virtual void Status(absl::string_view status) = 0;
  // Closes the connection with a WebSocket close `code`, after an ERROR
  // message with `error` (a short code) and `message`.
  virtual void Kick(int code, absl::string_view error,
                    absl::string_view message) = 0;
};

struct RelayCounts {
  int64_t sessions = 0;  // shares hosted
  int64_t clients = 0;   // browsers joined
};

class RelayRouter {
 public:
  virtual ~RelayRouter() = default;
  // A browser joins share `id`: its client id, or NOT_FOUND (no such share
  // is hosted), RESOURCE_EXHAUSTED (clients per share).
  virtual absl::StatusOr<uint64_t> Join(
      const std::string& id, std::shared_ptr<RelayClient> client) = 0;
  virtual void Leave(const std::string& id, uint64_t client) = 0;
  // A browser's frame for the host, waiting until `deadline` for room in
  // the host's send queue.
  enum class Delivery {
    kSent,
    kNoHost,  // the host is away (reconnecting): dropped, as RELAY.md says
    kStuck,   // the host's send queue stayed full until the deadline
  };
  virtual Delivery ToAgent(const std::string& id, uint64_t client,
                           std::string frame, absl::Time deadline) = 0;
  // Frames from hosts dropped because their browser had left.
  virtual uint64_t dropped() const = 0;
  virtual RelayCounts counts() const = 0;
  // Largest frame relayed either way.
  virtual uint32_t max_frame_bytes() const = 0;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_RELAY_ROUTER_H_
