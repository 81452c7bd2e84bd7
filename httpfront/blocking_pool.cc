#include "httpfront/blocking_pool.h"

#include <atomic>

#include "common/fiber_wait.h"
#include "httpfront/event_loop.h"

namespace tunnel::httpfront {

struct BlockingPool::Job {
  const std::function<void()>* fn;
  common::WakeHandle wake;
  std::atomic<bool> done{false};
};

BlockingPool::BlockingPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] { Work(); });
  }
}

BlockingPool::~BlockingPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : threads_) t.join();
}

void BlockingPool::Run(const std::function<void()>& fn) {
  EventLoop* loop = EventLoop::Current();
  if (loop == nullptr || loop->current() == nullptr) {
    fn();
    return;
  }
  Job job;
  job.fn = &fn;
  job.wake = loop->PrepareWait();
  {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(&job);
  }
  // The job lives on this fiber's stack: wait for it even while the loop
  // stops.
  while (!job.done.load(std::memory_order_acquire)) loop->SuspendUntilWoken();
}

void BlockingPool::Work() {
  while (true) {
    Job* job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || !jobs_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (jobs_.empty()) return;  // stopping, and nothing left
      job = jobs_.front();
      jobs_.pop_front();
    }
    (*job->fn)();
    // The waiter may return (and the job go) as soon as `done` is set.
    const common::WakeHandle wake = job->wake;
    job->done.store(true, std::memory_order_release);
    wake.Wake();
  }
}

}  // namespace tunnel::httpfront
