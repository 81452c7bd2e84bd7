#include "agent/inspect_server.h"

#include <sys/socket.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "agent/inspect_page.h"
#include "common/log.h"
#include "common/socket_io.h"
#include "google/protobuf/util/json_util.h"
#include "httplib.h"

namespace tunnel::agent {
namespace {

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

void JsonError(httplib::Response& res, int status, absl::string_view code,
               absl::string_view message) {
  res.status = status;
  // Messages may quote what a request carried (a header name, protobuf's
  // parse error): escaped like every JSON string the project writes.
  res.set_content(absl::StrCat("{\"error\":\"", code, "\",\"message\":\"",
                               common::JsonEscape(message), "\"}\n"),
                  "application/json");
}

// The host part of a Host header ("[::1]:4040" -> "::1").
std::string HostOnly(absl::string_view host) {
  if (!host.empty() && host[0] == '[') {
    const size_t close = host.find(']');
    return std::string(host.substr(1, close == absl::string_view::npos
                                          ? absl::string_view::npos
                                          : close - 1));
  }
  return std::string(host.substr(0, host.rfind(':')));
}

}  // namespace

InspectServer::InspectServer(std::shared_ptr<Inspector> inspector,
                             std::vector<LocalTarget> targets,
                             ReplayTimeouts timeouts)
    : inspector_(std::move(inspector)),
      targets_(std::move(targets)),
      timeouts_(timeouts),
      server_(std::make_unique<httplib::Server>()) {
  // A few live views and the API calls beside them.
  server_->new_task_queue = [] {
    return new httplib::ThreadPool(kMaxLiveViews + 4);
  };
  server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server_->set_pre_routing_handler([this](const httplib::Request& req,
                                          httplib::Response& res) {
    if (!HostAllowed(req.get_header_value("Host"))) {
      JsonError(res, 403, "host_not_allowed",
                "the inspector answers requests for its own address only");
      return httplib::Server::HandlerResponse::Handled;
    }
    // A page of another site (a link, an image, a script's request) gets
    // nothing, not even a live view's slot.
    if (req.get_header_value("Sec-Fetch-Site") == "cross-site") {
      JsonError(res, 403, "cross_origin",
                "the inspector takes no requests from other sites' pages");
      return httplib::Server::HandlerResponse::Handled;
    }
    const std::string origin = req.get_header_value("Origin");
    if (req.method != "GET" && !origin.empty() &&
        absl::StripPrefix(origin, "http://") != req.get_header_value("Host")) {
      JsonError(res, 403, "cross_origin",
                "the inspector takes no requests from other sites' pages");
      return httplib::Server::HandlerResponse::Handled;
    }
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own refusals (a POST without Content-Length, an unknown
  // path) in the API's shape.
  server_->set_error_handler(
      [](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        if (res.status == 404) {
          JsonError(res, 404, "not_found",
                    absl::StrCat("no such page or API call: ", req.path));
        } else if (res.status == 400 && req.method == "POST") {
          JsonError(res, 400, "bad_request",
                    "a POST needs a body or Content-Length: 0 (curl -X POST "
                    "-d '' ...)");
        } else {
          JsonError(res, res.status, "bad_request", "the request is not valid");
        }
      });
  auto page = [](const char* type, const char* body) {
    return [type, body](const httplib::Request&, httplib::Response& res) {
      res.set_header("Content-Security-Policy", kInspectPageCsp);
      res.set_header("X-Frame-Options", "DENY");
      res.set_content(body, type);
    };
  };
  server_->Get("/", page("text/html; charset=utf-8", kInspectPageHtml));
  server_->Get("/inspect.js",
               page("text/javascript; charset=utf-8", kInspectPageJs));
  server_->Get("/inspect.css",
               page("text/css; charset=utf-8", kInspectPageCss));

  server_->Get(
      "/api/status", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(ToJson(inspector_->Status()), "application/json");
      });
  server_->Get("/api/requests", [this](const httplib::Request& req,
                                       httplib::Response& res) {
    Inspector::Filter f;
    f.status = req.get_param_value("status");
    f.method = req.get_param_value("method");
    f.path_contains = req.get_param_value("path");
    const std::string limit = req.get_param_value("limit");
    if (!limit.empty() && !absl::SimpleAtoi(limit, &f.limit)) {
      JsonError(res, 400, "bad_limit", "limit must be a number");
      return;
    }
    res.set_content(ToJson(inspector_->List(f)), "application/json");
  });
  server_->Get(R"(/api/requests/(\d+))", [this](const httplib::Request& req,
                                                httplib::Response& res) {
    uint64_t id = 0;
    (void)absl::SimpleAtoi(req.matches[1].str(), &id);
    std::optional<tunnel::v1::InspectedRequest> r = inspector_->Get(id);
    if (!r.has_value()) {
      JsonError(res, 404, "not_held",
                absl::StrCat("request ", id,
                             " is not held (the inspector keeps the last ",
                             inspector_->options().max_requests,
                             ": --inspect-max-requests)"));
      return;
    }
    res.set_content(ToJson(*r), "application/json");
  });
  server_->Post(
      R"(/api/requests/(\d+)/replay)",
      [this](const httplib::Request& req, httplib::Response& res) {
        uint64_t id = 0;
        (void)absl::SimpleAtoi(req.matches[1].str(), &id);
        std::optional<Inspector::Original> o = inspector_->GetOriginal(id);
        if (!o.has_value()) {
          JsonError(res, 404, "not_held",
                    absl::StrCat("request ", id, " is not held any more"));
          return;
        }
        tunnel::v1::ReplayRequest edits;
        if (!absl::StripAsciiWhitespace(req.body).empty()) {
          google::protobuf::util::JsonParseOptions po;
          if (auto s = google::protobuf::util::JsonStringToMessage(req.body,
                                                                   &edits, po);
              !s.ok()) {
            JsonError(res, 400, "bad_replay",
                      absl::StrCat("the replay's JSON is not a ReplayRequest: ",
                                   std::string(s.message())));
            return;
          }
        }
        if (absl::Status s = ApplyReplayEdits(edits, &*o); !s.ok()) {
          JsonError(res,
                    s.code() == absl::StatusCode::kInvalidArgument ? 400 : 409,
                    "cannot_replay", s.message());
          return;
        }
        const LocalTarget* target = TargetFor(*o);
        if (target == nullptr) {
          JsonError(res, 409, "cannot_replay",
                    absl::StrCat("this agent no longer serves tunnel \"",
                                 o->slug, "\""));
          return;
        }
        absl::StatusOr<uint64_t> replayed =
            Replay(*inspector_, *target, *o, id, timeouts_);
        if (!replayed.ok()) {
          JsonError(res, 500, "replay_failed", replayed.status().message());
          return;
        }
        std::optional<tunnel::v1::InspectedRequest> r =
            inspector_->Get(*replayed);
        if (!r.has_value()) {
          // Pushed out of the ring already by newer requests.
          r.emplace();
          r->set_id(*replayed);
          r->set_replay_of(id);
        }
        res.set_content(ToJson(*r), "application/json");
      });
  server_->Get("/api/events", [this](const httplib::Request& req,
                                     httplib::Response& res) {
    if (live_views_.fetch_add(1) >= kMaxLiveViews) {
      live_views_.fetch_sub(1);
      JsonError(res, 429, "too_many_live_views",
                absl::StrCat("at most ", kMaxLiveViews,
                             " live views at once; close one"));
      return;
    }
    uint64_t seq = inspector_->seq();
    const std::string after = req.get_param_value("after");
    if (!after.empty()) (void)absl::SimpleAtoi(after, &seq);
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, seq, last = absl::InfinitePast()](
            size_t, httplib::DataSink& sink) mutable {
          // At most ten batches a second, however busy the tunnel.
          const absl::Duration since = absl::Now() - last;
          if (since < absl::Milliseconds(100) &&
              inspector_->WaitForShutdown(absl::Milliseconds(100) - since)) {
            sink.done();
            return true;
          }
          std::vector<tunnel::v1::InspectedRequest> changed =
              inspector_->WaitForChanges(&seq, absl::Seconds(15));
          last = absl::Now();
          if (inspector_->WaitForShutdown(absl::ZeroDuration())) {
            sink.done();
            return true;
          }
          std::string out;
          for (const auto& r : changed) {
            absl::StrAppend(&out, "data: ", ToJson(r), "\n\n");
          }
          if (out.empty()) out = ": keep-alive\n\n";
          return sink.write(out.data(), out.size());
        },
        [this](bool) { live_views_.fetch_sub(1); });
  });
}

InspectServer::~InspectServer() { Stop(); }

bool InspectServer::HostAllowed(const std::string& host_header) const {
  const std::string host = HostOnly(host_header);
  if (common::IsLoopbackHost(host)) return true;
  // Listening on another address (the user chose so): IP addresses only. A
  // DNS name could be a site's own name rebound to this device.
  return !common::IsLoopbackHost(host_) && common::IsIpAddress(host);
}

const LocalTarget* InspectServer::TargetFor(
    const Inspector::Original& o) const {
  for (const LocalTarget& t : targets_) {
    if (t.name == o.target) return &t;
  }
  return nullptr;
}

absl::StatusOr<int> InspectServer::Listen(const std::string& host, int port) {
  const int bound = port == 0 ? server_->bind_to_any_port(host)
                              : (server_->bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for --inspect on ", host, ":", port,
                     " (address in use or not available)"));
  }
  host_ = host;
  port_ = bound;
  listener_ = std::thread([this] { server_->listen_after_bind(); });
  // stop() is a no-op until the loop runs: wait (bounded) for it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!server_->is_running() && absl::Now() < give_up) {
    std::this_thread::yield();
  }
  return bound;
}

std::string InspectServer::url() const {
  const bool v6 = host_.find(':') != std::string::npos;
  return absl::StrCat("http://", v6 ? "[" : "", host_, v6 ? "]" : "", ":",
                      port_, "/");
}

void InspectServer::Stop() {
  if (listener_.joinable()) inspector_->Shutdown();  // live views end
  server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace tunnel::agent
