#include "server/gateway_flags.h"

#include "absl/strings/str_cat.h"
#include "common/cidr.h"
#include "common/config_file.h"
#include "common/flow_control.h"
#include "common/log.h"
#include "tunnel/v1/config.pb.h"

namespace tunnel::server {

void RegisterGatewayFlags(common::FlagSet* flags, GatewayFlags* v) {
  GatewayOptions& o = v->options;
  o.credentials_path = "tunnel-credentials.txtpb";
  o.ops_addr = "127.0.0.1:8083";
  o.admin_addr = "127.0.0.1:8081";
  v->stream_window = o.service.limits.gateway_receive_window;
  v->max_streams = static_cast<int64_t>(o.service.limits.max_streams);
  v->max_tunnels = static_cast<int64_t>(o.service.max_tunnels_per_agent);
  v->max_agents = static_cast<int64_t>(o.service.max_agents);
  v->http_threads = o.front.connection.threads;
  v->max_connections = o.front.connection.max_connections;
  v->public_port = o.public_port;
  v->access_code_attempts = o.front.access_code_attempts_per_minute;
  v->basic_auth_cache_entries =
      static_cast<int64_t>(o.front.basic_auth_cache_entries);
  v->auth_failures = o.service.auth_failures_per_minute;
  v->auth_failure_ips = static_cast<int64_t>(o.service.auth_failure_max_ips);
  v->max_agent_message = o.service.max_message_bytes;
  v->max_request_head =
      static_cast<int64_t>(o.front.connection.max_request_head_bytes);
  v->grpc_threads = o.service.grpc_threads;
  v->send_queue_bytes = static_cast<int64_t>(o.service.limits.max_queued_bytes);
  v->control_queue = static_cast<int64_t>(o.service.limits.max_queued_control);
  v->max_batch_bytes = static_cast<int64_t>(o.service.max_batch_bytes);
  const httpfront::RelayFrontOptions& rf = o.front.relay_options;
  v->relay_max_sessions = static_cast<int64_t>(o.relay.max_sessions);
  v->relay_max_clients = static_cast<int64_t>(o.relay.max_clients_per_session);
  v->relay_max_frame = o.relay.max_frame_bytes;
  v->relay_ip_connections = rf.max_connections_per_ip;
  v->relay_ip_per_minute = rf.connections_per_ip_per_minute;
  v->relay_frames_per_second = static_cast<int64_t>(rf.frames_per_second);
  v->relay_bytes_per_second = static_cast<int64_t>(rf.bytes_per_second);
  v->relay_ip_frames_per_second = static_cast<int64_t>(rf.ip_frames_per_second);
  v->relay_ip_bytes_per_second = static_cast<int64_t>(rf.ip_bytes_per_second);
  v->relay_client_buffer = static_cast<int64_t>(rf.client_buffer_bytes);

  flags->String("config", &v->config,
                "config file (tunnel.v1.GatewayConfig, text format or .json); "
                "flags and environment override it");
  flags->String("grpc-addr", &o.grpc_addr, "address agents connect to");
  flags->String("http-addr", &o.http_addr, "address visitors connect to");
  flags->String("ops-addr", &o.ops_addr,
                "address of /healthz and /metrics (empty: none); keep it "
                "private");
  flags->String("admin-addr", &o.admin_addr,
                "address of the admin API, tunnel.v1.AdminService (empty: "
                "none); keep it private");
  flags->String("admin-token-file", &o.admin_token_file,
                "file holding the admin API's bearer token, mode 0600 (make "
                "one with `tunnelctl admin-token issue --file FILE`); without "
                "it the admin API refuses every call");
  flags->String("domain", &o.service.domain,
                "base domain for subdomain routing (<slug>.<domain>)");
  flags->String("credentials", &o.credentials_path,
                "credentials file written by `tunnelctl token issue`");
  flags->Duration("response-timeout", &o.front.response_timeout,
                  "504 when the agent sends no response head within this");
  flags->Duration("body-idle-timeout", &o.front.body_idle_timeout,
                  "abort a request or response body that stalls this long");
  flags->Duration("auth-skew", &o.auth_skew,
                  "accepted clock difference between agent and gateway");
  flags->Int("auth-failures-per-minute", &v->auth_failures,
             "failed agent authentications one source IP (IPv6: /64) may "
             "have per minute; beyond, its Connect calls are refused "
             "unchecked until the minute is over (0: no limit)");
  flags->Int("auth-failure-max-ips", &v->auth_failure_ips,
             "source IPs remembered for --auth-failures-per-minute (memory "
             "bound; expired, then oldest entries are dropped)");
  flags->Int("stream-window", &v->stream_window,
             "per-stream flow-control window in bytes (>= 65536)");
  flags->Int("max-streams-per-agent", &v->max_streams,
             "requests in flight per agent before visitors get 503");
  flags->Int("max-tunnels-per-agent", &v->max_tunnels,
             "tunnels one agent may open");
  flags->Int("max-agents", &v->max_agents,
             "agents connected at once; more are told to retry later");
  flags->Duration("busy-retry-after", &o.service.busy_retry_after,
                  "retry hint for agents refused at --max-agents");
  flags->Int("http-threads", &v->http_threads,
             "event-loop threads serving visitor connections (0: one per "
             "CPU); a connection never holds a thread of its own");
  flags->Int("max-connections", &v->max_connections,
             "visitor connections open at once; beyond, a new one gets 503 "
             "and is closed (0: as many as the open-file limit allows, at "
             "most 50000)");
  flags->Duration("http-fiber-trim-interval",
                  &o.front.connection.fiber_trim_interval,
                  "how often each event loop gives back the request-fiber "
                  "stacks a burst left idle: it keeps as many stacks as were "
                  "busy at once since its last trim, and never trims below 64 "
                  "idle (10ms to 1h)");
  flags->Duration("tls-handshake-timeout",
                  &o.front.connection.tls_handshake_timeout,
                  "a visitor's TLS handshake must finish within this");
  flags->String("tls-cert", &o.tls.cert_file,
                "PEM certificate chain for both listeners (gRPC and HTTPS)");
  flags->String("tls-key", &o.tls.key_file,
                "PEM private key of --tls-cert (unencrypted)");
  flags->String("client-ca", &o.tls.client_ca_file,
                "PEM CA certificate(s); agents must present a certificate "
                "signed by one (mTLS)");
  flags->Bool("insecure", &v->insecure,
              "serve both listeners without TLS (plaintext; only behind a "
              "TLS-terminating proxy or for local tests)");
  flags->String("public-scheme", &o.public_scheme,
                "scheme in the public URLs told to agents (default: https "
                "with TLS, http with --insecure)");
  flags->Int("public-port", &v->public_port,
             "port in the public URLs (-1: the bound HTTP port, 0: none)");
  flags->Duration("read-timeout", &o.front.connection.read_timeout,
                  "a request head must arrive whole within this (else 408), "
                  "and a request body may not stall longer");
  flags->Duration("write-timeout", &o.front.connection.write_timeout,
                  "visitor not reading this long: connection closed");
  flags->Duration("keep-alive-timeout", &o.front.connection.keep_alive_timeout,
                  "idle visitor connections are closed after this");
  flags->Duration("upgrade-idle-timeout", &o.front.upgrade_idle_timeout,
                  "an upgraded connection (WebSocket) idle this long in one "
                  "direction is closed");
  flags->Duration("access-cookie-ttl", &o.front.access_cookie_ttl,
                  "how long the cookie a correct access code earns stays "
                  "valid (a gateway restart ends every cookie sooner)");
  flags->Int("access-code-attempts-per-minute", &v->access_code_attempts,
             "wrong access codes or basic-auth passwords one client IP may "
             "try per tunnel and minute; beyond: 429");
  flags->Duration("basic-auth-cache-ttl", &o.front.basic_auth_cache_ttl,
                  "tunnels with basic auth: a verified user and password "
                  "pass this long without being hashed again (0: hash "
                  "every request)");
  flags->Int("basic-auth-cache-entries", &v->basic_auth_cache_entries,
             "verified basic-auth credentials remembered at once (0: none)");
  flags->Int("tunnel-requests-per-minute", &o.front.tunnel_requests_per_minute,
             "requests one tunnel accepts per minute (fixed windows), then "
             "429 with Retry-After; 0: unlimited");
  flags->Int("tunnel-concurrent-requests", &o.front.tunnel_concurrent_requests,
             "requests one tunnel serves at once, then 429; 0: unlimited");
  flags->Int("max-connections-per-ip",
             &o.front.connection.max_connections_per_ip,
             "visitor connections one client IP may hold open, then 429 "
             "and close; 0: unlimited");
  flags->Int("connections-per-ip-per-minute",
             &o.front.connection.connections_per_ip_per_minute,
             "new visitor connections one client IP may open per minute, "
             "then 429 and close; 0: unlimited");
  flags->Int("max-tracked-client-ips", &o.front.connection.client_ip_capacity,
             "client IPs the per-IP limits remember at most (idle ones "
             "beyond are forgotten, expired windows first)");
  flags->Repeated("trusted-proxy", &v->trusted_proxies,
                  "a CIDR range of proxies in front of the gateway whose "
                  "X-Forwarded-For says who the visitor is (for the IP rules; "
                  "repeatable)");
  flags->Int("max-request-body", &o.front.max_request_body,
             "largest request body in bytes, else 413; 0: unlimited");
  flags->Int("max-response-body", &o.front.max_response_body,
             "largest response body in bytes, else 502 or a cut connection; "
             "0: unlimited");
  flags->Int("max-agent-message", &v->max_agent_message,
             "largest gRPC message accepted from an agent, in bytes; a "
             "bigger one ends its session (RESOURCE_EXHAUSTED)");
  flags->Int("max-batch-bytes", &v->max_batch_bytes,
             "largest batch of envelopes in one gRPC message either way, in "
             "bytes (the smaller of this and the agent's offer is used); 0: "
             "one envelope per message");
  flags->Int("grpc-threads", &v->grpc_threads,
             "threads that run agents' gRPC traffic (each agent stays on "
             "one); more only helps with many busy agents on many cores");
  flags->Int("agent-send-queue", &v->send_queue_bytes,
             "bytes (bodies and request heads) queued towards one agent "
             "before uploads wait and new requests get 503");
  flags->Int("agent-control-queue", &v->control_queue,
             "control messages (pongs, window updates, closes) queued "
             "towards one agent before its session ends: it is not reading");
  flags->Int("max-request-head", &v->max_request_head,
             "largest visitor request line + headers, in bytes; a bigger "
             "head gets 431 and the connection is closed");
  flags->Duration("heartbeat-interval", &o.service.heartbeat_interval,
                  "how often each agent is pinged");
  flags->Duration("heartbeat-timeout", &o.heartbeat_timeout,
                  "an agent silent this long is disconnected and its "
                  "requests fail");
  flags->Duration("drain-timeout", &o.drain_timeout,
                  "on SIGTERM/SIGINT (and for an agent whose token expired), "
                  "how long requests in flight may finish");
  flags->Duration("drain-retry-after", &o.drain_retry_after,
                  "Retry-After for visitors and reconnect hint for agents "
                  "while draining");
  flags->String("cluster-redis", &o.cluster.redis_url,
                "redis://[:PASSWORD@]HOST[:PORT][/DB] of the directory "
                "shared by the replicas of a gateway cluster (empty: a single "
                "gateway, no Redis)");
  flags->String("cluster-advertise", &o.cluster.advertise,
                "HOST:PORT where the other replicas reach this one's gRPC "
                "listener (default: --grpc-addr when it names a host)");
  flags->String("cluster-id", &o.cluster.id,
                "this replica's name, unique in the cluster (default: the "
                "host name and the --cluster-advertise port)");
  flags->String("cluster-secret-file", &o.cluster_secret_file,
                "file holding the secret every replica shares, mode 0600 "
                "(`tunnelctl admin-token issue --file FILE` makes one); it "
                "signs the requests replicas forward to each other");
  flags->Duration("cluster-heartbeat", &o.cluster.heartbeat,
                  "how often this replica renews its lease and reads the "
                  "directory (the staleness of the others' view)");
  flags->Duration("cluster-lease", &o.cluster.lease,
                  "a replica that stops renewing disappears from the "
                  "directory this long after its last heartbeat");
  flags->Duration("cluster-redis-timeout", &o.cluster.redis_timeout,
                  "connecting to Redis and each of its answers");
  flags->Duration("cluster-forward-timeout", &o.cluster.forward_open_timeout,
                  "a request forwarded to another replica must be open there "
                  "within this, else 502");
  flags->String("cluster-ca", &o.cluster.ca_file,
                "with TLS: PEM CA the other replicas' certificates are "
                "checked against (default: --tls-cert itself)");
  flags->String("cluster-tls-name", &o.cluster.tls_name,
                "with TLS: the name the other replicas' certificates carry "
                "(default: the host of their --cluster-advertise)");
  flags->Int("relay-max-sessions", &v->relay_max_sessions,
             "encrypted shares (agent-tunnel share) hosted at once; 0: no "
             "relay (agents asking to host shares are refused)");
  flags->Int("relay-max-clients-per-session", &v->relay_max_clients,
             "browsers connected to one share at once");
  flags->Int("relay-max-frame-bytes", &v->relay_max_frame,
             "largest relay frame either way, in bytes; a browser sending "
             "a bigger one is disconnected (WebSocket close 1009)");
  flags->Int("relay-max-connections-per-ip", &v->relay_ip_connections,
             "relay WebSocket connections one IP may hold open; 0: "
             "unlimited");
  flags->Int("relay-connections-per-ip-per-minute", &v->relay_ip_per_minute,
             "new relay WebSocket connections per IP and minute; 0: "
             "unlimited");
  flags->Int("relay-frames-per-second", &v->relay_frames_per_second,
             "frames per second one browser connection may send before "
             "reading from it pauses; 0: unlimited");
  flags->Int("relay-bytes-per-second", &v->relay_bytes_per_second,
             "bytes per second one browser connection may send before "
             "reading from it pauses; 0: unlimited");
  flags->Int("relay-ip-frames-per-second", &v->relay_ip_frames_per_second,
             "frames per second all of one IP's relay connections may send "
             "together; 0: unlimited");
  flags->Int("relay-ip-bytes-per-second", &v->relay_ip_bytes_per_second,
             "bytes per second all of one IP's relay connections may send "
             "together; 0: unlimited");
  flags->Int("relay-client-buffer", &v->relay_client_buffer,
             "bytes of frames waiting to be written to one browser before "
             "it counts as stuck and is disconnected");
  flags->Duration("relay-idle-timeout", &o.front.relay_options.idle_timeout,
                  "a relay WebSocket silent this long is closed (the gateway "
                  "pings browsers at a quarter of it)");
  flags->String("log-level", &v->log_level, "debug, info, warning or error");
  flags->String("log-format", &v->log_format,
                "text (lines for people) or json (one object per line)");
}

namespace {

// The --relay-* flags: in range.
absl::Status CheckRelayFlags(const GatewayFlags* v) {
  struct Range {
    const char* flag;
    int64_t value;
    int64_t min;
    int64_t max;
  };
  const Range ranges[] = {
      {"--relay-max-sessions", v->relay_max_sessions, 0, 10000000},
      {"--relay-max-clients-per-session", v->relay_max_clients, 1, 10000},
      {"--relay-max-frame-bytes", v->relay_max_frame,
       static_cast<int64_t>(common::kMaxChunkBytes) + 1024, 16 << 20},
      {"--relay-max-connections-per-ip", v->relay_ip_connections, 0, 1000000},
      {"--relay-connections-per-ip-per-minute", v->relay_ip_per_minute, 0,
       1000000},
      {"--relay-frames-per-second", v->relay_frames_per_second, 0, 10000000},
      {"--relay-bytes-per-second", v->relay_bytes_per_second, 0, 1LL << 40},
      {"--relay-ip-frames-per-second", v->relay_ip_frames_per_second, 0,
       10000000},
      {"--relay-ip-bytes-per-second", v->relay_ip_bytes_per_second, 0,
       1LL << 40},
      {"--relay-client-buffer", v->relay_client_buffer, 1 << 20, 1LL << 30},
  };
  for (const Range& r : ranges) {
    if (r.value < r.min || r.value > r.max) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.flag, " must be between ", r.min, " and ", r.max,
                       ", not ", r.value));
    }
  }
  if (v->relay_max_frame > v->max_agent_message - 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--relay-max-frame-bytes must be at most --max-agent-message (",
        v->max_agent_message, ") less 1024"));
  }
  if (v->options.front.relay_options.idle_timeout < absl::Seconds(4)) {
    return absl::InvalidArgumentError(
        "--relay-idle-timeout must be at least 4s");
  }
  return absl::OkStatus();
}

// The --cluster-* flags: checked, and the defaults that depend on others
// filled in.
absl::Status CheckClusterFlags(GatewayOptions* o) {
  ClusterOptions& c = o->cluster;
  if (c.redis_url.empty()) {
    if (!c.advertise.empty() || !c.id.empty() ||
        !o->cluster_secret_file.empty()) {
      return absl::InvalidArgumentError(
          "--cluster-advertise, --cluster-id and --cluster-secret-file need "
          "--cluster-redis");
    }
    return absl::OkStatus();
  }
  if (absl::StatusOr<RedisAddress> a = ParseRedisUrl(c.redis_url); !a.ok()) {
    return a.status();
  }
  if (o->cluster_secret_file.empty()) {
    return absl::InvalidArgumentError(
        "--cluster-redis needs --cluster-secret-file (the secret every "
        "replica shares; `tunnelctl admin-token issue --file FILE` makes "
        "one)");
  }
  if (c.advertise.empty()) {
    std::string host;
    int port = 0;
    if (!SplitHostPort(o->grpc_addr, &host, &port).ok() || host.empty() ||
        host == "0.0.0.0" || host == "::") {
      return absl::InvalidArgumentError(
          "--cluster-redis needs --cluster-advertise HOST:PORT (where the "
          "other replicas reach this one): --grpc-addr names no single "
          "host and port");
    }
    c.advertise = o->grpc_addr;
  }
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(c.advertise, &host, &port); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-advertise \"", c.advertise,
                     "\" must be HOST:PORT (port 0: the bound gRPC port)"));
  }
  if (c.id.size() > 128 || c.id.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "--cluster-id must be at most 128 characters without spaces");
  }
  if (c.heartbeat < absl::Milliseconds(50)) {
    return absl::InvalidArgumentError(
        "--cluster-heartbeat must be at least 50ms");
  }
  if (c.lease < 2 * c.heartbeat) {
    return absl::InvalidArgumentError(
        "--cluster-lease must be at least twice --cluster-heartbeat");
  }
  if (c.redis_timeout < absl::Milliseconds(10) ||
      c.redis_timeout >= c.heartbeat * 4) {
    return absl::InvalidArgumentError(
        "--cluster-redis-timeout must be at least 10ms and less than four "
        "--cluster-heartbeat");
  }
  if (c.forward_open_timeout < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError(
        "--cluster-forward-timeout must be at least 100ms");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseGatewayFlags(int argc, char** argv, common::FlagSet* flags,
                               GatewayFlags* v) {
  absl::StatusOr<std::vector<std::string>> rest = flags->Parse(argc, argv);
  if (!rest.ok()) return rest.status();
  if (flags->help_requested()) return absl::OkStatus();
  if (!rest->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", (*rest)[0], "\" (see --help)"));
  }
  if (!v->config.empty()) {
    tunnel::v1::GatewayConfig config;
    if (absl::Status s = common::ApplyConfigFile(v->config, &config, flags);
        !s.ok()) {
      return s;
    }
  }
  for (const std::string& text : v->trusted_proxies) {
    absl::StatusOr<common::Cidr> c = common::ParseCidr(text);
    if (!c.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--trusted-proxy: ", c.status().message()));
    }
    v->options.front.trusted_proxies.push_back(*c);
  }
  if (v->options.admin_addr.empty() && !v->options.admin_token_file.empty()) {
    return absl::InvalidArgumentError(
        "--admin-token-file needs the admin API: --admin-addr is empty");
  }
  if (!common::SetLogLevelByName(v->log_level)) {
    return absl::InvalidArgumentError(
        "--log-level must be debug, info, warning or error");
  }
  if (!common::SetLogFormatByName(v->log_format)) {
    return absl::InvalidArgumentError("--log-format must be text or json");
  }
  if (v->stream_window < common::kMinStreamWindow ||
      v->stream_window > (16 << 20)) {
    return absl::InvalidArgumentError(
        "--stream-window must be between 65536 and 16777216");
  }
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"--max-streams-per-agent",
                                        v->max_streams},
        {"--max-tunnels-per-agent", v->max_tunnels},
        {"--max-agents", v->max_agents}}) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be at least 1 (it is ", value, ")"));
    }
  }
  if (v->http_threads < 0 || v->http_threads > 256) {
    return absl::InvalidArgumentError(
        "--http-threads must be between 0 (one per CPU) and 256");
  }
  if (v->max_connections < 0) {
    return absl::InvalidArgumentError(
        "--max-connections must be 0 (automatic) or more");
  }
  if (const absl::Duration trim =
          v->options.front.connection.fiber_trim_interval;
      trim < absl::Milliseconds(10) || trim > absl::Hours(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http-fiber-trim-interval must be between 10ms and 1h (it is ",
        absl::FormatDuration(trim), ")"));
  }
  const httpfront::ConnectionOptions& conn = v->options.front.connection;
  for (const auto& [name, value] :
       {std::pair<const char*, absl::Duration>{"--read-timeout",
                                               conn.read_timeout},
        {"--write-timeout", conn.write_timeout},
        {"--keep-alive-timeout", conn.keep_alive_timeout},
        {"--tls-handshake-timeout", conn.tls_handshake_timeout}}) {
    if (value < absl::Milliseconds(100)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be at least 100ms"));
    }
  }
  if (v->access_code_attempts < 1) {
    return absl::InvalidArgumentError(
        "--access-code-attempts-per-minute must be at least 1");
  }
  if (v->auth_failures < 0 || v->auth_failures > 1000000) {
    return absl::InvalidArgumentError(
        "--auth-failures-per-minute must be between 0 (no limit) and 1000000");
  }
  if (v->auth_failure_ips < 1) {
    return absl::InvalidArgumentError(
        "--auth-failure-max-ips must be at least 1");
  }
  const httpfront::FrontDoorOptions& front = v->options.front;
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"--tunnel-requests-per-minute",
                                        front.tunnel_requests_per_minute},
        {"--tunnel-concurrent-requests", front.tunnel_concurrent_requests},
        {"--max-connections-per-ip", front.connection.max_connections_per_ip},
        {"--connections-per-ip-per-minute",
         front.connection.connections_per_ip_per_minute},
        {"--max-request-body", front.max_request_body},
        {"--max-response-body", front.max_response_body}}) {
    if (value < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " must be 0 (unlimited) or more (it is ", value, ")"));
    }
  }
  if (front.connection.client_ip_capacity < 1) {
    return absl::InvalidArgumentError(
        "--max-tracked-client-ips must be at least 1");
  }
  if (v->options.front.basic_auth_cache_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--basic-auth-cache-ttl must be 0 (no cache) or more");
  }
  if (v->basic_auth_cache_entries < 0 ||
      v->basic_auth_cache_entries > 10000000) {
    return absl::InvalidArgumentError(
        "--basic-auth-cache-entries must be between 0 (no cache) and "
        "10000000");
  }
  if (v->options.front.access_cookie_ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "--access-cookie-ttl must be at least 1s");
  }
  // The largest legitimate envelope is a response head carrying a full
  // chunk of body bytes.
  constexpr int64_t kMinAgentMessage = 2 * common::kMaxChunkBytes;
  if (v->max_agent_message < kMinAgentMessage ||
      v->max_agent_message > (64 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-agent-message must be between ", kMinAgentMessage,
                     " and ", 64 << 20));
  }
  if (v->max_request_head < 1024 || v->max_request_head > (1 << 20)) {
    return absl::InvalidArgumentError(
        "--max-request-head must be between 1024 and 1048576");
  }
  if (v->send_queue_bytes < (1 << 20) || v->send_queue_bytes > (1LL << 30)) {
    return absl::InvalidArgumentError(
        "--agent-send-queue must be between 1048576 and 1073741824");
  }
  if (v->control_queue < 64 || v->control_queue > 1000000) {
    return absl::InvalidArgumentError(
        "--agent-control-queue must be between 64 and 1000000");
  }
  if (v->max_batch_bytes != 0 && (v->max_batch_bytes < 4096 ||
                                  v->max_batch_bytes > v->max_agent_message)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-batch-bytes must be 0 (no batches) or between 4096 and "
        "--max-agent-message (",
        v->max_agent_message, ")"));
  }
  if (v->grpc_threads < 1 || v->grpc_threads > 64) {
    return absl::InvalidArgumentError(
        "--grpc-threads must be between 1 and 64");
  }
  if (absl::Status s = CheckRelayFlags(v); !s.ok()) return s;
  GatewayOptions& o = v->options;
  if (o.tls.enabled() && v->insecure) {
    return absl::InvalidArgumentError(
        "--insecure and --tls-cert/--tls-key exclude each other");
  }
  if (!o.tls.enabled() && !v->insecure) {
    return absl::InvalidArgumentError(
        "no TLS: pass --tls-cert FILE --tls-key FILE (PEM), or --insecure "
        "to serve plaintext on both listeners (TUNNEL_INSECURE=true)");
  }
  if (o.tls.enabled() && (o.tls.cert_file.empty() || o.tls.key_file.empty())) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls.enabled() && !o.tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--client-ca needs --tls-cert and --tls-key");
  }
  o.service.limits.gateway_receive_window =
      static_cast<uint32_t>(v->stream_window);
  o.service.limits.max_streams = static_cast<size_t>(v->max_streams);
  o.service.max_tunnels_per_agent = static_cast<size_t>(v->max_tunnels);
  o.service.max_agents = static_cast<size_t>(v->max_agents);
  o.front.connection.threads = static_cast<int>(v->http_threads);
  o.front.connection.max_connections = v->max_connections;
  o.public_port = static_cast<int>(v->public_port);
  o.front.access_code_attempts_per_minute =
      static_cast<int>(v->access_code_attempts);
  o.front.basic_auth_cache_entries =
      static_cast<size_t>(v->basic_auth_cache_entries);
  o.service.auth_failures_per_minute = static_cast<int>(v->auth_failures);
  o.service.auth_failure_max_ips = static_cast<size_t>(v->auth_failure_ips);
  o.service.max_message_bytes = static_cast<int>(v->max_agent_message);
  o.front.connection.max_request_head_bytes =
      static_cast<size_t>(v->max_request_head);
  o.service.grpc_threads = static_cast<int>(v->grpc_threads);
  o.service.limits.max_queued_bytes = static_cast<size_t>(v->send_queue_bytes);
  o.service.limits.max_queued_control = static_cast<size_t>(v->control_queue);
  o.service.max_batch_bytes = static_cast<uint32_t>(v->max_batch_bytes);
  o.relay.max_sessions = static_cast<size_t>(v->relay_max_sessions);
  o.relay.max_clients_per_session = static_cast<size_t>(v->relay_max_clients);
  o.relay.max_frame_bytes = static_cast<uint32_t>(v->relay_max_frame);
  httpfront::RelayFrontOptions& rf = o.front.relay_options;
  rf.max_connections_per_ip = v->relay_ip_connections;
  rf.connections_per_ip_per_minute = v->relay_ip_per_minute;
  rf.frames_per_second = static_cast<double>(v->relay_frames_per_second);
  rf.bytes_per_second = static_cast<double>(v->relay_bytes_per_second);
  rf.ip_frames_per_second = static_cast<double>(v->relay_ip_frames_per_second);
  rf.ip_bytes_per_second = static_cast<double>(v->relay_ip_bytes_per_second);
  rf.client_buffer_bytes = static_cast<size_t>(v->relay_client_buffer);
  return CheckClusterFlags(&o);
}

}  // namespace tunnel::server
