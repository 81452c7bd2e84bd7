// Health of the agent's local services, checked by the agent itself and
// reported to the gateway (ControlMessage.health), so visitors get a quick
// 503 local_service_unhealthy (or another pool member) instead of a 502
// after a failed connect on every request.
//
// A probe is a TCP connect to the target (the default) or an HTTP GET of a
// path on it (`--health-check PATH`: 2xx and 3xx are healthy). A target
// turns unhealthy after `unhealthy_after` failed probes in a row and healthy
// again after `healthy_after` good ones; it starts healthy.
//
// Threads: HealthChecker runs its probes on one thread of its own (they
// block, for at most `timeout` each); `on_change` runs there.
#ifndef TUNNEL_AGENT_HEALTH_CHECK_H_
#define TUNNEL_AGENT_HEALTH_CHECK_H_

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/local_target.h"

namespace tunnel::agent {

struct HealthCheckOptions {
  std::string path;  // "" : a TCP connect; else GET base_path + path
  absl::Duration interval = absl::Seconds(5);  // zero: no checks at all
  absl::Duration timeout = absl::Seconds(2);
  int unhealthy_after = 2;
  int healthy_after = 2;
};

// One probe of `target`: "" when it answered, else why not ("connection
// refused", "HTTP 503", "no answer within 2s", ...).
std::string ProbeTarget(const LocalTarget& target,
                        const HealthCheckOptions& options);

struct TargetHealth {
  std::string name;  // the tunnel's name ("" for the unnamed one)
  bool healthy = true;
  std::string reason;  // why it is unhealthy
};

class HealthChecker {
 public:
  using OnChange = std::function<void(const TargetHealth&)>;
  HealthChecker(std::vector<LocalTarget> targets, HealthCheckOptions options,
                OnChange on_change);
  ~HealthChecker();  // stops
  void Start();      // no-op when options.interval is zero
  void Stop();
  // Every target's current state, in the order given.
  std::vector<TargetHealth> Snapshot() const;

 private:
  void Loop();
  const std::vector<LocalTarget> targets_;
  const HealthCheckOptions options_;
  const OnChange on_change_;
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<TargetHealth> state_ ABSL_GUARDED_BY(mu_);
  std::vector<int> streak_;  // checker thread only: >0 good, <0 failed
  std::thread thread_;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_HEALTH_CHECK_H_
