#include "agent/health_check.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/loopback_port.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::agent {
namespace {

using ::testing::HasSubstr;

LocalTarget Target(int port) {
  LocalTarget t;
  t.scheme = "http";
  t.host = "127.0.0.1";
  t.port = port;
  t.url = absl::StrCat("http://127.0.0.1:", port);
  return t;
}

int ClosedPort() { return testing::UnusedLoopbackPort(); }

TEST(HealthCheckTest, TcpProbeSaysWhetherTheServiceListens) {
  testing::LocalService svc;
  svc.server().Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
  svc.Start();
  HealthCheckOptions o;
  EXPECT_EQ(ProbeTarget(Target(svc.port()), o), "");
  EXPECT_EQ(ProbeTarget(Target(ClosedPort()), o), "connection refused");
}

TEST(HealthCheckTest, HttpProbeWantsTwoOrThreeHundredInTime) {
  testing::LocalService svc;
  svc.server().Get("/healthz",
                   [](const httplib::Request&, httplib::Response& res) {
                     res.set_content("ok", "text/plain");
                   });
  svc.server().Get("/sick", [](const httplib::Request&,
                               httplib::Response& res) { res.status = 503; });
  svc.Start();
  HealthCheckOptions o;
  o.path = "/healthz";
  EXPECT_EQ(ProbeTarget(Target(svc.port()), o), "");
  o.path = "/sick";
  EXPECT_EQ(ProbeTarget(Target(svc.port()), o), "GET /sick answered HTTP 503");
  o.path = "/healthz";
  EXPECT_THAT(ProbeTarget(Target(ClosedPort()), o),
              HasSubstr("GET /healthz: "));
  // A listener that never accepts: the connect completes, no answer comes.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  o.timeout = absl::Milliseconds(200);
  EXPECT_EQ(ProbeTarget(Target(ntohs(a.sin_port)), o),
            "no answer within 200ms");
  close(fd);
}

// The checker flips a target after the configured streaks and says so.
TEST(HealthCheckTest, CheckerReportsEachFlipOnce) {
  auto svc = std::make_unique<testing::LocalService>();
  svc->server().Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
  svc->Start();
  LocalTarget t = Target(svc->port());
  t.name = "api";
  HealthCheckOptions o;
  o.interval = absl::Milliseconds(100);
  o.unhealthy_after = 2;
  o.healthy_after = 1;
  absl::Mutex mu;
  std::vector<TargetHealth> flips;
  HealthChecker checker({t}, o, [&](const TargetHealth& h) {
    absl::MutexLock lock(&mu);
    flips.push_back(h);
  });
  checker.Start();
  EXPECT_TRUE(checker.Snapshot()[0].healthy);
  svc->Stop();
  absl::MutexLock lock(&mu);
  auto flipped = [&]()
                     ABSL_SHARED_LOCKS_REQUIRED(mu) { return !flips.empty(); };
  ASSERT_TRUE(
      mu.AwaitWithTimeout(absl::Condition(&flipped), absl::Seconds(10)));
  EXPECT_EQ(flips[0].name, "api");
  EXPECT_FALSE(flips[0].healthy);
  EXPECT_EQ(flips[0].reason, "connection refused");
  EXPECT_FALSE(checker.Snapshot()[0].healthy);
}

}  // namespace
}  // namespace tunnel::agent
