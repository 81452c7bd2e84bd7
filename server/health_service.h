// grpc.health.v1.Health for the gateway's gRPC ports (agents' and admin).
//
// gRPC's own default health service runs on the callback API, which brings
// two polling threads into the process; with gRPC's epoll engine every
// thread waiting on any completion queue takes turns handling every
// socket, so those two threads woke each other for every agent message
// (about four extra context switches per request; see tunnel_service.h).
// This one is a sync service: Check answers on a server thread, and Watch
// holds one while it streams (at most `max_watchers` at once).
//
// Every name it knows ("" for the whole server, and the services given)
// shares one status, SERVING until SetServing(false). Thread-safe.
#ifndef TUNNEL_SERVER_HEALTH_SERVICE_H_
#define TUNNEL_SERVER_HEALTH_SERVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace tunnel::server {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  explicit HealthService(std::vector<std::string> services,
                         int max_watchers = 64);

  // Every name at once (the drain turns them NOT_SERVING).
  void SetServing(bool serving);
  // The server is stopping: every Watch call ends now and later ones at
  // once, so the server's shutdown never waits for a watcher.
  void Shutdown();
  // Watch calls streaming now.
  int watchers() const;

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>*
                         writer) override;

 private:
  grpc::health::v1::HealthCheckResponse::ServingStatus StatusOf(
      const std::string& service) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const absl::flat_hash_set<std::string> services_;
  const int max_watchers_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 0;
  int watchers_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_HEALTH_SERVICE_H_
