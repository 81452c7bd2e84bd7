#include "server/tunnel_activity.h"

namespace tunnel::server {
namespace {

uint64_t MinuteOf(absl::Time t) {
  int64_t m = absl::ToUnixSeconds(t) / 60;
  return m < 0 ? 0 : static_cast<uint64_t>(m) & 0xffffffffu;
}

}  // namespace

void TunnelActivity::Record(absl::Time now) {
  const uint64_t minute = MinuteOf(now);
  std::atomic<uint64_t>& slot = slots_[minute % kMinutes];
  uint64_t seen = slot.load(std::memory_order_relaxed);
  uint64_t next;
  do {
    if ((seen >> 32) == minute) {
      // Saturate rather than carry into the minute.
      if ((seen & 0xffffffffu) == 0xffffffffu) return;
      next = seen + 1;
    } else if ((seen >> 32) > minute) {
      return;  // a newer minute already owns the slot (clock went back)
    } else {
      next = (minute << 32) | 1;
    }
  } while (!slot.compare_exchange_weak(seen, next, std::memory_order_relaxed));
}

uint64_t TunnelActivity::RequestsInLastHour(absl::Time now) const {
  const uint64_t minute = MinuteOf(now);
  uint64_t total = 0;
  for (const auto& slot : slots_) {
    uint64_t v = slot.load(std::memory_order_relaxed);
    uint64_t m = v >> 32;
    if (m <= minute && minute - m < kMinutes) total += v & 0xffffffffu;
  }
  return total;
}

}  // namespace tunnel::server
