// Visitor access codes and basic auth against a real gateway, real agents
// and a real local service on loopback: the front door's gate (401 form/JSON,
// cookie, ?code=, rate limit; 401 with WWW-Authenticate, the verified-
// credential cache) and the admin API's SetAccessCode through a real gRPC
// client.
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/access_code.h"
#include "common/password_hash.h"
#include "common/random.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/tunnel_harness.h"
#include "tunnel/v1/admin.grpc.pb.h"

namespace tunnel::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "adm_test-token-0123456789abcdef";
constexpr char kCode[] = "open-sesame-42";
constexpr char kForm[] = "application/x-www-form-urlencoded";

class AccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Shows what reached the service: target (with query) and Cookie.
    svc_.server().Get(".*", [](const httplib::Request& req,
                               httplib::Response& res) {
      res.set_content(
          absl::StrCat(
              "target=", req.target,
              "\ncookie=", req.get_header_value("Cookie"),
              "\nheader=", req.get_header_value("X-Tunnel-Access-Code"),
              "\nauthorization=", req.get_header_value("Authorization"), "\n"),
          "text/plain");
    });
    svc_.Start();
  }

  void Start(int attempts_per_minute = 5,
             absl::Duration basic_auth_cache_ttl = absl::Minutes(5)) {
    h_.StartGateway([=](server::GatewayOptions& o) {
      o.admin_addr = "127.0.0.1:0";
      o.admin_token = kToken;
      o.front.access_code_attempts_per_minute = attempts_per_minute;
      o.front.basic_auth_cache_ttl = basic_auth_cache_ttl;
    });
    stub_ = tunnel::v1::AdminService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", h_.gateway().admin_port()),
        grpc::InsecureChannelCredentials()));
  }

  // cam-01 with tunnels cam-01 and api-cam-01, both behind kCode.
  void StartGatedAgent() {
    agent::AgentOptions o =
        h_.AgentOptionsFor("cam-01", {svc_.url(), "api=" + svc_.url()});
    absl::StatusOr<tunnel::v1::AccessCodeHash> hash =
        common::HashAccessCode(kCode);
    ASSERT_TRUE(hash.ok()) << hash.status();
    o.access_code = *hash;
    h_.StartAgent(std::move(o));
  }

  // cam-01 behind basic auth: alice (PBKDF2) and bob (bcrypt), with the
  // cheapest costs the gateway accepts, so the test is quick.
  RunningAgent* StartBasicAuthAgent(const std::vector<std::string>& users = {
                                        "alice", "bob"}) {
    agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
    for (const std::string& user : users) {
      absl::StatusOr<std::string> hash = common::HashPassword(
          absl::StrCat(user, "-pw"),
          user == "bob" ? common::PasswordScheme::kBcrypt
                        : common::PasswordScheme::kPbkdf2Sha256,
          user == "bob" ? common::kMinBcryptCost : common::kMinPbkdf2Rounds);
      EXPECT_TRUE(hash.ok()) << hash.status();
      tunnel::v1::BasicAuthUser& u = o.basic_auth.emplace_back();
      u.set_user(user);
      u.set_hash(*hash);
    }
    return h_.StartAgent(std::move(o));
  }

  static httplib::Headers Basic(absl::string_view user,
                                absl::string_view password) {
    std::string b64 =
        common::Base64UrlEncode(absl::StrCat(user, ":", password));
    for (char& c : b64) {
      if (c == '-') c = '+';
      if (c == '_') c = '/';
    }
    while (b64.size() % 4 != 0) b64 += '=';
    return {{"Authorization", absl::StrCat("Basic ", b64)}};
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(10));
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    return ctx;
  }

  double Metric(absl::string_view series) {
    return MetricValue(h_.gateway(), series, 0);
  }

  // The access cookie ("tunnel_access=...") from a 303, or "".
  static std::string CookieFrom(const httplib::Result& r) {
    std::string set = r->get_header_value("Set-Cookie");
    return set.substr(0, set.find(';'));
  }

  // Enters kCode through the form; returns the cookie it earned.
  std::string Login(const std::string& slug) {
    auto v = h_.Visitor();
    auto r = v->Post(TunnelHarness::Path(slug, "/page"),
                     absl::StrCat("tunnel_access_code=", kCode), kForm);
    EXPECT_TRUE(r);
    if (!r) return "";
    EXPECT_EQ(r->status, 303);
    return CookieFrom(r);
  }

  std::string Access(const std::string& slug) {
    tunnel::v1::GetTunnelRequest req;
    req.set_slug(slug);
    tunnel::v1::TunnelStatus t;
    grpc::Status st = stub_->GetTunnel(Ctx().get(), req, &t);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return t.access();
  }

  LocalService svc_;
  TunnelHarness h_{{"cam-01", "cam-02"}};
  std::unique_ptr<tunnel::v1::AdminService::Stub> stub_;
};

TEST_F(AccessTest, WithoutCookieBrowsersGetAFormAndApiClientsJson) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  auto html = v->Get(TunnelHarness::Path("cam-01", "/page"),
                     {{"Accept", "text/html,application/xhtml+xml"}});
  ASSERT_TRUE(html);
  EXPECT_EQ(html->status, 401);
  EXPECT_EQ(html->get_header_value("X-Tunnel-Error"), "access_code_required");
  EXPECT_THAT(html->get_header_value("Content-Type"), HasSubstr("text/html"));
  EXPECT_THAT(html->body, HasSubstr("<form method=\"post\""));
  EXPECT_THAT(html->body, HasSubstr("name=\"tunnel_access_code\""));
  EXPECT_THAT(html->body, HasSubstr("action=\"/t/cam-01/page\""));

  auto json = v->Get(TunnelHarness::Path("cam-01", "/page"));
  ASSERT_TRUE(json);
  EXPECT_EQ(json->status, 401);
  EXPECT_EQ(json->get_header_value("X-Tunnel-Error"), "access_code_required");
  EXPECT_THAT(json->body, HasSubstr("\"error\":\"access_code_required\""));
  EXPECT_EQ(Metric("tunnel_access_denials_total{reason=\"code_required\"}"), 2);
  EXPECT_EQ(Access("cam-01"), "code");
}

TEST_F(AccessTest, WrongCodeIsRefusedAndCounted) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  auto r = v->Post(TunnelHarness::Path("cam-01", "/page"),
                   "tunnel_access_code=nope", kForm);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "access_code_invalid");
  EXPECT_FALSE(r->has_header("Set-Cookie"));
  EXPECT_EQ(Metric("tunnel_access_denials_total{reason=\"wrong_code\"}"), 1);
}

TEST_F(AccessTest, CorrectCodeSetsAScopedCookieThatThenPasses) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  auto r = v->Post(TunnelHarness::Path("cam-01", "/page?x=1"),
                   absl::StrCat("tunnel_access_code=", kCode), kForm);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 303);
  EXPECT_EQ(r->get_header_value("Location"), "/t/cam-01/page?x=1");
  std::string set = r->get_header_value("Set-Cookie");
  EXPECT_THAT(set, HasSubstr("tunnel_access="));
  EXPECT_THAT(set, HasSubstr("; HttpOnly"));
  EXPECT_THAT(set, HasSubstr("; SameSite=Lax"));
  EXPECT_THAT(set, HasSubstr("; Path=/t/cam-01/"));
  EXPECT_THAT(set, HasSubstr("; Max-Age=86400"));
  EXPECT_THAT(set, HasSubstr("; Expires="));
  EXPECT_THAT(set, Not(HasSubstr(kCode)));

  auto ok = v->Get(TunnelHarness::Path("cam-01", "/page?x=1"),
                   {{"Cookie", CookieFrom(r)}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_THAT(ok->body, HasSubstr("target=/page?x=1\n"));
  EXPECT_EQ(Metric("tunnel_access_grants_total{via=\"form\"}"), 1);
  EXPECT_EQ(Metric("tunnel_access_grants_total{via=\"cookie\"}"), 1);
}

TEST_F(AccessTest, QueryCodeAndAccessCookieNeverReachTheService) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  auto r = v->Get(TunnelHarness::Path(
      "cam-01", absl::StrCat("/p?a=1&code=", kCode, "&b=2")));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 303);
  EXPECT_EQ(r->get_header_value("Location"), "/t/cam-01/p?a=1&b=2");
  auto ok = v->Get("/t/cam-01/p?a=1&b=2",
                   {{"Cookie", absl::StrCat("theme=dark; ", CookieFrom(r),
                                            "; session=abc")}});
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 200);
  EXPECT_THAT(ok->body, HasSubstr("target=/p?a=1&b=2\n"));
  EXPECT_THAT(ok->body, HasSubstr("cookie=theme=dark; session=abc\n"));
  EXPECT_THAT(ok->body, Not(HasSubstr("tunnel_access")));
  EXPECT_THAT(ok->body, Not(HasSubstr(kCode)));

  // With a valid cookie a stray ?code= is still stripped.
  auto again = v->Get("/t/cam-01/q?code=whatever", {{"Cookie", CookieFrom(r)}});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_THAT(again->body, HasSubstr("target=/q\n"));
}

TEST_F(AccessTest, SubdomainRoutingGetsAHostOnlyCookieForTheWholeSite) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  const httplib::Headers host = {
      {"Host", absl::StrCat("cam-01.localhost:", h_.gateway().http_port())}};
  auto r = v->Get(absl::StrCat("/a/b?code=", kCode), host);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 303);
  EXPECT_EQ(r->get_header_value("Location"), "/a/b");
  std::string set = r->get_header_value("Set-Cookie");
  EXPECT_THAT(set, HasSubstr("; Path=/;"));
  EXPECT_THAT(set, Not(HasSubstr("Domain")));
  httplib::Headers with_cookie = host;
  with_cookie.emplace("Cookie", CookieFrom(r));
  auto ok = v->Get("/other", with_cookie);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_THAT(ok->body, HasSubstr("target=/other\n"));
}

TEST_F(AccessTest, HeaderCodeLetsApiClientsThroughWithoutForwardingIt) {
  Start();
  StartGatedAgent();
  auto v = h_.Visitor();
  auto r = v->Get(TunnelHarness::Path("cam-01", "/api"),
                  {{"X-Tunnel-Access-Code", kCode}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->body, HasSubstr("header=\n"));
  auto wrong = v->Get(TunnelHarness::Path("cam-01", "/api"),
                      {{"X-Tunnel-Access-Code", "nope"}});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
}

TEST_F(AccessTest, CookieOpensOnlyItsTunnelAndTamperingIsRefused) {
  Start();
  StartGatedAgent();
  std::string cookie = Login("cam-01");
  ASSERT_THAT(cookie, HasSubstr("tunnel_access="));
  auto v = h_.Visitor();
  auto other =
      v->Get(TunnelHarness::Path("api-cam-01", "/page"), {{"Cookie", cookie}});
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 401);

  std::string tampered = cookie;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  auto bad =
      v->Get(TunnelHarness::Path("cam-01", "/page"), {{"Cookie", tampered}});
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 401);
  // A later expiry with the old signature.
  std::string value = cookie.substr(cookie.find('=') + 1);
  std::string later = absl::StrCat("tunnel_access=9", value);
  auto extended =
      v->Get(TunnelHarness::Path("cam-01", "/page"), {{"Cookie", later}});
  ASSERT_TRUE(extended);
  EXPECT_EQ(extended->status, 401);
  EXPECT_EQ(Metric("tunnel_access_denials_total{reason=\"bad_cookie\"}"), 3);

  auto good =
      v->Get(TunnelHarness::Path("cam-01", "/page"), {{"Cookie", cookie}});
  ASSERT_TRUE(good);
  EXPECT_EQ(good->status, 200);
}

TEST_F(AccessTest, WrongCodesAreRateLimitedPerClientAndTunnel) {
  constexpr int kLimit = 3;
  Start(kLimit);
  StartGatedAgent();
  auto v = h_.Visitor();
  for (int i = 0; i < kLimit; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/?code=wrong"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << i;
  }
  // Over the limit even the right code waits.
  auto limited =
      v->Get(TunnelHarness::Path("cam-01", absl::StrCat("/?code=", kCode)));
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(limited->get_header_value("X-Tunnel-Error"),
            "access_code_rate_limited");
  int retry = std::stoi(limited->get_header_value("Retry-After"));
  EXPECT_GE(retry, 1);
  EXPECT_LE(retry, 60);
  EXPECT_EQ(Metric("tunnel_access_denials_total{reason=\"rate_limited\"}"), 1);
  // The other tunnel has its own budget.
  auto other =
      v->Get(TunnelHarness::Path("api-cam-01", absl::StrCat("/?code=", kCode)));
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 303);
}

TEST_F(AccessTest, AdminSetCodeGatesAPublicTunnelAndPublicOpensIt) {
  Start();
  h_.StartAgent("cam-01", {svc_.url()});
  auto v = h_.Visitor();
  auto open = v->Get(TunnelHarness::Path("cam-01", "/x"));
  ASSERT_TRUE(open);
  EXPECT_EQ(open->status, 200);
  EXPECT_EQ(Access("cam-01"), "public");

  constexpr char kAdminCode[] = "admin-chosen-code-7";
  ::testing::internal::CaptureStderr();
  tunnel::v1::SetAccessCodeRequest req;
  req.set_slug("cam-01");
  req.set_code(kAdminCode);
  tunnel::v1::SetAccessCodeResponse resp;
  grpc::Status st = stub_->SetAccessCode(Ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.access(), "code");
  EXPECT_EQ(Access("cam-01"), "code");

  auto gated = v->Get(TunnelHarness::Path("cam-01", "/x"));
  ASSERT_TRUE(gated);
  EXPECT_EQ(gated->status, 401);
  auto in = v->Get(
      TunnelHarness::Path("cam-01", absl::StrCat("/x?code=", kAdminCode)));
  ASSERT_TRUE(in);
  EXPECT_EQ(in->status, 303);

  // The clear code is nowhere the gateway shows or logs.
  tunnel::v1::ListAgentsResponse list;
  ASSERT_TRUE(
      stub_->ListAgents(Ctx().get(), tunnel::v1::ListAgentsRequest(), &list)
          .ok());
  ASSERT_EQ(list.agents_size(), 1);
  EXPECT_EQ(list.agents(0).tunnels(0).access(), "code");
  EXPECT_THAT(list.DebugString(), Not(HasSubstr(kAdminCode)));
  tunnel::v1::GetTunnelRequest get;
  get.set_slug("cam-01");
  tunnel::v1::TunnelStatus t;
  ASSERT_TRUE(stub_->GetTunnel(Ctx().get(), get, &t).ok());
  EXPECT_THAT(t.DebugString(), Not(HasSubstr(kAdminCode)));
  EXPECT_THAT(h_.gateway().metrics().Render(), Not(HasSubstr(kAdminCode)));

  tunnel::v1::SetAccessCodeRequest pub;
  pub.set_slug("cam-01");
  pub.set_public_(true);
  st = stub_->SetAccessCode(Ctx().get(), pub, &resp);
  std::string logs = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.access(), "public");
  EXPECT_THAT(logs, HasSubstr("admin_set_access"));
  EXPECT_THAT(logs, Not(HasSubstr(kAdminCode)));
  auto reopened = v->Get(TunnelHarness::Path("cam-01", "/x?code=kept"));
  ASSERT_TRUE(reopened);
  EXPECT_EQ(reopened->status, 200);
  // A public tunnel's own `code` parameter is the service's business.
  EXPECT_THAT(reopened->body, HasSubstr("target=/x?code=kept\n"));
}

TEST_F(AccessTest, AdminPublicOverridesTheAgentsCodeAndBadCallsAreRefused) {
  Start();
  StartGatedAgent();
  tunnel::v1::SetAccessCodeRequest pub;
  pub.set_slug("cam-01");
  pub.set_public_(true);
  tunnel::v1::SetAccessCodeResponse resp;
  ASSERT_TRUE(stub_->SetAccessCode(Ctx().get(), pub, &resp).ok());
  EXPECT_EQ(Access("cam-01"), "public");
  EXPECT_EQ(Access("api-cam-01"), "code");
  auto v = h_.Visitor();
  auto r = v->Get(TunnelHarness::Path("cam-01", "/x"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);

  tunnel::v1::SetAccessCodeRequest unknown;
  unknown.set_slug("nobody-here");
  unknown.set_code("x1234");
  EXPECT_EQ(stub_->SetAccessCode(Ctx().get(), unknown, &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
  tunnel::v1::SetAccessCodeRequest both;
  both.set_slug("cam-01");
  both.set_code("x1234");
  both.set_public_(true);
  EXPECT_EQ(stub_->SetAccessCode(Ctx().get(), both, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext no_token;
  EXPECT_EQ(stub_->SetAccessCode(&no_token, pub, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AccessTest, AnAbsurdHashFromAnAgentIsAConnectError) {
  Start();
  agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
  absl::StatusOr<tunnel::v1::AccessCodeHash> hash =
      common::HashAccessCode(kCode, common::kMinAccessCodeIterations);
  ASSERT_TRUE(hash.ok());
  hash->set_iterations(4000000000u);
  o.access_code = *hash;
  RunningAgent agent(std::move(o));
  absl::Status s = agent.WaitForExit(absl::Seconds(30));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("iterations"));
  EXPECT_EQ(h_.gateway().registry().session_count(), 0u);
}

TEST_F(AccessTest, BasicAuthAdmitsItsUsersOnlyAndStripsTheHeader) {
  Start();
  StartBasicAuthAgent();
  auto v = h_.Visitor();
  const std::string path = TunnelHarness::Path("cam-01", "/page");

  auto missing = v->Get(path);
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 401);
  EXPECT_EQ(missing->get_header_value("X-Tunnel-Error"), "basic_auth_required");
  EXPECT_EQ(missing->get_header_value("WWW-Authenticate"),
            "Basic realm=\"cam-01\", charset=\"UTF-8\"");
  // A token meant for the service is not ours to pass on.
  auto bearer = v->Get(path, {{"Authorization", "Bearer abc"}});
  ASSERT_TRUE(bearer);
  EXPECT_EQ(bearer->status, 401);
  EXPECT_EQ(bearer->get_header_value("X-Tunnel-Error"), "basic_auth_required");

  for (const auto& [user, password] :
       std::vector<std::pair<std::string, std::string>>{
           {"alice", "bob-pw"}, {"carol", "alice-pw"}, {"alice", ""}}) {
    auto wrong = v->Get(path, Basic(user, password));
    ASSERT_TRUE(wrong);
    EXPECT_EQ(wrong->status, 401) << user;
    EXPECT_EQ(wrong->get_header_value("X-Tunnel-Error"), "basic_auth_invalid");
    EXPECT_THAT(wrong->get_header_value("WWW-Authenticate"),
                HasSubstr("Basic realm"));
    EXPECT_THAT(wrong->body, Not(HasSubstr("target=")));
  }
  auto garbage = v->Get(path, {{"Authorization", "Basic !!!"}});
  ASSERT_TRUE(garbage);
  EXPECT_EQ(garbage->get_header_value("X-Tunnel-Error"), "basic_auth_invalid");

  for (const char* user : {"alice", "bob"}) {
    auto ok = v->Get(path, Basic(user, absl::StrCat(user, "-pw")));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << user << ": " << ok->body;
    EXPECT_THAT(ok->body, HasSubstr("target=/page\n"));
    EXPECT_THAT(ok->body, HasSubstr("authorization=\n"));
  }
  // The scheme name is case-insensitive (RFC 7617).
  httplib::Headers lower = Basic("bob", "bob-pw");
  lower.begin()->second.replace(0, 5, "basic");
  auto ok = v->Get(path, lower);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);

  EXPECT_EQ(Metric("tunnel_access_grants_total{via=\"basic_auth\"}"), 3);
  EXPECT_EQ(
      Metric("tunnel_access_denials_total{reason=\"basic_auth_required\"}"), 2);
  EXPECT_EQ(Metric("tunnel_access_denials_total{reason=\"wrong_password\"}"),
            4);
  EXPECT_EQ(Access("cam-01"), "basic_auth");
}

// An API client sends its credentials with every request: the slow hash
// runs once, until the cache entry expires; with the cache off, every time.
TEST_F(AccessTest, VerifiedBasicAuthIsHashedOncePerCacheTtl) {
  Start();
  StartBasicAuthAgent();
  auto v = h_.Visitor();
  for (int i = 0; i < 5; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/"), Basic("bob", "bob-pw"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(Metric("tunnel_basic_auth_hashes_total"), 1);
  // A wrong password is never cached as right.
  for (int i = 0; i < 2; ++i) {
    auto r = v->Get(TunnelHarness::Path("cam-01", "/"), Basic("bob", "bob-px"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401);
  }
  EXPECT_EQ(Metric("tunnel_basic_auth_hashes_total"), 3);
}

TEST_F(AccessTest, WithoutTheCacheEveryBasicAuthRequestIsHashed) {
  Start(5, absl::ZeroDuration());
  StartBasicAuthAgent();
  auto v = h_.Visitor();
  for (int i = 0; i < 3; ++i) {
    auto r =
        v->Get(TunnelHarness::Path("cam-01", "/"), Basic("alice", "alice-pw"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(Metric("tunnel_basic_auth_hashes_total"), 3);
}

// A user the agent no longer lists is out at once, cache or not.
TEST_F(AccessTest, AReconnectWithOtherUsersDropsTheOldOnes) {
  Start();
  RunningAgent* first = StartBasicAuthAgent({"alice", "bob"});
  auto v = h_.Visitor();
  auto r =
      v->Get(TunnelHarness::Path("cam-01", "/"), Basic("alice", "alice-pw"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  first->Stop();
  StartBasicAuthAgent({"bob"});
  r = v->Get(TunnelHarness::Path("cam-01", "/"), Basic("alice", "alice-pw"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("X-Tunnel-Error"), "basic_auth_invalid");
  r = v->Get(TunnelHarness::Path("cam-01", "/"), Basic("bob", "bob-pw"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(AccessTest, WrongPasswordsAreRateLimitedPerClientAndTunnel) {
  Start(/*attempts_per_minute=*/2);
  StartBasicAuthAgent();
  auto v = h_.Visitor();
  const std::string path = TunnelHarness::Path("cam-01", "/");
  for (int i = 0; i < 2; ++i) {
    auto r = v->Get(path, Basic("alice", "guess"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401);
  }
  // Even the right password waits now: guessing must not go on.
  auto limited = v->Get(path, Basic("alice", "alice-pw"));
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(limited->get_header_value("X-Tunnel-Error"),
            "basic_auth_rate_limited");
  int64_t retry = 0;
  EXPECT_TRUE(
      absl::SimpleAtoi(limited->get_header_value("Retry-After"), &retry));
  EXPECT_GE(retry, 1);
  EXPECT_LE(retry, 60);
  EXPECT_EQ(Metric("tunnel_basic_auth_hashes_total"), 2);
}

// Both gates: the password first, then the code; neither reaches the
// service.
TEST_F(AccessTest, BasicAuthAndAnAccessCodeAreBothRequired) {
  Start();
  agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
  absl::StatusOr<std::string> hash =
      common::HashPassword("alice-pw", common::PasswordScheme::kPbkdf2Sha256,
                           common::kMinPbkdf2Rounds);
  ASSERT_TRUE(hash.ok());
  tunnel::v1::BasicAuthUser& u = o.basic_auth.emplace_back();
  u.set_user("alice");
  u.set_hash(*hash);
  absl::StatusOr<tunnel::v1::AccessCodeHash> code =
      common::HashAccessCode(kCode, common::kMinAccessCodeIterations);
  ASSERT_TRUE(code.ok());
  o.access_code = *code;
  h_.StartAgent(std::move(o));
  auto v = h_.Visitor();
  const std::string path = TunnelHarness::Path("cam-01", "/x");
  auto code_only = v->Get(path, {{"X-Tunnel-Access-Code", kCode}});
  ASSERT_TRUE(code_only);
  EXPECT_EQ(code_only->status, 401);
  EXPECT_EQ(code_only->get_header_value("X-Tunnel-Error"),
            "basic_auth_required");
  auto auth_only = v->Get(path, Basic("alice", "alice-pw"));
  ASSERT_TRUE(auth_only);
  EXPECT_EQ(auth_only->status, 401);
  EXPECT_EQ(auth_only->get_header_value("X-Tunnel-Error"),
            "access_code_required");
  httplib::Headers both = Basic("alice", "alice-pw");
  both.emplace("X-Tunnel-Access-Code", kCode);
  auto ok = v->Get(path, both);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_THAT(ok->body, HasSubstr("authorization=\n"));
  EXPECT_THAT(ok->body, HasSubstr("header=\n"));
  EXPECT_EQ(Access("cam-01"), "basic_auth+code");
}

TEST_F(AccessTest, ABadBasicAuthHashFromAnAgentIsAConnectError) {
  Start();
  agent::AgentOptions o = h_.AgentOptionsFor("cam-01", {svc_.url()});
  tunnel::v1::BasicAuthUser& u = o.basic_auth.emplace_back();
  u.set_user("alice");
  u.set_hash("$2y$31$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.Be");
  RunningAgent agent(std::move(o));
  absl::Status s = agent.WaitForExit(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("basic_auth: user \"alice\": bcrypt cost must be "
                        "between 4 and 14, not 31"));
  EXPECT_EQ(h_.gateway().registry().session_count(), 0u);
}

}  // namespace
}  // namespace tunnel::testing
