#include "httpfront/front_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/socket_io.h"
#include "httpfront/request_head.h"
#include "openssl/err.h"
#include "openssl/ssl.h"

namespace tunnel::httpfront {
namespace {

class VisitorStream;
class TlsConnection;
thread_local int tl_current_socket = -1;
thread_local VisitorStream* tl_current_stream = nullptr;
thread_local TlsConnection* tl_current_tls = nullptr;

// How long a connection refused at a per-IP limit may keep its worker while
// the visitor reads the 429 and closes.
constexpr absl::Duration kRefusalLinger = absl::Milliseconds(500);

int ToMillis(absl::Duration d) {
  int64_t ms = absl::ToInt64Milliseconds(d);
  return ms > INT32_MAX ? INT32_MAX : static_cast<int>(ms);
}

// poll() for `events`, retrying on EINTR. >0 ready, 0 timeout, <0 error.
int PollFor(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r > 0 && (p.revents & (POLLERR | POLLNVAL))) return -1;
  return r;
}

int MillisUntil(absl::Time deadline) {
  return std::max(0, ToMillis(deadline - absl::Now()));
}

// A plain TCP connection handed to an upgrade handler.
class PlainConnection : public Connection {
 public:
  explicit PlainConnection(int fd) : fd_(fd) {}
  ssize_t Read(char* buf, size_t n, absl::Duration timeout) override {
    return common::ReadSome(fd_, buf, n, timeout);
  }
  bool WriteAll(absl::string_view data, absl::Duration timeout) override {
    return common::WriteAll(fd_, data, timeout);
  }
  void ShutdownWrite() override { ::shutdown(fd_, SHUT_WR); }
  void ShutdownBoth() override { ::shutdown(fd_, SHUT_RDWR); }

 private:
  const int fd_;
};

// A server-side TLS connection on a non-blocking socket. OpenSSL's SSL
// object must not be used by two threads at once, but an upgraded
// connection is read on one thread and written on another: each SSL call
// runs under mu_, and waiting for the socket (poll) happens outside it.
class TlsConnection : public Connection {
 public:
  TlsConnection(int fd, SSL_CTX* ctx) : fd_(fd), ssl_(SSL_new(ctx)) {
    int flags = ::fcntl(fd_, F_GETFL, 0);
    ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    if (ssl_ != nullptr) SSL_set_fd(ssl_, fd_);
  }
  ~TlsConnection() override { SSL_free(ssl_); }

  // The TLS handshake, bounded by `timeout`.
  bool Handshake(absl::Duration timeout) {
    if (ssl_ == nullptr) return false;
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      int r, err;
      {
        absl::MutexLock lock(&mu_);
        ERR_clear_error();
        r = SSL_accept(ssl_);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      }
      if (r == 1) return true;
      if (!WaitFor(err, deadline)) {
        ERR_clear_error();
        return false;
      }
    }
  }

  ssize_t Read(char* buf, size_t n, absl::Duration timeout) override {
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      size_t got = 0;
      int r, err;
      {
        absl::MutexLock lock(&mu_);
        ERR_clear_error();
        r = SSL_read_ex(ssl_, buf, n, &got);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      }
      if (r == 1) return static_cast<ssize_t>(got);
      // close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a bare FIN.
      if (err == SSL_ERROR_ZERO_RETURN) return 0;
      if (!WaitFor(err, deadline)) {
        ERR_clear_error();
        return -1;
      }
    }
  }

  bool WriteAll(absl::string_view data, absl::Duration timeout) override {
    while (!data.empty()) {
      size_t written = 0;
      int r, err;
      {
        absl::MutexLock lock(&mu_);
        ERR_clear_error();
        r = SSL_write_ex(ssl_, data.data(), data.size(), &written);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, r);
      }
      if (r == 1) {
        data.remove_prefix(written);
        continue;
      }
      if (!WaitFor(err, absl::Now() + timeout)) {
        ERR_clear_error();
        return false;
      }
    }
    return true;
  }

  void ShutdownWrite() override {
    {
      absl::MutexLock lock(&mu_);
      SendCloseNotify();
    }
    ::shutdown(fd_, SHUT_WR);
  }
  void ShutdownBoth() override { ::shutdown(fd_, SHUT_RDWR); }

  // Decrypted bytes wait inside OpenSSL (polling the socket would miss them).
  bool HasPending() {
    absl::MutexLock lock(&mu_);
    return SSL_has_pending(ssl_) == 1;
  }

  // Never blocks: false once the visitor sent close_notify or FIN, or the
  // connection failed. Bytes it looks at stay readable.
  bool PeerConnected() {
    absl::MutexLock lock(&mu_);
    ERR_clear_error();
    char c;
    size_t got = 0;
    if (SSL_peek_ex(ssl_, &c, 1, &got) == 1) return true;
    int err = SSL_get_error(ssl_, 0);
    ERR_clear_error();
    return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE;
  }

  // Orderly end of a connection that is still healthy: close_notify (once,
  // without waiting for room or for the visitor's answer).
  void Close() {
    absl::MutexLock lock(&mu_);
    SendCloseNotify();
  }

 private:
  void SendCloseNotify() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if ((SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0 ||
        !SSL_is_init_finished(ssl_)) {
      return;
    }
    ERR_clear_error();
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }

  // After a failed SSL call: waits for what it wants; false on a real
  // error or at the deadline.
  bool WaitFor(int err, absl::Time deadline) {
    short events;
    if (err == SSL_ERROR_WANT_READ) {
      events = POLLIN;
    } else if (err == SSL_ERROR_WANT_WRITE) {
      events = POLLOUT;
    } else {
      return false;
    }
    return PollFor(fd_, events, MillisUntil(deadline)) > 0;
  }

  const int fd_;
  absl::Mutex mu_;
  SSL* const ssl_;
};

// Closing with unread request bytes makes the kernel reset the connection,
// which can destroy the answer we just wrote before the visitor reads it.
// Ends our direction, then reads (and drops) what still comes until the
// visitor closes, for at most kRefusalLinger.
void LingerBeforeClose(int sock) {
  ::shutdown(sock, SHUT_WR);
  const absl::Time give_up = absl::Now() + kRefusalLinger;
  constexpr size_t kMaxDiscard = 1 << 20;
  char buf[16 * 1024];
  size_t discarded = 0;
  while (discarded < kMaxDiscard &&
         PollFor(sock, POLLIN, MillisUntil(give_up)) > 0) {
    ssize_t n = ::recv(sock, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) break;
    discarded += static_cast<size_t>(n);
  }
}

void AddressOf(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
               : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (r != 0) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    port = ntohs(a->sin6_port);
  }
  ip = buf;
}

// One visitor connection. Unlike httplib's SocketStream it lives for the
// whole connection, so bytes read ahead (pipelining) are never lost between
// requests.
class VisitorStream : public httplib::Stream {
 public:
  // `tls` (may be null: plain TCP) must outlive the stream.
  VisitorStream(int fd, TlsConnection* tls, const ConnectionOptions& o)
      : fd_(fd),
        tls_(tls),
        read_timeout_(o.read_timeout),
        write_timeout_(o.write_timeout),
        read_timeout_ms_(ToMillis(o.read_timeout)),
        write_timeout_ms_(ToMillis(o.write_timeout)) {
    SetTimeout(SO_RCVTIMEO, o.read_timeout);
    SetTimeout(SO_SNDTIMEO, o.write_timeout);
  }

  bool is_readable() const override {
    return buffered() > 0 || (tls_ != nullptr && tls_->HasPending()) ||
           PollFor(fd_, POLLIN, read_timeout_ms_) > 0;
  }
  bool is_writable() const override {
    return PollFor(fd_, POLLOUT, write_timeout_ms_) > 0;
  }

  ssize_t read(char* ptr, size_t size) override {
    if (hijacked_) return -1;
    if (buffered() == 0) {
      begin_ = end_ = 0;
      ssize_t n = Fill();
      if (n <= 0) return n;
    }
    size_t n = std::min(size, buffered());
    std::memcpy(ptr, buf_.data() + begin_, n);
    begin_ += n;
    return static_cast<ssize_t>(n);
  }

  // Reads until the buffered bytes start with a whole request head (see
  // FindHeadEnd), holding at most `limit` bytes of it. kComplete sets
  // `*head` (valid until the next read); kTooLarge leaves what came in
  // `*head`; kClosed: EOF, timeout or error before a whole head.
  enum class HeadState { kComplete, kTooLarge, kClosed };
  HeadState ReadHead(size_t limit, absl::string_view* head) {
    while (true) {
      absl::string_view have(buf_.data() + begin_, buffered());
      size_t end = FindHeadEnd(have);
      if (end != absl::string_view::npos && end <= limit) {
        *head = have.substr(0, end);
        return HeadState::kComplete;
      }
      if (end != absl::string_view::npos || have.size() >= limit) {
        *head = have;
        return HeadState::kTooLarge;
      }
      if (begin_ > 0) {  // keep the partial head at the front
        std::memmove(buf_.data(), buf_.data() + begin_, buffered());
        end_ -= begin_;
        begin_ = 0;
      }
      if (end_ == buf_.size()) {
        buf_.resize(std::min(buf_.size() * 2, std::max(limit, kReadSize)));
      }
      if (Fill() <= 0) return HeadState::kClosed;
    }
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (hijacked_) return static_cast<ssize_t>(size);  // the handler owns it
    if (hold_next_) {
      hold_next_ = false;
      held_.assign(ptr, size);
      return static_cast<ssize_t>(size);
    }
    if (!held_.empty()) {
      return WriteWithHeld(ptr, size) ? static_cast<ssize_t>(size) : -1;
    }
    if (tls_ != nullptr) {
      if (tls_->WriteAll(absl::string_view(ptr, size), write_timeout_)) {
        return static_cast<ssize_t>(size);
      }
      broken_ = true;
      return -1;
    }
    // The socket's SO_SNDTIMEO bounds the wait (no poll per write).
    ssize_t n;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) broken_ = true;
    return n;
  }

  // httplib asks for both on every request: ask the kernel once per
  // connection (two syscalls per request saved).
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    if (remote_port_ < 0) AddressOf(fd_, true, remote_ip_, remote_port_);
    ip = remote_ip_;
    port = remote_port_;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    if (local_port_ < 0) AddressOf(fd_, false, local_ip_, local_port_);
    ip = local_ip_;
    port = local_port_;
  }
  socket_t socket() const override { return fd_; }

  // See FrontServer::CoalesceResponseHead.
  void HoldNextWrite() { hold_next_ = true; }
  // Sends what is held (the request is done). False if that failed.
  bool FlushHeld() {
    hold_next_ = false;
    if (held_.empty()) return true;
    return WriteWithHeld(nullptr, 0);
  }

  // A read or write timed out: the connection cannot carry another request
  // (httplib may still have answered 400 on it).
  bool broken() const { return broken_ || hijacked_; }

  // See FrontServer::CloseCurrentConnectionAfterResponse.
  void CloseAfterResponse() { close_after_ = true; }
  bool close_after() const { return close_after_; }

  // Hands the connection to an upgrade handler (see HijackCurrentConnection).
  std::string Hijack() {
    hijacked_ = true;
    std::string rest(buf_.data() + begin_, buffered());
    begin_ = end_;
    return rest;
  }

  // What an upgrade handler reads and writes.
  Connection* connection() {
    if (tls_ != nullptr) return tls_;
    return &plain_;
  }

  // Waits for the next request to start: buffered bytes or socket input.
  bool WaitForRequest(int timeout_ms) const {
    return buffered() > 0 || (tls_ != nullptr && tls_->HasPending()) ||
           PollFor(fd_, POLLIN, timeout_ms) > 0;
  }

 private:
  static constexpr size_t kReadSize = 16 * 1024;

  size_t buffered() const { return end_ - begin_; }

  // The held bytes and then `ptr`, whole, in as few sends as the socket
  // takes (one, as a rule).
  bool WriteWithHeld(const char* ptr, size_t size) {
    std::string held = std::move(held_);
    held_.clear();
    if (tls_ != nullptr) {
      held.append(ptr, size);
      if (tls_->WriteAll(held, write_timeout_)) return true;
      broken_ = true;
      return false;
    }
    iovec iov[2] = {{held.data(), held.size()}, {const_cast<char*>(ptr), size}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = size > 0 ? 2 : 1;
    while (msg.msg_iovlen > 0) {
      // The socket's SO_SNDTIMEO bounds the wait.
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
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

  // One read from the connection into the free space after end_.
  ssize_t Fill() {
    ssize_t n;
    char* at = buf_.data() + end_;
    size_t room = buf_.size() - end_;
    if (tls_ != nullptr) {
      n = tls_->Read(at, room, read_timeout_);
    } else {
      // The socket's SO_RCVTIMEO bounds the wait (no poll per read).
      do {
        n = ::recv(fd_, at, room, 0);
      } while (n < 0 && errno == EINTR);
    }
    if (n < 0) broken_ = true;  // timed out (EAGAIN) or failed
    if (n > 0) end_ += static_cast<size_t>(n);
    return n;
  }

  void SetTimeout(int option, absl::Duration d) {
    timeval tv = absl::ToTimeval(std::max(d, absl::Milliseconds(1)));
    ::setsockopt(fd_, SOL_SOCKET, option, &tv, sizeof(tv));
  }

  const int fd_;
  TlsConnection* const tls_;
  const absl::Duration read_timeout_;
  const absl::Duration write_timeout_;
  const int read_timeout_ms_;
  const int write_timeout_ms_;
  // Grows past kReadSize only while a long request head is read (up to
  // max_request_head_bytes).
  std::string buf_ = std::string(kReadSize, '\0');
  size_t begin_ = 0;
  size_t end_ = 0;
  bool broken_ = false;
  bool hijacked_ = false;
  bool close_after_ = false;
  mutable std::string remote_ip_, local_ip_;  // cached, see above
  mutable int remote_port_ = -1, local_port_ = -1;
  bool hold_next_ = false;
  std::string held_;  // a response head waiting for its body
  PlainConnection plain_{fd_};
};

RateLimiter::Options IpLimits(const ConnectionOptions& o) {
  RateLimiter::Options limits;
  limits.per_minute = o.connections_per_ip_per_minute;
  limits.concurrent = o.max_connections_per_ip;
  limits.capacity =
      static_cast<size_t>(std::max<int64_t>(1, o.client_ip_capacity));
  return limits;
}

}  // namespace

FrontServer::FrontServer(ConnectionOptions options)
    : options_(options), ip_limiter_(IpLimits(options)) {
  set_tcp_nodelay(true);
  // Our loop enforces these; httplib only announces them in Keep-Alive.
  set_keep_alive_timeout(
      std::max<time_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
  set_keep_alive_max_count(options_.keep_alive_max_requests);
}

bool FrontServer::CurrentVisitorConnected() {
  if (tl_current_socket < 0) return true;
  // A TLS visitor's close_notify is bytes on the socket: ask OpenSSL.
  if (tl_current_tls != nullptr) return tl_current_tls->PeerConnected();
  char c;
  ssize_t n = ::recv(tl_current_socket, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;  // pipelined bytes: still there
  if (n == 0) return false;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

void FrontServer::CloseCurrentConnectionAfterResponse() {
  if (tl_current_stream != nullptr) tl_current_stream->CloseAfterResponse();
}

void FrontServer::SetListenBacklog(int backlog) {
  socket_t fd = svr_sock_;
  // listen() on a listening socket only updates its backlog (Linux).
  if (fd != INVALID_SOCKET) ::listen(fd, backlog);
}

void FrontServer::CoalesceResponseHead() {
  if (tl_current_stream != nullptr) tl_current_stream->HoldNextWrite();
}

FrontServer::Hijacked FrontServer::HijackCurrentConnection() {
  Hijacked h;
  if (tl_current_stream == nullptr) return h;
  h.conn = tl_current_stream->connection();
  h.buffered = tl_current_stream->Hijack();
  return h;
}

void FrontServer::ShutdownConnections() {
  absl::MutexLock lock(&mu_);
  for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
}

void FrontServer::RefuseConnection(int sock, const RateLimiter::Decision& d) {
  const bool rate = d.verdict == RateLimiter::Verdict::kRateLimited;
  if (connection_refused_) connection_refused_(d.verdict);
  // A TLS visitor would cost a handshake to be told: it is just closed.
  if (tls_ == nullptr) {
    HeadRejection refusal{
        429,
        rate ? "client_connection_rate_limited" : "client_connection_limited",
        rate ? "too many new connections from your address; wait and retry"
             : "too many open connections from your address"};
    std::string extra =
        absl::StrCat("Retry-After: ", rate ? CeilSeconds(d.reset) : 1, "\r\n");
    if (rate) {
      absl::StrAppend(&extra, "X-RateLimit-Limit: ", d.limit,
                      "\r\nX-RateLimit-Remaining: ", d.remaining,
                      "\r\nX-RateLimit-Reset: ", CeilSeconds(d.reset), "\r\n");
    }
    const std::string out = RejectionResponse(refusal, extra);
    // Never waits for room: a refused visitor gets what fits at once.
    (void)::send(sock, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    LingerBeforeClose(sock);
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
}

bool FrontServer::process_and_close_socket(socket_t sock) {
  RateLimiter::Slot* ip_slot = nullptr;
  if (ip_limiter_.enabled()) {
    std::string ip;
    int port = 0;
    AddressOf(sock, /*peer=*/true, ip, port);
    RateLimiter::Decision d = ip_limiter_.Acquire(ip, options_.clock());
    if (d.slot == nullptr) {
      RefuseConnection(sock, d);
      return false;
    }
    ip_slot = d.slot;
  }
  {
    absl::MutexLock lock(&mu_);
    open_.insert(sock);
  }
  tl_current_socket = sock;
  int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::unique_ptr<TlsConnection> tls;
  bool handshake_ok = true;
  if (tls_ != nullptr) {
    tls = std::make_unique<TlsConnection>(sock, tls_.get());
    handshake_ok = tls->Handshake(options_.read_timeout);
    tl_current_tls = tls.get();
  }
  VisitorStream strm(sock, tls.get(), options_);
  tl_current_stream = &strm;
  const int keep_alive_ms = ToMillis(options_.keep_alive_timeout);
  bool ret = false;
  size_t remaining = options_.keep_alive_max_requests;
  while (handshake_ok && svr_sock_ != INVALID_SOCKET && remaining > 0 &&
         strm.WaitForRequest(keep_alive_ms)) {
    absl::string_view head;
    VisitorStream::HeadState state =
        strm.ReadHead(options_.max_request_head_bytes, &head);
    if (state == VisitorStream::HeadState::kClosed) break;
    HeadRejection bad =
        state == VisitorStream::HeadState::kTooLarge
            ? HeadTooLarge(head, options_.max_request_head_bytes)
            : CheckRequestHead(head);
    if (bad.status != 0) {
      // Answered here, never by httplib, and the connection ends: what
      // follows a broken head cannot be trusted to start a request.
      if (head_rejected_) {  // counted before the visitor can see it
        std::string ip;
        int port = 0;
        strm.get_remote_ip_and_port(ip, port);
        head_rejected_(bad.status, bad.code, ip);
      }
      const std::string answer = RejectionResponse(bad);
      (void)strm.write(answer.data(), answer.size());
      if (tls != nullptr) tls->Close();
      LingerBeforeClose(sock);
      ret = false;
      break;
    }
    bool connection_closed = false;
    // httplib answers some heads we pass (an unknown method) with its own
    // 4xx before the setup hook; such a connection is closed too.
    bool parsed = false;
    ret = process_request(strm, /*close_connection=*/remaining == 1,
                          connection_closed, [&](httplib::Request& req) {
                            parsed = true;
                            if (setup_request_) setup_request_(req);
                          });
    if (!strm.FlushHeld()) ret = false;
    if (request_done_) request_done_();
    if (!ret || !parsed || connection_closed || strm.broken() ||
        strm.close_after()) {
      break;
    }
    --remaining;
  }
  tl_current_socket = -1;
  tl_current_stream = nullptr;
  tl_current_tls = nullptr;
  {
    absl::MutexLock lock(&mu_);
    open_.erase(sock);
  }
  if (tls != nullptr && handshake_ok && !strm.broken()) tls->Close();
  // A request body was left unread: let the answer reach the visitor.
  if (strm.close_after() && !strm.broken()) LingerBeforeClose(sock);
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  if (ip_slot != nullptr) ip_limiter_.Release(ip_slot);
  return ret;
}

}  // namespace tunnel::httpfront
