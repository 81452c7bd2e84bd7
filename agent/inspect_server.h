// The request inspector's web page and JSON API on the device
// (agent-tunnel connect --inspect ADDR; the API is described in
// protos/tunnel/v1/inspect.proto). A cpp-httplib server on its own few
// threads: it serves one person's browser and scripts, not the public.
//
// Only requests whose Host is a loopback address or localhost (or, when it
// listens elsewhere, an IP address) are answered, so a site's DNS name
// rebound to the device reads nothing; requests a browser marks cross-site
// and non-GET requests from a page of another origin are refused, so a web
// site open in the same browser cannot trigger replays either.
#ifndef TUNNEL_AGENT_INSPECT_SERVER_H_
#define TUNNEL_AGENT_INSPECT_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/inspector.h"
#include "agent/local_target.h"
#include "agent/replay.h"

namespace httplib {
class Server;
}

namespace tunnel::agent {

// Live views (/api/events) open at once; more get 429.
inline constexpr int kMaxLiveViews = 4;

class InspectServer {
 public:
  // `targets`: the agent's tunnels, where replays go.
  InspectServer(std::shared_ptr<Inspector> inspector,
                std::vector<LocalTarget> targets, ReplayTimeouts timeouts);
  ~InspectServer();

  // Binds host:port (port 0: any free one) and serves; the bound port.
  absl::StatusOr<int> Listen(const std::string& host, int port);
  void Stop();
  // The page's address once listening: http://HOST:PORT/.
  std::string url() const;

 private:
  bool HostAllowed(const std::string& host_header) const;
  const LocalTarget* TargetFor(const Inspector::Original& o) const;

  const std::shared_ptr<Inspector> inspector_;
  const std::vector<LocalTarget> targets_;
  const ReplayTimeouts timeouts_;
  std::unique_ptr<httplib::Server> server_;
  std::string host_;  // bound
  int port_ = 0;
  std::atomic<int> live_views_{0};
  std::thread listener_;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_INSPECT_SERVER_H_
