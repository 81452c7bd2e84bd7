// The front door's side of the encrypted relay (docs/RELAY.md): serves the
// client page at /relay/ (with a strict Content-Security-Policy and
// Subresource Integrity on its script) and the browsers' WebSocket at
// /relay/ws?role=client&session=<id>, whose binary messages it relays to
// the share's agent and back without ever seeing inside them.
//
// WebSocket framing is Boost.Beast's (a maintained RFC 6455
// implementation), run synchronously over the front door's fiber
// connections: each browser costs two fibers (one reads, one writes), no
// thread.
//
// Limits, each refusal counted in tunnel_relay_refusals_total{reason} and
// told to the browser as {"type":"ERROR","code":…,"message":…} before the
// close: unknown share (4404), browsers per share (4429), per-IP
// connections at once and new connections per minute (4429), relay
// sessions (the agent is refused at connect), frame size (Beast's 1009).
// Rates (frames/s and bytes/s per connection and per IP) throttle: reading
// from that browser pauses until the rate allows (TCP back-pressure; no
// frame is lost), counted in tunnel_relay_throttled_total{limit}.
//
// Threads: Handle runs on the request's fiber; the rest on fibers of the
// same loop, and Deliver/Status/Kick from the agents' gRPC threads.
#ifndef TUNNEL_HTTPFRONT_RELAY_FRONT_H_
#define TUNNEL_HTTPFRONT_RELAY_FRONT_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "httplib.h"
#include "server/relay_router.h"

namespace tunnel::httpfront {

struct RelayFrontOptions {
  // Per browser IP (behind --trusted-proxy: the address it names):
  // WebSocket connections at once, and new ones per minute.
  int64_t max_connections_per_ip = 32;
  int64_t connections_per_ip_per_minute = 120;
  // Frames and bytes per second a browser connection may send, and all of
  // one IP's connections together (0: unlimited).
  double frames_per_second = 2000;
  double bytes_per_second = 32 << 20;
  double ip_frames_per_second = 4000;
  double ip_bytes_per_second = 64 << 20;
  // Frames for one browser that wait to be written before it counts as
  // stuck and is closed (4408).
  size_t client_buffer_bytes = 8 << 20;
  // A connection silent this long is closed; the gateway pings the browser
  // at a quarter of it (browsers answer pings by themselves).
  absl::Duration idle_timeout = absl::Minutes(2);
  // Writing one message to a browser.
  absl::Duration write_timeout = absl::Seconds(60);
  // The browser's frames wait this long for room in the agent's send queue.
  absl::Duration send_timeout = absl::Seconds(30);
  // The per-IP limits' clock.
  absl::Time (*clock)() = &absl::Now;
};

class RelayFront {
 public:
  // `router` and `metrics` must outlive it.
  RelayFront(RelayFrontOptions options, server::RelayRouter* router,
             common::MetricsRegistry* metrics);
  ~RelayFront();

  // "/relay" and everything under "/relay/".
  static bool IsRelayPath(absl::string_view path);
  // The path of a request target (the front server leaves req.path "/").
  static absl::string_view PathOf(absl::string_view target) {
    return target.substr(0, target.find('?'));
  }
  // Serves one request under /relay (on its fiber). A WebSocket request
  // takes the connection over and returns when it is closed. `visitor` is
  // the browser's address for the per-IP limits (the socket's peer, or the
  // address a trusted proxy names).
  void Handle(const httplib::Request& req, httplib::Response& res,
              const std::string& visitor);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_RELAY_FRONT_H_
