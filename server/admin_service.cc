#include "server/admin_service.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/access_code.h"
#include "common/admin_token.h"
#include "common/cidr.h"
#include "common/log.h"

namespace tunnel::server {
namespace {

constexpr absl::string_view kBearer = "Bearer ";

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

}  // namespace

std::string AccessModeOf(const SessionRegistry& registry,
                         absl::string_view slug) {
  const VisitorPolicy p = registry.PolicyFor(slug);
  if (p.basic_auth != nullptr) {
    return p.access_code != nullptr ? "basic_auth+code" : "basic_auth";
  }
  return p.access_code != nullptr ? "code" : "public";
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

AdminServiceImpl::AdminServiceImpl(std::optional<std::string> token,
                                   SessionRegistry* registry,
                                   const TunnelServiceImpl* tunnels,
                                   common::MetricsRegistry* metrics,
                                   ReloadFn reload,
                                   std::function<absl::Time()> clock)
    : token_(std::move(token)),
      registry_(registry),
      tunnels_(tunnels),
      reload_(std::move(reload)),
      clock_(std::move(clock)),
      auth_failures_(metrics->AddCounter(
          "tunnel_admin_auth_failures_total",
          "Admin API calls refused for a missing or wrong bearer token.",
          {"reason"})),
      missing_token_(auth_failures_->WithLabels({"missing_token"})),
      wrong_token_(auth_failures_->WithLabels({"wrong_token"})) {}

absl::Status AdminServiceImpl::Authorize(
    const grpc::ServerContext& context) const {
  if (!token_.has_value()) {
    return absl::FailedPreconditionError(
        "the admin API is not configured: start gateway-tunnel with "
        "--admin-token-file FILE (make one with `tunnelctl admin-token issue "
        "--file FILE`)");
  }
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    missing_token_->Increment();
    common::LogEvent(common::LogLevel::kWarning, "admin_auth_failed")
        .Str("peer", context.peer())
        .Str("reason", "missing_token");
    return absl::UnauthenticatedError(
        "missing admin token (metadata \"authorization: Bearer <token>\")");
  }
  absl::string_view value(it->second.data(), it->second.size());
  absl::string_view presented;
  bool bearer = absl::StartsWithIgnoreCase(value, kBearer);
  if (bearer) presented = value.substr(kBearer.size());
  if (!bearer || !common::AdminTokenMatches(*token_, presented)) {
    wrong_token_->Increment();
    common::LogEvent(common::LogLevel::kWarning, "admin_auth_failed")
        .Str("peer", context.peer())
        .Str("reason", "wrong_token");
    return absl::UnauthenticatedError("the admin token was refused");
  }
  return absl::OkStatus();
}

grpc::Status AdminServiceImpl::ListAgents(
    grpc::ServerContext* context, const tunnel::v1::ListAgentsRequest*,
    tunnel::v1::ListAgentsResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::ListAgentsResponse> r = List();
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::GetTunnel(
    grpc::ServerContext* context, const tunnel::v1::GetTunnelRequest* request,
    tunnel::v1::TunnelStatus* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::TunnelStatus> r = Tunnel(request->slug());
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DisconnectAgent(
    grpc::ServerContext* context,
    const tunnel::v1::DisconnectAgentRequest* request,
    tunnel::v1::DisconnectAgentResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::DisconnectAgentResponse> r =
      Disconnect(request->agent_id());
  if (!r.ok()) return ToGrpcStatus(r.status());
  common::LogEvent(common::LogLevel::kInfo, "admin_disconnect")
      .Str("agent_id", request->agent_id())
      .Str("session", r->session_id())
      .Str("peer", context->peer());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::SetAccessCode(
    grpc::ServerContext* context,
    const tunnel::v1::SetAccessCodeRequest* request,
    tunnel::v1::SetAccessCodeResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::SetAccessCodeResponse> r = SetAccess(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  // Never the code itself.
  common::LogEvent(common::LogLevel::kInfo, "admin_set_access")
      .Str("tunnel", r->slug())
      .Str("access", r->access())
      .Str("peer", context->peer());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::SetIpRules(
    grpc::ServerContext* context, const tunnel::v1::SetIpRulesRequest* request,
    tunnel::v1::SetIpRulesResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::SetIpRulesResponse> r = SetRules(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  common::LogEvent(common::LogLevel::kInfo, "admin_set_ip_rules")
      .Str("tunnel", r->slug())
      .Str("allow", absl::StrJoin(r->allow(), ","))
      .Str("deny", absl::StrJoin(r->deny(), ","))
      .Str("source", r->source())
      .Str("peer", context->peer());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::ReloadCredentials(
    grpc::ServerContext* context, const tunnel::v1::ReloadCredentialsRequest*,
    tunnel::v1::ReloadCredentialsResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  // The gateway logs and counts the reload either way (credentials_reloaded
  // or credentials_reload_failed); this line says who asked.
  common::LogEvent(common::LogLevel::kInfo, "admin_reload_credentials")
      .Str("peer", context->peer());
  absl::StatusOr<tunnel::v1::ReloadCredentialsResponse> r = reload_();
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

absl::StatusOr<bool> AdminServiceImpl::KnownElsewhere(
    absl::string_view slug) const {
  ClusterHooks* cluster = tunnels_->cluster();
  if (cluster == nullptr) return false;  // the registry says NOT_FOUND
  if (cluster->KnowsSlug(slug)) return true;
  if (registry_->KnowsSlug(slug)) return false;
  return absl::NotFoundError(
      absl::StrCat("no tunnel \"", slug, "\" in the cluster"));
}

absl::StatusOr<tunnel::v1::SetAccessCodeResponse> AdminServiceImpl::SetAccess(
    const tunnel::v1::SetAccessCodeRequest& request) const {
  if (request.slug().empty()) {
    return absl::InvalidArgumentError("slug is required");
  }
  if (request.public_() == !request.code().empty()) {
    return absl::InvalidArgumentError(
        "give either a code or public = true, not both or neither");
  }
  std::optional<tunnel::v1::AccessCodeHash> hash;
  if (!request.public_()) {
    absl::StatusOr<tunnel::v1::AccessCodeHash> h =
        common::HashAccessCode(request.code());
    if (!h.ok()) return h.status();
    hash = *std::move(h);
  }
  absl::StatusOr<bool> elsewhere = KnownElsewhere(request.slug());
  if (!elsewhere.ok()) return elsewhere.status();
  // Redis first: a setting the other replicas cannot see is not made.
  if (ClusterHooks* cluster = tunnels_->cluster(); cluster != nullptr) {
    if (absl::Status s = cluster->PublishAccess(request.slug(), hash);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s =
          registry_->SetAccess(request.slug(), std::move(hash), *elsewhere);
      !s.ok()) {
    return s;
  }
  tunnel::v1::SetAccessCodeResponse out;
  out.set_slug(request.slug());
  out.set_access(AccessModeOf(*registry_, request.slug()));
  return out;
}

absl::StatusOr<tunnel::v1::SetIpRulesResponse> AdminServiceImpl::SetRules(
    const tunnel::v1::SetIpRulesRequest& request) const {
  if (request.slug().empty()) {
    return absl::InvalidArgumentError("slug is required");
  }
  std::shared_ptr<const common::IpRules> rules;
  if (request.clear()) {
    if (request.allow_size() > 0 || request.deny_size() > 0) {
      return absl::InvalidArgumentError(
          "clear drops the admin's rules: give no allow or deny ranges with "
          "it");
    }
  } else {
    absl::StatusOr<common::IpRules> parsed = common::ParseIpRules(
        {request.allow().begin(), request.allow().end()},
        {request.deny().begin(), request.deny().end()}, "allow", "deny");
    if (!parsed.ok()) return parsed.status();
    rules = std::make_shared<const common::IpRules>(*std::move(parsed));
  }
  absl::StatusOr<bool> elsewhere = KnownElsewhere(request.slug());
  if (!elsewhere.ok()) return elsewhere.status();
  if (ClusterHooks* cluster = tunnels_->cluster(); cluster != nullptr) {
    if (absl::Status s = cluster->PublishIpRules(request.slug(), rules.get());
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s =
          registry_->SetIpRules(request.slug(), std::move(rules), *elsewhere);
      !s.ok()) {
    return s;
  }
  tunnel::v1::SetIpRulesResponse out;
  out.set_slug(request.slug());
  out.set_source(registry_->IpRulesSource(request.slug()));
  if (std::shared_ptr<const common::IpRules> now =
          registry_->PolicyFor(request.slug()).ip_rules) {
    for (const common::Cidr& c : now->allow) out.add_allow(c.ToString());
    for (const common::Cidr& c : now->deny) out.add_deny(c.ToString());
  }
  return out;
}

tunnel::v1::Agent AgentOf(const Session& s, const SessionRegistry& registry) {
  tunnel::v1::Agent a;
  a.set_agent_id(s.agent_id());
  a.set_session_id(s.id());
  a.set_remote_address(s.peer());
  a.set_connected_since_unix_ms(UnixMillis(s.connected_at()));
  for (const SessionTunnel& t : s.tunnels()) {
    tunnel::v1::AgentTunnel* at = a.add_tunnels();
    at->set_slug(t.slug);
    at->set_name(t.name);
    at->set_url(t.url);
    at->set_path_url(t.path_url);
    at->set_access(AccessModeOf(registry, t.slug));
  }
  SessionCounters c = s.counters();
  a.set_requests(c.requests);
  a.set_bytes_in(c.bytes_in);
  a.set_bytes_out(c.bytes_out);
  a.set_streams_in_flight(s.stream_count());
  return a;
}

absl::StatusOr<tunnel::v1::ListAgentsResponse> AdminServiceImpl::List() const {
  std::vector<tunnel::v1::Agent> agents;
  ClusterHooks* cluster = tunnels_->cluster();
  for (const auto& s : registry_->Sessions()) {
    agents.push_back(AgentOf(*s, *registry_));
    if (cluster != nullptr) agents.back().set_replica(cluster->ReplicaId());
  }
  if (cluster != nullptr) {
    for (tunnel::v1::ReplicaRecord& r : cluster->OtherReplicas()) {
      for (tunnel::v1::Agent& a : *r.mutable_agents()) {
        a.set_replica(r.id());
        agents.push_back(std::move(a));
      }
    }
  }
  std::sort(agents.begin(), agents.end(), [](const auto& a, const auto& b) {
    return std::tie(a.agent_id(), a.replica()) <
           std::tie(b.agent_id(), b.replica());
  });
  tunnel::v1::ListAgentsResponse out;
  for (tunnel::v1::Agent& a : agents) *out.add_agents() = std::move(a);
  return out;
}

absl::StatusOr<tunnel::v1::TunnelStatus> AdminServiceImpl::Tunnel(
    absl::string_view slug) const {
  if (slug.empty()) return absl::InvalidArgumentError("slug is required");
  absl::StatusOr<TunnelEntry> entry = registry_->FindTunnel(slug);
  const absl::Time now = clock_();
  ClusterHooks* cluster = tunnels_->cluster();
  if (cluster != nullptr && (!entry.ok() || entry->session == nullptr)) {
    // Served through another replica, or known only to the cluster.
    std::optional<tunnel::v1::TunnelStatus> remote =
        RemoteTunnel(slug, *cluster, now);
    if (remote.has_value()) return *std::move(remote);
  }
  if (!entry.ok()) return entry.status();
  tunnel::v1::TunnelStatus out;
  if (cluster != nullptr && entry->session != nullptr) {
    out.set_replica(cluster->ReplicaId());
  }
  out.set_slug(entry->slug);
  out.set_agent_id(entry->owner);
  out.set_access(AccessModeOf(*registry_, entry->slug));
  // URLs of a live tunnel are what its agent was told; an offline one gets
  // the same form from the current options.
  SessionTunnel urls = PublicTunnel(tunnels_->options(), "", entry->slug);
  if (entry->session != nullptr) {
    for (const SessionTunnel& t : entry->session->tunnels()) {
      if (t.slug == entry->slug) urls = t;
    }
    out.set_status("online");
    out.set_session_id(entry->session->id());
    out.set_connected_since_unix_ms(UnixMillis(entry->session->connected_at()));
    out.set_uptime_seconds(std::max<int64_t>(
        0, absl::ToInt64Seconds(now - entry->session->connected_at())));
  } else {
    out.set_status("offline");
  }
  out.set_pool(entry->pool);
  if (!entry->pool.empty()) {
    for (const std::shared_ptr<Session>& m : entry->members) {
      tunnel::v1::PoolMember* pm = out.add_members();
      pm->set_agent_id(m->agent_id());
      pm->set_session_id(m->id());
      pm->set_streams_in_flight(m->stream_count());
      const std::optional<std::string> why = m->UnhealthyReason(entry->slug);
      pm->set_state(m->draining()     ? "draining"
                    : why.has_value() ? "unhealthy"
                                      : "healthy");
      if (why.has_value()) pm->set_last_error(*why);
    }
  }
  out.set_url(urls.url);
  out.set_path_url(urls.path_url);
  if (entry->activity != nullptr) {
    out.set_requests_last_hour(entry->activity->RequestsInLastHour(now));
  }
  return out;
}

std::optional<tunnel::v1::TunnelStatus> AdminServiceImpl::RemoteTunnel(
    absl::string_view slug, const ClusterHooks& cluster, absl::Time now) const {
  std::optional<tunnel::v1::TunnelStatus> out;
  for (const tunnel::v1::ReplicaRecord& r : cluster.OtherReplicas()) {
    for (const tunnel::v1::ReplicaTunnel& rt : r.tunnels()) {
      if (rt.slug() != slug) continue;
      for (const tunnel::v1::Agent& a : r.agents()) {
        if (a.agent_id() != rt.agent_id()) continue;
        for (const tunnel::v1::AgentTunnel& t : a.tunnels()) {
          if (t.slug() != slug) continue;
          if (!out.has_value()) {
            out.emplace();
            out->set_slug(t.slug());
            out->set_url(t.url());
            out->set_path_url(t.path_url());
            out->set_status("online");
            out->set_agent_id(rt.pool().empty() ? a.agent_id() : "");
            out->set_access(t.access());
            out->set_connected_since_unix_ms(a.connected_since_unix_ms());
            out->set_uptime_seconds(std::max<int64_t>(
                0,
                absl::ToInt64Seconds(
                    now - absl::FromUnixMillis(a.connected_since_unix_ms()))));
            out->set_session_id(a.session_id());
            out->set_pool(rt.pool());
            out->set_replica(r.id());
          }
          if (!rt.pool().empty()) {
            tunnel::v1::PoolMember* pm = out->add_members();
            pm->set_agent_id(a.agent_id());
            pm->set_session_id(a.session_id());
            pm->set_streams_in_flight(a.streams_in_flight());
            pm->set_state(rt.unhealthy() ? "unhealthy" : "healthy");
          }
        }
      }
    }
  }
  if (out.has_value()) return out;
  // Owned in the cluster, connected nowhere: offline, as the owner's
  // replica would say.
  const std::string owner = cluster.OwnerOf(slug);
  if (owner.empty() || registry_->KnowsSlug(slug)) return std::nullopt;
  out.emplace();
  out->set_slug(std::string(slug));
  SessionTunnel urls = PublicTunnel(tunnels_->options(), "", slug);
  out->set_url(urls.url);
  out->set_path_url(urls.path_url);
  out->set_status("offline");
  if (absl::StartsWith(owner, "pool:")) {
    out->set_pool(owner.substr(5));
  } else if (absl::StartsWith(owner, "agent:")) {
    out->set_agent_id(owner.substr(6));
  }
  out->set_access(AccessModeOf(*registry_, slug));
  return out;
}

grpc::Status AdminServiceImpl::DrainAgent(
    grpc::ServerContext* context, const tunnel::v1::DrainAgentRequest* request,
    tunnel::v1::DrainAgentResponse* response) {
  if (absl::Status s = Authorize(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<tunnel::v1::DrainAgentResponse> r = Drain(request->agent_id());
  if (!r.ok()) return ToGrpcStatus(r.status());
  common::LogEvent(common::LogLevel::kInfo, "admin_drain")
      .Str("agent_id", request->agent_id())
      .Str("session", r->session_id())
      .Num("streams_in_flight", static_cast<double>(r->streams_in_flight()), 0)
      .Str("peer", context->peer());
  *response = *std::move(r);
  return grpc::Status::OK;
}

absl::StatusOr<tunnel::v1::DrainAgentResponse> AdminServiceImpl::Drain(
    absl::string_view agent_id) const {
  if (agent_id.empty()) {
    return absl::InvalidArgumentError("agent_id is required");
  }
  std::shared_ptr<Session> s = registry_->FindByAgent(agent_id);
  if (s == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("agent \"", agent_id, "\" is not connected"));
  }
  s->StopTakingStreams("drained by an administrator", /*drain=*/true);
  tunnel::v1::DrainAgentResponse out;
  out.set_session_id(s->id());
  out.set_streams_in_flight(s->stream_count());
  return out;
}

absl::StatusOr<tunnel::v1::DisconnectAgentResponse>
AdminServiceImpl::Disconnect(absl::string_view agent_id) const {
  if (agent_id.empty())
    return absl::InvalidArgumentError("agent_id is required");
  std::shared_ptr<Session> s = registry_->FindByAgent(agent_id);
  if (s == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("agent \"", agent_id, "\" is not connected"));
  }
  // The agent learns why from a GoAway it logs ("gateway is going away:
  // disconnected by an administrator"); the call's status carries the same
  // text for the gateway's own agent_disconnected line. Draining the queue
  // delivers the GoAway before the call ends. No retry hint: the agent comes
  // back after its usual backoff, as after any lost connection.
  s->SendGoAway(kDisconnectedByAdmin, absl::ZeroDuration());
  s->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE, kDisconnectedByAdmin),
           /*drain=*/true);
  tunnel::v1::DisconnectAgentResponse out;
  out.set_session_id(s->id());
  return out;
}

}  // namespace tunnel::server
