// One event-loop thread of the front door: an epoll set, a timer heap, and
// user-space fibers (Boost.Context) that run the blocking-looking code of an
// active request while the loop thread serves everything else.
//
// A fiber gives its thread back whenever it waits: for socket readiness
// (WaitIo), for another thread's work (the common::FiberRuntime protocol:
// PrepareWait, then Suspend; a WakeHandle resumes it from any thread), or
// for a deadline. Other threads' wake-ups go through one queue and one
// eventfd write per batch: the first wake-up after the loop drained the
// queue writes the eventfd, the rest only append.
//
// Fibers come from a per-loop pool: a stack is reused by the next request.
// Fibers are made on demand, and the pool keeps as many stacks in all as
// were busy at once lately, so a steady load of any concurrency maps no new
// stacks; a trim timer gives back what a burst left once it is over. A Fiber
// object itself is never freed while the loop lives, so a stale WakeHandle
// (its wait is over) can always be checked and ignored.
//
// Threads: Run() is the loop thread. Wake (WakeHandle) and Post are for any
// thread; everything else only on the loop thread (from the loop or from one
// of its fibers).
#ifndef TUNNEL_HTTPFRONT_EVENT_LOOP_H_
#define TUNNEL_HTTPFRONT_EVENT_LOOP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "boost/context/fiber.hpp"
#include "common/fiber_wait.h"
#include "common/round_end.h"

namespace tunnel::httpfront {

class EventLoop;

// Something in the loop's epoll set.
class IoHandler {
 public:
  virtual ~IoHandler() = default;
  // Loop thread: `events` are epoll's (EPOLLIN, EPOLLOUT, EPOLLRDHUP, …).
  virtual void OnIo(uint32_t events) = 0;
};

// A deadline in a loop's timer heap. The owner embeds it and keeps it alive
// while armed.
class Timer {
 public:
  explicit Timer(std::function<void()> on_expiry)
      : on_expiry_(std::move(on_expiry)) {}
  bool armed() const { return index_ != kNone; }
  absl::Time when() const { return when_; }

 private:
  friend class EventLoop;
  static constexpr size_t kNone = std::numeric_limits<size_t>::max();
  std::function<void()> on_expiry_;
  absl::Time when_;
  size_t index_ = kNone;
};

// Work for a fiber: Run() executes on it and may wait.
class FiberTask {
 public:
  virtual ~FiberTask() = default;
  virtual void RunOnFiber() = 0;
};

// What a fiber waits for (the owner of a socket routes events by it).
enum class WaitKind { kNone, kRead, kWrite, kOther };

struct Fiber;

class EventLoop : public common::FiberRuntime, public common::FiberWaker {
 public:
  struct Options {
    // Usable stack of each fiber (a guard page below it traps overflow).
    size_t stack_bytes = 256 * 1024;
    // Idle fibers (with their stacks) kept for reuse. A trim never frees
    // below `min_idle_fibers` idle. Every `idle_trim_interval` (armed only
    // while more are idle) the pool keeps max(min_idle_fibers, the most busy
    // at once since the last trim - those busy now) idle and frees the rest,
    // at most kMaxStacksFreedPerTurn per loop turn; so a burst's stacks are
    // given back at the second trim after its peak, at least one interval
    // after it ended. (A fixed cap freed and mapped a stack per request once
    // more requests than it were in flight: munmap's TLB shootdowns cost the
    // gateway half again as much CPU per request at 256 connections as at
    // 64.)
    size_t min_idle_fibers = 64;
    absl::Duration idle_trim_interval = absl::Seconds(1);
  };
  explicit EventLoop(Options options);
  ~EventLoop() override;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // The loop thread's body: returns once Quit() was called and no fiber is
  // left running or suspended.
  void Run();
  // Any thread: `fn` runs on the loop thread soon.
  void Post(std::function<void()> fn);
  // Loop thread: Run() returns when every fiber has finished.
  void Quit();

  // The loop of the calling thread (a loop thread or one of its fibers).
  static EventLoop* Current();

  // --- file descriptors (loop thread) ---
  // Edge-triggered EPOLLIN | EPOLLOUT | EPOLLRDHUP for a connection.
  absl::Status Add(int fd, IoHandler* h);
  // Level-triggered EPOLLIN with EPOLLEXCLUSIVE, for a listening socket
  // shared by several loops.
  absl::Status AddListener(int fd, IoHandler* h);
  void Remove(int fd);

  // --- timers (loop thread) ---
  void Arm(Timer* t, absl::Time when);
  void Disarm(Timer* t);

  // --- fibers (loop thread) ---
  // Runs `task` on a fiber (started on the next turn of the loop). `context`
  // is what CurrentContext() returns on it. False when no stack could be
  // had (the process is out of memory or of memory mappings) or the loop
  // is stopping.
  bool Spawn(FiberTask* task, void* context);
  // The running fiber, or null on the loop itself.
  Fiber* current() const { return current_; }
  // The running fiber's context (see Spawn), or null.
  static void* CurrentContext();
  // From a fiber: waits until WakeNow for this wait, an Interrupt, or
  // `deadline`. `kind` tells the owner of a socket what the fiber is
  // waiting for. Returns false if interrupted, or at once once the loop is
  // stopping unless `even_when_stopping` (a fiber that must wait for
  // another one to unwind).
  bool WaitIo(WaitKind kind, absl::Time deadline,
              bool even_when_stopping = false);
  // Loop thread: resumes `f` if it is suspended in any wait (WaitIo or the
  // FiberRuntime protocol), as a wake-up.
  void WakeNow(Fiber* f);
  // Loop thread: ends `f`'s current kOther wait (the FiberRuntime
  // protocol) early: it returns false. If `f` is running or waits for its
  // socket, the interrupt is kept for its next kOther wait, which then
  // returns false at once, until ClearInterrupt.
  void Interrupt(Fiber* f);
  void ClearInterrupt(Fiber* f);
  // From a fiber: waits for the wake-up of the last PrepareWait only; an
  // interrupt or the loop stopping does not end it (the caller waits for
  // work that holds its stack, e.g. on another thread).
  void SuspendUntilWoken();
  // What `f` waits for now (kNone: running or idle).
  static WaitKind WaitingFor(const Fiber* f);

  // Once Quit() was called: every wait returns false at once.
  bool stopping() const { return quitting_; }

  // Fibers that exist now (running, suspended, or idle with a stack).
  size_t fiber_count() const {
    return fibers_with_stack_.load(std::memory_order_relaxed);
  }
  // Wake-ups other threads delivered, and eventfd writes they cost.
  uint64_t remote_wakeups() const {
    return remote_wakeups_.load(std::memory_order_relaxed);
  }
  uint64_t eventfd_writes() const {
    return eventfd_writes_.load(std::memory_order_relaxed);
  }

  // common::FiberRuntime (the running fiber).
  common::WakeHandle PrepareWait() override;
  bool Suspend(absl::Time deadline) override;
  // common::FiberWaker (any thread).
  void Wake(void* fiber, uint64_t seq) override;

 private:
  struct RemoteWake {
    Fiber* fiber;
    uint64_t seq;
  };
  void HandleWake(Fiber* f, uint64_t seq, bool interrupt);
  void MakeReady(Fiber* f);
  void RunReady();
  void Resume(Fiber* f);
  void SuspendCurrent();
  void FiberMain(Fiber* f);
  Fiber* NewFiber();
  void TrimIdle();
  void DrainRemote();
  void ExpireTimers();
  int NextTimeoutMs() const;
  void HeapUp(size_t i);
  void HeapDown(size_t i);
  void HeapSwap(size_t a, size_t b);

  const Options options_;
  int epoll_fd_ = -1;
  int event_fd_ = -1;
  bool quitting_ = false;

  Fiber* current_ = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers_;  // never shrinks
  std::vector<Fiber*> idle_;      // parked in FiberMain, stack kept
  std::vector<Fiber*> no_stack_;  // finished; object reusable
  std::vector<Fiber*> ready_;
  // Work the round's fibers deferred to its end (a session's gRPC write:
  // the round's requests to one agent leave in one message).
  common::RoundEnd round_end_;
  std::atomic<size_t> fibers_with_stack_{0};  // read by scrapes
  size_t busy_fibers_ = 0;  // running or suspended with a task
  size_t peak_busy_ = 0;    // the most busy_fibers_ since the last trim
  Timer trim_timer_;        // armed while more than min_idle_fibers idle
  // A trim's target while it frees in steps (kNoTrim: none in progress).
  static constexpr size_t kNoTrim = std::numeric_limits<size_t>::max();
  size_t trim_keep_ = kNoTrim;

  std::vector<Timer*> heap_;

  absl::Mutex remote_mu_;
  std::vector<RemoteWake> remote_wakes_ ABSL_GUARDED_BY(remote_mu_);
  std::vector<std::function<void()>> remote_tasks_ ABSL_GUARDED_BY(remote_mu_);
  std::atomic<uint64_t> remote_wakeups_{0};
  std::atomic<uint64_t> eventfd_writes_{0};
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_EVENT_LOOP_H_
