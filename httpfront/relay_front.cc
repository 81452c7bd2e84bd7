#include "httpfront/relay_front.h"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/fiber_wait.h"
#include "common/log.h"
#include "common/relay_protocol.h"
#include "httpfront/front_server.h"
#include "httpfront/relay_client/relay_assets.h"

namespace tunnel::httpfront {
namespace {

namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
namespace http = boost::beast::http;

// How long a refused browser has to answer the closing handshake.
constexpr absl::Duration kCloseWait = absl::Seconds(2);
// IPs remembered for the per-IP limits at most; beyond, new IPs are refused
// until a minute passes (the table is swept every minute).
constexpr size_t kMaxTrackedIps = 100000;

constexpr absl::string_view kPageCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; frame-src 'self'; "
    "child-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'";

// Waits on the calling fiber (or thread) until `deadline`; false when the
// wait keeps ending early (the front door is stopping). A single early end
// (an interrupt meant for another wait) is waited out.
bool SleepUntil(absl::Time deadline) {
  absl::Mutex mu;
  common::FiberWaitList waiters;
  absl::MutexLock lock(&mu);
  auto never = [] { return false; };
  for (int tries = 0; absl::Now() < deadline; ++tries) {
    if (tries == 3) return false;
    common::AwaitWithDeadline(mu, absl::Condition(&never), deadline, waiters);
  }
  return true;
}

// A Beast synchronous stream over the front door's fiber connection: reads
// and writes yield to the loop. Each write_some writes its whole buffer
// sequence before another may start, so the two fibers of one WebSocket
// (the reader answering a ping or a close, the writer sending a message)
// never interleave inside a frame.
class FiberSocket {
 public:
  using executor_type = boost::asio::io_context::executor_type;

  FiberSocket(Connection* conn, std::string buffered,
              absl::Duration read_timeout, absl::Duration write_timeout)
      : conn_(conn),
        buffered_(std::move(buffered)),
        read_timeout_(read_timeout),
        write_timeout_(write_timeout) {}

  // Beast names an executor for its timers; the synchronous operations
  // used here never run it.
  executor_type get_executor() {
    static boost::asio::io_context* unused = new boost::asio::io_context();
    return unused->get_executor();
  }

  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers,
                   boost::system::error_code& ec) {
    ec = {};
    auto it = boost::asio::buffer_sequence_begin(buffers);
    auto end = boost::asio::buffer_sequence_end(buffers);
    for (; it != end; ++it) {
      boost::asio::mutable_buffer b = *it;
      if (b.size() == 0) continue;
      if (!buffered_.empty()) {
        const size_t n = std::min(b.size(), buffered_.size());
        std::memcpy(b.data(), buffered_.data(), n);
        buffered_.erase(0, n);
        return n;
      }
      const ssize_t n =
          conn_->Read(static_cast<char*>(b.data()), b.size(), read_timeout_);
      if (n == 0) {
        ec = boost::asio::error::eof;
        return 0;
      }
      if (n < 0) {
        ec = boost::asio::error::timed_out;
        return 0;
      }
      return static_cast<size_t>(n);
    }
    return 0;
  }
  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers) {
    boost::system::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  template <class ConstBufferSequence>
  size_t write_some(const ConstBufferSequence& buffers,
                    boost::system::error_code& ec) {
    ec = {};
    std::string out;
    out.reserve(boost::asio::buffer_size(buffers));
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::const_buffer b = *it;
      out.append(static_cast<const char*>(b.data()), b.size());
    }
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !writing_; };
    if (!common::AwaitWithDeadline(mu_, absl::Condition(&idle),
                                   absl::Now() + write_timeout_, waiters_)) {
      ec = boost::asio::error::timed_out;
      return 0;
    }
    writing_ = true;
    mu_.Unlock();
    const bool ok = conn_->WriteAll(out, write_timeout_);
    mu_.Lock();
    writing_ = false;
    waiters_.WakeAll();
    if (!ok) {
      ec = boost::asio::error::broken_pipe;
      return 0;
    }
    return out.size();
  }
  template <class ConstBufferSequence>
  size_t write_some(const ConstBufferSequence& buffers) {
    boost::system::error_code ec;
    const size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  Connection* conn() const { return conn_; }
  // A refusal's closing handshake waits this long for the browser's close,
  // not the whole idle timeout.
  void set_read_timeout(absl::Duration t) { read_timeout_ = t; }

 private:
  Connection* const conn_;
  std::string buffered_;  // read past the request head
  absl::Duration read_timeout_;
  const absl::Duration write_timeout_;
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  common::FiberWaitList waiters_ ABSL_GUARDED_BY(mu_);
};

// Beast's closing handshake ends with this (sync form): the front server
// closes the socket when the handler returns.
void teardown(beast::role_type, FiberSocket& s, boost::system::error_code& ec) {
  ec = {};
  s.conn()->ShutdownWrite();
}

// A rate as a token bucket holding one second's worth.
struct Bucket {
  bool started = false;  // full until first used
  double tokens = 0;     // below zero: owed, to be waited for
  absl::Time last;

  // Takes `n`; returns how long the caller must wait first (zero: none).
  absl::Duration Take(double n, double rate, absl::Time now) {
    if (rate <= 0) return absl::ZeroDuration();
    if (!started) {
      started = true;
      tokens = rate;
      last = now;
    }
    tokens = std::min(rate, tokens + rate * absl::ToDoubleSeconds(now - last));
    last = now;
    tokens -= n;
    if (tokens >= 0) return absl::ZeroDuration();
    return absl::Seconds(-tokens / rate);
  }
};

struct IpState {
  int64_t open = 0;
  int64_t minute = -1;  // the minute `started` counts
  int64_t started = 0;
  Bucket frames;
  Bucket bytes;
};

std::string ErrorJson(absl::string_view code, absl::string_view message) {
  return absl::StrCat(R"({"type":"ERROR","code":")", common::JsonEscape(code),
                      R"(","message":")", common::JsonEscape(message), R"("})");
}

// The ERROR message before a connection ends without a closing handshake:
// the close code it stands for goes in it.
std::string KickJson(int code, absl::string_view error,
                     absl::string_view message) {
  std::string json = ErrorJson(error, message);
  json.insert(json.size() - 1, absl::StrCat(R"(,"close":)", code));
  return json;
}

}  // namespace

class RelayFront::Impl {
 public:
  Impl(RelayFrontOptions options, server::RelayRouter* router,
       common::MetricsRegistry* metrics)
      : options_(options), router_(router) {
    auto* frames = metrics->AddCounter(
        "tunnel_relay_frames_total",
        "Encrypted relay frames passed on, by direction (to_agent: from "
        "browsers; to_browser: from agents).",
        {"direction"});
    auto* bytes = metrics->AddCounter("tunnel_relay_bytes_total",
                                      "Encrypted relay frame bytes passed "
                                      "on, by direction.",
                                      {"direction"});
    frames_in_ = frames->WithLabels({"to_agent"});
    frames_out_ = frames->WithLabels({"to_browser"});
    bytes_in_ = bytes->WithLabels({"to_agent"});
    bytes_out_ = bytes->WithLabels({"to_browser"});
    refusals_ = metrics->AddCounter(
        "tunnel_relay_refusals_total",
        "Relay WebSocket connections refused or closed by a limit, by "
        "reason: unknown_session, clients_per_session, ip_connections, "
        "ip_rate, capacity, frame_too_big, slow_client (the browser did not "
        "read), host_not_reading (the device did not), bad_request.",
        {"reason"});
    throttled_ = metrics->AddCounter(
        "tunnel_relay_throttled_total",
        "Times reading from a browser paused for a rate limit, by limit: "
        "conn_frames, conn_bytes, ip_frames, ip_bytes.",
        {"limit"});
    auto* dropped = metrics->AddCounter(
        "tunnel_relay_dropped_frames_total",
        "Relay frames dropped, by reason: no_host (from a browser while the "
        "device was away), browser_gone (from a device for a browser that "
        "had left).",
        {"reason"});
    dropped_no_host_ = dropped->WithLabels({"no_host"});
    common::Counter* browser_gone = dropped->WithLabels({"browser_gone"});
    auto* sessions =
        metrics
            ->AddGauge("tunnel_relay_sessions",
                       "Encrypted shares hosted by connected agents.")
            ->WithLabels({});
    auto* clients = metrics
                        ->AddGauge("tunnel_relay_clients",
                                   "Browsers connected to encrypted shares.")
                        ->WithLabels({});
    auto last = std::make_shared<std::pair<absl::Mutex, uint64_t>>();
    metrics->AddCollectHook([sessions, clients, browser_gone, router, last] {
      const server::RelayCounts c = router->counts();
      sessions->Set(c.sessions);
      clients->Set(c.clients);
      // The hub counts these itself (it has no registry): the counter
      // follows it by what is new since the last scrape.
      absl::MutexLock lock(&last->first);
      const uint64_t d = router->dropped();
      if (d > last->second) browser_gone->Increment(d - last->second);
      last->second = d;
    });
  }

  void Handle(const httplib::Request& req, httplib::Response& res,
              const std::string& visitor) {
    const std::string path(PathOf(req.target));
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "no-referrer");
    if (path == "/relay") {
      res.status = 308;
      res.set_header("Location", "/relay/");
      return;
    }
    if (path == "/relay/ws") {
      ServeWebSocket(req, res, visitor);
      return;
    }
    if (req.method != "GET" && req.method != "HEAD") {
      res.status = 405;
      res.set_header("Allow", "GET, HEAD");
      res.set_content("the relay's page takes GET only\n", "text/plain");
      return;
    }
    if (path == "/relay/" || path == "/relay/index.html") {
      res.set_header("Content-Security-Policy", std::string(kPageCsp));
      res.set_header("Cache-Control", "no-store");
      res.set_header("Cross-Origin-Opener-Policy", "same-origin");
      res.set_content(page_, "text/html; charset=utf-8");
      return;
    }
    if (path == "/relay/relay.js") {
      Asset(res, RelayJs(), "text/javascript; charset=utf-8");
      return;
    }
    if (path == "/relay/sw.js") {
      res.set_header("Service-Worker-Allowed", "/relay/");
      Asset(res, RelaySwJs(), "text/javascript; charset=utf-8");
      return;
    }
    if (path == "/relay/relay.css") {
      Asset(res, RelayCss(), "text/css; charset=utf-8");
      return;
    }
    if (absl::StartsWith(path, "/relay/app")) {
      // The share's pages come from the page's Service Worker, never from
      // here: reaching the gateway means the worker is not running (the
      // share's page was closed, or the browser has no Service Workers).
      res.status = 503;
      res.set_header("Cache-Control", "no-store");
      res.set_content(
          "This address shows a device's share through your browser's "
          "encrypted relay page, which is not running. Open the share's "
          "link (with its #session=…&key=… part) again.\n",
          "text/plain; charset=utf-8");
      return;
    }
    res.status = 404;
    res.set_content("no such file in the relay's page\n", "text/plain");
  }

 private:
  class Client;

  static void Asset(httplib::Response& res, absl::string_view body,
                    const char* type) {
    res.set_header("Cache-Control", "no-cache");
    res.set_content(std::string(body), type);
  }

  // Per-IP admission: false (and why) when over a limit. Counts the
  // connection as open on success.
  bool Admit(const std::string& ip, std::string* why, std::string* reason) {
    const absl::Time now = options_.clock();
    const int64_t minute = absl::ToUnixSeconds(now) / 60;
    absl::MutexLock lock(&mu_);
    if (minute != swept_minute_) {
      // Addresses with nothing open and no count for this minute are
      // forgotten once a minute.
      swept_minute_ = minute;
      absl::erase_if(ips_, [minute](const auto& e) {
        return e.second.open <= 0 && e.second.minute != minute;
      });
    }
    if (ips_.size() >= kMaxTrackedIps && !ips_.contains(ip)) {
      *reason = "capacity";
      *why =
          "the gateway is tracking too many addresses; try again in a "
          "minute";
      return false;
    }
    IpState& s = ips_[ip];
    if (s.minute != minute) {
      s.minute = minute;
      s.started = 0;
    }
    if (options_.max_connections_per_ip > 0 &&
        s.open >= options_.max_connections_per_ip) {
      *reason = "ip_connections";
      *why = absl::StrCat("your address has ", s.open,
                          " relay connections open, the limit "
                          "(--relay-max-connections-per-ip)");
      return false;
    }
    if (options_.connections_per_ip_per_minute > 0 &&
        s.started >= options_.connections_per_ip_per_minute) {
      *reason = "ip_rate";
      *why = absl::StrCat("your address opened ", s.started,
                          " relay connections this minute, the limit "
                          "(--relay-connections-per-ip-per-minute); wait a "
                          "minute");
      return false;
    }
    ++s.open;
    ++s.started;
    return true;
  }
  void Release(const std::string& ip) {
    absl::MutexLock lock(&mu_);
    auto it = ips_.find(ip);
    if (it != ips_.end()) --it->second.open;
  }
  // Waits as long as the IP's rates ask for `bytes` more.
  absl::Duration IpWait(const std::string& ip, size_t bytes, absl::Time now) {
    absl::MutexLock lock(&mu_);
    IpState& s = ips_[ip];
    const absl::Duration f =
        s.frames.Take(1, options_.ip_frames_per_second, now);
    const absl::Duration b = s.bytes.Take(static_cast<double>(bytes),
                                          options_.ip_bytes_per_second, now);
    if (f > absl::ZeroDuration())
      throttled_->WithLabels({"ip_frames"})->Increment();
    if (b > absl::ZeroDuration())
      throttled_->WithLabels({"ip_bytes"})->Increment();
    return std::max(f, b);
  }

  void ServeWebSocket(const httplib::Request& req, httplib::Response& res,
                      const std::string& ip);

  const RelayFrontOptions options_;
  server::RelayRouter* const router_;
  const std::string page_ = RelayIndexPage();
  common::Counter* frames_in_;
  common::Counter* frames_out_;
  common::Counter* bytes_in_;
  common::Counter* bytes_out_;
  common::CounterFamily* refusals_;
  common::Counter* dropped_no_host_;
  common::CounterFamily* throttled_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, IpState> ips_ ABSL_GUARDED_BY(mu_);
  int64_t swept_minute_ ABSL_GUARDED_BY(mu_) = -1;
};

// One browser's WebSocket as the hub sees it: what waits to be written to
// it. The writer fiber takes from here.
class RelayFront::Impl::Client : public server::RelayClient {
 public:
  struct Item {
    enum Kind { kBinary, kText, kKick } kind;
    std::string data;
  };

  explicit Client(size_t max_bytes) : max_bytes_(max_bytes) {}

  void Deliver(std::string frame) override {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    if (bytes_ + frame.size() > max_bytes_) {
      // The browser does not read what its own credit asked for: it is
      // stuck (or hostile). Nothing more is queued for it.
      slow_ = true;
      PushLocked({Item::kKick, KickJson(4408, "slow_client",
                                        "this browser did not read its "
                                        "frames in time")});
      return;
    }
    bytes_ += frame.size();
    PushLocked({Item::kBinary, std::move(frame)});
  }
  void Status(absl::string_view status) override {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    PushLocked({Item::kText, absl::StrCat(R"({"type":"STATUS","status":")",
                                          status, R"("})")});
  }
  void Kick(int code, absl::string_view error,
            absl::string_view message) override {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    PushLocked({Item::kKick, KickJson(code, error, message)});
  }

  // Writer fiber: the next item, or nullopt once closed or at `deadline`
  // (`*timed_out` then says which).
  bool Next(Item* out, absl::Time deadline, bool* timed_out) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !items_.empty() || closed_;
    };
    *timed_out = !common::AwaitWithDeadline(mu_, absl::Condition(&ready),
                                            deadline, waiters_);
    if (items_.empty()) return false;
    *out = std::move(items_.front());
    items_.pop_front();
    if (out->kind == Item::kBinary) bytes_ -= out->data.size();
    return true;
  }
  // Reader fiber: the connection is over; the writer stops (after writing
  // a kick's message, if one is queued).
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    if (!kick_queued_) items_.clear();
    waiters_.WakeAll();
  }
  bool slow() {
    absl::MutexLock lock(&mu_);
    return slow_;
  }

 private:
  void PushLocked(Item item) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (item.kind == Item::kKick) {
      closed_ = true;  // nothing after a kick
      kick_queued_ = true;
    }
    items_.push_back(std::move(item));
    waiters_.WakeAll();
  }

  const size_t max_bytes_;
  absl::Mutex mu_;
  std::deque<Item> items_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool slow_ ABSL_GUARDED_BY(mu_) = false;
  bool kick_queued_ ABSL_GUARDED_BY(mu_) = false;
  common::FiberWaitList waiters_ ABSL_GUARDED_BY(mu_);
};

void RelayFront::Impl::ServeWebSocket(const httplib::Request& req,
                                      httplib::Response& res,
                                      const std::string& ip) {
  const std::string session = req.get_param_value("session");
  if (req.get_param_value("role") != "client" ||
      !common::relay::ValidSessionId(session)) {
    refusals_->WithLabels({"bad_request"})->Increment();
    res.status = 400;
    res.set_content(
        "use /relay/ws?role=client&session=<the share's 22-character "
        "session id>\n",
        "text/plain");
    return;
  }
  if (!absl::EqualsIgnoreCase(req.get_header_value("Upgrade"), "websocket")) {
    refusals_->WithLabels({"bad_request"})->Increment();
    res.status = 426;
    res.set_header("Upgrade", "websocket");
    res.set_content("this address takes WebSocket connections only\n",
                    "text/plain");
    return;
  }
  FrontServer::Hijacked hijacked = FrontServer::HijackCurrentConnection();
  if (hijacked.conn == nullptr) return;
  Connection* conn = hijacked.conn;
  websocket::stream<FiberSocket> ws(conn, std::move(hijacked.buffered),
                                    options_.idle_timeout,
                                    options_.write_timeout);
  ws.read_message_max(router_->max_frame_bytes());
  ws.auto_fragment(false);
  http::request<http::empty_body> upgrade{http::verb::get, req.target, 11};
  for (const auto& [name, value] : req.headers) upgrade.insert(name, value);
  boost::system::error_code ec;
  ws.accept(upgrade, ec);
  if (ec) {
    refusals_->WithLabels({"bad_request"})->Increment();
    return;  // Beast answered the bad handshake
  }
  // A refusal: the reason as a message the page can show, then a close
  // with its code.
  auto refuse = [&](const char* reason, int code, const std::string& why) {
    refusals_->WithLabels({reason})->Increment();
    boost::system::error_code ignored;
    ws.text(true);
    ws.write(boost::asio::buffer(ErrorJson(reason, why)), ignored);
    websocket::close_reason close;
    close.code = static_cast<uint16_t>(code);
    close.reason = reason;
    ws.next_layer().set_read_timeout(kCloseWait);
    ws.close(close, ignored);
  };
  std::string why;
  std::string reason;
  if (!Admit(ip, &why, &reason)) {
    refuse(reason.c_str(), 4429, why);
    return;
  }
  auto client = std::make_shared<Client>(options_.client_buffer_bytes);
  absl::StatusOr<uint64_t> cid = router_->Join(session, client);
  if (!cid.ok()) {
    const bool full = absl::IsResourceExhausted(cid.status());
    refuse(full ? "clients_per_session" : "unknown_session", full ? 4429 : 4404,
           std::string(cid.status().message()));
    Release(ip);
    return;
  }
  TUNNEL_LOG(DEBUG) << "relay client " << *cid << " joined from " << ip;

  // Writer: the hub's frames, statuses and kicks, and a ping at a quarter
  // of the idle timeout (the browser's pong keeps the reader alive).
  std::unique_ptr<FrontServer::Sibling> writer =
      FrontServer::RunOnSiblingFiber([&ws, client, conn, this] {
        const absl::Duration ping_every = options_.idle_timeout / 4;
        absl::Time next_ping = absl::Now() + ping_every;
        Client::Item item;
        while (true) {
          bool timed_out = false;
          if (!client->Next(&item, next_ping, &timed_out)) {
            if (!timed_out) return;  // closed by the reader
            // Woken before the ping is due: the front door is stopping.
            if (absl::Now() < next_ping) break;
            boost::system::error_code ping_ec;
            ws.ping({}, ping_ec);
            if (ping_ec) break;
            next_ping = absl::Now() + ping_every;
            continue;
          }
          boost::system::error_code wec;
          if (item.kind == Client::Item::kBinary) {
            ws.binary(true);
            ws.write(boost::asio::buffer(item.data), wec);
            if (!wec) {
              frames_out_->Increment();
              bytes_out_->Increment(item.data.size());
            }
          } else {
            ws.text(true);
            ws.write(boost::asio::buffer(item.data), wec);
          }
          if (item.kind == Client::Item::kKick) {
            break;  // the message says why; then the connection ends
          }
          if (wec) break;
        }
        conn->ShutdownBoth();  // ends the reader's wait too
      });
  if (writer == nullptr) {
    refuse("capacity", 4503, "the gateway cannot serve more connections now");
    router_->Leave(session, *cid);
    Release(ip);
    return;
  }
  beast::flat_buffer buf;
  Bucket frames_bucket;
  Bucket bytes_bucket;
  // What the browser sends costs it against the rates, pings and text
  // included: reading pauses as long as they ask.
  auto charge = [&](size_t n) {
    const absl::Time now = absl::Now();
    absl::Duration wait = IpWait(ip, n, now);
    const absl::Duration f =
        frames_bucket.Take(1, options_.frames_per_second, now);
    const absl::Duration b = bytes_bucket.Take(static_cast<double>(n),
                                               options_.bytes_per_second, now);
    if (f > absl::ZeroDuration()) {
      throttled_->WithLabels({"conn_frames"})->Increment();
    }
    if (b > absl::ZeroDuration()) {
      throttled_->WithLabels({"conn_bytes"})->Increment();
    }
    wait = std::max({wait, f, b});
    return wait <= absl::ZeroDuration() || SleepUntil(now + wait);
  };
  bool stopping = false;
  ws.control_callback([&](websocket::frame_type, beast::string_view data) {
    if (!charge(data.size())) stopping = true;
  });
  while (!stopping) {
    buf.clear();
    ws.read(buf, ec);
    if (ec == websocket::error::message_too_big) {
      refusals_->WithLabels({"frame_too_big"})->Increment();
    }
    if (ec || !charge(buf.size())) break;
    if (!ws.got_binary()) continue;  // the page sends frames only
    frames_in_->Increment();
    bytes_in_->Increment(buf.size());
    const server::RelayRouter::Delivery d =
        router_->ToAgent(session, *cid, beast::buffers_to_string(buf.data()),
                         absl::Now() + options_.send_timeout);
    if (d == server::RelayRouter::Delivery::kNoHost) {
      // The host is away (it comes back, or the hub closes this
      // connection): as RELAY.md says, dropped.
      dropped_no_host_->Increment();
    } else if (d == server::RelayRouter::Delivery::kStuck) {
      client->Kick(4408, "host_not_reading",
                   "the device is not reading its connection; retrying");
      refusals_->WithLabels({"host_not_reading"})->Increment();
      break;
    }
  }
  if (client->slow()) refusals_->WithLabels({"slow_client"})->Increment();
  client->Close();
  writer->Join();
  router_->Leave(session, *cid);
  Release(ip);
  TUNNEL_LOG(DEBUG) << "relay client " << *cid << " left";
}

RelayFront::RelayFront(RelayFrontOptions options, server::RelayRouter* router,
                       common::MetricsRegistry* metrics)
    : impl_(std::make_unique<Impl>(options, router, metrics)) {}

RelayFront::~RelayFront() = default;

bool RelayFront::IsRelayPath(absl::string_view path) {
  return path == "/relay" || absl::StartsWith(path, "/relay/");
}

void RelayFront::Handle(const httplib::Request& req, httplib::Response& res,
                        const std::string& visitor) {
  impl_->Handle(req, res, visitor);
}

}  // namespace tunnel::httpfront
