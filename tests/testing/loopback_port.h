// A loopback TCP port nothing listens on now (bound, then closed): for a
// test that needs a refused connection, or a port to hand a server that
// cannot take port 0 (redis-server's --port 0 turns TCP off).
#ifndef TUNNEL_TESTS_TESTING_LOOPBACK_PORT_H_
#define TUNNEL_TESTS_TESTING_LOOPBACK_PORT_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace tunnel::testing {

inline int UnusedLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

}  // namespace tunnel::testing

#endif  // TUNNEL_TESTS_TESTING_LOOPBACK_PORT_H_
