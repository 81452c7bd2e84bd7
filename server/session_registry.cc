#include "server/session_registry.h"

#include "absl/strings/str_cat.h"

namespace tunnel::server {

void SessionRegistry::ReserveAgentSlugs(
    const std::vector<std::string>& agent_ids) {
  absl::MutexLock lock(&mu_);
  for (const std::string& id : agent_ids) slug_owner_.emplace(id, id);
}

absl::Status SessionRegistry::Register(const std::shared_ptr<Session>& session,
                                       const std::vector<std::string>& slugs,
                                       std::shared_ptr<Session>* replaced) {
  absl::MutexLock lock(&mu_);
  const std::string& agent = session->agent_id();
  for (const std::string& slug : slugs) {
    auto it = slug_owner_.find(slug);
    if (it != slug_owner_.end() && it->second != agent) {
      return absl::AlreadyExistsError(absl::StrCat(
          "slug \"", slug, "\" belongs to another agent; choose another"));
    }
  }
  if (auto it = live_.find(agent); it != live_.end()) {
    *replaced = it->second;
    for (auto r = routes_.begin(); r != routes_.end();) {
      if (r->second == *replaced) {
        routes_.erase(r++);
      } else {
        ++r;
      }
    }
  }
  live_[agent] = session;
  for (const std::string& slug : slugs) {
    slug_owner_[slug] = agent;
    routes_[slug] = session;
  }
  return absl::OkStatus();
}

void SessionRegistry::Unregister(const Session* session) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(session->agent_id());
  if (it == live_.end() || it->second.get() != session) return;
  live_.erase(it);
  for (auto r = routes_.begin(); r != routes_.end();) {
    if (r->second.get() == session) {
      routes_.erase(r++);
    } else {
      ++r;
    }
  }
}

absl::StatusOr<std::unique_ptr<TunnelStream>> SessionRegistry::Open(
    absl::string_view slug, tunnel::v1::TunnelRequest head) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = routes_.find(slug); it != routes_.end()) {
      session = it->second;
    } else if (slug_owner_.contains(slug)) {
      return absl::UnavailableError(absl::StrCat(
          "tunnel \"", slug, "\" is offline: its agent is not connected"));
    } else {
      return absl::NotFoundError(
          absl::StrCat("tunnel \"", slug, "\" does not exist"));
    }
  }
  return session->OpenStream(std::move(head));
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

}  // namespace tunnel::server
