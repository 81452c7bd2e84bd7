// Blocking waits that also work on user-space fibers.
//
// The gateway's front door runs each active visitor request on a fiber of an
// event loop (httpfront/event_loop.h): a fiber that waits for the agent must
// give its thread back to the loop instead of parking it. The classes the
// front door waits on (StreamChannel, Outbox) live in common and are shared
// with the agent, whose threads block as before; this header is the seam.
//
// A loop thread installs its FiberRuntime (SetCurrentFiberRuntime) while it
// runs a fiber. A waiter in common then asks CurrentFiberRuntime(): null
// means a plain thread (use the mutex's condition wait); otherwise the fiber
// registers a WakeHandle in the object's FiberWaitList, drops the object's
// lock and suspends. Whoever changes the object's state calls WakeAll() on
// the list (under the object's lock); a plain thread waiting on the same
// object is woken by absl::Mutex as always.
//
// Threads: WakeHandle::Wake and FiberWaitList are called from any thread;
// FiberRuntime's methods only on the loop thread, from the running fiber.
#ifndef TUNNEL_COMMON_FIBER_WAIT_H_
#define TUNNEL_COMMON_FIBER_WAIT_H_

#include <cstdint>

#include "absl/container/inlined_vector.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnel::common {

// Delivers wake-ups to the fibers of one loop. Implementations never block
// (beyond a short internal lock) and may be called under other locks.
class FiberWaker {
 public:
  virtual ~FiberWaker() = default;
  // Resumes `fiber` if it is still in the wait numbered `seq`; a wake for a
  // wait that is over (timed out, woken already) does nothing.
  virtual void Wake(void* fiber, uint64_t seq) = 0;
};

// One wait of one fiber. Copyable; stale handles are harmless.
struct WakeHandle {
  FiberWaker* waker = nullptr;
  void* fiber = nullptr;
  uint64_t seq = 0;

  void Wake() const {
    if (waker != nullptr) waker->Wake(fiber, seq);
  }
  bool operator==(const WakeHandle& o) const {
    return fiber == o.fiber && seq == o.seq;
  }
};

class FiberRuntime {
 public:
  virtual ~FiberRuntime() = default;
  // Starts a new wait of the running fiber: the handle wakes it from
  // Suspend (even if Wake comes before Suspend is reached).
  virtual WakeHandle PrepareWait() = 0;
  // Suspends the running fiber until the handle of the last PrepareWait is
  // woken or `deadline` passes: true. False when the wait was interrupted
  // (the loop is stopping, or the visitor's connection had an event the
  // fiber asked to hear about): the caller should return as it would at
  // its deadline and look at why.
  virtual bool Suspend(absl::Time deadline) = 0;
};

// The fiber runtime of the calling thread's running fiber, or null.
FiberRuntime* CurrentFiberRuntime();
// For loop threads: set while a fiber runs, null otherwise.
void SetCurrentFiberRuntime(FiberRuntime* runtime);

// The fibers waiting on one condition of an object. Guarded by the object's
// mutex (callers hold it for every call).
class FiberWaitList {
 public:
  void Add(const WakeHandle& h) { waiters_.push_back(h); }
  void Remove(const WakeHandle& h);
  // Wakes every registered fiber (each removes itself when it runs).
  void WakeAll() const {
    for (const WakeHandle& h : waiters_) h.Wake();
  }
  bool empty() const { return waiters_.empty(); }

 private:
  absl::InlinedVector<WakeHandle, 1> waiters_;
};

// Waits until `cond` holds or `deadline` passes, with `mu` held on entry and
// on return; true if `cond` holds. A plain thread waits on `mu` (woken by
// absl::Mutex when the state changes); a fiber registers in `waiters` and
// suspends, and returns early (false unless `cond` holds) when interrupted.
bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond,
                       absl::Time deadline, FiberWaitList& waiters)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_FIBER_WAIT_H_
