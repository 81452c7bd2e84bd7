#include "common/flags.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

TEST(FlagsTest, CommandLineBeatsEnvironmentBeatsDefault) {
  std::string gateway = "default:1", token = "t0";
  std::vector<std::string> to;
  absl::Duration timeout = absl::Seconds(30);
  bool insecure = false;
  int64_t n = 5;
  FlagSet f("usage", "FLAGTEST_");
  f.String("gateway", &gateway, "");
  f.String("token", &token, "");
  f.Repeated("to", &to, "");
  f.Duration("response-timeout", &timeout, "");
  f.Bool("insecure", &insecure, "");
  f.Int("n", &n, "");
  setenv("FLAGTEST_GATEWAY", "env:2", 1);
  setenv("FLAGTEST_TOKEN", "from-env", 1);
  setenv("FLAGTEST_TO", "http://a:1, http://b:2", 1);
  auto rest = f.Parse({"--gateway=cli:3", "pos", "--response-timeout", "5s",
                       "--insecure", "--n", "7"});
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(*rest, std::vector<std::string>{"pos"});
  EXPECT_EQ(gateway, "cli:3");
  EXPECT_EQ(token, "from-env");
  EXPECT_EQ(to, (std::vector<std::string>{"http://a:1", "http://b:2"}));
  EXPECT_EQ(timeout, absl::Seconds(5));
  EXPECT_TRUE(insecure);
  EXPECT_EQ(n, 7);
  EXPECT_TRUE(f.WasSet("token"));
  unsetenv("FLAGTEST_GATEWAY");
  unsetenv("FLAGTEST_TOKEN");
  unsetenv("FLAGTEST_TO");
}

TEST(FlagsTest, RepeatedFlagsCollectEveryValue) {
  std::vector<std::string> to = {"default"};
  FlagSet f("usage", "FLAGTEST_");
  f.Repeated("to", &to, "");
  ASSERT_TRUE(f.Parse({"--to", "a", "--to=b"}).ok());
  EXPECT_EQ(to, (std::vector<std::string>{"a", "b"}));
}

TEST(FlagsTest, ErrorsNameTheFlag) {
  absl::Duration d;
  int64_t n = 0;
  FlagSet f("usage", "FLAGTEST_");
  f.Duration("timeout", &d, "");
  f.Int("n", &n, "");
  auto bad = f.Parse({"--timeout=soon"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--timeout"), std::string::npos);
  EXPECT_NE(f.Parse({"--nope"}).status().message().find("unknown flag --nope"),
            std::string::npos);
  EXPECT_NE(f.Parse({"--n"}).status().message().find("needs a value"),
            std::string::npos);
  setenv("FLAGTEST_N", "many", 1);
  FlagSet g("usage", "FLAGTEST_");
  g.Int("n", &n, "");
  auto env_bad = g.Parse(std::vector<std::string>{});
  ASSERT_FALSE(env_bad.ok());
  EXPECT_NE(env_bad.status().message().find("FLAGTEST_N"), std::string::npos);
  unsetenv("FLAGTEST_N");
}

TEST(FlagsTest, HelpStopsParsingAndUsageListsEnvNames) {
  std::string s;
  FlagSet f("my usage\n", "TUNNEL_");
  f.String("grpc-addr", &s, "where");
  ASSERT_TRUE(f.Parse({"--help"}).ok());
  EXPECT_TRUE(f.help_requested());
  EXPECT_NE(f.Usage().find("TUNNEL_GRPC_ADDR"), std::string::npos);
  EXPECT_NE(f.Usage().find("--grpc-addr"), std::string::npos);
}

}  // namespace
}  // namespace tunnel::common
