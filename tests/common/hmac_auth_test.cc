#include "common/hmac_auth.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/random.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Hex(absl::string_view bytes) { return HexEncode(bytes); }

// --- RFC 4231 known-answer tests ------------------------------------------

TEST(HmacSha256Test, Rfc4231Case1) {
  EXPECT_EQ(Hex(HmacSha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

TEST(HmacSha256Test, Rfc4231Case2) {
  EXPECT_EQ(Hex(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(HmacSha256Test, Rfc4231Case3) {
  EXPECT_EQ(Hex(HmacSha256(std::string(20, '\xaa'), std::string(50, '\xdd'))),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
}

TEST(HmacSha256Test, Rfc4231Case4) {
  std::string key;
  for (int i = 1; i <= 25; ++i) key.push_back(static_cast<char>(i));
  EXPECT_EQ(Hex(HmacSha256(key, std::string(50, '\xcd'))),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
}

TEST(HmacSha256Test, Rfc4231Case5TruncatedTo128Bits) {
  std::string mac = HmacSha256(std::string(20, '\x0c'), "Test With Truncation");
  ASSERT_EQ(mac.size(), 32u);
  EXPECT_EQ(Hex(mac.substr(0, 16)), "a3b6167473100ee06e0c796c2955552b");
}

TEST(HmacSha256Test, Rfc4231Case6) {
  EXPECT_EQ(
      Hex(HmacSha256(std::string(131, '\xaa'),
                     "Test Using Larger Than Block-Size Key - Hash Key First")),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(HmacSha256Test, Rfc4231Case7) {
  EXPECT_EQ(
      Hex(HmacSha256(std::string(131, '\xaa'),
                     "This is a test using a larger than block-size key and a "
                     "larger than block-size data. The key needs to be hashed "
                     "before being used by the HMAC algorithm.")),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

// --- Wire format ------------------------------------------------------------

TEST(CanonicalAuthStringTest, ExactFormat) {
  EXPECT_EQ(CanonicalAuthString("agent-1", "tok_0123456789abcdef", 1700000000,
                                "000102030405060708090a0b0c0d0e0f"),
            "tunnel-auth-v1\nagent-1\ntok_0123456789abcdef\n1700000000\n"
            "000102030405060708090a0b0c0d0e0f");
}

// Pins the signature an agent sends, computed independently with
// `openssl dgst -sha256 -mac HMAC`, so agents and gateways built from
// different versions keep agreeing.
TEST(SignAuthMetadataTest, KnownAnswer) {
  std::string key;
  for (int i = 0; i < 32; ++i) key.push_back(static_cast<char>(i));
  auto md = SignAuthMetadata(
      "agent-1", "tok_0123456789abcdef", Base64UrlEncode(key),
      absl::FromUnixSeconds(1700000000), "000102030405060708090a0b0c0d0e0f");
  ASSERT_TRUE(md.ok()) << md.status();
  std::map<std::string, std::string> m(md->begin(), md->end());
  EXPECT_EQ(md->size(), 5u);
  EXPECT_EQ(m[kAuthAgentIdKey], "agent-1");
  EXPECT_EQ(m[kAuthTokenIdKey], "tok_0123456789abcdef");
  EXPECT_EQ(m[kAuthTimestampKey], "1700000000");
  EXPECT_EQ(m[kAuthNonceKey], "000102030405060708090a0b0c0d0e0f");
  EXPECT_EQ(m[kAuthSignatureKey],
            "becfefde04677ae118e2f1225b43c099480a8bfaa437839e051bae689bcac9c7");
}

TEST(SignAuthMetadataTest, GeneratesFreshHexNonce) {
  std::string secret = Base64UrlEncode(std::string(32, 'k'));
  absl::Time now = absl::FromUnixSeconds(1700000000);
  auto a = SignAuthMetadata("agent-1", "tok_1", secret, now);
  auto b = SignAuthMetadata("agent-1", "tok_1", secret, now);
  ASSERT_TRUE(a.ok() && b.ok());
  std::map<std::string, std::string> ma(a->begin(), a->end());
  std::map<std::string, std::string> mb(b->begin(), b->end());
  EXPECT_EQ(ma[kAuthNonceKey].size(), 32u);
  EXPECT_EQ(ma[kAuthNonceKey].find_first_not_of("0123456789abcdef"),
            std::string::npos);
  EXPECT_NE(ma[kAuthNonceKey], mb[kAuthNonceKey]);
}

TEST(SignAuthMetadataTest, RejectsInvalidSecretWithoutEchoingIt) {
  const std::string bad_secret = "not+valid/base64url!secret";
  auto md = SignAuthMetadata("agent-1", "tok_1", bad_secret,
                             absl::FromUnixSeconds(1700000000));
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(md.status().message()), Not(HasSubstr(bad_secret)));
}

TEST(AuthFailureNameTest, SnakeCaseLabels) {
  EXPECT_EQ(AuthFailureName(AuthFailure::kMissingField), "missing_field");
  EXPECT_EQ(AuthFailureName(AuthFailure::kMalformed), "malformed");
  EXPECT_EQ(AuthFailureName(AuthFailure::kUnknownToken), "unknown_token");
  EXPECT_EQ(AuthFailureName(AuthFailure::kRevokedToken), "revoked_token");
  EXPECT_EQ(AuthFailureName(AuthFailure::kAgentMismatch), "agent_mismatch");
  EXPECT_EQ(AuthFailureName(AuthFailure::kClockSkew), "clock_skew");
  EXPECT_EQ(AuthFailureName(AuthFailure::kBadSignature), "bad_signature");
  EXPECT_EQ(AuthFailureName(AuthFailure::kReplay), "replay");
}

// --- AuthVerifier
// -------------------------------------------------------------

using Metadata = std::map<std::string, std::string>;

constexpr int64_t kNowUnix = 1700000000;
const absl::Duration kSkew = absl::Minutes(5);

class AuthVerifierTest : public ::testing::Test {
 protected:
  AuthVerifierTest() {
    tunnel::v1::CredentialsFile file;
    Add(&file, "tok_a", "agent-a", secret_a_, false);
    Add(&file, "tok_a2", "agent-a", secret_a2_, false);
    Add(&file, "tok_b", "agent-b", secret_b_, false);
    Add(&file, "tok_revoked", "agent-a", secret_revoked_, true);
    store_.Replace(file);
  }

  static void Add(tunnel::v1::CredentialsFile* file, const std::string& token,
                  const std::string& agent, const std::string& secret,
                  bool revoked) {
    tunnel::v1::Credential* c = file->add_credentials();
    c->set_token_id(token);
    c->set_agent_id(agent);
    c->set_secret(secret);
    c->set_created_unix(kNowUnix - 3600);
    c->set_revoked(revoked);
  }

  // Signed metadata as an agent would send it.
  static Metadata Sign(const std::string& agent, const std::string& token,
                       const std::string& secret, absl::Time at,
                       const std::string& nonce = "") {
    auto md = SignAuthMetadata(agent, token, secret, at, nonce);
    EXPECT_TRUE(md.ok()) << md.status();
    if (!md.ok()) return {};
    return Metadata(md->begin(), md->end());
  }

  Metadata SignA(absl::Time at, const std::string& nonce = "") {
    return Sign("agent-a", "tok_a", secret_a_, at, nonce);
  }

  // Verifies and records the message, to check later that no result ever
  // carried a secret.
  AuthResult Verify(AuthVerifier& v, const Metadata& md, absl::Time at) {
    AuthResult r = v.Verify(md, at);
    messages_.push_back(r.message);
    return r;
  }

  void TearDown() override {
    for (const std::string& secret :
         {secret_a_, secret_a2_, secret_b_, secret_revoked_}) {
      std::string key_hex = HexEncode(*Base64UrlDecode(secret));
      for (const std::string& m : messages_) {
        EXPECT_THAT(m, Not(HasSubstr(secret)));
        EXPECT_THAT(m, Not(HasSubstr(key_hex)));
      }
    }
  }

  const absl::Time now_ = absl::FromUnixSeconds(kNowUnix);
  const std::string secret_a_ = Base64UrlEncode(std::string(32, 'a'));
  const std::string secret_a2_ = Base64UrlEncode(std::string(32, 'A'));
  const std::string secret_b_ = Base64UrlEncode(std::string(32, 'b'));
  const std::string secret_revoked_ = Base64UrlEncode(std::string(32, 'r'));
  CredentialStore store_;
  AuthVerifier verifier_{&store_, kSkew};
  std::vector<std::string> messages_;
};

TEST_F(AuthVerifierTest, RoundTripSucceeds) {
  AuthResult r = Verify(verifier_, SignA(now_), now_);
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.agent_id, "agent-a");
  EXPECT_EQ(r.token_id, "tok_a");
}

TEST_F(AuthVerifierTest, MissingEachField) {
  for (const char* key : {kAuthAgentIdKey, kAuthTokenIdKey, kAuthTimestampKey,
                          kAuthNonceKey, kAuthSignatureKey}) {
    Metadata md = SignA(now_);
    md.erase(key);
    AuthResult r = Verify(verifier_, md, now_);
    EXPECT_FALSE(r.ok) << key;
    EXPECT_EQ(r.failure, AuthFailure::kMissingField) << key;
    EXPECT_THAT(r.message, HasSubstr(key));

    md = SignA(now_);
    md[key] = "";
    r = Verify(verifier_, md, now_);
    EXPECT_EQ(r.failure, AuthFailure::kMissingField) << key << " empty";
  }
  EXPECT_EQ(Verify(verifier_, {}, now_).failure, AuthFailure::kMissingField);
}

TEST_F(AuthVerifierTest, MalformedTimestamp) {
  for (const char* ts : {"abc", "1700000000x", "+1700000000", " 1700000000",
                         "01700000000", "1.7e9", "99999999999999999999"}) {
    Metadata md = SignA(now_);
    md[kAuthTimestampKey] = ts;
    AuthResult r = Verify(verifier_, md, now_);
    EXPECT_FALSE(r.ok) << ts;
    EXPECT_EQ(r.failure, AuthFailure::kMalformed) << ts;
  }
}

TEST_F(AuthVerifierTest, MalformedNonce) {
  for (const std::string& nonce :
       {std::string(31, 'a'), std::string(33, 'a'), std::string(32, 'g'),
        std::string("0123456789abcdef0123456789abcde-")}) {
    Metadata md = SignA(now_);
    md[kAuthNonceKey] = nonce;
    EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kMalformed)
        << nonce;
  }
}

TEST_F(AuthVerifierTest, MalformedSignature) {
  for (const std::string& sig :
       {std::string(63, 'a'), std::string(65, 'a'), std::string(64, 'z'),
        std::string("sha256=") + std::string(57, '0')}) {
    Metadata md = SignA(now_);
    md[kAuthSignatureKey] = sig;
    EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kMalformed)
        << sig;
  }
}

TEST_F(AuthVerifierTest, UnknownToken) {
  AuthResult r =
      Verify(verifier_, Sign("agent-a", "tok_nope", secret_a_, now_), now_);
  EXPECT_EQ(r.failure, AuthFailure::kUnknownToken);
  EXPECT_THAT(r.message, HasSubstr("tok_nope"));
}

TEST_F(AuthVerifierTest, RevokedToken) {
  AuthResult r = Verify(
      verifier_, Sign("agent-a", "tok_revoked", secret_revoked_, now_), now_);
  EXPECT_EQ(r.failure, AuthFailure::kRevokedToken);
}

TEST_F(AuthVerifierTest, ATokenIsRefusedFromTheSecondItExpires) {
  tunnel::v1::CredentialsFile file;
  Add(&file, "tok_a", "agent-a", secret_a_, false);
  file.mutable_credentials(0)->set_expires_unix(kNowUnix + 60);
  store_.Replace(file);
  const absl::Time before = now_ + absl::Seconds(59);
  EXPECT_TRUE(Verify(verifier_, SignA(before), before).ok);
  const absl::Time at = now_ + absl::Seconds(60);
  AuthResult r = Verify(verifier_, SignA(at), at);
  EXPECT_EQ(r.failure, AuthFailure::kExpiredToken);
  EXPECT_THAT(r.message, HasSubstr("tok_a\" expired at "));
  EXPECT_THAT(r.message,
              HasSubstr(FormatUtc(absl::FromUnixSeconds(kNowUnix + 60))));
  EXPECT_THAT(r.message, HasSubstr("tunnelctl token extend tok_a"));
  EXPECT_EQ(AuthFailureName(AuthFailure::kExpiredToken), "expired_token");
}

TEST_F(AuthVerifierTest, AgentMismatch) {
  // A correctly signed call whose token belongs to a different agent.
  AuthResult r =
      Verify(verifier_, Sign("agent-b", "tok_a", secret_a_, now_), now_);
  EXPECT_EQ(r.failure, AuthFailure::kAgentMismatch);
}

TEST_F(AuthVerifierTest, ClockSkewJustOutsideWindowRefused) {
  AuthResult past =
      Verify(verifier_, SignA(now_ - kSkew - absl::Seconds(1)), now_);
  EXPECT_EQ(past.failure, AuthFailure::kClockSkew);
  AuthResult future =
      Verify(verifier_, SignA(now_ + kSkew + absl::Seconds(1)), now_);
  EXPECT_EQ(future.failure, AuthFailure::kClockSkew);
}

TEST_F(AuthVerifierTest, ClockSkewJustInsideWindowAccepted) {
  AuthResult past = Verify(verifier_, SignA(now_ - kSkew), now_);
  EXPECT_TRUE(past.ok) << past.message;
  AuthResult future = Verify(verifier_, SignA(now_ + kSkew), now_);
  EXPECT_TRUE(future.ok) << future.message;
}

TEST_F(AuthVerifierTest, TamperedAgentIdRefused) {
  // The only token for agent-b is tok_b, so swapping the agent id trips the
  // ownership check before the signature is even looked at.
  Metadata md = SignA(now_);
  md[kAuthAgentIdKey] = "agent-b";
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kAgentMismatch);
}

TEST_F(AuthVerifierTest, TamperedTokenIdRefused) {
  Metadata md = SignA(now_);
  md[kAuthTokenIdKey] = "tok_a2";  // same agent, different secret
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kBadSignature);
  md[kAuthTokenIdKey] = "tok_zz";
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kUnknownToken);
}

TEST_F(AuthVerifierTest, TamperedTimestampRefused) {
  Metadata md = SignA(now_);
  md[kAuthTimestampKey] = absl::StrCat(kNowUnix + 1);
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kBadSignature);
}

TEST_F(AuthVerifierTest, TamperedNonceRefused) {
  Metadata md = SignA(now_, "00000000000000000000000000000000");
  md[kAuthNonceKey] = "00000000000000000000000000000001";
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kBadSignature);
}

TEST_F(AuthVerifierTest, TamperedSignatureRefused) {
  Metadata md = SignA(now_);
  std::string& sig = md[kAuthSignatureKey];
  sig[10] = sig[10] == '0' ? '1' : '0';
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kBadSignature);
}

TEST_F(AuthVerifierTest, WrongSecretRefused) {
  AuthResult r =
      Verify(verifier_, Sign("agent-a", "tok_a", secret_b_, now_), now_);
  EXPECT_EQ(r.failure, AuthFailure::kBadSignature);
}

TEST_F(AuthVerifierTest, ReplayRefused) {
  Metadata md = SignA(now_);
  EXPECT_TRUE(Verify(verifier_, md, now_).ok);
  AuthResult again = Verify(verifier_, md, now_ + absl::Seconds(1));
  EXPECT_EQ(again.failure, AuthFailure::kReplay);
  // Once out of the window it is the clock check that refuses it.
  EXPECT_EQ(Verify(verifier_, md, now_ + kSkew + absl::Seconds(1)).failure,
            AuthFailure::kClockSkew);
}

TEST_F(AuthVerifierTest, BadlySignedCallDoesNotBurnNonce) {
  const std::string nonce = "0123456789abcdef0123456789abcdef";
  Metadata forged = Sign("agent-a", "tok_a", secret_b_, now_, nonce);
  EXPECT_EQ(Verify(verifier_, forged, now_).failure,
            AuthFailure::kBadSignature);
  EXPECT_TRUE(Verify(verifier_, SignA(now_, nonce), now_).ok);
}

TEST_F(AuthVerifierTest, NonceCacheIsBounded) {
  AuthVerifier small(&store_, kSkew, /*max_nonces=*/2);
  EXPECT_TRUE(Verify(small, SignA(now_), now_).ok);
  EXPECT_TRUE(Verify(small, SignA(now_), now_).ok);
  AuthResult full = Verify(small, SignA(now_), now_);
  EXPECT_FALSE(full.ok);
  EXPECT_EQ(full.failure, AuthFailure::kReplay);

  // Once the remembered nonces' window has closed they are purged and fresh
  // calls are accepted again.
  const absl::Time later = now_ + kSkew + absl::Seconds(1);
  EXPECT_TRUE(Verify(small, SignA(later), later).ok);
  EXPECT_TRUE(Verify(small, SignA(later), later).ok);
  EXPECT_EQ(Verify(small, SignA(later), later).failure, AuthFailure::kReplay);
}

TEST_F(AuthVerifierTest, StoreReplacementTakesEffect) {
  Metadata md = SignA(now_);
  tunnel::v1::CredentialsFile file;
  Add(&file, "tok_a", "agent-a", secret_a_, /*revoked=*/true);
  store_.Replace(file);
  EXPECT_EQ(Verify(verifier_, md, now_).failure, AuthFailure::kRevokedToken);
}

}  // namespace
}  // namespace tunnel::common
