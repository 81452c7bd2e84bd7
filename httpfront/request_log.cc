#include "httpfront/request_log.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace tunnel::httpfront {
namespace {

constexpr absl::string_view kLimitNames[kLimitKinds] = {
    "max_connections",
    "tunnel_requests_per_minute",
    "tunnel_concurrent_requests",
    "client_connections",
    "client_connections_per_minute",
    "max_request_body",
    "max_response_body"};

}  // namespace

FrontMetrics::FrontMetrics(common::MetricsRegistry* r)
    : requests(r->AddCounter(
          "tunnel_http_requests_total",
          "Visitor requests answered, by tunnel, status class and gateway "
          "error (X-Tunnel-Error code; \"response_cut\" when a body broke "
          "off; empty for the service's own answers).",
          {"tunnel", "code", "error"})),
      bytes(r->AddCounter("tunnel_body_bytes_total",
                          "Body bytes relayed, by tunnel and direction "
                          "(visitor_to_agent, agent_to_visitor).",
                          {"tunnel", "direction"})),
      duration(
          r->AddHistogram("tunnel_http_request_duration_seconds",
                          "Visitor request time from its parsed head to the "
                          "last byte of the response (upgrades: until closed).",
                          {}, common::DefaultLatencyBuckets())
              ->WithLabels({})),
      access_denials(r->AddCounter(
          "tunnel_access_denials_total",
          "Visitors stopped by a tunnel's access code or basic auth, by "
          "reason (code_required, bad_cookie, wrong_code, "
          "basic_auth_required, wrong_password, rate_limited).",
          {"reason"})),
      access_grants(r->AddCounter(
          "tunnel_access_grants_total",
          "Visitors let through a tunnel's access code or basic auth, by "
          "how (cookie, form, query, header, basic_auth).",
          {"via"})),
      ip_denials(
          r->AddCounter("tunnel_ip_denials_total",
                        "Visitor requests refused by a tunnel's IP rules (403 "
                        "ip_not_allowed), by tunnel.",
                        {"tunnel"})),
      basic_auth_hashes(
          r->AddCounter("tunnel_basic_auth_hashes_total",
                        "Slow password hashes (bcrypt, PBKDF2) the front "
                        "door ran to check basic auth; a credential verified "
                        "within --basic-auth-cache-ttl runs none.",
                        {})
              ->WithLabels({})),
      retries(r->AddCounter("tunnel_pool_retries_total",
                            "Visitor requests sent again to another pool "
                            "member after the first member's local service "
                            "refused the connection.",
                            {})
                  ->WithLabels({})) {
  common::CounterFamily* limits = r->AddCounter(
      "tunnel_limit_rejections_total",
      "Visitor requests and connections refused or cut at a configured "
      "limit, by limit.",
      {"limit"});
  for (int i = 0; i < kLimitKinds; ++i) {
    limit_rejections[i] = limits->WithLabels({std::string(kLimitNames[i])});
  }
}

std::string PathOf(absl::string_view target) {
  absl::string_view path = target.substr(0, target.find('?'));
  constexpr size_t kMaxLogged = 1024;
  if (path.size() > kMaxLogged) {
    return absl::StrCat(path.substr(0, kMaxLogged), "...");
  }
  return std::string(path);
}

namespace {

constexpr absl::string_view kStatusClasses[] = {"other", "1xx", "2xx",
                                                "3xx",   "4xx", "5xx"};

int StatusClassIndex(int status) {
  const int c = status / 100;
  return c >= 1 && c <= 5 ? c : 0;
}

}  // namespace

absl::string_view StatusClass(int status) {
  return kStatusClasses[StatusClassIndex(status)];
}

RequestLog::TunnelCounters& RequestLog::CountersLocked(
    absl::string_view tunnel) {
  std::unique_ptr<TunnelCounters>& c = tunnels_[tunnel];
  if (c == nullptr) {
    c = std::make_unique<TunnelCounters>();
    c->bytes_in = metrics_.bytes->WithLabels(
        {std::string(tunnel), std::string(kVisitorToAgent)});
    c->bytes_out = metrics_.bytes->WithLabels(
        {std::string(tunnel), std::string(kAgentToVisitor)});
  }
  return *c;
}

void RequestLog::BodyCounters(absl::string_view tunnel, common::Counter** in,
                              common::Counter** out) {
  absl::MutexLock lock(&mu_);
  TunnelCounters& c = CountersLocked(tunnel);
  *in = c.bytes_in;
  *out = c.bytes_out;
}

common::Counter* RequestLog::RequestCounter(absl::string_view tunnel,
                                            int status,
                                            const std::string& error) {
  const int cls = StatusClassIndex(status);
  if (!error.empty()) {  // rare: looked up each time
    return metrics_.requests->WithLabels(
        {std::string(tunnel), std::string(kStatusClasses[cls]), error});
  }
  absl::MutexLock lock(&mu_);
  common::Counter*& counter = CountersLocked(tunnel).answered[cls];
  if (counter == nullptr) {
    counter = metrics_.requests->WithLabels(
        {std::string(tunnel), std::string(kStatusClasses[cls]), ""});
  }
  return counter;
}

void RequestLog::Start(RequestRecord& r, const httplib::Request& req) {
  r.Reset();
  r.started = true;
  r.start = absl::Now();
  r.method = req.method;
  r.remote = req.remote_addr;
  r.path = PathOf(req.target);
}

void RequestLog::Logged(RequestRecord& r, const httplib::Request& req,
                        const httplib::Response& res) {
  r.logged = true;
  r.logged_status = res.status;
  if (!r.started) {  // httplib refused the request before the setup hook
    r.method = req.method;
    r.remote = req.remote_addr;
    r.path = PathOf(req.target);
  }
}

void RequestLog::Finish(RequestRecord& r) {
  if (!r.started && !r.logged) return;  // the connection just ended
  const absl::Duration took =
      r.started ? absl::Now() - r.start : absl::ZeroDuration();
  int status = r.status != 0 ? r.status
               : r.logged    ? r.logged_status
                             : r.handled_status;
  // httplib skips its logger only when writing the head failed: the
  // visitor got nothing.
  if (!r.logged && r.status == 0) r.cut = true;
  std::string error = r.cut && r.error.empty() ? "response_cut" : r.error;
  RequestCounter(r.tunnel, status, error)->Increment();
  metrics_.duration->Observe(absl::ToDoubleSeconds(took));
  common::LogEvent e(common::LogLevel::kInfo, "access");
  e.Str("request_id", r.request_id);
  if (!r.incoming_request_id.empty()) {
    e.Str("incoming_request_id", r.incoming_request_id);
  }
  e.Str("remote", r.remote)
      .Str("tunnel", r.slug)
      .Str("method", r.method)
      .Str("path", r.path)
      .Int("status", status)
      .Int("bytes_in", static_cast<int64_t>(r.in.load()))
      .Int("bytes_out", static_cast<int64_t>(r.out.load()))
      .Num("duration_ms", absl::ToDoubleMilliseconds(took))
      .Str("error", error);
  r.Reset();
}

void RequestLog::HeadRejected(int status, absl::string_view code,
                              const std::string& remote,
                              const std::string& request_id) {
  metrics_.requests
      ->WithLabels({"", std::string(StatusClass(status)), std::string(code)})
      ->Increment();
  metrics_.duration->Observe(0);
  common::LogEvent(common::LogLevel::kInfo, "access")
      .Str("request_id", request_id)
      .Str("remote", remote)
      .Int("status", status)
      .Str("error", code);
}

}  // namespace tunnel::httpfront
