// Pools against a real gateway, real agents and real local services on
// loopback: several agents (each with its own service answering its name)
// serve one slug; requests spread by streams in flight; the right to a pool
// is the token's; a member that drains loses no request.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"
#include "tunnel/v1/admin.grpc.pb.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kPool[] = "web";
constexpr char kAdminToken[] = "adm_pool-test-token-0123456789";

class PoolTest : public ::testing::Test {
 protected:
  // Members pi-a, pi-b, pi-c may serve kPool (and pi-c a pool "pi-b"
  // too); "outsider" may serve none.
  void Start() {
    h_.StartGateway([](server::GatewayOptions& o) {
      for (auto& c : *o.credentials->mutable_credentials()) {
        if (c.agent_id() != "outsider") c.add_pools(kPool);
        if (c.agent_id() == "pi-c") c.add_pools("pi-b");
      }
    });
  }

  // A local service answering "<name>\n" plus the request body (after
  // `delay`), started and kept for the test.
  std::string Service(const std::string& name,
                      absl::Duration delay = absl::ZeroDuration()) {
    auto svc = std::make_unique<LocalService>();
    auto answer = [name, delay](const httplib::Request& req,
                                httplib::Response& res) {
      if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
      res.set_content(absl::StrCat(name, "\n", req.body), "text/plain");
    };
    svc->server().Get(".*", answer);
    svc->server().Post(".*", answer);
    svc->Start();
    std::string url = svc->url();
    by_name_[name] = svc.get();
    services_.push_back(std::move(svc));
    return url;
  }

  RunningAgent* Member(const std::string& id,
                       absl::Duration delay = absl::ZeroDuration(),
                       bool health_checks = true) {
    agent::AgentOptions o = h_.AgentOptionsFor(id, {Service(id, delay)});
    o.pool = kPool;
    o.tunnels[0].slug = kPool;
    // Quick checks: one failed TCP connect makes a service unhealthy.
    o.health.interval =
        health_checks ? absl::Milliseconds(100) : absl::ZeroDuration();
    o.health.timeout = absl::Milliseconds(500);
    o.health.unhealthy_after = 1;
    o.health.healthy_after = 1;
    return h_.StartAgent(std::move(o));
  }

  // Waits (bounded) until the gateway holds member `id`'s service as
  // unhealthy (or, `healthy`, as healthy), polling the registry.
  bool WaitForHealth(const std::string& id, bool healthy) {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (absl::Now() < give_up) {
      absl::StatusOr<server::TunnelEntry> e =
          h_.gateway().registry().FindTunnel(kPool);
      if (e.ok()) {
        for (const auto& m : e->members) {
          if (m->agent_id() == id &&
              m->UnhealthyReason(kPool).has_value() != healthy) {
            return true;
          }
        }
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  // Which member answered a GET of the pool ("" on any failure).
  std::string Who(httplib::Client& v) {
    auto r = v.Get(TunnelHarness::Path(kPool, "/"));
    if (!r || r->status != 200) return "";
    return r->body.substr(0, r->body.find('\n'));
  }

  int LoadAround(const std::function<void()>& drain,
                 std::map<std::string, int>* after) {
    std::atomic<bool> stop{false};
    absl::Mutex done_mu;
    int done = 0;  // guarded by done_mu
    std::atomic<int> errors{0};
    absl::Mutex mu;
    std::atomic<bool> drained{false};
    std::vector<std::thread> visitors;
    for (int t = 0; t < 16; ++t) {
      visitors.emplace_back([&, t] {
        auto v = h_.Visitor();
        for (int i = 0; !stop.load(); ++i) {
          const std::string body = absl::StrCat("visitor ", t, " request ", i);
          const bool late = drained.load();
          auto r =
              v->Post(TunnelHarness::Path(kPool, "/echo"), body, "text/plain");
          if (!r || r->status != 200 ||
              r->body.substr(r->body.find('\n') + 1) != body) {
            ++errors;
            ADD_FAILURE() << (r ? absl::StrCat(r->status, " ", r->body)
                                : httplib::to_string(r.error()));
          } else if (late) {
            absl::MutexLock lock(&mu);
            ++(*after)[r->body.substr(0, r->body.find('\n'))];
          }
          absl::MutexLock lock(&done_mu);
          ++done;
        }
      });
    }
    // Waits (bounded) until visitors have finished `n` requests in all.
    auto wait_for = [&](int n) {
      absl::MutexLock lock(&done_mu);
      auto reached = [&]() ABSL_SHARED_LOCKS_REQUIRED(done_mu) {
        return done >= n;
      };
      return done_mu.AwaitWithTimeout(absl::Condition(&reached),
                                      absl::Seconds(30));
    };
    EXPECT_TRUE(wait_for(200));
    drain();
    drained = true;
    int at_drain = 0;
    {
      absl::MutexLock lock(&done_mu);
      at_drain = done;
    }
    EXPECT_TRUE(wait_for(at_drain + 200));
    stop = true;
    for (auto& t : visitors) t.join();
    return errors.load();
  }

  std::vector<std::unique_ptr<LocalService>> services_;
  std::map<std::string, LocalService*> by_name_;
  TunnelHarness h_{{"pi-a", "pi-b", "pi-c", "outsider"}};
};

TEST_F(PoolTest, MembersShareOneUrlAndIdleOnesTakeTurns) {
  Start();
  Member("pi-a");
  Member("pi-b");
  Member("pi-c");
  absl::StatusOr<server::TunnelEntry> entry =
      h_.gateway().registry().FindTunnel(kPool);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->pool, kPool);
  EXPECT_EQ(entry->owner, "");
  EXPECT_EQ(entry->members.size(), 3u);

  auto v = h_.Visitor();
  std::map<std::string, int> count;
  for (int i = 0; i < 30; ++i) ++count[Who(*v)];
  EXPECT_EQ(count[""], 0) << "failed requests";
  // One at a time, every member is idle: they take turns.
  for (const char* m : {"pi-a", "pi-b", "pi-c"}) {
    EXPECT_GE(count[m], 5) << m;
    EXPECT_EQ(
        MetricValue(h_.gateway(),
                    absl::StrCat("tunnel_pool_member_requests{pool=\"web\","
                                 "agent=\"",
                                 m, "\"}"),
                    -1),
        count[m])
        << m;
  }
  EXPECT_EQ(
      MetricValue(h_.gateway(),
                  "tunnel_pool_members{pool=\"web\",state=\"healthy\"}", -1),
      3);
}

TEST_F(PoolTest, ASlowMemberGetsFewerRequests) {
  Start();
  Member("pi-a", absl::Milliseconds(200));
  Member("pi-b");
  Member("pi-c");
  absl::Mutex mu;
  std::map<std::string, int> count;
  std::vector<std::thread> visitors;
  for (int t = 0; t < 8; ++t) {
    visitors.emplace_back([&] {
      auto v = h_.Visitor();
      for (int i = 0; i < 15; ++i) {
        std::string who = Who(*v);
        absl::MutexLock lock(&mu);
        ++count[who];
      }
    });
  }
  for (auto& t : visitors) t.join();
  EXPECT_EQ(count[""], 0) << "failed requests";
  // The slow member holds its requests 200 ms, so it has more in flight
  // whenever a new request is placed.
  EXPECT_LT(count["pi-a"] * 2, count["pi-b"])
      << count["pi-a"] << " vs " << count["pi-b"];
  EXPECT_LT(count["pi-a"] * 2, count["pi-c"])
      << count["pi-a"] << " vs " << count["pi-c"];
}

TEST_F(PoolTest, ATokenWithoutThePoolIsRefusedNamingIt) {
  Start();
  agent::AgentOptions o = h_.AgentOptionsFor("outsider", {Service("o")});
  o.pool = kPool;
  o.tunnels[0].slug = kPool;
  RunningAgent agent(std::move(o));
  absl::Status s = agent.WaitForExit(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("may not serve pool \"web\"; issue one with "
                        "`tunnelctl token issue --id outsider --pool web`"));
}

TEST_F(PoolTest, APoolSlugIsNoAgentsAndAnAgentsSlugIsNoPool) {
  Start();
  Member("pi-a");
  // An agent without --pool cannot take the pool's slug...
  agent::AgentOptions own = h_.AgentOptionsFor("outsider", {Service("o")});
  own.tunnels[0].slug = kPool;
  RunningAgent taker(std::move(own));
  absl::Status s = taker.WaitForExit(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("is pool \"web\"'s"));
  // ...and a pool cannot take an agent's slug (agent pi-b's id reserves
  // "pi-b").
  agent::AgentOptions pool = h_.AgentOptionsFor("pi-c", {Service("c")});
  pool.pool = "pi-b";
  pool.tunnels[0].slug = "pi-b";
  RunningAgent grabber(std::move(pool));
  s = grabber.WaitForExit(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("belongs to agent pi-b"));
}

// 16 visitors keep POSTing bodies to the pool and check each echo; after
// 200 requests `drain` runs (and returns once the member is gone), then
// 200 more. Returns the failed requests; `*after` counts who answered the
// requests started after `drain` returned.
// Visitors keep sending (with bodies checked) while one member drains:
// none of their requests fails, and the other member takes over.
TEST_F(PoolTest, ADrainingMemberLosesNoRequest) {
  Start();
  Member("pi-a");
  RunningAgent* b = Member("pi-b");
  std::map<std::string, int> after;
  EXPECT_EQ(LoadAround([&] { b->agent().Drain(absl::Seconds(20)); }, &after),
            0);
  EXPECT_GT(after["pi-a"], 0);
  EXPECT_EQ(after["pi-b"], 0);
}

// The same asked by an administrator (tunnelctl drain): the member
// finishes its requests and its Run() ends OK (the process exits 0).
TEST_F(PoolTest, AnAdministratorsDrainLosesNoRequestAndTheAgentEndsOk) {
  h_.StartGateway([](server::GatewayOptions& o) {
    o.admin_addr = "127.0.0.1:0";
    o.admin_token = kAdminToken;
    for (auto& c : *o.credentials->mutable_credentials()) c.add_pools(kPool);
  });
  auto stub = tunnel::v1::AdminService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", h_.gateway().admin_port()),
                          grpc::InsecureChannelCredentials()));
  Member("pi-a");
  RunningAgent* b = Member("pi-b");
  std::map<std::string, int> after;
  EXPECT_EQ(LoadAround(
                [&] {
                  grpc::ClientContext ctx;
                  ctx.AddMetadata("authorization",
                                  absl::StrCat("Bearer ", kAdminToken));
                  tunnel::v1::DrainAgentRequest req;
                  req.set_agent_id("pi-b");
                  tunnel::v1::DrainAgentResponse resp;
                  grpc::Status st = stub->DrainAgent(&ctx, req, &resp);
                  EXPECT_TRUE(st.ok()) << st.error_message();
                  EXPECT_FALSE(resp.session_id().empty());
                  absl::Status end = b->WaitForExit(absl::Seconds(30));
                  EXPECT_TRUE(end.ok()) << end;
                },
                &after),
            0);
  EXPECT_GT(after["pi-a"], 0);
  EXPECT_EQ(after["pi-b"], 0);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAdminToken));
  tunnel::v1::DrainAgentRequest req;
  req.set_agent_id("nobody");
  tunnel::v1::DrainAgentResponse resp;
  EXPECT_EQ(stub->DrainAgent(&ctx, req, &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// A member whose gateway connection is replaced (the same agent id
// connects again, e.g. a new process after an upgrade) finishes the
// requests the old connection carries instead of cutting them.
TEST_F(PoolTest, AReplacedConnectionFinishesItsRequestsInFlight) {
  Start();
  RunningAgent* old_one = Member("pi-a", absl::Milliseconds(800));
  std::string answer;
  std::thread visitor([&] {
    auto v = h_.Visitor();
    answer = Who(*v);
  });
  // Wait (bounded) until the request is on the old session.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  std::shared_ptr<server::Session> first;
  while (absl::Now() < give_up) {
    first = h_.gateway().registry().FindByAgent("pi-a");
    if (first != nullptr && first->stream_count() == 1) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(first->stream_count(), 1u);
  // The same agent id connects again: its new session takes the routes.
  Member("pi-a");
  visitor.join();
  EXPECT_EQ(answer, "pi-a") << "the request in flight was cut";
  EXPECT_NE(h_.gateway().registry().FindByAgent("pi-a"), first);
  // The old connection is closed once idle, and its agent told why.
  absl::Status end = old_one->WaitForExit(absl::Seconds(20));
  EXPECT_THAT(std::string(end.message()), HasSubstr("replaced"));
}

// A member whose service dies gets no new request once its agent says so;
// with every member's service dead, visitors get a quick 503 that says why.
TEST_F(PoolTest, UnhealthyMembersGetNothingAndAllUnhealthyIs503) {
  Start();
  Member("pi-a");
  Member("pi-b");
  by_name_["pi-a"]->Stop();
  ASSERT_TRUE(WaitForHealth("pi-a", /*healthy=*/false));
  auto v = h_.Visitor();
  std::map<std::string, int> count;
  for (int i = 0; i < 20; ++i) ++count[Who(*v)];
  EXPECT_EQ(count["pi-b"], 20) << "failed: " << count[""];
  EXPECT_EQ(
      MetricValue(h_.gateway(),
                  "tunnel_pool_members{pool=\"web\",state=\"unhealthy\"}", -1),
      1);
  EXPECT_EQ(
      MetricValue(h_.gateway(),
                  "tunnel_pool_members{pool=\"web\",state=\"healthy\"}", -1),
      1);
  EXPECT_EQ(
      MetricValue(h_.gateway(),
                  "tunnel_health_transitions_total{to=\"unhealthy\"}", -1),
      1);
  EXPECT_EQ(MetricValue(h_.gateway(),
                        "tunnel_pool_member_health_transitions{pool=\"web\","
                        "agent=\"pi-a\"}",
                        -1),
            1);

  by_name_["pi-b"]->Stop();
  ASSERT_TRUE(WaitForHealth("pi-b", /*healthy=*/false));
  auto r = v->Get(TunnelHarness::Path(kPool, "/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "local_service_unhealthy");
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  EXPECT_THAT(r->body, HasSubstr("is unhealthy: connection refused"));
}

// Before anyone knows a member's service is gone (here: never, its checks
// are off), a request without a streamed body that its service refused is
// sent once to another member: the visitor sees no error.
TEST_F(PoolTest, ARefusedConnectIsRetriedOnceOnAnotherMember) {
  Start();
  Member("pi-a", absl::ZeroDuration(), /*health_checks=*/false);
  Member("pi-b");
  by_name_["pi-a"]->Stop();
  auto v = h_.Visitor();
  std::map<std::string, int> count;
  for (int i = 0; i < 10; ++i) {
    auto r = v->Get(TunnelHarness::Path(kPool, "/"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    ++count[r->body.substr(0, r->body.find('\n'))];
  }
  EXPECT_EQ(count["pi-b"], 10);
  const double retries =
      MetricValue(h_.gateway(), "tunnel_pool_retries_total", 0);
  EXPECT_GE(retries, 1);
  // Each retry was a refused connect on pi-a: its error count says so.
  EXPECT_EQ(
      MetricValue(h_.gateway(),
                  "tunnel_pool_member_errors{pool=\"web\",agent=\"pi-a\"}", -1),
      retries);
}

}  // namespace
}  // namespace tunnel::testing
