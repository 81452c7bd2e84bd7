#include "httpfront/event_loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/context/protected_fixedsize_stack.hpp"
#include "common/wake_fd.h"

namespace tunnel::httpfront {

namespace ctx = boost::context;

// Fiber stacks a trim frees per turn of the loop (see TrimIdle).
constexpr size_t kMaxStacksFreedPerTurn = 64;

struct Fiber {
  enum class State {
    kIdle,       // new, or parked in the pool: starts/continues on a task
    kRunning,    // the loop thread is executing it
    kSuspended,  // in a wait
  };

  explicit Fiber(EventLoop* loop)
      : timer([loop, this] { loop->WakeNow(this); }) {}

  ctx::fiber self;    // resumes the fiber (while it is not running)
  ctx::fiber caller;  // resumes the loop (while the fiber runs)
  State state = State::kIdle;
  bool has_stack = false;
  FiberTask* task = nullptr;
  void* context = nullptr;
  uint64_t seq = 0;  // the current wait's number
  WaitKind waiting = WaitKind::kNone;
  bool woken_early = false;  // woken between PrepareWait and Suspend
  bool interrupted = false;
  bool interrupt_pending = false;  // for the next kOther wait
  bool queued = false;             // in ready_
  bool exit = false;               // leave FiberMain when resumed from the pool
  Timer timer;
};

namespace {

thread_local EventLoop* tl_loop = nullptr;

}  // namespace

EventLoop::EventLoop(Options options)
    : options_(options), trim_timer_([this] { TrimIdle(); }) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  event_fd_ = common::NewWakeFd();
  epoll_event ev{};
  ev.events = common::kWakeFdEvents;
  ev.data.ptr = nullptr;  // the eventfd
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev);
}

EventLoop::~EventLoop() {
  ::close(event_fd_);
  ::close(epoll_fd_);
}

EventLoop* EventLoop::Current() { return tl_loop; }

void* EventLoop::CurrentContext() {
  EventLoop* loop = tl_loop;
  if (loop == nullptr || loop->current_ == nullptr) return nullptr;
  return loop->current_->context;
}

absl::Status EventLoop::Add(int fd, IoHandler* h) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = h;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl: ", errno));
  }
  return absl::OkStatus();
}

absl::Status EventLoop::AddListener(int fd, IoHandler* h) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.ptr = h;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl: ", errno));
  }
  return absl::OkStatus();
}

void EventLoop::Remove(int fd) {
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
}

void EventLoop::Post(std::function<void()> fn) {
  bool notify;
  {
    absl::MutexLock lock(&remote_mu_);
    notify = remote_wakes_.empty() && remote_tasks_.empty();
    remote_tasks_.push_back(std::move(fn));
  }
  if (notify) {
    common::SignalWakeFd(event_fd_);
  }
}

void EventLoop::Quit() {
  quitting_ = true;
  // Suspended fibers are their owners' to interrupt; from now on every
  // wait returns at once, so they unwind.
}

// --- timers: an indexed binary min-heap ------------------------------------

void EventLoop::HeapSwap(size_t a, size_t b) {
  std::swap(heap_[a], heap_[b]);
  heap_[a]->index_ = a;
  heap_[b]->index_ = b;
}

void EventLoop::HeapUp(size_t i) {
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (heap_[parent]->when_ <= heap_[i]->when_) break;
    HeapSwap(i, parent);
    i = parent;
  }
}

void EventLoop::HeapDown(size_t i) {
  while (true) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < heap_.size() && heap_[l]->when_ < heap_[m]->when_) m = l;
    if (r < heap_.size() && heap_[r]->when_ < heap_[m]->when_) m = r;
    if (m == i) break;
    HeapSwap(i, m);
    i = m;
  }
}

void EventLoop::Arm(Timer* t, absl::Time when) {
  if (t->armed()) {
    const absl::Time old = t->when_;
    t->when_ = when;
    if (when < old) {
      HeapUp(t->index_);
    } else {
      HeapDown(t->index_);
    }
    return;
  }
  t->when_ = when;
  t->index_ = heap_.size();
  heap_.push_back(t);
  HeapUp(t->index_);
}

void EventLoop::Disarm(Timer* t) {
  if (!t->armed()) return;
  const size_t i = t->index_;
  const size_t last = heap_.size() - 1;
  if (i != last) HeapSwap(i, last);
  heap_.pop_back();
  t->index_ = Timer::kNone;
  if (i < heap_.size()) {
    HeapDown(i);
    HeapUp(i);
  }
}

void EventLoop::ExpireTimers() {
  if (heap_.empty()) return;
  const absl::Time now = absl::Now();
  while (!heap_.empty() && heap_[0]->when_ <= now) {
    Timer* t = heap_[0];
    Disarm(t);
    t->on_expiry_();
  }
}

int EventLoop::NextTimeoutMs() const {
  if (heap_.empty()) return -1;
  const absl::Duration d = heap_[0]->when_ - absl::Now();
  if (d <= absl::ZeroDuration()) return 0;
  // Round up: waking before the deadline would only spin.
  const int64_t ms = absl::ToInt64Milliseconds(
      absl::Ceil(std::min(d, absl::Hours(1)), absl::Milliseconds(1)));
  return static_cast<int>(ms);
}

// --- fibers ------------------------------------------------------------------

Fiber* EventLoop::NewFiber() {
  Fiber* f;
  if (!no_stack_.empty()) {
    f = no_stack_.back();
    no_stack_.pop_back();
  } else {
    fibers_.push_back(std::make_unique<Fiber>(this));
    f = fibers_.back().get();
  }
  try {
    f->self = ctx::fiber(std::allocator_arg,
                         ctx::protected_fixedsize_stack(options_.stack_bytes),
                         [this, f](ctx::fiber&& caller) {
                           f->caller = std::move(caller);
                           FiberMain(f);
                           return std::move(f->caller);
                         });
  } catch (const std::bad_alloc&) {
    no_stack_.push_back(f);
    return nullptr;
  }
  f->has_stack = true;
  f->state = Fiber::State::kIdle;
  f->exit = false;
  ++fibers_with_stack_;
  return f;
}

bool EventLoop::Spawn(FiberTask* task, void* context) {
  if (quitting_) return false;
  Fiber* f;
  if (!idle_.empty()) {
    f = idle_.back();
    idle_.pop_back();
  } else {
    f = NewFiber();
    if (f == nullptr) return false;
  }
  f->task = task;
  f->context = context;
  ++busy_fibers_;
  peak_busy_ = std::max(peak_busy_, busy_fibers_);
  MakeReady(f);
  return true;
}

void EventLoop::FiberMain(Fiber* f) {
  while (true) {
    if (f->task != nullptr) {
      f->task->RunOnFiber();
      f->task = nullptr;
      f->context = nullptr;
      --busy_fibers_;
    }
    if (quitting_) break;
    f->state = Fiber::State::kIdle;
    idle_.push_back(f);
    if (idle_.size() > options_.min_idle_fibers && !trim_timer_.armed()) {
      Arm(&trim_timer_, absl::Now() + options_.idle_trim_interval);
    }
    SuspendCurrent();
    if (f->exit) break;
  }
}

void EventLoop::TrimIdle() {
  if (trim_keep_ == kNoTrim) {  // a new trim, not the next step of one
    trim_keep_ =
        std::max(options_.min_idle_fibers,
                 peak_busy_ > busy_fibers_ ? peak_busy_ - busy_fibers_ : 0);
    peak_busy_ = busy_fibers_;
  }
  // The longest idle go (idle_ is reused from the back), a bounded number
  // per turn: each unmapping interrupts the process's other cores, and
  // thousands at once would stall this loop's connections.
  const size_t n = std::min(
      idle_.size() > trim_keep_ ? idle_.size() - trim_keep_ : size_t{0},
      kMaxStacksFreedPerTurn);
  std::vector<Fiber*> gone(idle_.begin(),
                           idle_.begin() + static_cast<ptrdiff_t>(n));
  idle_.erase(idle_.begin(), idle_.begin() + static_cast<ptrdiff_t>(n));
  for (Fiber* f : gone) {
    f->exit = true;
    Resume(f);
  }
  if (idle_.size() > trim_keep_) {  // more to free: on the next turn
    Arm(&trim_timer_, absl::Now());
    return;
  }
  trim_keep_ = kNoTrim;
  if (idle_.size() > options_.min_idle_fibers) {
    Arm(&trim_timer_, absl::Now() + options_.idle_trim_interval);
  }
}

void EventLoop::SuspendCurrent() {
  Fiber* f = current_;
  f->caller = std::move(f->caller).resume();
}

void EventLoop::Resume(Fiber* f) {
  f->state = Fiber::State::kRunning;
  current_ = f;
  common::SetCurrentFiberRuntime(this);
  f->self = std::move(f->self).resume();
  common::SetCurrentFiberRuntime(nullptr);
  current_ = nullptr;
  if (!f->self) {  // FiberMain returned: the stack is gone
    f->has_stack = false;
    f->state = Fiber::State::kIdle;
    --fibers_with_stack_;
    no_stack_.push_back(f);
  }
}

void EventLoop::MakeReady(Fiber* f) {
  if (f->queued) return;
  f->queued = true;
  ready_.push_back(f);
}

void EventLoop::RunReady() {
  // Only what is ready now: fibers readied meanwhile wait for the next
  // turn, after I/O and timers had theirs.
  std::vector<Fiber*> batch;
  batch.swap(ready_);
  for (Fiber* f : batch) {
    f->queued = false;
    if (f->state == Fiber::State::kSuspended ||
        (f->state == Fiber::State::kIdle && f->task != nullptr)) {
      Resume(f);
    }
  }
}

common::WakeHandle EventLoop::PrepareWait() {
  Fiber* f = current_;
  ++f->seq;
  f->woken_early = false;
  f->interrupted = false;
  return common::WakeHandle{this, f, f->seq};
}

bool EventLoop::Suspend(absl::Time deadline) {
  Fiber* f = current_;
  if (quitting_) return false;
  if (f->interrupt_pending) {
    f->interrupt_pending = false;
    return false;
  }
  if (f->woken_early) {
    f->woken_early = false;
    return true;
  }
  f->waiting = WaitKind::kOther;
  if (deadline != absl::InfiniteFuture()) Arm(&f->timer, deadline);
  f->state = Fiber::State::kSuspended;
  SuspendCurrent();
  Disarm(&f->timer);
  f->waiting = WaitKind::kNone;
  return !f->interrupted && !quitting_;
}

bool EventLoop::WaitIo(WaitKind kind, absl::Time deadline,
                       bool even_when_stopping) {
  Fiber* f = current_;
  if (quitting_ && !even_when_stopping) return false;
  ++f->seq;
  f->woken_early = false;
  f->interrupted = false;
  f->waiting = kind;
  if (deadline != absl::InfiniteFuture()) Arm(&f->timer, deadline);
  f->state = Fiber::State::kSuspended;
  SuspendCurrent();
  Disarm(&f->timer);
  f->waiting = WaitKind::kNone;
  return !f->interrupted && (even_when_stopping || !quitting_);
}

void EventLoop::SuspendUntilWoken() {
  Fiber* f = current_;
  if (f->woken_early) {
    f->woken_early = false;
    return;
  }
  const uint64_t seq = f->seq;
  while (true) {
    f->waiting = WaitKind::kOther;
    f->state = Fiber::State::kSuspended;
    f->interrupted = false;
    SuspendCurrent();
    f->waiting = WaitKind::kNone;
    // Resumed by an interrupt (it stays pending) or by the wake-up.
    if (!f->interrupted || f->seq != seq) break;
    f->interrupt_pending = true;
  }
}

WaitKind EventLoop::WaitingFor(const Fiber* f) { return f->waiting; }

void EventLoop::ClearInterrupt(Fiber* f) { f->interrupt_pending = false; }

void EventLoop::HandleWake(Fiber* f, uint64_t seq, bool interrupt) {
  if (interrupt) {
    if (f->state == Fiber::State::kSuspended &&
        f->waiting == WaitKind::kOther) {
      f->interrupted = true;
      MakeReady(f);
    } else if (f->state != Fiber::State::kIdle) {
      f->interrupt_pending = true;
    }
    return;
  }
  if (f->seq != seq) return;  // that wait is over
  if (f->state != Fiber::State::kSuspended) {
    // Between PrepareWait and Suspend (it is running): Suspend returns at
    // once.
    if (f->state == Fiber::State::kRunning) f->woken_early = true;
    return;
  }
  MakeReady(f);
}

void EventLoop::WakeNow(Fiber* f) { HandleWake(f, f->seq, false); }

void EventLoop::Interrupt(Fiber* f) { HandleWake(f, f->seq, true); }

void EventLoop::Wake(void* fiber, uint64_t seq) {
  Fiber* f = static_cast<Fiber*>(fiber);
  if (tl_loop == this) {
    HandleWake(f, seq, false);
    return;
  }
  remote_wakeups_.fetch_add(1, std::memory_order_relaxed);
  bool notify;
  {
    absl::MutexLock lock(&remote_mu_);
    // One eventfd write per batch: only the first wake-up after the loop
    // took the queue has to tell it.
    notify = remote_wakes_.empty() && remote_tasks_.empty();
    remote_wakes_.push_back(RemoteWake{f, seq});
  }
  if (notify) {
    eventfd_writes_.fetch_add(1, std::memory_order_relaxed);
    common::SignalWakeFd(event_fd_);
  }
}

void EventLoop::DrainRemote() {
  std::vector<RemoteWake> wakes;
  std::vector<std::function<void()>> tasks;
  {
    absl::MutexLock lock(&remote_mu_);
    wakes.swap(remote_wakes_);
    tasks.swap(remote_tasks_);
  }
  for (const RemoteWake& w : wakes) HandleWake(w.fiber, w.seq, false);
  for (auto& t : tasks) t();
}

void EventLoop::Run() {
  tl_loop = this;
  common::RoundEnd::InstallOnThisThread(&round_end_);
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  while (true) {
    RunReady();
    round_end_.Run();
    if (quitting_ && busy_fibers_ == 0 && ready_.empty()) break;
    const int timeout = ready_.empty() ? NextTimeoutMs() : 0;
    int n = ::epoll_wait(epoll_fd_, events, kMaxEvents, timeout);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {  // the eventfd: nothing to read
        DrainRemote();
        continue;
      }
      static_cast<IoHandler*>(events[i].data.ptr)->OnIo(events[i].events);
    }
    ExpireTimers();
  }
  DrainRemote();
  round_end_.Run();
  Disarm(&trim_timer_);
  common::RoundEnd::InstallOnThisThread(nullptr);
  // Free the pooled stacks: each idle fiber leaves FiberMain.
  std::vector<Fiber*> idle;
  idle.swap(idle_);
  for (Fiber* f : idle) {
    f->exit = true;
    Resume(f);
  }
  tl_loop = nullptr;
}

}  // namespace tunnel::httpfront
