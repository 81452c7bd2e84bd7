// tunnel.v1.AdminService: what operators ask a running gateway (agents,
// tunnels) and what they may do to it (disconnect an agent, set or clear a
// tunnel's visitor access code, reload the credentials file).
//
// Every call must carry `authorization: Bearer <token>` with the token of
// --admin-token-file, compared in constant time; a missing or wrong token is
// UNAUTHENTICATED and counted (tunnel_admin_auth_failures_total). Without a
// configured token every call is FAILED_PRECONDITION saying how to set one.
//
// Threads: a synchronous gRPC service on its own server (its own pool). Calls
// take the registry's and sessions' locks briefly, as a /metrics scrape does,
// and never wait on the data path.
#ifndef TUNNEL_SERVER_ADMIN_SERVICE_H_
#define TUNNEL_SERVER_ADMIN_SERVICE_H_

#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "server/session_registry.h"
#include "server/tunnel_service.h"
#include "tunnel/v1/admin.grpc.pb.h"

namespace tunnel::server {

// The message an agent's session ends with after DisconnectAgent.
inline constexpr char kDisconnectedByAdmin[] =
    "disconnected by an administrator";

// The visitor access mode of a tunnel: "code" when visitors need an access
// code (the agent's or one set by SetAccessCode), "basic_auth" when they
// need a user and password (the agent's --basic-auth), "basic_auth+code"
// for both, else "public". IP rules are reported apart.
std::string AccessModeOf(const SessionRegistry& registry,
                         absl::string_view slug);

// absl::Status -> grpc::Status at the admin RPC boundary (same codes).
grpc::Status ToGrpcStatus(const absl::Status& status);

// A session as the admin API lists it (also what a cluster replica
// publishes of its agents).
tunnel::v1::Agent AgentOf(const Session& s, const SessionRegistry& registry);

class AdminServiceImpl final : public tunnel::v1::AdminService::Service {
 public:
  // What ReloadCredentials runs (Gateway::ReloadCredentials).
  using ReloadFn =
      std::function<absl::StatusOr<tunnel::v1::ReloadCredentialsResponse>()>;

  // `token`: nullopt when the gateway has no --admin-token-file. `registry`,
  // `tunnels` (for public URLs) and `metrics` must outlive the service, and
  // so must what `reload` uses.
  AdminServiceImpl(std::optional<std::string> token, SessionRegistry* registry,
                   const TunnelServiceImpl* tunnels,
                   common::MetricsRegistry* metrics, ReloadFn reload,
                   std::function<absl::Time()> clock = absl::Now);

  grpc::Status ListAgents(grpc::ServerContext* context,
                          const tunnel::v1::ListAgentsRequest* request,
                          tunnel::v1::ListAgentsResponse* response) override;
  grpc::Status GetTunnel(grpc::ServerContext* context,
                         const tunnel::v1::GetTunnelRequest* request,
                         tunnel::v1::TunnelStatus* response) override;
  grpc::Status DisconnectAgent(
      grpc::ServerContext* context,
      const tunnel::v1::DisconnectAgentRequest* request,
      tunnel::v1::DisconnectAgentResponse* response) override;
  grpc::Status DrainAgent(grpc::ServerContext* context,
                          const tunnel::v1::DrainAgentRequest* request,
                          tunnel::v1::DrainAgentResponse* response) override;
  grpc::Status SetAccessCode(
      grpc::ServerContext* context,
      const tunnel::v1::SetAccessCodeRequest* request,
      tunnel::v1::SetAccessCodeResponse* response) override;
  grpc::Status SetIpRules(grpc::ServerContext* context,
                          const tunnel::v1::SetIpRulesRequest* request,
                          tunnel::v1::SetIpRulesResponse* response) override;
  grpc::Status ReloadCredentials(
      grpc::ServerContext* context,
      const tunnel::v1::ReloadCredentialsRequest* request,
      tunnel::v1::ReloadCredentialsResponse* response) override;

 private:
  // OK, or the status the call is refused with (counted if it is a missing or
  // wrong token).
  absl::Status Authorize(const grpc::ServerContext& context) const;
  absl::StatusOr<tunnel::v1::ListAgentsResponse> List() const;
  absl::StatusOr<tunnel::v1::TunnelStatus> Tunnel(absl::string_view slug) const;
  absl::StatusOr<tunnel::v1::DisconnectAgentResponse> Disconnect(
      absl::string_view agent_id) const;
  absl::StatusOr<tunnel::v1::DrainAgentResponse> Drain(
      absl::string_view agent_id) const;
  absl::StatusOr<tunnel::v1::SetAccessCodeResponse> SetAccess(
      const tunnel::v1::SetAccessCodeRequest& request) const;
  absl::StatusOr<tunnel::v1::SetIpRulesResponse> SetRules(
      const tunnel::v1::SetIpRulesRequest& request) const;

  const std::optional<std::string> token_;
  SessionRegistry* const registry_;
  // In a gateway cluster: true when another replica knows `slug` (the
  // registry then takes a setting for a slug it has not seen); NOT_FOUND
  // when no replica does. Without a cluster: false.
  absl::StatusOr<bool> KnownElsewhere(absl::string_view slug) const;
  // GetTunnel for a slug served through another replica (its record), or
  // owned in the cluster but connected nowhere (offline); nullopt: the
  // cluster does not know it either.
  std::optional<tunnel::v1::TunnelStatus> RemoteTunnel(
      absl::string_view slug, const ClusterHooks& cluster,
      absl::Time now) const;
  const TunnelServiceImpl* const tunnels_;
  const ReloadFn reload_;
  const std::function<absl::Time()> clock_;
  common::CounterFamily* const auth_failures_;
  common::Counter* const missing_token_;
  common::Counter* const wrong_token_;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_ADMIN_SERVICE_H_
