// gateway-tunnel as a library: the gRPC TunnelService, the session registry
// and the HTTP front door wired together. main() and the tests both start it.
//
// Threads: Start/Shutdown from one owner thread; everything else runs on
// gRPC's and httplib's pools.
#ifndef TUNNEL_SERVER_GATEWAY_H_
#define TUNNEL_SERVER_GATEWAY_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/hmac_auth.h"
#include "common/metrics.h"
#include "common/socket_io.h"
#include "httpfront/front_door.h"
#include "httpfront/ops_server.h"
#include "server/admin_service.h"
#include "server/cluster_directory.h"
#include "server/cluster_forward.h"
#include "server/core_metrics.h"
#include "server/health_service.h"
#include "server/relay_hub.h"
#include "server/session_registry.h"
#include "server/tunnel_service.h"
#include "tunnel/v1/credentials.pb.h"

namespace grpc {
class Server;
}

namespace tunnel::server {

// TLS on both listeners. The in-process default is plaintext (no files);
// gateway-tunnel itself refuses to run without TLS unless --insecure.
struct GatewayTlsOptions {
  // PEM certificate chain and its private key, for the gRPC listener and the
  // front door. Both empty: plaintext.
  std::string cert_file;
  std::string key_file;
  // PEM CA certificate(s): when set, agents must present a client
  // certificate signed by one of them (mTLS), on top of HMAC auth.
  std::string client_ca_file;

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

struct GatewayOptions {
  std::string grpc_addr = "0.0.0.0:8080";
  std::string http_addr = "0.0.0.0:8082";
  // /healthz and /metrics; empty: no ops listener. (gateway-tunnel's flag
  // defaults to 127.0.0.1:8083.)
  std::string ops_addr;
  // The admin API (tunnel.v1.AdminService); empty: no admin listener.
  // (gateway-tunnel's flag defaults to 127.0.0.1:8081.)
  std::string admin_addr;
  // Bearer token the admin API requires: read from `admin_token_file`
  // (refused if group or others may access it), or given directly (tests).
  // Neither: the admin listener answers every call FAILED_PRECONDITION.
  std::string admin_token_file;
  std::optional<std::string> admin_token;
  // Credentials: read from `credentials_path`, or given directly (tests).
  std::string credentials_path;
  std::optional<tunnel::v1::CredentialsFile> credentials;
  absl::Duration auth_skew = absl::Minutes(5);
  GatewayTlsOptions tls;
  // Scheme in the public URLs told to agents; empty: "https" with TLS, else
  // "http". Visitors' X-Forwarded-Proto is "https" with TLS, else this.
  std::string public_scheme;
  // Port in the public URLs; -1: the bound HTTP port; 0: none (port 80/443
  // in front of us).
  int public_port = -1;
  // A session silent this long (no message, not even a pong) is dead.
  absl::Duration heartbeat_timeout = absl::Seconds(7);
  // Told to agents (GoAway) and visitors (Retry-After) while draining.
  absl::Duration drain_retry_after = absl::Seconds(5);
  // How long requests in flight may finish when the gateway drains, and
  // when a session's token expired.
  absl::Duration drain_timeout = absl::Seconds(30);
  TunnelServiceOptions service;
  httpfront::FrontDoorOptions front;
  // A gateway cluster (several replicas sharing a directory in Redis):
  // on when cluster.redis_url is set. The secret comes from
  // `cluster_secret_file` (mode 0600), or is given directly (tests).
  ClusterOptions cluster;
  std::string cluster_secret_file;
  // The encrypted relay (agent-tunnel share, docs/RELAY.md);
  // relay.max_sessions 0: off (agents asking to host shares are refused).
  // Its front-door limits are front.relay_options.
  RelayHubOptions relay;
};

class Gateway {
 public:
  // Binds both listeners (port 0 picks a free port) and starts serving.
  // Unreadable or mismatched TLS files fail with INVALID_ARGUMENT naming
  // the file.
  // The gRPC port also serves server reflection and grpc.health.v1.Health
  // (SERVING for "" and "tunnel.v1.TunnelService").
  static absl::StatusOr<std::unique_ptr<Gateway>> Start(GatewayOptions options);
  ~Gateway();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  // 0 when there is no ops listener.
  int ops_port() const { return ops_port_; }
  // 0 when there is no admin listener.
  int admin_port() const { return admin_port_; }
  SessionRegistry& registry() { return registry_; }
  // Null without a cluster.
  ClusterDirectory* cluster() { return cluster_.get(); }
  common::MetricsRegistry& metrics() { return metrics_; }

  // What a credentials reload did.
  struct ReloadResult {
    size_t live_tokens = 0;      // tokens in force now
    size_t sessions_closed = 0;  // live sessions whose token is gone
  };
  // Re-reads the credentials file (SIGHUP, the admin API). Sessions whose
  // token is still in force keep running untouched; the others are closed
  // with the reason. A file that cannot be read or parsed changes nothing:
  // the error (naming file and line) is logged, counted and returned.
  // FAILED_PRECONDITION when the credentials were given in memory. Reloads
  // are serialized; any thread.
  absl::StatusOr<ReloadResult> ReloadCredentials();
  // The same with credentials in memory (tests, and the path above).
  ReloadResult ApplyCredentials(const tunnel::v1::CredentialsFile& file);

  // Graceful stop, first half: gRPC health turns NOT_SERVING, new visitor
  // requests get 503 + Retry-After, agents get GoAway, and requests in flight
  // may finish. Returns when none is left or at `timeout`; true if all
  // finished. Call Shutdown() after.
  bool Drain(absl::Duration timeout);

  // Stops both listeners, ends agent sessions and fails streams in flight.
  void Shutdown();

 private:
  explicit Gateway(GatewayOptions options);

  GatewayOptions options_;
  // First member: everything below registers into it and is gone before it.
  common::MetricsRegistry metrics_;
  CoreMetrics core_metrics_{&metrics_};
  common::CredentialStore credentials_;
  absl::Mutex reload_mu_;  // one reload at a time
  std::unique_ptr<common::AuthVerifier> verifier_;
  SessionRegistry registry_;
  std::unique_ptr<RelayHub> relay_;  // null with --relay-max-sessions 0
  std::unique_ptr<ClusterDirectory> cluster_;
  std::unique_ptr<ClusterRouter> cluster_router_;
  std::unique_ptr<ForwardService> forward_service_;
  std::unique_ptr<TunnelServiceImpl> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<httpfront::FrontDoor> front_;
  std::unique_ptr<httpfront::OpsServer> ops_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<HealthService> admin_health_;
  std::unique_ptr<grpc::Server> admin_server_;
  std::atomic<bool> draining_{false};
  void HeartbeatLoop();
  ReloadResult ApplyCredentialsLocked(const tunnel::v1::CredentialsFile& file)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);

  absl::Notification stop_heartbeats_;
  std::thread heartbeats_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int ops_port_ = 0;
  int admin_port_ = 0;
  bool shut_down_ = false;
};

using common::SplitHostPort;  // common/socket_io.h

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_GATEWAY_H_
