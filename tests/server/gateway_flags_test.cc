#include "server/gateway_flags.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
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
  args.insert(args.begin(), "gateway-tunnel");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  common::FlagSet flags("usage");
  RegisterGatewayFlags(&flags, values);
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

TEST(GatewayFlagsTest, FiberTrimIntervalReachesTheFrontDoorAndIsChecked) {
  GatewayFlags defaults;
  ASSERT_TRUE(ParseArgs({"--insecure"}, &defaults).ok());
  EXPECT_EQ(defaults.options.front.connection.fiber_trim_interval,
            absl::Seconds(1));
  GatewayFlags set;
  ASSERT_TRUE(
      ParseArgs({"--insecure", "--http-fiber-trim-interval", "5s"}, &set).ok());
  EXPECT_EQ(set.options.front.connection.fiber_trim_interval, absl::Seconds(5));
  for (const char* bad : {"0s", "5ms", "2h"}) {
    GatewayFlags v;
    absl::Status s =
        ParseArgs({"--insecure", "--http-fiber-trim-interval", bad}, &v);
    EXPECT_TRUE(absl::StartsWith(
        s.message(), "--http-fiber-trim-interval must be between 10ms and 1h"))
        << bad << ": " << s;
  }
}

TEST(GatewayFlagsTest, TrustedProxiesReachTheFrontDoorAndAreChecked) {
  GatewayFlags values;
  ASSERT_TRUE(ParseArgs({"--insecure", "--trusted-proxy", "10.0.0.0/8",
                         "--trusted-proxy", "fd00::/8"},
                        &values)
                  .ok());
  ASSERT_EQ(values.options.front.trusted_proxies.size(), 2u);
  EXPECT_EQ(values.options.front.trusted_proxies[1].ToString(), "fd00::/8");
  GatewayFlags bad;
  absl::Status s = ParseArgs({"--insecure", "--trusted-proxy", "10.0.0"}, &bad);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--trusted-proxy: \"10.0.0\" is not a CIDR"),
            std::string::npos)
      << s;
}

TEST(GatewayFlagsTest, LimitsDefaultToUnlimitedAndReachTheFrontDoor) {
  GatewayFlags defaults;
  ASSERT_TRUE(ParseArgs({"--insecure"}, &defaults).ok());
  const httpfront::FrontDoorOptions& d = defaults.options.front;
  EXPECT_EQ(d.tunnel_requests_per_minute, 0);
  EXPECT_EQ(d.tunnel_concurrent_requests, 0);
  EXPECT_EQ(d.connection.max_connections_per_ip, 0);
  EXPECT_EQ(d.connection.connections_per_ip_per_minute, 0);
  EXPECT_EQ(d.max_request_body, 0);
  EXPECT_EQ(d.max_response_body, 0);
  EXPECT_EQ(d.connection.client_ip_capacity, 100000);
  EXPECT_EQ(defaults.options.service.max_tunnels_per_agent, 16u);

  GatewayFlags set;
  absl::Status s = ParseArgs(
      {"--insecure", "--tunnel-requests-per-minute=600",
       "--tunnel-concurrent-requests=8", "--max-connections-per-ip=64",
       "--connections-per-ip-per-minute=300", "--max-request-body=1048576",
       "--max-response-body=2097152", "--max-tunnels-per-agent=2",
       "--max-tracked-client-ips=5000"},
      &set);
  ASSERT_TRUE(s.ok()) << s;
  const httpfront::FrontDoorOptions& f = set.options.front;
  EXPECT_EQ(f.tunnel_requests_per_minute, 600);
  EXPECT_EQ(f.tunnel_concurrent_requests, 8);
  EXPECT_EQ(f.connection.max_connections_per_ip, 64);
  EXPECT_EQ(f.connection.connections_per_ip_per_minute, 300);
  EXPECT_EQ(f.max_request_body, 1048576);
  EXPECT_EQ(f.max_response_body, 2097152);
  EXPECT_EQ(f.connection.client_ip_capacity, 5000);
  EXPECT_EQ(set.options.service.max_tunnels_per_agent, 2u);
}

TEST(GatewayFlagsTest, NegativeLimitsAreRefusedByName) {
  absl::Status s;
  for (const char* flag :
       {"--tunnel-requests-per-minute=-1", "--tunnel-concurrent-requests=-1",
        "--max-connections-per-ip=-1", "--connections-per-ip-per-minute=-1",
        "--max-request-body=-1", "--max-response-body=-1"}) {
    GatewayFlags values;
    s = ParseArgs({"--insecure", flag}, &values);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << flag << ": " << s;
    std::string name(flag);
    name = name.substr(0, name.find('='));
    EXPECT_NE(s.message().find(name), std::string::npos) << s;
    // Only the flag that is wrong is named.
    EXPECT_EQ(absl::StrContains(s.message().substr(name.size()), "--"), false)
        << s;
  }
  GatewayFlags no_agents;
  s = ParseArgs({"--insecure", "--max-agents=0"}, &no_agents);
  EXPECT_EQ(s.message(), "--max-agents must be at least 1 (it is 0)");
  GatewayFlags zero;
  s = ParseArgs({"--insecure", "--max-tracked-client-ips=0"}, &zero);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("--max-tracked-client-ips"), std::string::npos);
  GatewayFlags values;
  EXPECT_FALSE(
      ParseArgs({"--insecure", "--max-request-body=lots"}, &values).ok());
}

TEST(GatewayFlagsTest, AgentQueueBoundsReachTheSessionLimits) {
  GatewayFlags values;
  ASSERT_TRUE(ParseArgs({"--insecure", "--agent-send-queue=2097152",
                         "--agent-control-queue=128"},
                        &values)
                  .ok());
  EXPECT_EQ(values.options.service.limits.max_queued_bytes, 2097152u);
  EXPECT_EQ(values.options.service.limits.max_queued_control, 128u);
  GatewayFlags small;
  absl::Status s = ParseArgs({"--insecure", "--agent-send-queue=1000"}, &small);
  EXPECT_EQ(s.message(),
            "--agent-send-queue must be between 1048576 and 1073741824");
}

TEST(GatewayFlagsTest, HostileInputLimitsReachTheOptions) {
  GatewayFlags v;
  ASSERT_TRUE(ParseArgs({"--insecure", "--max-agent-message", "262144",
                         "--max-request-head", "16384", "--grpc-threads", "3"},
                        &v)
                  .ok());
  EXPECT_EQ(v.options.service.max_message_bytes, 262144);
  EXPECT_EQ(v.options.front.connection.max_request_head_bytes, 16384u);
  EXPECT_EQ(v.options.service.grpc_threads, 3);
  GatewayFlags defaults;
  ASSERT_TRUE(ParseArgs({"--insecure"}, &defaults).ok());
  EXPECT_EQ(defaults.options.service.max_message_bytes, 1 << 20);
  EXPECT_EQ(defaults.options.front.connection.max_request_head_bytes,
            64u * 1024);
  EXPECT_EQ(defaults.options.service.grpc_threads, 1);
}

TEST(GatewayFlagsTest, HostileInputLimitsOutOfRangeAreRefused) {
  for (auto [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--max-agent-message", "131071"},
           {"--max-agent-message", "67108865"},
           {"--max-request-head", "1023"},
           {"--max-request-head", "1048577"},
           {"--grpc-threads", "0"},
           {"--grpc-threads", "65"}}) {
    GatewayFlags v;
    absl::Status s = ParseArgs({"--insecure", flag, value}, &v);
    EXPECT_TRUE(absl::IsInvalidArgument(s))
        << flag << " " << value << ": " << s;
    EXPECT_NE(s.message().find(flag), absl::string_view::npos) << s;
  }
}

TEST(GatewayFlagsTest, ClusterFlagsAreCheckedAndFilledIn) {
  GatewayFlags v;
  ASSERT_TRUE(ParseArgs({"--insecure", "--grpc-addr", "10.0.0.5:8080",
                         "--cluster-redis", "redis://127.0.0.1:6380/2",
                         "--cluster-secret-file", "cluster.secret"},
                        &v)
                  .ok());
  // The advertised address defaults to a --grpc-addr that names a host.
  EXPECT_EQ(v.options.cluster.advertise, "10.0.0.5:8080");
  EXPECT_EQ(v.options.cluster.heartbeat, absl::Seconds(1));

  for (const auto& [args, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--cluster-id", "x"},
            "--cluster-advertise, --cluster-id and --cluster-secret-file need "
            "--cluster-redis"},
           {{"--cluster-redis", "http://r:6379"}, "not a redis:// URL"},
           {{"--cluster-redis", "redis://r:6379/x"},
            "the database must be a number"},
           {{"--cluster-redis", "redis://r"}, "needs --cluster-secret-file"},
           {{"--cluster-redis", "redis://r", "--cluster-secret-file", "s"},
            "needs --cluster-advertise HOST:PORT"},
           {{"--cluster-redis", "redis://r", "--cluster-secret-file", "s",
             "--cluster-advertise", "10.0.0.5:1", "--cluster-lease", "1s"},
            "--cluster-lease must be at least twice --cluster-heartbeat"},
           {{"--cluster-redis", "redis://r", "--cluster-secret-file", "s",
             "--cluster-advertise", "10.0.0.5:1", "--cluster-id", "a b"},
            "--cluster-id must be at most 128 characters without spaces"},
       }) {
    GatewayFlags bad;
    std::vector<std::string> all = {"--insecure"};
    all.insert(all.end(), args.begin(), args.end());
    absl::Status s = ParseArgs(all, &bad);
    EXPECT_FALSE(s.ok()) << message;
    EXPECT_TRUE(absl::StrContains(s.message(), message)) << s.message();
  }
}

TEST(GatewayFlagsTest, RelayLimitsReachTheOptionsAndAreChecked) {
  GatewayFlags v;
  ASSERT_TRUE(ParseArgs({"--insecure", "--relay-max-sessions",
                         "7",          "--relay-max-clients-per-session",
                         "3",          "--relay-max-frame-bytes",
                         "100000",     "--relay-max-connections-per-ip",
                         "5",          "--relay-connections-per-ip-per-minute",
                         "9",          "--relay-frames-per-second",
                         "11",         "--relay-bytes-per-second",
                         "12345",      "--relay-ip-frames-per-second",
                         "13",         "--relay-ip-bytes-per-second",
                         "54321",      "--relay-client-buffer",
                         "2097152",    "--relay-idle-timeout",
                         "30s"},
                        &v)
                  .ok());
  EXPECT_EQ(v.options.relay.max_sessions, 7u);
  EXPECT_EQ(v.options.relay.max_clients_per_session, 3u);
  EXPECT_EQ(v.options.relay.max_frame_bytes, 100000u);
  const httpfront::RelayFrontOptions& rf = v.options.front.relay_options;
  EXPECT_EQ(rf.max_connections_per_ip, 5);
  EXPECT_EQ(rf.connections_per_ip_per_minute, 9);
  EXPECT_EQ(rf.frames_per_second, 11);
  EXPECT_EQ(rf.bytes_per_second, 12345);
  EXPECT_EQ(rf.ip_frames_per_second, 13);
  EXPECT_EQ(rf.ip_bytes_per_second, 54321);
  EXPECT_EQ(rf.client_buffer_bytes, 2097152u);
  EXPECT_EQ(rf.idle_timeout, absl::Seconds(30));
  GatewayFlags defaults;
  ASSERT_TRUE(ParseArgs({"--insecure"}, &defaults).ok());
  EXPECT_GT(defaults.options.relay.max_sessions, 0u) << "on by default";
  for (const auto& [args, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--relay-max-clients-per-session", "0"},
            "--relay-max-clients-per-session must be between 1 and 10000"},
           {{"--relay-max-frame-bytes", "1000"},
            "--relay-max-frame-bytes must be between 66560"},
           {{"--max-agent-message", "131072", "--max-batch-bytes", "65536",
             "--relay-max-frame-bytes", "131072"},
            "--relay-max-frame-bytes must be at most --max-agent-message"},
           {{"--relay-client-buffer", "10"},
            "--relay-client-buffer must be between 1048576"},
           {{"--relay-idle-timeout", "1s"},
            "--relay-idle-timeout must be at least 4s"},
           {{"--relay-frames-per-second", "-1"},
            "--relay-frames-per-second must be between 0"},
       }) {
    GatewayFlags bad;
    std::vector<std::string> all = {"--insecure"};
    all.insert(all.end(), args.begin(), args.end());
    absl::Status st = ParseArgs(all, &bad);
    EXPECT_FALSE(st.ok()) << message;
    EXPECT_TRUE(absl::StrContains(st.message(), message)) << st.message();
  }
}

}  // namespace
}  // namespace tunnel::server
