#include "common/admin_token.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

using ::testing::HasSubstr;

class AdminTokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/admin-token-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/admin.token";
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  void Write(const std::string& text, mode_t mode) {
    std::ofstream(path_) << text;
    ASSERT_EQ(chmod(path_.c_str(), mode), 0);
  }
  std::string dir_;
  std::string path_;
};

TEST_F(AdminTokenTest, IssuedTokenRoundTripsWithMode0600) {
  std::string token = GenerateAdminToken();
  EXPECT_TRUE(absl::StartsWith(token, "adm_"));
  EXPECT_GE(token.size(), 40u);
  EXPECT_NE(token, GenerateAdminToken());
  ASSERT_TRUE(SaveAdminToken(path_, token).ok());
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  absl::StatusOr<std::string> loaded = LoadAdminToken(path_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, token);
}

TEST_F(AdminTokenTest, RefusesAFileGroupOrOthersCanRead) {
  Write("adm_0123456789abcdef0123\n", 0640);
  absl::StatusOr<std::string> loaded = LoadAdminToken(path_);
  EXPECT_TRUE(absl::IsPermissionDenied(loaded.status())) << loaded.status();
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("chmod 600"));
  Write("adm_0123456789abcdef0123\n", 0604);
  EXPECT_TRUE(absl::IsPermissionDenied(LoadAdminToken(path_).status()));
  Write("adm_0123456789abcdef0123\n", 0400);
  EXPECT_TRUE(LoadAdminToken(path_).ok());
}

TEST_F(AdminTokenTest, RefusesEmptyShortOrSplitTokens) {
  Write("\n", 0600);
  EXPECT_TRUE(absl::IsInvalidArgument(LoadAdminToken(path_).status()));
  Write("short\n", 0600);
  EXPECT_TRUE(absl::IsInvalidArgument(LoadAdminToken(path_).status()));
  Write("adm_0123456789 abcdef0123\n", 0600);
  EXPECT_TRUE(absl::IsInvalidArgument(LoadAdminToken(path_).status()));
  EXPECT_TRUE(absl::IsNotFound(LoadAdminToken(dir_ + "/missing").status()));
}

TEST(AdminTokenMatchesTest, ComparesWholeTokens) {
  EXPECT_TRUE(AdminTokenMatches("adm_secret_token_1", "adm_secret_token_1"));
  EXPECT_FALSE(AdminTokenMatches("adm_secret_token_1", "adm_secret_token_2"));
  EXPECT_FALSE(AdminTokenMatches("adm_secret_token_1", "adm_secret_token_"));
  EXPECT_FALSE(AdminTokenMatches("adm_secret_token_1", ""));
  EXPECT_FALSE(AdminTokenMatches("", ""));
}

}  // namespace
}  // namespace tunnel::common
