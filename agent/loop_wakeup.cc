#include "agent/loop_wakeup.h"

#include <unistd.h>

#include "common/wake_fd.h"

namespace tunnel::agent {

LoopWakeup::LoopWakeup() : fd(common::NewWakeFd()) {}

LoopWakeup::~LoopWakeup() { close(fd); }

void LoopWakeup::Wake() const { common::SignalWakeFd(fd); }

void LoopWakeup::AskRoom(const std::shared_ptr<LoopWakeup>& w,
                         common::Outbox* outbox, size_t max_bytes) {
  outbox->OnRoom(max_bytes, [w] {
    w->room.store(true, std::memory_order_release);
    w->Wake();
  });
}

}  // namespace tunnel::agent
