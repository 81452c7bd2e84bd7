// Faults, slow peers and restarts: nothing is lost, mixed up or left hanging.
// Real gateway, real agents (in-process, or the agent-tunnel binary where the
// test must kill -9 or freeze it), real local services, all on loopback.
#include <signal.h>

#include <atomic>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1024 * 1024;

class ReliabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& s = svc_.server();
    // Deterministic bytes; with hold=1 the service stops halfway until the
    // test releases it (so the test can break things mid-body).
    s.Get("/data", [this](const httplib::Request& req, httplib::Response& res) {
      uint64_t size = std::stoull(req.get_param_value("size"));
      uint64_t seed = std::stoull(req.get_param_value("seed"));
      bool hold = req.has_param("hold");
      res.set_content_provider(
          size, "application/octet-stream",
          [this, seed, size, hold](size_t offset, size_t length,
                                   httplib::DataSink& sink) {
            if (hold && offset >= size / 2) {
              ++held_;
              release_.WaitForNotificationWithTimeout(absl::Seconds(30));
            }
            size_t n = std::min<size_t>(length, 64 * 1024);
            if (hold && offset < size / 2) n = std::min(n, size / 2 - offset);
            std::string buf(n, '\0');
            FillPattern(seed, offset, buf.data(), n);
            return sink.write(buf.data(), n);
          });
    });
    // Dies mid-response: Content-Length promised, connection dropped.
    s.Get("/die", [](const httplib::Request& req, httplib::Response& res) {
      bool chunked = req.has_param("chunked");
      auto provider = [](size_t offset, httplib::DataSink& sink) {
        if (offset >= 256 * 1024) return false;  // the service "crashes"
        std::string buf(64 * 1024, 'd');
        return sink.write(buf.data(), buf.size());
      };
      if (chunked) {
        res.set_chunked_content_provider("application/octet-stream", provider);
      } else {
        res.set_content_provider(
            kMiB, "application/octet-stream",
            [provider](size_t offset, size_t, httplib::DataSink& sink) {
              return provider(offset, sink);
            });
      }
    });
    s.Get("/gated", [this](const httplib::Request&, httplib::Response& res) {
      ++held_;
      release_.WaitForNotificationWithTimeout(absl::Seconds(30));
      res.set_content("done", "text/plain");
    });
    svc_.Start();
  }

  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

  // The agent-tunnel binary for cam-01 as a child process (so the test can
  // kill -9 or SIGSTOP it), serving svc_.
  std::unique_ptr<ChildProcess> StartAgentProcess(TunnelHarness& h) {
    std::string env;
    std::vector<std::string> args = h.AgentArgs("cam-01", {svc_.url()}, &env);
    return std::make_unique<ChildProcess>(TUNNEL_AGENT_BINARY, args,
                                          std::vector<std::string>{env});
  }

  // Waits (bounded) until `n` requests are parked at the service.
  bool WaitForHeld(int n) {
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (held_ < n) {
      if (absl::Now() > give_up) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return true;
  }

  LocalService svc_;
  absl::Notification release_;
  std::atomic<int> held_{0};
};

// What one visitor got: a correct body, a clean failure, or something wrong.
enum class Outcome { kCorrect, kCleanFailure, kWrongBody, kTruncatedAsOk };

Outcome Fetch(const TunnelHarness& h, const std::string& path, uint64_t seed,
              uint64_t size, absl::Duration* took) {
  absl::Time start = absl::Now();
  Sha256 sha;
  uint64_t n = 0;
  auto v = h.Visitor();
  v->set_read_timeout(std::chrono::seconds(30));
  auto r = v->Get(path, [&](const char* d, size_t len) {
    sha.Update(d, len);
    n += len;
    return true;
  });
  *took = absl::Now() - start;
  if (!r) return Outcome::kCleanFailure;  // aborted connection
  if (r->status == 502 || r->status == 503) return Outcome::kCleanFailure;
  if (r->status != 200) return Outcome::kWrongBody;
  if (n != size) return Outcome::kTruncatedAsOk;
  return sha.HexDigest() == PatternSha256(seed, size) ? Outcome::kCorrect
                                                      : Outcome::kWrongBody;
}

TEST_F(ReliabilityTest, AgentKilledDuring100RequestsLosesAndMixesNothing) {
  TunnelHarness h;
  h.StartGateway();
  std::unique_ptr<ChildProcess> child = StartAgentProcess(h);
  ASSERT_TRUE(h.WaitForSessions(1)) << child->Stderr();
  ChildProcess& agent = *child;

  // 50 requests finish before the kill, 50 are parked halfway through.
  constexpr int kRequests = 100;
  const uint64_t size = 512 * 1024;
  std::vector<Outcome> outcomes(kRequests);
  std::vector<absl::Duration> took(kRequests);
  std::atomic<int> unheld_done{0};
  std::vector<std::thread> visitors;
  for (int i = 0; i < kRequests; ++i) {
    visitors.emplace_back([&, i] {
      std::string path = TunnelHarness::Path(
          "cam-01", absl::StrCat("/data?size=", size, "&seed=", 100 + i,
                                 i % 2 ? "&hold=1" : ""));
      outcomes[i] = Fetch(h, path, 100 + i, size, &took[i]);
      if (i % 2 == 0) ++unheld_done;
    });
  }
  ASSERT_TRUE(WaitForHeld(kRequests / 2));
  absl::Time give_up_unheld = absl::Now() + absl::Seconds(20);
  while (unheld_done < kRequests / 2 && absl::Now() < give_up_unheld) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  agent.Signal(SIGKILL);
  for (auto& t : visitors) t.join();

  int correct = 0, failed = 0;
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_NE(outcomes[i], Outcome::kWrongBody) << "request " << i;
    EXPECT_NE(outcomes[i], Outcome::kTruncatedAsOk) << "request " << i;
    EXPECT_LT(took[i], absl::Seconds(20)) << "request " << i << " hung";
    if (outcomes[i] == Outcome::kCorrect) ++correct;
    if (outcomes[i] == Outcome::kCleanFailure) ++failed;
    // Parked requests cannot have finished: the agent died under them.
    if (i % 2) {
      EXPECT_EQ(outcomes[i], Outcome::kCleanFailure) << i;
    }
  }
  EXPECT_EQ(correct + failed, kRequests);
  EXPECT_GE(correct, kRequests / 2);
  // And the tunnel now says the agent is offline.
  EXPECT_EQ(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated"))->status,
            502);
}

TEST_F(ReliabilityTest, GatewayRestartUnderLoadAgentComesBack) {
  TunnelHarness h;
  h.StartGateway();
  RunningAgent* a = h.StartAgent("cam-01", {svc_.url()});
  std::atomic<bool> stop{false};
  std::atomic<int> ok_after_restart{0};
  std::atomic<bool> restarted{false};
  std::atomic<int> wrong{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        absl::Duration took;
        uint64_t seed = t * 100000 + i;
        Outcome o =
            Fetch(h,
                  TunnelHarness::Path("cam-01", absl::StrCat("/data?size=65536&"
                                                             "seed=",
                                                             seed)),
                  seed, 65536, &took);
        if (o == Outcome::kWrongBody || o == Outcome::kTruncatedAsOk) ++wrong;
        if (o == Outcome::kCorrect && restarted) ++ok_after_restart;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(200));  // load before the restart
  absl::Time restart_at = absl::Now();
  h.RestartGateway();
  restarted = true;
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (ok_after_restart < 20 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::Duration back_after = absl::Now() - restart_at;
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_GE(ok_after_restart, 20);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(a->agent().sessions_started(), 2u);
  // The harness caps the agent's backoff at 500 ms.
  EXPECT_LT(back_after, absl::Seconds(10));
}

TEST_F(ReliabilityTest, AgentWaitsTheRetryAfterOfAGoAway) {
  const absl::Duration retry_after = absl::Seconds(3);
  TunnelHarness h;
  h.StartGateway(
      [&](server::GatewayOptions& o) { o.drain_retry_after = retry_after; });
  RunningAgent* a = h.StartAgent("cam-01", {svc_.url()});
  absl::Time t0 = absl::Now();
  ASSERT_TRUE(h.gateway().Drain(absl::ZeroDuration()));  // sends GoAway
  h.RestartGateway();
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (a->agent().sessions_started() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(a->agent().sessions_started(), 2u);
  // Its own backoff is capped at 500 ms here; the gateway asked for 3 s.
  EXPECT_GE(absl::Now() - t0, retry_after);
}

TEST_F(ReliabilityTest, AgentOverCapacityWaitsAndComesInWhenThereIsRoom) {
  TunnelHarness h({"cam-01", "cam-02"});
  h.StartGateway([](server::GatewayOptions& o) {
    o.service.max_agents = 1;
    o.service.busy_retry_after = absl::Milliseconds(300);
  });
  RunningAgent* first = h.StartAgent("cam-01", {svc_.url()});
  RunningAgent second(h.AgentOptionsFor("cam-02", {svc_.url()}));
  // Refused while the gateway is full, and it keeps trying (no exit).
  EXPECT_FALSE(second.agent().WaitUntilConnected(absl::Seconds(1)));
  EXPECT_TRUE(
      absl::IsDeadlineExceeded(second.WaitForExit(absl::ZeroDuration())));
  EXPECT_EQ(h.Visitor()->Get(TunnelHarness::Path("cam-02", "/gated"))->status,
            502);
  first->Stop();
  EXPECT_TRUE(second.agent().WaitUntilConnected(absl::Seconds(20)));
  EXPECT_EQ(h.gateway().registry().session_count(), 1u);
}

TEST_F(ReliabilityTest, ServiceDyingMidBodyAbortsTheVisitor) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  for (const char* q : {"", "?chunked=1"}) {
    uint64_t got = 0;
    auto r =
        h.Visitor()->Get(TunnelHarness::Path("cam-01", absl::StrCat("/die", q)),
                         [&](const char*, size_t len) {
                           got += len;
                           return true;
                         });
    // Never a complete-looking response: the client sees the cut (or, if
    // the failure overtook the response head, a 502).
    EXPECT_TRUE(!r || r->status == 502)
        << q << ": got status " << r->status << " with " << got << " bytes";
    if (r) {
      EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "agent_error");
    }
    EXPECT_LT(got, kMiB) << q;
  }
}

TEST_F(ReliabilityTest, ServiceStoppedAfterConnectIs502SayingSo) {
  LocalService svc;
  svc.server().Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("up", "text/plain");
  });
  svc.Start();
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc.url()});
  EXPECT_EQ(h.Visitor()->Get("/t/cam-01/")->body, "up");
  svc.Stop();
  auto r = h.Visitor()->Get("/t/cam-01/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "local_service_unreachable");
  EXPECT_THAT(r->body, HasSubstr(svc.url()));
}

TEST_F(ReliabilityTest, SlowVisitorDoesNotHoldUpFastOnes) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  const uint64_t slow_size = 100 * 1000;
  std::atomic<bool> slow_done{false};
  Outcome slow_outcome = Outcome::kCleanFailure;
  std::thread slow([&] {
    Sha256 sha;
    uint64_t n = 0;
    auto r = h.Visitor()->Get(
        TunnelHarness::Path("cam-01",
                            absl::StrCat("/data?size=", slow_size, "&seed=5")),
        [&](const char* d, size_t len) {
          sha.Update(d, len);
          n += len;
          // Read at about 10 KB/s: this visitor is the slow one.
          absl::SleepFor(absl::Microseconds(len * 100));
          return true;
        });
    slow_outcome = r && r->status == 200 && n == slow_size &&
                           sha.HexDigest() == PatternSha256(5, slow_size)
                       ? Outcome::kCorrect
                       : Outcome::kWrongBody;
    slow_done = true;
  });
  std::vector<std::thread> fast;
  std::atomic<int> fast_ok{0};
  std::atomic<int> fast_done_before_slow{0};
  for (int i = 0; i < 50; ++i) {
    fast.emplace_back([&, i] {
      absl::Duration took;
      if (Fetch(h,
                TunnelHarness::Path(
                    "cam-01", absl::StrCat("/data?size=", kMiB, "&seed=", i)),
                i, kMiB, &took) == Outcome::kCorrect) {
        ++fast_ok;
      }
      if (!slow_done) ++fast_done_before_slow;
    });
  }
  for (auto& t : fast) t.join();
  slow.join();
  EXPECT_EQ(fast_ok, 50);
  EXPECT_EQ(fast_done_before_slow, 50) << "fast requests waited for the slow";
  EXPECT_EQ(slow_outcome, Outcome::kCorrect);
}

TEST_F(ReliabilityTest, DrainLetsRequestsInFlightFinishAndRefusesNewOnes) {
  TunnelHarness h;
  h.StartGateway();
  h.StartAgent("cam-01", {svc_.url()});
  std::optional<httplib::Result> before;
  std::thread in_flight([&] {
    before.emplace(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated")));
  });
  ASSERT_TRUE(WaitForHeld(1));
  bool drained = false;
  std::thread drainer([&] { drained = h.gateway().Drain(absl::Seconds(20)); });
  // New requests during the drain: 503 with Retry-After.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  int status = 0;
  std::optional<httplib::Result> during;
  while (absl::Now() < give_up) {
    // A quick path: a probe that slips in before the drain starts must not
    // park at the service.
    during.emplace(
        h.Visitor()->Get(TunnelHarness::Path("cam-01", "/data?size=1&seed=1")));
    status = *during ? (*during)->status : 0;
    if (status == 503) break;
  }
  release_.Notify();
  in_flight.join();
  drainer.join();
  ASSERT_EQ(status, 503);
  EXPECT_EQ((*during)->get_header_value("X-Tunnel-Error"), "gateway_draining");
  EXPECT_FALSE((*during)->get_header_value("Retry-After").empty());
  ASSERT_TRUE(*before);
  EXPECT_EQ((*before)->status, 200);
  EXPECT_EQ((*before)->body, "done");
  EXPECT_TRUE(drained);
}

TEST_F(ReliabilityTest, AgentDrainFinishesInFlightThenStops) {
  TunnelHarness h;
  h.StartGateway();
  RunningAgent* a = h.StartAgent("cam-01", {svc_.url()});
  std::optional<httplib::Result> before;
  std::thread in_flight([&] {
    before.emplace(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated")));
  });
  ASSERT_TRUE(WaitForHeld(1));
  std::thread drainer([&] { a->agent().Drain(absl::Seconds(20)); });
  // The gateway stops routing new requests to the draining agent.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  int status = 0;
  while (absl::Now() < give_up && status != 502) {
    status = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/"))->status;
  }
  EXPECT_EQ(status, 502);
  release_.Notify();
  in_flight.join();
  drainer.join();
  ASSERT_TRUE(*before);
  EXPECT_EQ((*before)->status, 200);
  EXPECT_TRUE(a->WaitForExit(absl::Seconds(10)).ok());
}

TEST_F(ReliabilityTest, SecondAgentWithSameIdReplacesTheFirst) {
  TunnelHarness h;
  h.StartGateway();
  RunningAgent* first = h.StartAgent("cam-01", {svc_.url()});
  std::optional<httplib::Result> in_flight_result;
  std::thread in_flight([&] {
    in_flight_result.emplace(
        h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated")));
  });
  ASSERT_TRUE(WaitForHeld(1));
  h.StartAgent("cam-01", {svc_.url()});
  // The first agent finishes the request it carries...
  release_.Notify();
  in_flight.join();
  ASSERT_TRUE(*in_flight_result);
  EXPECT_EQ((*in_flight_result)->status, 200);
  // ...and is then closed, and exits saying it was replaced.
  absl::Status s = first->WaitForExit(absl::Seconds(10));
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("replaced"));
  auto r = h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ReliabilityTest, FrozenAgentIsDeclaredDeadWithinTheHeartbeatBound) {
  TunnelHarness h;
  h.StartGateway([](server::GatewayOptions& o) {
    o.service.heartbeat_interval = absl::Milliseconds(100);
    o.heartbeat_timeout = absl::Milliseconds(600);
  });
  std::unique_ptr<ChildProcess> child = StartAgentProcess(h);
  ASSERT_TRUE(h.WaitForSessions(1)) << child->Stderr();
  ChildProcess& agent = *child;
  std::optional<httplib::Result> stuck;
  absl::Duration took;
  std::thread visitor([&] {
    absl::Time start = absl::Now();
    stuck.emplace(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated")));
    took = absl::Now() - start;
  });
  ASSERT_TRUE(WaitForHeld(1));
  agent.Signal(SIGSTOP);  // alive TCP, silent agent
  visitor.join();
  agent.Signal(SIGCONT);
  // The visitor got a clean failure within a few heartbeat timeouts, not the
  // 30 s response timeout.
  EXPECT_TRUE(!*stuck || (*stuck)->status == 502);
  EXPECT_LT(took, absl::Seconds(10));
  release_.Notify();
}

// With the default heartbeats, a frozen agent (SIGSTOP: the TCP connection
// stays up, nothing answers) is declared dead well within the default
// response timeout (30 s): a request in flight, and one that arrives after
// the freeze, both get 502 agent_offline, not 504 after 30 s.
TEST_F(ReliabilityTest, FrozenAgentFailsRequestsWith502AtTheDefaults) {
  TunnelHarness h;
  h.StartGateway();
  std::unique_ptr<ChildProcess> child = StartAgentProcess(h);
  ASSERT_TRUE(h.WaitForSessions(1)) << child->Stderr();
  ChildProcess& agent = *child;
  std::optional<httplib::Result> in_flight, after;
  std::thread first([&] {
    in_flight.emplace(
        h.Visitor()->Get(TunnelHarness::Path("cam-01", "/gated")));
  });
  ASSERT_TRUE(WaitForHeld(1));
  agent.Signal(SIGSTOP);
  std::thread second([&] {
    after.emplace(h.Visitor()->Get(TunnelHarness::Path("cam-01", "/hello")));
  });
  first.join();
  second.join();
  agent.Signal(SIGCONT);
  for (auto* r : {&in_flight, &after}) {
    ASSERT_TRUE(r->has_value() && **r);
    EXPECT_EQ((**r)->status, 502);
    EXPECT_EQ((**r)->get_header_value("X-Tunnel-Error"), "agent_offline");
  }
  release_.Notify();
}

}  // namespace
}  // namespace tunnel::testing
