// The operations listener: /healthz (JSON) and /metrics (Prometheus text
// format 0.0.4) on their own small cpp-httplib server, never on the tunnel
// traffic port, so scrapes neither compete with visitors for workers nor
// reach the public internet when bound to loopback (the default).
//
// Threads: Listen/Stop from one owner thread; requests run on the server's
// own two workers. The health callback and the registry are called from
// those workers.
#ifndef TUNNEL_HTTPFRONT_OPS_SERVER_H_
#define TUNNEL_HTTPFRONT_OPS_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace httplib {
class Server;
}

namespace tunnel::httpfront {

// A replica of a gateway cluster (server/cluster_directory.h).
struct ClusterHealth {
  std::string id;
  bool redis_up = false;
  std::string error;  // why Redis cannot be reached
  size_t replicas = 0;
  size_t remote_tunnels = 0;
};

struct RelayHealth {
  int64_t sessions = 0;  // encrypted shares hosted
  int64_t clients = 0;   // browsers connected to them
};

struct Health {
  bool draining = false;
  std::optional<RelayHealth> relay;
  size_t sessions = 0;
  size_t streams = 0;
  std::optional<ClusterHealth> cluster;
};

class OpsServer {
 public:
  // `metrics` must outlive the server; `health` is called per /healthz.
  OpsServer(common::MetricsRegistry* metrics, std::function<Health()> health,
            std::string version);
  ~OpsServer();

  // Binds host:port (port 0 = any) and starts serving. Returns the port.
  absl::StatusOr<int> Listen(const std::string& host, int port);
  void Stop();

  // The /healthz body: {"status":"ok"|"draining","sessions":N,"streams":N,
  // "version":"…","uptime_seconds":N}, and in a cluster "cluster":{"id":…,
  // "redis":"up"|"down","error":…,"replicas":N,"remote_tunnels":N}. A
  // replica that lost Redis still says "ok": it serves its own agents.
  // Exposed for tests.
  std::string HealthJson(const Health& h) const;

 private:
  common::MetricsRegistry* const metrics_;
  const std::function<Health()> health_;
  const std::string version_;
  const absl::Time started_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_OPS_SERVER_H_
