#include "httpfront/front_door.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/access_code.h"
#include "common/headers.h"
#include "common/log.h"
#include "common/random.h"
#include "httpfront/access_gate.h"
#include "httpfront/blocking_pool.h"
#include "httpfront/rate_limits.h"
#include "httpfront/request_record.h"
#include "httpfront/routing.h"

namespace tunnel::httpfront {
namespace {

using server::TunnelStream;

// Names httplib adds to the request itself; never forwarded.
constexpr absl::string_view kHttplibInternal[] = {"REMOTE_ADDR", "REMOTE_PORT",
                                                  "LOCAL_ADDR", "LOCAL_PORT"};
// Headers the setup hook parks under a name httplib does not know, so that it
// neither compresses our pass-through responses (Accept-Encoding) nor
// decompresses uploads (Content-Encoding). A ':' can never come off the wire
// in a header name, so a visitor cannot forge the parked names.
constexpr std::pair<absl::string_view, absl::string_view> kParked[] = {
    {"Accept-Encoding", ":Accept-Encoding"},
    {"Content-Encoding", ":Content-Encoding"}};

// Where a visitor may present a tunnel's access code (besides `?code=`).
constexpr char kAccessCodeField[] = "tunnel_access_code";  // form field
constexpr char kAccessCodeHeader[] = "X-Tunnel-Access-Code";

// A request waiting on the agent hears at once when its visitor's socket
// has news (FrontServer::WatchVisitor) and then checks that the visitor is
// still there, so an abandoned request is cancelled at the agent promptly.
// It also checks this often regardless, as a fallback.
constexpr absl::Duration kLivenessInterval = absl::Seconds(2);

// Values of the `direction` label of tunnel_body_bytes_total.
constexpr absl::string_view kVisitorToAgent = "visitor_to_agent";
constexpr absl::string_view kAgentToVisitor = "agent_to_visitor";

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
constexpr absl::string_view kLimitNames[kLimitKinds] = {
    "max_connections",
    "tunnel_requests_per_minute",
    "tunnel_concurrent_requests",
    "client_connections",
    "client_connections_per_minute",
    "max_request_body",
    "max_response_body"};

// The visitor-side metrics. Labels stay bounded: `tunnel` is the slug of a
// known tunnel (claimed by an authenticated agent or reserved for an agent
// id in the credentials) or "" — never a slug a visitor merely asked for;
// `error` is one of our X-Tunnel-Error codes, "response_cut", or "".
struct FrontMetrics {
  explicit FrontMetrics(common::MetricsRegistry* r)
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
        duration(r->AddHistogram(
                      "tunnel_http_request_duration_seconds",
                      "Visitor request time from its parsed head to the "
                      "last byte of the response (upgrades: until closed).",
                      {}, common::DefaultLatencyBuckets())
                     ->WithLabels({})),
        access_denials(r->AddCounter(
            "tunnel_access_denials_total",
            "Visitors stopped by a tunnel's access code gate, by reason "
            "(code_required, bad_cookie, wrong_code, rate_limited).",
            {"reason"})),
        access_grants(r->AddCounter(
            "tunnel_access_grants_total",
            "Visitors let through a tunnel's access code gate, by how "
            "(cookie, form, query, header).",
            {"via"})) {
    common::CounterFamily* limits = r->AddCounter(
        "tunnel_limit_rejections_total",
        "Visitor requests and connections refused or cut at a configured "
        "limit, by limit.",
        {"limit"});
    for (int i = 0; i < kLimitKinds; ++i) {
      limit_rejections[i] = limits->WithLabels({std::string(kLimitNames[i])});
    }
  }

  common::CounterFamily* const requests;
  common::CounterFamily* const bytes;
  common::Histogram* const duration;
  common::CounterFamily* const access_denials;
  common::CounterFamily* const access_grants;
  // Resolved at start: counting a rejection takes no lock.
  common::Counter* limit_rejections[kLimitKinds] = {};
};

// The request record of the calling fiber's connection (see
// request_record.h): handlers and hooks run on the connection's fiber.
RequestRecord& Rec() { return *FrontServer::CurrentRecord(); }

// The request target without its query string, capped: what the access log
// shows of a path.
std::string PathOf(absl::string_view target) {
  absl::string_view path = target.substr(0, target.find('?'));
  constexpr size_t kMaxLogged = 1024;
  if (path.size() > kMaxLogged) {
    return absl::StrCat(path.substr(0, kMaxLogged), "...");
  }
  return std::string(path);
}

absl::string_view StatusClass(int status) {
  switch (status / 100) {
    case 1:
      return "1xx";
    case 2:
      return "2xx";
    case 3:
      return "3xx";
    case 4:
      return "4xx";
    case 5:
      return "5xx";
    default:
      return "other";
  }
}

std::string HtmlEscape(absl::string_view s) {
  return absl::StrReplaceAll(
      s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

std::string JsonEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += ' ';
        } else {
          out += c;
        }
    }
  }
  return out;
}

// The gateway's own error answer: a small HTML page for browsers, JSON for
// everything else. X-Tunnel-Error names the case for scripts and logs.
void SetError(const httplib::Request& req, httplib::Response& res, int status,
              absl::string_view code, absl::string_view message) {
  Rec().error = std::string(code);
  res.status = status;
  res.set_header("X-Tunnel-Error", std::string(code));
  res.set_header("Cache-Control", "no-store");
  if (absl::StrContains(req.get_header_value("Accept"), "text/html")) {
    res.set_content(
        absl::StrCat("<!doctype html><html><head><meta charset=\"utf-8\">"
                     "<title>",
                     status, " ", HtmlEscape(code), "</title></head><body><h1>",
                     status, "</h1><p>", HtmlEscape(message),
                     "</p><hr><small>tunnel gateway</small></body></html>\n"),
        "text/html; charset=utf-8");
  } else {
    res.set_content(absl::StrCat("{\"error\":\"", JsonEscape(code),
                                 "\",\"status\":", status, ",\"message\":\"",
                                 JsonEscape(message), "\"}\n"),
                    "application/json");
  }
}

// Visitor status for a stream error (see server/tunnel_router.h).
void SetStreamError(const httplib::Request& req, httplib::Response& res,
                    const absl::Status& s, absl::Duration retry_after) {
  switch (s.code()) {
    case absl::StatusCode::kNotFound:
      SetError(req, res, 404, "tunnel_not_found", s.message());
      break;
    case absl::StatusCode::kUnavailable:
      SetError(req, res, 502, "agent_offline", s.message());
      res.set_header("Retry-After",
                     absl::StrCat(absl::ToInt64Seconds(retry_after)));
      break;
    case absl::StatusCode::kFailedPrecondition:
      SetError(req, res, 502, "local_service_unreachable", s.message());
      break;
    case absl::StatusCode::kDeadlineExceeded:
      SetError(req, res, 504, "agent_timeout", s.message());
      break;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kCancelled:
      SetError(req, res, 503, "gateway_busy", s.message());
      break;
    default:
      SetError(req, res, 502, "agent_error", s.message());
      break;
  }
}

// An HTTP/1.1 upgrade request: "Connection: upgrade" (a token of it) and an
// Upgrade header.
bool IsUpgradeRequest(const httplib::Request& req) {
  if (!req.has_header("Upgrade")) return false;
  for (absl::string_view token :
       absl::StrSplit(req.get_header_value("Connection"), ',')) {
    if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(token), "upgrade")) {
      return true;
    }
  }
  return false;
}

// A body httplib leaves on the connection for a content-reader route to
// read: chunked, or a non-zero Content-Length.
bool HasStreamedBody(const httplib::Request& req) {
  uint64_t length = 0;
  return absl::EqualsIgnoreCase(req.get_header_value("Transfer-Encoding"),
                                "chunked") ||
         (absl::SimpleAtoi(req.get_header_value("Content-Length"), &length) &&
          length > 0);
}

RateLimiter::Options TunnelLimits(const FrontDoorOptions& o) {
  RateLimiter::Options limits;
  limits.per_minute = o.tunnel_requests_per_minute;
  limits.concurrent = o.tunnel_concurrent_requests;
  return limits;
}

bool IsInternalHeader(absl::string_view name) {
  for (absl::string_view n : kHttplibInternal) {
    if (name == n) return true;
  }
  return false;
}

}  // namespace

class FrontDoor::Handler {
 public:
  Handler(const FrontDoorOptions& options, server::TunnelRouter* router,
          common::MetricsRegistry* metrics)
      : options_(options), router_(router), metrics_(metrics) {}

  // httplib's logger: runs after it wrote a response (ours or its own).
  static void Logged(const httplib::Request& req,
                     const httplib::Response& res) {
    RequestRecord& r = Rec();
    r.logged = true;
    r.logged_status = res.status;
    if (!r.started) {  // httplib refused the request before the setup hook
      r.method = req.method;
      r.remote = req.remote_addr;
      r.path = PathOf(req.target);
    }
  }

  // FrontServer's request-done hook: counts the request and logs it.
  void Done() {
    RequestRecord& r = Rec();
    if (r.slot != nullptr) {
      tunnel_limiter_.Release(r.slot);
      r.slot = nullptr;
    }
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
    metrics_.requests
        ->WithLabels({r.tunnel, std::string(StatusClass(status)), error})
        ->Increment();
    metrics_.duration->Observe(absl::ToDoubleSeconds(took));
    common::LogEvent(common::LogLevel::kInfo, "access")
        .Str("request_id", r.request_id)
        .Str("remote", r.remote)
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

  // FrontServer refused a request head before httplib parsed it: counted
  // and logged like any request (no tunnel: nothing was routed).
  void HeadRejected(int status, absl::string_view code,
                    const std::string& remote, const std::string& request_id) {
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

  // Setup hook: runs on the parsed request before routing.
  static void Prepare(httplib::Request& req) {
    RequestRecord& r = Rec();
    r.Reset();
    r.started = true;
    r.start = absl::Now();
    r.method = req.method;
    r.remote = req.remote_addr;
    r.path = PathOf(req.target);
    // httplib would slice our streamed response for Range requests; the
    // service answers Range itself.
    req.ranges.clear();
    for (const auto& [name, parked] : kParked) {
      std::vector<std::string> values;
      auto range = req.headers.equal_range(std::string(name));
      for (auto it = range.first; it != range.second; ++it) {
        values.push_back(it->second);
      }
      req.headers.erase(std::string(name));
      for (std::string& v : values) {
        req.headers.emplace(std::string(parked), std::move(v));
      }
    }
  }

  // FrontServer's hook for connections refused at accept.
  void ConnectionRefused(ConnectionRefusal why) {
    switch (why) {
      case ConnectionRefusal::kMaxConnections:
        return Reject(kMaxConnections);
      case ConnectionRefusal::kIpRate:
        return Reject(kClientConnectionRate);
      case ConnectionRefusal::kIpConcurrency:
        return Reject(kClientConnections);
    }
  }

  void SetDraining(absl::Duration retry_after) {
    drain_retry_after_s_ =
        std::max<int64_t>(1, absl::ToInt64Seconds(retry_after));
  }

  void Handle(const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader* reader) {
    if (int64_t retry = drain_retry_after_s_.load(); retry > 0) {
      SetError(req, res, 503, "gateway_draining",
               "the gateway is restarting; try again shortly");
      res.set_header("Retry-After", absl::StrCat(retry));
      res.set_header("Connection", "close");
      FrontServer::CloseCurrentConnectionAfterResponse();
      return;
    }
    // httplib percent-decodes header values (not Location), so a visitor's
    // "%0D%0A" arrives here as CR LF: never pass such a field on.
    for (const auto& [name, value] : req.headers) {
      if (IsInternalHeader(name)) continue;
      const bool parked = !name.empty() && name[0] == ':';
      if ((!parked && !common::IsValidHeaderName(name)) ||
          !common::IsValidHeaderValue(value)) {
        SetError(req, res, 400, "bad_request",
                 "a header field holds CR, LF or NUL");
        res.set_header("Connection", "close");
        FrontServer::CloseCurrentConnectionAfterResponse();
        return;
      }
    }
    const bool upgrade = IsUpgradeRequest(req);
    std::string host = req.get_header_value("Host");
    std::optional<Route> route =
        ResolveRoute(host, req.target, options_.domain);
    if (!route.has_value()) {
      SetError(req, res, 404, "tunnel_not_found",
               absl::StrCat("no tunnel here: use http://<name>.",
                            options_.domain, "/ or /t/<name>/"));
      return;
    }

    // A tunnel with an access code: only visitors with a valid cookie (or
    // the code itself) pass; ours never reach the service (`code` query
    // parameter, the access cookie, X-Tunnel-Access-Code).
    std::string request_id = common::NewUuid();
    Rec().request_id = request_id;
    std::string target = route->target;
    std::string forwarded_cookie;
    const std::optional<tunnel::v1::AccessCodeHash> access =
        router_->AccessCodeFor(route->slug);
    if (access.has_value()) {
      Rec().slug = route->slug;
      Rec().tunnel = route->slug;  // gated, hence a known tunnel
      if (!Admit(req, res, *route, *access, reader, &target,
                 &forwarded_cookie)) {
        return;
      }
    }

    Rec().slug = route->slug;
    // Is there a request body to stream? httplib has already read it into
    // req.body for methods it serves without a content reader.
    const bool streamed_body = reader != nullptr && HasStreamedBody(req);
    if (options_.max_request_body > 0) {
      const uint64_t max = static_cast<uint64_t>(options_.max_request_body);
      uint64_t declared = 0;
      if (req.body.size() > max ||
          (absl::SimpleAtoi(req.get_header_value("Content-Length"),
                            &declared) &&
           declared > max)) {
        RequestTooLarge(req, res, streamed_body);
        return;
      }
    }
    RateLimiter::Decision limit;
    if (tunnel_limiter_.enabled()) {
      limit = tunnel_limiter_.Acquire(route->slug, options_.clock());
      if (limit.slot == nullptr) {
        TunnelLimited(req, res, *route, limit, streamed_body);
        return;
      }
      Rec().slot = limit.slot;
    }

    tunnel::v1::TunnelRequest head;
    head.set_request_id(request_id);
    head.set_tunnel_slug(route->slug);
    head.set_method(req.method);
    head.set_path(target);
    auto* headers = head.mutable_headers();
    std::string prior_xff;
    for (const auto& [name, value] : req.headers) {
      if (IsInternalHeader(name)) continue;
      if (access.has_value() &&
          (absl::EqualsIgnoreCase(name, "Cookie") ||
           absl::EqualsIgnoreCase(name, kAccessCodeHeader))) {
        continue;  // the Cookie header goes on without ours, below
      }
      if (!name.empty() && name[0] == ':') {
        common::AddHeader(headers, absl::string_view(name).substr(1), value);
      } else if (absl::EqualsIgnoreCase(name, "X-Forwarded-For")) {
        prior_xff =
            prior_xff.empty() ? value : absl::StrCat(prior_xff, ", ", value);
      } else if (absl::EqualsIgnoreCase(name, "Expect") ||
                 absl::EqualsIgnoreCase(name, "X-Forwarded-Proto") ||
                 absl::EqualsIgnoreCase(name, "X-Forwarded-Host") ||
                 absl::EqualsIgnoreCase(name, "X-Forwarded-Prefix") ||
                 absl::EqualsIgnoreCase(name, "X-Request-Id")) {
        // Expect: 100-continue was answered here. The X-Forwarded-* set
        // below describe this hop and replace what the visitor claimed.
      } else {
        common::AddHeader(headers, name, value);
      }
    }
    if (!forwarded_cookie.empty()) {
      common::AddHeader(headers, "Cookie", forwarded_cookie);
    }
    common::StripHopByHop(headers);
    if (upgrade) {
      // The one hop-by-hop pair that must reach the service.
      common::AddHeader(headers, "Connection", "Upgrade");
      common::AddHeader(headers, "Upgrade", req.get_header_value("Upgrade"));
      head.set_upgrade(true);
    }
    const std::string& ip = req.remote_addr;
    common::AddHeader(
        headers, "X-Forwarded-For",
        prior_xff.empty() ? ip : absl::StrCat(prior_xff, ", ", ip));
    common::AddHeader(headers, "X-Forwarded-Proto", options_.scheme);
    common::AddHeader(headers, "X-Forwarded-Host", host);
    std::string for_token =
        absl::StrContains(ip, ':') ? absl::StrCat("\"[", ip, "]\"") : ip;
    common::AddHeader(headers, "Forwarded",
                      absl::StrCat("for=", for_token, ";host=\"", host,
                                   "\";proto=", options_.scheme));
    if (!route->prefix.empty()) {
      common::AddHeader(headers, "X-Forwarded-Prefix", route->prefix);
    }
    common::AddHeader(headers, "X-Request-Id", request_id);

    // An upgrade keeps the visitor's direction open for the raw bytes that
    // follow a 101.
    head.set_end_stream(!upgrade && !streamed_body && req.body.empty());

    absl::StatusOr<std::unique_ptr<TunnelStream>> opened =
        router_->Open(route->slug, std::move(head));
    if (limit.slot != nullptr) {
      if (!opened.ok() && absl::IsNotFound(opened.status())) {
        // No such tunnel: the request never happened for the limiter.
        tunnel_limiter_.Release(limit.slot, /*counted=*/false);
        Rec().slot = nullptr;
      } else {
        RateLimiter::MarkConfirmed(limit.slot);
        SetRateLimitHeaders(res, limit);
      }
    }
    // Only a tunnel the router knows becomes a label value.
    if (opened.ok() || !absl::IsNotFound(opened.status())) {
      Rec().tunnel = route->slug;
    }
    if (!opened.ok()) {
      SetStreamError(req, res, opened.status(), options_.offline_retry_after);
      return;
    }
    std::shared_ptr<TunnelStream> stream = std::move(*opened);
    res.set_header("X-Request-Id", request_id);
    RequestRecord* record = &Rec();
    record->bytes_in = metrics_.bytes->WithLabels(
        {record->tunnel, std::string(kVisitorToAgent)});
    record->bytes_out = metrics_.bytes->WithLabels(
        {record->tunnel, std::string(kAgentToVisitor)});

    // Upload: stream the body to the agent against its credit.
    absl::Status upload;
    if (streamed_body) {
      const uint64_t max_in =
          options_.max_request_body > 0
              ? static_cast<uint64_t>(options_.max_request_body)
              : UINT64_MAX;
      uint64_t sent = 0;
      bool too_large = false;
      bool read_ok = (*reader)([&](const char* data, size_t len) {
        if (len > max_in - sent) {  // the service never gets the excess
          too_large = true;
          return false;
        }
        sent += len;
        upload = stream->SendBody(absl::string_view(data, len),
                                  absl::Now() + options_.body_idle_timeout);
        if (upload.ok()) record->AddIn(len);
        return upload.ok();
      });
      Rec().body_read = read_ok;
      if (too_large) {
        stream->Cancel("the request body is over the gateway's limit");
        RequestTooLarge(req, res, /*unread_body=*/true);
        return;
      }
      if (upload.ok() && !read_ok) {
        // The visitor's body broke off: the agent must not see it as whole.
        stream->Cancel("the visitor's request body was cut off");
        record->error = "request_cut";
        res.status = 400;
        return;
      }
      if (upload.ok()) upload = stream->FinishBody();
    } else if (!req.body.empty()) {
      upload =
          stream->SendBody(req.body, absl::Now() + options_.body_idle_timeout);
      if (upload.ok()) {
        record->AddIn(req.body.size());
        upload = stream->FinishBody();
      }
    }
    if (!upload.ok()) {
      stream->Cancel(upload.message());
      SetStreamError(req, res, upload, options_.offline_retry_after);
      return;
    }

    absl::StatusOr<tunnel::v1::TunnelResponse> head_or =
        AwaitHead(*stream, absl::Now() + options_.response_timeout);
    if (!head_or.ok()) {
      stream->Cancel(head_or.status().message());
      SetStreamError(req, res, head_or.status(), options_.offline_retry_after);
      return;
    }
    const tunnel::v1::TunnelResponse& resp = *head_or;
    if (resp.status() < 100 || resp.status() > 599) {
      stream->Cancel("invalid status");
      SetError(req, res, 502, "agent_error",
               absl::StrCat("the agent sent invalid status ", resp.status()));
      return;
    }
    if (upgrade && resp.status() == 101) {
      record->status = 101;
      ServeUpgraded(*stream, resp, record);
      return;
    }
    res.status = static_cast<int>(resp.status());

    int64_t content_length = -1;
    for (const auto& h : resp.headers()) {
      if (!common::IsValidHeaderName(h.name()) ||
          !common::IsValidHeaderValue(h.value()) ||
          common::IsHopByHopHeader(h.name())) {
        continue;  // never let an agent inject or smuggle header lines
      }
      if (absl::EqualsIgnoreCase(h.name(), "Content-Length")) {
        if (!absl::SimpleAtoi(h.value(), &content_length)) content_length = -1;
        if (req.method != "HEAD") continue;  // httplib writes its own
      }
      if (limit.limit > 0 &&
          absl::StartsWithIgnoreCase(h.name(), "X-RateLimit-")) {
        continue;  // ours describe the gateway's limit
      }
      res.headers.emplace(h.name(), h.value());
    }
    const uint64_t max_out =
        options_.max_response_body > 0
            ? static_cast<uint64_t>(options_.max_response_body)
            : UINT64_MAX;
    if (req.method != "HEAD" && content_length >= 0 &&
        static_cast<uint64_t>(content_length) > max_out) {
      ResponseTooLarge(req, res, *stream, limit, request_id);
      return;
    }

    if (req.method == "HEAD" || resp.end_stream()) {
      // Whole body (if any) already arrived with the head.
      if (resp.end_stream() && req.method != "HEAD") {
        absl::StatusOr<common::Chunk> c =
            stream->ReadBody(absl::Now() + options_.body_idle_timeout);
        if (c.ok() && c->data.size() > max_out) {
          ResponseTooLarge(req, res, *stream, limit, request_id);
          return;
        }
        if (c.ok()) {
          record->AddOut(c->data.size());
          res.body = std::move(c->data);
          if (!res.body.empty()) FrontServer::CoalesceResponseHead();
        }
      }
      return;
    }

    // Streamed body: each chunk goes to the visitor as it arrives.
    auto state = std::make_shared<BodyState>();
    state->stream = stream;
    state->record = record;
    state->idle = options_.body_idle_timeout;
    state->max = max_out;
    state->too_large = metrics_.limit_rejections[kResponseBody];
    if (content_length >= 0) {
      res.content_length_ = static_cast<size_t>(content_length);
      res.content_provider_ = [state](size_t, size_t length,
                                      httplib::DataSink& sink) {
        return state->Pump(sink, length, /*chunked=*/false);
      };
      res.is_chunked_content_provider_ = false;
      if (content_length == 0) {
        res.content_provider_ = nullptr;
        res.set_header("Content-Length", "0");
      }
    } else {
      res.content_provider_ = [state](size_t, size_t, httplib::DataSink& sink) {
        return state->Pump(sink, 0, /*chunked=*/true);
      };
      res.is_chunked_content_provider_ = true;
    }
  }

 private:
  // The access gate of a tunnel with a code. True: the visitor may pass
  // (`*target` lost its `code` parameter, `*cookie_out` is the Cookie header
  // to forward, without ours). False: `res` holds the answer: 401 with a
  // form or JSON, 429, or 303 with the access cookie after a correct code.
  bool Admit(const httplib::Request& req, httplib::Response& res,
             const Route& route, const tunnel::v1::AccessCodeHash& code,
             const httplib::ContentReader* reader, std::string* target,
             std::string* cookie_out) {
    const absl::Time now = absl::Now();
    std::string cookies;
    auto range = req.headers.equal_range("Cookie");
    for (auto it = range.first; it != range.second; ++it) {
      if (!cookies.empty()) cookies += "; ";
      cookies += it->second;
    }
    std::vector<std::string> ours;
    *cookie_out = TakeCookie(cookies, kAccessCookieName, &ours);
    std::string query_code;
    const bool has_query = TakeQueryParam(target, "code", &query_code);
    for (const std::string& c : ours) {
      if (cookie_signer_.Valid(c, route.slug, code, now)) {
        metrics_.access_grants->WithLabels({"cookie"})->Increment();
        return true;
      }
    }
    // Which code did the visitor present, and how?
    // The header first: reading a form body would consume what an API
    // client meant for the service.
    std::string presented;
    absl::string_view via;
    if (req.has_header(kAccessCodeHeader)) {
      presented = req.get_header_value(kAccessCodeHeader);
      via = "header";
    } else if (req.method == "POST" &&
               absl::StartsWithIgnoreCase(
                   req.get_header_value("Content-Type"),
                   "application/x-www-form-urlencoded")) {
      constexpr size_t kMaxForm = 4096;
      std::string body = req.body.substr(0, kMaxForm);
      if (reader != nullptr) {
        Rec().body_read = (*reader)([&](const char* data, size_t len) {
          body.append(data, std::min(len, kMaxForm + 1 - body.size()));
          return body.size() <= kMaxForm;
        });
      }
      if (FormField(body, kAccessCodeField, &presented)) via = "form";
    }
    if (via.empty() && has_query) {
      presented = query_code;
      via = "query";
    }
    const std::string back = absl::StrCat(route.prefix, *target);
    if (via.empty()) {
      Deny(ours.empty() ? "code_required" : "bad_cookie");
      Challenge(req, res, back,
                "this tunnel needs an access code; ask whoever shared it");
      return false;
    }
    const std::string key = absl::StrCat(req.remote_addr, " ", route.slug);
    if (absl::Duration wait = attempts_.Blocked(key, now);
        wait > absl::ZeroDuration()) {
      Deny("rate_limited");
      SetError(req, res, 429, "access_code_rate_limited",
               "too many wrong access codes; wait and try again");
      res.set_header("Retry-After", absl::StrCat(absl::ToInt64Seconds(
                                        absl::Ceil(wait, absl::Seconds(1)))));
      return false;
    }
    bool matches = false;
    slow_work_.Run(
        [&] { matches = common::AccessCodeMatches(code, presented); });
    if (!matches) {
      attempts_.Failed(key, now);
      Deny("wrong_code");
      Challenge(req, res, back, "wrong access code; try again",
                "access_code_invalid");
      return false;
    }
    metrics_.access_grants->WithLabels({std::string(via)})->Increment();
    if (via == "header") return true;  // API clients: no cookie, no redirect
    const int64_t ttl =
        std::max<int64_t>(1, absl::ToInt64Seconds(options_.access_cookie_ttl));
    const absl::Time expires = now + absl::Seconds(ttl);
    std::string cookie = absl::StrCat(
        kAccessCookieName, "=", cookie_signer_.Issue(route.slug, code, expires),
        "; Path=", route.prefix.empty() ? "/" : absl::StrCat(route.prefix, "/"),
        "; Max-Age=", ttl, "; Expires=",
        absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", expires,
                         absl::UTCTimeZone()),
        "; HttpOnly; SameSite=Lax");
    if (options_.scheme == "https") cookie += "; Secure";
    res.status = 303;
    res.set_header("Location", back);
    res.set_header("Set-Cookie", cookie);
    res.set_header("Cache-Control", "no-store");
    return false;
  }

  void Reject(LimitKind kind) { metrics_.limit_rejections[kind]->Increment(); }

  // X-RateLimit-* of the per-minute tunnel limit (when there is one): the
  // limit, what is left of this window, seconds until it ends.
  static void SetRateLimitHeaders(httplib::Response& res,
                                  const RateLimiter::Decision& d) {
    if (d.limit <= 0) return;
    res.set_header("X-RateLimit-Limit", absl::StrCat(d.limit));
    res.set_header("X-RateLimit-Remaining", absl::StrCat(d.remaining));
    res.set_header("X-RateLimit-Reset", absl::StrCat(CeilSeconds(d.reset)));
  }

  // A request the connection cannot be reused after: its body is unread.
  static void CloseAfterResponse(httplib::Response& res) {
    res.set_header("Connection", "close");
    FrontServer::CloseCurrentConnectionAfterResponse();
  }

  // 429 at a tunnel limit; the agent never hears of the request.
  void TunnelLimited(const httplib::Request& req, httplib::Response& res,
                     const Route& route, const RateLimiter::Decision& d,
                     bool unread_body) {
    // Only a slug the router confirmed becomes a label value.
    if (d.confirmed) Rec().tunnel = route.slug;
    const bool rate = d.verdict == RateLimiter::Verdict::kRateLimited;
    Reject(rate ? kTunnelRate : kTunnelConcurrency);
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
    res.set_header("Retry-After",
                   absl::StrCat(rate ? CeilSeconds(d.reset) : 1));
    if (unread_body) CloseAfterResponse(res);
  }

  // 413: the request body is over --max-request-body.
  void RequestTooLarge(const httplib::Request& req, httplib::Response& res,
                       bool unread_body) {
    Reject(kRequestBody);
    SetError(req, res, 413, "request_too_large",
             absl::StrCat("the request body is larger than this gateway "
                          "accepts (",
                          options_.max_request_body, " bytes)"));
    if (unread_body) CloseAfterResponse(res);
  }

  // 502 before the head went out: the response body is (announced or
  // arrived) over --max-response-body. The service's headers are dropped.
  void ResponseTooLarge(const httplib::Request& req, httplib::Response& res,
                        TunnelStream& stream, const RateLimiter::Decision& d,
                        const std::string& request_id) {
    stream.Cancel("the response body is over the gateway's limit");
    Reject(kResponseBody);
    res.headers.clear();
    res.set_header("X-Request-Id", request_id);
    SetRateLimitHeaders(res, d);
    SetError(req, res, 502, "response_too_large",
             absl::StrCat("the service's response is larger than this "
                          "gateway passes on (",
                          options_.max_response_body, " bytes)"));
  }

  void Deny(absl::string_view reason) {
    metrics_.access_denials->WithLabels({std::string(reason)})->Increment();
  }

  // 401: a form that posts the code back to `back` for browsers, JSON
  // (SetError) for everything else.
  static void Challenge(const httplib::Request& req, httplib::Response& res,
                        const std::string& back, absl::string_view message,
                        absl::string_view code = "access_code_required") {
    SetError(req, res, 401, code, message);
    if (!absl::StrContains(req.get_header_value("Accept"), "text/html")) {
      return;
    }
    res.set_content(
        absl::StrCat("<!doctype html><html><head><meta charset=\"utf-8\">"
                     "<meta name=\"viewport\" content=\"width=device-width\">"
                     "<title>Access code required</title></head><body>"
                     "<h1>Access code required</h1><p>",
                     HtmlEscape(message), "</p><form method=\"post\" action=\"",
                     HtmlEscape(back), "\"><input type=\"password\" name=\"",
                     kAccessCodeField,
                     "\" autofocus required autocomplete=\"off\"> "
                     "<button type=\"submit\">Enter</button></form>"
                     "<hr><small>tunnel gateway</small></body></html>\n"),
        "text/html; charset=utf-8");
  }

  struct BodyState {
    std::shared_ptr<TunnelStream> stream;
    // The worker's record; Pump runs on that worker (inside httplib's
    // response writing, before the request-done hook).
    RequestRecord* record = nullptr;
    absl::Duration idle;
    // Response body bytes allowed, and sent so far.
    uint64_t max = UINT64_MAX;
    uint64_t sent = 0;
    common::Counter* too_large = nullptr;

    bool Pump(httplib::DataSink& sink, size_t length, bool chunked) {
      bool ok = PumpOnce(sink, length, chunked);
      if (!ok) record->cut = true;
      return ok;
    }

    // One provider call: delivers at least one chunk or fails. Returning
    // false makes httplib drop the connection without a final chunk, so a
    // cut-off body never looks complete.
    bool PumpOnce(httplib::DataSink& sink, size_t length, bool chunked) {
      absl::Time deadline = absl::Now() + idle;
      FrontServer::WatchVisitor watch;
      while (true) {
        absl::StatusOr<common::Chunk> c = stream->ReadBody(
            std::min(deadline, absl::Now() + kLivenessInterval));
        if (!c.ok()) {
          if (absl::IsDeadlineExceeded(c.status()) && absl::Now() < deadline &&
              FrontServer::CurrentVisitorConnected()) {
            continue;
          }
          stream->Cancel(c.status().message());
          return false;
        }
        if (!chunked && c->data.size() > length) {
          stream->Cancel("the service sent more than its Content-Length");
          return false;
        }
        if (c->data.size() > max - sent) {
          // Cut: the visitor must not take a truncated body as complete.
          stream->Cancel("the response body is over the gateway's limit");
          record->error = "response_too_large";
          too_large->Increment();
          return false;
        }
        sent += c->data.size();
        if (!c->data.empty() && !sink.write(c->data.data(), c->data.size())) {
          stream->Cancel("the visitor went away");
          return false;
        }
        record->AddOut(c->data.size());
        if (!chunked && !c->end && c->data.size() == length) {
          // httplib stops calling once Content-Length bytes are out; take
          // the end marker now so the stream ends cleanly at the agent.
          absl::StatusOr<common::Chunk> tail = stream->ReadBody(deadline);
          if (!tail.ok() || !tail->end || !tail->data.empty()) {
            stream->Cancel("the service sent more than its Content-Length");
            return false;
          }
          return true;
        }
        if (c->end) {
          if (!chunked && c->data.size() != length) {
            stream->Cancel("the service sent less than its Content-Length");
            return false;
          }
          if (chunked) sink.done();
          return true;
        }
        if (!c->data.empty()) return true;
      }
    }
  };

  // After a 101: writes it to the visitor ourselves, then relays raw bytes
  // both ways until both directions end (half-close is carried) or either
  // fails or idles past upgrade_idle_timeout. httplib never sees the
  // connection again.
  void ServeUpgraded(TunnelStream& stream,
                     const tunnel::v1::TunnelResponse& resp,
                     RequestRecord* record) {
    FrontServer::Hijacked hijacked = FrontServer::HijackCurrentConnection();
    Connection* conn = hijacked.conn;
    if (conn == nullptr) {
      stream.Cancel("no connection to upgrade");
      return;
    }
    const absl::Duration idle = options_.upgrade_idle_timeout;
    std::string head = "HTTP/1.1 101 Switching Protocols\r\n";
    for (const auto& h : resp.headers()) {
      if (!common::IsValidHeaderName(h.name()) ||
          !common::IsValidHeaderValue(h.value())) {
        continue;
      }
      absl::StrAppend(&head, h.name(), ": ", h.value(), "\r\n");
    }
    head += "\r\n";
    if (!conn->WriteAll(head, options_.connection.write_timeout) ||
        (!hijacked.buffered.empty() &&
         !stream.SendBody(hijacked.buffered, absl::Now() + idle).ok())) {
      stream.Cancel("the visitor's upgraded connection failed");
      record->cut = true;
      return;
    }
    record->AddIn(hijacked.buffered.size());
    // Service -> visitor on a second fiber; visitor -> service here.
    std::unique_ptr<FrontServer::Sibling> down =
        FrontServer::RunOnSiblingFiber([&stream, conn, idle, record] {
          while (true) {
            absl::StatusOr<common::Chunk> c =
                stream.ReadBody(absl::Now() + idle);
            if (!c.ok() ||
                (!c->data.empty() && !conn->WriteAll(c->data, idle))) {
              conn->ShutdownBoth();  // ends the other direction too
              return;
            }
            record->AddOut(c->data.size());
            if (c->end) {
              conn->ShutdownWrite();  // the service half-closed
              return;
            }
          }
        });
    if (down == nullptr) {
      stream.Cancel("the gateway cannot relay this connection now");
      record->cut = true;
      return;
    }
    char buf[16 * 1024];
    while (true) {
      ssize_t n = conn->Read(buf, sizeof(buf), idle);
      if (n == 0) {
        (void)stream.FinishBody();  // the visitor half-closed
        break;
      }
      if (n < 0 ||
          !stream.SendBody(absl::string_view(buf, n), absl::Now() + idle)
               .ok()) {
        stream.Cancel("the upgraded connection closed or went idle");
        conn->ShutdownBoth();
        break;
      }
      record->AddIn(static_cast<size_t>(n));
    }
    down->Join();
  }

  // Waits for the head while checking that the visitor is still there.
  absl::StatusOr<tunnel::v1::TunnelResponse> AwaitHead(TunnelStream& stream,
                                                       absl::Time deadline) {
    FrontServer::WatchVisitor watch;
    while (true) {
      auto head = stream.AwaitResponseHead(
          std::min(deadline, absl::Now() + kLivenessInterval));
      if (head.ok() || !absl::IsDeadlineExceeded(head.status())) return head;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("the agent sent no response within ",
                         absl::FormatDuration(options_.response_timeout)));
      }
      if (!FrontServer::CurrentVisitorConnected()) {
        return absl::CancelledError("the visitor went away");
      }
    }
  }

  const FrontDoorOptions& options_;
  server::TunnelRouter* const router_;
  FrontMetrics metrics_;
  const AccessCookieSigner cookie_signer_;
  AttemptLimiter attempts_{options_.access_code_attempts_per_minute};
  // PBKDF2 of presented access codes, off the loop threads.
  BlockingPool slow_work_{2};
  RateLimiter tunnel_limiter_{TunnelLimits(options_)};
  // > 0 while draining: the Retry-After to send, in seconds.
  std::atomic<int64_t> drain_retry_after_s_{0};
};

FrontDoor::FrontDoor(FrontDoorOptions options, server::TunnelRouter* router,
                     common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      router_(router),
      server_(std::make_unique<FrontServer>(options_.connection)),
      handler_(std::make_unique<Handler>(options_, router_, metrics)) {
  ObserveConnections(metrics);
  server_->set_setup_request(&Handler::Prepare);
  server_->set_logger(&Handler::Logged);
  Handler* h = handler_.get();
  server_->set_request_done([h] { h->Done(); });
  server_->set_connection_refused(
      [h](ConnectionRefusal why) { h->ConnectionRefused(why); });
  server_->set_head_rejected([h](int status, absl::string_view code,
                                 const std::string& remote,
                                 const std::string& request_id) {
    h->HeadRejected(status, code, remote, request_id);
  });
  auto plain = [h](const httplib::Request& req, httplib::Response& res) {
    h->Handle(req, res, nullptr);
    Rec().handled_status = res.status;
  };
  auto with_body = [h](const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader) {
    h->Handle(req, res, &reader);
    Rec().handled_status = res.status;
    // A body left (partly) unread on the connection (a 404, 502, 429, a
    // refused access code…) must never be parsed as the next request.
    if (HasStreamedBody(req) && !Rec().body_read) {
      res.set_header("Connection", "close");
      FrontServer::CloseCurrentConnectionAfterResponse();
    }
  };
  const std::string all = ".*";
  server_->Get(all, plain);  // GET and HEAD
  server_->Options(all, plain);
  server_->Post(all, with_body);
  server_->Put(all, with_body);
  server_->Patch(all, with_body);
  server_->Delete(all, with_body);
}

FrontDoor::~FrontDoor() { Stop(); }

void FrontDoor::ObserveConnections(common::MetricsRegistry* metrics) {
  common::GaugeFamily* conns = metrics->AddGauge(
      "tunnel_http_connections",
      "Visitor connections open, by state: handshake (TLS), idle (between "
      "requests), reading_head, active (a request is served), upgraded, "
      "lingering (answered and closing).",
      {"state"});
  common::Gauge* handshake = conns->WithLabels({"handshake"});
  common::Gauge* idle = conns->WithLabels({"idle"});
  common::Gauge* reading_head = conns->WithLabels({"reading_head"});
  common::Gauge* active = conns->WithLabels({"active"});
  common::Gauge* upgraded = conns->WithLabels({"upgraded"});
  common::Gauge* lingering = conns->WithLabels({"lingering"});
  common::Gauge* limit =
      metrics
          ->AddGauge("tunnel_http_connection_limit",
                     "Visitor connections allowed open at once "
                     "(--max-connections, within the open-file limit).")
          ->WithLabels({});
  common::Gauge* fibers =
      metrics
          ->AddGauge("tunnel_http_fibers",
                     "Request fibers that hold a stack: serving a request, "
                     "or pooled for the next one.")
          ->WithLabels({});
  const FrontServer* server = server_.get();
  metrics->AddCollectHook([=] {
    const ConnectionCounts c = server->counts();
    handshake->Set(c.handshake);
    idle->Set(c.idle);
    reading_head->Set(c.reading_head);
    active->Set(c.active);
    upgraded->Set(c.upgraded);
    lingering->Set(c.lingering);
    fibers->Set(c.fibers);
    limit->Set(server->max_connections());
  });
}

absl::StatusOr<int> FrontDoor::Listen(const std::string& host, int port) {
  if (!options_.tls.cert_pem.empty()) {
    absl::StatusOr<common::SslCtxPtr> ctx =
        common::NewServerContext(options_.tls);
    if (!ctx.ok()) return ctx.status();
    server_->EnableTls(*std::move(ctx));
  }
  return server_->Listen(host, port);
}

void FrontDoor::StopAccepting() { server_->StopAccepting(); }

void FrontDoor::SetDraining(absl::Duration retry_after) {
  handler_->SetDraining(retry_after);
}

void FrontDoor::Stop() { server_->Stop(); }

}  // namespace tunnel::httpfront
