#include "server/gateway_flags.h"

#include <string>
#include <utility>
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

}  // namespace
}  // namespace tunnel::server

namespace tunnel::server {
namespace {

absl::Status ParseArgs(std::vector<std::string> args, GatewayFlags* values) {
  common::FlagSet flags("usage");
  RegisterGatewayFlags(&flags, values);
  args.insert(args.begin(), {"gateway-tunnel", "--insecure", "--ops-addr", "",
                             "--admin-addr", ""});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseGatewayFlags(static_cast<int>(argv.size()), argv.data(), &flags,
                           values);
}

TEST(GatewayFlagsTest, HostileInputLimitsReachTheOptions) {
  GatewayFlags v;
  ASSERT_TRUE(
      ParseArgs(
          {"--max-agent-message", "262144", "--max-request-head", "16384"}, &v)
          .ok());
  EXPECT_EQ(v.options.service.max_message_bytes, 262144);
  EXPECT_EQ(v.options.front.connection.max_request_head_bytes, 16384u);
  GatewayFlags defaults;
  ASSERT_TRUE(ParseArgs({}, &defaults).ok());
  EXPECT_EQ(defaults.options.service.max_message_bytes, 1 << 20);
  EXPECT_EQ(defaults.options.front.connection.max_request_head_bytes,
            64u * 1024);
}

TEST(GatewayFlagsTest, HostileInputLimitsOutOfRangeAreRefused) {
  for (auto [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--max-agent-message", "131071"},
           {"--max-agent-message", "67108865"},
           {"--max-request-head", "1023"},
           {"--max-request-head", "1048577"}}) {
    GatewayFlags v;
    absl::Status s = ParseArgs({flag, value}, &v);
    EXPECT_TRUE(absl::IsInvalidArgument(s))
        << flag << " " << value << ": " << s;
    EXPECT_NE(s.message().find(flag), absl::string_view::npos) << s;
  }
}

}  // namespace
}  // namespace tunnel::server
