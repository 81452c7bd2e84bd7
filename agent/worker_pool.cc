#include "agent/worker_pool.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace tunnel::agent {
namespace {

// The pool whose task runs on this thread, while it counts in running_.
thread_local WorkerPool* t_counted_in = nullptr;

size_t DefaultEager() {
  return std::max<size_t>(4, 2 * std::thread::hardware_concurrency());
}

}  // namespace

WorkerPool::WorkerPool(size_t max_threads, absl::Duration idle_exit,
                       size_t eager_threads, absl::Duration max_queue_wait)
    : max_threads_(max_threads == 0 ? 1 : max_threads),
      idle_exit_(idle_exit),
      eager_threads_(eager_threads == 0 ? DefaultEager() : eager_threads),
      max_queue_wait_(max_queue_wait) {}

WorkerPool::~WorkerPool() {
  std::vector<std::thread> exited;
  std::thread watchdog;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;  // every queued task is startable now
    GrowLocked();
    auto all_gone = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return threads_ == 0;
    };
    mu_.Await(absl::Condition(&all_gone));
    exited.swap(exited_);
    watchdog.swap(watchdog_);
  }
  for (std::thread& t : exited) t.join();
  if (watchdog.joinable()) watchdog.join();
}

size_t WorkerPool::StartableLocked() const {
  if (stopping_ || max_queue_wait_ <= absl::ZeroDuration()) {
    return tasks_.size();
  }
  size_t eager = running_ < eager_threads_ ? eager_threads_ - running_ : 0;
  return std::min(tasks_.size(), released_ + eager);
}

void WorkerPool::GrowLocked() {
  while (idle_ < StartableLocked() && threads_ < max_threads_) {
    ++threads_;
    ++idle_;  // counted as parked until it looks at the queue
    std::thread t([this] { Loop(); });
    live_.emplace(t.get_id(), std::move(t));
  }
}

void WorkerPool::Submit(std::function<void()> task) {
  std::vector<std::thread> exited;
  {
    absl::MutexLock lock(&mu_);
    tasks_.push_back({std::move(task), absl::Now()});
    GrowLocked();
    if (tasks_.size() > StartableLocked() && !watchdog_.joinable()) {
      // Never with max_queue_wait 0: every task is startable then.
      watchdog_ = std::thread([this] { Watch(); });
    }
    exited.swap(exited_);
  }
  for (std::thread& t : exited) t.join();
}

void WorkerPool::LongRunning() {
  WorkerPool* pool = t_counted_in;
  if (pool == nullptr) return;
  t_counted_in = nullptr;
  absl::MutexLock lock(&pool->mu_);
  --pool->running_;
  pool->GrowLocked();  // a queued task may start now
}

size_t WorkerPool::threads() const {
  absl::MutexLock lock(&mu_);
  return threads_;
}

size_t WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return tasks_.size();
}

void WorkerPool::Loop() {
  absl::MutexLock lock(&mu_);
  // idle_ was counted for us by GrowLocked.
  while (true) {
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return StartableLocked() > 0 || stopping_;
    };
    bool woke = mu_.AwaitWithTimeout(absl::Condition(&ready), idle_exit_);
    --idle_;
    if (StartableLocked() == 0) {
      if (stopping_ || !woke) break;
      ++idle_;
      continue;
    }
    // Run tasks back to back while any are queued: this thread is awake
    // already, so the eager limit does not apply to it.
    do {
      std::function<void()> task = std::move(tasks_.front().run);
      tasks_.pop_front();
      if (released_ > 0) --released_;
      ++running_;
      t_counted_in = this;
      mu_.Unlock();
      task();
      task = nullptr;
      mu_.Lock();
      if (t_counted_in == this) --running_;
      t_counted_in = nullptr;
    } while (!tasks_.empty());
    ++idle_;
  }
  --threads_;
  auto self = live_.find(std::this_thread::get_id());
  exited_.push_back(std::move(self->second));
  live_.erase(self);
}

void WorkerPool::Watch() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    auto waiting = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return stopping_ || tasks_.size() > StartableLocked();
    };
    mu_.Await(absl::Condition(&waiting));
    if (stopping_) break;
    // Sleep until the oldest task nobody may start yet is due.
    absl::Time due = tasks_[released_].queued_at + max_queue_wait_;
    auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithDeadline(absl::Condition(&stop), due);
    absl::Time now = absl::Now();
    while (released_ < tasks_.size() &&
           tasks_[released_].queued_at + max_queue_wait_ <= now) {
      ++released_;
    }
    GrowLocked();
  }
}

}  // namespace tunnel::agent
