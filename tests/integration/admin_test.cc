// The admin API (tunnel.v1.AdminService) against a real gateway, real agents
// and a real local service on loopback, through a real gRPC client.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/cidr.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/admin_service.h"
#include "tests/testing/tunnel_harness.h"
#include "tunnel/v1/admin.grpc.pb.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kToken[] = "adm_test-token-0123456789abcdef";
constexpr char kBody[] = "hello from the service";  // 22 bytes

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    svc_.server().Get("/hello",
                      [](const httplib::Request&, httplib::Response& res) {
                        res.set_content(kBody, "text/plain");
                      });
    svc_.server().Post("/echo",
                       [](const httplib::Request& req, httplib::Response& res) {
                         res.set_content(req.body, "text/plain");
                       });
    svc_.Start();
  }

  // cam-02 has credentials (so its slug is reserved) but never connects.
  void Start(std::optional<std::string> token = kToken,
             std::function<void(server::GatewayOptions&)> more = nullptr) {
    h_.StartGateway([token, more](server::GatewayOptions& o) {
      o.admin_addr = "127.0.0.1:0";
      o.admin_token = token;
      if (more) more(o);
    });
    ASSERT_GT(h_.gateway().admin_port(), 0);
    stub_ = tunnel::v1::AdminService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", h_.gateway().admin_port()),
        grpc::InsecureChannelCredentials()));
  }

  // A context with a deadline and, unless empty, the bearer token.
  static std::unique_ptr<grpc::ClientContext> Ctx(
      const std::string& token = kToken) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(10));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  double Metric(absl::string_view series) {
    return MetricValue(h_.gateway(), series, -1);
  }

  LocalService svc_;
  TunnelHarness h_{{"cam-01", "cam-02"}};
  std::unique_ptr<tunnel::v1::AdminService::Stub> stub_;
};

// GET `path` from the front door over a connection from `from` (any
// 127.0.0.0/8 address is local), with `extra` header lines: the whole
// response as received.
std::string GetFrom(const std::string& from, int port, const std::string& path,
                    const std::string& extra = "") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, from.c_str(), &src.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
    ::close(fd);
    return "bind failed";
  }
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n", extra,
                   "Connection: close\r\n\r\n");
  (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// IP rules: the agent's (--allow-cidr/--deny-cidr), an admin override that
// wins and can be cleared, and X-Forwarded-For believed from a trusted
// proxy only.
TEST_F(AdminTest, IpRulesFromTheAgentTheAdminAndBehindATrustedProxy) {
  Start(kToken, [](server::GatewayOptions& o) {
    absl::StatusOr<common::Cidr> proxy = common::ParseCidr("127.0.0.5");
    ASSERT_TRUE(proxy.ok());
    o.front.trusted_proxies.push_back(*proxy);
  });
  agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
  o.ip_rules.add_allow("127.0.0.0/8");
  o.ip_rules.add_deny("127.0.0.3");
  h_.StartAgent(std::move(o));
  const int port = h_.gateway().http_port();
  const std::string path = TunnelHarness::Path("cam-01", "/hello");
  auto allowed = [&](const std::string& from, const std::string& extra = "") {
    return absl::StartsWith(GetFrom(from, port, path, extra), "HTTP/1.1 200");
  };
  const std::string refused = GetFrom("127.0.0.3", port, path);
  EXPECT_TRUE(absl::StartsWith(refused, "HTTP/1.1 403")) << refused;
  EXPECT_THAT(refused, HasSubstr("X-Tunnel-Error: ip_not_allowed"));
  EXPECT_THAT(refused, HasSubstr("your address (127.0.0.3)"));
  EXPECT_TRUE(allowed("127.0.0.2"));

  // The admin's rules win over the agent's...
  tunnel::v1::SetIpRulesRequest req;
  req.set_slug("cam-01");
  req.add_allow("127.0.0.3/32");
  tunnel::v1::SetIpRulesResponse resp;
  grpc::Status st = stub_->SetIpRules(Ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.source(), "admin");
  EXPECT_THAT(resp.allow(), ::testing::ElementsAre("127.0.0.3/32"));
  EXPECT_TRUE(allowed("127.0.0.3"));
  EXPECT_FALSE(allowed("127.0.0.2"));
  // ...until cleared.
  req.Clear();
  req.set_slug("cam-01");
  req.set_clear(true);
  st = stub_->SetIpRules(Ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.source(), "agent");
  EXPECT_THAT(resp.deny(), ::testing::ElementsAre("127.0.0.3/32"));
  EXPECT_FALSE(allowed("127.0.0.3"));
  EXPECT_TRUE(allowed("127.0.0.2"));

  // X-Forwarded-For counts from the trusted proxy only.
  EXPECT_FALSE(allowed("127.0.0.5", "X-Forwarded-For: 127.0.0.3\r\n"));
  EXPECT_TRUE(
      allowed("127.0.0.5", "X-Forwarded-For: 127.0.0.3, 127.0.0.2\r\n"));
  EXPECT_TRUE(allowed("127.0.0.5", "X-Forwarded-For: 127.0.0.2\r\n"));
  EXPECT_TRUE(allowed("127.0.0.2", "X-Forwarded-For: 127.0.0.3\r\n"));
  EXPECT_FALSE(allowed("127.0.0.5", "X-Forwarded-For: nonsense\r\n"));
  EXPECT_EQ(Metric("tunnel_ip_denials_total{tunnel=\"cam-01\"}"), 5);

  // Bad requests say what is wrong.
  req.Clear();
  req.set_slug("nope");
  st = stub_->SetIpRules(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_slug("cam-01");
  req.add_deny("10.1.2.3/8");
  st = stub_->SetIpRules(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("did you mean 10.0.0.0/8?"));
}

// An agent that sends a range the gateway cannot read is refused, and
// told which.
TEST_F(AdminTest, AnAgentWithABadIpRuleIsRefusedNamingIt) {
  Start();
  agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
  o.ip_rules.add_allow("300.1.2.3/8");
  RunningAgent a(std::move(o));
  absl::Status end = a.WaitForExit(absl::Seconds(20));
  EXPECT_EQ(end.code(), absl::StatusCode::kInvalidArgument) << end;
  EXPECT_THAT(end.message(), HasSubstr("ip_rules.allow: \"300.1.2.3/8\""));
}

TEST_F(AdminTest, ListShowsAConnectedAgentWithItsTunnelsAndCounters) {
  Start();
  h_.StartAgent("cam-01", {svc_.url(), "api=" + svc_.url()});
  auto v = h_.Visitor();
  constexpr int kGets = 5;
  for (int i = 0; i < kGets; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/hello"));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
  }
  const std::string upload(1000, 'u');
  auto post =
      v->Post(TunnelHarness::Path("api-cam-01", "/echo"), upload, "text/plain");
  ASSERT_TRUE(post);
  ASSERT_EQ(post->body, upload);

  // The visitor has every byte before the gateway drops the stream from the
  // session (that happens on the reactor after the last message), so wait
  // for the stream count to settle before reading the counters.
  tunnel::v1::ListAgentsResponse list;
  grpc::Status st;
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  do {
    list.Clear();
    st = stub_->ListAgents(Ctx().get(), tunnel::v1::ListAgentsRequest(), &list);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(list.agents_size(), 1);
    if (list.agents(0).streams_in_flight() == 0) break;
    absl::SleepFor(absl::Milliseconds(5));
  } while (absl::Now() < give_up);
  const tunnel::v1::Agent& a = list.agents(0);
  EXPECT_EQ(a.agent_id(), "cam-01");
  EXPECT_EQ(a.session_id(),
            h_.gateway().registry().FindByAgent("cam-01")->id());
  EXPECT_THAT(a.remote_address(), HasSubstr("127.0.0.1"));
  EXPECT_GT(a.connected_since_unix_ms(), 0);
  EXPECT_LE(a.connected_since_unix_ms(), absl::ToUnixMillis(absl::Now()));
  EXPECT_EQ(a.requests(), kGets + 1u);
  EXPECT_EQ(a.bytes_in(), upload.size());
  EXPECT_EQ(a.bytes_out(), kGets * (sizeof(kBody) - 1) + upload.size());
  EXPECT_EQ(a.streams_in_flight(), 0u);
  ASSERT_EQ(a.tunnels_size(), 2);
  EXPECT_EQ(a.tunnels(0).slug(), "cam-01");
  EXPECT_EQ(a.tunnels(0).access(), "public");
  int port = h_.gateway().http_port();
  EXPECT_EQ(a.tunnels(0).url(),
            absl::StrCat("http://cam-01.localhost:", port, "/"));
  EXPECT_EQ(a.tunnels(0).path_url(),
            absl::StrCat("http://localhost:", port, "/t/cam-01/"));
  EXPECT_EQ(a.tunnels(1).slug(), "api-cam-01");
  EXPECT_EQ(a.tunnels(1).name(), "api");

  // Per tunnel: requests in the last hour, uptime, status.
  tunnel::v1::GetTunnelRequest req;
  req.set_slug("cam-01");
  tunnel::v1::TunnelStatus t;
  st = stub_->GetTunnel(Ctx().get(), req, &t);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(t.status(), "online");
  EXPECT_EQ(t.agent_id(), "cam-01");
  EXPECT_EQ(t.access(), "public");
  EXPECT_EQ(t.session_id(), a.session_id());
  EXPECT_EQ(t.url(), a.tunnels(0).url());
  EXPECT_EQ(t.requests_last_hour(), static_cast<uint64_t>(kGets));
  EXPECT_GE(t.uptime_seconds(), 0);
  req.set_slug("api-cam-01");
  st = stub_->GetTunnel(Ctx().get(), req, &t);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(t.requests_last_hour(), 1u);
}

TEST_F(AdminTest, GetTellsAnOfflineReservedSlugFromAnUnknownOne) {
  Start();
  tunnel::v1::GetTunnelRequest req;
  req.set_slug("cam-02");
  tunnel::v1::TunnelStatus t;
  grpc::Status st = stub_->GetTunnel(Ctx().get(), req, &t);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(t.status(), "offline");
  EXPECT_EQ(t.agent_id(), "cam-02");
  EXPECT_EQ(t.access(), "public");
  EXPECT_EQ(
      t.url(),
      absl::StrCat("http://cam-02.localhost:", h_.gateway().http_port(), "/"));
  EXPECT_EQ(t.uptime_seconds(), 0);
  EXPECT_TRUE(t.session_id().empty());

  req.set_slug("nobody-here");
  st = stub_->GetTunnel(Ctx().get(), req, &t);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("nobody-here"));
}

TEST_F(AdminTest, DisconnectClosesTheSessionAndTheAgentSeesIt) {
  Start();
  RunningAgent* agent = h_.StartAgent("cam-01", {svc_.url()});
  std::shared_ptr<server::Session> old =
      h_.gateway().registry().FindByAgent("cam-01");
  ASSERT_NE(old, nullptr);
  ASSERT_EQ(h_.gateway().registry().session_count(), 1u);

  tunnel::v1::DisconnectAgentRequest req;
  req.set_agent_id("cam-01");
  tunnel::v1::DisconnectAgentResponse resp;
  grpc::Status st = stub_->DisconnectAgent(Ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.session_id(), old->id());

  // The session ends with the administrator's reason and leaves the
  // registry (the agent may already be back with a new one).
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  auto still_there = [&] {
    auto now = h_.gateway().registry().FindByAgent("cam-01");
    return now != nullptr && now->id() == old->id();
  };
  while (still_there() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_FALSE(still_there());
  EXPECT_EQ(old->end_status().error_message(), server::kDisconnectedByAdmin);
  EXPECT_EQ(Metric("tunnel_agent_disconnects_total"), 1);
  // The agent noticed and, as after any lost connection, came back.
  while (agent->agent().sessions_started() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(agent->agent().sessions_started(), 2u);
  ASSERT_TRUE(h_.WaitForSessions(1));

  req.set_agent_id("cam-02");  // has credentials, not connected
  st = stub_->DisconnectAgent(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("not connected"));
}

TEST_F(AdminTest, MissingOrWrongTokenIsUnauthenticatedAndCounted) {
  Start();
  tunnel::v1::ListAgentsResponse list;
  grpc::Status st =
      stub_->ListAgents(Ctx("").get(), tunnel::v1::ListAgentsRequest(), &list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  st = stub_->ListAgents(Ctx("adm_not-the-right-token-000000").get(),
                         tunnel::v1::ListAgentsRequest(), &list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A prefix of the right token is wrong too.
  st = stub_->ListAgents(Ctx(std::string(kToken).substr(0, 10)).get(),
                         tunnel::v1::ListAgentsRequest(), &list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  tunnel::v1::DisconnectAgentRequest dreq;
  dreq.set_agent_id("cam-01");
  tunnel::v1::DisconnectAgentResponse dresp;
  st = stub_->DisconnectAgent(Ctx("").get(), dreq, &dresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(
      Metric("tunnel_admin_auth_failures_total{reason=\"missing_token\"}"), 2);
  EXPECT_EQ(Metric("tunnel_admin_auth_failures_total{reason=\"wrong_token\"}"),
            2);
  st = stub_->ListAgents(Ctx().get(), tunnel::v1::ListAgentsRequest(), &list);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(AdminTest, WithoutATokenEveryCallSaysHowToConfigureIt) {
  Start(std::nullopt);
  tunnel::v1::ListAgentsResponse list;
  grpc::Status st =
      stub_->ListAgents(Ctx().get(), tunnel::v1::ListAgentsRequest(), &list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("--admin-token-file"));
}

}  // namespace
}  // namespace tunnel::testing
