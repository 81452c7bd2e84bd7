// The eventfd that wakes one of the agent's loop threads (OriginLoop,
// UpgradeLoop), shared with the callbacks that may outlive the loop
// (Outbox::OnRoom's): closed when the last holder lets go.
#ifndef TUNNEL_AGENT_LOOP_WAKEUP_H_
#define TUNNEL_AGENT_LOOP_WAKEUP_H_

#include <atomic>
#include <cstddef>
#include <memory>

#include "common/outbox.h"

namespace tunnel::agent {

struct LoopWakeup {
  LoopWakeup();
  ~LoopWakeup();
  LoopWakeup(const LoopWakeup&) = delete;
  LoopWakeup& operator=(const LoopWakeup&) = delete;

  // One event for the loop, which has `fd` in its epoll set with
  // common::kWakeFdEvents (edge-triggered: it never reads `fd`).
  void Wake() const;
  // Makes `outbox` set `room` and wake the loop once no more than
  // `max_bytes` are queued in it.
  static void AskRoom(const std::shared_ptr<LoopWakeup>& w,
                      common::Outbox* outbox, size_t max_bytes);

  const int fd;
  std::atomic<bool> room{false};  // an outbox has room again
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_LOOP_WAKEUP_H_
