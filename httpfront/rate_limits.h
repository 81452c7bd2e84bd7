// Limits on what visitors may ask of the front door: per key (a tunnel's
// slug, or a client IP), requests (or connections) per minute in fixed
// windows, and how many may be in flight at once.
//
// Threads: every method may be called from any worker thread.
#ifndef TUNNEL_HTTPFRONT_RATE_LIMITS_H_
#define TUNNEL_HTTPFRONT_RATE_LIMITS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/shared_counts.h"

namespace tunnel::httpfront {

// Fixed one-minute windows per key: a key's window starts with its first
// admission after the previous window ended, and admits `per_minute` in it.
// At most `concurrent` admissions per key may be held at once. 0 turns
// either limit off. Refusals use up nothing.
//
// Memory is bounded: at `capacity` keys, keys with nothing in flight whose
// window ended are dropped first, then the one with the oldest window among
// those with nothing in flight (its count starts over). Keys with admissions
// in flight are never dropped, so beyond `capacity` there can only be as many
// keys as there are admissions held.
class RateLimiter {
 public:
  struct Options {
    int64_t per_minute = 0;
    int64_t concurrent = 0;
    size_t capacity = 100000;
    // A gateway cluster's shared counts (must outlive the limiter): then
    // windows are wall-clock minutes, the same on every replica, and a
    // window admits `per_minute` across all of them (what the others
    // admitted as last heard, so a little more when several replicas take
    // a burst at once). Null: counts of this process only.
    common::SharedCounts* shared = nullptr;
  };
  enum class Verdict { kAllowed, kRateLimited, kConcurrencyLimited };

  class Slot;  // one admission in flight; see Acquire
  struct Decision {
    Verdict verdict = Verdict::kAllowed;
    // The per-minute window after this decision (limit 0: no such limit).
    int64_t limit = 0;
    int64_t remaining = 0;
    absl::Duration reset;  // until the window ends (> 0)
    // Whether the key was confirmed (MarkConfirmed) by an earlier admission.
    bool confirmed = false;
    // Set when allowed: hand it back with Release.
    Slot* slot = nullptr;
  };

  explicit RateLimiter(Options options) : options_(options) {}
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // False when both limits are off: Acquire then always allows and holds
  // nothing (callers skip it).
  bool enabled() const {
    return options_.per_minute > 0 || options_.concurrent > 0;
  }
  const Options& options() const { return options_; }

  // Admits one request (connection) for `key` at `now`, or says why not.
  Decision Acquire(absl::string_view key, absl::Time now);
  // Marks the key of a held slot as real (e.g. the router knows the slug).
  // Never blocks.
  static void MarkConfirmed(Slot* slot);
  // Gives a slot back: one atomic decrement, no lock. `counted` false
  // (rare; takes the lock) takes the admission back from the minute's
  // count as well (it never reached anything, e.g. an unknown slug), and
  // drops the key if nothing else is left of it.
  void Release(Slot* slot, bool counted = true);

  size_t size() const;

 private:
  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  // Node-based: a Slot (an entry) stays put while it is in flight.
  absl::node_hash_map<std::string, Slot> keys_ ABSL_GUARDED_BY(mu_);
};

class RateLimiter::Slot {
 private:
  friend class RateLimiter;
  std::string key;
  absl::Time start;    // of the current window
  int64_t minute = 0;  // shared windows: start as a unix minute
  int64_t count = 0;   // guarded by the limiter's mutex
  // Raised under the limiter's mutex; a counted Release lowers it without
  // (the only access after which the slot may go).
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> confirmed{false};
};

// Seconds for Retry-After / X-RateLimit-Reset: `d` rounded up, at least 1.
int64_t CeilSeconds(absl::Duration d);

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_RATE_LIMITS_H_
