#include "httpfront/translate.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "httpfront/front_server.h"

namespace tunnel::httpfront {
namespace {

using server::TunnelStream;

// Names httplib adds to the request itself; never forwarded.
constexpr absl::string_view kHttplibInternal[] = {"REMOTE_ADDR", "REMOTE_PORT",
                                                  "LOCAL_ADDR", "LOCAL_PORT"};

// Fields the setup hook parks under a name that cannot come off the wire (a
// ':' is never part of a field name in a head the connection layer let
// through), so a visitor cannot forge a parked name.
constexpr std::pair<absl::string_view, absl::string_view> kParked[] = {
    {"Accept-Encoding", ":Accept-Encoding"},
    {"Content-Encoding", ":Content-Encoding"}};
constexpr absl::string_view kParkedContentType = ":Content-Type";
// Parked by the connection layer before httplib parsed the head.
constexpr absl::string_view kParkedRange = "(Range)";

// A request waiting on the agent hears at once when its visitor's socket
// has news (FrontServer::WatchVisitor) and then checks that the visitor is
// still there, so an abandoned request is cancelled at the agent promptly.
// It also checks this often regardless, as a fallback.
constexpr absl::Duration kLivenessInterval = absl::Seconds(2);

void Park(httplib::Request& req, absl::string_view name,
          absl::string_view parked) {
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

// Runs `wait(until)`, a wait on the agent that fails DEADLINE_EXCEEDED at
// `until`, while listening for the visitor: an early end of a wait only
// means "look whether the visitor is still there". Returns what the wait
// returned once it is not DEADLINE_EXCEEDED, or DEADLINE_EXCEEDED at
// `deadline` or when the visitor left (the caller tells which by the time).
template <typename T, typename Wait>
absl::StatusOr<T> WaitWhileVisitorStays(Wait wait, absl::Time deadline) {
  while (true) {
    absl::StatusOr<T> r =
        wait(std::min(deadline, absl::Now() + kLivenessInterval));
    if (r.ok() || !absl::IsDeadlineExceeded(r.status()) ||
        absl::Now() >= deadline || !FrontServer::CurrentVisitorConnected()) {
      return r;
    }
  }
}

// The next body chunk before `deadline` (see WaitWhileVisitorStays).
absl::StatusOr<common::Chunk> ReadWhileVisitorStays(TunnelStream& stream,
                                                    absl::Time deadline) {
  return WaitWhileVisitorStays<common::Chunk>(
      [&](absl::Time until) { return stream.ReadBody(until); }, deadline);
}

// The provider behind a streamed response (see StreamResponseBody).
struct BodyPump {
  std::shared_ptr<TunnelStream> stream;
  // The connection's record; Pump runs on its fiber (inside httplib's
  // response writing, before the request-done hook).
  RequestRecord* record = nullptr;
  absl::Duration idle;
  // Response body bytes allowed, and sent so far.
  uint64_t max = UINT64_MAX;
  uint64_t sent = 0;
  common::Counter* too_large = nullptr;

  bool Pump(httplib::DataSink& sink, size_t length, bool chunked) {
    FrontServer::WatchVisitor watch;
    bool ok = PumpOnce(sink, length, chunked);
    if (!ok) record->cut = true;
    return ok;
  }

  // One provider call: delivers at least one chunk or fails. Returning
  // false makes httplib drop the connection without a final chunk, so a
  // cut-off body never looks complete.
  bool PumpOnce(httplib::DataSink& sink, size_t length, bool chunked) {
    const absl::Time deadline = absl::Now() + idle;
    while (true) {
      absl::StatusOr<common::Chunk> c =
          ReadWhileVisitorStays(*stream, deadline);
      if (!c.ok()) {
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
        // the end marker now so the stream ends cleanly at the agent. The
        // visitor has the whole body already and may have gone (which
        // aborts the stream): that is no cut.
        absl::StatusOr<common::Chunk> tail =
            ReadWhileVisitorStays(*stream, absl::Now() + idle);
        if (!tail.ok()) {
          stream->Cancel(tail.status().message());
          return true;
        }
        if (!tail->end || !tail->data.empty()) {
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

}  // namespace

void ParkRequestHeaders(httplib::Request& req) {
  for (const auto& [name, parked] : kParked) Park(req, name, parked);
  // httplib would parse a multipart/form-data upload itself (and fail: our
  // content reader takes raw bytes).
  if (absl::StartsWithIgnoreCase(req.get_header_value("Content-Type"),
                                 "multipart/")) {
    Park(req, "Content-Type", kParkedContentType);
  }
}

std::optional<absl::string_view> VisitorHeaderName(absl::string_view name) {
  for (absl::string_view n : kHttplibInternal) {
    if (name == n) return std::nullopt;
  }
  if (name == kParkedRange) return absl::string_view("Range");
  if (!name.empty() && name[0] == ':') return name.substr(1);
  return name;
}

bool HeadersAreSafe(const httplib::Request& req) {
  for (const auto& [name, value] : req.headers) {
    std::optional<absl::string_view> visible = VisitorHeaderName(name);
    if (!visible.has_value()) continue;
    if (!common::IsValidHeaderName(*visible) ||
        !common::IsValidHeaderValue(value)) {
      return false;
    }
  }
  return true;
}

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

bool HasStreamedBody(const httplib::Request& req) {
  uint64_t length = 0;
  return absl::EqualsIgnoreCase(req.get_header_value("Transfer-Encoding"),
                                "chunked") ||
         (absl::SimpleAtoi(req.get_header_value("Content-Length"), &length) &&
          length > 0);
}

tunnel::v1::TunnelRequest BuildRequestHead(const httplib::Request& req,
                                           const Route& route,
                                           const std::string& target,
                                           const RequestHeadOptions& o) {
  tunnel::v1::TunnelRequest head;
  head.set_request_id(o.request_id);
  head.set_tunnel_slug(route.slug);
  head.set_method(req.method);
  head.set_path(target);
  // The fields go packed (common/header_block.h): one string, not three
  // allocations a field. Session::OpenStream unpacks them for an agent that
  // reads no blocks.
  std::string* block = head.mutable_header_block();
  common::HopByHop hop;
  size_t room = 192 + o.cookie.size() + 3 * req.remote_addr.size() +
                o.request_id.size() + route.prefix.size();
  for (const auto& [stored, value] : req.headers) {
    hop.Note(stored, value);
    room += stored.size() + value.size() + 2;
  }
  block->reserve(room);
  std::string prior_xff;
  const std::string* host_field = nullptr;  // the first Host field
  for (const auto& [stored, value] : req.headers) {
    std::optional<absl::string_view> name = VisitorHeaderName(stored);
    if (!name.has_value()) continue;
    if (host_field == nullptr && common::NameIs(*name, "Host")) {
      host_field = &value;
    }
    if (o.gated && (common::NameIs(*name, "Cookie") ||
                    common::NameIs(*name, kAccessCodeHeader))) {
      continue;  // the Cookie header goes on without ours, below
    }
    if (o.strip_authorization && common::NameIs(*name, "Authorization")) {
      continue;
    }
    if (common::NameIs(*name, "X-Forwarded-For")) {
      prior_xff =
          prior_xff.empty() ? value : absl::StrCat(prior_xff, ", ", value);
    } else if (common::NameIs(*name, "Expect") ||
               common::NameIs(*name, "X-Forwarded-Proto") ||
               common::NameIs(*name, "X-Forwarded-Host") ||
               common::NameIs(*name, "X-Forwarded-Prefix") ||
               common::NameIs(*name, "X-Request-Id")) {
      // Expect: 100-continue was answered here. The X-Forwarded-* set
      // below describe this hop and replace what the visitor claimed; the
      // request id is ours (or the visitor's, if well-formed) and set below.
    } else if (!hop.Drops(*name)) {
      common::AppendField(block, *name, value);
    }
  }
  if (!o.cookie.empty() && !hop.Drops("Cookie")) {
    common::AppendField(block, "Cookie", o.cookie);
  }
  if (o.upgrade) {
    // The one hop-by-hop pair that must reach the service.
    common::AppendField(block, "Connection", "Upgrade");
    common::AppendField(block, "Upgrade", req.get_header_value("Upgrade"));
    head.set_upgrade(true);
  }
  const std::string& ip = req.remote_addr;
  const absl::string_view host =
      host_field != nullptr ? absl::string_view(*host_field) : "";
  common::AppendField(
      block, "X-Forwarded-For",
      prior_xff.empty() ? ip : absl::StrCat(prior_xff, ", ", ip));
  common::AppendField(block, "X-Forwarded-Proto", o.scheme);
  common::AppendField(block, "X-Forwarded-Host", host);
  const bool v6 = absl::StrContains(ip, ':');
  common::AppendField(block, "Forwarded",
                      absl::StrCat("for=", v6 ? "\"[" : "", ip, v6 ? "]\"" : "",
                                   ";host=\"", host, "\";proto=", o.scheme));
  if (!route.prefix.empty()) {
    common::AppendField(block, "X-Forwarded-Prefix", route.prefix);
  }
  common::AppendField(block, "X-Request-Id", o.request_id);
  head.set_end_stream(o.end_stream);
  return head;
}

int64_t CopyResponseHead(const tunnel::v1::TunnelResponse& resp,
                         const httplib::Request& req, bool drop_rate_limit,
                         httplib::Response& res, bool* has_content_type) {
  res.status = static_cast<int>(resp.status());
  *has_content_type = false;
  int64_t content_length = -1;
  common::ForEachField(resp, [&](absl::string_view name,
                                 absl::string_view value) {
    if (!common::IsValidHeaderName(name) ||
        !common::IsValidHeaderValue(value) || common::IsHopByHopHeader(name)) {
      return;  // never let an agent inject or smuggle header lines
    }
    if (common::NameIs(name, "Content-Length")) {
      if (!absl::SimpleAtoi(value, &content_length)) content_length = -1;
      if (req.method != "HEAD") return;  // httplib writes its own
    }
    if (drop_rate_limit && absl::StartsWithIgnoreCase(name, "X-RateLimit-")) {
      return;  // ours describe the gateway's limit
    }
    if (common::NameIs(name, "Content-Type")) *has_content_type = true;
    res.headers.emplace(std::string(name), std::string(value));
  });
  return content_length;
}

absl::StatusOr<tunnel::v1::TunnelResponse> AwaitResponseHead(
    TunnelStream& stream, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  FrontServer::WatchVisitor watch;
  absl::StatusOr<tunnel::v1::TunnelResponse> head =
      WaitWhileVisitorStays<tunnel::v1::TunnelResponse>(
          [&](absl::Time until) { return stream.AwaitResponseHead(until); },
          deadline);
  if (head.ok() || !absl::IsDeadlineExceeded(head.status())) return head;
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the agent sent no response within ", absl::FormatDuration(timeout)));
  }
  return absl::CancelledError("the visitor went away");
}

void StreamResponseBody(httplib::Response& res,
                        std::shared_ptr<TunnelStream> stream,
                        RequestRecord* record, int64_t content_length,
                        absl::Duration idle, uint64_t max,
                        common::Counter* too_large) {
  auto pump = std::make_shared<BodyPump>();
  pump->stream = std::move(stream);
  pump->record = record;
  pump->idle = idle;
  pump->max = max;
  pump->too_large = too_large;
  if (content_length >= 0) {
    res.content_length_ = static_cast<size_t>(content_length);
    res.content_provider_ = [pump](size_t, size_t length,
                                   httplib::DataSink& sink) {
      return pump->Pump(sink, length, /*chunked=*/false);
    };
    res.is_chunked_content_provider_ = false;
    if (content_length == 0) {
      res.content_provider_ = nullptr;
      res.set_header("Content-Length", "0");
    }
  } else {
    res.content_provider_ = [pump](size_t, size_t, httplib::DataSink& sink) {
      return pump->Pump(sink, 0, /*chunked=*/true);
    };
    res.is_chunked_content_provider_ = true;
  }
}

}  // namespace tunnel::httpfront
