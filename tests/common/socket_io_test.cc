// Address parsing shared by the gateway's listeners and the agent's
// inspector.
#include "common/socket_io.h"

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

TEST(SocketIoTest, SplitHostPortTakesV4V6AndAnyInterface) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("127.0.0.1:4040", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 4040);
  ASSERT_TRUE(SplitHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  ASSERT_TRUE(SplitHostPort(":8080", &host, &port).ok());
  EXPECT_EQ(host, "0.0.0.0");
  EXPECT_NE(SplitHostPort("4040", &host, &port)
                .message()
                .find("needs the form host:port"),
            std::string::npos);
  EXPECT_NE(
      SplitHostPort("h:70000", &host, &port).message().find("invalid port"),
      std::string::npos);
}

// What the inspector warns about when it listens elsewhere, and which Host
// headers it answers.
TEST(SocketIoTest, LoopbackHosts) {
  for (const char* h : {"127.0.0.1", "127.1.2.3", "::1", "localhost"}) {
    EXPECT_TRUE(IsLoopbackHost(h)) << h;
  }
  for (const char* h : {"0.0.0.0", "192.168.1.10", "::", "example.com",
                        "localhost.example.com", "128.0.0.1", ""}) {
    EXPECT_FALSE(IsLoopbackHost(h)) << h;
  }
}

TEST(SocketIoTest, IpAddressesAreNotNames) {
  for (const char* h : {"192.168.1.10", "::1", "2001:db8::1", "127.0.0.1"}) {
    EXPECT_TRUE(IsIpAddress(h)) << h;
  }
  for (const char* h : {"localhost", "rebind.example", "192.168.1", ""}) {
    EXPECT_FALSE(IsIpAddress(h)) << h;
  }
}

}  // namespace
}  // namespace tunnel::common
