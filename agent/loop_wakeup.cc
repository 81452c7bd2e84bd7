#include "agent/loop_wakeup.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace tunnel::agent {

LoopWakeup::LoopWakeup() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

LoopWakeup::~LoopWakeup() { close(fd); }

void LoopWakeup::Wake() const {
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}

void LoopWakeup::Drain() const {
  uint64_t count;
  (void)!read(fd, &count, sizeof(count));
}

void LoopWakeup::AskRoom(const std::shared_ptr<LoopWakeup>& w,
                         common::Outbox* outbox, size_t max_bytes) {
  outbox->OnRoom(max_bytes, [w] {
    w->room.store(true, std::memory_order_release);
    w->Wake();
  });
}

}  // namespace tunnel::agent
