#include "agent/upgrade_loop.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/envelopes.h"
#include "common/flow_control.h"
#include "common/wake_fd.h"

namespace tunnel::agent {

using tunnel::v1::TunnelClose;

namespace {

constexpr size_t kReadBytes = 64 * 1024;
constexpr int kMaxEvents = 64;

}  // namespace

struct UpgradeLoop::Relay {
  std::shared_ptr<AgentStream> s;
  OriginSession session;
  int fd = -1;
  // Service -> gateway.
  std::string pending;       // read, waiting for credit or room
  bool service_eof = false;  // read 0: the end follows the pending bytes
  bool end_sent = false;
  // Gateway -> service.
  std::string out;  // the chunk being written
  size_t out_off = 0;
  bool visitor_end = false;  // `out` is the last chunk: then SHUT_WR
  bool shut_wr = false;
  uint32_t events = 0;  // epoll interest (0: not registered)
  absl::Time last_moved;
};

UpgradeLoop::UpgradeLoop(absl::Duration idle_timeout)
    : idle_timeout_(idle_timeout) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = common::kWakeFdEvents;
  ev.data.fd = wakeup_->fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wakeup_->fd, &ev);
  thread_ = std::thread([this] { Run(); });
}

UpgradeLoop::~UpgradeLoop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  wakeup_->Wake();
  thread_.join();
  close(epoll_fd_);
}

void UpgradeLoop::Start(std::shared_ptr<AgentStream> s, OriginSession session,
                        int fd, std::string early) {
  Post(Command{Op::kStart, std::move(s), std::move(session), fd,
               std::move(early)});
}

void UpgradeLoop::Wake(std::shared_ptr<AgentStream> s) {
  Post(Command{Op::kWake, std::move(s), {}, -1, {}});
}

void UpgradeLoop::Cancel(std::shared_ptr<AgentStream> s) {
  Post(Command{Op::kCancel, std::move(s), {}, -1, {}});
}

void UpgradeLoop::Post(Command c) {
  bool first;
  {
    absl::MutexLock lock(&mu_);
    first = commands_.empty();
    commands_.push_back(std::move(c));
  }
  if (first) wakeup_->Wake();  // the loop takes all commands at once
}

// Closes a connection's socket once no Cancel can still shut it down.
static void CloseRaw(AgentStream& s, int fd) {
  {
    absl::MutexLock lock(&s.mu);
    s.raw_fd = -1;
  }
  close(fd);
}

void UpgradeLoop::Run() {
  std::vector<Command> commands;
  epoll_event events[kMaxEvents];
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      commands.swap(commands_);
    }
    for (Command& c : commands) {
      if (c.op == Op::kStart) {
        Begin(std::move(c));
        continue;
      }
      auto it = relays_.find(c.stream.get());
      if (it == relays_.end()) continue;  // over already, or not started
      if (c.op == Op::kWake) {
        Pump(it->second.get());
      } else {
        End(it->second.get());  // cancelled: the gateway needs no word
      }
    }
    commands.clear();
    if (wakeup_->room.exchange(false, std::memory_order_acq_rel)) {
      // Some outbox has room: whoever waited tries again.
      room_asked_.clear();
      std::vector<Relay*> waiting;
      for (auto& [stream, r] : relays_) {
        if (!r->pending.empty()) waiting.push_back(r.get());
      }
      for (Relay* r : waiting) Pump(r);
    }
    // Connections with no byte either way for idle_timeout end.
    const absl::Time now = absl::Now();
    absl::Time next = absl::InfiniteFuture();
    std::vector<Relay*> idle;
    for (auto& [stream, r] : relays_) {
      const absl::Time deadline = r->last_moved + idle_timeout_;
      if (deadline <= now) {
        idle.push_back(r.get());
      } else {
        next = std::min(next, deadline);
      }
    }
    for (Relay* r : idle) {
      Fail(r, absl::StrCat("the upgraded connection was idle for ",
                           absl::FormatDuration(idle_timeout_)));
    }
    // Each session's writer once per round.
    for (auto& [outbox, keep] : touched_) outbox->WakeWriter();
    touched_.clear();
    const int wait_ms = next == absl::InfiniteFuture()
                            ? -1
                            : static_cast<int>(std::max<int64_t>(
                                  0, absl::ToInt64Milliseconds(absl::Ceil(
                                         next - now, absl::Milliseconds(1)))));
    const int n = epoll_wait(epoll_fd_, events, kMaxEvents, wait_ms);
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wakeup_->fd) continue;  // a wake-up: nothing to read
      auto it = by_fd_.find(fd);
      if (it != by_fd_.end()) Pump(it->second);
    }
  }
  // Stopping: close every connection without telling sessions (gone).
  for (auto& [stream, r] : relays_) CloseRaw(*r->s, r->fd);
  relays_.clear();
  absl::MutexLock lock(&mu_);
  for (Command& c : commands_) {
    if (c.op == Op::kStart) CloseRaw(*c.stream, c.fd);
  }
  commands_.clear();
}

void UpgradeLoop::Begin(Command c) {
  const int flags = fcntl(c.fd, F_GETFL);
  fcntl(c.fd, F_SETFL, flags | O_NONBLOCK);
  auto owned = std::make_unique<Relay>();
  Relay* r = owned.get();
  r->s = std::move(c.stream);
  r->session = std::move(c.session);
  r->fd = c.fd;
  r->pending = std::move(c.early);
  if (r->s->capture != nullptr) {
    r->s->capture->CountUpgradeBytes(0, r->pending.size());
  }
  r->last_moved = absl::Now();
  by_fd_[r->fd] = r;
  relays_[r->s.get()] = std::move(owned);
  size_.store(relays_.size(), std::memory_order_relaxed);
  Pump(r);
}

void UpgradeLoop::Pump(Relay* r) {
  if (!r->s->channel.status().ok()) {  // cancelled, or failed before
    End(r);
    return;
  }
  if (!FromService(r) || !ToService(r)) return;  // ended
  if (r->end_sent && r->shut_wr) {
    End(r);  // both sides are done
    return;
  }
  Watch(r);
}

bool UpgradeLoop::FromService(Relay* r) {
  char buf[kReadBytes];
  while (Flush(r)) {
    if (r->service_eof) {
      if (!r->end_sent) {
        r->session.outbox->PushData(r->s->id, "", true);  // half-close
        r->end_sent = true;
        Touch(r);
      }
      return true;
    }
    const ssize_t n = recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      r->pending.assign(buf, static_cast<size_t>(n));
      r->last_moved = absl::Now();
      if (r->s->capture != nullptr) {
        r->s->capture->CountUpgradeBytes(0, static_cast<uint64_t>(n));
      }
    } else if (n == 0) {
      r->service_eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return true;
    } else if (errno != EINTR) {
      Fail(r, "the upgraded connection to the local service failed");
      return false;
    }
  }
  return true;  // waiting for credit or room: the socket is not read
}

bool UpgradeLoop::Flush(Relay* r) {
  const OriginSession& session = r->session;
  size_t sent = 0;
  while (sent < r->pending.size()) {
    if (session.outbox->queued_bytes() > session.max_queued_bytes) {
      if (room_asked_.emplace(session.outbox, session.keep).second) {
        LoopWakeup::AskRoom(wakeup_, session.outbox, session.max_queued_bytes);
      }
      break;
    }
    absl::StatusOr<size_t> credit = r->s->channel.AcquireSendCredit(
        std::min<size_t>(r->pending.size() - sent, session.max_chunk),
        absl::InfinitePast());
    if (!credit.ok()) break;  // none now: Wake brings more
    session.outbox->PushData(r->s->id, r->pending.substr(sent, *credit), false);
    sent += *credit;
    Touch(r);
  }
  r->pending.erase(0, sent);
  return r->pending.empty();
}

bool UpgradeLoop::ToService(Relay* r) {
  while (true) {
    while (r->out_off < r->out.size()) {
      const ssize_t n =
          send(r->fd, r->out.data() + r->out_off, r->out.size() - r->out_off,
               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        r->out_off += static_cast<size_t>(n);
        r->last_moved = absl::Now();
        if (r->s->capture != nullptr) {
          r->s->capture->CountUpgradeBytes(static_cast<uint64_t>(n), 0);
        }
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return true;  // EPOLLOUT says when to go on
      } else if (n < 0 && errno != EINTR) {
        Fail(r, "the upgraded connection to the local service failed");
        return false;
      }
    }
    if (r->visitor_end) {
      if (!r->shut_wr) {
        shutdown(r->fd, SHUT_WR);  // the visitor half-closed
        r->shut_wr = true;
      }
      return true;
    }
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> c =
        r->s->channel.PopData(absl::InfinitePast(), &ack);
    if (ack > 0) {
      r->session.outbox->PushControl(common::MakeWindowUpdate(r->s->id, ack));
      Touch(r);
    }
    if (!c.ok()) return true;  // nothing yet (an abort: the next Pump ends)
    r->out = std::move(c->data);
    r->out_off = 0;
    r->visitor_end = c->end;
  }
}

void UpgradeLoop::Watch(Relay* r) {
  uint32_t want = 0;
  if (r->pending.empty() && !r->service_eof) want |= EPOLLIN;
  if (r->out_off < r->out.size()) want |= EPOLLOUT;
  if (want == r->events) return;
  // A socket we wait nothing from is not in the epoll at all: a hang-up
  // would otherwise be reported on every round while it waits for credit.
  epoll_event ev{};
  ev.events = want;
  ev.data.fd = r->fd;
  const int op = r->events == 0 ? EPOLL_CTL_ADD
                 : want == 0    ? EPOLL_CTL_DEL
                                : EPOLL_CTL_MOD;
  epoll_ctl(epoll_fd_, op, r->fd, &ev);
  r->events = want;
}

void UpgradeLoop::Fail(Relay* r, const std::string& message) {
  if (r->s->capture != nullptr) {
    r->s->capture->Finish(Inspector::Outcome::kLocalError, message);
  }
  if (r->s->channel.status().ok()) {
    r->session.outbox->PushControl(
        common::MakeClose(r->s->id, TunnelClose::LOCAL_ERROR, message));
    Touch(r);
  }
  r->s->channel.Abort(absl::AbortedError("upgraded connection ended"));
  End(r);
}

void UpgradeLoop::End(Relay* r) {
  if (r->s->capture != nullptr) {
    // Unless it failed (Fail): both sides closed, or the gateway ended it.
    const bool done = r->end_sent && r->shut_wr;
    r->s->capture->Finish(done ? Inspector::Outcome::kComplete
                               : Inspector::Outcome::kCancelled);
  }
  if (r->events != 0) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, r->fd, nullptr);
  by_fd_.erase(r->fd);
  CloseRaw(*r->s, r->fd);
  Touch(r);  // what it sent last leaves with this round's wake-up
  if (r->session.done) r->session.done(r->s->id);
  relays_.erase(r->s.get());  // destroys *r
  size_.store(relays_.size(), std::memory_order_relaxed);
}

void UpgradeLoop::Touch(Relay* r) {
  touched_.emplace(r->session.outbox, r->session.keep);
}

}  // namespace tunnel::agent
