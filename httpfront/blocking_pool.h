// A few threads for work too slow for a loop thread (one PBKDF2 of a
// visitor's access code takes tens of milliseconds: on a loop thread it
// would stall every connection of that loop meanwhile).
//
// Threads: Run from any thread; on a front-door fiber it suspends only that
// fiber while the work runs on a pool thread.
#ifndef TUNNEL_HTTPFRONT_BLOCKING_POOL_H_
#define TUNNEL_HTTPFRONT_BLOCKING_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tunnel::httpfront {

class BlockingPool {
 public:
  explicit BlockingPool(int threads);
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  // Runs `fn` and returns when it returned: on a pool thread when called
  // from a fiber of an event loop (the fiber waits, its loop goes on),
  // inline anywhere else.
  void Run(const std::function<void()>& fn);

 private:
  struct Job;
  void Work();

  absl::Mutex mu_;
  std::deque<Job*> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_BLOCKING_POOL_H_
