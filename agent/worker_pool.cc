#include "agent/worker_pool.h"

namespace tunnel::agent {

WorkerPool::WorkerPool(size_t max_threads, absl::Duration idle_exit)
    : max_threads_(max_threads == 0 ? 1 : max_threads), idle_exit_(idle_exit) {}

WorkerPool::~WorkerPool() {
  std::vector<std::thread> exited;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    auto all_gone = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return threads_ == 0;
    };
    mu_.Await(absl::Condition(&all_gone));
    exited.swap(exited_);
  }
  for (std::thread& t : exited) t.join();
}

void WorkerPool::Submit(std::function<void()> task) {
  std::vector<std::thread> exited;
  {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
    if (idle_ < tasks_.size() && threads_ < max_threads_) {
      ++threads_;
      std::thread t([this] { Loop(); });
      live_.emplace(t.get_id(), std::move(t));
    }
    exited.swap(exited_);
  }
  for (std::thread& t : exited) t.join();
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
  while (true) {
    ++idle_;
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !tasks_.empty() || stopping_;
    };
    bool woke = mu_.AwaitWithTimeout(absl::Condition(&ready), idle_exit_);
    --idle_;
    if (tasks_.empty()) {
      if (stopping_ || !woke) break;
      continue;
    }
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    mu_.Unlock();
    task();
    task = nullptr;
    mu_.Lock();
  }
  --threads_;
  auto self = live_.find(std::this_thread::get_id());
  exited_.push_back(std::move(self->second));
  live_.erase(self);
}

}  // namespace tunnel::agent
