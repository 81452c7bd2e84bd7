#include "httpfront/front_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace tunnel::httpfront {
namespace {

thread_local int tl_current_socket = -1;
class VisitorStream;
thread_local VisitorStream* tl_current_stream = nullptr;

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
  VisitorStream(int fd, const ConnectionOptions& o)
      : fd_(fd),
        read_timeout_ms_(ToMillis(o.read_timeout)),
        write_timeout_ms_(ToMillis(o.write_timeout)) {
    SetTimeout(SO_RCVTIMEO, o.read_timeout);
    SetTimeout(SO_SNDTIMEO, o.write_timeout);
  }

  bool is_readable() const override {
    return buffered() > 0 || PollFor(fd_, POLLIN, read_timeout_ms_) > 0;
  }
  bool is_writable() const override {
    return PollFor(fd_, POLLOUT, write_timeout_ms_) > 0;
  }

  ssize_t read(char* ptr, size_t size) override {
    if (hijacked_) return -1;
    if (buffered() == 0) {
      // The socket's SO_RCVTIMEO bounds the wait (no poll per read).
      ssize_t n;
      do {
        n = ::recv(fd_, buf_, sizeof(buf_), 0);
      } while (n < 0 && errno == EINTR);
      if (n < 0) broken_ = true;  // timed out (EAGAIN) or failed
      if (n <= 0) return n;
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    size_t n = std::min(size, buffered());
    std::memcpy(ptr, buf_ + begin_, n);
    begin_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (hijacked_) return static_cast<ssize_t>(size);  // the handler owns it
    // The socket's SO_SNDTIMEO bounds the wait (no poll per write).
    ssize_t n;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) broken_ = true;
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

  // A read or write timed out: the connection cannot carry another request
  // (httplib may still have answered 400 on it).
  bool broken() const { return broken_ || hijacked_; }

  // Hands the connection to an upgrade handler (see HijackCurrentConnection).
  std::string Hijack() {
    hijacked_ = true;
    std::string rest(buf_ + begin_, buffered());
    begin_ = end_;
    return rest;
  }

  // Waits for the next request to start: buffered bytes or socket input.
  bool WaitForRequest(int timeout_ms) const {
    return buffered() > 0 || PollFor(fd_, POLLIN, timeout_ms) > 0;
  }

 private:
  size_t buffered() const { return end_ - begin_; }

  void SetTimeout(int option, absl::Duration d) {
    timeval tv = absl::ToTimeval(std::max(d, absl::Milliseconds(1)));
    ::setsockopt(fd_, SOL_SOCKET, option, &tv, sizeof(tv));
  }

  const int fd_;
  const int read_timeout_ms_;
  const int write_timeout_ms_;
  char buf_[16 * 1024];
  size_t begin_ = 0;
  size_t end_ = 0;
  bool broken_ = false;
  bool hijacked_ = false;
};

}  // namespace

FrontServer::FrontServer(ConnectionOptions options) : options_(options) {
  set_tcp_nodelay(true);
  // Our loop enforces these; httplib only announces them in Keep-Alive.
  set_keep_alive_timeout(
      std::max<time_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
  set_keep_alive_max_count(options_.keep_alive_max_requests);
}

bool FrontServer::CurrentVisitorConnected() {
  if (tl_current_socket < 0) return true;
  char c;
  ssize_t n = ::recv(tl_current_socket, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;  // pipelined bytes: still there
  if (n == 0) return false;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

void FrontServer::SetListenBacklog(int backlog) {
  socket_t fd = svr_sock_;
  // listen() on a listening socket only updates its backlog (Linux).
  if (fd != INVALID_SOCKET) ::listen(fd, backlog);
}

FrontServer::Hijacked FrontServer::HijackCurrentConnection() {
  Hijacked h;
  if (tl_current_stream == nullptr) return h;
  h.fd = tl_current_socket;
  h.buffered = tl_current_stream->Hijack();
  return h;
}

void FrontServer::ShutdownConnections() {
  absl::MutexLock lock(&mu_);
  for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
}

bool FrontServer::process_and_close_socket(socket_t sock) {
  {
    absl::MutexLock lock(&mu_);
    open_.insert(sock);
  }
  tl_current_socket = sock;
  int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  VisitorStream strm(sock, options_);
  tl_current_stream = &strm;
  const int keep_alive_ms = ToMillis(options_.keep_alive_timeout);
  bool ret = false;
  size_t remaining = options_.keep_alive_max_requests;
  while (svr_sock_ != INVALID_SOCKET && remaining > 0 &&
         strm.WaitForRequest(keep_alive_ms)) {
    bool connection_closed = false;
    ret = process_request(strm, /*close_connection=*/remaining == 1,
                          connection_closed, setup_request_);
    if (request_done_) request_done_();
    if (!ret || connection_closed || strm.broken()) break;
    --remaining;
  }
  tl_current_socket = -1;
  tl_current_stream = nullptr;
  {
    absl::MutexLock lock(&mu_);
    open_.erase(sock);
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ret;
}

}  // namespace tunnel::httpfront
