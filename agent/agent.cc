#include "agent/agent.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agent/agent_stream.h"
#include "agent/gateway_call.h"
#include "agent/origin_loop.h"
#include "agent/supervisor.h"
#include "agent/tls_probe.h"
#include "agent/upgrade_loop.h"
#include "agent/upgrade_relay.h"
#include "agent/worker_pool.h"
#include "common/envelopes.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "common/hmac_auth.h"
#include "common/log.h"
#include "common/outbox.h"
#include "common/socket_io.h"
#include "common/tls.h"
#include "grpcpp/grpcpp.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace tunnel::agent {
namespace {

// Why a session with the gateway ended, in words: gRPC's status codes
// (CANCELLED, UNAVAILABLE) mean little to a user.
std::string LostConnectionMessage(const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::OK:
    case grpc::StatusCode::CANCELLED:
      // The agent cancels its side after the stream ended, which hides the
      // gateway's own status: the gateway ended the connection.
      return "the gateway closed the connection (restart or drain)";
    case grpc::StatusCode::UNAVAILABLE:
      if (absl::StrContains(st.error_message(), "Socket closed") ||
          absl::StrContains(st.error_message(), "Connection reset")) {
        return "the connection to the gateway broke (the gateway went away "
               "or the network dropped it)";
      }
      return absl::StrCat("the connection to the gateway broke: ",
                          st.error_message());
    default:
      return absl::StrCat("lost the connection to the gateway: ",
                          st.error_message());
  }
}

using tunnel::v1::ConnectError;
using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

constexpr char kAgentVersion[] = "0.1.0";
// Marks the status of a session the gateway closed because the same agent
// id connected again (REPLACED).
constexpr char kReplacedPayload[] = "tunnel.v1/replaced";

absl::Status FromConnectError(const ConnectError& e) {
  std::string msg =
      absl::StrCat("the gateway refused the connection: ", e.message());
  switch (e.code()) {
    case ConnectError::UNSUPPORTED_VERSION:
      return absl::FailedPreconditionError(msg);
    case ConnectError::INVALID_REQUEST:
    case ConnectError::INVALID_SLUG:
      return absl::InvalidArgumentError(msg);
    case ConnectError::SLUG_TAKEN:
      return absl::AlreadyExistsError(msg);
    case ConnectError::AGENT_ID_MISMATCH:
    case ConnectError::POOL_NOT_ALLOWED:
      return absl::PermissionDeniedError(msg);
    case ConnectError::REPLACED: {
      absl::Status st = absl::FailedPreconditionError(
          absl::StrCat("this agent was replaced: ", e.message()));
      st.SetPayload(kReplacedPayload, absl::Cord("1"));
      return st;
    }
    case ConnectError::CREDENTIALS_REVOKED:
      return absl::UnauthenticatedError(
          absl::StrCat("the gateway closed the session: ", e.message(),
                       "; issue a new token with `tunnelctl token issue`"));
    case ConnectError::CREDENTIALS_EXPIRED:
      return absl::UnauthenticatedError(
          absl::StrCat("the gateway closed the session: ", e.message()));
    default:
      return absl::UnavailableError(msg);
  }
}

}  // namespace

// One accepted connection to the gateway. The reader (the session's
// thread, which runs the call's completion queue) calls Dispatch; the
// OriginLoop forwards ordinary requests; an upgrade's handshake runs on a
// worker, its relay then on the UpgradeLoop; whoever queues in the outbox
// wakes it, which starts the call's next write (GatewayCall).
class Agent::Session : public std::enable_shared_from_this<Session>,
                       public StreamSender {
 public:
  Session(const AgentOptions& options, WorkerPool* pool, OriginLoop* loop,
          UpgradeLoop* upgrades)
      : options_(options),
        pool_(pool),
        loop_(loop),
        upgrades_(upgrades),
        outbox_(common::kMaxChunkBytes) {}

  void Accept(const tunnel::v1::ConnectAccepted& a) {
    // The slugs as the gateway routes them (it chose them for --slug
    // random): one AcceptedTunnel per TunnelSpec, in order.
    targets_ = options_.tunnels;
    for (LocalTarget& t : targets_) {
      for (const auto& at : a.tunnels()) {
        if (at.name() == t.name) t.slug = at.slug();
      }
    }
    // The gateway never agrees to more than was offered; an old gateway
    // sends 0 (no batches).
    batch_bytes_ = std::min(a.max_batch_bytes(), options_.max_batch_bytes);
    goaway_ack_ = a.goaway_ack();
    header_blocks_ = a.header_blocks();
    outbox_.EnableBatching(batch_bytes_);
    send_window_ = std::max(a.stream_window(), common::kMinStreamWindow);
    max_chunk_ = a.max_chunk_bytes() == 0
                     ? common::kMaxChunkBytes
                     : std::min(a.max_chunk_bytes(), common::kMaxChunkBytes);
  }

  common::Outbox& outbox() { return outbox_; }
  // Called on the reader thread when the gateway asks for a drain; set
  // before the first Dispatch.
  void set_on_drain(std::function<void()> f) { on_drain_ = std::move(f); }
  // Where relay frames go (agent-tunnel share); set before the first
  // Dispatch. Null: a relay frame is ignored.
  void set_relay(RelayHost* relay) { relay_ = relay; }

  // RelayHost's sink: a frame for the gateway. Every frame goes on the
  // data lane: one lane keeps a browser's frames in the order of their
  // sequence numbers.
  bool SendRelay(Envelope e) {
    outbox_.Push(std::move(e));
    outbox_.WakeWriter();
    return true;
  }
  // ...and before a body frame, a bounded wait for room in the send queue,
  // like a response body's.
  bool WaitForRelayRoom() {
    return outbox_.WaitForRoom(options_.max_queued_bytes,
                               absl::Now() + options_.local_timeout);
  }

  // Tells the gateway the health of the tunnels in `all` (by name; the
  // gateway knows them by slug).
  void SendHealth(const std::vector<TargetHealth>& all) {
    Envelope e;
    tunnel::v1::Health* h = e.mutable_control()->mutable_health();
    for (const TargetHealth& t : all) {
      for (const LocalTarget& target : targets_) {
        if (target.name != t.name) continue;
        tunnel::v1::TunnelHealth* th = h->add_tunnels();
        th->set_slug(target.slug);
        th->set_healthy(t.healthy);
        th->set_reason(t.reason);
      }
    }
    PushControl(std::move(e));
  }

  // Reader thread. Takes the request heads and body bytes out of `*in`
  // (moved, not copied, to the worker); a batch's envelopes one by one, in
  // order.
  void Dispatch(Envelope* in) {
    if (!in->has_batch()) {
      DispatchOne(in);
      return;
    }
    if (batch_bytes_ == 0) {
      TUNNEL_LOG(WARNING) << "ignoring a batch the gateway was not offered";
      return;
    }
    for (Envelope& m : *in->mutable_batch()->mutable_envelopes()) {
      if (m.has_batch()) {
        TUNNEL_LOG(WARNING) << "ignoring a batch inside a batch";
        continue;
      }
      DispatchOne(&m);
    }
  }

 private:
  void DispatchOne(Envelope* in) {
    const Envelope& e = *in;
    switch (e.message_case()) {
      case Envelope::kRequest:
        OnRequest(std::move(*in->mutable_request()));
        return;
      case Envelope::kData: {
        auto s = Find(e.data().stream_id());
        if (s == nullptr) return;
        bool end = e.data().end_stream();
        if (absl::Status st = s->channel.PushData(
                std::move(*in->mutable_data()->mutable_data()), end);
            !st.ok()) {
          CancelStream(s, absl::AbortedError(st.message()));
          SendClose(s->id, TunnelClose::FLOW_CONTROL_ERROR, st.message());
        } else {
          WakeStream(s);
        }
        return;
      }
      case Envelope::kClose: {
        auto s = Find(e.close().stream_id());
        if (s != nullptr) {
          TUNNEL_LOG(DEBUG)
              << "stream " << s->id
              << " cancelled by the gateway: " << e.close().message();
          CancelStream(s, absl::CancelledError(e.close().message()));
        }
        return;
      }
      case Envelope::kControl: {
        const auto& c = e.control();
        if (c.has_ping()) {
          PushControl(common::MakePong(c.ping().nonce()));
        } else if (c.has_window_update()) {
          auto s = Find(c.window_update().stream_id());
          if (s != nullptr) {
            if (absl::Status st =
                    s->channel.AddSendCredit(c.window_update().increment());
                !st.ok()) {
              CancelStream(s, absl::AbortedError(st.message()));
              SendClose(s->id, TunnelClose::FLOW_CONTROL_ERROR, st.message());
            } else {
              WakeStream(s);
            }
          }
        } else if (c.has_goaway() && c.goaway().ack()) {
          // The answer to our GoAway (DrainStreams), or an administrator's
          // drain, which says the same and asks us to stop.
          {
            absl::MutexLock lock(&mu_);
            drain_acked_ = true;
            last_stream_id_ = c.goaway().last_stream_id();
          }
          if (c.goaway().drain() && on_drain_) {
            TUNNEL_LOG(INFO) << "the gateway asks this agent to drain ("
                             << c.goaway().reason()
                             << "): taking no new requests, finishing those "
                                "in flight, then exiting";
            on_drain_();
          }
        } else if (c.has_goaway()) {
          TUNNEL_LOG(INFO) << "gateway is going away: " << c.goaway().reason();
          retry_after_ms_ = c.goaway().retry_after_ms();
        }
        return;
      }
      case Envelope::kRelay:
        if (relay_ != nullptr) relay_->OnFrame(in->mutable_relay());
        return;
      case Envelope::kConnectError:
        end_status_ = FromConnectError(e.connect_error());
        retry_after_ms_ = e.connect_error().retry_after_ms();
        return;
      default:
        TUNNEL_LOG(WARNING)
            << "ignoring unexpected message of kind " << e.message_case();
        return;
    }
  }

 public:
  // Why the session ended, when the gateway said so in a ConnectError.
  absl::Status end_status() const { return end_status_; }
  // The least wait before reconnecting the gateway asked for (GoAway or
  // ConnectError).
  absl::Duration retry_after() const {
    return absl::Milliseconds(retry_after_ms_.load());
  }

  // Heartbeats: the reader touches on every message.
  void Touch() { last_seen_ns_ = absl::ToUnixNanos(absl::Now()); }
  absl::Time last_seen() const {
    return absl::FromUnixNanos(last_seen_ns_.load());
  }

  // Asks the gateway for no new streams, then waits (bounded) until the
  // streams in flight are done: with a gateway that answers, until every
  // stream it opened before the answer has arrived and finished (so a
  // request already on its way is served, not lost).
  bool DrainStreams(absl::Time deadline) {
    PushControl(
        common::MakeGoAway("the agent is shutting down", absl::ZeroDuration()));
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return streams_.empty() &&
             (!goaway_ack_ ||
              (drain_acked_ && requests_received_ >= last_stream_id_));
    };
    return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
  }

  // Fails every stream and stops the writer's queue.
  void Shutdown() {
    absl::flat_hash_map<uint64_t, std::shared_ptr<AgentStream>> streams;
    {
      absl::MutexLock lock(&mu_);
      streams.swap(streams_);
    }
    for (auto& [id, s] : streams) {
      CancelStream(s, absl::UnavailableError("the tunnel connection was lost"));
    }
    outbox_.Clear();
    outbox_.Close();
  }

 private:
  std::shared_ptr<AgentStream> Find(uint64_t id) {
    absl::MutexLock lock(&mu_);
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second;
  }

  void Remove(uint64_t id) {
    absl::MutexLock lock(&mu_);
    streams_.erase(id);
  }

  // Stops the local side of a stream (reader thread).
  void CancelStream(const std::shared_ptr<AgentStream>& s, absl::Status why) {
    s->Cancel(std::move(why));
    if (s->head.upgrade()) {
      upgrades_->Cancel(s);
    } else {
      loop_->Cancel(s);
    }
  }

  // Body bytes or credit arrived for `s`: whoever forwards it goes on.
  void WakeStream(const std::shared_ptr<AgentStream>& s) {
    if (s->head.upgrade()) {
      upgrades_->Wake(s);
    } else {
      loop_->Wake(s);
    }
  }

  // What the loops need to answer on this session.
  OriginSession ForLoops() {
    OriginSession session;
    session.outbox = &outbox_;
    session.max_chunk = max_chunk_;
    session.max_queued_bytes = options_.max_queued_bytes;
    session.header_blocks = header_blocks_;
    session.done = [this](uint64_t done_id) { Remove(done_id); };
    session.keep = shared_from_this();
    return session;
  }

  // StreamSender, for upgrade handshakes (each on a worker thread): every
  // message wakes the writer (GatewayCall::Kick: a write starts at once
  // unless one is in flight).
  void SendHead(Envelope head) override {
    outbox_.Push(std::move(head));
    outbox_.WakeWriter();
  }
  bool SendBody(AgentStream& s, const char* data, size_t n) override {
    while (n > 0) {
      absl::StatusOr<size_t> credit =
          s.channel.AcquireSendCredit(std::min<size_t>(n, max_chunk_),
                                      absl::Now() + options_.local_timeout);
      if (!credit.ok()) return false;
      if (!outbox_.WaitForRoom(options_.max_queued_bytes,
                               absl::Now() + options_.local_timeout)) {
        return false;
      }
      PushData(s.id, std::string(data, *credit), false);
      data += *credit;
      n -= *credit;
    }
    return true;
  }
  void SendEnd(uint64_t id) override { PushData(id, "", true); }
  void SendControl(Envelope e) override { PushControl(std::move(e)); }
  void SendClose(uint64_t id, TunnelClose::Reason reason,
                 absl::string_view message) override {
    PushControl(common::MakeClose(id, reason, message));
  }

  void PushControl(Envelope e) {
    outbox_.PushControl(std::move(e));
    outbox_.WakeWriter();
  }
  void PushData(uint64_t id, std::string data, bool end) {
    outbox_.PushData(id, std::move(data), end);
    outbox_.WakeWriter();
  }

  void OnRequest(tunnel::v1::TunnelRequest r) {
    const LocalTarget* target = nullptr;
    for (const LocalTarget& t : targets_) {
      if (t.slug == r.tunnel_slug()) target = &t;
    }
    if (target == nullptr) {
      {
        absl::MutexLock lock(&mu_);
        ++requests_received_;
      }
      SendClose(r.stream_id(), TunnelClose::UNKNOWN_TUNNEL,
                absl::StrCat("this agent serves no tunnel \"", r.tunnel_slug(),
                             "\""));
      return;
    }
    const uint64_t id = r.stream_id();
    const bool end = r.end_stream();
    const bool has_body = !(end && r.body().empty());
    std::string body = std::move(*r.mutable_body());
    r.clear_body();
    // The upgrade relay reads HeaderFields; the origin loop and the
    // inspector read both forms.
    if (!(r.upgrade() ? common::ExpandHeaderBlock(&r)
                      : common::StripHopByHop(r.mutable_header_block()))) {
      {
        absl::MutexLock lock(&mu_);
        ++requests_received_;
      }
      SendClose(id, TunnelClose::PROTOCOL_ERROR,
                "the request's header block does not parse");
      return;
    }
    if (!r.upgrade()) common::StripHopByHop(r.mutable_headers());
    auto s =
        std::make_shared<AgentStream>(id, std::move(r), has_body, target,
                                      send_window_, options_.receive_window);
    if (options_.inspector != nullptr) {
      s->capture = options_.inspector->Begin(s->head, target->slug,
                                             target->name, s->head.upgrade());
      if (!has_body) s->capture->RequestEnd();
    }
    if (!body.empty() || end) {
      if (absl::Status st = s->channel.PushData(std::move(body), end);
          !st.ok()) {
        {
          absl::MutexLock lock(&mu_);
          ++requests_received_;
        }
        SendClose(id, TunnelClose::FLOW_CONTROL_ERROR, st.message());
        return;
      }
    }
    {
      absl::MutexLock lock(&mu_);
      streams_[id] = s;
      ++requests_received_;  // every head counts once, on every path
    }
    if (s->head.upgrade()) {
      // The handshake blocks (a connect, then the service's answer) on a
      // worker; after a 101 the UpgradeLoop relays the connection.
      pool_->Submit([self = shared_from_this(), s] {
        WorkerPool::LongRunning();
        std::optional<UpgradedConnection> c =
            UpgradeHandshake(s, *self, self->options_.local_timeout);
        if (!c.has_value()) {
          self->Remove(s->id);
          return;
        }
        self->upgrades_->Start(s, self->ForLoops(), c->fd, std::move(c->early));
      });
      return;
    }
    loop_->Start(std::move(s), ForLoops());
  }

  const AgentOptions& options_;
  WorkerPool* const pool_;
  OriginLoop* const loop_;
  UpgradeLoop* const upgrades_;
  std::vector<LocalTarget> targets_;  // set by Accept, then read-only
  common::Outbox outbox_;
  uint32_t send_window_ = common::kDefaultStreamWindow;
  uint32_t max_chunk_ = common::kMaxChunkBytes;
  uint32_t batch_bytes_ = 0;  // agreed at connect
  absl::Status end_status_;   // reader thread only
  std::atomic<uint32_t> retry_after_ms_{0};
  std::atomic<int64_t> last_seen_ns_{absl::ToUnixNanos(absl::Now())};
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<AgentStream>> streams_
      ABSL_GUARDED_BY(mu_);
  // Draining: whether the gateway answers our GoAway (agreed at connect),
  // its answer, and how many request heads have arrived.
  bool goaway_ack_ = false;     // set by Accept, then read-only
  bool header_blocks_ = false;  // likewise
  std::function<void()> on_drain_;
  RelayHost* relay_ = nullptr;  // set before the first Dispatch
  bool drain_acked_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t last_stream_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t requests_received_ ABSL_GUARDED_BY(mu_) = 0;
};

std::string TokenExpiryWarning(absl::string_view token_id, absl::Time expires,
                               absl::Time now) {
  const std::string at =
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", expires, absl::UTCTimeZone());
  const std::string extend =
      absl::StrCat("extend it with `tunnelctl token extend ", token_id,
                   " --ttl 24h` on the gateway's host (then reload the "
                   "gateway) or issue a new one");
  if (expires <= now) {
    return absl::StrCat("the token ", token_id, " expired at ", at, ": ",
                        extend);
  }
  return absl::StrCat(
      "the token ", token_id, " expires at ", at, " (in ",
      absl::FormatDuration(absl::Trunc(expires - now, absl::Minutes(1))),
      "): ", extend);
}

bool IsPermanent(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
      return true;
    default:
      return false;
  }
}

Agent::Agent(AgentOptions options)
    : options_(std::move(options)),
      gateways_(SplitGateways(options_.gateway)),
      // Plaintext needs no roots: the system bundle is ~200 KiB of heap.
      roots_pem_(options_.insecure         ? std::string()
                 : options_.ca_pem.empty() ? common::SystemRootsPem()
                                           : options_.ca_pem),
      // Upgrade handshakes only: each may wait long for its service, so
      // none waits for another.
      pool_(std::make_unique<WorkerPool>(options_.max_concurrent,
                                         absl::Seconds(30), /*eager_threads=*/0,
                                         absl::ZeroDuration())),
      loop_(std::make_unique<OriginLoop>(options_.max_concurrent,
                                         options_.local_timeout,
                                         options_.local_connect_timeout)),
      upgrades_(std::make_unique<UpgradeLoop>(options_.local_timeout)) {
  if (options_.share.has_value()) {
    relay_ = std::make_unique<RelayHost>(*options_.share, loop_.get());
  }
  {
    absl::MutexLock lock(&mu_);
    links_.resize(
        std::clamp<size_t>(options_.connections, 1, gateways_.size()));
    for (size_t k = 0; k < links_.size(); ++k) links_[k].gateway = k;
  }
  health_ = std::make_unique<HealthChecker>(
      options_.tunnels, options_.health, [this](const TargetHealth& h) {
        for (const LocalTarget& t : options_.tunnels) {
          if (t.name != h.name) continue;
          if (options_.on_health) options_.on_health(t, h);
          if (h.healthy) {
            TUNNEL_LOG(INFO)
                << "local service " << t.url << " is healthy again";
          } else {
            TUNNEL_LOG(WARNING)
                << "local service " << t.url << " is unhealthy (" << h.reason
                << "); the gateway sends its visitors elsewhere or answers "
                   "503 until it recovers";
          }
        }
        std::vector<std::shared_ptr<Session>> sessions;
        {
          absl::MutexLock lock(&mu_);
          sessions = SessionsLocked();
        }
        for (const auto& session : sessions) {
          session->SendHealth(health_->Snapshot());
        }
      });
}

void Agent::RequestDrain() {
  absl::MutexLock lock(&mu_);
  if (drainer_.joinable()) return;
  drainer_ = std::thread([this] { Drain(options_.drain_timeout); });
}

void Agent::ReportHealth(const std::shared_ptr<Session>& session) {
  // A new session starts with every tunnel healthy at the gateway: only
  // the unhealthy ones need saying.
  std::vector<TargetHealth> unhealthy;
  for (const TargetHealth& h : health_->Snapshot()) {
    if (!h.healthy) unhealthy.push_back(h);
  }
  if (!unhealthy.empty()) session->SendHealth(unhealthy);
}

size_t Agent::local_requests_queued() const {
  return pool_->queued() + loop_->queued();
}

Agent::~Agent() {
  Stop();
  std::thread drainer;
  {
    absl::MutexLock lock(&mu_);
    drainer.swap(drainer_);
  }
  if (drainer.joinable()) drainer.join();
  // The share's browsers are forgotten (their streams cancelled) while the
  // loop still runs; the loop is destroyed before the host.
  if (relay_ != nullptr) relay_->Detach();
  // pool_ joins its threads: every stream was cancelled when its session
  // ended, so they finish promptly.
}

void Agent::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  for (Link& l : links_) {
    if (l.ctx != nullptr) l.ctx->TryCancel();
  }
}

std::vector<std::shared_ptr<Agent::Session>> Agent::SessionsLocked() const {
  std::vector<std::shared_ptr<Session>> out;
  for (const Link& l : links_) {
    if (l.session != nullptr) out.push_back(l.session);
  }
  return out;
}

std::string Agent::GatewayOf(size_t k) const {
  absl::MutexLock lock(&mu_);
  return gateways_[links_[k].gateway % gateways_.size()];
}

void Agent::MoveOn(size_t k) {
  absl::MutexLock lock(&mu_);
  const size_t n = gateways_.size();
  for (size_t i = 1; i < n; ++i) {
    const size_t candidate = (links_[k].gateway + i) % n;
    bool taken = false;
    for (size_t j = 0; j < links_.size(); ++j) {
      taken |= j != k && links_[j].gateway == candidate;
    }
    if (!taken) {
      links_[k].gateway = candidate;
      return;
    }
  }
}

std::vector<std::string> SplitGateways(const std::string& list) {
  std::vector<std::string> out =
      absl::StrSplit(list, ',', absl::SkipWhitespace());
  for (std::string& g : out) g = std::string(absl::StripAsciiWhitespace(g));
  if (out.empty()) out.push_back(list);
  return out;
}

absl::Status Agent::Run() {
  health_->Start();
  size_t n;
  {
    absl::MutexLock lock(&mu_);
    n = links_.size();
  }
  // The others connect once the first is accepted (with --slug random the
  // gateway chooses the slugs then, and they ask for the same ones).
  std::vector<std::thread> others;
  for (size_t k = 1; k < n; ++k) {
    others.emplace_back([this, k] {
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return connected_links_ > 0 || stopping_;
        };
        mu_.Await(absl::Condition(&ready));
        if (stopping_) return;
      }
      absl::Status s = RunLink(k);
      if (!s.ok()) {
        {
          absl::MutexLock lock(&mu_);
          if (permanent_.ok()) permanent_ = s;
        }
        Stop();
      }
    });
  }
  absl::Status s = RunLink(0);
  if (!s.ok()) {
    {
      absl::MutexLock lock(&mu_);
      if (permanent_.ok()) permanent_ = s;
    }
    Stop();
  }
  for (std::thread& t : others) t.join();
  absl::MutexLock lock(&mu_);
  return permanent_;
}

absl::Status Agent::RunLink(size_t k) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  Supervisor supervisor(
      BackoffPolicy{options_.initial_backoff, options_.max_backoff,
                    options_.healthy_after},
      [] { return absl::Now(); }, [&] { return uniform(rng); });
  while (true) {
    size_t before;
    bool several;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::OkStatus();
      before = sessions_started_;
      several = links_.size() > 1;
    }
    supervisor.AttemptStarted();
    absl::Duration retry_after = absl::ZeroDuration();
    absl::Status s = RunSession(k, &retry_after);
    size_t after;
    {
      absl::MutexLock lock(&mu_);
      if (links_[k].connected) {
        links_[k].connected = false;
        --connected_links_;
      }
      if (stopping_) return absl::OkStatus();
      after = sessions_started_;
    }
    if (options_.on_session_ended) options_.on_session_ended(s);
    // With several connections, one replaced while another is up was
    // replaced by that one (two addresses of one gateway): it gives way
    // for good rather than take the gateway back and forth.
    if (several && s.GetPayload(kReplacedPayload).has_value()) {
      bool others = false;
      {
        absl::MutexLock lock(&mu_);
        // (Connected, or in its handshake: the gateway replaces the old
        // session before the new one hears it was accepted.)
        for (size_t j = 0; j < links_.size(); ++j) {
          others |= j != k && (links_[j].connected || links_[j].ctx != nullptr);
        }
      }
      if (others) {
        TUNNEL_LOG(WARNING)
            << "the connection to " << GatewayOf(k)
            << " was replaced by another connection of this agent (two "
               "--gateway addresses reach the same gateway); keeping one";
        return absl::OkStatus();
      }
    }
    if (IsPermanent(s)) return s;
    // With several gateways (a cluster's replicas), the next one: the one
    // that just failed may be gone for good.
    if (gateways_.size() > 1) {
      MoveOn(k);
      TUNNEL_LOG(INFO) << "next attempt: " << GatewayOf(k);
    }
    const absl::Duration wait =
        supervisor.NextWait(/*accepted=*/after != before, retry_after);
    TUNNEL_LOG(WARNING) << s.message() << "; reconnecting in "
                        << absl::FormatDuration(
                               absl::Trunc(wait, absl::Milliseconds(1)));
    absl::MutexLock lock(&mu_);
    auto stopping = [this]()
                        ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopping), wait);
  }
}

void Agent::Drain(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  std::vector<std::shared_ptr<Session>> sessions;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;  // no reconnect after these sessions
    sessions = SessionsLocked();
  }
  for (const auto& session : sessions) {
    if (!session->DrainStreams(deadline)) {
      TUNNEL_LOG(WARNING) << "drain timeout: requests still in flight are cut";
    }
  }
  if (!sessions.empty()) {
    // The calls send what is queued, then half-close (the wake after the
    // close does it when nothing is in flight); each gateway then ends its
    // call. Wait (bounded) for that before cancelling.
    for (const auto& session : sessions) {
      session->outbox().Close();
      session->outbox().WakeWriter();
    }
    absl::MutexLock lock(&mu_);
    auto ended = [this, &sessions]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      for (const Link& l : links_) {
        for (const auto& s : sessions) {
          if (l.session == s) return false;
        }
      }
      return true;
    };
    mu_.AwaitWithDeadline(absl::Condition(&ended),
                          std::min(deadline, absl::Now() + absl::Seconds(5)));
  }
  Stop();
}

absl::Status Agent::RunSession(size_t k, absl::Duration* retry_after) {
  const std::string gateway = GatewayOf(k);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options_.insecure) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = roots_pem_;
    ssl.pem_cert_chain = options_.client_cert_pem;
    ssl.pem_private_key = options_.client_key_pem;
    creds = grpc::SslCredentials(ssl);
    if (!options_.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options_.tls_server_name);
    }
  }
  auto channel = grpc::CreateCustomChannel(gateway, creds, args);
  auto deadline = std::chrono::system_clock::now() +
                  absl::ToChronoMilliseconds(options_.connect_timeout);
  // gRPC retries a failed connection by itself until the deadline and says
  // only "failed to connect": stop at the first failure and find out why
  // (connection refused, or what was wrong with TLS), then let Run retry
  // with its backoff. The wait looks at stopping_ every 100 ms, so a signal
  // is not held up by the connect timeout.
  bool connected = false;
  bool failed = false;  // a connection attempt failed before the deadline
  while (true) {
    grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
    if (state == GRPC_CHANNEL_READY) {
      connected = true;
      break;
    }
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      failed = true;
      break;
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::OkStatus();
    }
    const auto now = std::chrono::system_clock::now();
    if (now >= deadline) break;
    channel->WaitForStateChange(
        state, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
  if (!connected) {
    // The probe reconnects: only after a failure, not after a silent
    // deadline (which would double an unreachable gateway's wait).
    if (failed) {
      if (absl::Status why = DescribeConnectFailure(gateway); !why.ok())
        return why;
    }
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the gateway at ", gateway, failed ? "" : " within ",
        failed ? "" : absl::FormatDuration(options_.connect_timeout),
        options_.insecure
            ? " (plaintext; if the gateway runs TLS, drop --insecure)"
            : " (TLS; if the gateway runs with --insecure, pass --insecure "
              "too)"));
  }
  auto stub = tunnel::v1::TunnelService::NewStub(channel);

  grpc::ClientContext ctx;
  auto metadata = common::SignAuthMetadata(options_.agent_id, options_.token_id,
                                           options_.secret, absl::Now());
  if (!metadata.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid --secret: ", metadata.status().message()));
  }
  for (const auto& [key, value] : *metadata) ctx.AddMetadata(key, value);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::OkStatus();
    links_[k].ctx = &ctx;
  }
  auto clear_ctx = [this, k] {
    absl::MutexLock lock(&mu_);
    links_[k].ctx = nullptr;
  };

  auto call = std::make_shared<GatewayCall>(stub.get(), &ctx);
  Envelope hello;
  auto* c = hello.mutable_connect();
  c->set_protocol_version(tunnel::v1::PROTOCOL_VERSION_1);
  c->set_agent_id(options_.agent_id);
  c->set_agent_version(kAgentVersion);
  c->set_receive_window(options_.receive_window);
  c->set_max_batch_bytes(options_.max_batch_bytes);
  c->set_header_blocks(true);
  c->set_pool(options_.pool);
  if (options_.access_code.has_value()) {
    *c->mutable_access_code() = *options_.access_code;
  }
  if (options_.ip_rules.allow_size() > 0 || options_.ip_rules.deny_size() > 0) {
    *c->mutable_ip_rules() = options_.ip_rules;
  }
  for (const tunnel::v1::BasicAuthUser& u : options_.basic_auth) {
    *c->add_basic_auth() = u;
  }
  {
    // --slug random: the gateway chooses at the first connect; after that
    // the agent asks for what it was given (so its URLs survive reconnects
    // and gateway restarts).
    absl::MutexLock lock(&mu_);
    const bool choose = options_.random_slug && assigned_slugs_.empty();
    c->set_random_slug(choose);
    for (const LocalTarget& t : options_.tunnels) {
      auto* spec = c->add_tunnels();
      spec->set_name(t.name);
      auto it = assigned_slugs_.find(t.name);
      spec->set_slug(it != assigned_slugs_.end() ? it->second : t.slug);
    }
  }
  if (relay_ != nullptr)
    c->add_relay_sessions(relay_->options().secrets.session);
  // The handshake is bounded: a gateway that accepts the call but never
  // answers is given up on (and retried).
  Envelope first;
  const bool got =
      call->Handshake(std::move(hello), options_.connect_timeout, &first);
  if (!got || !first.has_accepted()) {
    absl::Status refused;
    if (got && first.has_connect_error()) {
      refused = FromConnectError(first.connect_error());
    }
    // A stream that already ended carries the gateway's status; cancelling
    // it would replace that with CANCELLED.
    if (got) ctx.TryCancel();
    grpc::Status st = call->Finish();
    clear_ctx();
    if (got && first.has_connect_error()) {
      *retry_after = absl::Milliseconds(first.connect_error().retry_after_ms());
    }
    if (!refused.ok()) return refused;
    if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      return absl::UnauthenticatedError(absl::StrCat(
          "the gateway refused the credentials: ", st.error_message()));
    }
    if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      // Too many failed authentications from this address: wait as told.
      const auto& trailers = ctx.GetServerTrailingMetadata();
      if (auto it = trailers.find(common::kAuthRetryAfterKey);
          it != trailers.end()) {
        int64_t ms = 0;
        if (absl::SimpleAtoi(
                absl::string_view(it->second.data(), it->second.size()), &ms) &&
            ms > 0) {
          *retry_after = absl::Milliseconds(ms);
        }
      }
      return absl::UnavailableError(
          absl::StrCat("the gateway is refusing this address for now: ",
                       st.error_message()));
    }
    if (got) {
      return absl::UnavailableError(
          "the gateway answered with an unexpected "
          "message; is this a tunnel gateway?");
    }
    // TLS 1.3: a refused client certificate ends the connection only after
    // our side of the handshake finished.
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      if (absl::Status why = DiagnoseTls(gateway); !why.ok()) return why;
    }
    return absl::UnavailableError(absl::StrCat(
        "the gateway did not accept the connection: ", st.error_message()));
  }

  auto session = std::make_shared<Session>(options_, pool_.get(), loop_.get(),
                                           upgrades_.get());
  // Whoever queues a message starts its write (GatewayCall); the call may
  // be gone while the session's streams still finish.
  call->Attach(&session->outbox());
  session->outbox().SetWakeCallback([weak = std::weak_ptr<GatewayCall>(call)] {
    if (auto c = weak.lock()) c->Kick();
  });
  session->Accept(first.accepted());
  session->set_on_drain([this] { RequestDrain(); });
  if (relay_ != nullptr) {
    session->set_relay(relay_.get());
    relay_->Attach(
        {[session](Envelope e) { return session->SendRelay(std::move(e)); },
         [session] { return session->WaitForRelayRoom(); }},
        first.accepted().relay_max_frame_bytes());
  }
  {
    absl::MutexLock lock(&mu_);
    links_[k].connected = true;
    ++connected_links_;
    links_[k].session = session;
    ++sessions_started_;
    tunnels_.assign(first.accepted().tunnels().begin(),
                    first.accepted().tunnels().end());
    if (options_.random_slug && assigned_slugs_.empty()) {
      for (const auto& t : first.accepted().tunnels()) {
        assigned_slugs_[t.name()] = t.slug();
      }
    }
  }
  ReportHealth(session);
  TUNNEL_LOG(INFO) << "connected to " << gateway << " (session "
                   << first.accepted().session_id() << ")";
  if (const int64_t expires = first.accepted().token_expires_unix();
      expires != 0) {
    const absl::Time at = absl::FromUnixSeconds(expires);
    if (at - absl::Now() < kTokenExpiryWarning) {
      TUNNEL_LOG(WARNING) << TokenExpiryWarning(options_.token_id, at,
                                                absl::Now());
    }
  }
  if (options_.on_accepted) options_.on_accepted(first.accepted());

  // Heartbeats: the gateway pings every heartbeat_interval_ms; a gateway
  // (or path) that goes silent is given up on and the agent reconnects.
  absl::Notification session_over;
  std::atomic<bool> silent{false};
  absl::Duration check_every = options_.heartbeat_timeout / 4;
  if (first.accepted().heartbeat_interval_ms() > 0) {
    check_every =
        std::min(check_every,
                 absl::Milliseconds(first.accepted().heartbeat_interval_ms()));
  }
  std::thread watchdog([&] {
    while (!session_over.WaitForNotificationWithTimeout(check_every)) {
      if (absl::Now() - session->last_seen() > options_.heartbeat_timeout) {
        silent = true;
        ctx.TryCancel();
        return;
      }
    }
  });
  // This thread reads (and takes the writes' completions) until the call
  // ends; writes start on whichever thread queued them.
  call->Run([&session](Envelope* in) {
    session->Touch();
    session->Dispatch(in);
  });
  session_over.Notify();
  watchdog.join();
  session->Shutdown();
  // After the outbox is closed, so no pump still waits for room in it.
  if (relay_ != nullptr) relay_->Detach();
  ctx.TryCancel();
  grpc::Status st = call->Finish();
  clear_ctx();
  {
    absl::MutexLock lock(&mu_);
    links_[k].session = nullptr;
  }
  *retry_after = session->retry_after();
  if (absl::Status end = session->end_status(); !end.ok()) return end;
  if (silent) {
    return absl::UnavailableError(
        absl::StrCat("the gateway sent nothing for ",
                     absl::FormatDuration(options_.heartbeat_timeout),
                     "; the connection is presumed dead"));
  }
  return absl::UnavailableError(LostConnectionMessage(st));
}

absl::Status Agent::DescribeConnectFailure(const std::string& gateway) const {
  // First the network: is anything listening there at all?
  std::string host;
  int port = 0;
  if (SplitGateway(gateway, &host, &port)) {
    absl::StatusOr<int> fd = common::ConnectTcp(
        host, port, std::min(options_.connect_timeout, absl::Seconds(5)));
    if (!fd.ok()) {
      return absl::UnavailableError(
          absl::StrCat("cannot reach the gateway at ", gateway, ": ",
                       absl::AsciiStrToLower(fd.status().message()),
                       absl::StrContains(fd.status().message(), "refused")
                           ? " (is gateway-tunnel running there, with this "
                             "--grpc-addr port?)"
                           : ""));
    }
    ::close(*fd);
  }
  return DiagnoseTls(gateway);
}

absl::Status Agent::DiagnoseTls(const std::string& gateway) const {
  if (options_.insecure) return absl::OkStatus();
  TlsProbeOptions probe;
  probe.gateway = gateway;
  probe.server_name = options_.tls_server_name;
  probe.roots_pem = roots_pem_;
  probe.client.cert_pem = options_.client_cert_pem;
  probe.client.key_pem = options_.client_key_pem;
  probe.timeout = options_.connect_timeout;
  return ProbeTls(probe);
}

bool Agent::WaitUntilConnected(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return connected_links_ > 0 || stopping_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  return connected_links_ > 0;
}

std::vector<tunnel::v1::AcceptedTunnel> Agent::tunnels() const {
  absl::MutexLock lock(&mu_);
  return tunnels_;
}

size_t Agent::sessions_started() const {
  absl::MutexLock lock(&mu_);
  return sessions_started_;
}
}  // namespace tunnel::agent
