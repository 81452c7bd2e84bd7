#include "common/attempt_limiter.h"

#include <algorithm>

namespace tunnel::common {

AttemptLimiter::AttemptLimiter(int per_minute, size_t capacity)
    : per_minute_(std::max(1, per_minute)),
      capacity_(std::max<size_t>(1, capacity)) {}

absl::Duration AttemptLimiter::Blocked(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = windows_.find(key);
  if (it == windows_.end()) return absl::ZeroDuration();
  absl::Time end = it->second.start + absl::Minutes(1);
  if (now >= end) {
    windows_.erase(it);
    return absl::ZeroDuration();
  }
  if (it->second.failures < per_minute_) return absl::ZeroDuration();
  return end - now;
}

void AttemptLimiter::Failed(const std::string& key, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = windows_.find(key);
  if (it != windows_.end() && now >= it->second.start + absl::Minutes(1)) {
    windows_.erase(it);
    it = windows_.end();
  }
  if (it == windows_.end()) {
    if (windows_.size() >= capacity_) EvictLocked(now);
    it = windows_.emplace(key, Window{now, 0}).first;
  }
  ++it->second.failures;
}

void AttemptLimiter::EvictLocked(absl::Time now) {
  for (auto it = windows_.begin(); it != windows_.end();) {
    if (now >= it->second.start + absl::Minutes(1)) {
      windows_.erase(it++);
    } else {
      ++it;
    }
  }
  if (windows_.size() < capacity_) return;
  auto oldest = std::min_element(windows_.begin(), windows_.end(),
                                 [](const auto& a, const auto& b) {
                                   return a.second.start < b.second.start;
                                 });
  windows_.erase(oldest);
}

size_t AttemptLimiter::size() const {
  absl::MutexLock lock(&mu_);
  return windows_.size();
}

}  // namespace tunnel::common
