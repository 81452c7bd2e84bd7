// gateway-tunnel's flags, bound to GatewayOptions, in a library so tests can
// check them against tunnel.v1.GatewayConfig (the --config file's schema).
#ifndef TUNNEL_SERVER_GATEWAY_FLAGS_H_
#define TUNNEL_SERVER_GATEWAY_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "server/gateway.h"

namespace tunnel::server {

// What the flags fill in: the options plus the values main() checks and
// converts itself.
struct GatewayFlags {
  std::vector<std::string> trusted_proxies;
  GatewayOptions options;
  std::string config;  // --config: a tunnel.v1.GatewayConfig file
  int64_t stream_window = 0;
  int64_t max_streams = 0;
  int64_t max_tunnels = 0;
  int64_t max_agents = 0;
  int64_t http_threads = 0;
  int64_t max_connections = 0;
  int64_t public_port = 0;
  int64_t access_code_attempts = 0;
  int64_t basic_auth_cache_entries = 0;
  int64_t auth_failures = 0;
  int64_t auth_failure_ips = 0;
  int64_t max_agent_message = 0;
  int64_t max_request_head = 0;
  int64_t grpc_threads = 0;
  int64_t send_queue_bytes = 0;
  int64_t control_queue = 0;
  int64_t max_batch_bytes = 0;
  // The encrypted relay's limits (--relay-*).
  int64_t relay_max_sessions = 0;
  int64_t relay_max_clients = 0;
  int64_t relay_max_frame = 0;
  int64_t relay_ip_connections = 0;
  int64_t relay_ip_per_minute = 0;
  int64_t relay_frames_per_second = 0;
  int64_t relay_bytes_per_second = 0;
  int64_t relay_ip_frames_per_second = 0;
  int64_t relay_ip_bytes_per_second = 0;
  int64_t relay_client_buffer = 0;
  bool insecure = false;  // --insecure: plaintext on both listeners
  std::string log_level = "info";
  std::string log_format = "text";
};

// Sets `*values` to the defaults and registers every flag on `flags`
// (both must outlive flags->Parse()).
void RegisterGatewayFlags(common::FlagSet* flags, GatewayFlags* values);

// Parses the command line, the environment and the --config file (in that
// precedence), then validates and converts into values->options. Errors are
// INVALID_ARGUMENT with the message to print (exit 2).
absl::Status ParseGatewayFlags(int argc, char** argv, common::FlagSet* flags,
                               GatewayFlags* values);

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_GATEWAY_FLAGS_H_
