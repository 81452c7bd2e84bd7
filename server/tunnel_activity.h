// Visitor requests per tunnel over the last hour: a ring of 60 per-minute
// counters, fixed size (480 bytes) whatever the traffic.
//
// Threads: Record from any front-door worker, lock-free (one CAS on one
// word); RequestsInLastHour from any thread. Each slot packs the minute it
// counts (high 32 bits, minutes since the epoch) with its count (low 32
// bits), so a slot is recycled for a new minute and counted in the same
// atomic step and no increment is lost to a reset.
#ifndef TUNNEL_SERVER_TUNNEL_ACTIVITY_H_
#define TUNNEL_SERVER_TUNNEL_ACTIVITY_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/time/time.h"

namespace tunnel::server {

class TunnelActivity {
 public:
  static constexpr int kMinutes = 60;

  void Record(absl::Time now);
  // Requests in the minute of `now` and the 59 before it.
  uint64_t RequestsInLastHour(absl::Time now) const;

 private:
  std::array<std::atomic<uint64_t>, kMinutes> slots_{};
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_TUNNEL_ACTIVITY_H_
