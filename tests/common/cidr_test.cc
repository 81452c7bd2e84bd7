#include "common/cidr.h"

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

IpAddress Ip(absl::string_view text) {
  absl::StatusOr<IpAddress> ip = ParseIpAddress(text);
  EXPECT_TRUE(ip.ok()) << text;
  return ip.ok() ? *ip : IpAddress{};
}

Cidr Range(absl::string_view text) {
  absl::StatusOr<Cidr> c = ParseCidr(text);
  EXPECT_TRUE(c.ok()) << text << ": " << c.status();
  return c.ok() ? *c : Cidr{};
}

TEST(CidrTest, RangesHoldTheirAddressesOnly) {
  EXPECT_TRUE(Range("10.0.0.0/8").Contains(Ip("10.255.1.2")));
  EXPECT_FALSE(Range("10.0.0.0/8").Contains(Ip("11.0.0.1")));
  EXPECT_TRUE(Range("127.0.0.2").Contains(Ip("127.0.0.2")));
  EXPECT_FALSE(Range("127.0.0.2").Contains(Ip("127.0.0.3")));
  EXPECT_TRUE(Range("192.168.4.0/22").Contains(Ip("192.168.7.255")));
  EXPECT_FALSE(Range("192.168.4.0/22").Contains(Ip("192.168.8.0")));
  EXPECT_TRUE(Range("0.0.0.0/0").Contains(Ip("203.0.113.9")));
  EXPECT_FALSE(Range("0.0.0.0/0").Contains(Ip("2001:db8::1")));
  EXPECT_TRUE(Range("2001:db8::/32").Contains(Ip("2001:db8:ffff::7")));
  EXPECT_FALSE(Range("2001:db8::/32").Contains(Ip("2001:db9::")));
  EXPECT_TRUE(Range("::1").Contains(Ip("::1")));
  // A dual-stack socket's IPv4-mapped address is its IPv4 address.
  EXPECT_TRUE(Range("127.0.0.0/8").Contains(Ip("::ffff:127.0.0.3")));
  EXPECT_EQ(Range("2001:db8::/32").ToString(), "2001:db8::/32");
  EXPECT_EQ(Range("10.1.2.3").ToString(), "10.1.2.3/32");
}

TEST(CidrTest, BadRangesSayWhatIsWrong) {
  for (absl::string_view bad :
       {"", "10.0.0", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/x", "::/129",
        "example.com", "10.0.0.0/8/8"}) {
    EXPECT_FALSE(ParseCidr(bad).ok()) << bad;
  }
  absl::StatusOr<Cidr> host_bits = ParseCidr("10.1.2.3/8");
  ASSERT_FALSE(host_bits.ok());
  EXPECT_NE(host_bits.status().message().find("did you mean 10.0.0.0/8?"),
            std::string::npos)
      << host_bits.status();
}

TEST(CidrTest, DenyWinsAndAnAllowListRefusesTheRest) {
  absl::StatusOr<IpRules> rules = ParseIpRules({"127.0.0.0/8"}, {"127.0.0.3"},
                                               "--allow-cidr", "--deny-cidr");
  ASSERT_TRUE(rules.ok()) << rules.status();
  EXPECT_TRUE(rules->Allows(Ip("127.0.0.2")));
  EXPECT_FALSE(rules->Allows(Ip("127.0.0.3")));  // denied inside the allow
  EXPECT_FALSE(rules->Allows(Ip("192.0.2.1")));  // not on the allow list
  absl::StatusOr<IpRules> deny_only =
      ParseIpRules({}, {"192.0.2.0/24"}, "a", "d");
  ASSERT_TRUE(deny_only.ok());
  EXPECT_TRUE(deny_only->Allows(Ip("198.51.100.1")));
  EXPECT_FALSE(deny_only->Allows(Ip("192.0.2.200")));
  EXPECT_TRUE(IpRules{}.Allows(Ip("192.0.2.1")));
  absl::StatusOr<IpRules> bad =
      ParseIpRules({"10.0.0.0/8", "nonsense"}, {}, "--allow-cidr", "x");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--allow-cidr: \"nonsense\""),
            std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace tunnel::common
