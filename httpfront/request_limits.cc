#include "httpfront/request_limits.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httpfront/error_pages.h"
#include "httpfront/front_server.h"

namespace tunnel::httpfront {
namespace {

RateLimiter::Options TunnelLimits(const RequestLimitOptions& o) {
  RateLimiter::Options limits;
  limits.per_minute = o.tunnel_requests_per_minute;
  limits.concurrent = o.tunnel_concurrent_requests;
  limits.shared = o.shared;
  return limits;
}

uint64_t OrUnlimited(int64_t v) {
  return v > 0 ? static_cast<uint64_t>(v) : UINT64_MAX;
}

}  // namespace

RequestLimits::RequestLimits(const RequestLimitOptions& options,
                             RequestLog* log)
    : options_(options), log_(log), tunnel_(TunnelLimits(options)) {}

RateLimiter::Decision RequestLimits::Acquire(absl::string_view slug) {
  return tunnel_.Acquire(slug, options_.clock());
}

void RequestLimits::Release(RateLimiter::Slot* slot, bool counted) {
  tunnel_.Release(slot, counted);
}

uint64_t RequestLimits::max_request_body() const {
  return OrUnlimited(options_.max_request_body);
}

uint64_t RequestLimits::max_response_body() const {
  return OrUnlimited(options_.max_response_body);
}

bool RequestLimits::RequestBodyTooLarge(const httplib::Request& req) const {
  if (options_.max_request_body <= 0) return false;
  const uint64_t max = max_request_body();
  uint64_t declared = 0;
  return req.body.size() > max ||
         (absl::SimpleAtoi(req.get_header_value("Content-Length"), &declared) &&
          declared > max);
}

void RequestLimits::SetRateLimitHeaders(httplib::Response& res,
                                        const RateLimiter::Decision& d) {
  if (d.limit <= 0) return;
  res.set_header("X-RateLimit-Limit", absl::StrCat(d.limit));
  res.set_header("X-RateLimit-Remaining", absl::StrCat(d.remaining));
  res.set_header("X-RateLimit-Reset", absl::StrCat(CeilSeconds(d.reset)));
}

void RequestLimits::CloseAfterResponse(httplib::Response& res) {
  res.set_header("Connection", "close");
  FrontServer::CloseCurrentConnectionAfterResponse();
}

void RequestLimits::TunnelLimited(const httplib::Request& req,
                                  httplib::Response& res,
                                  const RateLimiter::Decision& d,
                                  bool unread_body) {
  const bool rate = d.verdict == RateLimiter::Verdict::kRateLimited;
  log_->Reject(rate ? kTunnelRate : kTunnelConcurrency);
  if (rate) {
    SetError(req, res, 429, "tunnel_rate_limited",
             absl::StrCat("this tunnel takes ", d.limit,
                          " requests per minute; wait and try again"));
  } else {
    SetError(req, res, 429, "tunnel_concurrency_limited",
             absl::StrCat("this tunnel serves at most ",
                          options_.tunnel_concurrent_requests,
                          " requests at once; try again shortly"));
  }
  SetRateLimitHeaders(res, d);
  res.set_header("Retry-After", absl::StrCat(rate ? CeilSeconds(d.reset) : 1));
  if (unread_body) CloseAfterResponse(res);
}

void RequestLimits::RequestTooLarge(const httplib::Request& req,
                                    httplib::Response& res, bool unread_body) {
  log_->Reject(kRequestBody);
  SetError(req, res, 413, "request_too_large",
           absl::StrCat("the request body is larger than this gateway "
                        "accepts (",
                        options_.max_request_body, " bytes)"));
  if (unread_body) CloseAfterResponse(res);
}

void RequestLimits::ResponseTooLarge(const httplib::Request& req,
                                     httplib::Response& res,
                                     server::TunnelStream& stream,
                                     const RateLimiter::Decision& d) {
  stream.Cancel("the response body is over the gateway's limit");
  log_->Reject(kResponseBody);
  res.headers.clear();
  SetRateLimitHeaders(res, d);
  SetError(req, res, 502, "response_too_large",
           absl::StrCat("the service's response is larger than this "
                        "gateway passes on (",
                        options_.max_response_body, " bytes)"));
}

}  // namespace tunnel::httpfront
