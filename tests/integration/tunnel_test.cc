// End-to-end through real parts on loopback: visitor (httplib client) ->
// gateway front door -> gRPC stream -> agent -> local httplib service.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/headers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/loopback_port.h"
#include "tests/testing/test_certs.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1024 * 1024;
constexpr size_t kSizedFirst = 48 * 1024;
constexpr size_t kSizedRest = 1000;

// What the /info endpoint saw, parsed back.
struct Seen {
  std::string method, target, body;
  std::multimap<std::string, std::string> headers;  // lowercase names
};

Seen ParseInfo(const std::string& text) {
  Seen s;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "METHOD "))
      s.method = std::string(line);
    else if (absl::ConsumePrefix(&line, "TARGET "))
      s.target = std::string(line);
    else if (absl::ConsumePrefix(&line, "BODY "))
      s.body = std::string(line);
    else if (absl::ConsumePrefix(&line, "H ")) {
      size_t colon = line.find(": ");
      s.headers.emplace(absl::AsciiStrToLower(line.substr(0, colon)),
                        std::string(line.substr(colon + 2)));
    }
  }
  return s;
}

// A local service that answers every request with `answer`, byte for byte
// (httplib's own server would add fields and interpret Range itself), and
// keeps the request heads it received. It closes each connection after its
// answer, so `answer` should say "Connection: close" (else a client may
// reuse the connection while it is being closed).
class RawService {
 public:
  explicit RawService(std::string answer) : answer_(std::move(answer)) {
    listener_ = ListenLoopback(&port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~RawService() {
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }
  std::vector<std::string> heads() {
    absl::MutexLock lock(&mu_);
    return heads_;
  }

 private:
  void Serve() {
    while (true) {
      int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      std::string in;
      char buf[4096];
      while (in.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
      }
      {
        absl::MutexLock lock(&mu_);
        heads_.push_back(in.substr(0, in.find("\r\n\r\n")));
      }
      (void)::send(fd, answer_.data(), answer_.size(), MSG_NOSIGNAL);
      ::close(fd);
    }
  }

  const std::string answer_;
  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::string> heads_ ABSL_GUARDED_BY(mu_);
};

// A local service that answers every upgrade request with 101 and then
// echoes what it receives until the visitor's side ends.
class UpgradeEchoService {
 public:
  UpgradeEchoService() {
    listener_ = ListenLoopback(&port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~UpgradeEchoService() {
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

 private:
  void Serve() {
    while (true) {
      int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      std::string in;
      char buf[4096];
      while (in.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
      }
      const std::string answer =
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
          "Connection: Upgrade\r\n\r\n";
      (void)::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
      while (true) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        (void)::send(fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL);
      }
      ::close(fd);
    }
  }

  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
};

// Sends an upgrade request for `slug` on a new connection to the front door
// and reads the answer's head; the connection, or -1.
int OpenUpgrade(int http_port, const std::string& slug, std::string* head) {
  int fd = ConnectLoopback(http_port);
  if (fd < 0) return -1;
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string req =
      absl::StrCat("GET ", TunnelHarness::Path(slug, "/ws"),
                   " HTTP/1.1\r\nHost: localhost\r\nUpgrade: echo\r\n"
                   "Connection: Upgrade\r\n\r\n");
  (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  char c;
  while (head->find("\r\n\r\n") == std::string::npos &&
         ::recv(fd, &c, 1, 0) == 1) {
    head->push_back(c);
  }
  return fd;
}

class TunnelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto info = [](const httplib::Request& req, httplib::Response& res) {
      std::string out = absl::StrCat("METHOD ", req.method, "\nTARGET ",
                                     req.target, "\nBODY ", req.body, "\n");
      for (const auto& [k, v] : req.headers) {
        if (k == "REMOTE_ADDR" || k == "REMOTE_PORT" || k == "LOCAL_ADDR" ||
            k == "LOCAL_PORT") {
          continue;
        }
        absl::StrAppend(&out, "H ", k, ": ", v, "\n");
      }
      res.set_content(out, "text/plain");
    };
    auto& s = svc_.server();
    s.Get("/", info);
    s.Post("/", info);
    s.Get("/info.*", info);
    s.Post("/info.*", info);
    s.Put("/info.*", info);
    s.Patch("/info.*", info);
    s.Delete("/info.*", info);
    s.Options("/info.*", info);
    s.Post("/echo", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content(req.body, "application/octet-stream");
    });
    s.Post("/form", [](const httplib::Request& req, httplib::Response& res) {
      std::string out;
      for (const auto& [name, file] : req.files) {
        absl::StrAppend(&out, name, "|", file.filename, "|", file.content,
                        "\n");
      }
      res.set_content(out, "text/plain");
    });
    s.Get("/download", ServePatternDownload);
    s.Get("/download-chunked",
          [](const httplib::Request& req, httplib::Response& res) {
            uint64_t size = std::stoull(req.get_param_value("size"));
            res.set_chunked_content_provider("application/octet-stream",
                                             PatternProvider(9, size, 100000));
          });
    auto upload = [](const httplib::Request&, httplib::Response& res,
                     const httplib::ContentReader& reader) {
      Sha256 h;
      uint64_t n = 0;
      reader([&](const char* d, size_t len) {
        h.Update(d, len);
        n += len;
        return true;
      });
      res.set_content(absl::StrCat(h.HexDigest(), " ", n), "text/plain");
    };
    s.Post("/upload", upload);
    s.Put("/upload", upload);
    s.Get("/stream", [this](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider(
          "text/event-stream", [this](size_t offset, httplib::DataSink& sink) {
            if (offset == 0) {
              std::string first = "data: first\n\n";
              return sink.write(first.data(), first.size());
            }
            // Hold the rest until the visitor confirms the first event.
            release_.WaitForNotificationWithTimeout(absl::Seconds(20));
            std::string rest = "data: rest\n\n";
            sink.write(rest.data(), rest.size());
            sink.done();
            return true;
          });
    });
    // A known length, sent as 48 KiB (twelve of httplib's 4 KiB reads in
    // the agent) and then, once the visitor has all of it, the rest.
    s.Get("/stream-sized", [this](const httplib::Request&,
                                  httplib::Response& res) {
      res.set_content_provider(
          kSizedFirst + kSizedRest, "application/octet-stream",
          [this](size_t offset, size_t, httplib::DataSink& sink) {
            if (offset == 0) {
              std::string first(kSizedFirst, 'a');
              return sink.write(first.data(), first.size());
            }
            if (!release_.WaitForNotificationWithTimeout(absl::Seconds(20))) {
              sized_wait_timed_out_ = true;
            }
            std::string rest(kSizedRest, 'b');
            return sink.write(rest.data(), rest.size());
          });
    });
    // Server-Sent Events, one at a time: event i+1 is produced only after
    // the visitor confirmed event i (so nothing can be buffered and
    // delivered in a batch without the test noticing).
    s.Get("/events", [this](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider(
          "text/event-stream", [this](size_t, httplib::DataSink& sink) {
            int i = events_sent_++;
            if (i > 0 && !event_seen_[i - 1].WaitForNotificationWithTimeout(
                             absl::Seconds(10))) {
              ++events_produced_unseen_;
            }
            if (i == kEvents) {
              sink.done();
              return true;
            }
            std::string ev =
                absl::StrCat("id: ", i, "\ndata: event ", i, "\n\n");
            return sink.write(ev.data(), ev.size());
          });
    });
    s.Get("/cookies", [](const httplib::Request&, httplib::Response& res) {
      res.headers.emplace("Set-Cookie", "a=1; Path=/");
      res.headers.emplace("Set-Cookie", "b=2; HttpOnly");
      res.headers.emplace("Set-Cookie", "c=3; Secure");
      res.set_content("ok", "text/plain");
    });
    s.Get("/endless", [this](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider(
          "application/octet-stream",
          [](size_t, httplib::DataSink& sink) {
            std::string chunk(64 * 1024, 'e');
            return sink.write(chunk.data(), chunk.size());
          },
          [this](bool success) {
            endless_success_ = success;
            endless_done_.Notify();
          });
    });
    s.Get("/held", [this](const httplib::Request&, httplib::Response& res) {
      {
        absl::MutexLock lock(&held_mu_);
        ++held_now_;
        held_max_ = std::max(held_max_, held_now_);
      }
      held_release_.WaitForNotificationWithTimeout(absl::Seconds(30));
      {
        absl::MutexLock lock(&held_mu_);
        --held_now_;
      }
      res.set_content("held", "text/plain");
    });
    // The head (with Content-Length) at once, the body only once the
    // visitor has seen the head.
    s.Get(
        "/late-body", [this](const httplib::Request&, httplib::Response& res) {
          res.set_content_provider(
              5, "text/plain", [this](size_t, size_t, httplib::DataSink& sink) {
                late_body_release_.WaitForNotificationWithTimeout(
                    absl::Seconds(30));
                return sink.write("later", 5);
              });
        });
    // Held until a whole wave of kGatherWave requests is in, so that each
    // wave needs that many connections at once; keeps their client ports.
    s.Get("/gather", [this](const httplib::Request& req,
                            httplib::Response& res) {
      absl::MutexLock lock(&gather_mu_);
      gather_ports_.insert(req.remote_port);
      const int wave = gather_in_++ / kGatherWave;
      auto all_in = [this, wave]() ABSL_SHARED_LOCKS_REQUIRED(gather_mu_) {
        return gather_in_ >= (wave + 1) * kGatherWave;
      };
      gather_mu_.AwaitWithTimeout(absl::Condition(&all_in), absl::Seconds(20));
      res.set_content("gathered", "text/plain");
    });
    s.Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      slow_release_.WaitForNotificationWithTimeout(absl::Seconds(30));
      res.set_content("late", "text/plain");
    });
    svc_.Start();
  }

  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    if (!slow_release_.HasBeenNotified()) slow_release_.Notify();
    if (!held_release_.HasBeenNotified()) held_release_.Notify();
    if (!late_body_release_.HasBeenNotified()) late_body_release_.Notify();
    for (auto& n : event_seen_) {
      if (!n.HasBeenNotified()) n.Notify();
    }
  }

  LocalService svc_;
  // GETs `path` through a new gateway and agent, releasing the service
  // once the visitor has `first_size` bytes.
  struct HeldGet GetReleasingAfter(const std::string& path, size_t first_size);
  absl::Notification release_;
  std::atomic<bool> sized_wait_timed_out_{false};
  absl::Notification slow_release_;
  absl::Notification late_body_release_;
  // /held: requests in the service right now and at most, until released.
  absl::Mutex held_mu_;
  int held_now_ ABSL_GUARDED_BY(held_mu_) = 0;
  int held_max_ ABSL_GUARDED_BY(held_mu_) = 0;
  absl::Notification held_release_;
  absl::Notification endless_done_;
  static constexpr int kGatherWave = 32;
  absl::Mutex gather_mu_;
  int gather_in_ ABSL_GUARDED_BY(gather_mu_) = 0;
  std::set<int> gather_ports_ ABSL_GUARDED_BY(gather_mu_);
  static constexpr int kEvents = 5;
  std::atomic<int> events_sent_{0};
  std::atomic<int> events_produced_unseen_{0};
  absl::Notification event_seen_[kEvents];
  bool endless_success_ = true;
};

TEST_F(TunnelTest, EveryMethodReachesTheServiceWithItsBody) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  std::string p = TunnelHarness::Path("cam-01", "/info");

  auto get = v->Get(p);
  ASSERT_TRUE(get) << httplib::to_string(get.error());
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(ParseInfo(get->body).method, "GET");

  auto head = v->Head(p);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  EXPECT_GT(std::stoi(head->get_header_value("Content-Length")), 0);

  auto post = v->Post(p, "posted", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(ParseInfo(post->body).method, "POST");
  EXPECT_EQ(ParseInfo(post->body).body, "posted");

  // An empty POST reaches the service with exactly one Content-Length.
  auto empty = v->Post(p, "", "text/plain");
  ASSERT_TRUE(empty);
  EXPECT_EQ(ParseInfo(empty->body).headers.count("content-length"), 1u);

  auto put = v->Put(p, "put-body", "text/plain");
  ASSERT_TRUE(put);
  EXPECT_EQ(ParseInfo(put->body).method, "PUT");
  EXPECT_EQ(ParseInfo(put->body).body, "put-body");

  auto patch = v->Patch(p, "patch-body", "text/plain");
  ASSERT_TRUE(patch);
  EXPECT_EQ(ParseInfo(patch->body).method, "PATCH");
  EXPECT_EQ(ParseInfo(patch->body).body, "patch-body");

  auto del = v->Delete(p, "del-body", "text/plain");
  ASSERT_TRUE(del);
  EXPECT_EQ(ParseInfo(del->body).method, "DELETE");
  EXPECT_EQ(ParseInfo(del->body).body, "del-body");

  auto opt = v->Options(p);
  ASSERT_TRUE(opt);
  EXPECT_EQ(ParseInfo(opt->body).method, "OPTIONS");
}

// --grpc-threads: several completion-queue threads, agents spread over
// them; each agent's requests work and the gateway stops cleanly.
TEST_F(TunnelTest, AgentsOnSeveralGrpcThreadsAllServe) {
  const std::vector<std::string> ids = {"cam-01", "cam-02", "cam-03", "cam-04"};
  TunnelHarness h(ids);
  h.StartGateway([](server::GatewayOptions& o) { o.service.grpc_threads = 3; });
  for (const std::string& id : ids) h.StartAgent(id, {svc_.url()});
  std::vector<std::thread> visitors;
  std::atomic<int> ok{0};
  for (const std::string& id : ids) {
    visitors.emplace_back([&, id] {
      auto v = h.Visitor();
      for (int i = 0; i < 20; ++i) {
        auto r = v->Get(TunnelHarness::Path(id, "/info"));
        if (r && r->status == 200) ++ok;
      }
    });
  }
  for (auto& t : visitors) t.join();
  EXPECT_EQ(ok.load(), 4 * 20);
}

// Stopping the gateway while busy agents are connected on two completion
// queues: every call is cancelled and finishes on its queue's thread while
// the server shuts down, the queues stop after it, and the agents come back
// to the next gateway on the same ports.
TEST_F(TunnelTest, GatewayRestartsUnderLoadOnSeveralGrpcThreads) {
  const std::vector<std::string> ids = {"cam-01", "cam-02", "cam-03",
                                        "cam-04", "cam-05", "cam-06"};
  TunnelHarness h(ids);
  h.StartGateway([](server::GatewayOptions& o) { o.service.grpc_threads = 2; });
  for (const std::string& id : ids) h.StartAgent(id, {svc_.url()});
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::vector<std::thread> visitors;
  for (const std::string& id : ids) {
    visitors.emplace_back([&, id] {
      while (!stop) {
        auto r = h.Visitor()->Get(TunnelHarness::Path(id, "/info"));
        if (r && r->status == 200) ++ok;
      }
    });
  }
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(h.WaitForSessions(ids.size())) << "round " << round;
    const int before = ok.load();
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (ok.load() < before + 20 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_GE(ok.load(), before + 20) << "round " << round;
    h.RestartGateway();
  }
  EXPECT_TRUE(h.WaitForSessions(ids.size()));
  stop = true;
  for (auto& t : visitors) t.join();
}

TEST_F(TunnelTest, SubdomainRoutingKeepsThePathAndHost) {
  TunnelHarness h;
  h.StartGateway(
      [](server::GatewayOptions& o) { o.service.domain = "tunnel.test"; });
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  httplib::Headers hdrs = {{"Host", "cam-01.tunnel.test:8082"}};
  auto r = v->Get("/info/x?y=1", hdrs);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  Seen s = ParseInfo(r->body);
  EXPECT_EQ(s.target, "/info/x?y=1");
  EXPECT_EQ(s.headers.find("host")->second, "cam-01.tunnel.test:8082");
  EXPECT_EQ(s.headers.find("x-forwarded-host")->second,
            "cam-01.tunnel.test:8082");
  EXPECT_EQ(s.headers.count("x-forwarded-prefix"), 0u);
  // A host of the base domain itself is not a tunnel.
  auto bare = v->Get("/info", httplib::Headers{{"Host", "tunnel.test"}});
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->status, 404);
}

TEST_F(TunnelTest, ForwardingHeadersAreAddedAndHopByHopRemoved) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  httplib::Headers hdrs = {{"Connection", "keep-alive, X-Hop"},
                           {"X-Hop", "secret"},
                           {"Keep-Alive", "timeout=9"},
                           {"Proxy-Authorization", "Basic eA=="},
                           {"X-Forwarded-For", "203.0.113.9"},
                           {"X-Forwarded-Proto", "gopher"},
                           {"X-Custom", "kept"}};
  auto r = v->Get(TunnelHarness::Path("cam-01", "/info"), hdrs);
  ASSERT_TRUE(r);
  Seen s = ParseInfo(r->body);
  EXPECT_EQ(s.headers.count("x-hop"), 0u);
  EXPECT_EQ(s.headers.count("keep-alive"), 0u);
  EXPECT_EQ(s.headers.count("proxy-authorization"), 0u);
  EXPECT_EQ(s.headers.find("x-custom")->second, "kept");
  EXPECT_EQ(s.headers.find("x-forwarded-for")->second,
            "203.0.113.9, 127.0.0.1");
  EXPECT_EQ(s.headers.find("x-forwarded-proto")->second, "http");
  EXPECT_EQ(s.headers.find("x-forwarded-prefix")->second, "/t/cam-01");
  EXPECT_THAT(s.headers.find("forwarded")->second, HasSubstr("for=127.0.0.1"));
  ASSERT_EQ(s.headers.count("x-request-id"), 1u);
  std::string id = s.headers.find("x-request-id")->second;
  EXPECT_EQ(id.size(), 36u);
  EXPECT_EQ(r->get_header_value("X-Request-Id"), id);
}

TEST_F(TunnelTest, OddQueryStringsAndEncodedPathsArriveByteForByte) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  for (std::string rest :
       {std::string("/info/a%20b/c%2Fd?x=1&x=2&sp=a+b%20c&empty=&=odd&"
                    "u=%E2%9C%93&semi=a;b"),
        std::string("/info?"), std::string("/info?%%zz")}) {
    auto r = v->Get(TunnelHarness::Path("cam-01", rest));
    ASSERT_TRUE(r) << rest;
    EXPECT_EQ(ParseInfo(r->body).target, rest);
  }
  // "/t/<slug>" alone and with a bare query: GET and HEAD are sent on to
  // "/t/<slug>/" (keeping the query), so that the page's relative links
  // stay inside the tunnel; other methods map to "/".
  auto root = v->Get("/t/cam-01?q=1");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->status, 308);
  EXPECT_EQ(root->get_header_value("Location"), "/t/cam-01/?q=1");
  EXPECT_FALSE(root->get_header_value("X-Request-Id").empty());
  auto followed = v->Get(root->get_header_value("Location"));
  ASSERT_TRUE(followed);
  EXPECT_EQ(ParseInfo(followed->body).target, "/?q=1");
  auto bare = v->Head("/t/cam-01");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->status, 308);
  EXPECT_EQ(bare->get_header_value("Location"), "/t/cam-01/");
  auto posted = v->Post("/t/cam-01", "x", "text/plain");
  ASSERT_TRUE(posted);
  EXPECT_EQ(posted->status, 200);
  EXPECT_EQ(ParseInfo(posted->body).target, "/");
}

// The front door passes bodies and fields it does not need to understand
// as they are: a multipart form (httplib would parse it itself and answer
// 500), a Range it cannot parse (httplib would answer 416), and heads whose
// path or Range are near httplib's 8 KiB line limit (parsing them must not
// run out of a request fiber's stack).
TEST_F(TunnelTest, FormsRangesAndLongHeadsPassThrough) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  httplib::MultipartFormDataItems items = {
      {"photo", "\x89PNG\r\n bytes", "cat.png", "image/png"},
      {"note", "hello", "", ""}};
  auto form = v->Post(TunnelHarness::Path("cam-01", "/form"), items);
  ASSERT_TRUE(form);
  EXPECT_EQ(form->status, 200);
  EXPECT_THAT(form->body, HasSubstr("photo|cat.png|\x89PNG\r\n bytes\n"));
  EXPECT_THAT(form->body, HasSubstr("note||hello\n"));

  RawService raw(
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
  h.StartAgent("cam-02", {raw.url()});
  std::string many = "bytes=0-1";
  while (many.size() < 7000) many += ",2-3";
  for (const std::string& range : {std::string("bytes=zzz"), many}) {
    auto r = v->Get(TunnelHarness::Path("cam-02", "/"), {{"Range", range}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  std::vector<std::string> heads = raw.heads();
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_THAT(heads[0], HasSubstr("\r\nRange: bytes=zzz\r\n"));
  EXPECT_THAT(heads[1], HasSubstr(absl::StrCat("\r\nRange: ", many)));

  const std::string long_path = "/info/" + std::string(7000, 'p');
  auto deep = v->Get(TunnelHarness::Path("cam-01", long_path));
  ASSERT_TRUE(deep);
  EXPECT_EQ(deep->status, 200);
  EXPECT_EQ(ParseInfo(deep->body).target, long_path);
}

TEST_F(TunnelTest, SeveralSetCookieHeadersSurviveInOrder) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/cookies"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->get_header_value_count("Set-Cookie"), 3u);
  EXPECT_EQ(r->get_header_value("Set-Cookie", 0), "a=1; Path=/");
  EXPECT_EQ(r->get_header_value("Set-Cookie", 1), "b=2; HttpOnly");
  EXPECT_EQ(r->get_header_value("Set-Cookie", 2), "c=3; Secure");
}

TEST_F(TunnelTest, Download64MiBStreamsWithMatchingSha256) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  const uint64_t size = 64 * kMiB;
  Sha256 got;
  uint64_t n = 0;
  auto r = h.Visitor()->Get(
      TunnelHarness::Path("cam-01",
                          absl::StrCat("/download?size=", size, "&seed=7")),
      [&](const char* d, size_t len) {
        got.Update(d, len);
        n += len;
        return true;
      });
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Length"), absl::StrCat(size));
  EXPECT_EQ(n, size);
  EXPECT_EQ(got.HexDigest(), PatternSha256(7, size));
}

TEST_F(TunnelTest, ChunkedDownloadIsComplete) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  const uint64_t size = 5 * kMiB + 123;
  Sha256 got;
  auto r = h.Visitor()->Get(
      TunnelHarness::Path("cam-01",
                          absl::StrCat("/download-chunked?size=", size)),
      [&](const char* d, size_t len) {
        got.Update(d, len);
        return true;
      });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->get_header_value("Transfer-Encoding"), "chunked");
  EXPECT_EQ(got.HexDigest(), PatternSha256(9, size));
}

TEST_F(TunnelTest, Upload64MiBStreamsWithMatchingSha256) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  const uint64_t size = 64 * kMiB;
  auto r = h.Visitor()->Post(
      TunnelHarness::Path("cam-01", "/upload"), size,
      [](size_t offset, size_t length, httplib::DataSink& sink) {
        std::string buf(std::min<size_t>(length, 200000), '\0');
        FillPattern(11, offset, buf.data(), buf.size());
        return sink.write(buf.data(), buf.size());
      },
      "application/octet-stream");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, absl::StrCat(PatternSha256(11, size), " ", size));
}

TEST_F(TunnelTest, ChunkedUploadStreamsToo) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  const uint64_t size = 3 * kMiB + 7;
  auto r = h.Visitor()->Put(TunnelHarness::Path("cam-01", "/upload"),
                            PatternProvider(13, size, 70000),
                            "application/octet-stream");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->body, absl::StrCat(PatternSha256(13, size), " ", size));
}

TEST_F(TunnelTest, TwoHundredConcurrentRequestsEachGetTheirOwnBody) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  constexpr int kRequests = 200;
  std::atomic<int> ok{0};
  std::vector<std::string> failures(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      std::string body(1000 + i * 311, '\0');
      FillPattern(1000 + i, 0, body.data(), body.size());
      auto r = h.Visitor()->Post(TunnelHarness::Path("cam-01", "/echo"), body,
                                 "application/octet-stream");
      if (!r) {
        failures[i] = httplib::to_string(r.error());
      } else if (r->status != 200 || r->body != body) {
        failures[i] = absl::StrCat("status ", r->status, ", body of ",
                                   r->body.size(), " bytes differs");
      } else {
        ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(failures[i], "") << "request " << i;
  }
  EXPECT_EQ(ok, kRequests);
}

// An upgraded connection carries bytes both ways, and one on which nothing
// moves either way for the agent's --local-timeout is ended by the agent:
// the visitor's connection closes.
TEST_F(TunnelTest, AnUpgradedConnectionRelaysUntilItIsIdleTooLong) {
  UpgradeEchoService echo;
  TunnelHarness h;
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-01", {echo.url()});
  o.local_timeout = absl::Seconds(1);
  h.StartAgent(std::move(o));
  std::string head;
  int fd = OpenUpgrade(h.gateway().http_port(), "cam-01", &head);
  ASSERT_GE(fd, 0);
  EXPECT_THAT(head, HasSubstr(" 101 ")) << head;
  // Echoed, in several rounds (each well within the idle limit).
  for (int i = 0; i < 3; ++i) {
    const std::string msg =
        absl::StrCat("round ", i, " ", std::string(i * 100000, 'x'));
    ASSERT_EQ(::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(msg.size()));
    std::string got;
    char buf[65536];
    while (got.size() < msg.size()) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "round " << i;
      got.append(buf, static_cast<size_t>(n));
    }
    EXPECT_EQ(got, msg);
  }
  // Then silence: the agent ends the connection after about a second.
  const absl::Time quiet = absl::Now();
  char c;
  EXPECT_EQ(::recv(fd, &c, 1, 0), 0);  // closed (a timeout would be -1)
  EXPECT_LT(absl::Now() - quiet, absl::Seconds(8));
  ::close(fd);
}

// With the agent's send queue at its smallest, concurrent downloads keep
// filling it: their transfers pause for room and resume when the writer has
// drained it, and every body still arrives whole. Every other answer has a
// 20 KiB head, which the agent reads in small pieces while the queue is full
// (so that a burst of answers does not hold a large read each).
TEST_F(TunnelTest, DownloadsThroughAFullSendQueueArriveWhole) {
  TunnelHarness h;
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-01", {svc_.url()});
  o.max_queued_bytes = 65536;
  h.StartAgent(std::move(o));
  constexpr int kDownloads = 16;
  const uint64_t size = 4 * kMiB;
  std::vector<std::string> failures(kDownloads);
  std::vector<std::thread> visitors;
  for (int i = 0; i < kDownloads; ++i) {
    visitors.emplace_back([&, i] {
      Sha256 got;
      uint64_t n = 0;
      const size_t pad = i % 2 == 0 ? 0 : 20000;
      auto r = h.Visitor()->Get(
          TunnelHarness::Path("cam-01",
                              absl::StrCat("/download?size=", size, "&seed=", i,
                                           pad > 0 ? "&pad=20000" : "")),
          [&](const char* d, size_t len) {
            got.Update(d, len);
            n += len;
            return true;
          });
      if (!r) {
        failures[i] = httplib::to_string(r.error());
        return;
      }
      size_t padded = 0;
      for (int f = 0; r->has_header(absl::StrCat("X-Pad-", f)); ++f) {
        padded += r->get_header_value(absl::StrCat("X-Pad-", f)).size();
      }
      if (r->status != 200 || n != size ||
          got.HexDigest() != PatternSha256(i, size) || padded != pad) {
        failures[i] = absl::StrCat("status ", r->status, ", ", n,
                                   " bytes, padding ", padded);
      }
    });
  }
  for (auto& t : visitors) t.join();
  for (int i = 0; i < kDownloads; ++i) {
    EXPECT_EQ(failures[i], "") << "download " << i;
  }
}

// Connections the agent opened for a burst of requests are kept for the
// next burst: three waves of 32 concurrent requests reach the service over
// the same 32 connections (libcurl's default cache, four connections per
// running transfer, closed most of them as the first wave ended).
TEST_F(TunnelTest, BurstAfterBurstReusesTheSameConnections) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  for (int wave = 0; wave < 3; ++wave) {
    std::atomic<int> ok{0};
    std::vector<std::thread> visitors;
    for (int i = 0; i < kGatherWave; ++i) {
      visitors.emplace_back([&] {
        auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gather"));
        if (r && r->status == 200 && r->body == "gathered") ++ok;
      });
    }
    for (auto& t : visitors) t.join();
    ASSERT_EQ(ok.load(), kGatherWave) << "wave " << wave;
  }
  absl::MutexLock lock(&gather_mu_);
  EXPECT_EQ(gather_ports_.size(), static_cast<size_t>(kGatherWave));
}

// The agent keeps its connections to a local service open between requests
// (one connection for requests one after another), over plain HTTP and over
// HTTPS with the self-signed certificate local services usually have.
TEST_F(TunnelTest, HttpAndHttpsTargetsReuseTheirConnections) {
  TestCa ca("local-ca");
  const common::CertAndKey leaf = ca.Issue("localhost");
  TempDir dir;
  httplib::SSLServer tls_server(dir.Write("cert.pem", leaf.cert_pem).c_str(),
                                dir.Write("key.pem", leaf.key_pem).c_str());
  TestHttpServer plain_server;
  absl::Mutex mu;
  std::map<std::string, std::set<int>> ports;  // per scheme, as seen
  auto who = [&](const std::string& scheme) {
    return [&, scheme](const httplib::Request& req, httplib::Response& res) {
      absl::MutexLock lock(&mu);
      ports[scheme].insert(req.remote_port);
      res.set_content(scheme, "text/plain");
    };
  };
  tls_server.Get("/who", who("https"));
  plain_server.Get("/who", who("http"));
  for (httplib::Server* srv : {static_cast<httplib::Server*>(&tls_server),
                               static_cast<httplib::Server*>(&plain_server)}) {
    srv->set_keep_alive_max_count(1000);
  }
  const int tls_port = tls_server.bind_to_any_port("127.0.0.1");
  const int plain_port = plain_server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(tls_port, 0);
  ASSERT_GT(plain_port, 0);
  std::thread tls_thread([&] { tls_server.listen_after_bind(); });
  std::thread plain_thread([&] { plain_server.listen_after_bind(); });
  {  // the agent (and its kept connections) goes before the services
    TunnelHarness h({"cam-01", "cam-02"});
    h.StartGateway();
    h.StartAgent("cam-01", {absl::StrCat("https://127.0.0.1:", tls_port)});
    h.StartAgent("cam-02", {absl::StrCat("http://127.0.0.1:", plain_port)});
    auto v = h.Visitor();
    for (int i = 0; i < 10; ++i) {
      for (const auto& [slug, scheme] :
           {std::pair<std::string, std::string>{"cam-01", "https"},
            {"cam-02", "http"}}) {
        auto r = v->Get(TunnelHarness::Path(slug, "/who"));
        ASSERT_TRUE(r) << scheme;
        EXPECT_EQ(r->status, 200) << scheme;
        EXPECT_EQ(r->body, scheme);
      }
    }
    {
      absl::MutexLock lock(&mu);
      EXPECT_EQ(ports["https"].size(), 1u);
      EXPECT_EQ(ports["http"].size(), 1u);
    }
  }
  tls_server.stop();
  plain_server.stop();
  tls_thread.join();
  plain_thread.join();
}

// Batches are agreed at connect: the smaller offer holds, and either side
// can turn them off; without them, every gRPC message is one envelope.
TEST_F(TunnelTest, BatchingIsAgreedAtConnectAndEitherSideCanDeclineIt) {
  struct Case {
    uint32_t gateway;
    uint32_t agent;
    uint32_t agreed;
  };
  for (const Case& c :
       {Case{256 << 10, 256 << 10, 256 << 10}, Case{256 << 10, 8192, 8192},
        Case{0, 256 << 10, 0}, Case{256 << 10, 0, 0}}) {
    SCOPED_TRACE(absl::StrCat("gateway ", c.gateway, ", agent ", c.agent));
    TunnelHarness h;
    h.StartGateway([&](server::GatewayOptions& o) {
      o.service.max_batch_bytes = c.gateway;
    });
    agent::AgentOptions ao = h.AgentOptionsFor("cam-01", {svc_.url()});
    ao.max_batch_bytes = c.agent;
    // The agent's own view of the answer (StartAgent waits for the
    // gateway's side only).
    absl::Notification accepted;
    uint32_t agreed = 1;
    ao.on_accepted = [&](const tunnel::v1::ConnectAccepted& a) {
      agreed = a.max_batch_bytes();
      if (!accepted.HasBeenNotified()) accepted.Notify();
    };
    h.StartAgent(std::move(ao));
    ASSERT_TRUE(accepted.WaitForNotificationWithTimeout(absl::Seconds(20)));
    EXPECT_EQ(agreed, c.agreed);
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int i = 0; i < 32; ++i) {
      threads.emplace_back([&, i] {
        std::string body(100 + i, 'b');
        auto r = h.Visitor()->Post(TunnelHarness::Path("cam-01", "/echo"), body,
                                   "application/octet-stream");
        if (r && r->status == 200 && r->body == body) ++ok;
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok, 32);
    if (c.agreed == 0) {
      for (const char* dir : {"to_agent", "from_agent"}) {
        const std::string label = absl::StrCat("{direction=\"", dir, "\"}");
        EXPECT_EQ(
            MetricValue(h.gateway(), "tunnel_agent_messages_total" + label, -1),
            MetricValue(h.gateway(), "tunnel_agent_envelopes_total" + label,
                        -2))
            << dir;
      }
    }
  }
}

// --max-concurrent bounds the local requests a (small) device runs at once;
// the rest wait in the agent, in order, and all complete.
TEST_F(TunnelTest, MaxConcurrentBoundsLocalRequestsOnTheDevice) {
  TunnelHarness h;
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-01", {svc_.url()});
  o.max_concurrent = 2;
  RunningAgent* a = h.StartAgent(std::move(o));

  constexpr int kRequests = 6;
  std::atomic<int> ok{0};
  std::vector<std::thread> visitors;
  for (int i = 0; i < kRequests; ++i) {
    visitors.emplace_back([&] {
      auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/held"));
      if (r && r->status == 200 && r->body == "held") ++ok;
    });
  }
  // Two run in the service; the other four are queued in the agent.
  bool bounded = false;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    int now;
    {
      absl::MutexLock lock(&held_mu_);
      auto changed = [this]() ABSL_SHARED_LOCKS_REQUIRED(held_mu_) {
        return held_now_ >= 2;
      };
      held_mu_.AwaitWithTimeout(absl::Condition(&changed),
                                absl::Milliseconds(20));
      now = held_now_;
    }
    if (now == 2 && a->agent().local_requests_queued() == kRequests - 2) {
      bounded = true;
      break;
    }
  }
  EXPECT_TRUE(bounded) << "never saw 2 running and 4 queued";
  held_release_.Notify();
  for (auto& t : visitors) t.join();
  EXPECT_EQ(ok.load(), kRequests);
  absl::MutexLock lock(&held_mu_);
  EXPECT_EQ(held_max_, 2);
}

// What a visitor received from a service that holds the rest of its
// response until the visitor confirms the first part.
struct HeldGet {
  bool ok = false;  // a whole response arrived
  std::string content_type;
  std::string received;
  bool first_before_release = false;  // the first part came on its own
};

HeldGet TunnelTest::GetReleasingAfter(const std::string& path,
                                      size_t first_size) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  HeldGet got;
  auto r = h.Visitor()->Get(
      TunnelHarness::Path("cam-01", path), [&](const char* d, size_t len) {
        got.received.append(d, len);
        if (got.received.size() == first_size && !release_.HasBeenNotified()) {
          got.first_before_release = true;
          release_.Notify();
        }
        return true;
      });
  got.ok = static_cast<bool>(r);
  if (r) got.content_type = r->get_header_value("Content-Type");
  return got;
}

TEST_F(TunnelTest, FirstChunkArrivesWhileTheServiceHoldsTheRest) {
  const std::string first = "data: first\n\n";
  HeldGet got = GetReleasingAfter("/stream", first.size());
  ASSERT_TRUE(got.ok);
  EXPECT_TRUE(got.first_before_release)
      << "the first event only arrived after the service was released";
  EXPECT_EQ(got.received, first + "data: rest\n\n");
  EXPECT_EQ(got.content_type, "text/event-stream");
}

// The agent gathers a known-length body's 4 KiB reads into larger
// messages, but only while more bytes already wait in its socket: bytes the
// service has sent are never held back waiting for bytes it has not.
TEST_F(TunnelTest, KnownLengthBodyIsNotHeldBackWhileTheServiceWaits) {
  HeldGet got = GetReleasingAfter("/stream-sized", kSizedFirst);
  ASSERT_TRUE(got.ok);
  EXPECT_TRUE(got.first_before_release && !sized_wait_timed_out_)
      << "the first 48 KiB only arrived after the service sent the rest";
  EXPECT_EQ(got.received,
            std::string(kSizedFirst, 'a') + std::string(kSizedRest, 'b'));
}

// A service that sends its head at once and its body later: the head
// reaches the visitor at once (the agent holds a head back for its body
// only briefly), so a response timeout only counts until the head.
TEST_F(TunnelTest, AHeadSentBeforeItsBodyReachesTheVisitorAtOnce) {
  TunnelHarness h;
  h.StartGateway([](server::GatewayOptions& o) {
    o.front.response_timeout = absl::Seconds(5);
    // No ping (whose pong would carry a held head along) before then.
    o.service.heartbeat_interval = absl::Minutes(1);
  });
  h.StartAgent("cam-01", {svc_.url()});
  std::string body;
  auto r = h.Visitor()->Get(
      TunnelHarness::Path("cam-01", "/late-body"),
      [&](const httplib::Response&) {
        late_body_release_.Notify();
        return true;
      },
      [&](const char* d, size_t n) {
        body.append(d, n);
        return true;
      });
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200) << r->get_header_value("X-Tunnel-Error");
  EXPECT_EQ(body, "later");
}

TEST_F(TunnelTest, ServerSentEventsArriveOneByOne) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  std::string received;
  int seen = 0;
  auto r = h.Visitor()->Get(
      TunnelHarness::Path("cam-01", "/events"), [&](const char* d, size_t len) {
        received.append(d, len);
        // Confirm every complete event as it arrives.
        while (seen < kEvents &&
               received.find(absl::StrCat("data: event ", seen, "\n\n")) !=
                   std::string::npos) {
          event_seen_[seen++].Notify();
        }
        return true;
      });
  ASSERT_TRUE(r);
  EXPECT_EQ(seen, kEvents);
  EXPECT_EQ(events_produced_unseen_, 0)
      << "an event was produced before the previous one reached the visitor";
}

TEST_F(TunnelTest, VisitorLeavingMidDownloadCancelsTheLocalRequest) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  uint64_t got = 0;
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/endless"),
                            [&](const char*, size_t len) {
                              got += len;
                              return got < kMiB;  // then hang up
                            });
  EXPECT_FALSE(r);
  EXPECT_GE(got, kMiB);
  // The service sees its response aborted: the gateway noticed the visitor
  // left and the agent shut the local connection — promptly, long before
  // the service's own 60 s write timeout could end it.
  ASSERT_TRUE(endless_done_.WaitForNotificationWithTimeout(absl::Seconds(4)))
      << "the local request was not cancelled";
  EXPECT_FALSE(endless_success_);
}

TEST_F(TunnelTest, TwoTunnelsOnOneAgentReachTheirOwnServices) {
  LocalService other;
  other.server().Get("/who",
                     [](const httplib::Request&, httplib::Response& res) {
                       res.set_content("other", "text/plain");
                     });
  other.Start();
  svc_.server().Get("/who",
                    [](const httplib::Request&, httplib::Response& res) {
                      res.set_content("main", "text/plain");
                    });
  TunnelHarness h;
  h.StartGateway();
  RunningAgent* a = h.StartAgent("cam-01", {svc_.url(), "api=" + other.url()});
  auto tunnels = a->agent().tunnels();
  ASSERT_EQ(tunnels.size(), 2u);
  EXPECT_EQ(tunnels[0].slug(), "cam-01");
  EXPECT_EQ(tunnels[1].slug(), "api-cam-01");
  EXPECT_EQ(tunnels[1].path_url(),
            absl::StrCat("http://localhost:", h.gateway().http_port(),
                         "/t/api-cam-01/"));
  auto v = h.Visitor();
  EXPECT_EQ(v->Get(TunnelHarness::Path("cam-01", "/who"))->body, "main");
  EXPECT_EQ(v->Get(TunnelHarness::Path("api-cam-01", "/who"))->body, "other");
}

// --slug random: each agent process gets 8 random [a-z0-9] chars from the
// gateway, no two alike, and a named tunnel NAME gets NAME-<those>.
TEST_F(TunnelTest, RandomSlugsAreEightCharsAndDistinctAcross200Agents) {
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(absl::StrCat("rnd-", i));
  TunnelHarness h(ids);
  h.StartGateway();
  std::set<std::string> slugs;
  std::string first;
  for (const std::string& id : ids) {
    agent::AgentOptions o = h.AgentOptionsFor(id, {svc_.url()});
    o.random_slug = true;
    for (auto& t : o.tunnels) t.slug.clear();
    if (id == ids[0]) {
      // The first one has a named tunnel too.
      absl::StatusOr<agent::LocalTarget> named =
          agent::ParseTarget(absl::StrCat("api=", svc_.url()));
      ASSERT_TRUE(named.ok()) << named.status();
      o.tunnels.push_back(*named);
    }
    o.max_concurrent = 4;
    RunningAgent* a = h.StartAgent(std::move(o));
    std::vector<tunnel::v1::AcceptedTunnel> t = a->agent().tunnels();
    ASSERT_FALSE(t.empty());
    const std::string& slug = t[0].slug();
    EXPECT_TRUE(std::all_of(slug.begin(), slug.end(),
                            [](char c) {
                              return absl::ascii_islower(c) ||
                                     absl::ascii_isdigit(c);
                            }) &&
                slug.size() == 8)
        << slug;
    EXPECT_THAT(t[0].url(), HasSubstr(absl::StrCat("//", slug, ".")));
    slugs.insert(slug);
    if (id == ids[0]) {
      first = slug;
      ASSERT_EQ(t.size(), 2u);
      EXPECT_EQ(t[1].slug(), absl::StrCat("api-", slug));
    }
  }
  EXPECT_EQ(slugs.size(), ids.size());
  auto r = h.Visitor()->Get(TunnelHarness::Path(first, "/info"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = h.Visitor()->Get(TunnelHarness::Path(absl::StrCat("api-", first), "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// The agent asks for the slug it was given when it reconnects, so its URL
// survives a gateway restart; no other agent can take that slug, not even
// once the first one is gone.
TEST_F(TunnelTest, ARandomSlugIsKeptAcrossAGatewayRestartAndNotGivenAway) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-01", {svc_.url()});
  o.random_slug = true;
  o.tunnels[0].slug.clear();
  RunningAgent* a = h.StartAgent(std::move(o));
  const std::string slug = a->agent().tunnels()[0].slug();
  ASSERT_EQ(slug.size(), 8u);

  h.RestartGateway();
  // Back once the agent has its second session's answer (the gateway
  // registers the session a moment before the agent reads it).
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (a->agent().sessions_started() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(a->agent().sessions_started(), 2u);
  EXPECT_EQ(a->agent().tunnels()[0].slug(), slug);
  auto r = h.Visitor()->Get(TunnelHarness::Path(slug, "/info"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);

  auto take = [&] {
    agent::AgentOptions b = h.AgentOptionsFor("cam-02", {svc_.url()});
    b.tunnels[0].slug = slug;
    RunningAgent thief(std::move(b));
    return thief.WaitForExit(absl::Seconds(20));
  };
  absl::Status refused = take();
  EXPECT_EQ(refused.code(), absl::StatusCode::kAlreadyExists) << refused;
  EXPECT_THAT(refused.message(), HasSubstr(slug));
  a->Stop();
  refused = take();
  EXPECT_EQ(refused.code(), absl::StatusCode::kAlreadyExists) << refused;
}

TEST_F(TunnelTest, UnknownTunnelIs404) {
  TunnelHarness h;
  h.StartGateway();
  auto v = h.Visitor();
  auto r = v->Get(TunnelHarness::Path("nosuch", "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "tunnel_not_found");
  EXPECT_THAT(r->body, HasSubstr("does not exist"));
  auto html = v->Get("/nothing", httplib::Headers{{"Accept", "text/html"}});
  ASSERT_TRUE(html);
  EXPECT_EQ(html->status, 404);
  EXPECT_THAT(html->get_header_value("Content-Type"), HasSubstr("text/html"));
  // The hint names the public port, so it can be followed as written.
  EXPECT_THAT(html->body, HasSubstr(absl::StrCat(
                              "http://localhost:", h.gateway().http_port(),
                              "/t/&lt;name&gt;/")));
}

// Every answer carries an X-Request-Id, the gateway's own answers too.
TEST_F(TunnelTest, TheGatewaysOwnAnswersCarryARequestId) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway();
  auto v = h.Visitor();
  for (const std::string& path :
       {TunnelHarness::Path("nosuch", "/"), TunnelHarness::Path("cam-02", "/"),
        std::string("/t/cam-02")}) {
    auto r = v->Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_NE(r->status, 200) << path;
    EXPECT_EQ(r->get_header_value("X-Request-Id").size(), 36u) << path;
  }
}

// A well-formed request id from the visitor (or a proxy in front of the
// gateway) travels end to end; a malformed one is replaced.
TEST_F(TunnelTest, AWellFormedIncomingRequestIdIsKept) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  auto kept = v->Get(TunnelHarness::Path("cam-01", "/info"),
                     {{"X-Request-Id", "lb-7f3a.92:b=1"}});
  ASSERT_TRUE(kept);
  Seen seen = ParseInfo(kept->body);
  ASSERT_EQ(seen.headers.count("x-request-id"), 1u);
  EXPECT_EQ(seen.headers.find("x-request-id")->second, "lb-7f3a.92:b=1");
  EXPECT_EQ(kept->get_header_value("X-Request-Id"), "lb-7f3a.92:b=1");
  for (const std::string& bad :
       {std::string("has space"), std::string(200, 'a'),
        std::string("semi;colon")}) {
    auto r =
        v->Get(TunnelHarness::Path("cam-01", "/info"), {{"X-Request-Id", bad}});
    ASSERT_TRUE(r);
    Seen s = ParseInfo(r->body);
    ASSERT_EQ(s.headers.count("x-request-id"), 1u);
    EXPECT_EQ(s.headers.find("x-request-id")->second.size(), 36u) << bad;
    EXPECT_EQ(r->get_header_value("X-Request-Id"),
              s.headers.find("x-request-id")->second);
  }
}

// A proxy must not invent a Content-Type the service did not send.
TEST_F(TunnelTest, AResponseWithoutContentTypeGetsNone) {
  RawService raw(
      "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody");
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {raw.url()});
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "body");
  EXPECT_FALSE(r->has_header("Content-Type"));
}

TEST_F(TunnelTest, KnownTunnelWithAgentOfflineIs502WithRetryAfter) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway();
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-02", "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "agent_offline");
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
}

TEST_F(TunnelTest, AgentThatLeftMakesItsTunnel502) {
  TunnelHarness h;
  h.StartGateway();
  RunningAgent* a = h.StartAgent("cam-01", {svc_.url()});
  auto v = h.Visitor();
  EXPECT_EQ(v->Get(TunnelHarness::Path("cam-01", "/info"))->status, 200);
  a->Stop();
  // The gateway notices the closed stream; poll the visible behaviour with a
  // bound instead of sleeping a fixed time.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  int status = 0;
  while (absl::Now() < give_up) {
    status = v->Get(TunnelHarness::Path("cam-01", "/info"))->status;
    if (status == 502) break;
  }
  EXPECT_EQ(status, 502);
}

TEST_F(TunnelTest, UnreachableLocalServiceIs502SayingSo) {
  LocalService gone;
  gone.Start();
  std::string url = gone.url();
  gone.Stop();
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {url});
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "local_service_unreachable");
  EXPECT_THAT(r->body, HasSubstr("cannot reach its local service"));
}

TEST_F(TunnelTest, NoResponseHeadInTimeIs504) {
  TunnelHarness h;
  h.StartGateway([](server::GatewayOptions& o) {
    o.front.response_timeout = absl::Milliseconds(300);
  });
  h.StartAgent("cam-01", {svc_.url()});
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/slow"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 504);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "agent_timeout");
  slow_release_.Notify();
}

TEST_F(TunnelTest, SlowlorisVisitorIsCutAtTheReadTimeout) {
  TunnelHarness h;
  h.StartGateway([](server::GatewayOptions& o) {
    o.front.connection.read_timeout = absl::Milliseconds(300);
  });
  h.StartAgent("cam-01", {svc_.url()});
  int fd = ConnectLoopback(h.gateway().http_port());
  ASSERT_GE(fd, 0);
  timeval tv{10, 0};  // a bound for this test, far above the 300 ms
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string partial = "GET /t/cam-01/info HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  ASSERT_EQ(send(fd, partial.data(), partial.size(), 0),
            static_cast<ssize_t>(partial.size()));
  absl::Time start = absl::Now();
  char buf[4096];
  std::string got;
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, n);
  absl::Duration took = absl::Now() - start;
  close(fd);
  EXPECT_EQ(n, 0) << "connection not closed by the gateway";
  EXPECT_LT(took, absl::Seconds(5));
  // Whatever it said, it never forwarded the half request.
  EXPECT_EQ(got.find("200 OK"), std::string::npos) << got;
  // Other visitors are unaffected.
  EXPECT_EQ(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/info"))->status,
            200);
}

// The front door reads a visitor's socket only when it has news (it is
// edge-triggered and remembers a socket it found empty): a keep-alive
// visitor that sends each request only after the previous answer, each head
// in pieces, is served every time.
TEST_F(TunnelTest, KeepAliveHeadsArrivingInPiecesAreEachServed) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  int fd = ConnectLoopback(h.gateway().http_port());
  ASSERT_GE(fd, 0);
  timeval tv{10, 0};  // a bound for this test: a missed read hangs it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string head =
      "GET /t/cam-01/info HTTP/1.1\r\nHost: x\r\nX-Piece: yes\r\n\r\n";
  std::string buffered;
  for (int i = 0; i < 3; ++i) {
    // Three pieces, the visitor pausing between them (its bytes arrive
    // after the front door found the socket empty).
    for (auto [from, to] :
         {std::pair<size_t, size_t>{0, 10}, {10, 30}, {30, head.size()}}) {
      ASSERT_EQ(send(fd, head.data() + from, to - from, MSG_NOSIGNAL),
                static_cast<ssize_t>(to - from));
      absl::SleepFor(absl::Milliseconds(20));
    }
    // One whole answer: its head, then Content-Length bytes.
    size_t head_end;
    char buf[4096];
    while ((head_end = buffered.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "request " << i << " got no answer: " << buffered;
      buffered.append(buf, n);
    }
    ASSERT_EQ(buffered.rfind("HTTP/1.1 200", 0), 0u) << buffered;
    const std::string lower =
        absl::AsciiStrToLower(buffered.substr(0, head_end));
    size_t at = lower.find("content-length: ");
    ASSERT_NE(at, std::string::npos) << buffered;
    size_t length = 0;
    ASSERT_TRUE(absl::SimpleAtoi(
        lower.substr(at + 16, lower.find("\r\n", at) - at - 16), &length));
    while (buffered.size() < head_end + 4 + length) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "request " << i << "'s body was cut";
      buffered.append(buf, n);
    }
    const std::string body = buffered.substr(head_end + 4, length);
    EXPECT_EQ(ParseInfo(body).method, "GET");
    buffered.erase(0, head_end + 4 + length);
  }
  close(fd);
}

// A field value is octets, not always UTF-8 (RFC 9110 allows obs-text,
// like a Latin-1 file name), and so may a request target be. They reach
// the other side byte for byte, both ways and through both of the agent's
// clients, and the session that carries them (with a request of someone
// else's in flight) goes on. A response field whose name is not a token is
// dropped; a visitor's is refused at the front door.
TEST_F(TunnelTest, BytesThatAreNotUtf8PassBothWaysAndTheSessionGoesOn) {
  const std::string latin1 = "caf\xe9";
  const std::string disposition =
      absl::StrCat("attachment; filename=\"", latin1, ".txt\"");
  const std::string answer = absl::StrCat(
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Disposition: ",
      disposition, "\r\nConnection: close\r\n");
  // http: the agent's own client (Beast's parser, which refuses a whole
  // answer with a field name that is not a token); https: libcurl's.
  RawService native(absl::StrCat(answer, "\r\nok"));
  TestCa ca("local-ca");
  const common::CertAndKey leaf = ca.Issue("localhost");
  TempDir dir;
  httplib::SSLServer tls(dir.Write("cert.pem", leaf.cert_pem).c_str(),
                         dir.Write("key.pem", leaf.key_pem).c_str());
  tls.Get("/file", [&](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Disposition", disposition);
    res.set_header(("X-" + latin1).c_str(), "1");
    res.set_content("ok", "text/plain");
  });
  const int tls_port = tls.bind_to_any_port("127.0.0.1");
  ASSERT_GT(tls_port, 0);
  std::thread tls_thread([&] { tls.listen_after_bind(); });
  absl::Cleanup stop_tls = [&] {
    tls.stop();
    tls_thread.join();
  };
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url(), "native=" + native.url(),
                          absl::StrCat("curl=https://127.0.0.1:", tls_port)});

  std::optional<httplib::Result> held;
  std::thread holder([&] {
    held.emplace(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/held")));
  });
  absl::Cleanup join_holder = [&] {  // also when an assertion ends the test
    if (!held_release_.HasBeenNotified()) held_release_.Notify();
    holder.join();
  };
  {
    absl::MutexLock lock(&held_mu_);
    auto in = [this]() ABSL_SHARED_LOCKS_REQUIRED(held_mu_) {
      return held_now_ == 1;
    };
    ASSERT_TRUE(
        held_mu_.AwaitWithTimeout(absl::Condition(&in), absl::Seconds(20)));
  }

  auto v = h.Visitor();
  v->set_url_encode(false);  // the target's byte goes as it is
  auto r = v->Get(TunnelHarness::Path("cam-01", "/info?q=" + latin1),
                  {{"X-Name", latin1}});
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200) << r->get_header_value("X-Tunnel-Error");
  Seen seen = ParseInfo(r->body);
  EXPECT_EQ(seen.target, "/info?q=" + latin1);
  auto name = seen.headers.find("x-name");
  ASSERT_NE(name, seen.headers.end());
  EXPECT_EQ(name->second, latin1);

  for (const char* slug : {"native-cam-01", "curl-cam-01"}) {
    r = v->Get(TunnelHarness::Path(slug, "/file"));
    ASSERT_TRUE(r) << slug << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 200) << slug;
    EXPECT_EQ(r->body, "ok") << slug;
    EXPECT_EQ(r->get_header_value("Content-Disposition"), disposition) << slug;
    for (const auto& [field, value] : r->headers) {
      EXPECT_TRUE(common::IsValidHeaderName(field)) << slug << ": " << field;
    }
  }

  // A visitor's field name that is not a token: refused, nothing else.
  r = v->Get(TunnelHarness::Path("cam-01", "/info"), {{"X-" + latin1, "1"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);

  std::move(join_holder).Invoke();
  ASSERT_TRUE(held.has_value() && *held) << "the held request was lost";
  EXPECT_EQ((*held)->status, 200);
  EXPECT_EQ((*held)->body, "held");
}

TEST_F(TunnelTest, BadCredentialsAreRefusedAndEndTheAgent) {
  TunnelHarness h;
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-01", {svc_.url()});
  o.secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";  // wrong key
  RunningAgent wrong_secret(o);
  absl::Status s = wrong_secret.WaitForExit(absl::Seconds(20));
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("refused the credentials"));

  o = h.AgentOptionsFor("cam-01", {svc_.url()});
  o.token_id = "tok_0000000000000000";
  RunningAgent unknown_token(o);
  s = unknown_token.WaitForExit(absl::Seconds(20));
  EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
  EXPECT_EQ(h.gateway().registry().session_count(), 0u);
  EXPECT_EQ(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/"))->status, 502);
}

TEST_F(TunnelTest, SlugOfAnotherAgentIsRefused) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway();
  agent::AgentOptions o = h.AgentOptionsFor("cam-02", {svc_.url()});
  o.tunnels[0].slug = "cam-01";
  RunningAgent thief(o);
  absl::Status s = thief.WaitForExit(absl::Seconds(20));
  EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("another agent"));
}

}  // namespace
}  // namespace tunnel::testing
