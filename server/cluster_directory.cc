#include "server/cluster_directory.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/random.h"
#include "server/admin_service.h"
#include "server/visitor_policy.h"
#include "tunnel/v1/cluster.pb.h"

namespace tunnel::server {
namespace {

constexpr char kEpochKey[] = "cluster:epoch";
constexpr char kReplicasKey[] = "replicas";
constexpr char kOwnersKey[] = "owners";
constexpr char kAdminAccessKey[] = "admin:access";
constexpr char kAdminIpKey[] = "admin:ip";
constexpr char kTsSuffix[] = ":ts";
constexpr char kRevokedKey[] = "revoked";
// KEYS: the settings hash and its :ts hash; ARGV: slug, value, unix ms.
// Writes the setting unless the one there is newer; 1 if written.
constexpr char kSetIfNewer[] = R"lua(
local t = redis.call('HGET', KEYS[2], ARGV[1])
if t and tonumber(t) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
)lua";

std::vector<std::string> SetIfNewer(const char* key, absl::string_view slug,
                                    std::string value, int64_t unix_ms) {
  return {"EVAL",
          kSetIfNewer,
          "2",
          key,
          absl::StrCat(key, kTsSuffix),
          std::string(slug),
          std::move(value),
          absl::StrCat(unix_ms)};
}
// At most one heartbeat per this long, however often sessions change.
constexpr absl::Duration kMinSyncSpacing = absl::Milliseconds(20);

std::string ReplicaKey(absl::string_view id) {
  return absl::StrCat("replica:", id);
}

std::string OwnerName(absl::string_view agent_id, absl::string_view pool) {
  return pool.empty() ? absl::StrCat("agent:", agent_id)
                      : absl::StrCat("pool:", pool);
}

tunnel::v1::IpRules IpRulesProto(const common::IpRules& rules) {
  tunnel::v1::IpRules p;
  for (const common::Cidr& c : rules.allow) p.add_allow(c.ToString());
  for (const common::Cidr& c : rules.deny) p.add_deny(c.ToString());
  return p;
}

// The first error reply of a pipeline, as a status.
absl::Status FirstError(const std::vector<RedisReply>& replies) {
  for (const RedisReply& r : replies) {
    if (r.type == RedisReply::Type::kError) {
      return absl::InternalError(absl::StrCat("redis: ", r.str));
    }
  }
  return absl::OkStatus();
}

absl::Status NothingChanged(const absl::Status& why) {
  return absl::UnavailableError(
      absl::StrCat("the cluster's directory cannot be written (", why.message(),
                   "); nothing was changed"));
}

}  // namespace

ClusterDirectory::ClusterDirectory(ClusterOptions options,
                                   const RedisAddress& address,
                                   SessionRegistry* registry,
                                   common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      registry_(registry),
      heartbeat_redis_(address, options_.redis_timeout),
      calls_redis_(address, options_.redis_timeout),
      routes_(std::make_shared<const Routes>()),
      owners_(std::make_shared<
              const absl::flat_hash_map<std::string, std::string>>()),
      others_(
          std::make_shared<const std::vector<tunnel::v1::ReplicaRecord>>()) {
  redis_up_ =
      metrics
          ->AddGauge("tunnel_cluster_redis_up",
                     "1 while the last heartbeat reached the cluster's Redis")
          ->WithLabels({});
  replicas_ = metrics
                  ->AddGauge("tunnel_cluster_replicas",
                             "Gateway replicas with a live lease (this one "
                             "included), as of the last heartbeat")
                  ->WithLabels({});
  remote_tunnels_ =
      metrics
          ->AddGauge("tunnel_cluster_remote_tunnels",
                     "Tunnels served through other replicas' agents")
          ->WithLabels({});
  slug_conflicts_ =
      metrics
          ->AddGauge("tunnel_cluster_slug_conflicts",
                     "Slugs live here that the cluster says another agent "
                     "owns (claimed while Redis was unreachable)")
          ->WithLabels({});
  redis_errors_ =
      metrics
          ->AddCounter("tunnel_cluster_redis_errors_total",
                       "Heartbeats and calls that could not reach Redis")
          ->WithLabels({});
  unverified_claims_ =
      metrics
          ->AddCounter("tunnel_cluster_unverified_claims_total",
                       "Agent handshakes accepted without asking the "
                       "cluster who owns their slugs (Redis unreachable)")
          ->WithLabels({});
}

ClusterDirectory::~ClusterDirectory() { Stop(); }

void ClusterDirectory::Start() {
  SyncNow();
  thread_ = std::thread([this] { Run(); });
}

void ClusterDirectory::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::StatusOr<std::vector<RedisReply>> r = heartbeat_redis_.Pipeline(
      {{"DEL", ReplicaKey(options_.id)}, {"SREM", kReplicasKey, options_.id}});
  if (!r.ok()) {
    TUNNEL_LOG(WARNING) << "cluster: could not remove this replica's lease ("
                        << r.status().message()
                        << "); the others drop it when it expires";
  }
}

void ClusterDirectory::Changed() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void ClusterDirectory::Run() {
  absl::Time last = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto due = [this]()
                     ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || wake_; };
      mu_.AwaitWithDeadline(absl::Condition(&due), last + options_.heartbeat);
      if (stop_) return;
      wake_ = false;
    }
    // Sessions that come and go in a burst make one heartbeat, not many.
    const absl::Time earliest = last + kMinSyncSpacing;
    if (absl::Time now = absl::Now(); now < earliest) {
      absl::SleepFor(earliest - now);
    }
    last = absl::Now();
    SyncNow();
  }
}

void ClusterDirectory::SyncNow() {
  absl::Status s = Sync();
  absl::MutexLock lock(&mu_);
  const bool was_up = state_.redis_up;
  state_.redis_up = s.ok();
  if (s.ok()) {
    state_.error.clear();
    state_.last_sync = absl::Now();
  } else {
    state_.error = std::string(s.message());
    redis_errors_->Increment();
  }
  redis_up_->Set(s.ok() ? 1 : 0);
  if (was_up && !s.ok()) {
    TUNNEL_LOG(ERROR) << "cluster: Redis unreachable (" << s.message()
                      << "); serving this replica's own agents and the "
                         "last known directory";
  } else if (!was_up && s.ok()) {
    TUNNEL_LOG(INFO) << "cluster: directory in sync with Redis at "
                     << heartbeat_redis_.address().Describe() << " ("
                     << state_.replicas << " replica(s))";
  }
}

absl::Status ClusterDirectory::Sync() {
  // This replica's record and the slugs it serves.
  tunnel::v1::ReplicaRecord rec;
  rec.set_id(options_.id);
  rec.set_advertise(options_.advertise);
  rec.set_updated_unix_ms(absl::ToUnixMillis(absl::Now()));
  std::vector<std::pair<std::string, std::string>> claims;  // slug, owner
  for (const std::shared_ptr<Session>& s : registry_->Sessions()) {
    if (s->closing()) continue;
    rec.set_sessions(rec.sessions() + 1);
    rec.set_streams(rec.streams() + s->stream_count());
    const std::string owner = OwnerName(s->agent_id(), s->pool());
    for (const SessionTunnel& t : s->tunnels()) {
      tunnel::v1::ReplicaTunnel* rt = rec.add_tunnels();
      rt->set_slug(t.slug);
      rt->set_agent_id(s->agent_id());
      rt->set_pool(s->pool());
      *rt->mutable_policy() = s->policy();
      rt->set_unhealthy(s->UnhealthyReason(t.slug).has_value());
      claims.emplace_back(t.slug, owner);
    }
    *rec.add_agents() = AgentOf(*s, *registry_);
  }
  const int64_t lease_ms =
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.lease));
  std::vector<std::vector<std::string>> cmds = {
      {"SET", kEpochKey, common::RandomHex(16), "NX"},
      {"GET", kEpochKey},
      {"SET", ReplicaKey(options_.id), rec.SerializeAsString(), "PX",
       absl::StrCat(lease_ms)},
      {"SADD", kReplicasKey, options_.id},
      {"SMEMBERS", kReplicasKey},
      {"HGETALL", kAdminAccessKey},
      {"HGETALL", kAdminIpKey},
      {"HGETALL", kOwnersKey},
      {"HGETALL", absl::StrCat(kAdminAccessKey, kTsSuffix)},
      {"HGETALL", absl::StrCat(kAdminIpKey, kTsSuffix)},
  };
  // Our revocations in, everyone's out.
  std::vector<std::string> sadd = {"SADD", kRevokedKey};
  if (local_revoked_) {
    for (std::string& id : local_revoked_()) sadd.push_back(std::move(id));
  }
  if (sadd.size() == 2) sadd = {"EXISTS", kRevokedKey};  // same reply shape
  cmds.push_back(std::move(sadd));
  cmds.push_back({"SMEMBERS", kRevokedKey});
  constexpr size_t kFixed = 12;
  for (const auto& [slug, owner] : claims) {
    cmds.push_back({"HSETNX", kOwnersKey, slug, owner});
    cmds.push_back({"HGET", kOwnersKey, slug});
  }
  // This minute's admissions per tunnel: ours added, the total read back.
  const int64_t minute = absl::ToUnixSeconds(absl::Now()) / 60;
  std::vector<std::pair<std::string, int64_t>> sent;  // key, delta
  {
    absl::MutexLock lock(&counts_mu_);
    for (auto it = counts_.begin(); it != counts_.end();) {
      if (it->second.minute < minute) {
        counts_.erase(it++);
        continue;
      }
      sent.emplace_back(it->first, it->second.pending);
      ++it;
    }
  }
  const size_t rates_at = cmds.size();
  for (const auto& [key, delta] : sent) {
    const std::string rkey = absl::StrCat("rate:", minute, ":", key);
    cmds.push_back({"INCRBY", rkey, absl::StrCat(delta)});
    cmds.push_back({"EXPIRE", rkey, "120"});
  }
  absl::StatusOr<std::vector<RedisReply>> r = heartbeat_redis_.Pipeline(cmds);
  if (!r.ok()) return r.status();
  if (absl::Status s = FirstError(*r); !s.ok()) return s;
  const std::vector<RedisReply>& rep = *r;
  {
    absl::MutexLock lock(&counts_mu_);
    for (size_t i = 0; i < sent.size(); ++i) {
      auto it = counts_.find(sent[i].first);
      if (it == counts_.end() || it->second.minute != minute) continue;
      Count& c = it->second;
      c.pending -= sent[i].second;
      c.own += sent[i].second;
      c.others = std::max<int64_t>(0, rep[rates_at + 2 * i].integer - c.own);
    }
  }

  // Revocations are for good: the set only grows here, even when Redis
  // lost it and the replicas are still writing it back.
  bool grew = false;
  for (const RedisReply& id : rep[11].elements) {
    grew |= revoked_.insert(id.str).second;
  }
  if (grew && on_revoked_) on_revoked_(revoked_);

  // Redis lost its data (restarted without persistence, flushed): the
  // leases and owners come back with this heartbeat; the admin settings
  // only from the replicas that hold them.
  const std::string& epoch = rep[1].str;
  bool republished = false;
  if (!epoch_.empty() && epoch != epoch_) {
    TUNNEL_LOG(WARNING) << "cluster: Redis lost the directory (new epoch); "
                           "writing back this replica's claims and admin "
                           "settings";
    if (absl::Status s = RepublishAdmin(); !s.ok()) return s;
    republished = true;
  }
  epoch_ = epoch;
  if (!republished) ApplyAdmin(rep[5], rep[8], rep[6], rep[9]);

  // Slugs live here that another agent owns in the cluster (both claimed
  // while Redis could not be asked): reported, not taken from the agent.
  absl::flat_hash_set<std::string> conflicts;
  for (size_t i = 0; i < claims.size(); ++i) {
    const RedisReply& owner = rep[kFixed + 2 * i + 1];
    if (owner.type == RedisReply::Type::kString &&
        owner.str != claims[i].second) {
      if (!conflicts_.contains(claims[i].first)) {
        TUNNEL_LOG(WARNING)
            << "cluster: slug \"" << claims[i].first << "\" is served here by "
            << claims[i].second << " but the cluster gives it to " << owner.str
            << " (both claimed it while Redis was unreachable)";
      }
      conflicts.insert(claims[i].first);
    }
  }
  conflicts_ = std::move(conflicts);
  slug_conflicts_->Set(static_cast<int64_t>(conflicts_.size()));

  auto owners =
      std::make_shared<absl::flat_hash_map<std::string, std::string>>();
  for (size_t i = 0; i + 1 < rep[7].elements.size(); i += 2) {
    (*owners)[rep[7].elements[i].str] = rep[7].elements[i + 1].str;
  }

  // Every replica's record.
  std::vector<std::string> members;
  for (const RedisReply& m : rep[4].elements) members.push_back(m.str);
  std::vector<std::string> mget = {"MGET"};
  for (const std::string& m : members) mget.push_back(ReplicaKey(m));
  absl::StatusOr<RedisReply> got = heartbeat_redis_.Command(mget);
  if (!got.ok()) return got.status();
  std::vector<std::vector<std::string>> expired;
  auto routes = std::make_shared<Routes>();
  auto others = std::make_shared<std::vector<tunnel::v1::ReplicaRecord>>();
  size_t replicas = 0;
  size_t remote = 0;
  absl::flat_hash_map<std::string, VisitorPolicy> parsed;
  for (size_t i = 0; i < members.size() && i < got->elements.size(); ++i) {
    const RedisReply& v = got->elements[i];
    if (v.type != RedisReply::Type::kString) {
      expired.push_back({"SREM", kReplicasKey, members[i]});
      continue;
    }
    tunnel::v1::ReplicaRecord other;
    if (!other.ParseFromString(v.str)) {
      TUNNEL_LOG(WARNING) << "cluster: unreadable record of replica "
                          << members[i] << "; ignored";
      continue;
    }
    ++replicas;
    if (other.id() == options_.id) continue;
    for (const tunnel::v1::ReplicaTunnel& t : other.tunnels()) {
      RemoteRoute route;
      route.replica_id = other.id();
      route.advertise = other.advertise();
      route.agent_id = t.agent_id();
      route.pool = t.pool();
      route.unhealthy = t.unhealthy();
      const std::string key = t.policy().SerializeAsString();
      auto it = parsed.find(key);
      if (it == parsed.end()) {
        it = parsed.emplace(key, ParsePolicy(t.policy())).first;
      }
      route.policy = it->second;
      (*routes)[t.slug()].push_back(std::move(route));
      ++remote;
    }
    others->push_back(std::move(other));
  }
  parsed_ = std::move(parsed);
  if (!expired.empty()) (void)heartbeat_redis_.Pipeline(expired);
  replicas_->Set(static_cast<int64_t>(replicas));
  remote_tunnels_->Set(static_cast<int64_t>(remote));
  absl::MutexLock lock(&mu_);
  routes_ = std::move(routes);
  owners_ = std::move(owners);
  others_ = std::move(others);
  state_.replicas = replicas;
  state_.remote_tunnels = remote;
  return absl::OkStatus();
}

VisitorPolicy ClusterDirectory::ParsePolicy(
    const tunnel::v1::TunnelPolicy& policy) {
  if (auto it = parsed_.find(policy.SerializeAsString()); it != parsed_.end()) {
    return it->second;
  }
  absl::StatusOr<VisitorPolicy> p = ParseTunnelPolicy(policy);
  if (p.ok()) return *std::move(p);
  // The owner checked it at the agent's handshake: only a replica of another
  // version could get here. Nobody passes rather than everybody.
  TUNNEL_LOG(ERROR) << "cluster: unreadable visitor policy ("
                    << p.status().message() << "); the tunnel is closed to "
                    << "visitors through this replica";
  VisitorPolicy closed;
  common::IpRules none;
  absl::StatusOr<common::IpRules> all =
      common::ParseIpRules({}, {"0.0.0.0/0", "::/0"}, "deny", "deny");
  if (all.ok()) none = *std::move(all);
  closed.ip_rules = std::make_shared<const common::IpRules>(std::move(none));
  return closed;
}

namespace {

// HGETALL's flat [field, value, ...] of a settings hash and its :ts hash.
absl::flat_hash_map<std::string, std::pair<std::string, int64_t>> Settings(
    const RedisReply& values, const RedisReply& times) {
  absl::flat_hash_map<std::string, std::pair<std::string, int64_t>> out;
  for (size_t i = 0; i + 1 < values.elements.size(); i += 2) {
    out[values.elements[i].str].first = values.elements[i + 1].str;
  }
  for (size_t i = 0; i + 1 < times.elements.size(); i += 2) {
    auto it = out.find(times.elements[i].str);
    int64_t ms = 0;
    if (it != out.end() && absl::SimpleAtoi(times.elements[i + 1].str, &ms)) {
      it->second.second = ms;
    }
  }
  return out;
}

}  // namespace

void ClusterDirectory::ApplyAdmin(const RedisReply& access,
                                  const RedisReply& access_ts,
                                  const RedisReply& ip,
                                  const RedisReply& ip_ts) {
  SessionRegistry::AdminCodes codes;
  SessionRegistry::AdminIpRules rules;
  AdminValues known_access;
  AdminValues known_ip;
  for (auto& [slug, v] : Settings(access, access_ts)) {
    tunnel::v1::AdminAccess a;
    if (!a.ParseFromString(v.first)) continue;
    codes[slug] =
        a.has_code()
            ? std::make_shared<const tunnel::v1::AccessCodeHash>(a.code())
            : nullptr;
    known_access[slug] = AdminValue{std::move(v.first), v.second};
  }
  for (auto& [slug, v] : Settings(ip, ip_ts)) {
    tunnel::v1::IpRules p;
    if (!p.ParseFromString(v.first)) continue;
    absl::StatusOr<common::IpRules> parsed = common::ParseIpRules(
        {p.allow().begin(), p.allow().end()},
        {p.deny().begin(), p.deny().end()}, "allow", "deny");
    if (!parsed.ok()) continue;
    // Empty: the admin cleared the rules (kept, so that it stays cleared).
    if (!parsed->empty()) {
      rules[slug] = std::make_shared<const common::IpRules>(*std::move(parsed));
    }
    known_ip[slug] = AdminValue{std::move(v.first), v.second};
  }
  registry_->ReplaceAdminSettings(std::move(codes), std::move(rules));
  absl::MutexLock lock(&mu_);
  known_access_ = std::move(known_access);
  known_ip_ = std::move(known_ip);
}

absl::Status ClusterDirectory::RepublishAdmin() {
  std::vector<std::vector<std::string>> cmds;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [slug, v] : known_access_) {
      cmds.push_back(SetIfNewer(kAdminAccessKey, slug, v.value, v.unix_ms));
    }
    for (const auto& [slug, v] : known_ip_) {
      cmds.push_back(SetIfNewer(kAdminIpKey, slug, v.value, v.unix_ms));
    }
  }
  if (cmds.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<RedisReply>> r = heartbeat_redis_.Pipeline(cmds);
  if (!r.ok()) return r.status();
  return FirstError(*r);
}

absl::Status ClusterDirectory::Claim(const std::vector<std::string>& slugs,
                                     absl::string_view agent_id,
                                     absl::string_view pool) {
  auto unverified = [&](absl::string_view why) {
    unverified_claims_->Increment();
    TUNNEL_LOG(WARNING) << "cluster: accepting agent " << agent_id
                        << " without asking the cluster who owns its slugs ("
                        << why << ")";
    return absl::OkStatus();
  };
  if (!state().redis_up) return unverified("Redis unreachable");
  const std::string owner = OwnerName(agent_id, pool);
  std::vector<std::vector<std::string>> cmds;
  for (const std::string& slug : slugs) {
    cmds.push_back({"HSETNX", kOwnersKey, slug, owner});
    cmds.push_back({"HGET", kOwnersKey, slug});
  }
  absl::MutexLock lock(&calls_mu_);
  absl::StatusOr<std::vector<RedisReply>> r = calls_redis_.Pipeline(cmds);
  if (r.ok()) {
    if (absl::Status s = FirstError(*r); !s.ok()) r = s;
  }
  if (!r.ok()) {
    redis_errors_->Increment();
    return unverified(r.status().message());
  }
  for (size_t i = 0; i < slugs.size(); ++i) {
    const std::string& held = (*r)[2 * i + 1].str;
    if (held == owner) continue;
    // Give back what this handshake took before the refusal.
    std::vector<std::string> undo = {"HDEL", kOwnersKey};
    for (size_t j = 0; j < slugs.size(); ++j) {
      if ((*r)[2 * j].integer == 1) undo.push_back(slugs[j]);
    }
    if (undo.size() > 2) (void)calls_redis_.Command(undo);
    if (absl::StartsWith(held, "pool:")) {
      const std::string other(held.substr(5));
      return absl::AlreadyExistsError(
          absl::StrCat("slug \"", slugs[i], "\" is pool \"", other,
                       "\"'s in the gateway cluster; join it with --pool ",
                       other, " and a token issued with --pool ", other));
    }
    return absl::AlreadyExistsError(
        absl::StrCat("slug \"", slugs[i],
                     "\" belongs to another agent in the gateway cluster; "
                     "choose another"));
  }
  return absl::OkStatus();
}

bool ClusterDirectory::KnowsSlug(absl::string_view slug) {
  {
    absl::MutexLock lock(&calls_mu_);
    absl::StatusOr<RedisReply> r =
        calls_redis_.Command({"HEXISTS", kOwnersKey, std::string(slug)});
    if (r.ok()) return r->integer == 1;
    redis_errors_->Increment();
  }
  absl::MutexLock lock(&mu_);
  return routes_->contains(slug) || owners_->contains(slug);
}

absl::Status ClusterDirectory::PublishAccess(
    absl::string_view slug,
    const std::optional<tunnel::v1::AccessCodeHash>& code) {
  tunnel::v1::AdminAccess a;
  if (code.has_value()) *a.mutable_code() = *code;
  return PublishAdmin(kAdminAccessKey, slug, a.SerializeAsString());
}

absl::Status ClusterDirectory::PublishIpRules(absl::string_view slug,
                                              const common::IpRules* rules) {
  // Cleared rules are written as empty ones, not deleted: see the header.
  return PublishAdmin(kAdminIpKey, slug,
                      rules == nullptr
                          ? std::string()
                          : IpRulesProto(*rules).SerializeAsString());
}

absl::Status ClusterDirectory::PublishAdmin(const char* key,
                                            absl::string_view slug,
                                            std::string value) {
  const int64_t now = absl::ToUnixMillis(absl::Now());
  absl::StatusOr<RedisReply> r;
  {
    absl::MutexLock lock(&calls_mu_);
    r = calls_redis_.Command(SetIfNewer(key, slug, value, now));
  }
  if (!r.ok()) return NothingChanged(r.status());
  if (r->integer != 1) {
    return absl::AbortedError(
        absl::StrCat("a newer admin setting for \"", slug,
                     "\" was made meanwhile (clocks of the replicas apart?); "
                     "nothing was changed"));
  }
  absl::MutexLock lock(&mu_);
  AdminValues& known = key == kAdminAccessKey ? known_access_ : known_ip_;
  known[std::string(slug)] = AdminValue{std::move(value), now};
  return absl::OkStatus();
}

std::shared_ptr<const std::vector<RemoteRoute>> ClusterDirectory::Lookup(
    absl::string_view slug) const {
  std::shared_ptr<const Routes> routes;
  {
    absl::MutexLock lock(&mu_);
    routes = routes_;
  }
  auto it = routes->find(slug);
  if (it == routes->end()) return nullptr;
  // Aliasing: keeps the whole snapshot alive, points at one entry.
  return std::shared_ptr<const std::vector<RemoteRoute>>(routes, &it->second);
}

int64_t ClusterDirectory::Others(absl::string_view key, int64_t minute) {
  absl::MutexLock lock(&counts_mu_);
  auto it = counts_.find(key);
  return it == counts_.end() || it->second.minute != minute ? 0
                                                            : it->second.others;
}

void ClusterDirectory::Add(absl::string_view key, int64_t minute,
                           int64_t delta) {
  absl::MutexLock lock(&counts_mu_);
  Count& c = counts_[key];
  if (c.minute != minute) c = Count{minute, 0, 0, 0};
  c.pending += delta;
}

std::vector<tunnel::v1::ReplicaRecord> ClusterDirectory::OtherReplicas() const {
  absl::MutexLock lock(&mu_);
  return *others_;
}

std::string ClusterDirectory::OwnerOf(absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  auto it = owners_->find(slug);
  return it == owners_->end() ? std::string() : it->second;
}

ClusterState ClusterDirectory::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

}  // namespace tunnel::server
