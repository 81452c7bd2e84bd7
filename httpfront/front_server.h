// The front door's connection layer: cpp-httplib's request handling on our
// own event loops, with no thread per visitor connection.
//
// A few loop threads (EventLoop, one per core by default) share the
// listening socket and own every visitor connection. A connection that
// waits costs memory, never a thread:
//   - TLS handshake, idle keep-alive, and a request head arriving: the
//     connection is parked in its loop's epoll set; the loop reads the head
//     itself (non-blocking) and checks it (request_head.h);
//   - once a whole head is there, httplib's process_request runs on a fiber
//     (event_loop.h) with our Stream, whose reads and writes yield to the
//     loop when the socket is not ready; the handler's waits for the agent
//     yield too (common/fiber_wait.h). When the request is done and no next
//     head is buffered, the fiber goes back to its pool and the connection
//     is parked again.
// Accept-time bounds (--max-connections, the per-IP limits) answer at once
// with a minimal 503/429 and close; nothing waits in a queue of ours.
//
// We still override cpp-httplib 0.11.4 (Debian's build) where it would break
// a transparent proxy: its setup hook sees the mutable request before
// routing (the front door parks Accept-Encoding and Content-Encoding there),
// the Range header is parked before httplib parses it (see
// docs/DESIGN.md), and keep-alive limits and timeouts are ours.
//
// Threads: Listen/StopAccepting/Stop from one owner thread. Hooks and
// handlers run on the loop threads (on a request's fiber); the static
// helpers refer to the calling fiber's connection.
#ifndef TUNNEL_HTTPFRONT_FRONT_SERVER_H_
#define TUNNEL_HTTPFRONT_FRONT_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "httpfront/rate_limits.h"
#include "httpfront/request_record.h"
#include "httplib.h"

namespace tunnel::httpfront {

inline constexpr int64_t kDefaultMaxConnections = 50000;

struct ConnectionOptions {
  int listen_backlog = 4096;
  // Loop threads serving visitor connections; 0: one per CPU.
  int threads = 0;
  // Visitor connections open at once (all states). Beyond, a new connection
  // gets a minimal 503 (TLS: is closed) and no request is read from it.
  // 0: as many as the open-file limit allows, at most kDefaultMaxConnections.
  int64_t max_connections = 0;
  // A request head must arrive whole within this (else 408 and close); a
  // body read, an upgrade's, makes no progress this long: closed.
  absl::Duration read_timeout = absl::Seconds(60);
  absl::Duration write_timeout = absl::Seconds(60);  // visitor not reading
  absl::Duration keep_alive_timeout = absl::Seconds(30);
  absl::Duration tls_handshake_timeout = absl::Seconds(10);
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
  // Each request fiber's stack (a guard page below traps overflow).
  size_t fiber_stack_bytes = 256 * 1024;
  // How often a loop gives back the stacks a burst of requests left idle
  // (EventLoop::Options::idle_trim_interval; README, "The fiber pool").
  absl::Duration fiber_trim_interval = absl::Seconds(1);
};

// A visitor's connection as an upgrade handler sees it: plain TCP or TLS.
// Called from fibers of the connection's loop: one may read while another
// writes.
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
  // Ends both directions; wakes a fiber waiting in Read or WriteAll.
  virtual void ShutdownBoth() = 0;
};

// Why a connection was refused before any request was read from it.
enum class ConnectionRefusal {
  kMaxConnections,  // --max-connections
  kIpRate,          // --connections-per-ip-per-minute
  kIpConcurrency,   // --max-connections-per-ip
};

// Visitor connections by state, for metrics (relaxed counts).
struct ConnectionCounts {
  int64_t handshake = 0;     // TLS handshake in progress
  int64_t idle = 0;          // waiting for a request to start
  int64_t reading_head = 0;  // a head has started to arrive
  int64_t active = 0;        // a request is being served (on a fiber)
  int64_t upgraded = 0;      // raw bytes relayed after a 101
  int64_t lingering = 0;     // answered and closing
  int64_t fibers = 0;        // fibers with a stack (running, waiting, pooled)
  // Wake-ups other threads (the agents' gRPC thread) delivered to the loops,
  // and the eventfd writes they took (one per batch).
  uint64_t remote_wakeups = 0;
  uint64_t eventfd_writes = 0;
};

class FrontServer : public httplib::Server {
  class Conn;  // one visitor connection (front_server.cc)

 public:
  explicit FrontServer(ConnectionOptions options);
  ~FrontServer() override;

  // Serves TLS with `ctx` on every connection. Call before Listen.
  void EnableTls(common::SslCtxPtr ctx) { tls_ = std::move(ctx); }

  // Runs for every request after its head is parsed, before routing.
  void set_setup_request(std::function<void(httplib::Request&)> fn) {
    setup_request_ = std::move(fn);
  }

  // Runs after each request on a connection is over (its response written,
  // or the attempt failed), whether or not a handler ran.
  void set_request_done(std::function<void()> fn) {
    request_done_ = std::move(fn);
  }

  // Runs for each connection refused at accept.
  void set_connection_refused(std::function<void(ConnectionRefusal)> fn) {
    connection_refused_ = std::move(fn);
  }

  // Runs when a request head was refused before httplib saw it (see
  // request_head.h; 408 when it did not arrive in time): its status,
  // X-Tunnel-Error code, the visitor's address and the X-Request-Id the
  // answer carries. The answer is written and the connection closed right
  // after; request_done does not run for it.
  void set_head_rejected(std::function<void(int status, absl::string_view code,
                                            const std::string& remote,
                                            const std::string& request_id)>
                             fn) {
    head_rejected_ = std::move(fn);
  }

  // Binds host:port (0: any free port), starts the loop threads and
  // accepting. Returns the port. Also raises the process's open-file limit
  // to its hard limit and lowers max_connections (with a warning) if even
  // that cannot hold them.
  absl::StatusOr<int> Listen(const std::string& host, int port);
  // Stops accepting new connections (the first step of Stop).
  void StopAccepting();
  // Closes every connection, ends every fiber (their waits return at once)
  // and joins the loop threads. Streams blocked on agents are failed by the
  // caller (closing the sessions) or give up at once.
  void Stop();

  ConnectionCounts counts() const;
  int64_t max_connections() const { return max_connections_; }

  // For handlers: false once the visitor of the calling fiber's connection
  // has closed it (EOF or error), or the server is stopping. Never blocks.
  static bool CurrentVisitorConnected();

  // For handlers: while a WatchVisitor lives on the calling fiber, a wait of
  // that fiber for anything but its own socket (the agent's answer) ends
  // early when the visitor's socket has news (input, hang-up, error): the
  // wait returns as at its deadline, and the handler looks at
  // CurrentVisitorConnected(). A visitor who leaves is noticed at once,
  // without polling.
  class WatchVisitor {
   public:
    WatchVisitor();
    ~WatchVisitor();
    WatchVisitor(const WatchVisitor&) = delete;
    WatchVisitor& operator=(const WatchVisitor&) = delete;

   private:
    Conn* const conn_;
  };

  // For handlers: the calling fiber's connection is closed once the current
  // response is written (e.g. an unread request body is left on it).
  static void CloseCurrentConnectionAfterResponse();

  // For handlers: the request record of the calling fiber's connection
  // (null off the loops).
  static RequestRecord* CurrentRecord();

  // For an upgrade handler: takes the calling fiber's connection over.
  // Returns the connection (valid until the handler returns; it is closed
  // then) and the bytes already read past the request head; from now on
  // httplib's own writes on this connection are discarded. `conn` is null if
  // there is no current connection.
  struct Hijacked {
    Connection* conn = nullptr;
    std::string buffered;
  };
  static Hijacked HijackCurrentConnection();

  // For an upgrade handler: runs `fn` on a second fiber of the calling
  // fiber's loop; `join()` (from the calling fiber) waits until it returned.
  // False if no fiber could be had (fn does not run).
  class Sibling {
   public:
    virtual ~Sibling() = default;
    virtual void Join() = 0;
  };
  static std::unique_ptr<Sibling> RunOnSiblingFiber(std::function<void()> fn);

  // Any thread: runs `fn` on a new fiber of one of the loops (in turn), not
  // tied to any connection. When no fiber can be had (the server is
  // stopping, or out of memory), `refused` runs instead, on a loop thread
  // or, when the server has stopped, on the caller's.
  void RunDetached(std::function<void()> fn, std::function<void()> refused);

  // For a handler whose response body is complete in memory (res.body):
  // the head httplib writes next is held and goes out with the body in one
  // send, not two (one packet, one wake-up of the visitor, one syscall).
  // Whatever is held is sent at the latest when the request is done.
  static void CoalesceResponseHead();

 private:
  class Lingerer;
  struct Loop;
  friend class Conn;

  // The calling fiber's connection, or null.
  static Conn* CurrentConn();
  void Accept(Loop* loop);
  void Refuse(Loop* loop, int fd, ConnectionRefusal why,
              const RateLimiter::Decision* d);
  void LingerAndClose(Loop* loop, int fd);
  bool ServeRequests(Conn* c);
  void Closed(Conn* c);

  const ConnectionOptions options_;
  int64_t max_connections_;
  std::function<void(httplib::Request&)> setup_request_;
  std::function<void()> request_done_;
  std::function<void(ConnectionRefusal)> connection_refused_;
  std::function<void(int, absl::string_view, const std::string&,
                     const std::string&)>
      head_rejected_;
  RateLimiter ip_limiter_;
  common::SslCtxPtr tls_;
  int listen_fd_ = -1;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<int64_t> open_{0};
  std::atomic<bool> stopped_{false};
  std::atomic<size_t> next_detached_{0};  // RunDetached's turn
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_FRONT_SERVER_H_
