#include "common/socket_io.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tunnel::common {
namespace {

int Millis(absl::Duration d) {
  int64_t ms = absl::ToInt64Milliseconds(d);
  return ms > INT32_MAX ? INT32_MAX : static_cast<int>(ms);
}

// poll() for one event, retrying on EINTR: > 0 ready, 0 timeout, < 0 error.
int WaitFor(int fd, short events, absl::Duration timeout) {
  while (true) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, Millis(timeout));
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

}  // namespace

absl::StatusOr<int> ConnectTcp(const std::string& host, int port,
                               absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints,
                             &res);
      rc != 0) {
    return absl::UnavailableError(gai_strerror(rc));
  }
  std::string last = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                      ai->ai_protocol);
    if (fd < 0) continue;
    // Bounds the connect (Linux applies the send timeout to connect()).
    timeval tv{static_cast<time_t>(absl::ToInt64Seconds(timeout)), 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      ::freeaddrinfo(res);
      return fd;
    }
    last = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return absl::UnavailableError(last);
}

ssize_t ReadSome(int fd, char* buf, size_t n, absl::Duration timeout) {
  while (true) {
    if (WaitFor(fd, POLLIN, timeout) <= 0) return -1;
    ssize_t r = ::recv(fd, buf, n, 0);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

bool WriteAll(int fd, absl::string_view data, absl::Duration timeout) {
  while (!data.empty()) {
    if (WaitFor(fd, POLLOUT, timeout) <= 0) return false;
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

size_t BytesWaiting(int fd) {
  int n = 0;
  if (ioctl(fd, FIONREAD, &n) != 0 || n < 0) return 0;
  return static_cast<size_t>(n);
}

absl::Status SplitHostPort(absl::string_view addr, std::string* host,
                           int* port) {
  size_t colon = addr.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", addr, "\" needs the form host:port"));
  }
  absl::string_view h = addr.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  }
  int p;
  if (!absl::SimpleAtoi(addr.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", addr, "\" has an invalid port"));
  }
  *host = h.empty() ? "0.0.0.0" : std::string(h);
  *port = p;
  return absl::OkStatus();
}

bool IsIpAddress(absl::string_view host) {
  const std::string h(host);
  in_addr a4;
  in6_addr a6;
  return inet_pton(AF_INET, h.c_str(), &a4) == 1 ||
         inet_pton(AF_INET6, h.c_str(), &a6) == 1;
}

bool IsLoopbackHost(absl::string_view host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a4;
  const std::string h(host);
  return inet_pton(AF_INET, h.c_str(), &a4) == 1 &&
         (ntohl(a4.s_addr) >> 24) == 127;
}

}  // namespace tunnel::common
