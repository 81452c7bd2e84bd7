#include "agent/local_target.h"

#include "gtest/gtest.h"

namespace tunnel::agent {
namespace {

TEST(LocalTargetTest, ParsesUrlsNamesAndShortForms) {
  auto t = ParseTarget("http://127.0.0.1:3000");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, 3000);
  EXPECT_EQ(t->base_path, "");
  t = ParseTarget("api=https://localhost/v1/");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->name, "api");
  EXPECT_EQ(t->scheme, "https");
  EXPECT_EQ(t->port, 443);
  EXPECT_EQ(t->base_path, "/v1");
  t = ParseTarget("8080");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, 8080);
  t = ParseTarget("http://[::1]:9000/x");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->host, "::1");
  EXPECT_EQ(t->port, 9000);
}

TEST(LocalTargetTest, RejectsBadTargetsClearly) {
  EXPECT_FALSE(ParseTarget("ftp://x:1").ok());
  EXPECT_FALSE(ParseTarget("http://:80").ok());
  EXPECT_FALSE(ParseTarget("http://host:99999").ok());
  EXPECT_FALSE(ParseTarget("http://host:abc").ok());
  EXPECT_FALSE(ParseTarget("=http://x").ok());
}

TEST(LocalTargetTest, AssignsSlugsAndChecksThem) {
  auto ts = ParseTargets({"http://a:1", "api=http://b:2"}, "cam-01");
  ASSERT_TRUE(ts.ok()) << ts.status();
  EXPECT_EQ((*ts)[0].slug, "cam-01");
  EXPECT_EQ((*ts)[1].slug, "api-cam-01");
  EXPECT_FALSE(ParseTargets({}, "cam-01").ok());
  EXPECT_FALSE(ParseTargets({"http://a:1", "http://b:2"}, "cam-01").ok());
  EXPECT_FALSE(ParseTargets({"x=http://a:1", "x=http://b:2"}, "cam").ok());
  auto bad = ParseTargets({"http://a:1"}, "Cam_01");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--slug"), std::string::npos);
}

}  // namespace
}  // namespace tunnel::agent
