// Threads for local requests: grows on demand up to `max_threads`, and lets
// threads that sat idle for `idle_exit` go, so an idle agent on a small
// device holds almost none. Tasks beyond max_threads wait in FIFO order.
//
// Thread-safe. The destructor waits for running tasks; callers must make them
// finish (cancel their streams) first.
#ifndef TUNNEL_AGENT_WORKER_POOL_H_
#define TUNNEL_AGENT_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tunnel::agent {

class WorkerPool {
 public:
  explicit WorkerPool(size_t max_threads,
                      absl::Duration idle_exit = absl::Seconds(30));
  ~WorkerPool();

  void Submit(std::function<void()> task);
  size_t threads() const;
  // Tasks waiting for a thread (all max_threads are busy).
  size_t queued() const;

 private:
  void Loop();

  const size_t max_threads_;
  const absl::Duration idle_exit_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  size_t threads_ ABSL_GUARDED_BY(mu_) = 0;
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Threads still in Loop, and threads that left it but are not joined yet
  // (joined by the next Submit or the destructor, never by themselves).
  absl::flat_hash_map<std::thread::id, std::thread> live_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_WORKER_POOL_H_
