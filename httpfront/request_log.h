// The front door's account of visitor requests: the visitor-side metrics
// (requests, body bytes, durations, limit rejections, the access gate) and
// one `access` log event per request.
//
// Labels stay bounded: `tunnel` is the slug of a known tunnel (claimed by an
// authenticated agent or reserved for an agent id in the credentials) or ""
// — never a slug a visitor merely asked for; `error` is one of our
// X-Tunnel-Error codes, "response_cut", or "".
//
// Threads: any (the loop threads and their fibers); the registry's families
// take their own locks.
#ifndef TUNNEL_HTTPFRONT_REQUEST_LOG_H_
#define TUNNEL_HTTPFRONT_REQUEST_LOG_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "httpfront/request_record.h"
#include "httplib.h"

namespace tunnel::httpfront {

// The limits of tunnel_limit_rejections_total's `limit` label.
enum LimitKind {
  kMaxConnections,
  kTunnelRate,
  kTunnelConcurrency,
  kClientConnections,
  kClientConnectionRate,
  kRequestBody,
  kResponseBody,
  kLimitKinds
};

// Values of the `direction` label of tunnel_body_bytes_total.
inline constexpr absl::string_view kVisitorToAgent = "visitor_to_agent";
inline constexpr absl::string_view kAgentToVisitor = "agent_to_visitor";

struct FrontMetrics {
  explicit FrontMetrics(common::MetricsRegistry* r);

  common::CounterFamily* const requests;
  common::CounterFamily* const bytes;
  common::Histogram* const duration;
  common::CounterFamily* const access_denials;
  common::CounterFamily* const access_grants;
  common::CounterFamily* const ip_denials;
  // Slow password hashes run for basic auth (a cached credential runs none).
  common::Counter* const basic_auth_hashes;
  // Requests sent again to another pool member after the first one's
  // service refused the connection.
  common::Counter* const retries;
  // Resolved at start: counting a rejection takes no lock.
  common::Counter* limit_rejections[kLimitKinds] = {};
};

// The request target without its query string, capped: what the access log
// shows of a path.
std::string PathOf(absl::string_view target);

// "2xx", "4xx", … for a status.
absl::string_view StatusClass(int status);

class RequestLog {
 public:
  explicit RequestLog(common::MetricsRegistry* registry) : metrics_(registry) {}

  FrontMetrics& metrics() { return metrics_; }
  void Reject(LimitKind kind) { metrics_.limit_rejections[kind]->Increment(); }

  // The setup hook's part: `r` starts for a parsed request.
  static void Start(RequestRecord& r, const httplib::Request& req);
  // httplib's logger: it wrote a response (ours or its own).
  static void Logged(RequestRecord& r, const httplib::Request& req,
                     const httplib::Response& res);
  // The request is over: one counter, one histogram observation, one access
  // event; then `r` is reset for the connection's next request.
  void Finish(RequestRecord& r);
  // A head the connection layer refused before httplib parsed it: counted
  // and logged like any request (no tunnel: nothing was routed).
  void HeadRejected(int status, absl::string_view code,
                    const std::string& remote, const std::string& request_id);

  // `tunnel`'s tunnel_body_bytes_total counters (both directions).
  void BodyCounters(absl::string_view tunnel, common::Counter** in,
                    common::Counter** out);

 private:
  // A tunnel's counters for the labels nearly every request has, each
  // looked up in its family once: a request then formats no labels and
  // allocates nothing to be counted.
  struct TunnelCounters {
    common::Counter* bytes_in = nullptr;
    common::Counter* bytes_out = nullptr;
    // tunnel_requests_total with error "", by StatusClass (made on first
    // use, so /metrics shows only classes that occurred).
    common::Counter* answered[6] = {};
  };
  TunnelCounters& CountersLocked(absl::string_view tunnel)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  common::Counter* RequestCounter(absl::string_view tunnel, int status,
                                  const std::string& error);

  FrontMetrics metrics_;
  absl::Mutex mu_;
  // Known tunnels only (see the labels above), so bounded like the
  // families' own children.
  absl::flat_hash_map<std::string, std::unique_ptr<TunnelCounters>> tunnels_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_REQUEST_LOG_H_
