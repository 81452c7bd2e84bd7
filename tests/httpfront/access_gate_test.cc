#include "httpfront/access_gate.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/access_code.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::httpfront {
namespace {

using ::testing::ElementsAre;

tunnel::v1::AccessCodeHash Hash(const std::string& code) {
  return *common::HashAccessCode(code, common::kMinAccessCodeIterations);
}

TEST(AccessCookieSignerTest, BoundToSlugCodeExpiryAndKey) {
  AccessCookieSigner signer;
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  tunnel::v1::AccessCodeHash code = Hash("a-code");
  std::string c = signer.Issue("cam", code, now + absl::Hours(1));
  EXPECT_TRUE(signer.Valid(c, "cam", code, now));
  EXPECT_FALSE(signer.Valid(c, "cam2", code, now));
  EXPECT_FALSE(signer.Valid(c, "cam", Hash("a-code"), now));  // new salt
  EXPECT_FALSE(signer.Valid(c, "cam", code, now + absl::Hours(1)));
  EXPECT_FALSE(signer.Valid(c + "x", "cam", code, now));
  EXPECT_FALSE(signer.Valid("", "cam", code, now));
  EXPECT_FALSE(signer.Valid("123", "cam", code, now));
  AccessCookieSigner restarted;
  EXPECT_FALSE(restarted.Valid(c, "cam", code, now));
}

TEST(AttemptLimiterTest, BlocksAfterTheLimitUntilTheWindowEnds) {
  AttemptLimiter limiter(2);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(limiter.Blocked("k", t0), absl::ZeroDuration());
  limiter.Failed("k", t0);
  EXPECT_EQ(limiter.Blocked("k", t0), absl::ZeroDuration());
  limiter.Failed("k", t0);
  EXPECT_EQ(limiter.Blocked("k", t0 + absl::Seconds(10)), absl::Seconds(50));
  EXPECT_EQ(limiter.Blocked("other", t0), absl::ZeroDuration());
  EXPECT_EQ(limiter.Blocked("k", t0 + absl::Minutes(1)), absl::ZeroDuration());
}

TEST(AttemptLimiterTest, MemoryIsCapped) {
  AttemptLimiter limiter(1, /*capacity=*/100);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 1000; ++i) {
    limiter.Failed("ip" + std::to_string(i), t0 + absl::Milliseconds(i));
  }
  EXPECT_LE(limiter.size(), 100u);
  // The newest key is still counted.
  EXPECT_GT(limiter.Blocked("ip999", t0 + absl::Seconds(2)),
            absl::ZeroDuration());
}

TEST(AccessGateParsingTest, QueryParamIsTakenOut) {
  std::string t = "/p?a=1&code=s%20x&b=2";
  std::string v;
  EXPECT_TRUE(TakeQueryParam(&t, "code", &v));
  EXPECT_EQ(v, "s x");
  EXPECT_EQ(t, "/p?a=1&b=2");
  t = "/p?code=abc";
  EXPECT_TRUE(TakeQueryParam(&t, "code", &v));
  EXPECT_EQ(t, "/p");
  t = "/p?codex=1";
  EXPECT_FALSE(TakeQueryParam(&t, "code", &v));
  EXPECT_EQ(t, "/p?codex=1");
}

TEST(AccessGateParsingTest, FormFieldAndCookie) {
  std::string v;
  EXPECT_TRUE(
      FormField("x=1&tunnel_access_code=a+b%21", "tunnel_access_code", &v));
  EXPECT_EQ(v, "a b!");
  EXPECT_FALSE(FormField("x=1", "tunnel_access_code", &v));
  std::vector<std::string> ours;
  EXPECT_EQ(TakeCookie("a=1; tunnel_access=xyz;b=2", "tunnel_access", &ours),
            "a=1; b=2");
  EXPECT_THAT(ours, ElementsAre("xyz"));
}

TEST(BasicAuthParsingTest, UserAndPasswordFromTheHeader) {
  std::string user;
  std::string password;
  // "alice:open sesame:2" in standard base64 (with '+' and '/' from the
  // bytes below); the password may hold ':'.
  ASSERT_TRUE(ParseBasicAuthorization(
      "Basic YWxpY2U6b3BlbiBzZXNhbWU6Mg==", &user, &password));
  EXPECT_EQ(user, "alice");
  EXPECT_EQ(password, "open sesame:2");
  ASSERT_TRUE(ParseBasicAuthorization("bAsIc   Pz8/Oj4+Pg", &user, &password));
  EXPECT_EQ(user, "???");
  EXPECT_EQ(password, ">>>");
  ASSERT_TRUE(ParseBasicAuthorization("Basic Ym9iOg==", &user, &password));
  EXPECT_EQ(user, "bob");
  EXPECT_EQ(password, "");
  for (const char* bad :
       {"", "Basic", "Basic ", "Bearer YWxpY2U6eA==", "Basic YWxpY2U=",
        "Basic Pz8_Oj4-Pg", "Basic !!!", "BasicYWxpY2U6eA=="}) {
    EXPECT_FALSE(ParseBasicAuthorization(bad, &user, &password)) << bad;
  }
}

TEST(VerifiedCredentialsTest, EntriesAreBoundAndExpire) {
  VerifiedCredentials c(absl::Minutes(5), 100);
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  c.Add("cam", 7, "Basic abc", now);
  EXPECT_TRUE(c.Contains("cam", 7, "Basic abc", now + absl::Minutes(4)));
  EXPECT_FALSE(c.Contains("cam2", 7, "Basic abc", now));
  EXPECT_FALSE(c.Contains("cam", 8, "Basic abc", now));  // other user set
  EXPECT_FALSE(c.Contains("cam", 7, "Basic abd", now));
  EXPECT_FALSE(c.Contains("cam", 7, "Basic abc", now + absl::Minutes(5)));
  EXPECT_EQ(c.size(), 0u);  // the expired entry went when seen
}

TEST(VerifiedCredentialsTest, MemoryIsCappedAndTheNearestExpiryGoesFirst) {
  VerifiedCredentials c(absl::Minutes(5), 3);
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  for (int i = 0; i < 3; ++i) {
    c.Add("cam", 1, absl::StrCat("Basic ", i), now + absl::Seconds(i));
  }
  c.Add("cam", 1, "Basic new", now + absl::Seconds(10));
  EXPECT_EQ(c.size(), 3u);
  EXPECT_FALSE(c.Contains("cam", 1, "Basic 0", now + absl::Seconds(10)));
  EXPECT_TRUE(c.Contains("cam", 1, "Basic 1", now + absl::Seconds(10)));
  EXPECT_TRUE(c.Contains("cam", 1, "Basic new", now + absl::Seconds(10)));
  // Expired entries make room before a live one is dropped.
  c.Add("cam", 1, "Basic later", now + absl::Minutes(5) + absl::Seconds(2));
  EXPECT_EQ(c.size(), 2u);
  // Off: nothing is kept.
  VerifiedCredentials off(absl::ZeroDuration(), 100);
  off.Add("cam", 1, "Basic x", now);
  EXPECT_FALSE(off.Contains("cam", 1, "Basic x", now));
  EXPECT_EQ(off.size(), 0u);
}

}  // namespace
}  // namespace tunnel::httpfront
