// The public HTTP front door: routes each visitor request to a tunnel, turns
// it into a stream on the agent's session, and streams the answer back.
//
// Threads: the front server's loop threads; each request runs on a fiber
// whose waits (for the agent, for the visitor's socket) yield to its loop
// and have deadlines. Listen/Stop from one owner thread.
#ifndef TUNNEL_HTTPFRONT_FRONT_DOOR_H_
#define TUNNEL_HTTPFRONT_FRONT_DOOR_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cidr.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "httpfront/front_server.h"
#include "httpfront/relay_front.h"
#include "server/relay_router.h"
#include "server/tunnel_router.h"

namespace tunnel::httpfront {

struct FrontDoorOptions {
  // Base domain for subdomain routing: <slug>.<domain>.
  std::string domain = "localhost";
  // Scheme visitors used (X-Forwarded-Proto); "https" whenever `tls` is set.
  std::string scheme = "http";
  // Serve TLS with this certificate chain and key (PEM); empty: plain HTTP.
  common::CertAndKey tls;
  // No response head from the agent within this: 504.
  absl::Duration response_timeout = absl::Seconds(30);
  // A body (either way) that moves no byte for this long is aborted.
  absl::Duration body_idle_timeout = absl::Minutes(5);
  // Proxies in front of the gateway: from one of these, the visitor's
  // address for the IP rules is the rightmost X-Forwarded-For entry that
  // is not one of them (never the header from anyone else).
  std::vector<common::Cidr> trusted_proxies;
  // Retry-After on 502 "agent offline".
  absl::Duration offline_retry_after = absl::Seconds(5);
  // An upgraded connection (WebSocket) is closed after this long without a
  // byte in one of its directions.
  absl::Duration upgrade_idle_timeout = absl::Hours(1);
  // Tunnels with an access code: how long the cookie a correct code earns
  // is valid, and how many wrong codes one client IP may try per tunnel and
  // minute before 429.
  absl::Duration access_cookie_ttl = absl::Hours(24);
  // Key of the access cookies' HMAC; empty: random per process. A gateway
  // cluster derives it from its secret, so every replica honours them.
  std::string access_cookie_key;
  int access_code_attempts_per_minute = 5;
  // Tunnels with basic auth: how long a verified user and password pass
  // without being hashed again (0: never cached), and how many are kept.
  absl::Duration basic_auth_cache_ttl = absl::Minutes(5);
  size_t basic_auth_cache_entries = 10000;
  // Per tunnel (slug): requests admitted per minute (fixed windows, see
  // X-RateLimit-*), and requests in flight at once. 0: unlimited. Over
  // either: 429 + Retry-After, and the agent never sees the request.
  int64_t tunnel_requests_per_minute = 0;
  int64_t tunnel_concurrent_requests = 0;
  // In a gateway cluster: the per-minute windows are shared by the
  // replicas (common/shared_counts.h). Must outlive the front door.
  common::SharedCounts* shared_tunnel_counts = nullptr;
  // Body bytes per request: a larger request body gets 413 (the service gets
  // at most this many bytes), a larger response body 502 before its head or
  // a cut connection after. 0: unlimited. Upgraded connections are exempt.
  int64_t max_request_body = 0;
  int64_t max_response_body = 0;
  // The tunnel limits' clock (tests move it forward).
  absl::Time (*clock)() = &absl::Now;
  ConnectionOptions connection;
  // The encrypted relay (docs/RELAY.md) at /relay/ on the gateway's own
  // host; null: none. Must outlive the front door.
  server::RelayRouter* relay = nullptr;
  RelayFrontOptions relay_options;
};

class FrontDoor {
 public:
  // `router` and `metrics` must outlive the front door. Registers the
  // visitor-side metrics (requests, bytes, durations) in `metrics`.
  FrontDoor(FrontDoorOptions options, server::TunnelRouter* router,
            common::MetricsRegistry* metrics);
  ~FrontDoor();

  // Binds host:port (port 0 = any) and starts serving. Returns the port.
  // Fails with INVALID_ARGUMENT if `tls` cannot be used.
  absl::StatusOr<int> Listen(const std::string& host, int port);
  // Stops accepting, closes visitor connections, ends their fibers (every
  // wait returns at once) and joins the loop threads.
  void Stop();
  // Stops accepting new connections only (first step of Stop).
  void StopAccepting();
  // While draining, new requests get 503 with Retry-After; requests already
  // in flight continue.
  void SetDraining(absl::Duration retry_after);
  // The port in the public URLs (0: none, e.g. 443 behind a proxy), for the
  // hints on the gateway's own pages. Any thread.
  void SetPublicPort(int port);

  // Runs `fn` on a fiber of the front door's loops, where TunnelStream's
  // waits yield (the gateway cluster's forwarded requests); `refused`
  // instead when none can be had. Any thread.
  void RunDetached(std::function<void()> fn, std::function<void()> refused);

 private:
  class Handler;
  // tunnel_http_connections{state}, _connection_limit, _fibers.
  void ObserveConnections(common::MetricsRegistry* metrics);
  const FrontDoorOptions options_;
  server::TunnelRouter* const router_;
  std::unique_ptr<FrontServer> server_;
  std::unique_ptr<Handler> handler_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_FRONT_DOOR_H_
