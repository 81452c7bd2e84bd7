#include "server/gateway_flags.h"

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
