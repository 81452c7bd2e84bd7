// cpp-httplib's Server with our own connection loop.
//
// cpp-httplib 0.11.4 (Debian's build) would otherwise: gzip our streamed
// responses when the visitor accepts it (double-encoding what the service
// already encoded), slice responses itself for Range requests the service
// already answered, close keep-alive connections after 5 requests, and poll
// idle connections every 10 ms. Overriding the (private, virtual)
// process_and_close_socket lets us run the protected process_request with a
// setup hook that gets the mutable Request before routing, own the socket
// (timeouts via poll, one read buffer per connection, shutdown of live
// connections on Stop), and let handlers ask whether their visitor is still
// connected. With EnableTls every connection is TLS: the handshake runs on
// the worker under the read timeout, and the same timeouts bound every TLS
// read and write (the socket is non-blocking; waits are polls).
//
// Threads: process_and_close_socket runs on the task-queue workers; the
// static helpers refer to the calling worker's connection.
#ifndef TUNNEL_HTTPFRONT_FRONT_SERVER_H_
#define TUNNEL_HTTPFRONT_FRONT_SERVER_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "httpfront/rate_limits.h"
#include "httplib.h"

namespace tunnel::httpfront {

struct ConnectionOptions {
  int listen_backlog = 4096;
  absl::Duration read_timeout =
      absl::Seconds(60);  // visitor silent mid-request
  absl::Duration write_timeout = absl::Seconds(60);  // visitor not reading
  absl::Duration keep_alive_timeout = absl::Seconds(30);
  size_t keep_alive_max_requests = 10000;
  // Per client IP (the socket's peer address, never a header): connections
  // open at once, and new connections per minute. 0: unlimited. Over either,
  // the connection gets a minimal 429 (TLS: is closed) and no request is
  // read from it. At most `client_ip_capacity` idle IPs are remembered.
  int64_t max_connections_per_ip = 0;
  int64_t connections_per_ip_per_minute = 0;
  int64_t client_ip_capacity = 100000;
  // The per-IP limits' clock (tests move it forward).
  absl::Time (*clock)() = &absl::Now;
  // Request line + header fields + the blank line. A bigger head gets 431
  // (a request line over httplib's 8 KiB: 414) and the connection closes.
  size_t max_request_head_bytes = 64 * 1024;
};

// A visitor's connection as an upgrade handler sees it: plain TCP or TLS.
// One thread may read while another writes; neither call is made from two
// threads at once.
class Connection {
 public:
  virtual ~Connection() = default;
  // > 0 bytes, 0 once the visitor ended its direction, < 0 on error or when
  // nothing arrived within `timeout`.
  virtual ssize_t Read(char* buf, size_t n, absl::Duration timeout) = 0;
  // Writes all of `data`, waiting at most `timeout` for room each time.
  virtual bool WriteAll(absl::string_view data, absl::Duration timeout) = 0;
  // Ends our direction (TLS: close_notify, then FIN); reading goes on.
  virtual void ShutdownWrite() = 0;
  // Ends both directions; wakes a thread blocked in Read or WriteAll.
  virtual void ShutdownBoth() = 0;
};

class FrontServer : public httplib::Server {
 public:
  explicit FrontServer(ConnectionOptions options);

  // Serves TLS with `ctx` on every connection. Call before listening.
  void EnableTls(common::SslCtxPtr ctx) { tls_ = std::move(ctx); }

  // Runs for every request after its head is parsed, before routing.
  void set_setup_request(std::function<void(httplib::Request&)> fn) {
    setup_request_ = std::move(fn);
  }

  // Runs on the worker after each request on a connection is over (its
  // response written, or the attempt failed), whether or not a handler ran.
  void set_request_done(std::function<void()> fn) {
    request_done_ = std::move(fn);
  }

  // Runs on the worker for each connection refused at a per-IP limit
  // (kRateLimited: connections per minute; kConcurrencyLimited: at once).
  void set_connection_refused(std::function<void(RateLimiter::Verdict)> fn) {
    connection_refused_ = std::move(fn);
  }

  // Runs on the worker when a request head was refused before httplib saw
  // it (see request_head.h): its status, X-Tunnel-Error code and the
  // visitor's address. The answer is written and the connection closed
  // right after; request_done does not run for it.
  void set_head_rejected(std::function<void(int status, absl::string_view code,
                                            const std::string& remote)>
                             fn) {
    head_rejected_ = std::move(fn);
  }

  // After binding: raises the accept backlog (httplib's build listens with a
  // backlog of 5, which drops connections in any burst).
  void SetListenBacklog(int backlog);

  // Shuts down every open visitor connection (wakes blocked workers).
  void ShutdownConnections();

  // For handlers: false once the visitor of the calling worker's connection
  // has closed it (EOF or error). Never blocks.
  static bool CurrentVisitorConnected();

  // For handlers: the calling worker's connection is closed once the current
  // response is written (e.g. an unread request body is left on it). The
  // response should say `Connection: close`.
  static void CloseCurrentConnectionAfterResponse();

  // For an upgrade handler: takes the calling worker's connection over.
  // Returns the connection (valid until the handler returns; it is closed
  // then) and the bytes already read past the request head; from now on
  // httplib's own writes on this connection are discarded. `conn` is null if
  // there is no current connection.
  struct Hijacked {
    Connection* conn = nullptr;
    std::string buffered;
  };
  static Hijacked HijackCurrentConnection();

  // For a handler whose response body is complete in memory (res.body):
  // the head httplib writes next is held and goes out with the body in one
  // send, not two (one packet, one wake-up of the visitor, one syscall).
  // Whatever is held is sent at the latest when the request is done.
  static void CoalesceResponseHead();

 private:
  bool process_and_close_socket(socket_t sock) override;
  // Answers a connection refused at a per-IP limit and closes it.
  void RefuseConnection(int sock, const RateLimiter::Decision& d);

  const ConnectionOptions options_;
  std::function<void(httplib::Request&)> setup_request_;
  std::function<void()> request_done_;
  std::function<void(RateLimiter::Verdict)> connection_refused_;
  RateLimiter ip_limiter_;
  std::function<void(int, absl::string_view, const std::string&)>
      head_rejected_;
  common::SslCtxPtr tls_;
  absl::Mutex mu_;
  absl::flat_hash_set<int> open_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_FRONT_SERVER_H_
