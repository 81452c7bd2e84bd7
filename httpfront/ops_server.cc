#include "httpfront/ops_server.h"

#include <sys/socket.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "httplib.h"

namespace tunnel::httpfront {

OpsServer::OpsServer(common::MetricsRegistry* metrics,
                     std::function<Health()> health, std::string version)
    : metrics_(metrics),
      health_(std::move(health)),
      version_(std::move(version)),
      started_(absl::Now()),
      server_(std::make_unique<httplib::Server>()) {
  // Scrapes and probes are rare and quick: two workers are plenty.
  server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  server_->set_keep_alive_max_count(100);
  // httplib's default also sets SO_REUSEPORT, which would let a second
  // process (another gateway, or the front door itself) share the port and
  // take half the scrapes. Only SO_REUSEADDR: a taken port fails Listen.
  server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server_->Get("/healthz",
               [this](const httplib::Request&, httplib::Response& res) {
                 Health h = health_();
                 // 503 while draining takes the gateway out of a load
                 // balancer's pool.
                 res.status = h.draining ? 503 : 200;
                 res.set_header("Cache-Control", "no-store");
                 res.set_content(HealthJson(h), "application/json");
               });
  server_->Get(
      "/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_header("Cache-Control", "no-store");
        res.set_content(metrics_->Render(), common::kMetricsContentType);
      });
}

OpsServer::~OpsServer() { Stop(); }

std::string OpsServer::HealthJson(const Health& h) const {
  // version_ is ours (the build's version), nothing to escape.
  std::string cluster;
  if (h.cluster.has_value()) {
    const ClusterHealth& c = *h.cluster;
    cluster = absl::StrCat(",\"cluster\":{\"id\":\"", common::JsonEscape(c.id),
                           "\",\"redis\":\"", c.redis_up ? "up" : "down",
                           "\",\"error\":\"", common::JsonEscape(c.error),
                           "\",\"replicas\":", c.replicas,
                           ",\"remote_tunnels\":", c.remote_tunnels, "}");
  }
  std::string relay;
  if (h.relay.has_value()) {
    relay = absl::StrCat(",\"relay\":{\"sessions\":", h.relay->sessions,
                         ",\"clients\":", h.relay->clients, "}");
  }
  return absl::StrCat(
      "{\"status\":\"", h.draining ? "draining" : "ok",
      "\",\"sessions\":", h.sessions, ",\"streams\":", h.streams,
      ",\"version\":\"", version_,
      "\",\"uptime_seconds\":", absl::ToInt64Seconds(absl::Now() - started_),
      relay, cluster, "}\n");
}

absl::StatusOr<int> OpsServer::Listen(const std::string& host, int port) {
  int bound = port == 0 ? server_->bind_to_any_port(host)
                        : (server_->bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for --ops-addr on ", host, ":", port,
                     " (address in use or not available)"));
  }
  listener_ = std::thread([this] { server_->listen_after_bind(); });
  // stop() is a no-op until the loop runs; wait (bounded) so that a Stop()
  // right after Listen() cannot be lost.
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!server_->is_running() && absl::Now() < give_up) {
    std::this_thread::yield();
  }
  return bound;
}

void OpsServer::Stop() {
  server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace tunnel::httpfront
