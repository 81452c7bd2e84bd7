// The gRPC TunnelService: authenticates each agent's Connect call, runs the
// handshake, and hands the stream to a Session. Async API: each completion
// queue has one thread that runs every step of the calls on it
// (AgentConnection in the .cc). gRPC 1.51's callback API ran them on two
// threads that woke each other for every event (about four extra context
// switches per request at concurrency 1).
#ifndef TUNNEL_SERVER_TUNNEL_SERVICE_H_
#define TUNNEL_SERVER_TUNNEL_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/attempt_limiter.h"
#include "common/cidr.h"
#include "common/hmac_auth.h"
#include "server/core_metrics.h"
#include "server/session.h"
#include "server/session_registry.h"
#include "tunnel/v1/cluster.pb.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace tunnel::server {

struct TunnelServiceOptions {
  SessionLimits limits;
  size_t max_tunnels_per_agent = 16;
  // Public URL parts: scheme://slug.domain[:port]/ and
  // scheme://domain[:port]/t/slug/. port 0 = leave out.
  std::string public_scheme = "http";
  std::string domain = "localhost";
  int public_port = 0;
  // Agents connected at once; more are refused with a retry hint.
  size_t max_agents = 100000;
  absl::Duration busy_retry_after = absl::Seconds(5);
  // How often the gateway pings each agent (told to agents at connect).
  absl::Duration heartbeat_interval = absl::Seconds(3);
  // Failed authentications one source IP (IPv6: its /64) may have per
  // minute; beyond, its Connect calls are refused RESOURCE_EXHAUSTED without
  // the HMAC work until the minute is over. 0: no limit.
  int auth_failures_per_minute = 10;
  // Source IPs remembered for that limit (expired, then oldest, go first).
  size_t auth_failure_max_ips = 10000;
  // Largest envelope gRPC accepts from an agent; a bigger one ends the
  // session with RESOURCE_EXHAUSTED. The largest legitimate one is a
  // response head with max_chunk body bytes, so keep it well above that.
  int max_message_bytes = 1 << 20;
  // Largest EnvelopeBatch either way (the agent may offer less); 0: none.
  // At most max_message_bytes.
  uint32_t max_batch_bytes = 256 << 10;
  // Completion-queue threads serving Connect calls (Gateway::Start makes
  // one queue each); a call stays on the queue that took it.
  int grpc_threads = 1;
};

// The key the auth-failure limit counts under, from a gRPC peer string:
// "ipv4:1.2.3.4:5" -> "1.2.3.4"; "ipv6:[2001:db8:1:2::9]:5" -> the /64,
// "2001:db8:1:2::/64" (one host usually holds a whole /64); an IPv4-mapped
// IPv6 address counts as its IPv4 address; anything else is used whole.
std::string AuthLimitKey(absl::string_view peer);

// The public URLs of a tunnel under these options.
SessionTunnel PublicTunnel(const TunnelServiceOptions& options,
                           absl::string_view name, absl::string_view slug);

// The gateway cluster's part in an agent's handshake
// (server/cluster_directory.h). Called on a completion-queue thread.
class RelayHub;

class ClusterHooks {
 public:
  virtual ~ClusterHooks() = default;
  // ALREADY_EXISTS naming the owner when another agent (or pool) owns one
  // of `slugs` anywhere in the cluster; OK when they are free (and now this
  // agent's or pool's) or when the cluster cannot be asked (counted).
  virtual absl::Status Claim(const std::vector<std::string>& slugs,
                             absl::string_view agent_id,
                             absl::string_view pool) = 0;
  // A session was registered or unregistered.
  virtual void Changed() = 0;

  // For the admin API (any thread): whether some agent or pool owns `slug`
  // anywhere in the cluster; and the admin's settings shared with every
  // replica (UNAVAILABLE, nothing changed, when Redis cannot be reached).
  // nullopt / null: public / no admin rules.
  virtual bool KnowsSlug(absl::string_view slug) = 0;
  virtual absl::Status PublishAccess(
      absl::string_view slug,
      const std::optional<tunnel::v1::AccessCodeHash>& code) = 0;
  virtual absl::Status PublishIpRules(absl::string_view slug,
                                      const common::IpRules* rules) = 0;
  // This replica's name, and the other replicas as of the last heartbeat.
  virtual const std::string& ReplicaId() const = 0;
  virtual std::vector<tunnel::v1::ReplicaRecord> OtherReplicas() const = 0;
  // "agent:<id>", "pool:<name>" or "" (as of the last heartbeat).
  virtual std::string OwnerOf(absl::string_view slug) const = 0;
};

class TunnelServiceImpl final : public tunnel::v1::TunnelService::AsyncService {
 public:
  // `registry`, `verifier` and `metrics` must outlive the service.
  TunnelServiceImpl(TunnelServiceOptions options, SessionRegistry* registry,
                    common::AuthVerifier* verifier, const CoreMetrics* metrics);
  ~TunnelServiceImpl() override;

  // Once the server is built: serves Connect calls, one thread per queue
  // (each from ServerBuilder::AddCompletionQueue).
  void Serve(std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues);
  // After the server's Shutdown returned (which it does only once every
  // call's context is gone, so the queue threads must run meanwhile):
  // shuts the queues down and joins their threads.
  void StopServing();

  // Set once the front door knows its port (before agents connect).
  void set_public_port(int port) { options_.public_port = port; }
  // Before agents connect; `cluster` must outlive the service.
  void set_cluster(ClusterHooks* cluster) { cluster_ = cluster; }
  // Before agents connect; `relay` must outlive the service. Without it,
  // an agent that asks to host encrypted shares is refused.
  void set_relay(RelayHub* relay) { relay_ = relay; }
  ClusterHooks* cluster() const { return cluster_; }
  const TunnelServiceOptions& options() const { return options_; }

  uint64_t auth_failures() const { return auth_failures_; }

  // After the credentials changed: closes every live session whose token is
  // no longer in force (revoked, removed, or moved to another agent id),
  // telling its agent why (ConnectError CREDENTIALS_REVOKED, then the call
  // ends UNAUTHENTICATED). Returns how many it closed. Any thread.
  size_t CloseSessionsWithoutLiveToken();
  // For the heartbeat thread: sessions whose token expired by `now` are
  // retired (no new requests; the agent hears why in a GoAway), and a
  // retired one is closed once its requests in flight are done or after
  // `drain_timeout` (ConnectError CREDENTIALS_EXPIRED, the call ends
  // UNAUTHENTICATED). Returns how many it closed.
  size_t ExpireSessions(absl::Time now, absl::Duration drain_timeout);
  // For the heartbeat thread: closes the sessions a newer connection of
  // their agent replaced while they had requests in flight, once those are
  // done or after `drain_timeout` (ConnectError REPLACED). Returns how many.
  size_t CloseReplacedSessions(absl::Time now, absl::Duration drain_timeout);

 private:
  friend class AgentConnection;
  void CloseRevoked(const std::shared_ptr<Session>& session,
                    const absl::Status& why);
  // Tells the agent `why` (ConnectError `code`) and ends the call
  // UNAUTHENTICATED, delivering what is queued first.
  static void EndForCredentials(Session& session,
                                tunnel::v1::ConnectError::Code code,
                                absl::string_view why);
  // Tells a replaced session's agent so (ConnectError REPLACED) and ends
  // the call, delivering what is queued first.
  static void CloseReplaced(Session& session);
  TunnelServiceOptions options_;
  // Replaced sessions finishing their requests in flight (no new ones: they
  // left the registry when replaced).
  absl::Mutex replaced_mu_;
  std::vector<std::shared_ptr<Session>> replaced_ ABSL_GUARDED_BY(replaced_mu_);
  SessionRegistry* const registry_;
  ClusterHooks* cluster_ = nullptr;
  RelayHub* relay_ = nullptr;
  common::AuthVerifier* const verifier_;
  const CoreMetrics* const metrics_;
  std::atomic<uint64_t> auth_failures_{0};
  // Null when auth_failures_per_minute is 0.
  std::unique_ptr<common::AttemptLimiter> auth_limiter_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;
  // An operation started on a queue that is shut down aborts the process
  // (gRPC asserts), and a completion handled while StopServing drains the
  // queues may want to start the next one (a Finish after a failed write).
  // Every start holds this shared; StopServing sets queues_shut_ under it
  // before shutting the queues down, and later starts are skipped.
  absl::Mutex ops_mu_;
  bool queues_shut_ ABSL_GUARDED_BY(ops_mu_) = false;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_TUNNEL_SERVICE_H_
