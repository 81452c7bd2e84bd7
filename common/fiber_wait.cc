#include "common/fiber_wait.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace tunnel::common {
namespace {

thread_local FiberRuntime* tl_runtime = nullptr;

}  // namespace

FiberRuntime* CurrentFiberRuntime() { return tl_runtime; }

void SetCurrentFiberRuntime(FiberRuntime* runtime) { tl_runtime = runtime; }

void FiberWaitList::Remove(const WakeHandle& h) {
  auto it = std::find(waiters_.begin(), waiters_.end(), h);
  if (it != waiters_.end()) waiters_.erase(it);
}

bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond,
                       absl::Time deadline, FiberWaitList& waiters) {
  FiberRuntime* runtime = CurrentFiberRuntime();
  if (runtime == nullptr) return mu.AwaitWithDeadline(cond, deadline);
  while (!cond.Eval()) {
    if (absl::Now() >= deadline) return false;
    const WakeHandle h = runtime->PrepareWait();
    waiters.Add(h);
    mu.Unlock();
    // A state change between Unlock and Suspend still reaches us: the
    // handle was registered first, and a wake before Suspend is kept.
    const bool woken = runtime->Suspend(deadline);
    mu.Lock();
    waiters.Remove(h);
    if (!woken) return cond.Eval();
  }
  return true;
}

}  // namespace tunnel::common
