// The key failed agent authentications are counted under: one per IPv4
// address, one per IPv6 /64, IPv4-mapped IPv6 as IPv4.
#include "gtest/gtest.h"
#include "server/tunnel_service.h"

namespace tunnel::server {
namespace {

TEST(AuthLimitKeyTest, IPv4IsTheAddressWithoutThePort) {
  EXPECT_EQ(AuthLimitKey("ipv4:127.0.0.1:43210"), "127.0.0.1");
  EXPECT_EQ(AuthLimitKey("ipv4:203.0.113.7:1"), "203.0.113.7");
  EXPECT_NE(AuthLimitKey("ipv4:127.0.0.1:1"), AuthLimitKey("ipv4:127.0.0.2:1"));
}

TEST(AuthLimitKeyTest, IPv6CountsPerSlash64) {
  EXPECT_EQ(AuthLimitKey("ipv6:[2001:db8:1:2:aaaa::9]:443"),
            "2001:db8:1:2::/64");
  EXPECT_EQ(AuthLimitKey("ipv6:[2001:db8:1:2:bbbb::1]:1"),
            AuthLimitKey("ipv6:[2001:db8:1:2:aaaa::9]:2"));
  EXPECT_NE(AuthLimitKey("ipv6:[2001:db8:1:3::1]:1"),
            AuthLimitKey("ipv6:[2001:db8:1:2::1]:1"));
  EXPECT_EQ(AuthLimitKey("ipv6:[::1]:5"), "::/64");
  // What gRPC 1.51 really reports: the brackets percent-encoded, and the
  // port never part of the key.
  EXPECT_EQ(AuthLimitKey("ipv6:%5B::1%5D:49882"), "::/64");
  EXPECT_EQ(AuthLimitKey("ipv6:%5B2001:db8:1:2::9%5D:1"),
            AuthLimitKey("ipv6:%5B2001:db8:1:2::9%5D:2"));
  EXPECT_EQ(AuthLimitKey("ipv6:[fe80::1%25eth0]:5"), "fe80::/64");
}

TEST(AuthLimitKeyTest, MappedIPv4CountsAsIPv4) {
  EXPECT_EQ(AuthLimitKey("ipv6:[::ffff:127.0.0.1]:80"), "127.0.0.1");
  EXPECT_EQ(AuthLimitKey("ipv6:%5B::ffff:10.1.2.3%5D:80"), "10.1.2.3");
}

TEST(AuthLimitKeyTest, OtherPeersAreUsedWhole) {
  EXPECT_EQ(AuthLimitKey("unix:/run/gw.sock"), "unix:/run/gw.sock");
  EXPECT_EQ(AuthLimitKey("ipv6:[not-an-address]:1"), "[not-an-address]:1");
}

}  // namespace
}  // namespace tunnel::server
