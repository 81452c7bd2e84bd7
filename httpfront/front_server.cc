#include "httpfront/front_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/random.h"
#include "httpfront/event_loop.h"
#include "httpfront/request_head.h"
#include "httpfront/tls_session.h"

namespace tunnel::httpfront {
namespace {

// A connection we answered and are closing may keep being read (and its
// bytes dropped) this long, so that closing with unread input does not
// reset the connection before the visitor read the answer.
constexpr absl::Duration kLinger = absl::Milliseconds(500);
constexpr size_t kMaxLingerDiscard = 1 << 20;
// Connections lingering at once per loop; beyond, they are closed at once.
constexpr int64_t kMaxLingering = 4096;
// Read buffer of a connection while a head arrives (none while idle), and
// while a request is served (bodies are read through it).
constexpr size_t kHeadReadSize = 4 * 1024;
constexpr size_t kReadSize = 16 * 1024;
// 16 KiB buffers a loop keeps for its next requests (no malloc churn).
constexpr size_t kSpareBuffers = 64;
// Connections accepted per listener event before the loop serves others.
constexpr int kAcceptBatch = 64;
// After accept() ran out of file descriptors, how long a loop stops
// accepting (the listener stays readable: accepting again at once would
// only spin).
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// File descriptors kept free beyond visitor connections (agents, logs,
// the admin and ops listeners, the service's own files).
constexpr int64_t kReservedFds = 1024;

// The Range header, renamed before httplib parses the head (see ParkRange).
constexpr absl::string_view kParkedRange = "(Range)";

constexpr ssize_t kWouldBlockRead = -2;
constexpr ssize_t kWouldBlockWrite = -3;

std::string IpOf(const sockaddr_storage& addr, int* port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    *port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    *port = ntohs(a->sin6_port);
  }
  return buf;
}

// Sends what fits now; a refused or rejected visitor's answer is small.
void SendNow(int fd, absl::string_view data) {
  (void)::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// The head with every Range field renamed to kParkedRange, or nullopt when
// it has none. httplib parses Range with std::regex before any hook runs:
// a long value recurses about 300 bytes of stack per character (a fiber's
// stack is small), malformed ones get httplib's own 416, and it would slice
// our streamed responses. The front door hands the field on unchanged.
std::optional<std::string> ParkRange(absl::string_view head) {
  std::optional<std::string> out;
  size_t line = head.find('\n');
  if (line == absl::string_view::npos) return out;
  size_t copied = 0;
  for (size_t pos = line + 1; pos < head.size();) {
    size_t eol = head.find('\n', pos);
    if (eol == absl::string_view::npos) eol = head.size();
    absl::string_view l = head.substr(pos, eol - pos);
    if (l.size() > 6 && l[5] == ':' &&
        absl::EqualsIgnoreCase(l.substr(0, 5), "Range")) {
      if (!out.has_value()) out.emplace();
      absl::StrAppend(&*out, head.substr(copied, pos - copied), kParkedRange);
      copied = pos + 5;
    }
    pos = eol + 1;
  }
  if (out.has_value()) absl::StrAppend(&*out, head.substr(copied));
  return out;
}

}  // namespace

// --- the loops
// ----------------------------------------------------------------

struct FrontServer::Loop : public IoHandler {
  Loop(FrontServer* s, EventLoop::Options o)
      : server(s), loop(o), accept_pause([this] { ResumeAccepting(); }) {}

  // The listening socket is readable.
  void OnIo(uint32_t) override { server->Accept(this); }

  void PauseAccepting() {
    if (accept_paused) return;
    accept_paused = true;
    loop.Remove(server->listen_fd_);
    loop.Arm(&accept_pause, absl::Now() + kAcceptPause);
  }
  void ResumeAccepting() {
    accept_paused = false;
    if (!accepting) return;
    (void)loop.AddListener(server->listen_fd_, this);
  }

  FrontServer* const server;
  EventLoop loop;
  std::thread thread;
  // Loop thread only.
  absl::flat_hash_set<Conn*> conns;
  absl::flat_hash_set<Lingerer*> lingerers;
  std::vector<std::unique_ptr<Conn>> graveyard;        // freed on the next turn
  std::vector<std::unique_ptr<char[]>> spare_buffers;  // kReadSize each
  bool accepting = true;
  bool accept_paused = false;
  Timer accept_pause;
  absl::Time last_emfile_log = absl::InfinitePast();
  // Connections by state (relaxed; read by counts()).
  std::atomic<int64_t> handshake{0}, idle{0}, reading_head{0}, active{0},
      upgraded{0}, lingering{0};
};

// Drops what a visitor still sends after our answer, then closes.
class FrontServer::Lingerer final : public IoHandler {
 public:
  Lingerer(Loop* loop, int fd)
      : loop_(loop), fd_(fd), timer_([this] { Done(); }) {}

  void Start() {
    loop_->lingering.fetch_add(1, std::memory_order_relaxed);
    loop_->lingerers.insert(this);
    ::shutdown(fd_, SHUT_WR);
    if (!loop_->loop.Add(fd_, this).ok()) return Done();
    loop_->loop.Arm(&timer_, absl::Now() + kLinger);
    Drain();
  }
  void OnIo(uint32_t) override { Drain(); }

  void Done() {
    if (fd_ < 0) return;
    loop_->loop.Disarm(&timer_);
    loop_->loop.Remove(fd_);
    ::close(fd_);
    fd_ = -1;
    loop_->lingering.fetch_sub(1, std::memory_order_relaxed);
    loop_->lingerers.erase(this);
    // Freed on the loop's next turn, never under our own OnIo.
    loop_->loop.Post([self = this] { delete self; });
  }

 private:
  void Drain() {
    char buf[16 * 1024];
    while (fd_ >= 0) {
      ssize_t n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      if (n <= 0 ||
          (discarded_ += static_cast<size_t>(n)) > kMaxLingerDiscard) {
        return Done();
      }
    }
  }

  Loop* const loop_;
  int fd_;
  Timer timer_;
  size_t discarded_ = 0;
};

// --- one visitor connection
// ------------------------------------------------------

class FrontServer::Conn final : public IoHandler,
                                public FiberTask,
                                public Connection {
 public:
  enum class Phase { kHandshake, kIdle, kHead, kActive, kUpgraded, kClosed };

  Conn(FrontServer* server, Loop* loop, int fd, std::string ip, int port,
       RateLimiter::Slot* ip_slot)
      : server_(server),
        loop_(loop),
        fd_(fd),
        remote_ip_(std::move(ip)),
        remote_port_(port),
        ip_slot_(ip_slot),
        timer_([this] { OnTimer(); }),
        stream_(this),
        remaining_(server->options_.keep_alive_max_requests) {}
  ~Conn() override = default;

  RequestRecord& record() { return record_; }
  Loop* owner() const { return loop_; }
  RateLimiter::Slot* ip_slot() const { return ip_slot_; }
  httplib::Stream& stream() { return stream_; }
  EventLoop& loop() { return loop_->loop; }
  size_t& remaining() { return remaining_; }
  bool broken() const { return broken_ || hijacked_; }
  bool close_after() const { return close_after_; }
  bool closed() const { return phase_ == Phase::kClosed; }
  void CloseAfterResponse() { close_after_ = true; }
  void set_watching(bool on) {
    watching_ = on;
    if (!on && fiber_ != nullptr) loop().ClearInterrupt(fiber_);
  }
  void HoldNextWrite() { hold_next_ = true; }

  // After registration: the TLS handshake, or the first request's head.
  void Start() {
    if (server_->tls_ != nullptr) {
      tls_ = std::make_unique<TlsSession>(fd_, server_->tls_.get());
      SetPhase(Phase::kHandshake);
      loop().Arm(&timer_,
                 absl::Now() + server_->options_.tls_handshake_timeout);
      ContinueHandshake();
      return;
    }
    Park(server_->options_.read_timeout);
  }

  void OnIo(uint32_t events) override {
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
      drained_ = false;
    }
    switch (phase_) {
      case Phase::kHandshake:
        ContinueHandshake();
        return;
      case Phase::kIdle:
      case Phase::kHead:
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
          TryReadHead();
        }
        return;
      case Phase::kActive:
      case Phase::kUpgraded: {
        const bool in =
            (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
        const bool out = (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
        for (const SocketWaiter& w : waiters_) {
          if (w.fiber != nullptr && ((w.in && in) || (w.out && out))) {
            loop().WakeNow(w.fiber);
          }
        }
        // The request's fiber waits on the agent (or will): let it look
        // whether its visitor is still there (or only sent the next
        // request).
        if (in && watching_ && phase_ == Phase::kActive && fiber_ != nullptr) {
          loop().Interrupt(fiber_);
        }
        return;
      }
      case Phase::kClosed:
        return;
    }
  }

  // FiberTask: serves requests until the connection parks or closes.
  void RunOnFiber() override {
    fiber_ = loop().current();
    const bool park = server_->ServeRequests(this);
    fiber_ = nullptr;
    if (closed()) return;
    if (park && !loop().stopping()) {
      Park(server_->options_.keep_alive_timeout);
    } else {
      Finish(close_after_ && !broken_);
    }
  }

  // Ends the connection in order (TLS close_notify); with `linger`, what
  // the visitor still sends is read and dropped for a moment first.
  void Finish(bool linger) {
    if (closed()) return;
    if (tls_ != nullptr && !broken_ && phase_ != Phase::kHandshake) {
      tls_->CloseNotify();
    }
    if (linger) {
      const int fd = fd_;
      Close(/*close_fd=*/false);
      server_->LingerAndClose(loop_, fd);
      return;
    }
    Close();
  }

  void Close(bool close_fd = true) {
    if (closed()) return;
    SetPhase(Phase::kClosed);
    ReleaseBuffer();
    loop().Disarm(&timer_);
    loop().Remove(fd_);
    if (close_fd) {
      ::shutdown(fd_, SHUT_RDWR);
      ::close(fd_);
    }
    fd_ = -1;
    server_->Closed(this);
  }

  // Stop: a parked connection closes now; one with a fiber is shut so that
  // every socket wait ends, and its fiber closes it when it unwinds.
  void Abort() {
    if (closed()) return;
    if (fiber_ == nullptr) return Close();
    ::shutdown(fd_, SHUT_RDWR);
    for (const SocketWaiter& w : waiters_) {
      if (w.fiber != nullptr) loop().WakeNow(w.fiber);
    }
    loop().Interrupt(fiber_);
  }

  // --- what the fiber's handler may ask ---

  bool VisitorConnected() {
    if (loop().stopping() || closed()) return false;
    if (tls_ != nullptr) return tls_->PeerConnected();
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return true;  // pipelined bytes: still there
    if (n == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }

  FrontServer::Hijacked Hijack() {
    hijacked_ = true;
    SetPhase(Phase::kUpgraded);
    FrontServer::Hijacked h;
    h.conn = this;
    h.buffered.assign(buf_.get() + begin_, end_ - begin_);
    begin_ = end_ = 0;
    return h;
  }

  // A complete head at the front of the buffer (its length), or 0.
  size_t CompleteHead() const {
    absl::string_view have(buf_.get() + begin_, end_ - begin_);
    size_t end = FindHeadEnd(have);
    return end != absl::string_view::npos &&
                   end <= server_->options_.max_request_head_bytes
               ? end
               : 0;
  }

  // Checks the complete head at the front of the buffer and parks its Range
  // fields. False: it was refused, answered and the connection is ending.
  bool CheckHead(size_t head_len) {
    absl::string_view head(buf_.get() + begin_, head_len);
    HeadRejection bad = CheckRequestHead(head);
    if (bad.status != 0) {
      Reject(bad);
      return false;
    }
    if (std::optional<std::string> parked = ParkRange(head)) {
      ReplaceHead(head_len, *parked);
    }
    return true;
  }

  // One non-blocking look for more bytes: true if a complete head is now
  // buffered (pipelining, or bytes that arrived meanwhile).
  bool PollNextHead() {
    if (CompleteHead() > 0) return true;
    if (end_ - begin_ >= server_->options_.max_request_head_bytes) return false;
    MakeRoom();
    return Fill() > 0 && CompleteHead() > 0;
  }

  // httplib::Stream, on the request's fiber.
  ABSL_ATTRIBUTE_NOINLINE ssize_t StreamRead(char* ptr, size_t size) {
    if (hijacked_) return -1;
    if (end_ == begin_) {
      begin_ = end_ = 0;
      MakeRoom();
      ssize_t n = FillWaiting(absl::Now() + server_->options_.read_timeout);
      if (n <= 0) return n;
    }
    size_t n = std::min(size, end_ - begin_);
    std::memcpy(ptr, buf_.get() + begin_, n);
    begin_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t StreamWrite(const char* ptr, size_t size) {
    if (hijacked_) return static_cast<ssize_t>(size);  // the handler owns it
    if (hold_next_) {
      hold_next_ = false;
      held_.assign(ptr, size);
      return static_cast<ssize_t>(size);
    }
    if (!held_.empty()) {
      std::string held = std::move(held_);
      held_.clear();
      return WriteParts(held, absl::string_view(ptr, size), WriteTimeout())
                 ? static_cast<ssize_t>(size)
                 : -1;
    }
    return WriteParts(absl::string_view(ptr, size), {}, WriteTimeout())
               ? static_cast<ssize_t>(size)
               : -1;
  }

  bool StreamReadable() {
    if (end_ > begin_ || (tls_ != nullptr && tls_->HasPending())) return true;
    return WaitSocket(true, false,
                      absl::Now() + server_->options_.read_timeout);
  }

  // Sends what is held (the request is done). False if that failed.
  bool FlushHeld() {
    hold_next_ = false;
    if (held_.empty()) return true;
    std::string held = std::move(held_);
    held_.clear();
    return WriteParts(held, {}, WriteTimeout());
  }

  void RemoteAddress(std::string& ip, int& port) const {
    ip = remote_ip_;
    port = remote_port_;
  }
  void LocalAddress(std::string& ip, int& port) const {
    if (local_port_ < 0 && fd_ >= 0) {
      sockaddr_storage addr{};
      socklen_t len = sizeof(addr);
      if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
        local_ip_ = IpOf(addr, &local_port_);
      }
    }
    ip = local_ip_;
    port = local_port_;
  }
  int fd() const { return fd_; }

  // --- Connection (an upgrade's two fibers) ---

  ssize_t Read(char* buf, size_t n, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      ssize_t r = ReadOnce(buf, n);
      if (r == kWouldBlockRead || r == kWouldBlockWrite) {
        if (!WaitSocket(r == kWouldBlockRead, r == kWouldBlockWrite,
                        deadline)) {
          return -1;
        }
        continue;
      }
      return r;
    }
  }

  bool WriteAll(absl::string_view data, absl::Duration timeout) override {
    return WriteParts(data, {}, timeout);
  }

  void ShutdownWrite() override {
    if (tls_ != nullptr) tls_->CloseNotify();
    ::shutdown(fd_, SHUT_WR);
  }

  void ShutdownBoth() override {
    ::shutdown(fd_, SHUT_RDWR);
    for (const SocketWaiter& w : waiters_) {
      if (w.fiber != nullptr) loop().WakeNow(w.fiber);
    }
  }

 private:
  class Stream final : public httplib::Stream {
   public:
    explicit Stream(Conn* c) : c_(c) {}
    bool is_readable() const override { return c_->StreamReadable(); }
    bool is_writable() const override { return !c_->broken_; }
    ssize_t read(char* ptr, size_t size) override {
      // cpp-httplib reads a head's lines one byte per call: serve those
      // from the buffer without the general path's memcpy.
      if (size == 1 && c_->begin_ < c_->end_ && !c_->hijacked_) {
        *ptr = c_->buf_[c_->begin_++];
        return 1;
      }
      return c_->StreamRead(ptr, size);
    }
    ssize_t write(const char* ptr, size_t size) override {
      return c_->StreamWrite(ptr, size);
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
      c_->RemoteAddress(ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
      c_->LocalAddress(ip, port);
    }
    socket_t socket() const override { return c_->fd(); }

   private:
    Conn* const c_;
  };

  // A fiber waiting for this socket to become readable and/or writable.
  struct SocketWaiter {
    Fiber* fiber = nullptr;
    bool in = false;
    bool out = false;
  };

  void SetPhase(Phase p) {
    if (p == phase_) return;
    if (std::atomic<int64_t>* c = Count(phase_)) {
      c->fetch_sub(1, std::memory_order_relaxed);
    }
    if (std::atomic<int64_t>* c = Count(p)) {
      c->fetch_add(1, std::memory_order_relaxed);
    }
    phase_ = p;
  }
  std::atomic<int64_t>* Count(Phase p) {
    switch (p) {
      case Phase::kHandshake:
        return &loop_->handshake;
      case Phase::kIdle:
        return &loop_->idle;
      case Phase::kHead:
        return &loop_->reading_head;
      case Phase::kActive:
        return &loop_->active;
      case Phase::kUpgraded:
        return &loop_->upgraded;
      default:
        return nullptr;
    }
  }

  // Waits on the calling fiber until the socket is ready as asked, the
  // deadline passes (false) or the wait is cut short (false).
  bool WaitSocket(bool in, bool out, absl::Time deadline) {
    Fiber* f = loop().current();
    SocketWaiter* slot = nullptr;
    for (SocketWaiter& w : waiters_) {
      if (w.fiber == nullptr) {
        slot = &w;
        break;
      }
    }
    if (slot == nullptr || f == nullptr) return false;
    *slot = SocketWaiter{f, in, out};
    const bool woken =
        loop().WaitIo(in ? WaitKind::kRead : WaitKind::kWrite, deadline);
    *slot = SocketWaiter{};
    return woken && absl::Now() < deadline;
  }

  void MakeRoom() {
    const size_t limit = server_->options_.max_request_head_bytes;
    if (buf_ == nullptr) {
      // A pooled 16 KiB buffer if the loop has one (the common case: the
      // head arrives whole and a request follows), else a small one.
      if (!loop_->spare_buffers.empty()) {
        buf_ = std::move(loop_->spare_buffers.back());
        loop_->spare_buffers.pop_back();
        cap_ = kReadSize;
      } else {
        cap_ = kHeadReadSize;
        buf_ = std::make_unique<char[]>(cap_);
      }
      begin_ = end_ = 0;
      return;
    }
    if (begin_ > 0 && end_ == cap_) {  // keep what is buffered at the front
      std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (end_ == cap_ && cap_ < std::max(limit, kReadSize)) {
      Grow(std::min(cap_ * 2, std::max(limit, kReadSize)));
    }
  }

  void Grow(size_t cap) {
    std::unique_ptr<char[]> bigger;
    if (cap == kReadSize && !loop_->spare_buffers.empty()) {
      bigger = std::move(loop_->spare_buffers.back());
      loop_->spare_buffers.pop_back();
    } else {
      bigger = std::make_unique<char[]>(cap);
    }
    std::memcpy(bigger.get(), buf_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    buf_ = std::move(bigger);
    cap_ = cap;
  }

  // An idle connection keeps no buffer (a 16 KiB one goes back to the
  // loop's pool for the next request).
  void ReleaseBufferIfEmpty() {
    if (buf_ != nullptr && begin_ == end_) ReleaseBuffer();
  }
  void ReleaseBuffer() {
    if (cap_ == kReadSize && loop_->spare_buffers.size() < kSpareBuffers) {
      loop_->spare_buffers.push_back(std::move(buf_));
    }
    buf_.reset();
    cap_ = begin_ = end_ = 0;
  }

  // Replaces the head (`old_len` bytes at the front) with `head`.
  void ReplaceHead(size_t old_len, absl::string_view head) {
    const size_t rest = end_ - begin_ - old_len;
    const size_t need = head.size() + rest;
    auto fresh = std::make_unique<char[]>(std::max(need, cap_));
    std::memcpy(fresh.get(), head.data(), head.size());
    std::memcpy(fresh.get() + head.size(), buf_.get() + begin_ + old_len, rest);
    cap_ = std::max(need, cap_);
    buf_ = std::move(fresh);
    begin_ = 0;
    end_ = need;
  }

  // One read into the free space after end_: > 0, 0 at EOF, kWouldBlock*,
  // or -1 on an error.
  ssize_t Fill() {
    if (buf_ == nullptr || end_ == cap_) return -1;
    ssize_t n = ReadOnce(buf_.get() + end_, cap_ - end_);
    if (n > 0) end_ += static_cast<size_t>(n);
    return n;
  }

  ssize_t ReadOnce(char* at, size_t room) {
    if (fd_ < 0) return -1;
    if (tls_ != nullptr) {
      ssize_t n = tls_->Read(at, room);
      if (n == TlsSession::kWantRead) return kWouldBlockRead;
      if (n == TlsSession::kWantWrite) return kWouldBlockWrite;
      return n;
    }
    // Edge-triggered: once a read found the socket empty, the next byte
    // brings an event (OnIo clears drained_), so looking again before it
    // would only cost a system call that says EAGAIN.
    if (drained_) return kWouldBlockRead;
    while (true) {
      ssize_t n = ::recv(fd_, at, room, MSG_DONTWAIT);
      if (n >= 0) {
        drained_ = n > 0 && static_cast<size_t>(n) < room;
        return n;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        drained_ = true;
        return kWouldBlockRead;
      }
      return -1;
    }
  }

  // Fill on a fiber: waits (until `deadline`) while nothing can be read.
  ssize_t FillWaiting(absl::Time deadline) {
    while (true) {
      ssize_t n = Fill();
      if (n == kWouldBlockRead || n == kWouldBlockWrite) {
        if (!WaitSocket(n == kWouldBlockRead, n == kWouldBlockWrite,
                        deadline)) {
          broken_ = true;
          return -1;
        }
        continue;
      }
      if (n < 0) broken_ = true;
      return n;
    }
  }

  absl::Duration WriteTimeout() const {
    return server_->options_.write_timeout;
  }

  // Writes `a` then `b`, whole, on a fiber: one sendmsg as a rule; waits
  // for room at most `timeout` each time.
  bool WriteParts(absl::string_view a, absl::string_view b,
                  absl::Duration timeout) {
    if (fd_ < 0 || broken_) return false;
    if (tls_ != nullptr) {
      if (!b.empty()) {
        std::string both = absl::StrCat(a, b);
        return TlsWrite(both, timeout);
      }
      return TlsWrite(a, timeout);
    }
    iovec iov[2] = {{const_cast<char*>(a.data()), a.size()},
                    {const_cast<char*>(b.data()), b.size()}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = b.empty() ? 1 : 2;
    if (a.empty()) {
      msg.msg_iov = &iov[1];
      msg.msg_iovlen = b.empty() ? 0 : 1;
    }
    while (msg.msg_iovlen > 0) {
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!WaitSocket(false, true, absl::Now() + timeout)) {
          broken_ = true;
          return false;
        }
        continue;
      }
      if (n < 0) {
        broken_ = true;
        return false;
      }
      size_t done = static_cast<size_t>(n);
      while (msg.msg_iovlen > 0 && done >= msg.msg_iov[0].iov_len) {
        done -= msg.msg_iov[0].iov_len;
        ++msg.msg_iov;
        --msg.msg_iovlen;
      }
      if (msg.msg_iovlen > 0) {
        msg.msg_iov[0].iov_base =
            static_cast<char*>(msg.msg_iov[0].iov_base) + done;
        msg.msg_iov[0].iov_len -= done;
      }
    }
    return true;
  }

  bool TlsWrite(absl::string_view data, absl::Duration timeout) {
    while (!data.empty()) {
      ssize_t n = tls_->Write(data.data(), data.size());
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if ((n == TlsSession::kWantRead || n == TlsSession::kWantWrite) &&
          WaitSocket(n == TlsSession::kWantRead, n == TlsSession::kWantWrite,
                     absl::Now() + timeout)) {
        continue;
      }
      broken_ = true;
      return false;
    }
    return true;
  }

  void ContinueHandshake() {
    ssize_t r = tls_->Handshake();
    if (r == 1) {
      Park(server_->options_.read_timeout);
      return;
    }
    if (r == TlsSession::kError) Close();
    // Wants to read or write: the next event continues it.
  }

  // Waits, without a fiber, for the next request head: `idle` without a
  // byte of it (then closed silently), the read timeout once it started.
  void Park(absl::Duration idle) {
    SetPhase(Phase::kIdle);
    loop().Arm(&timer_, absl::Now() + idle);
    TryReadHead();
  }

  // Reads what is there without waiting; starts the request once its head
  // is whole, refuses it when it is too large or malformed.
  void TryReadHead() {
    const size_t limit = server_->options_.max_request_head_bytes;
    while (!closed()) {
      absl::string_view have(buf_ ? buf_.get() + begin_ : nullptr,
                             end_ - begin_);
      size_t end = FindHeadEnd(have);
      if (end != absl::string_view::npos && end <= limit) {
        if (CheckHead(end)) StartRequest();
        return;
      }
      if (end != absl::string_view::npos || have.size() >= limit) {
        Reject(HeadTooLarge(have, limit));
        return;
      }
      MakeRoom();
      ssize_t n = Fill();
      if (n > 0) {
        if (phase_ == Phase::kIdle) {
          SetPhase(Phase::kHead);
          loop().Arm(&timer_, absl::Now() + server_->options_.read_timeout);
        }
        continue;
      }
      if (n == kWouldBlockRead || n == kWouldBlockWrite) {
        if (phase_ == Phase::kIdle) ReleaseBufferIfEmpty();
        return;
      }
      Close();  // EOF or an error before a whole head
      return;
    }
  }

  void StartRequest() {
    loop().Disarm(&timer_);
    SetPhase(Phase::kActive);
    if (cap_ < kReadSize) Grow(kReadSize);  // bodies read 16 KiB at a time
    if (loop().stopping() || !loop().Spawn(this, this)) {
      Reject(HeadRejection{503, "gateway_busy",
                           "the gateway cannot take this request now (out "
                           "of memory for request fibers); try again"});
    }
  }

  void OnTimer() {
    if (phase_ == Phase::kHead) {
      Reject(HeadRejection{
          408, "request_timeout",
          absl::StrCat("the request head did not arrive within ",
                       absl::FormatDuration(server_->options_.read_timeout))});
      return;
    }
    Close();  // idle keep-alive, or a TLS handshake that took too long
  }

  // Answers a refused head ourselves and ends the connection.
  void Reject(const HeadRejection& bad) {
    const std::string request_id = common::NewUuid();
    if (server_->head_rejected_) {  // counted before the visitor can see it
      server_->head_rejected_(bad.status, bad.code, remote_ip_, request_id);
    }
    const std::string answer = RejectionResponse(
        bad, absl::StrCat("X-Request-Id: ", request_id, "\r\n"));
    if (tls_ != nullptr) {
      (void)tls_->Write(answer.data(), answer.size());
    } else {
      SendNow(fd_, answer);
    }
    Finish(/*linger=*/true);
  }

  FrontServer* const server_;
  Loop* const loop_;
  int fd_;
  const std::string remote_ip_;
  const int remote_port_;
  mutable std::string local_ip_;
  mutable int local_port_ = -1;
  RateLimiter::Slot* const ip_slot_;
  Phase phase_ = Phase::kClosed;
  Timer timer_;
  std::unique_ptr<TlsSession> tls_;
  // Read buffer: [begin_, end_) is unread. None while idle.
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t begin_ = 0;
  size_t end_ = 0;
  Fiber* fiber_ = nullptr;  // the request's fiber while it runs
  SocketWaiter waiters_[2];
  Stream stream_;
  RequestRecord record_;
  size_t remaining_;
  bool broken_ = false;
  // A plain read left the socket empty and no readable event came since.
  bool drained_ = false;
  bool hijacked_ = false;
  bool close_after_ = false;
  bool hold_next_ = false;
  bool watching_ = false;  // see FrontServer::WatchVisitor
  std::string held_;       // a response head waiting for its body
};

FrontServer::Conn* FrontServer::CurrentConn() {
  return static_cast<Conn*>(EventLoop::CurrentContext());
}

namespace {

RateLimiter::Options IpLimits(const ConnectionOptions& o) {
  RateLimiter::Options limits;
  limits.per_minute = o.connections_per_ip_per_minute;
  limits.concurrent = o.max_connections_per_ip;
  limits.capacity =
      static_cast<size_t>(std::max<int64_t>(1, o.client_ip_capacity));
  return limits;
}

}  // namespace

// --- FrontServer
// ------------------------------------------------------------------

FrontServer::FrontServer(ConnectionOptions options)
    : options_(options),
      max_connections_(options.max_connections),
      ip_limiter_(IpLimits(options)) {
  // Our loop enforces these; httplib only announces them in Keep-Alive.
  set_keep_alive_timeout(
      std::max<time_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
  set_keep_alive_max_count(options_.keep_alive_max_requests);
}

FrontServer::~FrontServer() { Stop(); }

absl::StatusOr<int> FrontServer::Listen(const std::string& host, int port) {
  int bound = port == 0 ? bind_to_any_port(host)
                        : (bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", host, ":", port,
                     " (address in use or not available)"));
  }
  listen_fd_ = svr_sock_;
  // httplib listens with a backlog of 5; bursts of visitors need more.
  ::listen(listen_fd_, options_.listen_backlog);
  int flags = ::fcntl(listen_fd_, F_GETFL, 0);
  ::fcntl(listen_fd_, F_SETFL, flags | O_NONBLOCK);

  // Every visitor is a file descriptor: use what the hard limit allows,
  // and refuse cleanly (503) before accept() would fail.
  rlimit rl;
  int64_t fit = kDefaultMaxConnections;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &rl);
      ::getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY) {
      fit = std::max<int64_t>(1,
                              static_cast<int64_t>(rl.rlim_cur) - kReservedFds);
    }
  }
  if (options_.max_connections <= 0) {
    max_connections_ = std::min(kDefaultMaxConnections, fit);
  } else if (options_.max_connections > fit) {
    TUNNEL_LOG(WARNING)
        << "--max-connections " << options_.max_connections
        << " is more than the open-file limit (" << rl.rlim_cur
        << ") allows; serving at most " << fit
        << " visitor connections at once (raise it with ulimit -n, or "
           "LimitNOFILE= in the systemd unit)";
    max_connections_ = fit;
  }

  int threads =
      options_.threads > 0
          ? options_.threads
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EventLoop::Options lo;
  lo.stack_bytes = options_.fiber_stack_bytes;
  lo.idle_trim_interval = options_.fiber_trim_interval;
  for (int i = 0; i < threads; ++i) {
    loops_.push_back(std::make_unique<Loop>(this, lo));
  }
  for (auto& l : loops_) {
    Loop* loop = l.get();
    if (absl::Status s = loop->loop.AddListener(listen_fd_, loop); !s.ok()) {
      return s;
    }
    loop->thread = std::thread([loop] { loop->loop.Run(); });
  }
  return bound;
}

void FrontServer::Accept(Loop* loop) {
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        const absl::Time now = absl::Now();
        if (now - loop->last_emfile_log > absl::Seconds(10)) {
          loop->last_emfile_log = now;
          TUNNEL_LOG(WARNING)
              << "cannot accept visitor connections: " << std::strerror(errno)
              << " (" << open_.load() << " open); pausing accepts briefly";
        }
        loop->PauseAccepting();
      }
      return;  // EAGAIN: the backlog is empty
    }
    if (open_.fetch_add(1, std::memory_order_relaxed) >= max_connections_) {
      open_.fetch_sub(1, std::memory_order_relaxed);
      Refuse(loop, fd, ConnectionRefusal::kMaxConnections, nullptr);
      continue;
    }
    int port = 0;
    std::string ip = IpOf(addr, &port);
    RateLimiter::Slot* ip_slot = nullptr;
    if (ip_limiter_.enabled()) {
      RateLimiter::Decision d = ip_limiter_.Acquire(ip, options_.clock());
      if (d.slot == nullptr) {
        open_.fetch_sub(1, std::memory_order_relaxed);
        Refuse(loop, fd,
               d.verdict == RateLimiter::Verdict::kRateLimited
                   ? ConnectionRefusal::kIpRate
                   : ConnectionRefusal::kIpConcurrency,
               &d);
        continue;
      }
      ip_slot = d.slot;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto conn =
        std::make_unique<Conn>(this, loop, fd, std::move(ip), port, ip_slot);
    Conn* c = conn.release();
    loop->conns.insert(c);
    if (!loop->loop.Add(fd, c).ok()) {
      c->Close();
      continue;
    }
    c->Start();
  }
}

void FrontServer::Refuse(Loop* loop, int fd, ConnectionRefusal why,
                         const RateLimiter::Decision* d) {
  if (connection_refused_) connection_refused_(why);
  // A TLS visitor would cost a handshake to be told: it is just closed.
  if (tls_ != nullptr) {
    ::close(fd);
    return;
  }
  HeadRejection refusal;
  std::string extra;
  switch (why) {
    case ConnectionRefusal::kMaxConnections:
      refusal = {503, "gateway_busy",
                 "the gateway holds as many visitor connections as it may; "
                 "try again shortly"};
      extra = "Retry-After: 1\r\n";
      break;
    case ConnectionRefusal::kIpRate:
      refusal = {429, "client_connection_rate_limited",
                 "too many new connections from your address; wait and retry"};
      extra = absl::StrCat("Retry-After: ", CeilSeconds(d->reset),
                           "\r\nX-RateLimit-Limit: ", d->limit,
                           "\r\nX-RateLimit-Remaining: ", d->remaining,
                           "\r\nX-RateLimit-Reset: ", CeilSeconds(d->reset),
                           "\r\n");
      break;
    case ConnectionRefusal::kIpConcurrency:
      refusal = {429, "client_connection_limited",
                 "too many open connections from your address"};
      extra = "Retry-After: 1\r\n";
      break;
  }
  SendNow(fd, RejectionResponse(refusal, extra));
  LingerAndClose(loop, fd);
}

void FrontServer::LingerAndClose(Loop* loop, int fd) {
  if (loop->lingering.load(std::memory_order_relaxed) >= kMaxLingering) {
    ::close(fd);
    return;
  }
  (new Lingerer(loop, fd))->Start();
}

bool FrontServer::ServeRequests(Conn* c) {
  while (true) {
    bool connection_closed = false;
    // httplib answers some heads we pass (an unknown method) with its own
    // 4xx before the setup hook; such a connection is closed too.
    bool parsed = false;
    bool ret =
        process_request(c->stream(), /*close_connection=*/c->remaining() == 1,
                        connection_closed, [&](httplib::Request& req) {
                          parsed = true;
                          // Routing matches req.path against our ".*" with
                          // std::regex, whose recursion is proportional to the
                          // input: on a fiber's small stack a long path must
                          // not get there. Handlers use req.target.
                          req.path = "/";
                          if (setup_request_) setup_request_(req);
                        });
    if (!c->FlushHeld()) ret = false;
    if (request_done_) request_done_();
    if (!ret || !parsed || connection_closed || c->broken() ||
        c->close_after() || stopped_.load(std::memory_order_relaxed) ||
        --c->remaining() == 0) {
      return false;
    }
    if (!c->PollNextHead()) return true;  // park until the next request
    if (!c->CheckHead(c->CompleteHead())) return false;
  }
}

void FrontServer::Closed(Conn* c) {
  Loop* loop = c->owner();
  loop->conns.erase(c);
  open_.fetch_sub(1, std::memory_order_relaxed);
  if (c->ip_slot() != nullptr) ip_limiter_.Release(c->ip_slot());
  loop->graveyard.emplace_back(c);
  if (loop->graveyard.size() == 1) {
    loop->loop.Post([loop] { loop->graveyard.clear(); });
  }
}

void FrontServer::StopAccepting() {
  if (listen_fd_ < 0) return;
  for (auto& l : loops_) {
    Loop* loop = l.get();
    if (!loop->thread.joinable()) continue;
    absl::Notification done;
    loop->loop.Post([loop, &done] {
      loop->accepting = false;
      if (!loop->accept_paused) loop->loop.Remove(loop->server->listen_fd_);
      loop->loop.Disarm(&loop->accept_pause);
      done.Notify();
    });
    done.WaitForNotification();
  }
  // httplib's streamed bodies stop once svr_sock_ is invalid (its
  // "shutting down"); its own stop() only acts on its own listen loop.
  svr_sock_ = INVALID_SOCKET;
  ::shutdown(listen_fd_, SHUT_RDWR);
  ::close(listen_fd_);
  listen_fd_ = -1;
}

void FrontServer::Stop() {
  if (stopped_.exchange(true)) return;
  StopAccepting();
  for (auto& l : loops_) {
    Loop* loop = l.get();
    loop->loop.Post([loop] {
      loop->loop.Quit();
      std::vector<Conn*> conns(loop->conns.begin(), loop->conns.end());
      for (Conn* c : conns) c->Abort();
      std::vector<Lingerer*> lingerers(loop->lingerers.begin(),
                                       loop->lingerers.end());
      for (Lingerer* l : lingerers) l->Done();
    });
  }
  for (auto& l : loops_) {
    if (l->thread.joinable()) l->thread.join();
  }
  for (auto& l : loops_) {
    std::vector<Conn*> conns(l->conns.begin(), l->conns.end());
    for (Conn* c : conns) c->Close();  // none should be left
    l->graveyard.clear();
  }
}

ConnectionCounts FrontServer::counts() const {
  ConnectionCounts c;
  for (const auto& l : loops_) {
    c.handshake += l->handshake.load(std::memory_order_relaxed);
    c.idle += l->idle.load(std::memory_order_relaxed);
    c.reading_head += l->reading_head.load(std::memory_order_relaxed);
    c.active += l->active.load(std::memory_order_relaxed);
    c.upgraded += l->upgraded.load(std::memory_order_relaxed);
    c.lingering += l->lingering.load(std::memory_order_relaxed);
    c.fibers += static_cast<int64_t>(l->loop.fiber_count());
    c.remote_wakeups += l->loop.remote_wakeups();
    c.eventfd_writes += l->loop.eventfd_writes();
  }
  return c;
}

bool FrontServer::CurrentVisitorConnected() {
  Conn* c = CurrentConn();
  return c == nullptr || c->VisitorConnected();
}

FrontServer::WatchVisitor::WatchVisitor() : conn_(CurrentConn()) {
  if (conn_ != nullptr) conn_->set_watching(true);
}

FrontServer::WatchVisitor::~WatchVisitor() {
  if (conn_ != nullptr) conn_->set_watching(false);
}

void FrontServer::CloseCurrentConnectionAfterResponse() {
  if (Conn* c = CurrentConn()) c->CloseAfterResponse();
}

RequestRecord* FrontServer::CurrentRecord() {
  Conn* c = CurrentConn();
  return c == nullptr ? nullptr : &c->record();
}

void FrontServer::CoalesceResponseHead() {
  if (Conn* c = CurrentConn()) c->HoldNextWrite();
}

FrontServer::Hijacked FrontServer::HijackCurrentConnection() {
  Conn* c = CurrentConn();
  if (c == nullptr) return Hijacked{};
  return c->Hijack();
}

namespace {

// A function on a second fiber of the caller's loop, joined by the caller.
class SiblingFiber final : public FrontServer::Sibling, public FiberTask {
 public:
  SiblingFiber(EventLoop* loop, std::function<void()> fn)
      : loop_(loop), fn_(std::move(fn)) {}
  ~SiblingFiber() override { Join(); }

  bool Start(void* context) {
    started_ = loop_->Spawn(this, context);
    return started_;
  }

  void RunOnFiber() override {
    fn_();
    done_ = true;
    if (joiner_ != nullptr) loop_->WakeNow(joiner_);
  }

  void Join() override {
    while (started_ && !done_) {
      joiner_ = loop_->current();
      loop_->WaitIo(WaitKind::kOther, absl::InfiniteFuture(),
                    /*even_when_stopping=*/true);
      joiner_ = nullptr;
    }
  }

 private:
  EventLoop* const loop_;
  std::function<void()> fn_;
  bool started_ = false;
  bool done_ = false;
  Fiber* joiner_ = nullptr;
};

}  // namespace

namespace {

// RunDetached's task: frees itself when `fn` returned.
class DetachedFiber final : public FiberTask {
 public:
  explicit DetachedFiber(std::function<void()> fn) : fn_(std::move(fn)) {}
  void RunOnFiber() override {
    fn_();
    delete this;
  }

 private:
  std::function<void()> fn_;
};

}  // namespace

void FrontServer::RunDetached(std::function<void()> fn,
                              std::function<void()> refused) {
  if (stopped_ || loops_.empty()) {
    refused();
    return;
  }
  Loop* loop = loops_[next_detached_.fetch_add(1, std::memory_order_relaxed) %
                      loops_.size()]
                   .get();
  loop->loop.Post(
      [loop, fn = std::move(fn), refused = std::move(refused)]() mutable {
        auto* task = new DetachedFiber(std::move(fn));
        if (loop->loop.stopping() || !loop->loop.Spawn(task, nullptr)) {
          delete task;
          refused();
        }
      });
}

std::unique_ptr<FrontServer::Sibling> FrontServer::RunOnSiblingFiber(
    std::function<void()> fn) {
  EventLoop* loop = EventLoop::Current();
  if (loop == nullptr || loop->current() == nullptr) return nullptr;
  auto s = std::make_unique<SiblingFiber>(loop, std::move(fn));
  if (!s->Start(EventLoop::CurrentContext())) return nullptr;
  return s;
}

}  // namespace tunnel::httpfront
