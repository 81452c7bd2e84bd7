// The front door's per-request limits: per tunnel (requests per minute in
// fixed windows, requests at once) and body sizes both ways, with the
// answers a visitor gets at each (429 with X-RateLimit-*, 413, 502). The
// per-connection limits live in the connection layer (front_server.h).
//
// Threads: any (RateLimiter is thread-safe).
#ifndef TUNNEL_HTTPFRONT_REQUEST_LIMITS_H_
#define TUNNEL_HTTPFRONT_REQUEST_LIMITS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "httpfront/rate_limits.h"
#include "httpfront/request_log.h"
#include "httplib.h"
#include "server/tunnel_router.h"

namespace tunnel::httpfront {

struct RequestLimitOptions {
  // Per tunnel (slug); 0: unlimited.
  int64_t tunnel_requests_per_minute = 0;
  int64_t tunnel_concurrent_requests = 0;
  // Body bytes per request; 0: unlimited.
  int64_t max_request_body = 0;
  int64_t max_response_body = 0;
  absl::Time (*clock)() = &absl::Now;
  // A gateway cluster's shared per-tunnel counts (RateLimiter::Options).
  common::SharedCounts* shared = nullptr;
};

class RequestLimits {
 public:
  RequestLimits(const RequestLimitOptions& options, RequestLog* log);

  // The tunnel limiter: Acquire returns a Decision whose slot (when
  // admitted) is handed back with Release when the request is over.
  bool tunnel_limits_on() const { return tunnel_.enabled(); }
  RateLimiter::Decision Acquire(absl::string_view slug);
  // `counted` false: the request never reached a tunnel (unknown slug).
  void Release(RateLimiter::Slot* slot, bool counted = true);

  // UINT64_MAX when unlimited.
  uint64_t max_request_body() const;
  uint64_t max_response_body() const;
  // True if the body `req` declares (Content-Length) or carries already is
  // over --max-request-body.
  bool RequestBodyTooLarge(const httplib::Request& req) const;

  // 429 at a tunnel limit; the agent never hears of the request. `known`:
  // the slug may become a metrics label.
  void TunnelLimited(const httplib::Request& req, httplib::Response& res,
                     const RateLimiter::Decision& d, bool unread_body);
  // 413: the request body is over the limit.
  void RequestTooLarge(const httplib::Request& req, httplib::Response& res,
                       bool unread_body);
  // 502 before the head went out: the response body is over the limit. The
  // service's headers are dropped; the stream is cancelled.
  void ResponseTooLarge(const httplib::Request& req, httplib::Response& res,
                        server::TunnelStream& stream,
                        const RateLimiter::Decision& d);
  common::Counter* response_too_large() const {
    return log_->metrics().limit_rejections[kResponseBody];
  }

  // X-RateLimit-Limit/-Remaining/-Reset of the per-minute tunnel limit (when
  // there is one).
  static void SetRateLimitHeaders(httplib::Response& res,
                                  const RateLimiter::Decision& d);
  // A request the connection cannot be reused after (its body is unread):
  // Connection: close, and the connection closes once it is answered.
  static void CloseAfterResponse(httplib::Response& res);

 private:
  const RequestLimitOptions options_;
  RequestLog* const log_;
  RateLimiter tunnel_;
};

}  // namespace tunnel::httpfront

#endif  // TUNNEL_HTTPFRONT_REQUEST_LIMITS_H_
