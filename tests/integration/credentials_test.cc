// Credentials at run time, with the real gateway, agents and a local service
// on loopback: rotation with overlap (several live tokens per agent id), a
// reload of the credentials file that leaves healthy sessions alone and
// closes those whose token was revoked, a malformed file on reload, and the
// per-source limit on failed authentications under a flood of bad Connect
// calls.
#include "common/credentials.h"

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/hmac_auth.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"
#include "tunnel/v1/admin.grpc.pb.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;

// The value of one series (`name{labels}` exactly as rendered), or -1.
double Metric(server::Gateway& gw, absl::string_view series) {
  return MetricValue(gw, series, -1);
}

// A fresh file under the test's temp dir.
std::string TempPath(absl::string_view name) {
  static int n = 0;
  std::string path = absl::StrCat(::testing::TempDir(), "/creds_", getpid(),
                                  "_", ++n, "_", name);
  std::remove(path.c_str());
  return path;
}

class CredentialsTest : public ::testing::Test {
 protected:
  CredentialsTest() : harness_({"cam-01", "cam-02"}) {}

  void SetUp() override {
    service_.server().Get("/",
                          [](const httplib::Request&, httplib::Response& res) {
                            res.set_content("hello", "text/plain");
                          });
    service_.server().Get(
        "/slow", [this](const httplib::Request&, httplib::Response& res) {
          slow_entered_.Notify();
          slow_release_.WaitForNotificationWithTimeout(absl::Seconds(30));
          res.set_content("slow but fine", "text/plain");
        });
    service_.Start();
  }

  // The gateway reads its credentials from a file (so it can reload them).
  void StartGatewayWithFile(
      std::function<void(server::GatewayOptions&)> more = nullptr) {
    file_ = harness_.credentials();
    path_ = TempPath("credentials.txtpb");
    ASSERT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
    harness_.StartGateway([this, more](server::GatewayOptions& o) {
      o.credentials.reset();
      o.credentials_path = path_;
      if (more) more(o);
    });
  }

  // Adds a new token for `agent_id` to the file; returns it.
  tunnel::v1::Credential IssueToken(const std::string& agent_id) {
    absl::StatusOr<tunnel::v1::Credential> c =
        common::IssueCredential(agent_id, absl::Now());
    EXPECT_TRUE(c.ok()) << c.status();
    *file_.add_credentials() = *c;
    EXPECT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
    return *c;
  }

  void Revoke(const std::string& token_id) {
    for (auto& c : *file_.mutable_credentials()) {
      if (c.token_id() == token_id) c.set_revoked(true);
    }
    ASSERT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
  }

  std::string TokenOf(const std::string& agent_id) const {
    for (const auto& c : harness_.credentials().credentials()) {
      if (c.agent_id() == agent_id) return c.token_id();
    }
    return "";
  }

  agent::AgentOptions WithToken(const std::string& agent_id,
                                const tunnel::v1::Credential& c) {
    agent::AgentOptions o =
        harness_.AgentOptionsFor(agent_id, {service_.url()});
    o.token_id = c.token_id();
    o.secret = c.secret();
    return o;
  }

  // One visitor GET through the tunnel of `slug`: status and body.
  std::pair<int, std::string> Get(const std::string& slug,
                                  const std::string& rest = "/") {
    auto res = harness_.Visitor()->Get(TunnelHarness::Path(slug, rest));
    if (!res) return {-1, ""};
    return {res->status, res->body};
  }

  TunnelHarness harness_;
  LocalService service_;
  absl::Notification slow_entered_;
  absl::Notification slow_release_;
  std::string path_;
  tunnel::v1::CredentialsFile file_;
};

TEST_F(CredentialsTest,
       ReloadKeepsHealthySessionsAndRevocationClosesOnlyItsOwn) {
  StartGatewayWithFile();
  server::Gateway& gw = harness_.gateway();
  RunningAgent* a = harness_.StartAgent("cam-01", {service_.url()});
  RunningAgent* b = harness_.StartAgent("cam-02", {service_.url()});
  const std::string b_session = gw.registry().FindByAgent("cam-02")->id();

  // A request in flight through cam-01 while the file is reloaded with a
  // second token for cam-01 (rotation with overlap).
  std::pair<int, std::string> slow;
  std::thread visitor([&] { slow = Get("cam-01", "/slow"); });
  ASSERT_TRUE(slow_entered_.WaitForNotificationWithTimeout(absl::Seconds(20)));
  tunnel::v1::Credential second = IssueToken("cam-01");
  absl::StatusOr<server::Gateway::ReloadResult> r = gw.ReloadCredentials();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->live_tokens, 3u);
  EXPECT_EQ(r->sessions_closed, 0u);
  slow_release_.Notify();
  visitor.join();
  EXPECT_EQ(slow, std::make_pair(200, std::string("slow but fine")));
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));
  EXPECT_EQ(a->agent().sessions_started(), 1u) << "the reload cut cam-01";

  // Revoking cam-01's first token closes the session that used it, with the
  // reason; the agent stops (a revoked token is permanent).
  Revoke(TokenOf("cam-01"));
  r = gw.ReloadCredentials();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->live_tokens, 2u);
  EXPECT_EQ(r->sessions_closed, 1u);
  absl::Status end = a->WaitForExit(absl::Seconds(20));
  EXPECT_EQ(end.code(), absl::StatusCode::kUnauthenticated) << end;
  EXPECT_THAT(end.message(), HasSubstr(absl::StrCat("token ", TokenOf("cam-01"),
                                                    " was revoked")));
  // cam-02 never noticed: same session, still serving.
  ASSERT_NE(gw.registry().FindByAgent("cam-02"), nullptr);
  EXPECT_EQ(gw.registry().FindByAgent("cam-02")->id(), b_session);
  EXPECT_EQ(b->agent().sessions_started(), 1u);
  EXPECT_EQ(Get("cam-02"), std::make_pair(200, std::string("hello")));

  // The second token is in force: an agent with it connects and serves.
  harness_.StartAgent(WithToken("cam-01", second));
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));
  EXPECT_EQ(gw.registry().FindByAgent("cam-01")->token_id(), second.token_id());

  EXPECT_EQ(Metric(gw, "tunnel_agent_sessions_revoked_total"), 1);
  EXPECT_EQ(Metric(gw, "tunnel_credentials_reloads_total{result=\"ok\"}"), 2);
  EXPECT_EQ(Metric(gw, "tunnel_credentials_live_tokens"), 2);
}

// A token past its expiry is refused at connect, the agent told when it
// expired and how to extend it; the agent stops (retrying cannot help).
TEST_F(CredentialsTest, AnExpiredTokenIsRefusedAtConnectNamingItsExpiry) {
  StartGatewayWithFile();
  server::Gateway& gw = harness_.gateway();
  const absl::Time now = absl::Now();
  absl::StatusOr<tunnel::v1::Credential> c = common::IssueCredential(
      "cam-01", now - absl::Hours(2), now - absl::Hours(1));
  ASSERT_TRUE(c.ok()) << c.status();
  *file_.add_credentials() = *c;
  ASSERT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
  ASSERT_TRUE(gw.ReloadCredentials().ok());
  RunningAgent a(WithToken("cam-01", *c));
  absl::Status end = a.WaitForExit(absl::Seconds(20));
  EXPECT_EQ(end.code(), absl::StatusCode::kUnauthenticated) << end;
  EXPECT_THAT(
      end.message(),
      HasSubstr(absl::StrCat(c->token_id(), "\" expired at ",
                             common::FormatUtc(common::CredentialExpiry(*c)))));
  EXPECT_THAT(end.message(), HasSubstr("tunnelctl token extend"));
  EXPECT_EQ(
      Metric(gw, "tunnel_agent_auth_failures_total{reason=\"expired_token\"}"),
      1);
}

// A token that expires during a session: from then on new requests are
// refused (502 saying why, the token id not shown to visitors), the request
// in flight finishes whole, then the session is closed and the agent stops
// with the reason. An extended token (and a reload) keeps its session.
TEST_F(CredentialsTest, ATokenExpiringMidSessionLetsItsRequestInFlightFinish) {
  StartGatewayWithFile([](server::GatewayOptions& o) {
    o.service.heartbeat_interval = absl::Milliseconds(100);
  });
  server::Gateway& gw = harness_.gateway();
  const absl::Time now = absl::Now();
  // Three seconds leave room for the setup below on a loaded machine: the
  // request must be in flight before the expiry.
  absl::StatusOr<tunnel::v1::Credential> soon =
      common::IssueCredential("cam-01", now, now + absl::Seconds(3));
  absl::StatusOr<tunnel::v1::Credential> extended =
      common::IssueCredential("cam-02", now, now + absl::Seconds(3));
  ASSERT_TRUE(soon.ok() && extended.ok());
  *file_.add_credentials() = *soon;
  *file_.add_credentials() = *extended;
  ASSERT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
  ASSERT_TRUE(gw.ReloadCredentials().ok());
  RunningAgent* a = harness_.StartAgent(WithToken("cam-01", *soon));
  RunningAgent* b = harness_.StartAgent(WithToken("cam-02", *extended));
  const absl::Time expiry = common::CredentialExpiry(*soon);

  // cam-02's token is extended by an hour before it expires.
  for (auto& c : *file_.mutable_credentials()) {
    if (c.token_id() == extended->token_id()) {
      common::SetCredentialExpiry(c, now + absl::Hours(1));
    }
  }
  ASSERT_TRUE(common::SaveCredentialsFile(path_, file_).ok());
  ASSERT_TRUE(gw.ReloadCredentials().ok());

  std::pair<int, std::string> slow;
  std::thread visitor([&] { slow = Get("cam-01", "/slow"); });
  ASSERT_TRUE(slow_entered_.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_LT(absl::Now(), common::CredentialExpiry(*soon))
      << "the setup took longer than the token's life";
  // Past the expiry the session is retired within a heartbeat.
  std::shared_ptr<server::Session> s = gw.registry().FindByAgent("cam-01");
  ASSERT_NE(s, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (s->retired_at() == absl::InfiniteFuture() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_NE(s->retired_at(), absl::InfiniteFuture());
  EXPECT_GE(s->retired_at(), expiry);
  auto refused = harness_.Visitor()->Get(TunnelHarness::Path("cam-01", "/"));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 502);
  EXPECT_EQ(refused->get_header_value("X-Tunnel-Error"), "agent_offline");
  EXPECT_THAT(refused->body,
              HasSubstr(absl::StrCat("the agent's token expired at ",
                                     common::FormatUtc(expiry))));
  EXPECT_THAT(refused->body, ::testing::Not(HasSubstr(soon->token_id())));
  EXPECT_EQ(a->agent().sessions_started(), 1u);  // still connected

  slow_release_.Notify();
  visitor.join();
  EXPECT_EQ(slow, std::make_pair(200, std::string("slow but fine")));
  absl::Status end = a->WaitForExit(absl::Seconds(20));
  EXPECT_EQ(end.code(), absl::StatusCode::kUnauthenticated) << end;
  EXPECT_THAT(end.message(),
              HasSubstr(absl::StrCat(soon->token_id(), "\" expired at ",
                                     common::FormatUtc(expiry))));
  EXPECT_EQ(Metric(gw, "tunnel_agent_sessions_expired_total"), 1);

  // cam-02 is past its first expiry too, and serves on in its first session.
  EXPECT_GE(absl::Now(), common::CredentialExpiry(*extended));
  EXPECT_EQ(Get("cam-02"), std::make_pair(200, std::string("hello")));
  EXPECT_EQ(b->agent().sessions_started(), 1u);
  EXPECT_EQ(gw.registry().FindByAgent("cam-02")->retired_at(),
            absl::InfiniteFuture());
}

TEST_F(CredentialsTest, NewTokenTakesOverThenRevokingTheOldOneClosesNothing) {
  StartGatewayWithFile();
  server::Gateway& gw = harness_.gateway();
  RunningAgent* old_agent = harness_.StartAgent("cam-01", {service_.url()});
  tunnel::v1::Credential second = IssueToken("cam-01");
  ASSERT_TRUE(gw.ReloadCredentials().ok());

  // The agent restarted with the new token replaces the old session.
  RunningAgent* new_agent = harness_.StartAgent(WithToken("cam-01", second));
  EXPECT_EQ(old_agent->WaitForExit(absl::Seconds(20)).code(),
            absl::StatusCode::kFailedPrecondition);
  Revoke(TokenOf("cam-01"));
  absl::StatusOr<server::Gateway::ReloadResult> r = gw.ReloadCredentials();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sessions_closed, 0u);
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));
  EXPECT_EQ(new_agent->agent().sessions_started(), 1u);
}

TEST_F(CredentialsTest, RemovedTokenAndTokenGivenToAnotherAgentCloseSessions) {
  StartGatewayWithFile();
  server::Gateway& gw = harness_.gateway();
  RunningAgent* a = harness_.StartAgent("cam-01", {service_.url()});
  RunningAgent* b = harness_.StartAgent("cam-02", {service_.url()});
  const std::string a_token = TokenOf("cam-01");
  const std::string b_token = TokenOf("cam-02");
  tunnel::v1::CredentialsFile edited;
  for (const auto& c : file_.credentials()) {
    if (c.token_id() == a_token) continue;  // removed
    tunnel::v1::Credential* kept = edited.add_credentials();
    *kept = c;
    if (c.token_id() == b_token) kept->set_agent_id("cam-03");
  }
  server::Gateway::ReloadResult r = gw.ApplyCredentials(edited);
  EXPECT_EQ(r.sessions_closed, 2u);
  absl::Status a_end = a->WaitForExit(absl::Seconds(20));
  EXPECT_THAT(a_end.message(),
              HasSubstr(absl::StrCat("token ", a_token,
                                     " was removed from the credentials")));
  absl::Status b_end = b->WaitForExit(absl::Seconds(20));
  EXPECT_THAT(b_end.message(),
              HasSubstr(absl::StrCat("token ", b_token,
                                     " now belongs to agent cam-03")));
  EXPECT_TRUE(harness_.WaitForSessions(0));
}

TEST_F(CredentialsTest, MalformedFileOnReloadKeepsTheCredentialsInForce) {
  StartGatewayWithFile();
  server::Gateway& gw = harness_.gateway();
  RunningAgent* a = harness_.StartAgent("cam-01", {service_.url()});
  {
    FILE* f = std::fopen(path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("credentials {\n  token_id: \"tok_x\"\n  agent_id: cam-01\n}\n",
               f);
    std::fclose(f);
  }
  absl::StatusOr<server::Gateway::ReloadResult> r = gw.ReloadCredentials();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat(path_, ":3:")));
  std::remove(path_.c_str());
  r = gw.ReloadCredentials();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Metric(gw, "tunnel_credentials_reloads_total{result=\"error\"}"),
            2);
  EXPECT_EQ(Metric(gw, "tunnel_credentials_reloads_total{result=\"ok\"}"), 0);

  // Nothing changed: the session serves, and the old token still opens new
  // sessions.
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));
  EXPECT_EQ(a->agent().sessions_started(), 1u);
  harness_.StartAgent("cam-02", {service_.url()});
  EXPECT_EQ(Get("cam-02"), std::make_pair(200, std::string("hello")));
}

TEST_F(CredentialsTest, CredentialsGivenInMemoryCannotBeReloadedFromAFile) {
  harness_.StartGateway();
  absl::StatusOr<server::Gateway::ReloadResult> r =
      harness_.gateway().ReloadCredentials();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CredentialsTest, AdminReloadAppliesTheFileAndReportsItsErrors) {
  const std::string token = "admin-token-for-the-reload-test";
  StartGatewayWithFile([token](server::GatewayOptions& o) {
    o.admin_addr = "127.0.0.1:0";
    o.admin_token = token;
  });
  server::Gateway& gw = harness_.gateway();
  RunningAgent* a = harness_.StartAgent("cam-01", {service_.url()});
  auto admin = tunnel::v1::AdminService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", gw.admin_port()),
                          grpc::InsecureChannelCredentials()));
  auto reload = [&](bool with_token,
                    tunnel::v1::ReloadCredentialsResponse* resp) {
    grpc::ClientContext ctx;
    if (with_token) ctx.AddMetadata("authorization", "Bearer " + token);
    return admin->ReloadCredentials(&ctx, {}, resp);
  };

  Revoke(TokenOf("cam-01"));
  tunnel::v1::ReloadCredentialsResponse resp;
  // No bearer token: refused, nothing reloaded, the session stays.
  EXPECT_EQ(reload(false, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));

  grpc::Status st = reload(true, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.live_tokens(), 1u);
  EXPECT_EQ(resp.sessions_closed(), 1u);
  EXPECT_EQ(a->WaitForExit(absl::Seconds(20)).code(),
            absl::StatusCode::kUnauthenticated);

  {
    FILE* f = std::fopen(path_.c_str(), "a");
    ASSERT_NE(f, nullptr);
    std::fputs("credentials {\n  nonsense: 1\n}\n", f);
    std::fclose(f);
  }
  st = reload(true, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr(path_ + ":"));
  EXPECT_THAT(st.error_message(), HasSubstr("nonsense"));
  EXPECT_EQ(Metric(gw, "tunnel_credentials_reloads_total{result=\"ok\"}"), 1);
  EXPECT_EQ(Metric(gw, "tunnel_credentials_reloads_total{result=\"error\"}"),
            1);
}

// One Connect call with `metadata`, as an attacker's client would make it:
// the status and the retry hint in the trailing metadata (0 if none).
std::pair<grpc::Status, int64_t> ConnectOnce(
    tunnel::v1::TunnelService::Stub* stub,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  auto call = stub->Connect(&ctx);
  call->WritesDone();
  tunnel::v1::Envelope ignored;
  while (call->Read(&ignored)) {
  }
  grpc::Status st = call->Finish();
  int64_t retry_ms = 0;
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (auto it = trailers.find(common::kAuthRetryAfterKey);
      it != trailers.end()) {
    (void)absl::SimpleAtoi(
        absl::string_view(it->second.data(), it->second.size()), &retry_ms);
  }
  return {st, retry_ms};
}

TEST_F(CredentialsTest, TokenRevokedBetweenAuthAndHandshakeReplacesNothing) {
  StartGatewayWithFile([](server::GatewayOptions& o) {
    o.service.auth_failures_per_minute = 0;  // the probes below fail on purpose
  });
  server::Gateway& gw = harness_.gateway();
  tunnel::v1::Credential second = IssueToken("cam-01");
  ASSERT_TRUE(gw.ReloadCredentials().ok());
  RunningAgent* serving = harness_.StartAgent(WithToken("cam-01", second));

  // A call signed with the first token passes authentication...
  std::string first_secret;
  for (const auto& c : harness_.credentials().credentials()) {
    if (c.agent_id() == "cam-01") first_secret = c.secret();
  }
  auto signed_md = common::SignAuthMetadata("cam-01", TokenOf("cam-01"),
                                            first_secret, absl::Now());
  ASSERT_TRUE(signed_md.ok());
  auto stub = tunnel::v1::TunnelService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", gw.grpc_port()),
                          grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  for (const auto& [k, v] : *signed_md) ctx.AddMetadata(k, v);
  auto call = stub->Connect(&ctx);
  // ...which is certain once its nonce counts as used (a second call with
  // the same metadata is a replay).
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  bool verified = false;
  while (!verified && absl::Now() < give_up) {
    grpc::ClientContext probe;
    for (const auto& [k, v] : *signed_md) probe.AddMetadata(k, v);
    auto p = stub->Connect(&probe);
    p->WritesDone();
    grpc::Status st = p->Finish();
    verified =
        st.error_message().find("nonce already used") != std::string::npos;
  }
  ASSERT_TRUE(verified);

  // ...then the token is revoked before the agent sends its connect request.
  Revoke(TokenOf("cam-01"));
  absl::StatusOr<server::Gateway::ReloadResult> r = gw.ReloadCredentials();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sessions_closed, 0u);
  tunnel::v1::Envelope hello;
  hello.mutable_connect()->set_protocol_version(tunnel::v1::PROTOCOL_VERSION_1);
  hello.mutable_connect()->set_agent_id("cam-01");
  hello.mutable_connect()->add_tunnels()->set_slug("cam-01");
  ASSERT_TRUE(call->Write(hello));
  tunnel::v1::Envelope answer;
  ASSERT_TRUE(call->Read(&answer));
  ASSERT_TRUE(answer.has_connect_error());
  EXPECT_EQ(answer.connect_error().code(),
            tunnel::v1::ConnectError::CREDENTIALS_REVOKED);
  EXPECT_THAT(answer.connect_error().message(), HasSubstr("was revoked"));
  call->WritesDone();
  while (call->Read(&answer)) {
  }
  EXPECT_EQ(call->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // The session with the live token was never replaced.
  ASSERT_NE(gw.registry().FindByAgent("cam-01"), nullptr);
  EXPECT_EQ(gw.registry().FindByAgent("cam-01")->token_id(), second.token_id());
  EXPECT_EQ(serving->agent().sessions_started(), 1u);
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));
}

TEST_F(CredentialsTest, AgentRefusedForItsAddressWaitsAsTheGatewaySays) {
  StartGatewayWithFile([](server::GatewayOptions& o) {
    o.service.auth_failures_per_minute = 1;
  });
  server::Gateway& gw = harness_.gateway();
  auto stub = tunnel::v1::TunnelService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", gw.grpc_port()),
                          grpc::InsecureChannelCredentials()));
  ASSERT_EQ(ConnectOnce(stub.get(), {}).first.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_EQ(ConnectOnce(stub.get(), {}).first.error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // A good agent from the blocked address is refused, keeps running (the
  // refusal is retryable), and does not come back before the hint (the
  // rest of the minute) although its own backoff is 50-500 ms.
  absl::Mutex mu;
  std::vector<absl::Status> ends;
  absl::Notification first, second;
  agent::AgentOptions o = harness_.AgentOptionsFor("cam-01", {service_.url()});
  o.on_session_ended = [&](const absl::Status& s) {
    absl::MutexLock lock(&mu);
    ends.push_back(s);
    if (ends.size() == 1) first.Notify();
    if (ends.size() == 2) second.Notify();
  };
  RunningAgent agent(o);
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(absl::Seconds(20)));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(ends[0].code(), absl::StatusCode::kUnavailable) << ends[0];
    EXPECT_THAT(ends[0].message(),
                HasSubstr("the gateway is refusing this address for now: too "
                          "many failed authentications from 127.0.0.1"));
  }
  EXPECT_FALSE(second.WaitForNotificationWithTimeout(absl::Seconds(2)))
      << "the agent retried before the gateway's hint";
  EXPECT_EQ(agent.WaitForExit(absl::ZeroDuration()).code(),
            absl::StatusCode::kDeadlineExceeded)
      << "the agent stopped";
  agent.Stop();
}

TEST_F(CredentialsTest, UnauthenticatedFloodIsRefusedAndCountedOthersUnharmed) {
  constexpr int kLimit = 5;
  constexpr int kFlood = 300;
  // Dual-stack listener: 127.0.0.1 and ::1 are two sources.
  StartGatewayWithFile([](server::GatewayOptions& o) {
    o.grpc_addr = "[::]:0";
    o.service.auth_failures_per_minute = kLimit;
  });
  server::Gateway& gw = harness_.gateway();
  RunningAgent* healthy = harness_.StartAgent("cam-01", {service_.url()});

  // Visitors use the healthy agent throughout the flood.
  std::atomic<bool> flooding{true};
  std::atomic<int> served{0}, failed{0};
  std::thread visitors([&] {
    while (flooding) {
      if (Get("cam-01") == std::make_pair(200, std::string("hello"))) {
        ++served;
      } else {
        ++failed;
      }
    }
  });

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", gw.grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = tunnel::v1::TunnelService::NewStub(channel);
  // A real token with a wrong secret: bad_signature, the costly kind.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> bad =
      common::SignAuthMetadata("cam-01", TokenOf("cam-01"),
                               "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                               absl::Now());
  ASSERT_TRUE(bad.ok());
  int unauthenticated = 0, limited = 0, other = 0;
  int64_t max_retry_ms = 0, min_retry_ms = 1 << 30;
  for (int i = 0; i < kFlood; ++i) {
    auto [st, retry_ms] = ConnectOnce(stub.get(), *bad);
    if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      ++unauthenticated;
    } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++limited;
      EXPECT_THAT(st.error_message(),
                  HasSubstr("too many failed authentications from 127.0.0.1"));
      max_retry_ms = std::max(max_retry_ms, retry_ms);
      min_retry_ms = std::min(min_retry_ms, retry_ms);
    } else {
      ++other;
    }
  }
  flooding = false;
  visitors.join();

  EXPECT_EQ(unauthenticated, kLimit);
  EXPECT_EQ(limited, kFlood - kLimit);
  EXPECT_EQ(other, 0);
  EXPECT_GT(min_retry_ms, 0);
  EXPECT_LE(max_retry_ms, 60000);
  EXPECT_EQ(
      Metric(gw, "tunnel_agent_auth_failures_total{reason=\"bad_signature\"}"),
      kLimit);
  EXPECT_EQ(Metric(gw, "tunnel_agent_auth_rate_limited_total"),
            kFlood - kLimit);

  // The session that was already there never noticed.
  EXPECT_GT(served.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(healthy->agent().sessions_started(), 1u);
  EXPECT_EQ(Get("cam-01"), std::make_pair(200, std::string("hello")));

  // Another source authenticates as usual; the flooding one is refused even
  // with the right secret (the check comes before the HMAC).
  agent::AgentOptions from_v6 =
      harness_.AgentOptionsFor("cam-02", {service_.url()});
  from_v6.gateway = absl::StrCat("[::1]:", gw.grpc_port());
  harness_.StartAgent(from_v6);
  EXPECT_EQ(Get("cam-02"), std::make_pair(200, std::string("hello")));
  std::string secret;
  for (const auto& c : harness_.credentials().credentials()) {
    if (c.agent_id() == "cam-02") secret = c.secret();
  }
  auto good = common::SignAuthMetadata("cam-02", TokenOf("cam-02"), secret,
                                       absl::Now());
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(ConnectOnce(stub.get(), *good).first.error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(CredentialsTest, ZeroMeansNoLimitOnFailedAuthentications) {
  StartGatewayWithFile([](server::GatewayOptions& o) {
    o.service.auth_failures_per_minute = 0;
  });
  auto stub = tunnel::v1::TunnelService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", harness_.gateway().grpc_port()),
      grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(ConnectOnce(stub.get(), {}).first.error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(Metric(harness_.gateway(), "tunnel_agent_auth_rate_limited_total"),
            0);
}

}  // namespace
}  // namespace tunnel::testing
