// The gateway cluster's shared directory in Redis (docs/DESIGN.md, "The
// gateway cluster").
//
// Every replica keeps, with a lease that its heartbeat renews:
//   replica:<id>   a tunnel.v1.ReplicaRecord: its advertised gRPC address and
//                  the tunnels whose agents are connected to it now (with
//                  what each agent asks of visitors); in the set "replicas";
// and, shared without expiry:
//   owners         hash slug -> "agent:<id>" or "pool:<name>": a slug is
//                  claimed (HSETNX) at the agent's handshake and belongs to
//                  that agent or pool for the cluster's lifetime;
//   admin:access   hash slug -> tunnel.v1.AdminAccess (the admin API's
//                  access code or "public");
//   admin:ip       hash slug -> tunnel.v1.IpRules (the admin's IP rules;
//                  empty: cleared);
//   admin:access:ts, admin:ip:ts
//                  hash slug -> when (unix ms) the setting was made: a
//                  setting is only ever replaced by a newer one (a Lua
//                  script checks), so a replica that writes back what it
//                  knows after Redis lost its data never undoes a newer
//                  setting it had not seen yet;
//   revoked        set of token ids some replica's credentials file marks
//                  revoked: every replica refuses them and closes their
//                  sessions (a revocation cannot be undone, only a new
//                  token issued);
//   rate:<minute>:<slug>
//                  requests admitted for a tunnel in a wall-clock minute,
//                  by every replica (INCRBY of what each admitted since its
//                  last heartbeat; expire after two minutes);
//   cluster:epoch  a random value set once: when it changes, Redis lost its
//                  data, and each replica writes back the admin settings it
//                  holds (the leases and owners come back by themselves).
//
// Each heartbeat (one thread, two round trips) writes this replica's record
// and re-claims its live slugs, then reads every replica's record and the
// admin settings into a snapshot that the front door's router reads without
// touching Redis. A replica that cannot reach Redis keeps serving its own
// agents and the last snapshot, reports it (/healthz, /metrics), and catches
// up at the first heartbeat that gets through.
//
// Threads: the heartbeat thread; Claim/KnowsSlug/Publish* from any thread
// (one short Redis round trip each, serialized on their own connection);
// Lookup and state() from any thread.
#ifndef TUNNEL_SERVER_CLUSTER_DIRECTORY_H_
#define TUNNEL_SERVER_CLUSTER_DIRECTORY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/shared_counts.h"
#include "server/redis_client.h"
#include "server/session_registry.h"
#include "server/tunnel_service.h"

namespace tunnel::server {

struct ClusterOptions {
  // redis://[:PASSWORD@]HOST[:PORT][/DB]; empty: no cluster.
  std::string redis_url;
  // host:port where the other replicas reach this one's gRPC listener.
  std::string advertise;
  // This replica's name, unique in the cluster.
  std::string id;
  // Base64url secret every replica shares: signs the Forward calls between
  // replicas (from --cluster-secret-file).
  std::string secret;
  // How often the directory is written and read, and how long a replica's
  // lease lasts without a heartbeat (its tunnels vanish from the others'
  // view at most this long after it died).
  absl::Duration heartbeat = absl::Seconds(1);
  absl::Duration lease = absl::Seconds(5);
  // Connecting to Redis and each of its answers.
  absl::Duration redis_timeout = absl::Milliseconds(500);
  // A forwarded request's stream must be open on the owner within this.
  absl::Duration forward_open_timeout = absl::Seconds(10);
  // TLS towards the other replicas (when this gateway serves TLS): the CA
  // that signed their certificates (PEM file; empty: the gateway's own
  // certificate is trusted as the CA), and the name their certificates
  // carry (empty: the host of their advertised address).
  std::string ca_file;
  std::string tls_name;
};

// One other replica serving a slug.
struct RemoteRoute {
  std::string replica_id;
  std::string advertise;
  std::string agent_id;
  std::string pool;
  VisitorPolicy policy;  // what the agent asked of visitors
  bool unhealthy = false;
};

struct ClusterState {
  bool redis_up = false;
  std::string error;    // why the last heartbeat failed ("" when up)
  size_t replicas = 0;  // with a live lease, this one included
  size_t remote_tunnels = 0;
  absl::Time last_sync = absl::InfinitePast();
};

class ClusterDirectory final : public ClusterHooks,
                               public common::SharedCounts {
 public:
  // `registry` and `metrics` must outlive the directory.
  ClusterDirectory(ClusterOptions options, const RedisAddress& address,
                   SessionRegistry* registry, common::MetricsRegistry* metrics);
  ~ClusterDirectory() override;

  // Before Start: where this replica is reached and its name (once the
  // gRPC port is bound).
  void SetAddress(std::string advertise, std::string id) {
    options_.advertise = std::move(advertise);
    options_.id = std::move(id);
  }
  // Before Start: the token ids this replica's credentials revoke
  // (published every heartbeat), and what to do when the cluster's set of
  // revoked ids changed (called on the heartbeat thread).
  void SetRevocations(
      std::function<std::vector<std::string>()> local,
      std::function<void(absl::flat_hash_set<std::string>)> changed) {
    local_revoked_ = std::move(local);
    on_revoked_ = std::move(changed);
  }
  // Runs the first heartbeat (Redis need not answer) and starts the thread.
  void Start();
  // Stops the heartbeats and removes this replica's lease, so the others
  // stop routing here at once (best effort).
  void Stop();

  // --- ClusterHooks ---
  absl::Status Claim(const std::vector<std::string>& slugs,
                     absl::string_view agent_id,
                     absl::string_view pool) override;
  void Changed() override;
  bool KnowsSlug(absl::string_view slug) override;
  absl::Status PublishAccess(
      absl::string_view slug,
      const std::optional<tunnel::v1::AccessCodeHash>& code) override;
  absl::Status PublishIpRules(absl::string_view slug,
                              const common::IpRules* rules) override;

  const std::string& ReplicaId() const override { return options_.id; }
  std::vector<tunnel::v1::ReplicaRecord> OtherReplicas() const override;

  // --- common::SharedCounts (per-tunnel requests per minute) ---
  int64_t Others(absl::string_view key, int64_t minute) override;
  void Add(absl::string_view key, int64_t minute, int64_t delta) override;

  // The other replicas whose agents serve `slug` now (null: none). Shares
  // the snapshot it comes from: no copy on the request path.
  std::shared_ptr<const std::vector<RemoteRoute>> Lookup(
      absl::string_view slug) const;
  // Who owns `slug` in the cluster as of the last heartbeat:
  // "agent:<id>", "pool:<name>", or "" for nobody.
  std::string OwnerOf(absl::string_view slug) const override;
  ClusterState state() const;
  const ClusterOptions& options() const { return options_; }

  // One heartbeat now (tests; the thread runs them on its own).
  void SyncNow();

 private:
  using Routes = absl::flat_hash_map<std::string, std::vector<RemoteRoute>>;
  void Run();
  absl::Status Sync();
  // Parses `policy` once per distinct policy (basic-auth sets keep their id,
  // so the front door's cache of verified users survives heartbeats).
  VisitorPolicy ParsePolicy(const tunnel::v1::TunnelPolicy& policy);
  // The admin settings as Redis has them (value and time per slug).
  struct AdminValue {
    std::string value;
    int64_t unix_ms = 0;
  };
  using AdminValues = absl::flat_hash_map<std::string, AdminValue>;
  void ApplyAdmin(const RedisReply& access, const RedisReply& access_ts,
                  const RedisReply& ip, const RedisReply& ip_ts);
  absl::Status RepublishAdmin();
  // Writes one setting unless Redis has a newer one (ABORTED then).
  absl::Status PublishAdmin(const char* key, absl::string_view slug,
                            std::string value);

  ClusterOptions options_;  // fixed from Start on
  SessionRegistry* const registry_;

  std::function<std::vector<std::string>()> local_revoked_;
  std::function<void(absl::flat_hash_set<std::string>)> on_revoked_;
  absl::flat_hash_set<std::string> revoked_;  // heartbeat thread only

  // The heartbeat thread's connection.
  RedisClient heartbeat_redis_;
  std::string epoch_;                           // heartbeat thread only
  absl::flat_hash_set<std::string> conflicts_;  // heartbeat thread only
  absl::flat_hash_map<std::string, VisitorPolicy> parsed_;  // likewise

  // Claims and admin writes from other threads.
  absl::Mutex calls_mu_;
  RedisClient calls_redis_ ABSL_GUARDED_BY(calls_mu_);

  // Per key (slug): this replica's admissions in the current minute not
  // yet sent, sent, and the others' (total as Redis said, minus ours).
  struct Count {
    int64_t minute = 0;
    int64_t pending = 0;
    int64_t own = 0;
    int64_t others = 0;
  };
  absl::Mutex counts_mu_;
  absl::flat_hash_map<std::string, Count> counts_ ABSL_GUARDED_BY(counts_mu_);

  mutable absl::Mutex mu_;
  // What this replica knows of admin:access and admin:ip.
  AdminValues known_access_ ABSL_GUARDED_BY(mu_);
  AdminValues known_ip_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Routes> routes_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const absl::flat_hash_map<std::string, std::string>> owners_
      ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::vector<tunnel::v1::ReplicaRecord>> others_
      ABSL_GUARDED_BY(mu_);
  ClusterState state_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;

  common::Gauge* redis_up_;
  common::Gauge* replicas_;
  common::Gauge* remote_tunnels_;
  common::Gauge* slug_conflicts_;
  common::Counter* redis_errors_;
  common::Counter* unverified_claims_;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_CLUSTER_DIRECTORY_H_
