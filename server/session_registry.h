// Which agent session serves which slug. Implements TunnelRouter for the
// front door. Thread-safe: agents' calls register and unregister, front-door
// workers look up.
//
// A slug belongs to the first agent id that claims it for the gateway's
// lifetime (and an agent id named in the credentials owns the slug equal to
// its id from the start), so a slug never silently moves to another agent.
// While its agent is offline the slug is "known": visitors get 502, not 404.
// A pool slug belongs to its pool instead: every agent whose token may serve
// the pool joins it, and Open() picks, per request, the member with the
// fewest streams in flight (ties: round-robin), skipping draining ones.
//
// Visitor policy: what an agent asks of visitors (ConnectRequest's access
// code, IP rules, basic auth users) applies to the slugs of its live session
// and is replaced on every reconnect. An admin setting of a slug's access
// code (SetAccess) or IP rules (SetIpRules) overrides the agent's, survives
// reconnects and lasts for the gateway's lifetime; only hashes are stored.
#ifndef TUNNEL_SERVER_SESSION_REGISTRY_H_
#define TUNNEL_SERVER_SESSION_REGISTRY_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/session.h"
#include "server/tunnel_activity.h"
#include "server/tunnel_router.h"

namespace tunnel::server {

// A known slug as the admin API sees it.
struct TunnelEntry {
  std::string slug;
  std::string owner;  // agent id that owns the slug ("" for a pool)
  std::string pool;   // the pool's name for a pool slug, else ""
  std::shared_ptr<Session> session;  // null while offline; a pool: the first
                                     // member
  std::vector<std::shared_ptr<Session>> members;  // every live session
  const TunnelActivity* activity = nullptr;  // lives as long as the registry
};

// A pool slug and its connected members, for metrics.
struct PoolView {
  std::string pool;
  std::string slug;
  std::vector<std::shared_ptr<Session>> members;
};

class SessionRegistry : public TunnelRouter {
 public:
  SessionRegistry() = default;

  // A slug from common::RandomSlug that no agent owns (nor is reserved for
  // one) now.
  std::string UnusedRandomSlug() const;

  // Reserves slug == agent id for each of these agents.
  void ReserveAgentSlugs(const std::vector<std::string>& agent_ids);

  // Makes `session` the live session of its agent for `slugs`. Fails
  // ALREADY_EXISTS naming the slug if another agent owns one of them. If the
  // agent already had a live session, it is returned in `*replaced` (the
  // caller tells it why and closes it) and its slugs pass to the new one.
  // `policy`: what the agent asked visitors of all of `slugs` to satisfy
  // (an admin setting for a slug wins part by part). `pool` non-empty: the
  // slugs are that pool's (the caller checked the right to it); the
  // session joins them as a member beside other agents' sessions, and the
  // first member creates them. A pool slug is never an agent's, nor the
  // reverse (ALREADY_EXISTS naming whose it is).
  absl::Status Register(const std::shared_ptr<Session>& session,
                        const std::vector<std::string>& slugs,
                        std::shared_ptr<Session>* replaced,
                        const VisitorPolicy& policy = {},
                        absl::string_view pool = "");
  // Removes `session` if it is still the live one of its agent.
  void Unregister(const Session* session);

  absl::StatusOr<std::unique_ptr<TunnelStream>> Open(
      absl::string_view slug, tunnel::v1::TunnelRequest head,
      const void* avoid = nullptr) override;

  size_t session_count() const;
  // Snapshot of the live sessions.
  std::vector<std::shared_ptr<Session>> Sessions() const;
  // Streams in flight across live sessions.
  size_t stream_count() const;
  // The agent's tunnel session by its agent id; its share-only session
  // (agent-tunnel share) by Session::registry_key().
  std::shared_ptr<Session> FindByAgent(absl::string_view agent_id) const;
  // Every pool slug with its live members (none while all are offline).
  std::vector<PoolView> Pools() const;
  // NOT_FOUND for a slug no agent owns.
  absl::StatusOr<TunnelEntry> FindTunnel(absl::string_view slug) const;

  VisitorPolicy PolicyFor(absl::string_view slug) const override;

  // The policy of a slug whose agent is connected to another replica of a
  // gateway cluster: `remote` (what that agent asked) unless the slug is
  // live here, with the admin's settings over it as in PolicyFor.
  VisitorPolicy PolicyFor(absl::string_view slug,
                          const VisitorPolicy& remote) const;
  // Some session here serves `slug` now.
  bool IsLive(absl::string_view slug) const;
  // Some agent or pool owns `slug` on this gateway.
  bool KnowsSlug(absl::string_view slug) const;

  // Admin override for a known slug: `code` gates it, nullopt makes it
  // public (whatever its agent asked for). NOT_FOUND for an unknown slug,
  // unless `known_elsewhere` (a cluster replica knows it).
  absl::Status SetAccess(absl::string_view slug,
                         std::optional<tunnel::v1::AccessCodeHash> code,
                         bool known_elsewhere = false);

  // Admin override of a known slug's IP rules (null: drop the override).
  // NOT_FOUND for an unknown slug, unless `known_elsewhere`.
  absl::Status SetIpRules(absl::string_view slug,
                          std::shared_ptr<const common::IpRules> rules,
                          bool known_elsewhere = false);

  // Every admin setting at once, as a gateway cluster shares them: the
  // access settings (null: public) and IP rules of each slug that has one.
  using AdminCodes =
      absl::flat_hash_map<std::string,
                          std::shared_ptr<const tunnel::v1::AccessCodeHash>>;
  using AdminIpRules =
      absl::flat_hash_map<std::string, std::shared_ptr<const common::IpRules>>;
  void ReplaceAdminSettings(AdminCodes codes, AdminIpRules rules);
  std::pair<AdminCodes, AdminIpRules> AdminSettings() const;
  // Whose rules are in force for `slug`: "admin", "agent" or "none".
  std::string IpRulesSource(absl::string_view slug) const;

 private:
  mutable absl::Mutex mu_;
  // slug -> owning agent id.
  absl::flat_hash_map<std::string, std::string> slug_owner_
      ABSL_GUARDED_BY(mu_);
  // Pool slug -> the pool's name (slug_owner_ holds "" for these).
  absl::flat_hash_map<std::string, std::string> pool_of_ ABSL_GUARDED_BY(mu_);
  // agent id -> live session.
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> live_
      ABSL_GUARDED_BY(mu_);
  // Live slug -> the sessions serving it: one, or a pool's members.
  struct Route {
    std::vector<std::shared_ptr<Session>> members;
    uint64_t turn = 0;  // round-robin start among equally loaded members
  };
  absl::flat_hash_map<std::string, Route> routes_ ABSL_GUARDED_BY(mu_);
  // Takes `session` out of every route; a route left empty goes, with its
  // agent policy.
  void RemoveRoutesLocked(const Session* session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Owned slug -> its request counters. Entries are never removed (slugs
  // keep their owner for the gateway's lifetime), so the pointers stay valid
  // and the map grows only with the set of owned slugs.
  absl::flat_hash_map<std::string, std::unique_ptr<TunnelActivity>> activity_
      ABSL_GUARDED_BY(mu_);
  // Live slug -> what its agent asked of visitors (only slugs with rules).
  absl::flat_hash_map<std::string, std::shared_ptr<const VisitorPolicy>>
      agent_policy_ ABSL_GUARDED_BY(mu_);
  // Slug -> admin's access code (null: public). Bounded by the owned slugs.
  // (In a cluster: by the slugs the cluster's admins set.)
  AdminCodes admin_codes_ ABSL_GUARDED_BY(mu_);
  // Slug -> admin's IP rules. Bounded by the owned slugs.
  AdminIpRules admin_ip_rules_ ABSL_GUARDED_BY(mu_);
  TunnelActivity* ActivityLocked(const std::string& slug)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_SESSION_REGISTRY_H_
