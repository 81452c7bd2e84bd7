// gateway-tunnel: flags -> GatewayOptions, then serve until SIGINT/SIGTERM.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/flow_control.h"
#include "common/log.h"
#include "server/gateway.h"

namespace {

constexpr char kUsage[] =
    "gateway-tunnel: the public side of the tunnel.\n"
    "\n"
    "Agents connect over gRPC to --grpc-addr; visitors reach their tunnels\n"
    "over HTTPS on --http-addr, as https://<slug>.<domain>:<port>/ or\n"
    "https://<host>:<port>/t/<slug>/. Both listeners use TLS with\n"
    "--tls-cert/--tls-key (--client-ca also requires agent certificates);\n"
    "plaintext on both needs --insecure. /healthz and /metrics are served on\n"
    "--ops-addr (loopback by default). On start it prints the bound\n"
    "addresses, one per line (\"grpc HOST:PORT\", \"http HOST:PORT\", then\n"
    "\"ops HOST:PORT\" unless --ops-addr is empty).\n"
    "\n"
    "Usage: gateway-tunnel [flags]\n";

int Fail(const std::string& message, int code) {
  std::cerr << "gateway-tunnel: " << message << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  using tunnel::server::GatewayOptions;
  GatewayOptions o;
  o.credentials_path = "tunnel-credentials.txtpb";
  o.ops_addr = "127.0.0.1:8083";
  int64_t stream_window = o.service.limits.gateway_receive_window;
  int64_t max_streams = static_cast<int64_t>(o.service.limits.max_streams);
  int64_t max_tunnels = static_cast<int64_t>(o.service.max_tunnels_per_agent);
  int64_t max_agents = static_cast<int64_t>(o.service.max_agents);
  int64_t workers = o.front.workers;
  int64_t public_port = o.public_port;
  std::string log_level = "info";
  std::string log_format = "text";
  absl::Duration drain_timeout = absl::Seconds(30);

  tunnel::common::FlagSet flags(kUsage);
  flags.String("grpc-addr", &o.grpc_addr, "address agents connect to");
  flags.String("http-addr", &o.http_addr, "address visitors connect to");
  flags.String("ops-addr", &o.ops_addr,
               "address of /healthz and /metrics (empty: none); keep it "
               "private");
  flags.String("domain", &o.service.domain,
               "base domain for subdomain routing (<slug>.<domain>)");
  flags.String("credentials", &o.credentials_path,
               "credentials file written by `tunnelctl token issue`");
  flags.Duration("response-timeout", &o.front.response_timeout,
                 "504 when the agent sends no response head within this");
  flags.Duration("body-idle-timeout", &o.front.body_idle_timeout,
                 "abort a request or response body that stalls this long");
  flags.Duration("auth-skew", &o.auth_skew,
                 "accepted clock difference between agent and gateway");
  flags.Int("stream-window", &stream_window,
            "per-stream flow-control window in bytes (>= 65536)");
  flags.Int("max-streams-per-agent", &max_streams,
            "requests in flight per agent before visitors get 503");
  flags.Int("max-tunnels-per-agent", &max_tunnels,
            "tunnels one agent may open");
  flags.Int("max-agents", &max_agents,
            "agents connected at once; more are told to retry later");
  flags.Duration("busy-retry-after", &o.service.busy_retry_after,
                 "retry hint for agents refused at --max-agents");
  flags.Int("http-workers", &workers,
            "visitor connections served at once (one thread each)");
  flags.String("tls-cert", &o.tls.cert_file,
               "PEM certificate chain for both listeners (gRPC and HTTPS)");
  flags.String("tls-key", &o.tls.key_file,
               "PEM private key of --tls-cert (unencrypted)");
  flags.String("client-ca", &o.tls.client_ca_file,
               "PEM CA certificate(s); agents must present a certificate "
               "signed by one (mTLS)");
  bool insecure = false;
  flags.Bool("insecure", &insecure,
             "serve both listeners without TLS (plaintext; only behind a "
             "TLS-terminating proxy or for local tests)");
  flags.String("public-scheme", &o.public_scheme,
               "scheme in the public URLs told to agents (default: https "
               "with TLS, http with --insecure)");
  flags.Int("public-port", &public_port,
            "port in the public URLs (-1: the bound HTTP port, 0: none)");
  flags.Duration("read-timeout", &o.front.connection.read_timeout,
                 "visitor silent this long mid-request: connection closed");
  flags.Duration("write-timeout", &o.front.connection.write_timeout,
                 "visitor not reading this long: connection closed");
  flags.Duration("keep-alive-timeout", &o.front.connection.keep_alive_timeout,
                 "idle visitor connections are closed after this");
  flags.Duration("upgrade-idle-timeout", &o.front.upgrade_idle_timeout,
                 "an upgraded connection (WebSocket) idle this long in one "
                 "direction is closed");
  flags.Duration("heartbeat-interval", &o.service.heartbeat_interval,
                 "how often each agent is pinged");
  flags.Duration("heartbeat-timeout", &o.heartbeat_timeout,
                 "an agent silent this long is disconnected and its "
                 "requests fail");
  flags.Duration("drain-timeout", &drain_timeout,
                 "on SIGTERM/SIGINT, how long requests in flight may finish");
  flags.Duration("drain-retry-after", &o.drain_retry_after,
                 "Retry-After for visitors and reconnect hint for agents "
                 "while draining");
  flags.String("log-level", &log_level, "debug, info, warning or error");
  flags.String("log-format", &log_format,
               "text (lines for people) or json (one object per line)");

  absl::StatusOr<std::vector<std::string>> rest = flags.Parse(argc, argv);
  if (!rest.ok()) return Fail(std::string(rest.status().message()), 2);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!rest->empty()) {
    return Fail(
        absl::StrCat("unexpected argument \"", (*rest)[0], "\" (see --help)"),
        2);
  }
  if (!tunnel::common::SetLogLevelByName(log_level)) {
    return Fail("--log-level must be debug, info, warning or error", 2);
  }
  if (!tunnel::common::SetLogFormatByName(log_format)) {
    return Fail("--log-format must be text or json", 2);
  }
  if (stream_window < tunnel::common::kMinStreamWindow ||
      stream_window > (16 << 20)) {
    return Fail("--stream-window must be between 65536 and 16777216", 2);
  }
  if (max_streams < 1 || max_tunnels < 1 || workers < 1 || max_agents < 1) {
    return Fail(
        "--max-streams-per-agent, --max-tunnels-per-agent, --max-agents and "
        "--http-workers must be at least 1",
        2);
  }
  if (o.tls.enabled() && insecure) {
    return Fail("--insecure and --tls-cert/--tls-key exclude each other", 2);
  }
  if (!o.tls.enabled() && !insecure) {
    return Fail(
        "no TLS: pass --tls-cert FILE --tls-key FILE (PEM), or --insecure "
        "to serve plaintext on both listeners (TUNNEL_INSECURE=true)",
        2);
  }
  if (o.tls.enabled() && (o.tls.cert_file.empty() || o.tls.key_file.empty())) {
    return Fail("--tls-cert and --tls-key go together", 2);
  }
  if (!o.tls.enabled() && !o.tls.client_ca_file.empty()) {
    return Fail("--client-ca needs --tls-cert and --tls-key", 2);
  }
  o.service.limits.gateway_receive_window =
      static_cast<uint32_t>(stream_window);
  o.service.limits.max_streams = static_cast<size_t>(max_streams);
  o.service.max_tunnels_per_agent = static_cast<size_t>(max_tunnels);
  o.service.max_agents = static_cast<size_t>(max_agents);
  o.front.workers = static_cast<int>(workers);
  o.public_port = static_cast<int>(public_port);

  // Signals are taken synchronously by sigwait below; block them before any
  // thread starts so every thread inherits the mask.
  sigset_t signals = tunnel::common::BlockTerminationSignals();
  tunnel::common::DisableMutexDeadlockDetection();

  absl::StatusOr<std::unique_ptr<tunnel::server::Gateway>> gw =
      tunnel::server::Gateway::Start(o);
  if (!gw.ok()) return Fail(std::string(gw.status().message()), 1);

  std::string grpc_host, http_host, ops_host;
  int ignored;
  (void)tunnel::server::SplitHostPort(o.grpc_addr, &grpc_host, &ignored);
  (void)tunnel::server::SplitHostPort(o.http_addr, &http_host, &ignored);
  std::printf("grpc %s:%d\nhttp %s:%d\n", grpc_host.c_str(), (*gw)->grpc_port(),
              http_host.c_str(), (*gw)->http_port());
  if (!o.ops_addr.empty()) {
    (void)tunnel::server::SplitHostPort(o.ops_addr, &ops_host, &ignored);
    std::printf("ops %s:%d\n", ops_host.c_str(), (*gw)->ops_port());
  }
  std::fflush(stdout);
  TUNNEL_LOG(INFO) << "serving tunnels for *." << o.service.domain;

  int sig = 0;
  sigwait(&signals, &sig);
  TUNNEL_LOG(INFO) << "received signal " << sig << ", draining for up to "
                   << absl::FormatDuration(drain_timeout)
                   << " (signal again to stop at once)";
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    (*gw)->Drain(drain_timeout);
    drained = true;
  });
  // A second signal cuts the drain short.
  timespec tick{0, 50 * 1000 * 1000};
  while (!drained) {
    if (sigtimedwait(&signals, nullptr, &tick) > 0) {
      TUNNEL_LOG(WARNING) << "second signal: stopping now";
      break;
    }
  }
  (*gw)->Shutdown();
  drainer.join();
  TUNNEL_LOG(INFO) << "stopped";
  return 0;
}
