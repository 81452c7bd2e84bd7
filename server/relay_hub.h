// The gateway's part of the end-to-end encrypted relay (docs/RELAY.md):
// which agent session hosts which share, and which browser connections
// (clients) are joined to it. Frames pass through as opaque bytes; the hub
// never sees a key.
//
// Threads: Host/Announce/Unhost and FromAgent run on the agents' gRPC
// threads; Join/Leave/ToAgent on the front door's fibers. One mutex guards
// the table; nothing blocks under it (deliveries and sends happen after it
// is released).
#ifndef TUNNEL_SERVER_RELAY_HUB_H_
#define TUNNEL_SERVER_RELAY_HUB_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/relay_router.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

class Session;

struct RelayHubOptions {
  size_t max_sessions = 10000;         // shares hosted at once
  size_t max_clients_per_session = 8;  // browsers joined to one share
  // Either way. A frame carries at most 64 KiB of body or a 64 KiB request
  // head, plus 69 bytes; below --max-agent-message (at least 128 KiB).
  uint32_t max_frame_bytes = 96 << 10;
};

class RelayHub : public RelayRouter {
 public:
  explicit RelayHub(RelayHubOptions options) : options_(options) {}

  const RelayHubOptions& options() const { return options_; }

  // Handshake: `host` will serve the shares `ids` (checked session ids),
  // from Announce on. A share another agent id hosts is refused
  // (ALREADY_EXISTS), as is one beyond max_sessions (RESOURCE_EXHAUSTED);
  // the agent's own earlier session (a reconnect) is replaced. Nothing
  // changes on failure.
  absl::Status Host(const std::shared_ptr<Session>& host,
                    const std::vector<std::string>& ids);
  // After ConnectAccepted went out: the host learns of the browsers already
  // joined (CLIENT_CONNECTED), and they learn the host is (back) there.
  void Announce(const std::shared_ptr<Session>& host);
  // The host's session is over: its shares end, their browsers get
  // HOST_DISCONNECTED and are closed (4404), unless a newer session of the
  // agent took them over.
  void Unhost(const Session* host);

  // The host sent a frame or an event. Frames for a share it does not host
  // or a client that left are dropped (and counted).
  void FromAgent(const Session* host, tunnel::v1::RelayFrame* f);

  absl::StatusOr<uint64_t> Join(const std::string& id,
                                std::shared_ptr<RelayClient> client) override;
  void Leave(const std::string& id, uint64_t client) override;
  Delivery ToAgent(const std::string& id, uint64_t client, std::string frame,
                   absl::Time deadline) override;
  RelayCounts counts() const override;
  uint32_t max_frame_bytes() const override { return options_.max_frame_bytes; }
  uint64_t dropped() const override {
    return dropped_.load(std::memory_order_relaxed);
  }

 private:
  struct Share {
    std::weak_ptr<Session> host;
    // Announce ran for `host`: until then (its ConnectAccepted is not out
    // yet) nothing may be sent to it, and browsers cannot join.
    bool live = false;
    std::string agent_id;
    absl::flat_hash_map<uint64_t, std::shared_ptr<RelayClient>> clients;
  };
  std::shared_ptr<Session> HostOf(const std::string& id) const;

  const RelayHubOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Share> shares_ ABSL_GUARDED_BY(mu_);
  int64_t clients_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_client_ ABSL_GUARDED_BY(mu_) = 1;
  std::atomic<uint64_t> dropped_{0};
};

// A RelayFrame envelope with an event and no frame.
tunnel::v1::Envelope RelayEvent(const std::string& id, uint64_t client,
                                tunnel::v1::RelayFrame::Event event);

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_RELAY_HUB_H_
