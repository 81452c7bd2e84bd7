// agent-tunnel as a library: keeps one Connect stream to the gateway open
// (reconnecting with backoff) and forwards every stream to a local service.
//
// Threads: Run() blocks its caller; it runs the stream's completion queue on
// that thread (reads, and the writes' completions), forwards ordinary
// requests on the OriginLoop's thread and upgraded connections on the
// UpgradeLoop's (their handshakes on a WorkerPool). A write starts on the
// thread that queued its message (agent/gateway_call.h). Stop(),
// WaitUntilConnected() and the accessors are safe from any thread.
#ifndef TUNNEL_AGENT_AGENT_H_
#define TUNNEL_AGENT_AGENT_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/health_check.h"
#include "agent/inspector.h"
#include "agent/local_target.h"
#include "agent/relay_host.h"
#include "common/flow_control.h"
#include "tunnel/v1/tunnel.pb.h"

namespace grpc {
class ClientContext;
}

namespace tunnel::agent {

class OriginLoop;
class UpgradeLoop;
class WorkerPool;

// A token expiring sooner than this is warned about (the agent's log at each
// connect, `agent-tunnel status`).
inline constexpr absl::Duration kTokenExpiryWarning = absl::Hours(24);
// "the token tok_… expires at … (in 5h 0m): extend it with …" (or "expired
// at …" once `now` is past it).
std::string TokenExpiryWarning(absl::string_view token_id, absl::Time expires,
                               absl::Time now);

struct AgentOptions {
  // host:port of the gateway's gRPC listener; several, comma-separated
  // (replicas of a gateway cluster): after a session ends or an attempt
  // fails, the next one is tried.
  std::string gateway;
  // With several gateway addresses: connections held at once, each to
  // another address (the replicas of a cluster serve the agent's tunnels
  // through each), at most one per address.
  size_t connections = 2;
  std::string agent_id;
  std::string token_id;
  std::string secret;  // base64url, from `tunnelctl token issue`
  std::vector<LocalTarget> tunnels;
  // --slug random: the gateway chooses the slugs at the first connect
  // (LocalTarget::slug is then empty); later connects ask for those.
  bool random_slug = false;
  // --pool: the tunnels are pool NAME's (slug NAME, named ones NAME-<pool>),
  // served beside other agents of the pool. Empty: the agent's own.
  std::string pool;
  // Who may reach the agent's tunnels (checked CIDR text; empty: anyone).
  tunnel::v1::IpRules ip_rules;
  // Visitors must enter the code this hashes (common/access_code.h) for
  // every tunnel; nullopt: public tunnels. Only the hash is sent.
  std::optional<tunnel::v1::AccessCodeHash> access_code;
  // Visitors must send one of these users and its password (HTTP basic
  // auth) for every tunnel; only the hashes are sent. Checked entries.
  std::vector<tunnel::v1::BasicAuthUser> basic_auth;
  bool insecure = false;  // plaintext gRPC (no TLS)
  // TLS (unless insecure). Roots that verify the gateway, PEM; empty: the
  // system's roots.
  std::string ca_pem;
  // A client certificate chain and key to present (mTLS), PEM; empty: none.
  std::string client_cert_pem;
  std::string client_key_pem;
  // The name the gateway's certificate must have; empty: the host part of
  // `gateway` (a DNS name or an IP address).
  std::string tls_server_name;
  // Local requests in flight at once; further ones queue.
  size_t max_concurrent = 256;
  // Per-stream window for request bodies coming from the gateway.
  uint32_t receive_window = common::kDefaultStreamWindow;
  // Largest batch of envelopes per gRPC message, offered to the gateway
  // (which may agree to less); 0: one envelope per message.
  uint32_t max_batch_bytes = 256 << 10;
  // Local service silent for this long mid-request: the request fails.
  absl::Duration local_timeout = absl::Hours(1);
  // A connection to a local service not established this long: it fails.
  absl::Duration local_connect_timeout = absl::Seconds(10);
  absl::Duration connect_timeout = absl::Seconds(10);
  // Reconnect backoff: full jitter between 0 and min(max, initial * 2^n).
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  // A session that lasted this long counts as healthy: the backoff starts
  // over after it.
  absl::Duration healthy_after = absl::Seconds(30);
  // Gateway silent this long (no ping, no data): reconnect.
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  // Body bytes queued towards the gateway beyond which local services wait
  // (their transfers pause): with the stream credit, what bounds the
  // agent's memory however many requests run.
  size_t max_queued_bytes = 2 << 20;
  // How the agent checks its local services (HealthCheckOptions: a TCP
  // connect every 5 s by default; interval zero: no checks).
  HealthCheckOptions health;
  // How long requests in flight may finish when the agent drains (SIGTERM
  // or an administrator's `tunnelctl drain`).
  absl::Duration drain_timeout = absl::Seconds(30);
  // Called on the health checker's thread when a local service turns
  // unhealthy or healthy again (e.g. for the state file).
  std::function<void(const LocalTarget&, const TargetHealth&)> on_health;
  // Records every request for the inspector (--inspect); null: none.
  std::shared_ptr<Inspector> inspector;
  // agent-tunnel share: host this end-to-end encrypted share (its requests
  // go to share->target); `tunnels` is then empty and the agent has no
  // public tunnel. nullopt: no share.
  std::optional<ShareOptions> share;
  // Called once per accepted session (e.g. to print the URLs).
  std::function<void(const tunnel::v1::ConnectAccepted&)> on_accepted;
  // Called on Run()'s thread when a connection attempt fails or a session
  // ends (not when Stop() or Drain() ended it), with the reason.
  std::function<void(const absl::Status&)> on_session_ended;
};

// --gateway's list: "A,B" -> {"A", "B"} (never empty).
std::vector<std::string> SplitGateways(const std::string& list);

class Agent {
 public:
  explicit Agent(AgentOptions options);
  ~Agent();

  // Connects and serves until Stop() (returns OK) or a permanent error
  // (bad credentials, refused slug, a gateway certificate we do not trust, a
  // client certificate the gateway refuses, ...: returned with a message
  // saying what to fix). Transient failures reconnect with backoff, the
  // first attempt included.
  absl::Status Run();
  void Stop();
  // Graceful stop: tells the gateway to send no new requests, lets those in
  // flight finish (up to `timeout`), then stops. Run() then returns OK.
  void Drain(absl::Duration timeout);

  // True once a session is accepted (false on timeout or Stop()).
  bool WaitUntilConnected(absl::Duration timeout);
  std::vector<tunnel::v1::AcceptedTunnel> tunnels() const;
  size_t sessions_started() const;
  // The share's host (null without options.share): its counters.
  const RelayHost* relay() const { return relay_.get(); }
  // Local requests waiting because --max-concurrent are already running.
  size_t local_requests_queued() const;

 private:
  class Session;
  // Connection `k`: connects and reconnects until Stop() (OK) or a
  // permanent error.
  absl::Status RunLink(size_t k);
  // One connection attempt of connection `k` and its session; returns why
  // it ended, and in `*retry_after` the least wait the gateway asked for
  // before reconnecting.
  absl::Status RunSession(size_t k, absl::Duration* retry_after);
  // After a failed TLS connection attempt: why it failed (a fresh TCP
  // connection and handshake, see agent/tls_probe.h); OK if TLS comes up,
  // and always with --insecure.
  // After a failed connection attempt: connection refused (or another
  // network error) in words, else what was wrong with TLS (DiagnoseTls).
  absl::Status DescribeConnectFailure(const std::string& gateway) const;
  absl::Status DiagnoseTls(const std::string& gateway) const;

  const AgentOptions options_;
  // options_.gateway split at commas.
  const std::vector<std::string> gateways_;
  // options_.ca_pem, or the system's roots; empty with insecure.
  const std::string roots_pem_;
  mutable absl::Mutex mu_;
  // One connection to a gateway: the address it uses (an index into
  // gateways_), its live call and session.
  struct Link {
    size_t gateway = 0;
    grpc::ClientContext* ctx = nullptr;  // so Stop() can cancel it
    std::shared_ptr<Session> session;
    bool connected = false;
  };
  std::vector<Link> links_ ABSL_GUARDED_BY(mu_);
  std::string GatewayOf(size_t k) const;
  // After connection `k` ended: the next address no other connection
  // uses (or its own again when every other one is taken).
  void MoveOn(size_t k);
  std::vector<std::shared_ptr<Session>> SessionsLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t connected_links_ ABSL_GUARDED_BY(mu_) = 0;
  // The first permanent error of any connection (Run returns it).
  absl::Status permanent_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t sessions_started_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<tunnel::v1::AcceptedTunnel> tunnels_ ABSL_GUARDED_BY(mu_);
  // --slug random: tunnel name -> the slug the gateway chose, asked for
  // again on every reconnect.
  std::map<std::string, std::string> assigned_slugs_ ABSL_GUARDED_BY(mu_);
  // options_.share's host. Before the loop: it outlives it (the loop's
  // streams point into it); ~Agent detaches it while the loop still runs.
  std::unique_ptr<RelayHost> relay_;
  std::unique_ptr<WorkerPool> pool_;       // upgrade handshakes
  std::unique_ptr<OriginLoop> loop_;       // every other request
  std::unique_ptr<UpgradeLoop> upgrades_;  // upgraded connections
  // Checks the local services; reports changes to the live session.
  std::unique_ptr<HealthChecker> health_;
  void ReportHealth(const std::shared_ptr<Session>& session);
  // The gateway asked this agent to drain (tunnelctl drain): Drain() on a
  // thread of its own, once; Run() then returns OK.
  void RequestDrain();
  std::thread drainer_ ABSL_GUARDED_BY(mu_);
};

// A permanent failure ends Run(); anything else is retried.
bool IsPermanent(const absl::Status& status);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_AGENT_H_
