// hold_connections: opens many visitor connections to an HTTP server and
// holds them, to measure (tools/bench/held.sh) and test
// (tests/e2e/scale_e2e.py) what held connections cost a server and whether
// it still serves others meanwhile.
//
// Kinds of connection, each counted on its own:
//   idle        TCP (with --tls: a finished TLS handshake), nothing sent
//   slow-head   a request line and one header, then one more header line
//               every --slow-interval; the head never ends (slowloris)
//   keep-alive  one whole request, its response read, then held open
//   handshake   (--tls only) TCP connected, the TLS handshake never started
//
// It prints `ready …` once every connection is open (and every keep-alive
// request answered or failed), then holds them until --hold has passed or
// stdin closes, and prints one `closed …` line per kind: how many the server
// closed, when the first and last closed (seconds after `ready`), and how
// many got an answer before the close (its status, e.g. 408). Everything is
// one thread on epoll; every wait is bounded by --hold and --connect-timeout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "openssl/err.h"
#include "openssl/ssl.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

enum class Kind { kIdle, kSlowHead, kKeepAlive, kHandshake };
constexpr Kind kKinds[] = {Kind::kIdle, Kind::kSlowHead, Kind::kKeepAlive,
                           Kind::kHandshake};
const char* KindName(Kind k) {
  switch (k) {
    case Kind::kIdle:
      return "idle";
    case Kind::kSlowHead:
      return "slow-head";
    case Kind::kKeepAlive:
      return "keep-alive";
    default:
      return "handshake";
  }
}

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string host_header = "localhost";
  std::string path = "/";
  int idle = 0;
  int slow_head = 0;
  int keep_alive = 0;
  int handshake = 0;
  bool tls = false;
  double hold_s = 60;
  double slow_interval_s = 1;
  double connect_timeout_s = 30;
  int batch = 200;  // connects in flight at once
};

struct Conn {
  Kind kind;
  int fd = -1;
  SSL* ssl = nullptr;
  bool connected = false;  // TCP (and TLS handshake) done
  bool ready = false;      // in its held state
  bool answered = false;   // keep-alive: a whole response came
  bool closed = false;     // the server closed it (or it failed)
  bool failed = false;     // could not be opened
  int status = 0;          // status line seen before the close
  std::string out;         // bytes still to send
  std::string in;          // bytes received
  Clock::time_point closed_at;
  Clock::time_point next_slow;
};

[[noreturn]] void Usage() {
  std::fprintf(stderr,
               "usage: hold_connections --addr HOST:PORT [--host-header H] "
               "[--path P] [--idle N] [--slow-head N] [--keep-alive N] "
               "[--tls [--handshake N]] [--hold SECONDS] "
               "[--slow-interval SECONDS] [--connect-timeout SECONDS]\n");
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (a == "--addr") {
      std::string v = value();
      size_t colon = v.rfind(':');
      if (colon == std::string::npos) Usage();
      o.host = v.substr(0, colon);
      o.port = std::atoi(v.c_str() + colon + 1);
    } else if (a == "--host-header") {
      o.host_header = value();
    } else if (a == "--path") {
      o.path = value();
    } else if (a == "--idle") {
      o.idle = std::atoi(value().c_str());
    } else if (a == "--slow-head") {
      o.slow_head = std::atoi(value().c_str());
    } else if (a == "--keep-alive") {
      o.keep_alive = std::atoi(value().c_str());
    } else if (a == "--handshake") {
      o.handshake = std::atoi(value().c_str());
    } else if (a == "--tls") {
      o.tls = true;
    } else if (a == "--hold") {
      o.hold_s = std::atof(value().c_str());
    } else if (a == "--slow-interval") {
      o.slow_interval_s = std::atof(value().c_str());
    } else if (a == "--connect-timeout") {
      o.connect_timeout_s = std::atof(value().c_str());
    } else {
      Usage();
    }
  }
  if (o.port <= 0 || (o.handshake > 0 && !o.tls)) Usage();
  return o;
}

class Holder {
 public:
  explicit Holder(Options o) : o_(std::move(o)) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (o_.tls) {
      ctx_ = SSL_CTX_new(TLS_client_method());
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    }
    auto add = [&](Kind k, int n) {
      for (int i = 0; i < n; ++i) {
        conns_.push_back(std::make_unique<Conn>());
        conns_.back()->kind = k;
      }
    };
    add(Kind::kIdle, o_.idle);
    add(Kind::kSlowHead, o_.slow_head);
    add(Kind::kKeepAlive, o_.keep_alive);
    add(Kind::kHandshake, o_.handshake);
  }

  int Run() {
    const Clock::time_point start = Clock::now();
    const auto give_up =
        start + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>(o_.connect_timeout_s));
    size_t next = 0;
    // Open in batches: a burst of thousands of SYNs overflows any backlog.
    while (Clock::now() < give_up) {
      while (next < conns_.size() && Opening() < o_.batch)
        Open(*conns_[next++]);
      if (next == conns_.size() && Opening() == 0) break;
      Poll(50);
    }
    ready_at_ = Clock::now();
    Report("ready", ready_at_);
    std::fflush(stdout);
    const auto until =
        ready_at_ + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(o_.hold_s));
    while (Clock::now() < until && !StdinClosed()) Poll(100);
    Report("held", Clock::now());
    for (Kind k : kKinds) {
      PrintClosed(k);
    }
    std::fflush(stdout);
    return 0;
  }

 private:
  int Opening() const {
    int n = 0;
    for (const auto& c : conns_) {
      if (c->fd >= 0 && !c->ready && !c->closed) ++n;
    }
    return n;
  }

  void Open(Conn& c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      Fail(c);
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(o_.port));
    inet_pton(AF_INET, o_.host.c_str(), &a.sin_addr);
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 &&
        errno != EINPROGRESS) {
      Fail(c);
      return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &c;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
  }

  void Fail(Conn& c) {
    c.failed = c.closed = true;
    c.closed_at = Clock::now();
    if (c.fd >= 0) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
  }

  std::string Head(bool complete) const {
    std::string h = "GET " + o_.path + " HTTP/1.1\r\nHost: " + o_.host_header +
                    "\r\nUser-Agent: hold_connections\r\n";
    if (complete) h += "\r\n";
    return h;
  }

  // Moves a connection on after TCP connect / events.
  void Step(Conn& c) {
    if (c.closed) return;
    if (!c.connected) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) return Fail(c);
      sockaddr_storage peer;
      socklen_t plen = sizeof(peer);
      if (getpeername(c.fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
        return;  // still connecting
      }
      if (o_.tls && c.kind != Kind::kHandshake && c.ssl == nullptr) {
        c.ssl = SSL_new(ctx_);
        SSL_set_fd(c.ssl, c.fd);
        SSL_set_connect_state(c.ssl);
      }
      if (c.ssl != nullptr) {
        ERR_clear_error();
        int r = SSL_do_handshake(c.ssl);
        if (r != 1) {
          int e = SSL_get_error(c.ssl, r);
          if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            return Fail(c);
          }
          return;
        }
      }
      c.connected = true;
      switch (c.kind) {
        case Kind::kIdle:
        case Kind::kHandshake:
          c.ready = true;
          break;
        case Kind::kSlowHead:
          c.out = Head(false);
          c.next_slow = Clock::now();
          c.ready = true;
          break;
        case Kind::kKeepAlive:
          c.out = Head(true);
          break;
      }
    }
    Flush(c);
    Drain(c);
  }

  void Flush(Conn& c) {
    while (!c.out.empty() && !c.closed) {
      ssize_t n;
      if (c.ssl != nullptr) {
        ERR_clear_error();
        int r = SSL_write(c.ssl, c.out.data(), static_cast<int>(c.out.size()));
        if (r <= 0) {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
          return Closed(c);
        }
        n = r;
      } else {
        n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EAGAIN) return;
          return Closed(c);
        }
      }
      c.out.erase(0, static_cast<size_t>(n));
    }
  }

  void Drain(Conn& c) {
    char buf[16384];
    while (!c.closed && c.connected) {
      ssize_t n;
      if (c.ssl != nullptr) {
        ERR_clear_error();
        int r = SSL_read(c.ssl, buf, sizeof(buf));
        if (r <= 0) {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
          return Closed(c);
        }
        n = r;
      } else {
        n = recv(c.fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) return Closed(c);
      }
      c.in.append(buf, static_cast<size_t>(n));
      if (c.status == 0 && c.in.size() >= 12 &&
          c.in.compare(0, 5, "HTTP/") == 0) {
        c.status = std::atoi(c.in.c_str() + 9);
      }
      if (c.kind == Kind::kKeepAlive && !c.answered && Complete(c.in)) {
        c.answered = true;
        c.ready = true;
        c.in.clear();  // what comes next (if anything) is another answer
        c.status = 0;
      }
    }
  }

  // A whole response with Content-Length (what a keep-alive answer has).
  static bool Complete(const std::string& in) {
    size_t end = in.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    std::string head = in.substr(0, end);
    for (char& ch : head) ch = static_cast<char>(std::tolower(ch));
    size_t cl = head.find("\r\ncontent-length:");
    if (cl == std::string::npos) return true;
    size_t len = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
    return in.size() >= end + 4 + len;
  }

  void Closed(Conn& c) {
    c.closed = true;
    c.ready = true;
    c.closed_at = Clock::now();
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    if (c.ssl != nullptr) SSL_free(c.ssl);
    c.ssl = nullptr;
    close(c.fd);
    c.fd = -1;
  }

  void Poll(int ms) {
    epoll_event evs[256];
    int n = epoll_wait(ep_, evs, 256, ms);
    for (int i = 0; i < n; ++i) Step(*static_cast<Conn*>(evs[i].data.ptr));
    const Clock::time_point now = Clock::now();
    const auto every = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(o_.slow_interval_s));
    for (auto& c : conns_) {
      if (c->kind == Kind::kSlowHead && c->connected && !c->closed &&
          now >= c->next_slow) {
        c->out += "X-Slow: a\r\n";
        c->next_slow = now + every;
        Flush(*c);
      }
    }
  }

  static bool StdinClosed() {
    pollfd p{0, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    char b[256];
    return read(0, b, sizeof(b)) <= 0;
  }

  void Report(const char* what, Clock::time_point at) {
    std::map<std::string, int> open, failed;
    int answered = 0;
    for (const auto& c : conns_) {
      std::string k = KindName(c->kind);
      if (c->failed) {
        ++failed[k];
      } else if (!c->closed) {
        ++open[k];
      }
      if (c->answered) ++answered;
    }
    std::printf("%s after_s=%.2f", what, Seconds(at - ready_at_));
    for (Kind k : kKinds) {
      std::printf(" %s_open=%d %s_failed=%d", KindName(k), open[KindName(k)],
                  KindName(k), failed[KindName(k)]);
    }
    std::printf(" keep-alive_answered=%d\n", answered);
  }

  void PrintClosed(Kind k) {
    int n = 0;
    double first = -1, last = -1;
    std::map<int, int> statuses;
    for (const auto& c : conns_) {
      if (c->kind != k || !c->closed || c->failed) continue;
      double at = Seconds(c->closed_at - ready_at_);
      if (n == 0 || at < first) first = at;
      if (n == 0 || at > last) last = at;
      ++n;
      if (c->status != 0) ++statuses[c->status];
    }
    std::printf("closed kind=%s n=%d first_s=%.2f last_s=%.2f", KindName(k), n,
                first, last);
    for (const auto& [s, count] : statuses) {
      std::printf(" status_%d=%d", s, count);
    }
    std::printf("\n");
  }

  const Options o_;
  int ep_ = -1;
  SSL_CTX* ctx_ = nullptr;
  std::vector<std::unique_ptr<Conn>> conns_;
  Clock::time_point ready_at_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o = Parse(argc, argv);
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  return Holder(std::move(o)).Run();
}
