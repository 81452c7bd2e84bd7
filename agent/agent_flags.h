// `agent-tunnel connect` flags, bound to AgentOptions, in a library so tests
// can check them against tunnel.v1.AgentConfig (the --config file's schema).
#ifndef TUNNEL_AGENT_AGENT_FLAGS_H_
#define TUNNEL_AGENT_AGENT_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/agent.h"
#include "common/flags.h"

namespace tunnel::agent {

// --inspect's default: on, at kInspectDefaultAddr, when stdout is a
// terminal.
inline constexpr char kInspectAuto[] = "auto";
inline constexpr char kInspectDefaultAddr[] = "127.0.0.1:4040";

struct AgentFlags {
  AgentOptions options;
  std::string config;  // --config: a tunnel.v1.AgentConfig file
  std::vector<std::string> to;
  std::string slug;
  std::string access_code;  // --access-code, hashed into options.access_code
  std::string log_level = "info";
  std::string log_format = "text";
  absl::Duration drain_timeout = absl::Seconds(30);
  int64_t max_concurrent = 0;
  int64_t connections = 0;
  int64_t receive_window = 0;
  int64_t batch_bytes = 0;
  int64_t send_queue = 0;
  std::vector<std::string> allow_cidr;
  std::vector<std::string> deny_cidr;
  std::vector<std::string> basic_auth;  // --basic-auth USER:HASH
  std::string basic_auth_file;          // --basic-auth-file
  int64_t health_unhealthy_after = 0;
  int64_t health_healthy_after = 0;
  std::string ca_file;           // --ca
  std::string client_cert_file;  // --client-cert
  std::string client_key_file;   // --client-key
  bool quiet = false;
  // --inspect: "auto", "" or HOST:PORT; after parsing "" (off) or HOST:PORT
  // ("auto" resolved with stdout_is_terminal).
  std::string inspect = kInspectAuto;
  bool inspect_auto = false;        // after parsing: it was "auto"
  bool stdout_is_terminal = false;  // set by main before parsing
  int64_t inspect_max_requests = 0;
  int64_t inspect_max_body = 0;
  int64_t inspect_max_memory = 0;
  bool inspect_show_secrets = false;
  std::string state_file;  // "" after parsing: write none
  absl::Duration state_refresh = absl::Seconds(5);
};

// --state-file's default: DefaultStateFilePath(the agent id).
inline constexpr char kDefaultStateFile[] = "auto";

// Sets `*values` to the defaults and registers every `connect` flag on
// `flags` (both must outlive flags->Parse()).
void RegisterConnectFlags(common::FlagSet* flags, AgentFlags* values);

// Parses args (after "connect"), the environment and the --config file (in
// that precedence), then validates and fills values->options. Errors are
// INVALID_ARGUMENT with the message to print (exit 2). Warns (log) when the
// config file holds a secret and is readable by group or others.
absl::Status ParseConnectFlags(int argc, char** argv, int first,
                               common::FlagSet* flags, AgentFlags* values);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_AGENT_FLAGS_H_
