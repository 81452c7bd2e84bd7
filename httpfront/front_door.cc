#include "httpfront/front_door.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cidr.h"
#include "common/random.h"
#include "httpfront/access_gate.h"
#include "httpfront/error_pages.h"
#include "httpfront/rate_limits.h"
#include "httpfront/request_limits.h"
#include "httpfront/request_log.h"
#include "httpfront/request_record.h"
#include "httpfront/routing.h"
#include "httpfront/translate.h"
#include "httpfront/upgrade_relay.h"

namespace tunnel::httpfront {
namespace {

using server::TunnelStream;

// The request record of the calling fiber's connection (see
// request_record.h): handlers and hooks run on the connection's fiber.
RequestRecord& Rec() { return *FrontServer::CurrentRecord(); }

// A request id a visitor (or a proxy in front of us) may hand us: bounded,
// and of characters that are safe in logs and headers.
bool WellFormedRequestId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
        !absl::StrContains("-_.:=+/@", c)) {
      return false;
    }
  }
  return true;
}

RequestLimitOptions LimitOptions(const FrontDoorOptions& o) {
  RequestLimitOptions l;
  l.tunnel_requests_per_minute = o.tunnel_requests_per_minute;
  l.tunnel_concurrent_requests = o.tunnel_concurrent_requests;
  l.max_request_body = o.max_request_body;
  l.max_response_body = o.max_response_body;
  l.clock = o.clock;
  l.shared = o.shared_tunnel_counts;
  return l;
}

AccessGateOptions GateOptions(const FrontDoorOptions& o) {
  AccessGateOptions g;
  g.cookie_ttl = o.access_cookie_ttl;
  g.attempts_per_minute = o.access_code_attempts_per_minute;
  g.scheme = o.scheme;
  g.cookie_key = o.access_cookie_key;
  g.basic_auth_cache_ttl = o.basic_auth_cache_ttl;
  g.basic_auth_cache_entries = o.basic_auth_cache_entries;
  return g;
}

}  // namespace

// Routes each visitor request and runs its exchange with the agent. Every
// method runs on the request's fiber (see front_server.h).
class FrontDoor::Handler {
 public:
  Handler(const FrontDoorOptions& options, server::TunnelRouter* router,
          common::MetricsRegistry* metrics)
      : options_(options),
        router_(router),
        log_(metrics),
        limits_(LimitOptions(options), &log_),
        gate_(GateOptions(options), &log_.metrics()) {
    if (options.relay != nullptr) {
      relay_ = std::make_unique<RelayFront>(options.relay_options,
                                            options.relay, metrics);
    }
  }

  RequestLog& log() { return log_; }

  // Setup hook: runs on the parsed request before routing.
  static void Prepare(httplib::Request& req) {
    RequestRecord& r = Rec();
    RequestLog::Start(r, req);
    // Every answer carries an X-Request-Id, the access log line the same.
    // A well-formed one from the visitor (or a proxy before us) is kept.
    const std::string incoming = req.get_header_value("X-Request-Id");
    if (WellFormedRequestId(incoming)) {
      r.request_id = incoming;
    } else {
      r.request_id = common::NewUuid();
      if (!incoming.empty()) {
        r.incoming_request_id = incoming.substr(0, 128);
      }
    }
    ParkRequestHeaders(req);
  }

  // httplib's logger: runs after it wrote a response (ours or its own).
  static void Logged(const httplib::Request& req,
                     const httplib::Response& res) {
    RequestLog::Logged(Rec(), req, res);
  }

  // FrontServer's request-done hook: gives back the request's place at the
  // tunnel limits, counts the request and logs it.
  void Done() {
    RequestRecord& r = Rec();
    if (r.slot != nullptr) {
      limits_.Release(r.slot);
      r.slot = nullptr;
    }
    log_.Finish(r);
  }

  // Runs after the handler, as httplib writes the head: the last word on
  // the headers of every answer.
  static void Finalize(const httplib::Request&, httplib::Response& res) {
    RequestRecord& r = Rec();
    if (!r.request_id.empty() && !res.has_header("X-Request-Id")) {
      res.set_header("X-Request-Id", r.request_id);
    }
    // httplib gives a body without Content-Type "text/plain"; a proxy must
    // not invent one the service did not send.
    if (r.no_content_type) res.headers.erase("Content-Type");
    // One "Connection: close" when the connection ends, and no Keep-Alive
    // (httplib adds its own next to ours).
    bool closing = false;
    auto range = res.headers.equal_range("Connection");
    for (auto it = range.first; it != range.second; ++it) {
      if (absl::EqualsIgnoreCase(it->second, "close")) closing = true;
    }
    if (closing) {
      res.headers.erase("Connection");
      res.headers.erase("Keep-Alive");
      res.set_header("Connection", "close");
    }
  }

  // Before httplib answers "Expect: 100-continue": a body the gateway would
  // refuse is refused now, before the visitor sends it.
  int ExpectContinue(const httplib::Request& req, httplib::Response& res) {
    if (limits_.RequestBodyTooLarge(req)) {
      limits_.RequestTooLarge(req, res, /*unread_body=*/true);
      return res.status;
    }
    return 100;
  }

  // FrontServer's hook for connections refused at accept.
  void ConnectionRefused(ConnectionRefusal why) {
    switch (why) {
      case ConnectionRefusal::kMaxConnections:
        return log_.Reject(kMaxConnections);
      case ConnectionRefusal::kIpRate:
        return log_.Reject(kClientConnectionRate);
      case ConnectionRefusal::kIpConcurrency:
        return log_.Reject(kClientConnections);
    }
  }

  void SetDraining(absl::Duration retry_after) {
    drain_retry_after_s_ =
        std::max<int64_t>(1, absl::ToInt64Seconds(retry_after));
  }
  void SetPublicPort(int port) { public_port_ = port; }

  void Handle(const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader* reader) {
    if (int64_t retry = drain_retry_after_s_.load(); retry > 0) {
      SetError(req, res, 503, "gateway_draining",
               "the gateway is restarting; try again shortly");
      res.set_header("Retry-After", absl::StrCat(retry));
      RequestLimits::CloseAfterResponse(res);
      return;
    }
    if (!HeadersAreSafe(req)) {
      SetError(req, res, 400, "bad_request",
               "a header field holds CR, LF or NUL");
      RequestLimits::CloseAfterResponse(res);
      return;
    }
    std::optional<Route> route =
        ResolveRoute(req.get_header_value("Host"), req.target, options_.domain);
    // The encrypted relay lives on the gateway's own host (a tunnel's
    // subdomain keeps /relay/ for its service).
    if (!route.has_value() && relay_ != nullptr &&
        RelayFront::IsRelayPath(RelayFront::PathOf(req.target))) {
      // Its per-IP limits see the visitor behind a trusted proxy too.
      relay_->Handle(req, res, VisitorAddressText(req));
      return;
    }
    if (!route.has_value()) {
      const int port = public_port_.load(std::memory_order_relaxed);
      const std::string at =
          port > 0 ? absl::StrCat(options_.domain, ":", port) : options_.domain;
      SetError(
          req, res, 404, "tunnel_not_found",
          absl::StrCat("no tunnel here: use ", options_.scheme, "://<name>.",
                       at, "/ or ", options_.scheme, "://", at, "/t/<name>/"));
      return;
    }
    RequestRecord& record = Rec();
    record.slug = route->slug;
    // "/t/<slug>" without its slash: relative links on the page would leave
    // the tunnel. Browsers follow a 308 and keep the method.
    if (route->missing_slash && (req.method == "GET" || req.method == "HEAD")) {
      absl::string_view query = absl::string_view(route->target).substr(1);
      res.status = 308;
      res.set_header("Location", absl::StrCat(route->prefix, "/", query));
      res.set_header("Cache-Control", "no-store");
      return;
    }

    // IP rules come first: a refused address learns nothing more (not even
    // whether the tunnel has basic auth or an access code). Then basic
    // auth, then the access code; a tunnel may have both.
    const server::VisitorPolicy policy = router_->PolicyFor(route->slug);
    if (!policy.empty()) record.tunnel = route->slug;  // hence known
    if (policy.ip_rules != nullptr) {
      const std::optional<common::IpAddress> visitor = VisitorAddress(req);
      if (!visitor.has_value() || !policy.ip_rules->Allows(*visitor)) {
        log_.metrics().ip_denials->WithLabels({route->slug})->Increment();
        SetError(req, res, 403, "ip_not_allowed",
                 absl::StrCat("your address (", VisitorAddressText(req),
                              ") may not reach this tunnel"));
        return;
      }
    }
    std::string target = route->target;
    RequestHeadOptions head_options;
    head_options.scheme = options_.scheme;
    head_options.request_id = record.request_id;
    if (policy.basic_auth != nullptr) {
      if (!gate_.AdmitBasicAuth(req, res, *route, *policy.basic_auth)) {
        return;
      }
      head_options.strip_authorization = true;  // it was ours, not theirs
    }
    // A tunnel with an access code: only visitors with a valid cookie (or
    // the code itself) pass; ours never reach the service (`code` query
    // parameter, the access cookie, X-Tunnel-Access-Code).
    if (policy.access_code != nullptr) {
      head_options.gated = true;
      if (!gate_.Admit(req, res, *route, *policy.access_code, reader, &target,
                       &head_options.cookie, &record.body_read)) {
        return;
      }
    }

    // Is there a request body to stream? httplib has already read it into
    // req.body for methods it serves without a content reader.
    const bool streamed_body = reader != nullptr && HasStreamedBody(req);
    if (limits_.RequestBodyTooLarge(req)) {
      limits_.RequestTooLarge(req, res, streamed_body);
      return;
    }
    RateLimiter::Decision limit;
    if (limits_.tunnel_limits_on()) {
      limit = limits_.Acquire(route->slug);
      if (limit.slot == nullptr) {
        // Only a slug the router confirmed becomes a label value.
        if (limit.confirmed) record.tunnel = route->slug;
        limits_.TunnelLimited(req, res, limit, streamed_body);
        return;
      }
      record.slot = limit.slot;
    }

    head_options.upgrade = IsUpgradeRequest(req);
    // An upgrade keeps the visitor's direction open for the raw bytes that
    // follow a 101.
    head_options.end_stream =
        !head_options.upgrade && !streamed_body && req.body.empty();
    absl::StatusOr<std::unique_ptr<TunnelStream>> opened = router_->Open(
        route->slug, BuildRequestHead(req, *route, target, head_options));
    if (limit.slot != nullptr) {
      if (!opened.ok() && absl::IsNotFound(opened.status())) {
        // No such tunnel: the request never happened for the limiter.
        limits_.Release(limit.slot, /*counted=*/false);
        record.slot = nullptr;
      } else {
        RateLimiter::MarkConfirmed(limit.slot);
        RequestLimits::SetRateLimitHeaders(res, limit);
      }
    }
    // Only a tunnel the router knows becomes a label value.
    if (opened.ok() || !absl::IsNotFound(opened.status())) {
      record.tunnel = route->slug;
    }
    if (!opened.ok()) {
      SetStreamError(req, res, opened.status(), options_.offline_retry_after);
      return;
    }
    std::shared_ptr<TunnelStream> stream = std::move(*opened);
    log_.BodyCounters(record.tunnel, &record.bytes_in, &record.bytes_out);

    if (!Upload(req, res, reader, streamed_body, *stream, record)) return;

    absl::StatusOr<tunnel::v1::TunnelResponse> head_or =
        AwaitResponseHead(*stream, options_.response_timeout);
    if (!head_or.ok() && absl::IsFailedPrecondition(head_or.status()) &&
        !streamed_body) {
      // The member's service refused the connection: nothing reached it,
      // and the visitor's body (if any) is still here. Once, on another
      // pool member.
      absl::StatusOr<std::unique_ptr<TunnelStream>> again = router_->Open(
          route->slug, BuildRequestHead(req, *route, target, head_options),
          stream->owner());
      if (again.ok()) {
        stream->Cancel(head_or.status().message());
        stream = std::move(*again);
        log_.metrics().retries->Increment();
        if (!Upload(req, res, reader, streamed_body, *stream, record)) return;
        head_or = AwaitResponseHead(*stream, options_.response_timeout);
      }
    }
    if (!head_or.ok()) {
      stream->Cancel(head_or.status().message());
      SetStreamError(req, res, head_or.status(), options_.offline_retry_after);
      return;
    }
    tunnel::v1::TunnelResponse& resp = *head_or;
    if (resp.status() < 100 || resp.status() > 599) {
      stream->Cancel("invalid status");
      SetError(req, res, 502, "agent_error",
               absl::StrCat("the agent sent invalid status ", resp.status()));
      return;
    }
    if (head_options.upgrade && resp.status() == 101) {
      record.status = 101;
      UpgradeOptions u;
      u.idle_timeout = options_.upgrade_idle_timeout;
      u.write_timeout = options_.connection.write_timeout;
      u.request_id = record.request_id;
      RelayUpgrade(*stream, resp, &record, u);
      return;
    }
    bool has_content_type = false;
    const int64_t content_length = CopyResponseHead(
        resp, req, /*drop_rate_limit=*/limit.limit > 0, res, &has_content_type);
    record.no_content_type = !has_content_type;
    const uint64_t max_out = limits_.max_response_body();
    if (req.method != "HEAD" && content_length >= 0 &&
        static_cast<uint64_t>(content_length) > max_out) {
      record.no_content_type = false;
      limits_.ResponseTooLarge(req, res, *stream, limit);
      return;
    }

    if (req.method == "HEAD" || resp.end_stream()) {
      // Whole body (if any) already arrived with the head.
      if (resp.end_stream() && req.method != "HEAD") {
        absl::StatusOr<common::Chunk> c =
            stream->ReadBody(absl::Now() + options_.body_idle_timeout);
        if (c.ok() && c->data.size() > max_out) {
          record.no_content_type = false;
          limits_.ResponseTooLarge(req, res, *stream, limit);
          return;
        }
        if (c.ok()) {
          record.AddOut(c->data.size());
          res.body = std::move(c->data);
          if (!res.body.empty()) FrontServer::CoalesceResponseHead();
        }
      }
      return;
    }
    // Streamed body: each chunk goes to the visitor as it arrives.
    StreamResponseBody(res, std::move(stream), &record, content_length,
                       options_.body_idle_timeout, max_out,
                       limits_.response_too_large());
  }

 private:
  // The visitor's address as the IP rules see it: the socket's, or, from a
  // trusted proxy, the rightmost X-Forwarded-For entry that is not a
  // trusted proxy itself. Nullopt when an address does not parse (then no
  // rule can admit it).
  std::optional<common::IpAddress> VisitorAddress(
      const httplib::Request& req) const {
    absl::StatusOr<common::IpAddress> socket =
        common::ParseIpAddress(req.remote_addr);
    if (!socket.ok()) return std::nullopt;
    if (!Trusted(*socket)) return *socket;
    std::vector<std::string> hops;
    for (size_t i = 0, n = req.get_header_value_count("X-Forwarded-For"); i < n;
         ++i) {
      for (absl::string_view hop :
           absl::StrSplit(req.get_header_value("X-Forwarded-For", i), ',')) {
        hops.emplace_back(absl::StripAsciiWhitespace(hop));
      }
    }
    common::IpAddress visitor = *socket;
    for (auto it = hops.rbegin(); it != hops.rend(); ++it) {
      absl::StatusOr<common::IpAddress> hop = common::ParseIpAddress(*it);
      if (!hop.ok()) return std::nullopt;  // forged or garbled: refuse
      visitor = *hop;
      if (!Trusted(visitor)) break;
    }
    return visitor;
  }
  std::string VisitorAddressText(const httplib::Request& req) const {
    std::optional<common::IpAddress> a = VisitorAddress(req);
    return a.has_value() ? common::FormatIpAddress(*a) : "unknown";
  }
  bool Trusted(const common::IpAddress& a) const {
    for (const common::Cidr& c : options_.trusted_proxies) {
      if (c.Contains(a)) return true;
    }
    return false;
  }

  // Sends the request body to the agent against its credit: a streamed one
  // as it arrives from the visitor, one httplib read whole at once. False:
  // `res` holds the answer (the stream is cancelled).
  bool Upload(const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader* reader, bool streamed_body,
              TunnelStream& stream, RequestRecord& record) {
    absl::Status upload;
    if (streamed_body) {
      const uint64_t max_in = limits_.max_request_body();
      uint64_t sent = 0;
      bool too_large = false;
      bool read_ok = (*reader)([&](const char* data, size_t len) {
        if (len > max_in - sent) {  // the service never gets the excess
          too_large = true;
          return false;
        }
        sent += len;
        upload = stream.SendBody(absl::string_view(data, len),
                                 absl::Now() + options_.body_idle_timeout);
        if (upload.ok()) record.AddIn(len);
        return upload.ok();
      });
      record.body_read = read_ok;
      if (too_large) {
        stream.Cancel("the request body is over the gateway's limit");
        limits_.RequestTooLarge(req, res, /*unread_body=*/true);
        return false;
      }
      if (upload.ok() && !read_ok) {
        // The visitor's body broke off: the agent must not see it as whole.
        stream.Cancel("the visitor's request body was cut off");
        record.error = "request_cut";
        res.status = 400;
        return false;
      }
      if (upload.ok()) upload = stream.FinishBody();
    } else if (!req.body.empty()) {
      upload =
          stream.SendBody(req.body, absl::Now() + options_.body_idle_timeout);
      if (upload.ok()) {
        record.AddIn(req.body.size());
        upload = stream.FinishBody();
      }
    }
    if (!upload.ok()) {
      stream.Cancel(upload.message());
      SetStreamError(req, res, upload, options_.offline_retry_after);
      return false;
    }
    return true;
  }

  const FrontDoorOptions& options_;
  server::TunnelRouter* const router_;
  RequestLog log_;
  RequestLimits limits_;
  AccessGate gate_;
  std::unique_ptr<RelayFront> relay_;  // null without a relay
  // > 0 while draining: the Retry-After to send, in seconds.
  std::atomic<int64_t> drain_retry_after_s_{0};
  std::atomic<int> public_port_{0};
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
  server_->set_post_routing_handler(&Handler::Finalize);
  Handler* h = handler_.get();
  server_->set_expect_100_continue_handler(
      [h](const httplib::Request& req, httplib::Response& res) {
        return h->ExpectContinue(req, res);
      });
  server_->set_request_done([h] { h->Done(); });
  server_->set_connection_refused(
      [h](ConnectionRefusal why) { h->ConnectionRefused(why); });
  server_->set_head_rejected([h](int status, absl::string_view code,
                                 const std::string& remote,
                                 const std::string& request_id) {
    h->log().HeadRejected(status, code, remote, request_id);
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
      RequestLimits::CloseAfterResponse(res);
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
  common::CounterFamily* wakeups = metrics->AddCounter(
      "tunnel_http_loop_wakeups_total",
      "Wake-ups of request fibers by other threads (an agent's message "
      "arrived), and the eventfd writes that delivered them: one per batch.",
      {"kind"});
  common::Counter* remote = wakeups->WithLabels({"fiber"});
  common::Counter* eventfd = wakeups->WithLabels({"eventfd_write"});
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
    // The loops count on their own; bring the counters up to date.
    remote->Increment(c.remote_wakeups - remote->value());
    eventfd->Increment(c.eventfd_writes - eventfd->value());
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

void FrontDoor::SetPublicPort(int port) { handler_->SetPublicPort(port); }

void FrontDoor::RunDetached(std::function<void()> fn,
                            std::function<void()> refused) {
  server_->RunDetached(std::move(fn), std::move(refused));
}

void FrontDoor::Stop() { server_->Stop(); }

}  // namespace tunnel::httpfront
