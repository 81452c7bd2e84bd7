#include "common/config_file.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"
#include "tunnel/v1/config.pb.h"

namespace tunnel::common {
namespace {

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/config_file_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  // A cut-down agent flag set: one of each kind.
  struct Values {
    std::string gateway = "default:1";
    std::string token = "t0";
    std::string slug = "s0";
    std::vector<std::string> to = {"http://default"};
    absl::Duration max_backoff = absl::Seconds(30);
    int64_t max_concurrent = 256;
    bool insecure = false;
  };
  void Register(FlagSet* f, Values* v) {
    f->String("gateway", &v->gateway, "");
    f->String("token", &v->token, "");
    f->String("slug", &v->slug, "");
    f->Repeated("to", &v->to, "");
    f->Duration("max-backoff", &v->max_backoff, "");
    f->Int("max-concurrent", &v->max_concurrent, "");
    f->Bool("insecure", &v->insecure, "");
  }

  std::string dir_;
};

TEST_F(ConfigFileTest, FlagBeatsEnvironmentBeatsFileBeatsDefault) {
  std::string path = Write("agent.txtpb", R"(
    gateway: "file:1"   # beaten by the command line
    token: "file-token" # beaten by the environment
    to: "http://a:1"
    to: "http://b:2"
    max_backoff: "5s"
    max_concurrent: 3
    insecure: true
  )");
  Values v;
  FlagSet f("usage", "CFGTEST_");
  Register(&f, &v);
  setenv("CFGTEST_TOKEN", "env-token", 1);
  ASSERT_TRUE(f.Parse({"--gateway", "cli:3"}).ok());
  tunnel::v1::AgentConfig config;
  absl::Status s = ApplyConfigFile(path, &config, &f);
  unsetenv("CFGTEST_TOKEN");
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(v.gateway, "cli:3");
  EXPECT_EQ(v.token, "env-token");
  EXPECT_EQ(v.slug, "s0");  // in neither: the default
  EXPECT_EQ(v.to, (std::vector<std::string>{"http://a:1", "http://b:2"}));
  EXPECT_EQ(v.max_backoff, absl::Seconds(5));
  EXPECT_EQ(v.max_concurrent, 3);
  EXPECT_TRUE(v.insecure);
  EXPECT_TRUE(f.WasSet("max-backoff"));
  EXPECT_FALSE(f.WasSet("slug"));
}

TEST_F(ConfigFileTest, JsonTakesBothFieldSpellings) {
  std::string path =
      Write("agent.json",
            R"({"gateway": "json:1", "maxBackoff": "1m", "max_concurrent": "7",
          "to": ["http://x"], "slug": ""})");
  Values v;
  FlagSet f("usage", "CFGTEST_");
  Register(&f, &v);
  ASSERT_TRUE(f.Parse(std::vector<std::string>{}).ok());
  tunnel::v1::AgentConfig config;
  absl::Status s = ApplyConfigFile(path, &config, &f);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(v.gateway, "json:1");
  EXPECT_EQ(v.max_backoff, absl::Minutes(1));
  EXPECT_EQ(v.max_concurrent, 7);
  EXPECT_EQ(v.to, std::vector<std::string>{"http://x"});
  EXPECT_EQ(v.slug, "");  // present and empty is honoured
}

TEST_F(ConfigFileTest, FormatFollowsTheNameThenTheContent) {
  tunnel::v1::AgentConfig config;
  EXPECT_TRUE(
      LoadConfigFile(Write("a.conf", " {\"gateway\": \"g\"}"), &config).ok());
  EXPECT_EQ(config.gateway(), "g");
  EXPECT_TRUE(LoadConfigFile(Write("b.conf", "gateway: \"h\""), &config).ok());
  EXPECT_EQ(config.gateway(), "h");
  // A .json name is JSON even if it looks like text.
  EXPECT_FALSE(LoadConfigFile(Write("c.json", "gateway: \"h\""), &config).ok());
}

TEST_F(ConfigFileTest, TextSyntaxErrorsNameFileLineAndColumn) {
  std::string path = Write("bad.txtpb", "gateway: \"g\"\nmax_concurrent: x\n");
  tunnel::v1::AgentConfig config;
  absl::Status s = LoadConfigFile(path, &config);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(path + ":2:17: "), std::string::npos) << s;
}

TEST_F(ConfigFileTest, UnknownFieldsAreErrorsInBothFormats) {
  tunnel::v1::AgentConfig config;
  std::string text = Write("u.txtpb", "gateway: \"g\"\nsecrett: \"x\"\n");
  absl::Status s = LoadConfigFile(text, &config);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(text + ":2:"), std::string::npos) << s;
  EXPECT_NE(s.message().find("secrett"), std::string::npos) << s;
  std::string json = Write("u.json", R"({"gateway": "g", "secrett": "x"})");
  s = LoadConfigFile(json, &config);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(json), std::string::npos) << s;
  EXPECT_NE(s.message().find("secrett"), std::string::npos) << s;
}

TEST_F(ConfigFileTest, BadValuesNameTheFileAndTheField) {
  std::string path = Write("v.txtpb", "max_backoff: \"soon\"\n");
  Values v;
  FlagSet f("usage", "CFGTEST_");
  Register(&f, &v);
  ASSERT_TRUE(f.Parse(std::vector<std::string>{}).ok());
  tunnel::v1::AgentConfig config;
  absl::Status s = ApplyConfigFile(path, &config, &f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path + ": field max_backoff"), std::string::npos)
      << s;
  EXPECT_FALSE(ApplyConfigFile(dir_ + "/missing.txtpb", &config, &f).ok());
}

TEST_F(ConfigFileTest, AFieldWithoutAFlagIsAnError) {
  // `id` is in AgentConfig but not registered in this cut-down set: the file
  // must not be accepted with the value silently dropped.
  std::string path = Write("id.txtpb", "id: \"cam\"\n");
  Values v;
  FlagSet f("usage", "CFGTEST_");
  Register(&f, &v);
  ASSERT_TRUE(f.Parse(std::vector<std::string>{}).ok());
  tunnel::v1::AgentConfig config;
  absl::Status s = ApplyConfigFile(path, &config, &f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("field id"), std::string::npos) << s;
}

}  // namespace
}  // namespace tunnel::common
