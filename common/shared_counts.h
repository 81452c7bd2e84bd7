// Counts of admissions shared between the replicas of a gateway cluster
// (per-tunnel requests per minute). The front door's limiter asks and
// tells; the cluster directory (server/cluster_directory.h) moves the
// numbers through Redis on its heartbeat, so neither call ever waits on the
// network.
//
// Threads: any; implementations take a short lock at most.
#ifndef TUNNEL_COMMON_SHARED_COUNTS_H_
#define TUNNEL_COMMON_SHARED_COUNTS_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace tunnel::common {

class SharedCounts {
 public:
  virtual ~SharedCounts() = default;
  // What the other replicas admitted for `key` in the wall-clock minute
  // `minute` (unix seconds / 60), as of the last exchange.
  virtual int64_t Others(absl::string_view key, int64_t minute) = 0;
  // This replica admitted `delta` more (negative: took some back).
  virtual void Add(absl::string_view key, int64_t minute, int64_t delta) = 0;
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_SHARED_COUNTS_H_
