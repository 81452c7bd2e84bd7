// Threads for tasks that block (the handshakes of the agent's upgraded
// connections; ordinary requests run on the OriginLoop, upgraded
// connections then on the UpgradeLoop): grows on demand up to
// `max_threads`, and lets threads that sat idle for `idle_exit` go, so an
// idle agent on a small device holds almost none. Tasks beyond max_threads wait
// in FIFO order.
//
// Waking a parked thread costs more than most local requests (a futex wake,
// a context switch, cold caches), so the pool does not start a task at
// once on another thread when `eager_threads` tasks are already running:
// it queues it, and a worker that finishes takes it without parking. Only a
// task that waited `max_queue_wait` (the running ones are slow, or are long
// streams) gets a parked or new thread, from a watchdog thread that exists
// while tasks wait. Fast requests thus run back to back on a few hot
// threads, slow ones still get up to max_threads, at the price of at most
// `max_queue_wait` added delay when more than `eager_threads` run. A task
// that turns out long (a streamed body, an upload, an upgraded connection)
// calls LongRunning() so that it stops counting against eager_threads.
//
// Thread-safe. The destructor runs the queued tasks and waits for them;
// callers must make running tasks finish (cancel their streams) first.
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
  // eager_threads 0: twice the number of CPUs, at least 4.
  explicit WorkerPool(size_t max_threads,
                      absl::Duration idle_exit = absl::Seconds(30),
                      size_t eager_threads = 0,
                      absl::Duration max_queue_wait = absl::Milliseconds(2));
  ~WorkerPool();

  void Submit(std::function<void()> task);
  // From inside a task: it will take long; queued tasks need not wait for
  // it. No effect on other threads or when called twice.
  static void LongRunning();
  size_t threads() const;
  // Tasks waiting for a thread.
  size_t queued() const;

 private:
  struct Task {
    std::function<void()> run;
    absl::Time queued_at;
  };
  void Loop();
  void Watch();
  // Queued tasks a parked thread may start now.
  size_t StartableLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Starts threads while startable tasks outnumber parked threads.
  void GrowLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_threads_;
  const absl::Duration idle_exit_;
  const size_t eager_threads_;
  const absl::Duration max_queue_wait_;
  mutable absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  // The first `released_` queued tasks waited max_queue_wait: any parked
  // thread may start them regardless of eager_threads.
  size_t released_ ABSL_GUARDED_BY(mu_) = 0;
  size_t threads_ ABSL_GUARDED_BY(mu_) = 0;
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_ ABSL_GUARDED_BY(mu_);
  // Threads still in Loop, and threads that left it but are not joined yet
  // (joined by the next Submit or the destructor, never by themselves).
  absl::flat_hash_map<std::thread::id, std::thread> live_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_WORKER_POOL_H_
