#include "server/relay_hub.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/relay_protocol.h"
#include "server/session.h"

namespace tunnel::server {

using tunnel::v1::Envelope;
using tunnel::v1::RelayFrame;

Envelope RelayEvent(const std::string& id, uint64_t client,
                    RelayFrame::Event event) {
  Envelope e;
  RelayFrame* f = e.mutable_relay();
  f->set_session(id);
  f->set_client(client);
  f->set_event(event);
  return e;
}

absl::Status RelayHub::Host(const std::shared_ptr<Session>& host,
                            const std::vector<std::string>& ids) {
  absl::MutexLock lock(&mu_);
  size_t fresh = 0;
  for (const std::string& id : ids) {
    if (!common::relay::ValidSessionId(id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "relay session id \"", id, "\" is not 22 base64url characters"));
    }
    auto it = shares_.find(id);
    if (it == shares_.end()) {
      ++fresh;
      continue;
    }
    std::shared_ptr<Session> other = it->second.host.lock();
    if (other != nullptr && it->second.agent_id != host->agent_id()) {
      return absl::AlreadyExistsError(
          absl::StrCat("relay session ", id, " is hosted by another agent"));
    }
  }
  if (shares_.size() + fresh > options_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the gateway hosts its limit of ", options_.max_sessions,
                     " relay sessions (--relay-max-sessions)"));
  }
  for (const std::string& id : ids) {
    Share& s = shares_[id];
    s.host = host;
    s.agent_id = host->agent_id();
    s.live = false;
  }
  return absl::OkStatus();
}

void RelayHub::Announce(const std::shared_ptr<Session>& host) {
  struct Joined {
    std::string share;
    uint64_t id;
    std::shared_ptr<RelayClient> client;
  };
  std::vector<Joined> joined;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, share] : shares_) {
      if (share.host.lock() != host) continue;
      share.live = true;
      for (auto& [cid, c] : share.clients) joined.push_back({id, cid, c});
    }
  }
  for (const Joined& j : joined) {
    host->SendRelay(RelayEvent(j.share, j.id, RelayFrame::CLIENT_CONNECTED),
                    absl::InfinitePast());
    // The browser starts its handshake over with the new host.
    j.client->Status("HOST_CONNECTED");
  }
}

void RelayHub::Unhost(const Session* host) {
  std::vector<std::shared_ptr<RelayClient>> orphans;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = shares_.begin(); it != shares_.end();) {
      Share& s = it->second;
      std::shared_ptr<Session> h = s.host.lock();
      // A newer session of the agent took the share over: not ours now.
      if (h != nullptr && h.get() != host) {
        ++it;
        continue;
      }
      for (auto& [cid, c] : s.clients) orphans.push_back(c);
      clients_ -= static_cast<int64_t>(s.clients.size());
      shares_.erase(it++);
    }
  }
  for (const auto& c : orphans) {
    c->Status("HOST_DISCONNECTED");
    c->Kick(4404, "host_disconnected",
            "the device disconnected from the gateway; retrying");
  }
}

void RelayHub::FromAgent(const Session* host, RelayFrame* f) {
  std::shared_ptr<RelayClient> client;
  {
    absl::MutexLock lock(&mu_);
    auto it = shares_.find(f->session());
    if (it != shares_.end() && it->second.host.lock().get() == host) {
      auto c = it->second.clients.find(f->client());
      if (c != it->second.clients.end()) client = c->second;
    }
  }
  if (client == nullptr) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  switch (f->event()) {
    case RelayFrame::CLIENT_DISCONNECTED:
      client->Kick(4000, "closed_by_host", "the device closed this connection");
      return;
    case RelayFrame::FRAME:
      if (f->frame().size() > options_.max_frame_bytes) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      client->Deliver(std::move(*f->mutable_frame()));
      return;
    default:
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
  }
}

absl::StatusOr<uint64_t> RelayHub::Join(const std::string& id,
                                        std::shared_ptr<RelayClient> client) {
  std::shared_ptr<Session> host;
  uint64_t cid = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = shares_.find(id);
    if (it != shares_.end() && it->second.live) host = it->second.host.lock();
    if (host == nullptr) {
      return absl::NotFoundError(
          "no device hosts this share now (it stopped, or is reconnecting)");
    }
    Share& s = it->second;
    if (s.clients.size() >= options_.max_clients_per_session) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this share has its limit of ", options_.max_clients_per_session,
          " browsers connected (--relay-max-clients-per-session)"));
    }
    cid = next_client_++;
    s.clients.emplace(cid, client);
    ++clients_;
  }
  host->SendRelay(RelayEvent(id, cid, RelayFrame::CLIENT_CONNECTED),
                  absl::InfinitePast());
  client->Status("HOST_CONNECTED");
  return cid;
}

void RelayHub::Leave(const std::string& id, uint64_t client) {
  std::shared_ptr<Session> host;
  {
    absl::MutexLock lock(&mu_);
    auto it = shares_.find(id);
    if (it == shares_.end() || it->second.clients.erase(client) == 0) return;
    --clients_;
    host = it->second.host.lock();
  }
  if (host != nullptr) {
    host->SendRelay(RelayEvent(id, client, RelayFrame::CLIENT_DISCONNECTED),
                    absl::InfinitePast());
  }
}

std::shared_ptr<Session> RelayHub::HostOf(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = shares_.find(id);
  return it == shares_.end() || !it->second.live ? nullptr
                                                 : it->second.host.lock();
}

RelayRouter::Delivery RelayHub::ToAgent(const std::string& id, uint64_t client,
                                        std::string frame,
                                        absl::Time deadline) {
  std::shared_ptr<Session> host = HostOf(id);
  if (host == nullptr) return Delivery::kNoHost;
  Envelope e;
  RelayFrame* f = e.mutable_relay();
  f->set_session(id);
  f->set_client(client);
  *f->mutable_frame() = std::move(frame);
  if (host->SendRelay(std::move(e), deadline)) return Delivery::kSent;
  return host->closing() ? Delivery::kNoHost : Delivery::kStuck;
}

RelayCounts RelayHub::counts() const {
  absl::MutexLock lock(&mu_);
  RelayCounts c;
  c.sessions = static_cast<int64_t>(shares_.size());
  c.clients = clients_;
  return c;
}

}  // namespace tunnel::server
