// Blocking socket I/O with deadlines, for the raw (upgraded) connections
// both sides relay, and socket queries. Thread-safe (stateless).
#ifndef TUNNEL_COMMON_SOCKET_IO_H_
#define TUNNEL_COMMON_SOCKET_IO_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tunnel::common {

// A connected TCP socket (TCP_NODELAY) to host:port, trying each address.
absl::StatusOr<int> ConnectTcp(const std::string& host, int port,
                               absl::Duration timeout);
// recv with a timeout: > 0 bytes, 0 at EOF, < 0 on error or timeout.
ssize_t ReadSome(int fd, char* buf, size_t n, absl::Duration timeout);
// Sends all of `data`, waiting at most `timeout` for room each time.
bool WriteAll(int fd, absl::string_view data, absl::Duration timeout);
// Bytes received on a socket and not read yet (FIONREAD); 0 on error.
size_t BytesWaiting(int fd);
// "host:port" -> parts. Accepts "[v6]:port" and ":port" (all interfaces).
absl::Status SplitHostPort(absl::string_view addr, std::string* host,
                           int* port);
// 127.0.0.0/8, ::1 or "localhost".
bool IsLoopbackHost(absl::string_view host);
// An IPv4 or IPv6 address (not a name).
bool IsIpAddress(absl::string_view host);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_SOCKET_IO_H_
