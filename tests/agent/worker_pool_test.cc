#include "agent/worker_pool.h"

#include <atomic>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace tunnel::agent {
namespace {

TEST(WorkerPoolTest, RunsUpToMaxThreadsAtOnceAndQueuesTheRest) {
  WorkerPool pool(3);
  absl::Notification release;
  absl::BlockingCounter started(3);
  std::atomic<int> done{0};
  for (int i = 0; i < 5; ++i) {
    pool.Submit([&, i] {
      if (i < 3) started.DecrementCount();
      release.WaitForNotification();
      ++done;
    });
  }
  started.Wait();  // 3 running, 2 queued behind them
  EXPECT_EQ(pool.threads(), 3u);
  EXPECT_EQ(pool.queued(), 2u);
  release.Notify();
  absl::BlockingCounter all(1);
  // Tasks are FIFO beyond the limit: this one runs after the queued ones.
  pool.Submit([&] { all.DecrementCount(); });
  all.Wait();
  EXPECT_EQ(pool.queued(), 0u);
  EXPECT_LE(pool.threads(), 3u);
}

TEST(WorkerPoolTest, ATaskQueuedBehindTheEagerLimitStillGetsAThread) {
  // One eager thread: the second task waits for it, but only until the
  // watchdog gives it its own thread, since the first never finishes here.
  WorkerPool pool(4, absl::Seconds(30), /*eager_threads=*/1,
                  /*max_queue_wait=*/absl::Milliseconds(1));
  absl::Notification release;
  absl::Notification first_running;
  pool.Submit([&] {
    first_running.Notify();
    release.WaitForNotification();
  });
  first_running.WaitForNotification();
  absl::Notification second_ran;
  pool.Submit([&] { second_ran.Notify(); });
  EXPECT_TRUE(second_ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  release.Notify();
}

TEST(WorkerPoolTest, ZeroQueueWaitStartsEveryTaskOnItsOwnThreadAtOnce) {
  // max_queue_wait 0 (the agent's upgrades): the eager limit does not apply.
  WorkerPool pool(8, absl::Seconds(30), /*eager_threads=*/1,
                  /*max_queue_wait=*/absl::ZeroDuration());
  constexpr int kTasks = 5;
  absl::Notification release;
  absl::Notification all_running;
  std::atomic<int> running{0};
  for (int i = 0; i < kTasks; ++i) {
    pool.Submit([&] {
      if (++running == kTasks) all_running.Notify();
      release.WaitForNotification();
    });
  }
  EXPECT_TRUE(all_running.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(pool.queued(), 0u);
  EXPECT_EQ(pool.threads(), static_cast<size_t>(kTasks));
  release.Notify();
}

TEST(WorkerPoolTest, DestructorRunsQueuedTasks) {
  std::atomic<int> done{0};
  {
    WorkerPool pool(1);
    absl::Notification release;
    pool.Submit([&] {
      release.WaitForNotification();
      ++done;
    });
    for (int i = 0; i < 10; ++i) pool.Submit([&] { ++done; });
    release.Notify();
  }
  EXPECT_EQ(done.load(), 11);
}

}  // namespace
}  // namespace tunnel::agent
