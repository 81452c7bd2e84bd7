#include "common/password_hash.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::HasSubstr;

// Made by other tools, so the formats are theirs, not only ours:
// passlib 1.7.4 pbkdf2_sha256 (rounds 10000 and 29000; the second hash
// holds '.' and '/'), and `htpasswd -nbB -C 5` (Apache 2.4).
constexpr char kPasslib[] =
    "$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$"
    "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc";
constexpr char kPasslibUtf8[] =
    "$pbkdf2-sha256$29000$c2FsdHNhbHQ$"
    "eVlxHqJ7CV3LAt5TL1rrTgr8gvSaa6NNORVGbg.pf/g";
constexpr char kHtpasswd[] =
    "$2y$05$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.Be";

PasswordHash Parse(absl::string_view text) {
  absl::StatusOr<PasswordHash> h = ParsePasswordHash(text);
  EXPECT_TRUE(h.ok()) << text << ": " << h.status();
  return h.ok() ? *h : PasswordHash{};
}

TEST(PasswordHashTest, HashesFromPasslibAndHtpasswdCheckTheirPasswords) {
  EXPECT_TRUE(PasswordMatches(Parse(kPasslib), "correct horse"));
  EXPECT_FALSE(PasswordMatches(Parse(kPasslib), "correct horsE"));
  EXPECT_TRUE(PasswordMatches(Parse(kPasslibUtf8), "p\u00e4ssw\u00f6rd"));
  EXPECT_FALSE(PasswordMatches(Parse(kPasslibUtf8), "passwoerd"));
  EXPECT_TRUE(PasswordMatches(Parse(kHtpasswd), "correct horse"));
  EXPECT_FALSE(PasswordMatches(Parse(kHtpasswd), "correct horse "));
  EXPECT_FALSE(PasswordMatches(Parse(kHtpasswd), ""));
  EXPECT_EQ(Parse(kHtpasswd).rounds, 5u);
  EXPECT_EQ(Parse(kPasslibUtf8).rounds, 29000u);
}

TEST(PasswordHashTest, OurHashesRoundTripInBothSchemes) {
  for (PasswordScheme scheme :
       {PasswordScheme::kPbkdf2Sha256, PasswordScheme::kBcrypt}) {
    absl::StatusOr<std::string> a = HashPassword("s3cret", scheme, 0);
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<std::string> b = HashPassword("s3cret", scheme, 0);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_NE(*a, *b) << "a fresh salt each time";
    EXPECT_TRUE(PasswordMatches(Parse(*a), "s3cret")) << *a;
    EXPECT_FALSE(PasswordMatches(Parse(*a), "s3cre")) << *a;
  }
  absl::StatusOr<std::string> bcrypt =
      HashPassword("x", PasswordScheme::kBcrypt, 4);
  ASSERT_TRUE(bcrypt.ok());
  EXPECT_THAT(*bcrypt, ::testing::StartsWith("$2b$04$"));
  absl::StatusOr<std::string> pbkdf2 =
      HashPassword("x", PasswordScheme::kPbkdf2Sha256, 0);
  ASSERT_TRUE(pbkdf2.ok());
  EXPECT_THAT(*pbkdf2, ::testing::StartsWith("$pbkdf2-sha256$100000$"));
}

TEST(PasswordHashTest, BcryptRefusesWhatItWouldSilentlyCut) {
  const std::string long_pw(73, 'a');
  absl::StatusOr<std::string> h =
      HashPassword(long_pw, PasswordScheme::kBcrypt, 4);
  EXPECT_FALSE(h.ok());
  EXPECT_THAT(h.status().message(), HasSubstr("72 bytes"));
  // bcrypt itself would call these equal (it reads 72 bytes, stops at NUL).
  absl::StatusOr<std::string> ok =
      HashPassword(std::string(72, 'a'), PasswordScheme::kBcrypt, 4);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(PasswordMatches(Parse(*ok), std::string(72, 'a')));
  EXPECT_FALSE(PasswordMatches(Parse(*ok), std::string(73, 'a')));
  absl::StatusOr<std::string> nul =
      HashPassword("ab", PasswordScheme::kBcrypt, 4);
  ASSERT_TRUE(nul.ok());
  EXPECT_FALSE(PasswordMatches(Parse(*nul), std::string("ab\0c", 4)));
}

TEST(PasswordHashTest, BadHashesSayWhatIsWrong) {
  struct Case {
    std::string hash;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"hunter2", "tunnelctl hash-password"},
      {"$apr1$jAHZElGo$8H4dg9UzvSoeB0FJXaTWt.", "too weak"},
      {"{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "too weak"},
      {"$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg", "ROUNDS$SALT$HASH"},
      {"$pbkdf2-sha256$9999$MDEyMzQ1Njc4OWFiY2RlZg$"
       "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc",
       "rounds must be between 10000 and 2000000"},
      {"$pbkdf2-sha256$2000001$MDEyMzQ1Njc4OWFiY2RlZg$"
       "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc",
       "rounds must be between"},
      {"$pbkdf2-sha256$10000$MDEy$"
       "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc",
       "salt must be 8 to 64 bytes"},
      {"$pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$TI2grtvV1HW5nz2r",
       "must be 32 bytes"},
      {"$pbkdf2-sha256$10000$MDEyMzQ1Njc4-WFiY2RlZg$"
       "TI2grtvV1HW5nz2rBY4tctlrmOj5bZs0dw9j8NHpRRc",
       "salt"},
      {"$2y$05$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.B",
       "60 in all"},
      {"$2y$03$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.Be",
       "cost must be between 4 and 14, not 3"},
      {"$2y$15$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw.Be",
       "not 15"},
      {"$2y$05$a7Mq3.eTQOcQvXJ3nhwS9ekDDArBy5Im7AuzFXZ7sfNMznRdKw!Be",
       "only [./A-Za-z0-9]"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<PasswordHash> h = ParsePasswordHash(c.hash);
    EXPECT_FALSE(h.ok()) << c.hash;
    EXPECT_THAT(h.status().message(), HasSubstr(c.says)) << c.hash;
  }
}

TEST(PasswordHashTest, UserEntriesAreCheckedOneByOne) {
  absl::StatusOr<std::vector<BasicAuthUser>> users = ParseBasicAuthUsers(
      {std::string("alice:") + kHtpasswd, std::string("bob:") + kPasslib},
      "--basic-auth");
  ASSERT_TRUE(users.ok()) << users.status();
  ASSERT_EQ(users->size(), 2u);
  EXPECT_EQ((*users)[0].user, "alice");
  EXPECT_EQ((*users)[0].hash.scheme, PasswordScheme::kBcrypt);
  EXPECT_EQ((*users)[1].user, "bob");
  EXPECT_EQ((*users)[1].hash.scheme, PasswordScheme::kPbkdf2Sha256);

  struct Case {
    std::vector<std::string> entries;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"alice"}, "--basic-auth: \"alice\" is not USER:HASH"},
      {{std::string(":") + kPasslib}, "is not USER:HASH"},
      {{"alice:hunter2"}, "user \"alice\": not a password hash"},
      {{std::string("a\tb:") + kPasslib}, "control characters"},
      {{std::string(129, 'u') + ":" + kPasslib}, "at most 128 bytes"},
      {{std::string("alice:") + kPasslib, std::string("alice:") + kHtpasswd},
       "user \"alice\" appears twice"},
      {std::vector<std::string>(101, std::string("a:") + kPasslib),
       "at most 100 users, not 101"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<BasicAuthUser>> r =
        ParseBasicAuthUsers(c.entries, "--basic-auth");
    EXPECT_FALSE(r.ok()) << c.says;
    EXPECT_THAT(r.status().message(), HasSubstr(c.says));
  }
}

}  // namespace
}  // namespace tunnel::common
