// The agent's native HTTP/1.1 client towards its local service (plain http
// at an address or localhost; agent/origin_loop.h), through real parts:
// visitor -> gateway -> agent -> a hand-written service that answers
// exactly as each test needs, byte for byte.
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/loopback_port.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

// One accepted connection of a ScriptedService.
class ServiceConn {
 public:
  explicit ServiceConn(int fd) : fd_(fd) {}
  // The next request head (without its blank line), "" if the connection
  // ended first. Body bytes read with it stay in `rest()`.
  std::string ReadHead() {
    while (true) {
      const size_t end = in_.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = in_.substr(0, end);
        in_.erase(0, end + 4);
        return head;
      }
      if (!Fill()) return "";
    }
  }
  // At least `n` body bytes (fewer if the connection ended).
  std::string ReadBody(size_t n) {
    while (in_.size() < n && Fill()) {
    }
    std::string body = in_.substr(0, n);
    in_.erase(0, body.size());
    return body;
  }
  void Send(const std::string& bytes) {
    (void)::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  }

 private:
  bool Fill() {
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    in_.append(buf, static_cast<size_t>(n));
    return true;
  }

  const int fd_;
  std::string in_;
};

// A local service that runs `script` on each connection it accepts (one at
// a time, in order) and then closes it; it keeps every request head the
// scripts read.
class ScriptedService {
 public:
  using Script =
      std::function<void(int index, ServiceConn& c, ScriptedService& self)>;
  explicit ScriptedService(Script script, int family = AF_INET)
      : script_(std::move(script)) {
    listener_ = ListenLoopback(&port_, family);
    if (listener_ >= 0) thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedService() {
    if (listener_ < 0) return;
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }
  bool ok() const { return listener_ >= 0; }
  int port() const { return port_; }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  // Reads a head on `c` and keeps it.
  std::string Head(ServiceConn& c) {
    std::string head = c.ReadHead();
    if (!head.empty()) {
      absl::MutexLock lock(&mu_);
      heads_.push_back(head);
    }
    return head;
  }
  std::vector<std::string> heads() {
    absl::MutexLock lock(&mu_);
    return heads_;
  }
  int connections() {
    absl::MutexLock lock(&mu_);
    return connections_;
  }

 private:
  void Serve() {
    for (int i = 0;; ++i) {
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      {
        absl::MutexLock lock(&mu_);
        ++connections_;
      }
      ServiceConn c(fd);
      script_(i, c, *this);
      ::close(fd);
    }
  }

  const Script script_;
  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::string> heads_ ABSL_GUARDED_BY(mu_);
  int connections_ ABSL_GUARDED_BY(mu_) = 0;
};

// A gateway, and an agent whose one tunnel "cam-01" leads to `svc`.
class OriginClientTest : public ::testing::Test {
 protected:
  void Start(const ScriptedService& svc,
             absl::Duration local_timeout = absl::ZeroDuration()) {
    Start(svc.url(), local_timeout);
  }
  void Start(const std::string& url,
             absl::Duration local_timeout = absl::ZeroDuration()) {
    h_.StartGateway();
    agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {url});
    if (local_timeout != absl::ZeroDuration()) o.local_timeout = local_timeout;
    h_.StartAgent(std::move(o));
  }
  httplib::Result Get(const std::string& path) {
    return h_.Visitor()->Get(TunnelHarness::Path("cam-01", path));
  }

  TunnelHarness h_;
};

std::string Answer(const std::string& body) {
  return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", body.size(),
                      "\r\n\r\n", body);
}

// A service closes a kept connection just as the agent sends the next
// request on it (its keep-alive timeout ran out then): the agent sends the
// request once more on a new connection, and the visitor never knows.
TEST_F(OriginClientTest, AKeptConnectionClosedUnderARequestIsTriedOnANewOne) {
  ScriptedService svc([](int index, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send(Answer(absl::StrCat("answer on connection ", index)));
    if (index == 0) self.Head(c);  // read, then closed unanswered
  });
  Start(svc);
  auto first = Get("/a");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->body, "answer on connection 0");
  auto second = Get("/b");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 200) << second->body;
  EXPECT_EQ(second->body, "answer on connection 1");
  const std::vector<std::string> heads = svc.heads();
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_TRUE(absl::StartsWith(heads[1], "GET /b "));
  EXPECT_TRUE(absl::StartsWith(heads[2], "GET /b "));
  EXPECT_EQ(svc.connections(), 2);
}

// ...but not a request whose body already went: it could have been acted
// on, so the visitor gets a 502 that says what happened.
TEST_F(OriginClientTest, ARequestWhoseBodyWentIsNotSentTwice) {
  ScriptedService svc([](int index, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send(Answer("first"));
    if (index == 0 && !self.Head(c).empty()) c.ReadBody(1000);
  });
  Start(svc);
  auto first = Get("/a");
  ASSERT_TRUE(first);
  auto post = h_.Visitor()->Post(TunnelHarness::Path("cam-01", "/order"),
                                 std::string(1000, 'x'), "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 502);
  EXPECT_EQ(post->get_header_value("X-Tunnel-Error"), "agent_error");
  EXPECT_THAT(post->body,
              HasSubstr("the service closed the connection without answering"));
  int posts = 0;
  for (const std::string& head : svc.heads()) {
    if (absl::StartsWith(head, "POST /order ")) ++posts;
  }
  EXPECT_EQ(posts, 1);
}

TEST_F(OriginClientTest, TheRequestHeadIsHttp11WithHostFirstAndOneFraming) {
  ScriptedService svc([](int, ServiceConn& c, ScriptedService& self) {
    const std::string head = self.Head(c);
    if (head.empty()) return;
    c.ReadBody(5);
    c.Send(Answer("ok"));
  });
  Start(svc);
  httplib::Headers fields = {{"Expect", "100-continue"}, {"X-Custom", "kept"}};
  auto r = h_.Visitor()->Put(TunnelHarness::Path("cam-01", "/put?q=1"), fields,
                             "hello", "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_EQ(svc.heads().size(), 1u);
  const std::string head = svc.heads()[0];
  EXPECT_TRUE(absl::StartsWith(head, "PUT /put?q=1 HTTP/1.1\r\nHost: "))
      << head;
  EXPECT_THAT(head, HasSubstr("\r\nX-Custom: kept"));
  EXPECT_THAT(head, HasSubstr("\r\nContent-Length: 5"));
  EXPECT_THAT(head, ::testing::Not(HasSubstr("Expect")));
  EXPECT_THAT(head, ::testing::Not(HasSubstr("Transfer-Encoding")));
}

TEST_F(OriginClientTest, EarlyHintsAreSkippedForTheAnswer) {
  ScriptedService svc([](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
    c.Send(
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Final: yes\r\n\r\nfinal!");
  });
  Start(svc);
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "final!");
  EXPECT_EQ(r->get_header_value("X-Final"), "yes");
}

TEST_F(OriginClientTest, ABodyThatRunsUntilTheServiceClosesArrivesWhole) {
  const std::string body(300 * 1024, 'z');
  ScriptedService svc([&](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    c.Send(body);
  });
  Start(svc);
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.size(), body.size());
  EXPECT_EQ(r->body, body);
}

TEST_F(OriginClientTest, AnAnswerThatIsNotHttpIs502SayingSo) {
  ScriptedService svc([](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
  });
  Start(svc);
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "agent_error");
  EXPECT_THAT(r->body, HasSubstr("not HTTP/1.x"));
}

TEST_F(OriginClientTest, AnAnswerCutShortIs502WhenNothingWasSent) {
  ScriptedService svc([](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send("HTTP/1.1 200 OK\r\nContent-Len");  // and gone
  });
  Start(svc);
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_THAT(r->body, HasSubstr("before answering in full"));
}

// The service's silence is what --local-timeout times, not the agent's own
// waits: a transfer paused because the visitor stopped reading (no credit)
// is not cut, however long that lasts.
TEST_F(OriginClientTest, AVisitorThatStopsReadingIsNotTheServicesSilence) {
  const size_t size = 32 << 20;
  ScriptedService svc([&](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.Send(
        absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", size, "\r\n\r\n"));
    const std::string block(1 << 20, 'b');
    for (size_t sent = 0; sent < size; sent += block.size()) c.Send(block);
  });
  Start(svc, absl::Milliseconds(300));
  size_t got = 0;
  bool paused = false;
  auto r = h_.Visitor()->Get(TunnelHarness::Path("cam-01", "/big"),
                             [&](const char*, size_t n) {
                               got += n;
                               if (!paused) {
                                 // The behaviour under test, not a
                                 // synchronisation: this visitor reads nothing
                                 // for five times the agent's --local-timeout,
                                 // so every buffer on the way fills and the
                                 // agent's transfer waits for credit.
                                 paused = true;
                                 absl::SleepFor(absl::Milliseconds(1500));
                               }
                               return true;
                             });
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(got, size);
}

TEST_F(OriginClientTest, AServiceSilentForTheLocalTimeoutIs502SayingSo) {
  ScriptedService svc([](int, ServiceConn& c, ScriptedService& self) {
    if (self.Head(c).empty()) return;
    c.ReadHead();  // no answer; returns when the agent gives up
  });
  Start(svc, absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_THAT(r->body, HasSubstr("the service sent nothing for 300ms"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
}

// A service whose accept queue is full drops new connection attempts: the
// agent gives up after --local-connect-timeout and says so.
TEST_F(OriginClientTest, AConnectionNeverAcceptedFailsAtTheConnectTimeout) {
  int port = 0;
  const int listener = ListenLoopback(&port);
  ASSERT_GE(listener, 0);
  ASSERT_EQ(::listen(listener, 0), 0);  // a queue of one, never accepted
  std::vector<int> fillers;
  for (int i = 0; i < 1; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0)
        << std::strerror(errno);
    fillers.push_back(fd);
  }
  h_.StartGateway();
  agent::AgentOptions o =
      h_.AgentOptionsFor("cam-01", {absl::StrCat("http://127.0.0.1:", port)});
  o.local_connect_timeout = absl::Milliseconds(300);
  h_.StartAgent(std::move(o));
  const absl::Time start = absl::Now();
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "local_service_unreachable");
  EXPECT_THAT(r->body,
              HasSubstr("no answer to the connection attempt in time"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  for (int fd : fillers) ::close(fd);
  ::close(listener);
}

// "localhost" means the loopback addresses without asking a resolver: a
// service listening on ::1 only is reached after 127.0.0.1 refuses.
TEST_F(OriginClientTest, LocalhostReachesAServiceOnIpv6LoopbackOnly) {
  ScriptedService svc(
      [](int, ServiceConn& c, ScriptedService& self) {
        if (self.Head(c).empty()) return;
        c.Send(Answer("over ::1"));
      },
      AF_INET6);
  if (!svc.ok()) GTEST_SKIP() << "no IPv6 loopback here";
  Start(absl::StrCat("http://localhost:", svc.port()));
  auto r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->body, "over ::1");
}

}  // namespace
}  // namespace tunnel::testing
