// Rate and size limits against a real gateway, real agents and a real local
// service on loopback: per tunnel (requests per minute, requests at once),
// per client IP (connections at once, new connections per minute; other
// loopback addresses play other visitors), body sizes both ways, and tunnels
// per agent. The per-minute windows run on a clock the test moves forward.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

std::atomic<int64_t> g_clock_offset_s{0};
absl::Time FakeNow() {
  return absl::Now() + absl::Seconds(g_clock_offset_s.load());
}

// Polls `cond` until it holds or 20 s passed.
bool WaitFor(const std::function<bool()>& cond) {
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (!cond()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// A TCP connection to 127.0.0.1:`port` from the local address `from` (all
// of 127.0.0.0/8 is local on Linux: each address is another visitor IP).
int ConnectFrom(const std::string& from, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, from.c_str(), &local.sin_addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)), 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

struct RawResponse {
  int status = 0;
  std::string head;
  std::string body;
  std::string Header(absl::string_view name) const {
    for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
      size_t colon = line.find(':');
      if (colon != absl::string_view::npos &&
          absl::EqualsIgnoreCase(line.substr(0, colon), name)) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
    return "";
  }
};

// Reads until `done(data)` or EOF/error/timeout; appends to `*data`.
void ReadUntil(int fd, std::string* data,
               const std::function<bool(const std::string&)>& done) {
  char buf[16384];
  while (!done(*data)) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return;
    data->append(buf, static_cast<size_t>(n));
  }
}

// Sends a GET on `fd` and reads one response with a Content-Length body.
RawResponse RoundTrip(int fd, const std::string& target) {
  std::string req =
      absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(req.size()));
  std::string data;
  ReadUntil(fd, &data, [](const std::string& d) {
    return d.find("\r\n\r\n") != std::string::npos;
  });
  RawResponse r;
  size_t end = data.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  r.head = data.substr(0, end);
  (void)absl::SimpleAtoi(r.head.substr(9, 3), &r.status);
  size_t length = 0;
  (void)absl::SimpleAtoi(r.Header("Content-Length"), &length);
  ReadUntil(fd, &data,
            [&](const std::string& d) { return d.size() >= end + 4 + length; });
  r.body = data.substr(end + 4);
  return r;
}

// True once the peer closed `fd` (EOF or reset), within 10 s.
bool ClosedByPeer(int fd) {
  char c;
  return ::recv(fd, &c, 1, 0) <= 0;
}

class LimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_clock_offset_s = 0;
    httplib::Server& s = svc_.server();
    s.Get("/hello", [this](const httplib::Request&, httplib::Response& res) {
      ++hellos_;
      res.set_header("X-RateLimit-Limit", "999");  // the service's own
      res.set_content("hello", "text/plain");
    });
    s.Get("/hold", [this](const httplib::Request&, httplib::Response& res) {
      ++held_;
      release_.WaitForNotificationWithTimeout(absl::Seconds(30));
      res.set_content("held", "text/plain");
    });
    s.Post("/upload", [this](const httplib::Request&, httplib::Response& res,
                             const httplib::ContentReader& reader) {
      ++uploads_;
      size_t n = 0;
      reader([&](const char*, size_t len) {
        n += len;
        upload_bytes_ += len;
        return true;
      });
      res.set_content(absl::StrCat(n), "text/plain");
      ++uploads_done_;
    });
    s.Get("/download", ServePatternDownload);
    // Chunked: 600 bytes, then, once the test let it, 600 more.
    s.Get("/drip", [this](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider(
          "application/octet-stream",
          [this](size_t offset, httplib::DataSink& sink) {
            if (offset == 0)
              return sink.write(std::string(600, 'a').data(), 600);
            drip_.WaitForNotificationWithTimeout(absl::Seconds(30));
            sink.write(std::string(600, 'b').data(), 600);
            sink.done();
            return true;
          });
    });
    svc_.Start();
  }

  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (!drip_.HasBeenNotified()) drip_.Notify();
  }

  void Start(const std::function<void(httpfront::FrontDoorOptions&)>& tweak) {
    h_.StartGateway([tweak](server::GatewayOptions& o) {
      o.front.clock = &FakeNow;
      o.front.connection.clock = &FakeNow;
      tweak(o.front);
    });
    h_.StartAgent("cam-01", {svc_.url(), "api=" + svc_.url()});
  }

  int port() { return h_.gateway().http_port(); }

  double Metric(absl::string_view series) {
    return MetricValue(h_.gateway(), series, 0);
  }
  // Requests are counted after their response is written: poll.
  bool AwaitMetric(absl::string_view series, double want) {
    return WaitFor([&] { return Metric(series) == want; });
  }

  LocalService svc_;
  TunnelHarness h_{{"cam-01", "cam-02"}};
  std::atomic<int> hellos_{0};
  std::atomic<int> held_{0};
  std::atomic<int> uploads_{0};
  std::atomic<int> uploads_done_{0};
  std::atomic<size_t> upload_bytes_{0};
  absl::Notification release_;
  absl::Notification drip_;
};

TEST_F(LimitsTest, NoLimitsByDefaultAndNoRateLimitHeaders) {
  Start([](httpfront::FrontDoorOptions&) {});
  auto v = h_.Visitor();
  for (int i = 0; i < 20; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/hello"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    // The service's own header passes untouched; the gateway adds none.
    EXPECT_EQ(r->get_header_value("X-RateLimit-Limit"), "999");
    EXPECT_FALSE(r->has_header("X-RateLimit-Remaining"));
  }
  EXPECT_EQ(hellos_, 20);
}

TEST_F(LimitsTest, TunnelRequestsPerMinuteAnswer429AndStartOver) {
  Start(
      [](httpfront::FrontDoorOptions& f) { f.tunnel_requests_per_minute = 3; });
  auto v = h_.Visitor();
  for (int i = 0; i < 3; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/hello"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "hello");
    // Ours replace the service's X-RateLimit-* (one value each).
    EXPECT_EQ(r->get_header_value_count("X-RateLimit-Limit"), 1u);
    EXPECT_EQ(r->get_header_value("X-RateLimit-Limit"), "3");
    EXPECT_EQ(r->get_header_value("X-RateLimit-Remaining"),
              absl::StrCat(2 - i));
    int reset = std::stoi(r->get_header_value("X-RateLimit-Reset"));
    EXPECT_GE(reset, 1);
    EXPECT_LE(reset, 60);
  }
  auto over = v->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(over);
  EXPECT_EQ(over->status, 429);
  EXPECT_EQ(over->get_header_value("X-Tunnel-Error"), "tunnel_rate_limited");
  EXPECT_THAT(over->body, HasSubstr("\"error\":\"tunnel_rate_limited\""));
  EXPECT_THAT(over->body, HasSubstr("\"status\":429"));
  EXPECT_EQ(over->get_header_value("X-RateLimit-Limit"), "3");
  EXPECT_EQ(over->get_header_value("X-RateLimit-Remaining"), "0");
  EXPECT_EQ(over->get_header_value("Retry-After"),
            over->get_header_value("X-RateLimit-Reset"));
  EXPECT_EQ(hellos_, 3);  // the service never saw the fourth

  // Another tunnel (same agent) has its own window; unknown tunnels stay 404
  // and use up nothing.
  auto api = v->Get(TunnelHarness::Path("api-cam-01", "/hello"));
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 200);
  EXPECT_EQ(api->get_header_value("X-RateLimit-Remaining"), "2");
  for (int i = 0; i < 5; ++i) {
    auto r = v->Get(TunnelHarness::Path("nope", "/hello"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << i;
  }

  // A minute later the window starts over.
  g_clock_offset_s += 60;
  auto again = v->Get(TunnelHarness::Path("cam-01", "/hello"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(again->get_header_value("X-RateLimit-Remaining"), "2");
  EXPECT_EQ(hellos_, 5);

  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"tunnel_requests_per_minute\"}",
      1));
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"cam-01\",code=\"4xx\",error="
      "\"tunnel_rate_limited\"}",
      1));
}

TEST_F(LimitsTest, TunnelConcurrentRequestsOverTheLimitGet429) {
  Start(
      [](httpfront::FrontDoorOptions& f) { f.tunnel_concurrent_requests = 2; });
  std::atomic<int> held_ok{0};
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([&] {
      auto r = h_.Visitor()->Get(TunnelHarness::Path("cam-01", "/hold"));
      if (r && r->status == 200) ++held_ok;
    });
  }
  ASSERT_TRUE(WaitFor([&] { return held_ == 2; }));
  auto v = h_.Visitor();
  auto busy = v->Get(TunnelHarness::Path("cam-01", "/hold"));
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->status, 429);
  EXPECT_EQ(busy->get_header_value("X-Tunnel-Error"),
            "tunnel_concurrency_limited");
  EXPECT_EQ(busy->get_header_value("Retry-After"), "1");
  EXPECT_FALSE(busy->has_header("X-RateLimit-Limit"));  // no per-minute limit
  EXPECT_EQ(held_, 2);  // the service never saw it
  // Another tunnel is not affected.
  auto api = v->Get(TunnelHarness::Path("api-cam-01", "/hello"));
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 200);

  release_.Notify();
  for (std::thread& t : holders) t.join();
  EXPECT_EQ(held_ok, 2);
  // Finished requests give their places back.
  for (int i = 0; i < 3; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/hello"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"tunnel_concurrent_requests\"}",
      1));
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"cam-01\",code=\"4xx\",error="
      "\"tunnel_concurrency_limited\"}",
      1));
}

TEST_F(LimitsTest, RequestBodyOverTheLimitBy413BeforeTheAgentSeesIt) {
  Start([](httpfront::FrontDoorOptions& f) { f.max_request_body = 1000; });
  auto v = h_.Visitor();
  auto big = v->Post(TunnelHarness::Path("cam-01", "/upload"),
                     std::string(1001, 'x'), "application/octet-stream");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_EQ(big->get_header_value("X-Tunnel-Error"), "request_too_large");
  EXPECT_THAT(big->body, HasSubstr("\"error\":\"request_too_large\""));
  EXPECT_EQ(big->get_header_value("Connection"), "close");
  EXPECT_EQ(uploads_, 0);

  auto fits = v->Post(TunnelHarness::Path("cam-01", "/upload"),
                      std::string(1000, 'x'), "application/octet-stream");
  ASSERT_TRUE(fits);
  EXPECT_EQ(fits->status, 200);
  EXPECT_EQ(fits->body, "1000");
  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"max_request_body\"}", 1));
  EXPECT_TRUE(
      AwaitMetric("tunnel_http_requests_total{tunnel=\"\",code=\"4xx\",error="
                  "\"request_too_large\"}",
                  1));
}

TEST_F(LimitsTest, ChunkedRequestBodyOverTheLimitIsCutAt413) {
  Start([](httpfront::FrontDoorOptions& f) { f.max_request_body = 1000; });
  auto v = h_.Visitor();
  auto r = v->Post(
      TunnelHarness::Path("cam-01", "/upload"),
      [](size_t offset, httplib::DataSink& sink) {
        if (offset >= 5000) {
          sink.done();
          return true;
        }
        return sink.write(std::string(100, 'c').data(), 100);
      },
      "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "request_too_large");
  // The agent aborted the upload: the service's request ended short.
  ASSERT_TRUE(WaitFor([&] { return uploads_done_ == uploads_; }));
  EXPECT_LE(upload_bytes_, 1000u);
  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"max_request_body\"}", 1));
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"cam-01\",code=\"4xx\",error="
      "\"request_too_large\"}",
      1));
}

TEST_F(LimitsTest, ResponseOverTheLimitWithContentLengthIs502) {
  Start([](httpfront::FrontDoorOptions& f) { f.max_response_body = 1000; });
  auto v = h_.Visitor();
  auto big =
      v->Get(TunnelHarness::Path("cam-01", "/download?size=1001&seed=1"));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 502);
  EXPECT_EQ(big->get_header_value("X-Tunnel-Error"), "response_too_large");
  EXPECT_THAT(big->body, HasSubstr("\"error\":\"response_too_large\""));
  EXPECT_TRUE(big->has_header("X-Request-Id"));
  EXPECT_THAT(big->get_header_value("Content-Type"),
              HasSubstr("application/json"));

  auto fits =
      v->Get(TunnelHarness::Path("cam-01", "/download?size=1000&seed=1"));
  ASSERT_TRUE(fits);
  EXPECT_EQ(fits->status, 200);
  EXPECT_EQ(fits->body.size(), 1000u);
  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"max_response_body\"}", 1));
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"cam-01\",code=\"5xx\",error="
      "\"response_too_large\"}",
      1));
}

TEST_F(LimitsTest, StreamedResponseOverTheLimitIsCutWithoutACleanEnd) {
  Start([](httpfront::FrontDoorOptions& f) { f.max_response_body = 1000; });
  int fd = ConnectFrom("127.0.0.1", port());
  std::string req = absl::StrCat("GET ", TunnelHarness::Path("cam-01", "/drip"),
                                 " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(req.size()));
  std::string data;
  ReadUntil(fd, &data, [](const std::string& d) {
    return d.find(std::string(600, 'a')) != std::string::npos;
  });
  ASSERT_THAT(data, HasSubstr("HTTP/1.1 200"));
  ASSERT_THAT(data, HasSubstr(std::string(600, 'a')));
  drip_.Notify();  // 1200 bytes in all now
  ReadUntil(fd, &data, [](const std::string&) { return false; });  // to EOF
  ::close(fd);
  EXPECT_THAT(data, ::testing::Not(HasSubstr("bbbb")));
  EXPECT_FALSE(absl::EndsWith(data, "0\r\n\r\n")) << "no final chunk";
  EXPECT_TRUE(AwaitMetric(
      "tunnel_limit_rejections_total{limit=\"max_response_body\"}", 1));
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"cam-01\",code=\"2xx\",error="
      "\"response_too_large\"}",
      1));
}

TEST_F(LimitsTest, ConnectionsPerClientIpOverTheLimitGet429AndClose) {
  Start([](httpfront::FrontDoorOptions& f) {
    f.connection.max_connections_per_ip = 2;
  });
  const std::string hello = TunnelHarness::Path("cam-01", "/hello");
  int a = ConnectFrom("127.0.0.1", port());
  int b = ConnectFrom("127.0.0.1", port());
  EXPECT_EQ(RoundTrip(a, hello).status, 200);  // both are being served
  EXPECT_EQ(RoundTrip(b, hello).status, 200);

  int c = ConnectFrom("127.0.0.1", port());
  RawResponse refused = RoundTrip(c, hello);
  EXPECT_EQ(refused.status, 429);
  EXPECT_EQ(refused.Header("X-Tunnel-Error"), "client_connection_limited");
  EXPECT_EQ(refused.Header("Retry-After"), "1");
  EXPECT_EQ(refused.Header("Connection"), "close");
  EXPECT_THAT(refused.body,
              HasSubstr("\"error\":\"client_connection_limited\""));
  EXPECT_TRUE(ClosedByPeer(c));
  ::close(c);
  EXPECT_EQ(hellos_, 2);

  // Another client IP is not affected.
  int d = ConnectFrom("127.0.0.2", port());
  EXPECT_EQ(RoundTrip(d, hello).status, 200);
  ::close(d);
  EXPECT_EQ(
      Metric("tunnel_limit_rejections_total{limit=\"client_connections\"}"), 1);

  // A closed connection gives its place back.
  ::close(a);
  EXPECT_TRUE(WaitFor([&] {
    int e = ConnectFrom("127.0.0.1", port());
    bool ok = RoundTrip(e, hello).status == 200;
    ::close(e);
    return ok;
  }));
  ::close(b);
}

TEST_F(LimitsTest, NewConnectionsPerClientIpPerMinute) {
  Start([](httpfront::FrontDoorOptions& f) {
    f.connection.connections_per_ip_per_minute = 2;
  });
  const std::string hello = TunnelHarness::Path("cam-01", "/hello");
  for (int i = 0; i < 2; ++i) {
    int fd = ConnectFrom("127.0.0.1", port());
    EXPECT_EQ(RoundTrip(fd, hello).status, 200);
    ::close(fd);
  }
  int fd = ConnectFrom("127.0.0.1", port());
  RawResponse refused = RoundTrip(fd, hello);
  ::close(fd);
  EXPECT_EQ(refused.status, 429);
  EXPECT_EQ(refused.Header("X-Tunnel-Error"), "client_connection_rate_limited");
  EXPECT_EQ(refused.Header("X-RateLimit-Limit"), "2");
  EXPECT_EQ(refused.Header("X-RateLimit-Remaining"), "0");
  int reset = 0;
  ASSERT_TRUE(absl::SimpleAtoi(refused.Header("X-RateLimit-Reset"), &reset));
  EXPECT_GE(reset, 1);
  EXPECT_LE(reset, 60);
  EXPECT_EQ(refused.Header("Retry-After"), refused.Header("X-RateLimit-Reset"));
  EXPECT_EQ(hellos_, 2);

  int other = ConnectFrom("127.0.0.2", port());
  EXPECT_EQ(RoundTrip(other, hello).status, 200);
  ::close(other);

  g_clock_offset_s += 60;
  fd = ConnectFrom("127.0.0.1", port());
  EXPECT_EQ(RoundTrip(fd, hello).status, 200);
  ::close(fd);
  EXPECT_EQ(Metric("tunnel_limit_rejections_total{limit=\"client_connections_"
                   "per_minute\"}"),
            1);
}

// "Expect: 100-continue" with a body over the limit: 413 at once, before the
// visitor sends the body, and one plain "Connection: close".
TEST_F(LimitsTest, ExpectContinueOverTheBodyLimitGets413WithoutA100) {
  Start([](httpfront::FrontDoorOptions& f) { f.max_request_body = 1000; });
  int fd = ConnectFrom("127.0.0.1", port());
  const std::string head =
      "POST /t/cam-01/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/octet-stream\r\nContent-Length: 5000\r\n"
      "Expect: 100-continue\r\n\r\n";
  ASSERT_EQ(::send(fd, head.data(), head.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(head.size()));
  std::string data;
  ReadUntil(fd, &data, [](const std::string&) { return false; });  // to EOF
  ::close(fd);
  EXPECT_THAT(data, ::testing::StartsWith("HTTP/1.1 413 "));
  EXPECT_THAT(data, ::testing::Not(HasSubstr("100 Continue")));
  const std::string head_only = data.substr(0, data.find("\r\n\r\n"));
  size_t closes = 0;
  for (size_t at = head_only.find("Connection: close"); at != std::string::npos;
       at = head_only.find("Connection: close", at + 1)) {
    ++closes;
  }
  EXPECT_EQ(closes, 1u) << head_only;
  EXPECT_THAT(head_only, ::testing::Not(HasSubstr("Keep-Alive")));
  EXPECT_THAT(head_only, HasSubstr("X-Tunnel-Error: request_too_large"));
  EXPECT_THAT(head_only, HasSubstr("X-Request-Id: "));
  EXPECT_EQ(uploads_, 0);
  EXPECT_EQ(Metric("tunnel_limit_rejections_total{limit=\"max_request_body\"}"),
            1);
}

TEST_F(LimitsTest, MaxConnectionsAnswers503AtAcceptAndCloses) {
  Start(
      [](httpfront::FrontDoorOptions& f) { f.connection.max_connections = 3; });
  const std::string hello = TunnelHarness::Path("cam-01", "/hello");
  // Three connections stay open (idle between requests, from two IPs: the
  // limit is the gateway's, not a client's).
  int held[3] = {ConnectFrom("127.0.0.1", port()),
                 ConnectFrom("127.0.0.2", port()),
                 ConnectFrom("127.0.0.3", port())};
  for (int fd : held) EXPECT_EQ(RoundTrip(fd, hello).status, 200);

  int extra = ConnectFrom("127.0.0.4", port());
  RawResponse refused = RoundTrip(extra, hello);
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.Header("X-Tunnel-Error"), "gateway_busy");
  EXPECT_EQ(refused.Header("Retry-After"), "1");
  EXPECT_EQ(refused.Header("Connection"), "close");
  EXPECT_THAT(refused.body, HasSubstr("\"error\":\"gateway_busy\""));
  EXPECT_TRUE(ClosedByPeer(extra));
  ::close(extra);
  EXPECT_EQ(hellos_, 3);  // the refused request never reached the service
  EXPECT_EQ(Metric("tunnel_limit_rejections_total{limit=\"max_connections\"}"),
            1);
  EXPECT_EQ(Metric("tunnel_http_connection_limit"), 3);

  // The held connections still work, and a closed one frees its place.
  EXPECT_EQ(RoundTrip(held[0], hello).status, 200);
  ::close(held[0]);
  EXPECT_TRUE(WaitFor([&] {
    int fd = ConnectFrom("127.0.0.4", port());
    bool ok = RoundTrip(fd, hello).status == 200;
    ::close(fd);
    return ok;
  }));
  ::close(held[1]);
  ::close(held[2]);
}

TEST_F(LimitsTest, AHeadThatDoesNotArriveInTimeGets408AndClose) {
  Start([](httpfront::FrontDoorOptions& f) {
    f.connection.read_timeout = absl::Milliseconds(400);
  });
  int fd = ConnectFrom("127.0.0.1", port());
  // A slowloris head: a request line and a header, never the blank line.
  const std::string part =
      "GET /t/cam-01/hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a\r\n";
  ASSERT_EQ(::send(fd, part.data(), part.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(part.size()));
  std::string data;
  ReadUntil(fd, &data, [](const std::string&) { return false; });  // to EOF
  ::close(fd);
  EXPECT_THAT(data, ::testing::StartsWith("HTTP/1.1 408 "));
  EXPECT_THAT(data, HasSubstr("X-Tunnel-Error: request_timeout\r\n"));
  EXPECT_THAT(data, HasSubstr("X-Request-Id: "));
  EXPECT_THAT(data, HasSubstr("Connection: close\r\n"));
  EXPECT_EQ(hellos_, 0);
  EXPECT_TRUE(AwaitMetric(
      "tunnel_http_requests_total{tunnel=\"\",code=\"4xx\",error=\"request_"
      "timeout\"}",
      1));
}

TEST_F(LimitsTest, IdleConnectionsAreClosedSilentlyAtTheirTimeouts) {
  Start([](httpfront::FrontDoorOptions& f) {
    f.connection.keep_alive_timeout = absl::Milliseconds(300);
    f.connection.read_timeout = absl::Milliseconds(300);
  });
  // After a request: the keep-alive timeout.
  int after = ConnectFrom("127.0.0.1", port());
  EXPECT_EQ(RoundTrip(after, TunnelHarness::Path("cam-01", "/hello")).status,
            200);
  // Never a byte: closed without an answer (a browser's preconnect).
  int silent = ConnectFrom("127.0.0.1", port());
  for (int fd : {after, silent}) {
    std::string data;
    ReadUntil(fd, &data, [](const std::string&) { return false; });
    EXPECT_EQ(data, "");  // EOF, no bytes
    ::close(fd);
  }
  EXPECT_TRUE(AwaitMetric("tunnel_http_connections{state=\"idle\"}", 0));
}

TEST_F(LimitsTest, TunnelsPerAgentAreLimitedAtTheHandshake) {
  h_.StartGateway(
      [](server::GatewayOptions& o) { o.service.max_tunnels_per_agent = 2; });
  RunningAgent three(h_.AgentOptionsFor(
      "cam-01", {svc_.url(), "api=" + svc_.url(), "web=" + svc_.url()}));
  absl::Status s = three.WaitForExit(absl::Seconds(20));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("1 to 2 tunnels, not 3"));
  EXPECT_EQ(
      Metric("tunnel_agent_connect_refusals_total{code=\"invalid_request\"}"),
      1);

  h_.StartAgent("cam-02", {svc_.url(), "api=" + svc_.url()});
  auto r = h_.Visitor()->Get(TunnelHarness::Path("api-cam-02", "/hello"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

}  // namespace
}  // namespace tunnel::testing
