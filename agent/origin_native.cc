// OriginLoop's native HTTP/1.1 client (see origin_loop.h): plain http
// targets at an address or localhost, over keep-alive connections of its
// own, responses parsed by Boost.Beast's parser (agent/response_parser.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/origin_internal.h"
#include "common/envelopes.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "common/socket_io.h"

namespace tunnel::agent {
namespace {

// The addresses to try for `t`, in order.
std::vector<sockaddr_storage> TargetAddresses(const LocalTarget& t) {
  std::vector<std::string> hosts;
  if (t.host == "localhost") {
    hosts = {"127.0.0.1", "::1"};
  } else {
    hosts = {t.host};
  }
  std::vector<sockaddr_storage> out;
  for (const std::string& h : hosts) {
    sockaddr_storage a{};
    auto* a4 = reinterpret_cast<sockaddr_in*>(&a);
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&a);
    if (inet_pton(AF_INET, h.c_str(), &a4->sin_addr) == 1) {
      a4->sin_family = AF_INET;
      a4->sin_port = htons(static_cast<uint16_t>(t.port));
    } else if (inet_pton(AF_INET6, h.c_str(), &a6->sin6_addr) == 1) {
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons(static_cast<uint16_t>(t.port));
    } else {
      continue;
    }
    out.push_back(a);
  }
  return out;
}

// The idle pool a connection to `t` belongs to.
std::string PoolKey(const LocalTarget& t) {
  return absl::StrCat(t.host, ":", t.port);
}

// No byte a request line cannot carry (controls, space, DEL).
bool IsRequestTargetSafe(absl::string_view v) {
  for (unsigned char c : v) {
    if (c <= 0x20 || c == 0x7f) return false;
  }
  return !v.empty();
}

}  // namespace

bool NativeTarget(const LocalTarget& t) {
  return t.scheme == "http" &&
         (t.host == "localhost" || common::IsIpAddress(t.host));
}

bool OriginLoop::BuildRequest(Transfer* t) {
  const AgentStream& s = *t->s;
  const tunnel::v1::TunnelRequest& head = s.head;
  const LocalTarget& target = *s.target;
  const std::string& method = head.method();
  std::string path = target.base_path + head.path();
  if (path.empty() || path[0] != '/') path.insert(0, "/");
  // A hostile gateway must not be able to split the request in two.
  if (!common::IsValidHeaderName(method) || !IsRequestTargetSafe(path)) {
    return false;
  }
  std::string& r = t->request_head;
  size_t room = method.size() + path.size() + 64 + target.host.size();
  room += head.header_block().size() + 2 * head.headers_size();
  for (const tunnel::v1::HeaderField& h : head.headers()) {
    room += h.name().size() + h.value().size() + 4;
  }
  r.clear();
  r.reserve(room);
  absl::StrAppend(&r, method, " ", path, " HTTP/1.1\r\n");
  // Host first (RFC 9110 7.2; and where libcurl puts it): the visitor's, or
  // the target's.
  absl::string_view host;
  if (common::FindField(head, "Host", &host) &&
      common::IsValidHeaderValue(host)) {
    absl::StrAppend(&r, "Host: ", host, "\r\n");
  } else {
    const bool v6 = target.host.find(':') != std::string::npos;
    absl::StrAppend(&r, "Host: ", v6 ? "[" : "", target.host, v6 ? "]" : "",
                    ":", target.port, "\r\n");
  }
  int64_t length = -1;
  common::ForEachField(
      head, [&](absl::string_view name, absl::string_view value) {
        if (!common::IsValidHeaderName(name) ||
            !common::IsValidHeaderValue(value)) {
          return;
        }
        if (absl::EqualsIgnoreCase(name, "Content-Length")) {
          if (s.has_body) {
            // Written below, from the one value it says.
            if (!absl::SimpleAtoi(value, &length)) length = -1;
            return;
          }
        } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding") ||
                   absl::EqualsIgnoreCase(name, "Expect")) {
          // The body's framing is this hop's (and the gateway answered
          // 100-continue already).
          return;
        } else if (absl::EqualsIgnoreCase(name, "Host")) {
          return;  // first, above
        }
        absl::StrAppend(&r, name, ": ", value, "\r\n");
      });
  if (s.has_body) {
    if (length >= 0) {
      absl::StrAppend(&r, "Content-Length: ", length, "\r\n");
    } else {
      r += "Transfer-Encoding: chunked\r\n";
      t->chunked_up = true;
    }
  }
  r += "\r\n";
  return true;
}

void OriginLoop::LaunchNative(Transfer* t) {
  t->native = true;
  if (!BuildRequest(t)) {
    FailSoon(t, false,
             "the request's method or path cannot be sent in HTTP/1.1");
    return;
  }
  t->StartParser();
  const LocalTarget& target = *t->s->target;
  Conn* c = nullptr;
  if (auto it = idle_.find(PoolKey(target));
      it != idle_.end() && !it->second.empty()) {
    c = it->second.back();
    it->second.pop_back();
    --idle_count_;
  } else {
    int err = 0;
    c = OpenConn(target, &err);
    if (c == nullptr) {
      FailSoon(t, true, ConnectWords(err));
      return;
    }
  }
  Attach(c, t);
}

std::string OriginLoop::ConnectWords(int err) {
  if (err == ECONNREFUSED) {
    return "connection refused: nothing listens there, or it is down";
  }
  return absl::StrCat("could not connect: ", std::strerror(err));
}

OriginLoop::Conn* OriginLoop::OpenConn(const LocalTarget& target, int* err) {
  auto owned = std::make_unique<Conn>();
  Conn* c = owned.get();
  c->serial = ++next_serial_;
  c->key = PoolKey(target);
  c->addresses = TargetAddresses(target);
  *err = EADDRNOTAVAIL;
  if (!StartConnect(c, err)) return nullptr;
  conns_[c->serial] = std::move(owned);
  return c;
}

bool OriginLoop::StartConnect(Conn* c, int* err) {
  while (c->address < c->addresses.size()) {
    const sockaddr_storage& a = c->addresses[c->address];
    const int fd =
        ::socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *err = errno;
      return false;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const socklen_t len =
        a.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), len);
    if (rc == 0 || errno == EINPROGRESS) {
      c->fd = fd;
      c->connecting = rc != 0;
      c->events = 0;
      return true;
    }
    *err = errno;
    ::close(fd);
    ++c->address;
  }
  return false;
}

void OriginLoop::Attach(Conn* c, Transfer* t) {
  c->t = t;
  t->conn = c;
  c->out = t->request_head;
  c->out_off = 0;
  c->in.clear();
  if (c->connecting) {
    ArmDeadline(c, absl::Now() + connect_timeout_);
    SetInterest(c);
    return;
  }
  ArmDeadline(c, absl::Now() + local_timeout_);
  WriteConn(c);
}

uint32_t OriginLoop::WantedEvents(const Conn& c) const {
  if (c.t == nullptr) return EPOLLIN;  // idle: the service closing it
  if (c.connecting) return EPOLLOUT;
  uint32_t e = 0;
  if (!c.t->recv_paused) e |= EPOLLIN;
  if (c.out_off < c.out.size()) e |= EPOLLOUT;
  return e;
}

void OriginLoop::SetInterest(Conn* c) {
  const uint32_t want = WantedEvents(*c);
  if (want == c->events) return;
  if (want == 0) {
    // Out of the epoll entirely: a paused connection's hang-up would
    // otherwise be reported again and again.
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  } else {
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = kNativeTag | c->serial;
    epoll_ctl(epoll_fd_, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd,
              &ev);
  }
  c->events = want;
}

void OriginLoop::ArmDeadline(Conn* c, absl::Time when) {
  c->deadline = when;
  if (when < c->queued_at) {
    deadlines_.push({when, c->serial});
    c->queued_at = when;
  }
}

void OriginLoop::ExpireDeadlines() {
  const absl::Time now = absl::Now();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    const auto [at, serial] = deadlines_.top();
    deadlines_.pop();
    auto it = conns_.find(serial);
    if (it == conns_.end()) continue;
    Conn* c = it->second.get();
    if (c->queued_at != at) continue;  // a later one of its entries
    c->queued_at = absl::InfiniteFuture();
    if (c->t == nullptr || c->deadline == absl::InfiniteFuture()) continue;
    if (c->deadline > now) {
      ArmDeadline(c, c->deadline);
      continue;
    }
    Transfer* t = c->t;
    if (c->connecting) {
      FailSoon(t, true, "no answer to the connection attempt in time");
    } else if (t->recv_paused || t->send_paused) {
      // Waiting for the visitor (credit, or body bytes), not the service:
      // its clock starts again when the transfer resumes.
      c->deadline = absl::InfiniteFuture();
    } else {
      FailSoon(t, false,
               absl::StrCat("the service sent nothing for ",
                            absl::FormatDuration(local_timeout_)));
    }
  }
}

absl::Time OriginLoop::NextDeadline() const {
  return deadlines_.empty() ? absl::InfiniteFuture() : deadlines_.top().first;
}

void OriginLoop::Active(Conn* c) {
  c->deadline = absl::Now() + local_timeout_;
  if (c->deadline < c->queued_at) ArmDeadline(c, c->deadline);
}

void OriginLoop::OnConnEvent(Conn* c, uint32_t events) {
  if (c->t == nullptr) {
    // Idle: the service closed it (or said something unasked).
    CloseConn(c);
    return;
  }
  if (c->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      // The next address (localhost: ::1 after 127.0.0.1), else it fails.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
      ::close(c->fd);
      c->fd = -1;
      ++c->address;
      int next_err = err;
      if (c->address < c->addresses.size() && StartConnect(c, &next_err)) {
        Attach(c, c->t);
        return;
      }
      FailSoon(c->t, true, ConnectWords(err));
      return;
    }
    c->connecting = false;
    ArmDeadline(c, absl::Now() + local_timeout_);
    WriteConn(c);
    return;
  }
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && !ReadConn(c)) return;
  if ((events & EPOLLOUT) != 0) WriteConn(c);
}

bool OriginLoop::WriteConn(Conn* c) {
  Transfer* t = c->t;
  AgentStream& s = *t->s;
  while (true) {
    if (c->out_off < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_off,
                               c->out.size() - c->out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (!Retry(t)) {
          FailSoon(t, false,
                   "the service closed the connection while the request was "
                   "sent");
        }
        return false;
      }
      c->out_off += static_cast<size_t>(n);
      Active(c);
      continue;
    }
    c->out.clear();
    c->out_off = 0;
    if (t->request_sent) break;
    if (!s.has_body || t->up_end) {
      t->request_sent = true;
      break;
    }
    // The next piece of the body, as the visitor sends it.
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> chunk =
        s.channel.PopData(absl::InfinitePast(), &ack);
    if (ack > 0) {
      t->session.outbox->PushControl(common::MakeWindowUpdate(s.id, ack));
      Touch(t);
    }
    if (!chunk.ok()) {
      // Nothing yet (Wake resumes), or cancelled (Cancel ends it).
      t->send_paused = true;
      break;
    }
    t->body_taken = true;
    t->up_end = chunk->end;
    if (s.capture != nullptr) {
      s.capture->RequestBody(chunk->data);
      if (chunk->end) s.capture->RequestEnd();
    }
    if (t->chunked_up) {
      if (!chunk->data.empty()) {
        absl::StrAppend(&c->out, absl::Hex(chunk->data.size()), "\r\n",
                        chunk->data, "\r\n");
      }
      if (chunk->end) c->out += "0\r\n\r\n";
    } else {
      c->out = std::move(chunk->data);
    }
  }
  SetInterest(c);
  return true;
}

bool OriginLoop::ReadConn(Conn* c) {
  Transfer* t = c->t;
  while (!t->recv_paused) {
    size_t want = kReadBytes;
    if (t->head_sent) {
      // No more than can go on now: bytes waiting for credit or room would
      // sit in memory (up to a read per transfer) rather than in the
      // service's socket, where they slow the service down.
      const size_t credit = t->s->channel.send_credit();
      if (credit == 0 || OutboxFull(t)) {
        t->recv_paused = true;
        break;
      }
      want = std::min(want, credit);
    } else if (QueueOverBound(*t)) {
      // Before the head nothing went out, so the whole window is there; but
      // while the head must go on at once, what follows it would wait: a
      // small read. (A burst of 256 answers read 64 KiB each here while
      // the queue was full: 16 MiB held.) A longer head takes more reads.
      want = kHeadReadBytes;
    }
    const ssize_t n = ::recv(c->fd, read_buf_.get(), want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      return ConnEnded(c, errno);
    }
    if (n == 0) return ConnEnded(c, 0);
    t->answered = true;
    Active(c);
    if (!Parse(c, absl::string_view(read_buf_.get(), static_cast<size_t>(n)))) {
      return false;
    }
    if (static_cast<size_t>(n) < want) break;  // the rest: next event
  }
  SetInterest(c);
  return true;
}

bool OriginLoop::Parse(Conn* c, absl::string_view bytes) {
  Transfer* t = c->t;
  absl::string_view data = bytes;
  if (!c->in.empty()) {
    c->in.append(bytes.data(), bytes.size());
    data = c->in;
  }
  const size_t body_before = t->pending.size();
  size_t off = 0;
  bool done = false;
  while (off < data.size()) {
    size_t used = 0;
    std::string error;
    if (!t->parser->Feed(data.substr(off), &used, &error)) {
      FailSoon(
          t, false,
          absl::StrCat("the service's answer is not HTTP/1.x (", error, ")"));
      return false;
    }
    off += used;
    if (t->parser->is_header_done() && !t->parser->informational()) {
      t->status = t->parser->status();
      // The head goes at once, before any body byte.
      if (!t->head_sent) OnHead(t);
    }
    if (t->parser->is_done()) {
      if (!t->parser->informational()) {
        done = true;
        break;
      }
      // 100 Continue, 103 Early Hints: not the answer; the next head is.
      t->StartParser();
      continue;
    }
    if (used == 0) break;  // a head in pieces: wait for more
  }
  if (data.data() == c->in.data()) {
    c->in.erase(0, off);
  } else {
    c->in.assign(data.data() + off, data.size() - off);
  }
  if (t->s->capture != nullptr && t->pending.size() > body_before) {
    t->s->capture->ResponseBody(
        absl::string_view(t->pending).substr(body_before));
  }
  if (!t->pending.empty() && !FlushPending(t)) {
    // Out of credit (or the outbox is full): the service waits.
    t->recv_paused = true;
  }
  if (done) {
    ResponseDone(c);
    return false;
  }
  if (!t->s->channel.status().ok()) return false;  // cancelled: Cancel ends it
  return true;
}

void OriginLoop::ResponseDone(Conn* c) {
  Transfer* t = c->t;
  // Kept for the next request only if both sides say so and nothing is
  // left over on it.
  if (t->parser->keep_alive() && t->request_sent && c->in.empty()) {
    ReleaseConn(c);
  } else {
    CloseConn(c);
  }
  Completed(t);
}

bool OriginLoop::ConnEnded(Conn* c, int err) {
  Transfer* t = c->t;
  if (err == 0 && t->parser->is_header_done() && t->parser->need_eof()) {
    // A body that runs until the connection closes.
    std::string error;
    if (t->parser->FeedEnd(&error)) {
      ResponseDone(c);  // not kept: keep_alive() is false
      return false;
    }
  }
  if (Retry(t)) return false;
  FailSoon(t, false,
           err != 0 && err != ECONNRESET
               ? absl::StrCat("reading its answer failed: ", std::strerror(err))
           : !t->answered
               ? "the service closed the connection without answering"
               : "the service closed the connection before answering in full");
  return false;
}

bool OriginLoop::Retry(Transfer* t) {
  Conn* old = t->conn;
  // A kept connection the service had closed as this request went out:
  // once more on a new one, unless something of it cannot be sent again.
  if (old == nullptr || !old->reused || t->answered || t->body_taken ||
      t->retried) {
    return false;
  }
  t->retried = true;
  CloseConn(old);
  t->request_sent = false;
  t->StartParser();
  int err = 0;
  Conn* c = OpenConn(*t->s->target, &err);
  if (c == nullptr) {
    FailSoon(t, true, ConnectWords(err));
    return true;
  }
  Attach(c, t);
  return true;
}

void OriginLoop::ReleaseConn(Conn* c) {
  if (c->t != nullptr) c->t->conn = nullptr;
  c->t = nullptr;
  if (idle_count_ >= max_concurrent_) {
    CloseConn(c);
    return;
  }
  c->reused = true;
  c->out.clear();
  c->out_off = 0;
  c->deadline = absl::InfiniteFuture();
  SetInterest(c);
  idle_[c->key].push_back(c);
  ++idle_count_;
}

void OriginLoop::CloseConn(Conn* c) {
  if (c->t != nullptr) {
    c->t->conn = nullptr;
  } else if (auto it = idle_.find(c->key); it != idle_.end()) {
    auto& v = it->second;
    if (auto pos = std::find(v.begin(), v.end(), c); pos != v.end()) {
      v.erase(pos);
      --idle_count_;
    }
  }
  if (c->fd >= 0) ::close(c->fd);  // leaves the epoll with it
  conns_.erase(c->serial);         // destroys *c
}

void OriginLoop::FailSoon(Transfer* t, bool unreachable, std::string words) {
  if (t->failing) return;
  t->failing = true;
  if (t->conn != nullptr) CloseConn(t->conn);
  failing_.push_back(Failure{t->s.get(), unreachable, std::move(words)});
}

void OriginLoop::FailNow() {
  // One at a time: a failure's Finish may start a waiting transfer that
  // fails too, which is added here (no recursion).
  for (size_t i = 0; i < failing_.size(); ++i) {
    auto it = transfers_.find(failing_[i].stream);
    if (it == transfers_.end()) continue;  // cancelled meanwhile
    Transfer* t = it->second.get();
    if (t->s->is_cancelled()) {
      Finish(t);
      continue;
    }
    const Failure f = failing_[i];
    Fail(t, f.unreachable, f.words);
  }
  failing_.clear();
}

}  // namespace tunnel::agent
