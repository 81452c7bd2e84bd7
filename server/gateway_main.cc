// gateway-tunnel: flags/config -> GatewayOptions, then serve until
// SIGINT/SIGTERM; SIGHUP reloads the credentials file.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/allocator.h"
#include "common/flags.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "server/gateway.h"
#include "server/gateway_flags.h"

namespace {

constexpr char kUsage[] =
    "gateway-tunnel: the public side of the tunnel.\n"
    "\n"
    "Agents connect over gRPC to --grpc-addr; visitors reach their tunnels\n"
    "over HTTPS on --http-addr, as https://<slug>.<domain>:<port>/ or\n"
    "https://<host>:<port>/t/<slug>/. Both listeners use TLS with\n"
    "--tls-cert/--tls-key (--client-ca also requires agent certificates);\n"
    "plaintext on both needs --insecure. /healthz and /metrics are served on\n"
    "--ops-addr (loopback by default); the admin API (tunnelctl list,\n"
    "status, disconnect) on --admin-addr, protected by --admin-token-file.\n"
    "SIGHUP reloads the --credentials file: sessions whose token is still\n"
    "in force keep running, those whose token was revoked are closed; a\n"
    "file with errors is refused and the old credentials stay.\n"
    "On start it prints the bound addresses, one per line (\"grpc "
    "HOST:PORT\",\n"
    "\"http HOST:PORT\", then \"ops HOST:PORT\" and \"admin HOST:PORT\" "
    "unless\n"
    "their flag is empty).\n"
    "\n"
    "--config FILE reads the flags from a tunnel.v1.GatewayConfig in the\n"
    "protobuf text format or JSON (.json); see README \"Config files\".\n"
    "\n"
    "Usage: gateway-tunnel [flags]\n";

int Fail(const std::string& message, int code) {
  std::cerr << "gateway-tunnel: " << message << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread starts.
  tunnel::common::TuneAllocator(tunnel::common::kGatewayTrimThreshold);
  tunnel::common::RouteGrpcLogs();
  tunnel::server::GatewayFlags values;
  tunnel::common::FlagSet flags(kUsage);
  tunnel::server::RegisterGatewayFlags(&flags, &values);
  if (absl::Status s =
          tunnel::server::ParseGatewayFlags(argc, argv, &flags, &values);
      !s.ok()) {
    return Fail(std::string(s.message()), 2);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  tunnel::server::GatewayOptions& o = values.options;
  const absl::Duration drain_timeout = values.options.drain_timeout;

  // Signals are taken synchronously by sigwait below (so nothing runs in a
  // signal handler); block them before any thread starts so every thread
  // inherits the mask.
  const sigset_t terminate = tunnel::common::BlockTerminationSignals();
  sigset_t signals = terminate;
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  tunnel::common::DisableMutexDeadlockDetection();

  absl::StatusOr<std::unique_ptr<tunnel::server::Gateway>> gw =
      tunnel::server::Gateway::Start(o);
  if (!gw.ok()) return Fail(std::string(gw.status().message()), 1);

  std::string grpc_host, http_host, ops_host, admin_host;
  int ignored;
  (void)tunnel::server::SplitHostPort(o.grpc_addr, &grpc_host, &ignored);
  (void)tunnel::server::SplitHostPort(o.http_addr, &http_host, &ignored);
  std::printf("grpc %s:%d\nhttp %s:%d\n", grpc_host.c_str(), (*gw)->grpc_port(),
              http_host.c_str(), (*gw)->http_port());
  if (!o.ops_addr.empty()) {
    (void)tunnel::server::SplitHostPort(o.ops_addr, &ops_host, &ignored);
    std::printf("ops %s:%d\n", ops_host.c_str(), (*gw)->ops_port());
  }
  if (!o.admin_addr.empty()) {
    (void)tunnel::server::SplitHostPort(o.admin_addr, &admin_host, &ignored);
    std::printf("admin %s:%d\n", admin_host.c_str(), (*gw)->admin_port());
  }
  std::fflush(stdout);
  TUNNEL_LOG(INFO) << "serving tunnels for *." << o.service.domain;
  if (!o.admin_addr.empty() && o.admin_token_file.empty()) {
    TUNNEL_LOG(WARNING) << "the admin API on " << o.admin_addr
                        << " refuses every call: no --admin-token-file";
  }

  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    TUNNEL_LOG(INFO) << "received SIGHUP, reloading " << o.credentials_path;
    // Both outcomes are logged and counted by the gateway; a bad file keeps
    // the credentials in force.
    (void)(*gw)->ReloadCredentials();
  }
  TUNNEL_LOG(INFO) << "received signal " << sig << ", draining for up to "
                   << absl::FormatDuration(drain_timeout)
                   << " (signal again to stop at once)";
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    (*gw)->Drain(drain_timeout);
    drained = true;
  });
  // A second SIGINT/SIGTERM cuts the drain short (SIGHUP stays blocked and
  // is ignored while draining).
  timespec tick{0, 50 * 1000 * 1000};
  while (!drained) {
    if (sigtimedwait(&terminate, nullptr, &tick) > 0) {
      TUNNEL_LOG(WARNING) << "second signal: stopping now";
      break;
    }
  }
  (*gw)->Shutdown();
  drainer.join();
  TUNNEL_LOG(INFO) << "stopped";
  return 0;
}
