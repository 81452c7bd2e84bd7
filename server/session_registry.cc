#include "server/session_registry.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/slug.h"

namespace tunnel::server {

void SessionRegistry::ReserveAgentSlugs(
    const std::vector<std::string>& agent_ids) {
  absl::MutexLock lock(&mu_);
  for (const std::string& id : agent_ids) {
    slug_owner_.emplace(id, id);
    ActivityLocked(id);
  }
}

std::string SessionRegistry::UnusedRandomSlug() const {
  absl::MutexLock lock(&mu_);
  while (true) {  // 36^8 slugs: a second draw is already rare
    std::string slug = common::RandomSlug();
    if (!slug_owner_.contains(slug)) return slug;
  }
}

TunnelActivity* SessionRegistry::ActivityLocked(const std::string& slug) {
  std::unique_ptr<TunnelActivity>& a = activity_[slug];
  if (a == nullptr) a = std::make_unique<TunnelActivity>();
  return a.get();
}

absl::Status SessionRegistry::Register(const std::shared_ptr<Session>& session,
                                       const std::vector<std::string>& slugs,
                                       std::shared_ptr<Session>* replaced,
                                       const VisitorPolicy& policy,
                                       absl::string_view pool) {
  std::shared_ptr<const VisitorPolicy> shared =
      policy.empty() ? nullptr : std::make_shared<const VisitorPolicy>(policy);
  absl::MutexLock lock(&mu_);
  const std::string& agent = session->agent_id();
  for (const std::string& slug : slugs) {
    auto it = slug_owner_.find(slug);
    if (it == slug_owner_.end()) continue;
    auto p = pool_of_.find(slug);
    if (!pool.empty() && p == pool_of_.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("slug \"", slug, "\" belongs to agent ", it->second,
                       ", not to a pool; choose another pool name"));
    }
    if (pool.empty() && p != pool_of_.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("slug \"", slug, "\" is pool \"", p->second,
                       "\"'s; join it with --pool ", p->second,
                       " and a token issued with --pool ", p->second));
    }
    if (pool.empty() && it->second != agent) {
      return absl::AlreadyExistsError(absl::StrCat(
          "slug \"", slug, "\" belongs to another agent; choose another"));
    }
  }
  if (auto it = live_.find(session->registry_key()); it != live_.end()) {
    *replaced = it->second;
    RemoveRoutesLocked(replaced->get());
  }
  live_[session->registry_key()] = session;
  for (const std::string& slug : slugs) {
    if (pool.empty()) {
      slug_owner_[slug] = agent;
    } else {
      slug_owner_[slug] = "";
      pool_of_[slug] = std::string(pool);
    }
    routes_[slug].members.push_back(session);
    ActivityLocked(slug);
    // A pool's policy is what its latest member asked for.
    if (shared != nullptr) {
      agent_policy_[slug] = shared;
    } else {
      agent_policy_.erase(slug);
    }
  }
  return absl::OkStatus();
}

void SessionRegistry::RemoveRoutesLocked(const Session* session) {
  for (auto r = routes_.begin(); r != routes_.end();) {
    std::vector<std::shared_ptr<Session>>& m = r->second.members;
    m.erase(std::remove_if(m.begin(), m.end(),
                           [&](const std::shared_ptr<Session>& s) {
                             return s.get() == session;
                           }),
            m.end());
    if (m.empty()) {
      agent_policy_.erase(r->first);
      routes_.erase(r++);
    } else {
      ++r;
    }
  }
}

void SessionRegistry::Unregister(const Session* session) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(session->registry_key());
  if (it == live_.end() || it->second.get() != session) return;
  live_.erase(it);
  RemoveRoutesLocked(session);
}

absl::StatusOr<std::unique_ptr<TunnelStream>> SessionRegistry::Open(
    absl::string_view slug, tunnel::v1::TunnelRequest head, const void* avoid) {
  // Inline room for small pools: an agent's own slug costs no allocation.
  absl::InlinedVector<std::shared_ptr<Session>, 4> candidates;
  TunnelActivity* activity = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = routes_.find(slug); it != routes_.end()) {
      Route& route = it->second;
      const size_t n = route.members.size();
      const size_t start = n > 1 ? route.turn++ % n : 0;
      for (size_t i = 0; i < n; ++i) {
        const std::shared_ptr<Session>& m = route.members[(start + i) % n];
        if (m.get() != avoid) candidates.push_back(m);
      }
      if (auto a = activity_.find(slug); a != activity_.end()) {
        activity = a->second.get();
      }
    } else if (auto p = pool_of_.find(slug); p != pool_of_.end()) {
      return absl::UnavailableError(
          absl::StrCat("tunnel \"", slug, "\" is offline: no agent of pool \"",
                       p->second, "\" is connected"));
    } else if (slug_owner_.contains(slug)) {
      return absl::UnavailableError(absl::StrCat(
          "tunnel \"", slug, "\" is offline: its agent is not connected"));
    } else {
      return absl::NotFoundError(
          absl::StrCat("tunnel \"", slug, "\" does not exist"));
    }
  }
  if (candidates.empty()) {
    return absl::FailedPreconditionError("no other member to try");
  }
  if (candidates.size() > 1) {
    // Fewest streams in flight first; equal ones keep the rotated order;
    // draining and unhealthy members last (they refuse, and the next is
    // tried).
    std::vector<std::pair<size_t, size_t>> load;  // (load, index)
    load.reserve(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      const Session& s = *candidates[i];
      const bool out = s.draining() || s.UnhealthyReason(slug).has_value();
      load.emplace_back(out ? SIZE_MAX : s.stream_count(), i);
    }
    std::stable_sort(
        load.begin(), load.end(),
        [](const auto& a, const auto& b) { return a.first < b.first; });
    absl::InlinedVector<std::shared_ptr<Session>, 4> ordered;
    for (const auto& [l, i] : load) ordered.push_back(candidates[i]);
    candidates.swap(ordered);
  }
  // Replaced by the loop's first pass (there is a candidate). A shared
  // Status is copied by reference count: a new one with a message would
  // allocate on every request.
  static const absl::Status* const kNoMember =
      new absl::Status(absl::UnavailableError("no member"));
  absl::StatusOr<std::unique_ptr<TunnelStream>> stream = *kNoMember;
  absl::Status unhealthy;  // the first member that refused as unhealthy
  for (const std::shared_ptr<Session>& c : candidates) {
    // Only a call that succeeds takes the head. A member whose service is
    // unhealthy, draining or closing refuses (UNAVAILABLE): try the next.
    stream = c->OpenStream(std::move(head));
    if (stream.ok()) break;
    if (IsLocalServiceUnhealthy(stream.status())) {
      if (unhealthy.ok()) unhealthy = stream.status();
      continue;
    }
    if (!absl::IsUnavailable(stream.status())) break;
  }
  // No member took it and one was unhealthy: the visitor hears why (503),
  // not after a failed connect.
  if (!stream.ok() && !unhealthy.ok() && absl::IsUnavailable(stream.status())) {
    return unhealthy;
  }
  if (stream.ok() && activity != nullptr) activity->Record(absl::Now());
  return stream;
}

absl::StatusOr<TunnelEntry> SessionRegistry::FindTunnel(
    absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  auto owner = slug_owner_.find(slug);
  if (owner == slug_owner_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tunnel \"", slug, "\" does not exist"));
  }
  TunnelEntry e;
  e.slug = std::string(slug);
  e.owner = owner->second;
  if (auto p = pool_of_.find(slug); p != pool_of_.end()) e.pool = p->second;
  if (auto r = routes_.find(slug); r != routes_.end()) {
    e.members = r->second.members;
    e.session = e.members.front();
  }
  if (auto a = activity_.find(slug); a != activity_.end()) {
    e.activity = a->second.get();
  }
  return e;
}

size_t SessionRegistry::session_count() const {
  absl::MutexLock lock(&mu_);
  return live_.size();
}

std::shared_ptr<Session> SessionRegistry::FindByAgent(
    absl::string_view agent_id) const {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(agent_id);
  return it == live_.end() ? nullptr : it->second;
}

std::vector<PoolView> SessionRegistry::Pools() const {
  absl::MutexLock lock(&mu_);
  std::vector<PoolView> out;
  for (const auto& [slug, pool] : pool_of_) {
    PoolView v;
    v.pool = pool;
    v.slug = slug;
    if (auto r = routes_.find(slug); r != routes_.end()) {
      v.members = r->second.members;
    }
    out.push_back(std::move(v));
  }
  return out;
}

std::vector<std::shared_ptr<Session>> SessionRegistry::Sessions() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Session>> out;
  out.reserve(live_.size());
  for (const auto& [id, s] : live_) out.push_back(s);
  return out;
}

size_t SessionRegistry::stream_count() const {
  size_t n = 0;
  for (const auto& s : Sessions()) n += s->stream_count();
  return n;
}

VisitorPolicy SessionRegistry::PolicyFor(absl::string_view slug) const {
  return PolicyFor(slug, VisitorPolicy{});
}

VisitorPolicy SessionRegistry::PolicyFor(absl::string_view slug,
                                         const VisitorPolicy& remote) const {
  absl::MutexLock lock(&mu_);
  VisitorPolicy p = remote;
  if (auto it = agent_policy_.find(slug); it != agent_policy_.end()) {
    p = *it->second;
  } else if (routes_.contains(slug)) {
    p = VisitorPolicy{};  // live here without rules
  }
  if (auto it = admin_codes_.find(slug); it != admin_codes_.end()) {
    p.access_code = it->second;
  }
  if (auto it = admin_ip_rules_.find(slug); it != admin_ip_rules_.end()) {
    p.ip_rules = it->second;
  }
  return p;
}

bool SessionRegistry::IsLive(absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  return routes_.contains(slug);
}

bool SessionRegistry::KnowsSlug(absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  return slug_owner_.contains(slug);
}

void SessionRegistry::ReplaceAdminSettings(AdminCodes codes,
                                           AdminIpRules rules) {
  absl::MutexLock lock(&mu_);
  admin_codes_ = std::move(codes);
  admin_ip_rules_ = std::move(rules);
}

std::pair<SessionRegistry::AdminCodes, SessionRegistry::AdminIpRules>
SessionRegistry::AdminSettings() const {
  absl::MutexLock lock(&mu_);
  return {admin_codes_, admin_ip_rules_};
}

absl::Status SessionRegistry::SetIpRules(
    absl::string_view slug, std::shared_ptr<const common::IpRules> rules,
    bool known_elsewhere) {
  absl::MutexLock lock(&mu_);
  if (!known_elsewhere && !slug_owner_.contains(slug)) {
    return absl::NotFoundError(
        absl::StrCat("no tunnel \"", slug, "\" on this gateway"));
  }
  if (rules == nullptr) {
    admin_ip_rules_.erase(slug);
  } else {
    admin_ip_rules_[slug] = std::move(rules);
  }
  return absl::OkStatus();
}

std::string SessionRegistry::IpRulesSource(absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  if (admin_ip_rules_.contains(slug)) return "admin";
  if (auto it = agent_policy_.find(slug);
      it != agent_policy_.end() && it->second->ip_rules != nullptr) {
    return "agent";
  }
  return "none";
}

absl::Status SessionRegistry::SetAccess(
    absl::string_view slug, std::optional<tunnel::v1::AccessCodeHash> code,
    bool known_elsewhere) {
  absl::MutexLock lock(&mu_);
  if (!known_elsewhere && !slug_owner_.contains(slug)) {
    return absl::NotFoundError(
        absl::StrCat("no tunnel \"", slug, "\" on this gateway"));
  }
  admin_codes_[slug] =
      code.has_value()
          ? std::make_shared<const tunnel::v1::AccessCodeHash>(*std::move(code))
          : nullptr;
  return absl::OkStatus();
}

}  // namespace tunnel::server
