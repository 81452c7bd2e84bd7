#include "server/gateway_flags.h"

#include <string>
#include <vector>

#include "common/config_file.h"
#include "gtest/gtest.h"
#include "tunnel/v1/config.pb.h"

namespace tunnel::server {
namespace {

// Adding a gateway flag without its GatewayConfig field (or the reverse)
// fails here.
TEST(GatewayFlagsTest, ConfigMessageMatchesTheFlagsOneToOne) {
  GatewayFlags values;
  common::FlagSet flags("usage");
  RegisterGatewayFlags(&flags, &values);
  absl::Status s = common::CheckSchemaMatchesFlags(
      *tunnel::v1::GatewayConfig::descriptor(), flags);
  EXPECT_TRUE(s.ok()) << s;
}

absl::Status ParseArgs(std::vector<std::string> args, GatewayFlags* values) {
  common::FlagSet flags("usage");
  RegisterGatewayFlags(&flags, values);
  args.insert(args.begin(), "gateway-tunnel");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseGatewayFlags(static_cast<int>(argv.size()), argv.data(), &flags,
                           values);
}

TEST(GatewayFlagsTest, AuthFailureLimitIsConfigurable) {
  GatewayFlags values;
  ASSERT_TRUE(ParseArgs({"--insecure", "--auth-failures-per-minute", "3",
                         "--auth-failure-max-ips", "7"},
                        &values)
                  .ok());
  EXPECT_EQ(values.options.service.auth_failures_per_minute, 3);
  EXPECT_EQ(values.options.service.auth_failure_max_ips, 7u);
  GatewayFlags off;
  ASSERT_TRUE(
      ParseArgs({"--insecure", "--auth-failures-per-minute", "0"}, &off).ok());
  EXPECT_EQ(off.options.service.auth_failures_per_minute, 0);
}

TEST(GatewayFlagsTest, BadAuthFailureLimitsAreRefused) {
  GatewayFlags negative;
  absl::Status s =
      ParseArgs({"--insecure", "--auth-failures-per-minute", "-1"}, &negative);
  EXPECT_EQ(s.message(),
            "--auth-failures-per-minute must be between 0 (no limit) and "
            "1000000");
  GatewayFlags no_ips;
  s = ParseArgs({"--insecure", "--auth-failure-max-ips", "0"}, &no_ips);
  EXPECT_EQ(s.message(), "--auth-failure-max-ips must be at least 1");
}

}  // namespace
}  // namespace tunnel::server
