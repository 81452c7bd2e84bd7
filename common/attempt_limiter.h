// A bounded table of failures per key, for rate limits on guessing.
#ifndef TUNNEL_COMMON_ATTEMPT_LIMITER_H_
#define TUNNEL_COMMON_ATTEMPT_LIMITER_H_

#include <cstddef>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnel::common {

// Failures per key in fixed one-minute windows: wrong visitor access codes
// per (client IP, slug) in the front door, failed agent authentications per
// source IP in the gRPC service.
// Memory is bounded: at `capacity` keys, expired windows are dropped first,
// then the oldest. Thread-safe.
class AttemptLimiter {
 public:
  AttemptLimiter(int per_minute, size_t capacity = 10000);
  // Zero if `key` may try now, else how long until it may.
  absl::Duration Blocked(const std::string& key, absl::Time now);
  // Records one failure (a wrong code, a refused authentication).
  void Failed(const std::string& key, absl::Time now);
  size_t size() const;

 private:
  struct Window {
    absl::Time start;
    int failures = 0;
  };
  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const int per_minute_;
  const size_t capacity_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Window> windows_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ATTEMPT_LIMITER_H_
