// sse_bench: Server-Sent Events at scale, for tools/bench/held.sh.
//
//   sse_bench serve --port P [--interval-ms 1000]
//     An HTTP/1.1 origin: every GET opens an event stream (chunked,
//     text/event-stream); every --interval-ms each open stream gets one event
//     carrying the send time (CLOCK_MONOTONIC, ns). Prints "port P".
//   sse_bench watch --addr HOST:PORT --path /t/sse/ --streams N
//                   [--seconds S] [--host-header H]
//     Opens N streams (through the tunnel or directly), reads events for S
//     seconds after all are open, and prints what it saw: streams open,
//     events, and each event's delay (receive time - send time) as p50, p99
//     and max in ms, plus how many streams missed events.
//
// One thread on epoll in either mode; every wait is bounded by --seconds.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void RaiseFileLimit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

[[noreturn]] void Usage() {
  std::fprintf(stderr,
               "usage: sse_bench serve --port P [--interval-ms MS]\n"
               "       sse_bench watch --addr HOST:PORT --path PATH --streams "
               "N [--seconds S] [--host-header H]\n");
  std::exit(2);
}

// --- serve ------------------------------------------------------------------

struct Client {
  int fd;
  std::string in;
  bool streaming = false;
  std::string out;  // not yet written (a slow reader)
};

int Serve(int port, int interval_ms) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      listen(lfd, 4096) != 0) {
    std::perror("sse_bench: listen");
    return 1;
  }
  socklen_t len = sizeof(a);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  std::printf("port %d\n", ntohs(a.sin_port));
  std::fflush(stdout);
  int ep = epoll_create1(0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  std::vector<std::unique_ptr<Client>> clients;
  int64_t next = NowNs() + int64_t{interval_ms} * 1000000;
  auto flush = [&](Client& c) {
    while (!c.out.empty()) {
      ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      c.out.erase(0, static_cast<size_t>(n));
    }
  };
  while (true) {
    int timeout =
        static_cast<int>(std::max<int64_t>(0, (next - NowNs()) / 1000000));
    epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, timeout);
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.ptr == nullptr) {
        while (true) {
          int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK);
          if (fd < 0) break;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          clients.push_back(
              std::make_unique<Client>(Client{fd, "", false, ""}));
          epoll_event cev{};
          cev.events = EPOLLIN | EPOLLRDHUP;
          cev.data.ptr = clients.back().get();
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      Client* c = static_cast<Client*>(evs[i].data.ptr);
      char buf[4096];
      ssize_t r;
      while ((r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        c->in.append(buf, static_cast<size_t>(r));
      }
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
        close(c->fd);
        c->fd = -1;
        continue;
      }
      if (!c->streaming && c->in.find("\r\n\r\n") != std::string::npos) {
        c->streaming = true;
        c->out +=
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        flush(*c);
      }
    }
    if (NowNs() >= next) {
      next += int64_t{interval_ms} * 1000000;
      for (auto& c : clients) {
        if (c->fd < 0 || !c->streaming) continue;
        char event[64];
        int len = std::snprintf(event, sizeof(event), "data: %lld\n\n",
                                static_cast<long long>(NowNs()));
        char chunk[96];
        int clen =
            std::snprintf(chunk, sizeof(chunk), "%x\r\n%s\r\n", len, event);
        c->out.append(chunk, static_cast<size_t>(clen));
        flush(*c);
      }
    }
  }
}

// --- watch ------------------------------------------------------------------

struct Stream {
  int fd = -1;
  std::string in;
  int events = 0;
  bool connected = false;
  bool closed = false;
};

int Watch(const std::string& host, int port, const std::string& path,
          const std::string& host_header, int streams, double seconds) {
  int ep = epoll_create1(0);
  std::vector<Stream> ss(static_cast<size_t>(streams));
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + host_header +
                          "\r\nAccept: text/event-stream\r\n\r\n";
  for (auto& s : ss) {
    s.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    connect(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.ptr = &s;
    epoll_ctl(ep, EPOLL_CTL_ADD, s.fd, &ev);
  }
  std::vector<double> delays_ms;
  const int64_t start = NowNs();
  int64_t measure_from = 0;  // once every stream got its response head
  int64_t end = start + static_cast<int64_t>(seconds * 1e9) + 60000000000LL;
  int open = 0;
  while (NowNs() < end) {
    epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, 100);
    const int64_t now = NowNs();
    for (int i = 0; i < n; ++i) {
      Stream& s = *static_cast<Stream*>(evs[i].data.ptr);
      if (!s.connected && (evs[i].events & EPOLLOUT)) {
        s.connected = true;
        send(s.fd, req.data(), req.size(), MSG_NOSIGNAL);
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = &s;
        epoll_ctl(ep, EPOLL_CTL_MOD, s.fd, &ev);
      }
      char buf[16384];
      ssize_t r;
      while ((r = recv(s.fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        size_t before = s.in.size();
        s.in.append(buf, static_cast<size_t>(r));
        if (before == 0 && s.in.compare(0, 12, "HTTP/1.1 200") == 0) ++open;
        size_t at;
        while ((at = s.in.find("data: ")) != std::string::npos) {
          size_t eol = s.in.find('\n', at);
          if (eol == std::string::npos) break;
          long long sent = std::atoll(s.in.c_str() + at + 6);
          if (measure_from != 0 && sent >= measure_from) {
            delays_ms.push_back((now - sent) / 1e6);
            ++s.events;
          }
          s.in.erase(0, eol + 1);
        }
      }
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        if (!s.closed) {
          s.closed = true;
          epoll_ctl(ep, EPOLL_CTL_DEL, s.fd, nullptr);
        }
      }
    }
    if (measure_from == 0 && open == streams) {
      measure_from = NowNs();
      end = measure_from + static_cast<int64_t>(seconds * 1e9);
      std::fprintf(stderr, "sse_bench: %d streams open after %.2f s\n", open,
                   (measure_from - start) / 1e9);
    }
  }
  std::sort(delays_ms.begin(), delays_ms.end());
  auto pct = [&](double p) {
    if (delays_ms.empty()) return -1.0;
    return delays_ms[std::min(delays_ms.size() - 1,
                              static_cast<size_t>(p * delays_ms.size()))];
  };
  int closed = 0, starved = 0, min_events = 1 << 30;
  for (const auto& s : ss) {
    if (s.closed) ++closed;
    min_events = std::min(min_events, s.events);
  }
  int max_events = 0;
  for (const auto& s : ss) max_events = std::max(max_events, s.events);
  for (const auto& s : ss) {
    if (s.events + 1 < max_events) ++starved;
  }
  std::printf(
      "streams=%d open=%d closed=%d events=%zu p50_ms=%.2f p99_ms=%.2f "
      "max_ms=%.2f over_100ms=%zu min_events_per_stream=%d "
      "streams_missing_events=%d\n",
      streams, open, closed, delays_ms.size(), pct(0.5), pct(0.99),
      delays_ms.empty() ? -1.0 : delays_ms.back(),
      static_cast<size_t>(delays_ms.end() - std::upper_bound(delays_ms.begin(),
                                                             delays_ms.end(),
                                                             100.0)),
      min_events, starved);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage();
  RaiseFileLimit();
  std::string mode = argv[1];
  int port = 0, streams = 0, interval_ms = 1000;
  double seconds = 10;
  std::string host = "127.0.0.1", path = "/", host_header = "localhost";
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (a == "--port") {
      port = std::atoi(value().c_str());
    } else if (a == "--interval-ms") {
      interval_ms = std::atoi(value().c_str());
    } else if (a == "--addr") {
      std::string v = value();
      size_t colon = v.rfind(':');
      if (colon == std::string::npos) Usage();
      host = v.substr(0, colon);
      port = std::atoi(v.c_str() + colon + 1);
    } else if (a == "--path") {
      path = value();
    } else if (a == "--streams") {
      streams = std::atoi(value().c_str());
    } else if (a == "--seconds") {
      seconds = std::atof(value().c_str());
    } else if (a == "--host-header") {
      host_header = value();
    } else {
      Usage();
    }
  }
  if (mode == "serve") return Serve(port, interval_ms);
  if (mode == "watch" && port > 0 && streams > 0) {
    return Watch(host, port, path, host_header, streams, seconds);
  }
  Usage();
}
