#include "httpfront/routing.h"

#include "gtest/gtest.h"

namespace tunnel::httpfront {
namespace {

TEST(RoutingTest, SubdomainRoutesKeepTheTarget) {
  auto r = ResolveRoute("cam-01.example.com:8082", "/a/b?c=d", "example.com");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->slug, "cam-01");
  EXPECT_EQ(r->target, "/a/b?c=d");
  EXPECT_EQ(r->prefix, "");
  // Case and a trailing dot in Host do not matter.
  r = ResolveRoute("CAM-01.Example.COM.", "/", "example.com");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->slug, "cam-01");
}

TEST(RoutingTest, OnlyOneLabelUnderTheDomainIsATunnel) {
  EXPECT_FALSE(ResolveRoute("a.b.example.com", "/", "example.com"));
  EXPECT_FALSE(ResolveRoute("example.com", "/", "example.com"));
  EXPECT_FALSE(ResolveRoute("evil-example.com", "/", "example.com"));
  EXPECT_FALSE(ResolveRoute("cam.example.org", "/", "example.com"));
}

TEST(RoutingTest, PathRoutesStripThePrefix) {
  auto r = ResolveRoute("gw:8082", "/t/cam-01/x/y?z=1", "example.com");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->slug, "cam-01");
  EXPECT_EQ(r->target, "/x/y?z=1");
  EXPECT_EQ(r->prefix, "/t/cam-01");
  EXPECT_EQ(ResolveRoute("gw", "/t/cam-01", "")->target, "/");
  EXPECT_EQ(ResolveRoute("gw", "/t/cam-01/", "")->target, "/");
  EXPECT_EQ(ResolveRoute("gw", "/t/cam-01?a=b", "")->target, "/?a=b");
}

TEST(RoutingTest, NoTunnelNamed) {
  EXPECT_FALSE(ResolveRoute("gw", "/", "example.com"));
  EXPECT_FALSE(ResolveRoute("gw", "/t/", "example.com"));
  EXPECT_FALSE(ResolveRoute("gw", "/t//x", "example.com"));
  EXPECT_FALSE(ResolveRoute("gw", "/tx/cam", "example.com"));
}

TEST(RoutingTest, HostWithoutPortHandlesIpv6) {
  EXPECT_EQ(HostWithoutPort("[::1]:8082"), "[::1]");
  EXPECT_EQ(HostWithoutPort("Example.com:80"), "example.com");
  EXPECT_EQ(HostWithoutPort("example.com"), "example.com");
}

}  // namespace
}  // namespace tunnel::httpfront
