#include "common/credentials.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/random.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

const std::string kGoodSecret = Base64UrlEncode(std::string(32, 's'));

// Each test gets its own directory, removed afterwards.
class CredentialsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = absl::StrCat(::testing::TempDir(), "/credsXXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/creds.txtpb";
  }

  void TearDown() override {
    std::string cmd = absl::StrCat("rm -rf '", dir_, "'");
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }

  void Write(const std::string& text) {
    std::ofstream out(path_);
    out << text;
  }

  std::string Read() {
    std::ifstream in(path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  static tunnel::v1::Credential Cred(const std::string& token,
                                     const std::string& agent,
                                     const std::string& secret = kGoodSecret,
                                     bool revoked = false) {
    tunnel::v1::Credential c;
    c.set_token_id(token);
    c.set_agent_id(agent);
    c.set_secret(secret);
    c.set_created_unix(1700000000);
    c.set_revoked(revoked);
    return c;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(CredentialsFileTest, SaveLoadRoundTrip) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_1", "agent-1");
  *file.add_credentials() = Cred("tok_2", "agent.two_2", kGoodSecret, true);
  ASSERT_TRUE(SaveCredentialsFile(path_, file).ok());

  auto loaded = LoadCredentialsFile(path_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->SerializeAsString(), file.SerializeAsString());
  EXPECT_THAT(Read(),
              StartsWith("# tunnel credentials \xE2\x80\x94 keep private "
                         "(mode 0600)\n"));
}

TEST_F(CredentialsFileTest, SavedFileIsMode0600AndReplacesOldOne) {
  Write("");
  ASSERT_EQ(chmod(path_.c_str(), 0644), 0);
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_1", "agent-1");
  ASSERT_TRUE(SaveCredentialsFile(path_, file).ok());
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  EXPECT_THAT(Read(), HasSubstr("tok_1"));
}

TEST_F(CredentialsFileTest, SaveLeavesNoTempFiles) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_1", "agent-1");
  ASSERT_TRUE(SaveCredentialsFile(path_, file).ok());
  ASSERT_TRUE(SaveCredentialsFile(path_, file).ok());
  std::string cmd =
      absl::StrCat("test \"$(ls -A '", dir_, "')\" = creds.txtpb");
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST_F(CredentialsFileTest, SaveRefusesInvalidContent) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_1", "");
  EXPECT_FALSE(SaveCredentialsFile(path_, file).ok());
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
}

TEST_F(CredentialsFileTest, EmptyFileIsValid) {
  Write("# nothing yet\n");
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->credentials_size(), 0);
}

TEST_F(CredentialsFileTest, MissingFileIsNotFound) {
  auto loaded = LoadCredentialsFile(dir_ + "/absent.txtpb");
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("absent.txtpb"));
}

TEST_F(CredentialsFileTest, SyntaxErrorNamesFileAndLine) {
  Write(
      absl::StrCat("credentials {\n  token_id: \"tok_1\"\n  agent_id: "
                   "\"a\"\n  secret: \"",
                   kGoodSecret, "\"\n  bogus_field: 3\n}\n"));
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  // One-based "file:line:column:" like a compiler.
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr(absl::StrCat(path_, ":5:")));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("bogus_field"));
}

TEST_F(CredentialsFileTest, SyntaxErrorDoesNotEchoUnquotedSecret) {
  const std::string secret = Base64UrlEncode(std::string(32, 'q'));
  Write(absl::StrCat("credentials {\n  token_id: \"tok_1\"\n  secret: ", secret,
                     "\n}\n"));
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr(absl::StrCat(path_, ":3:")));
  EXPECT_THAT(std::string(loaded.status().message()), Not(HasSubstr(secret)));
}

TEST_F(CredentialsFileTest, UnterminatedMessageIsSyntaxError) {
  Write("credentials {\n  token_id: \"tok_1\"\n");
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              MatchesRegex(".*creds\\.txtpb:[0-9]+:[0-9]+: .*"));
}

TEST_F(CredentialsFileTest, DuplicateTokenIdRejected) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_dup", "agent-1");
  *file.add_credentials() = Cred("tok_dup", "agent-2");
  Write(file.DebugString());
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(path_));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tok_dup"));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("duplicate"));
}

TEST_F(CredentialsFileTest, BadSecretsRejectedWithoutEchoingThem) {
  const std::string short_secret = Base64UrlEncode(std::string(15, 'x'));
  for (const std::string& secret :
       {std::string(""), std::string("has spaces and !!! in it"),
        std::string("abc+def/ghi+jkl/mno+pqr/stu+vwx"), short_secret}) {
    tunnel::v1::CredentialsFile file;
    *file.add_credentials() = Cred("tok_s", "agent-1", secret);
    Write(file.DebugString());
    auto loaded = LoadCredentialsFile(path_);
    ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument)
        << secret;
    std::string message(loaded.status().message());
    EXPECT_THAT(message, HasSubstr(path_));
    EXPECT_THAT(message, HasSubstr("tok_s"));
    EXPECT_THAT(message, HasSubstr("secret"));
    if (!secret.empty()) {
      EXPECT_THAT(message, Not(HasSubstr(secret)));
    }
  }
}

TEST_F(CredentialsFileTest, EmptyAgentIdRejected) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_e", "");
  Write(file.DebugString());
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tok_e"));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("agent_id"));
}

TEST_F(CredentialsFileTest, InvalidAgentIdRejected) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("tok_i", "agent/../x");
  Write(file.DebugString());
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("tok_i"));
}

TEST_F(CredentialsFileTest, EmptyTokenIdRejected) {
  tunnel::v1::CredentialsFile file;
  *file.add_credentials() = Cred("", "agent-1");
  Write(file.DebugString());
  auto loaded = LoadCredentialsFile(path_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("token_id"));
}

TEST(IsValidAgentIdTest, Charset) {
  EXPECT_TRUE(IsValidAgentId("a"));
  EXPECT_TRUE(IsValidAgentId("My-Agent_1.prod"));
  EXPECT_TRUE(IsValidAgentId(std::string(64, 'x')));
  EXPECT_FALSE(IsValidAgentId(""));
  EXPECT_FALSE(IsValidAgentId(std::string(65, 'x')));
  EXPECT_FALSE(IsValidAgentId("a b"));
  EXPECT_FALSE(IsValidAgentId("a/b"));
  EXPECT_FALSE(IsValidAgentId("a\nb"));
  EXPECT_FALSE(IsValidAgentId("ä"));
}

TEST(IssueCredentialTest, Format) {
  auto c = IssueCredential("agent-1", absl::FromUnixSeconds(1700000123));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->token_id(), MatchesRegex("tok_[0-9a-f]{16}"));
  EXPECT_EQ(c->agent_id(), "agent-1");
  EXPECT_EQ(c->created_unix(), 1700000123);
  EXPECT_FALSE(c->revoked());
  EXPECT_THAT(c->secret(), MatchesRegex("[A-Za-z0-9_-]{43}"));
  auto key = Base64UrlDecode(c->secret());
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->size(), 32u);

  auto other = IssueCredential("agent-1", absl::FromUnixSeconds(1700000123));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->token_id(), c->token_id());
  EXPECT_NE(other->secret(), c->secret());
}

TEST(IssueCredentialTest, AnExpiryIsKeptToTheSecondRoundedUp) {
  const absl::Time now = absl::FromUnixSeconds(1700000123);
  auto never = IssueCredential("agent-1", now);
  ASSERT_TRUE(never.ok());
  EXPECT_EQ(never->expires_unix(), 0);
  EXPECT_EQ(CredentialExpiry(*never), absl::InfiniteFuture());
  auto day = IssueCredential("agent-1", now,
                             now + absl::Hours(24) + absl::Milliseconds(1));
  ASSERT_TRUE(day.ok());
  EXPECT_EQ(day->expires_unix(), 1700000123 + 86400 + 1);
  EXPECT_EQ(CredentialExpiry(*day), absl::FromUnixSeconds(1700086524));
  EXPECT_EQ(FormatUtc(CredentialExpiry(*day)), "2023-11-15T22:15:24Z");
  SetCredentialExpiry(*day, absl::InfiniteFuture());
  EXPECT_EQ(day->expires_unix(), 0);
}

TEST(IssueCredentialTest, RejectsInvalidAgentId) {
  for (const char* id : {"", "has space", "slash/y"}) {
    auto c = IssueCredential(id, absl::FromUnixSeconds(1700000000));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << id;
  }
}

TEST(CredentialStoreTest, FindAndAgentIds) {
  tunnel::v1::CredentialsFile file;
  auto add = [&](const std::string& token, const std::string& agent,
                 bool revoked) {
    tunnel::v1::Credential* c = file.add_credentials();
    c->set_token_id(token);
    c->set_agent_id(agent);
    c->set_secret(kGoodSecret);
    c->set_revoked(revoked);
  };
  add("tok_1", "zeta", false);
  add("tok_2", "alpha", false);
  add("tok_3", "alpha", false);
  add("tok_4", "gone", true);
  add("tok_5", "zeta", true);
  CredentialStore store(file);

  auto found = store.Find("tok_2");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->agent_id(), "alpha");
  auto revoked = store.Find("tok_4");
  ASSERT_TRUE(revoked.has_value());
  EXPECT_TRUE(revoked->revoked());
  EXPECT_FALSE(store.Find("tok_nope").has_value());
  EXPECT_FALSE(store.Find("").has_value());

  // Sorted, unique; "gone" has only a revoked token.
  EXPECT_THAT(store.AgentIds(), ElementsAre("alpha", "zeta"));

  store.Replace(tunnel::v1::CredentialsFile());
  EXPECT_FALSE(store.Find("tok_2").has_value());
  EXPECT_TRUE(store.AgentIds().empty());
}

TEST(CredentialStoreTest, AReloadFindsTokensWhereverTheNewFileHasThem) {
  tunnel::v1::CredentialsFile file;
  auto add = [&](const std::string& token, const std::string& agent) {
    tunnel::v1::Credential* c = file.add_credentials();
    c->set_token_id(token);
    c->set_agent_id(agent);
    c->set_secret(kGoodSecret);
  };
  for (int i = 0; i < 1000; ++i) {
    add(absl::StrCat("tok_", i), absl::StrCat("agent-", i));
  }
  CredentialStore store(file);
  auto agent_of = [&](const std::string& token) -> std::string {
    std::optional<tunnel::v1::Credential> c = store.Find(token);
    return c.has_value() ? c->agent_id() : "(not found)";
  };
  EXPECT_EQ(agent_of("tok_999"), "agent-999");

  // The new file has other tokens at other places: each is found with its
  // own agent, and the ones it dropped are gone. Of two entries with one
  // token id (LoadCredentialsFile refuses them; Replace takes any file), the
  // first counts, as it did when lookups scanned the list.
  file.Clear();
  add("tok_new", "fresh");
  add("tok_999", "moved");
  add("tok_999", "shadowed");
  store.Replace(file);
  EXPECT_EQ(agent_of("tok_new"), "fresh");
  EXPECT_EQ(agent_of("tok_999"), "moved");
  EXPECT_EQ(agent_of("tok_0"), "(not found)");
  EXPECT_EQ(store.CheckLive("tok_1", "agent-1").message(),
            "token tok_1 was removed from the credentials");
}

TEST(CredentialStoreTest, CheckLiveSaysWhyATokenIsNoLongerInForce) {
  tunnel::v1::CredentialsFile file;
  for (const char* token : {"tok_old", "tok_new"}) {
    tunnel::v1::Credential* c = file.add_credentials();
    c->set_token_id(token);
    c->set_agent_id("cam");
    c->set_secret(kGoodSecret);
  }
  CredentialStore store(file);
  EXPECT_EQ(store.LiveTokenCount(), 2u);
  EXPECT_TRUE(store.CheckLive("tok_old", "cam").ok());
  EXPECT_TRUE(store.CheckLive("tok_new", "cam").ok());

  file.mutable_credentials(0)->set_revoked(true);
  file.mutable_credentials(1)->set_agent_id("other");
  store.Replace(file);
  EXPECT_EQ(store.LiveTokenCount(), 1u);
  absl::Status s = store.CheckLive("tok_old", "cam");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "token tok_old was revoked");
  EXPECT_EQ(store.CheckLive("tok_new", "cam").message(),
            "token tok_new now belongs to agent other, not cam");
  EXPECT_EQ(store.CheckLive("tok_gone", "cam").message(),
            "token tok_gone was removed from the credentials");
  // Whatever a token id holds is escaped, never printed raw.
  EXPECT_EQ(store.CheckLive("tok\n", "cam").message(),
            "token tok\\n was removed from the credentials");
}

// --- random.h: the secret encoding the credentials file relies on ---------

TEST(Base64UrlTest, Rfc4648Vectors) {
  EXPECT_EQ(Base64UrlEncode(""), "");
  EXPECT_EQ(Base64UrlEncode("f"), "Zg");
  EXPECT_EQ(Base64UrlEncode("fo"), "Zm8");
  EXPECT_EQ(Base64UrlEncode("foo"), "Zm9v");
  EXPECT_EQ(Base64UrlEncode("foob"), "Zm9vYg");
  EXPECT_EQ(Base64UrlEncode("fooba"), "Zm9vYmE");
  EXPECT_EQ(Base64UrlEncode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_EQ(Base64UrlDecode("Zm9vYmE"), "fooba");
  EXPECT_EQ(Base64UrlDecode("Zm9vYg=="), "foob");
  EXPECT_EQ(Base64UrlDecode("-_8"), "\xfb\xff");
}

TEST(Base64UrlTest, RoundTripsEveryLength) {
  for (size_t n = 0; n < 70; ++n) {
    std::string bytes = RandomBytes(n);
    EXPECT_EQ(Base64UrlDecode(Base64UrlEncode(bytes)), bytes) << n;
  }
}

TEST(Base64UrlTest, RejectsInvalidInput) {
  for (const char* bad : {"Zm9v+", "Zm9v/A", "Zm 9v", "Zm9v\n", "Z", "Zm9vY",
                          "Zg=", "=Zg=", "Zm=v", "Zh", "Zm9"}) {
    EXPECT_EQ(Base64UrlDecode(bad), std::nullopt) << bad;
  }
}

TEST(Base64Test, StandardAlphabetOnly) {
  EXPECT_EQ(Base64Decode("+/8="), "\xfb\xff");
  EXPECT_EQ(Base64Decode("+/8"), "\xfb\xff");
  EXPECT_EQ(Base64Decode("Zm9vYmFy"), "foobar");
  EXPECT_EQ(Base64Decode("-_8"), std::nullopt);
  EXPECT_EQ(Base64Decode("Zm9v!"), std::nullopt);
}

TEST(RandomTest, Formats) {
  EXPECT_EQ(RandomBytes(0), "");
  EXPECT_EQ(RandomBytes(17).size(), 17u);
  EXPECT_THAT(RandomHex(8), MatchesRegex("[0-9a-f]{16}"));
  EXPECT_NE(RandomU64(), RandomU64());
  EXPECT_THAT(NewUuid(),
              MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]"
                           "{3}-[0-9a-f]{12}"));
  EXPECT_EQ(HexEncode(std::string("\x00\xff\x10", 3)), "00ff10");
}

}  // namespace
}  // namespace tunnel::common
