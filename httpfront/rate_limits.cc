#include "httpfront/rate_limits.h"

#include <algorithm>

namespace tunnel::httpfront {
namespace {

constexpr absl::Duration kWindow = absl::Minutes(1);

}  // namespace

int64_t CeilSeconds(absl::Duration d) {
  return std::max<int64_t>(
      1, absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1))));
}

RateLimiter::Decision RateLimiter::Acquire(absl::string_view key,
                                           absl::Time now) {
  Decision d;
  d.limit = options_.per_minute;
  absl::MutexLock lock(&mu_);
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    if (keys_.size() >= options_.capacity) EvictLocked(now);
    it = keys_.try_emplace(std::string(key)).first;
    it->second.key = std::string(key);
    it->second.start = now;
  }
  Slot& s = it->second;
  common::SharedCounts* shared = options_.shared;
  if (shared != nullptr) {
    // The wall-clock minute: the same window on every replica.
    const int64_t minute = absl::ToUnixSeconds(now) / 60;
    if (minute != s.minute || s.count < 0) {
      s.minute = minute;
      s.start = absl::FromUnixSeconds(minute * 60);
      s.count = 0;
    }
  } else if (now >= s.start + kWindow) {
    s.start = now;
    s.count = 0;
  }
  const int64_t others =
      shared != nullptr && options_.per_minute > 0
          ? std::max<int64_t>(0, shared->Others(key, s.minute))
          : 0;
  d.reset = s.start + kWindow - now;
  d.confirmed = s.confirmed.load(std::memory_order_relaxed);
  if (options_.per_minute > 0 && s.count + others >= options_.per_minute) {
    d.verdict = Verdict::kRateLimited;
  } else if (options_.concurrent > 0 &&
             s.in_flight.load(std::memory_order_relaxed) >=
                 options_.concurrent) {
    d.verdict = Verdict::kConcurrencyLimited;
  } else {
    ++s.count;
    s.in_flight.fetch_add(1, std::memory_order_relaxed);
    d.slot = &s;
    if (shared != nullptr && options_.per_minute > 0) {
      shared->Add(key, s.minute, 1);
    }
  }
  d.remaining =
      options_.per_minute > 0
          ? std::max<int64_t>(0, options_.per_minute - s.count - others)
          : 0;
  if (d.verdict != Verdict::kAllowed && s.count == 0 &&
      s.in_flight.load(std::memory_order_acquire) == 0 && !d.confirmed) {
    keys_.erase(it);  // refused on arrival: nothing worth remembering
  }
  return d;
}

void RateLimiter::MarkConfirmed(Slot* slot) {
  slot->confirmed.store(true, std::memory_order_relaxed);
}

void RateLimiter::Release(Slot* slot, bool counted) {
  if (counted) {
    // After this the key may be evicted: `slot` is not touched again.
    // Release pairs with the acquire loads of whoever then frees it.
    slot->in_flight.fetch_sub(1, std::memory_order_release);
    return;
  }
  absl::MutexLock lock(&mu_);
  slot->in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (slot->count > 0) {
    --slot->count;
    if (options_.shared != nullptr && options_.per_minute > 0) {
      options_.shared->Add(slot->key, slot->minute, -1);
    }
  }
  if (slot->count == 0 &&
      slot->in_flight.load(std::memory_order_relaxed) == 0 &&
      !slot->confirmed.load(std::memory_order_relaxed)) {
    const std::string key = slot->key;  // erase destroys *slot
    keys_.erase(key);
  }
}

size_t RateLimiter::size() const {
  absl::MutexLock lock(&mu_);
  return keys_.size();
}

void RateLimiter::EvictLocked(absl::Time now) {
  for (auto it = keys_.begin(); it != keys_.end();) {
    if (it->second.in_flight.load(std::memory_order_acquire) == 0 &&
        now >= it->second.start + kWindow) {
      keys_.erase(it++);
    } else {
      ++it;
    }
  }
  if (keys_.size() < options_.capacity) return;
  auto oldest = keys_.end();
  for (auto it = keys_.begin(); it != keys_.end(); ++it) {
    if (it->second.in_flight.load(std::memory_order_acquire) == 0 &&
        (oldest == keys_.end() || it->second.start < oldest->second.start)) {
      oldest = it;
    }
  }
  if (oldest != keys_.end()) keys_.erase(oldest);
}

}  // namespace tunnel::httpfront
