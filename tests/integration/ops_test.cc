// Metrics that need a real gateway, agent and service in a given state
// (stalled streams, cancels, the stream limit) and the ops listener itself.
// Values are read from the registry's own text rendering, the same text
// /metrics serves.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

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

// The value of one series (`name{labels}` exactly as rendered), or -1.
double Metric(server::Gateway& gw, absl::string_view series) {
  return MetricValue(gw, series, -1);
}

// Polls until the series has `want` (bounded); returns the last value.
double AwaitMetric(server::Gateway& gw, absl::string_view series, double want,
                   absl::Duration timeout = absl::Seconds(20)) {
  absl::Time give_up = absl::Now() + timeout;
  double v = Metric(gw, series);
  while (v != want && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
    v = Metric(gw, series);
  }
  return v;
}

class OpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& s = svc_.server();
    s.Get("/endless", [](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider(
          "application/octet-stream", [](size_t, httplib::DataSink& sink) {
            std::string chunk(64 * 1024, 'e');
            return sink.write(chunk.data(), chunk.size());
          });
    });
    // Reads nothing of the upload until released.
    s.Post("/held-upload",
           [this](const httplib::Request&, httplib::Response& res,
                  const httplib::ContentReader& reader) {
             release_.WaitForNotificationWithTimeout(absl::Seconds(30));
             uint64_t n = 0;
             reader([&](const char*, size_t len) {
               n += len;
               return true;
             });
             res.set_content(absl::StrCat(n), "text/plain");
           });
    s.Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      release_.WaitForNotificationWithTimeout(absl::Seconds(30));
      res.set_content("late", "text/plain");
    });
    svc_.Start();
  }
  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

  LocalService svc_;
  absl::Notification release_;
};

TEST_F(OpsTest, SlowVisitorStallsItsStreamAndItsCancelIsCounted) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  server::Gateway& gw = h.gateway();
  const std::string stalled =
      "tunnel_streams_stalled{direction=\"to_visitor\"}";
  const std::string cancels =
      "tunnel_stream_closes_total{sender=\"gateway\",reason=\"cancelled\"}";
  EXPECT_EQ(Metric(gw, stalled), 0);
  EXPECT_EQ(Metric(gw, cancels), 0);

  int fd = ConnectLoopback(gw.http_port(), 4096);
  ASSERT_GE(fd, 0);
  std::string get = "GET /t/cam-01/endless HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(send(fd, get.data(), get.size(), 0),
            static_cast<ssize_t>(get.size()));
  // The visitor never reads: socket buffers fill, then the stream's window.
  EXPECT_EQ(AwaitMetric(gw, stalled, 1), 1);
  EXPECT_EQ(Metric(gw, "tunnel_streams_in_flight"), 1);
  // (Body bytes are counted once a write to the visitor returns; with the
  // visitor not reading, even the first write may never return, so the byte
  // counter is checked by ops_e2e with a visitor that reads, not here.)

  close(fd);  // unread data: the gateway's next write fails at once
  EXPECT_EQ(AwaitMetric(gw, cancels, 1), 1);
  EXPECT_EQ(AwaitMetric(gw, stalled, 0), 0);
  EXPECT_EQ(AwaitMetric(gw, "tunnel_streams_in_flight", 0), 0);
  EXPECT_EQ(AwaitMetric(gw,
                        "tunnel_http_requests_total{tunnel=\"cam-01\","
                        "code=\"2xx\",error=\"response_cut\"}",
                        1),
            1);
}

TEST_F(OpsTest, UploadWaitingForTheAgentShowsAsStalledToAgent) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  server::Gateway& gw = h.gateway();
  const std::string stalled = "tunnel_streams_stalled{direction=\"to_agent\"}";
  EXPECT_EQ(Metric(gw, stalled), 0);

  // More than loopback socket buffers and both windows can hold.
  const std::string body(48 << 20, 'u');
  int status = 0;
  std::string answer;
  std::thread visitor([&] {
    auto v = h.Visitor();
    v->set_write_timeout(60, 0);
    v->set_read_timeout(60, 0);
    auto r = v->Post(TunnelHarness::Path("cam-01", "/held-upload"), body,
                     "application/octet-stream");
    if (r) {
      status = r->status;
      answer = r->body;
    }
  });
  EXPECT_EQ(AwaitMetric(gw, stalled, 1), 1);
  release_.Notify();
  visitor.join();
  EXPECT_EQ(status, 200);
  EXPECT_EQ(answer, absl::StrCat(body.size()));
  EXPECT_EQ(AwaitMetric(gw, stalled, 0), 0);
  EXPECT_EQ(AwaitMetric(gw,
                        "tunnel_body_bytes_total{tunnel=\"cam-01\","
                        "direction=\"visitor_to_agent\"}",
                        static_cast<double>(body.size())),
            static_cast<double>(body.size()));
}

TEST_F(OpsTest, StreamLimitRefusalsAreCountedAsCapacityRejections) {
  TunnelHarness h;
  h.StartGateway(
      [](server::GatewayOptions& o) { o.service.limits.max_streams = 1; });
  h.StartAgent("cam-01", {svc_.url()});
  server::Gateway& gw = h.gateway();
  int held = 0;
  std::thread first([&] {
    auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/slow"));
    if (r) held = r->status;
  });
  ASSERT_EQ(AwaitMetric(gw, "tunnel_streams_in_flight", 1), 1);
  auto busy = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/slow"));
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->status, 503);
  EXPECT_EQ(busy->get_header_value("X-Tunnel-Error"), "gateway_busy");
  release_.Notify();
  first.join();
  EXPECT_EQ(held, 200);
  EXPECT_EQ(Metric(gw,
                   "tunnel_capacity_rejections_total{limit=\"max_streams_"
                   "per_agent\"}"),
            1);
  EXPECT_EQ(AwaitMetric(gw,
                        "tunnel_http_requests_total{tunnel=\"cam-01\","
                        "code=\"5xx\",error=\"gateway_busy\"}",
                        1),
            1);
  EXPECT_EQ(AwaitMetric(gw,
                        "tunnel_http_requests_total{tunnel=\"cam-01\","
                        "code=\"2xx\",error=\"\"}",
                        1),
            1);
}

TEST_F(OpsTest, OpsListenerServesHealthAndMetricsOnItsOwnPort) {
  TunnelHarness h;
  h.StartGateway([](server::GatewayOptions& o) { o.ops_addr = "127.0.0.1:0"; });
  h.StartAgent("cam-01", {svc_.url()});
  server::Gateway& gw = h.gateway();
  ASSERT_GT(gw.ops_port(), 0);
  EXPECT_NE(gw.ops_port(), gw.http_port());
  httplib::Client ops("127.0.0.1", gw.ops_port());
  ops.set_read_timeout(10, 0);
  auto health = ops.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_THAT(health->body, HasSubstr("{\"status\":\"ok\",\"sessions\":1,"
                                      "\"streams\":0,\"version\":\""));
  auto metrics = ops.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"),
            "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(metrics->body, HasSubstr("\ntunnel_sessions 1\n"));
  EXPECT_EQ(ops.Get("/t/cam-01/")->status, 404);  // never tunnel traffic

  // A second gateway cannot take the same ops address, and says which.
  server::GatewayOptions o;
  o.grpc_addr = "127.0.0.1:0";
  o.http_addr = "127.0.0.1:0";
  o.ops_addr = absl::StrCat("127.0.0.1:", gw.ops_port());
  o.credentials = h.credentials();
  auto second = server::Gateway::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--ops-addr"));
}

}  // namespace
}  // namespace tunnel::testing
