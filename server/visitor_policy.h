// What an agent asks of its tunnels' visitors, as it travels (the
// ConnectRequest's fields, and tunnel.v1.TunnelPolicy between cluster
// replicas) and as the front door checks it (VisitorPolicy).
#ifndef TUNNEL_SERVER_VISITOR_POLICY_H_
#define TUNNEL_SERVER_VISITOR_POLICY_H_

#include "absl/status/statusor.h"
#include "server/tunnel_router.h"
#include "tunnel/v1/cluster.pb.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

// The policy fields of a connect request.
tunnel::v1::TunnelPolicy TunnelPolicyOf(const tunnel::v1::ConnectRequest& req);

// Checked and parsed: INVALID_ARGUMENT naming the bad field. Each call makes
// a new BasicAuthUsers set (a new id).
absl::StatusOr<VisitorPolicy> ParseTunnelPolicy(
    const tunnel::v1::TunnelPolicy& policy);

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_VISITOR_POLICY_H_
