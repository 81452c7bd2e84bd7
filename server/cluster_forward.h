// Forwarding between the replicas of a gateway cluster (docs/DESIGN.md, "The
// gateway cluster").
//
// ClusterRouter is the front door's TunnelRouter in a cluster: a slug whose
// agent is connected here is opened on the local registry as always; one
// whose agent is connected to another replica (the directory says which) is
// opened there, through one ClusterService.Forward call per request, and the
// front door cannot tell the difference: the stream is a TunnelStream with
// the same credit, deadlines and error statuses.
//
// ForwardService is the owner's side: it opens the stream on its own
// registry only (never forwarding again: one extra hop at most, no loops)
// and relays it on two fibers of the front door's loops.
//
// Threads: Open from the front door's fibers; the calls' reactions on gRPC's
// callback threads; the owner's relay on front-door fibers.
#ifndef TUNNEL_SERVER_CLUSTER_FORWARD_H_
#define TUNNEL_SERVER_CLUSTER_FORWARD_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "grpcpp/security/credentials.h"
#include "httpfront/front_door.h"
#include "server/cluster_directory.h"
#include "server/session_registry.h"
#include "tunnel/v1/cluster.grpc.pb.h"

namespace tunnel::server {

// Metadata key naming the calling replica (for the owner's logs; the
// signature is keyed with the cluster secret, agent id "cluster").
inline constexpr char kClusterReplicaKey[] = "x-tunnel-replica-id";
inline constexpr char kClusterAuthId[] = "cluster";

struct ForwardCounters;

class ClusterRouter final : public TunnelRouter {
 public:
  // `local`, `directory` and `metrics` must outlive the router.
  // `credentials`: how to reach the other replicas' gRPC listeners.
  ClusterRouter(SessionRegistry* local, ClusterDirectory* directory,
                std::shared_ptr<grpc::ChannelCredentials> credentials,
                common::MetricsRegistry* metrics);
  ~ClusterRouter() override;

  absl::StatusOr<std::unique_ptr<TunnelStream>> Open(
      absl::string_view slug, tunnel::v1::TunnelRequest head,
      const void* avoid = nullptr) override;
  VisitorPolicy PolicyFor(absl::string_view slug) const override;

  struct Peer;

 private:
  Peer* PeerFor(const RemoteRoute& route);

  SessionRegistry* const local_;
  ClusterDirectory* const directory_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::unique_ptr<ForwardCounters> counters_;
  absl::Mutex mu_;
  // advertise address -> peer; never removed (a replica that comes back
  // at the same address reuses its channel).
  absl::flat_hash_map<std::string, std::unique_ptr<Peer>> peers_
      ABSL_GUARDED_BY(mu_);
  uint64_t turn_ ABSL_GUARDED_BY(mu_) = 0;
};

struct ForwardServiceOptions {
  std::string secret;  // the cluster secret (base64url)
  absl::Duration auth_skew = absl::Minutes(5);
  // The owner's own bounds on a forwarded exchange (the forwarding
  // replica's front door applies the visitor-facing ones).
  absl::Duration response_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Hours(1);
};

class ForwardService final
    : public tunnel::v1::ClusterService::CallbackService {
 public:
  // `registry`, `front` and `metrics` must outlive the service.
  ForwardService(ForwardServiceOptions options, SessionRegistry* registry,
                 httpfront::FrontDoor* front, common::MetricsRegistry* metrics);
  ~ForwardService() override;

  grpc::ServerBidiReactor<tunnel::v1::ForwardFrame, tunnel::v1::ForwardFrame>*
  Forward(grpc::CallbackServerContext* context) override;

 private:
  const ForwardServiceOptions options_;
  SessionRegistry* const registry_;
  httpfront::FrontDoor* const front_;
  std::unique_ptr<ForwardCounters> counters_;
};

// Channel credentials for reaching the other replicas: plaintext without
// TLS; else TLS trusting `ca_file` (or the gateway's own certificate when
// empty). INVALID_ARGUMENT naming an unreadable file.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClusterCredentials(
    bool tls, const std::string& ca_file, const std::string& own_cert_file);

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_CLUSTER_FORWARD_H_
