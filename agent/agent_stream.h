// One stream on the agent side: a request from the gateway to forward to a
// local service, shared by the session's reader (which feeds it request
// body bytes and credit), and whoever forwards it: the OriginLoop for an
// ordinary request, a worker thread and then the UpgradeLoop for an upgrade.
#ifndef TUNNEL_AGENT_AGENT_STREAM_H_
#define TUNNEL_AGENT_AGENT_STREAM_H_

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/inspector.h"
#include "agent/local_target.h"
#include "common/flow_control.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::agent {

struct AgentStream {
  AgentStream(uint64_t stream_id, tunnel::v1::TunnelRequest h, bool body,
              const LocalTarget* t, uint32_t send_window,
              uint32_t receive_window)
      : id(stream_id),
        head(std::move(h)),
        has_body(body),
        target(t),
        channel(send_window, receive_window) {}

  // Stops the local request (from the reader thread); an OriginLoop
  // transfer is also told by the caller (OriginLoop::Cancel).
  void Cancel(absl::Status why) {
    channel.Abort(std::move(why));
    absl::MutexLock lock(&mu);
    cancelled = true;
    if (raw_fd >= 0) ::shutdown(raw_fd, SHUT_RDWR);
  }
  bool is_cancelled() {
    absl::MutexLock lock(&mu);
    return cancelled;
  }

  const uint64_t id;
  // Without its body (moved into `channel`) and, unless an upgrade, without
  // hop-by-hop fields.
  const tunnel::v1::TunnelRequest head;
  const bool has_body;  // the request has a body (possibly still to come)
  const LocalTarget* const target;
  common::StreamChannel channel;
  absl::Mutex mu;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  int raw_fd ABSL_GUARDED_BY(mu) = -1;  // upgrade streams: the raw socket
  // The inspector's record of it (--inspect), or null; set before the
  // stream is shared, then used by whoever forwards it.
  std::unique_ptr<Inspector::Capture> capture;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_AGENT_STREAM_H_
