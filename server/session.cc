#include "server/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/envelopes.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "common/log.h"
#include "common/round_end.h"
#include "server/relay_hub.h"

namespace tunnel::server {
namespace {

using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

// What a TunnelClose from the agent means to the visitor (see
// tunnel_router.h for the mapping to HTTP statuses).
absl::Status StatusFromClose(const TunnelClose& c) {
  std::string msg =
      c.message().empty() ? "the agent closed the stream" : c.message();
  switch (c.reason()) {
    case TunnelClose::LOCAL_UNREACHABLE:
    case TunnelClose::UNKNOWN_TUNNEL:
      return absl::FailedPreconditionError(msg);
    case TunnelClose::TIMEOUT:
      return absl::DeadlineExceededError(msg);
    default:
      return absl::AbortedError(msg);
  }
}

// What an agent must not send after its handshake, for the status message.
absl::string_view UnexpectedKind(const Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kConnect:
      return "a second connect request";
    case Envelope::kRequest:
      return "a request (only the gateway opens streams)";
    case Envelope::kConnectError:
      return "a connect_error (gateway-only)";
    case Envelope::kAccepted:
      return "an accepted message (gateway-only)";
    default:
      return "an envelope with no message set";
  }
}

// The stream an agent's per-stream message names; 0 for the others.
uint64_t StreamIdOf(const Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kResponse:
      return e.response().stream_id();
    case Envelope::kData:
      return e.data().stream_id();
    case Envelope::kClose:
      return e.close().stream_id();
    case Envelope::kControl:
      return e.control().window_update().stream_id();
    default:
      return 0;
  }
}

absl::string_view KindName(const Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kResponse:
      return "a response";
    case Envelope::kData:
      return "data";
    case Envelope::kClose:
      return "a close";
    default:
      return "a window update";
  }
}

}  // namespace

// The front door's handle on one stream.
class GatewayStream : public TunnelStream {
 public:
  GatewayStream(std::shared_ptr<Session> session, uint64_t id,
                std::shared_ptr<common::StreamChannel> channel)
      : session_(std::move(session)), id_(id), channel_(std::move(channel)) {}

  ~GatewayStream() override {
    // An exchange abandoned before its response completed is cancelled at
    // the agent, which aborts its local request.
    if (!cancelled_ && channel_->status().ok() &&
        !channel_->receive_finished()) {
      session_->SendClose(id_, TunnelClose::CANCELLED, "the visitor went away");
    }
    // Shared: copying a Status takes a reference, making one allocates.
    static const absl::Status* const kReleased =
        new absl::Status(absl::CancelledError("stream released"));
    channel_->Abort(*kReleased);
    session_->RemoveStream(id_);
  }

  uint64_t id() const override { return id_; }
  const void* owner() const override { return session_.get(); }

  absl::Status SendBody(absl::string_view data, absl::Time deadline) override {
    while (!data.empty()) {
      size_t want = std::min<size_t>(data.size(), session_->limits_.max_chunk);
      absl::StatusOr<size_t> n = channel_->AcquireSendCredit(want, deadline);
      if (!n.ok()) return n.status();
      if (!session_->outbox_.WaitForRoom(session_->limits_.max_queued_bytes,
                                         deadline)) {
        return absl::DeadlineExceededError(
            "the agent's connection is not draining its send queue");
      }
      // Counted before it can reach the agent, so a reader who saw the
      // answer sees the bytes counted.
      session_->bytes_in_.fetch_add(*n, std::memory_order_relaxed);
      session_->SendData(id_, std::string(data.substr(0, *n)), false);
      data.remove_prefix(*n);
    }
    return absl::OkStatus();
  }

  absl::Status FinishBody() override {
    if (absl::Status s = channel_->status(); !s.ok()) return s;
    session_->SendData(id_, "", true);
    return absl::OkStatus();
  }

  absl::StatusOr<tunnel::v1::TunnelResponse> AwaitResponseHead(
      absl::Time deadline) override {
    return channel_->AwaitHead(deadline);
  }

  absl::StatusOr<common::Chunk> ReadBody(absl::Time deadline) override {
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> chunk = channel_->PopData(deadline, &ack);
    if (ack > 0) session_->SendControl(common::MakeWindowUpdate(id_, ack));
    return chunk;
  }

  void Cancel(absl::string_view why) override {
    if (cancelled_) return;
    cancelled_ = true;
    if (channel_->status().ok()) {
      session_->SendClose(id_, TunnelClose::CANCELLED, why);
    }
    channel_->Abort(absl::CancelledError(why));
  }

 private:
  const std::shared_ptr<Session> session_;
  const uint64_t id_;
  const std::shared_ptr<common::StreamChannel> channel_;
  bool cancelled_ = false;
};

Session::Session(std::string session_id, std::string agent_id,
                 std::string token_id, std::string peer, SessionLimits limits,
                 EnvelopeWriter* writer, const CoreMetrics* metrics)
    : session_id_(std::move(session_id)),
      agent_id_(std::move(agent_id)),
      token_id_(std::move(token_id)),
      peer_(std::move(peer)),
      limits_(limits),
      writer_(writer),
      metrics_(metrics),
      outbox_(limits.max_chunk),
      last_seen_ns_(absl::ToUnixNanos(absl::Now())) {}

void Session::Touch() { last_seen_ns_ = absl::ToUnixNanos(absl::Now()); }

absl::Time Session::last_seen() const {
  return absl::FromUnixNanos(last_seen_ns_.load());
}

void Session::SendPing(uint64_t nonce) { SendControl(common::MakePing(nonce)); }

void Session::SendGoAway(absl::string_view reason, absl::Duration retry_after) {
  SendControl(common::MakeGoAway(reason, retry_after));
}

bool Session::draining() const { return draining_; }

void Session::StopTakingStreams(absl::string_view reason, bool drain) {
  uint64_t last = 0;
  {
    // Under mu_: an OpenStream either saw draining_ (and refused) or took
    // its id before `last` was read.
    absl::MutexLock lock(&mu_);
    draining_ = true;
    last = next_stream_id_ - 1;
  }
  Envelope e = common::MakeGoAway(reason, absl::ZeroDuration());
  tunnel::v1::GoAway* g = e.mutable_control()->mutable_goaway();
  g->set_ack(true);
  g->set_last_stream_id(last);
  g->set_drain(drain);
  SendControl(std::move(e));
}

void Session::set_token_expiry(absl::Time t) {
  token_expiry_s_ = t == absl::InfiniteFuture() ? 0 : absl::ToUnixSeconds(t);
}

absl::Time Session::token_expiry() const {
  const int64_t s = token_expiry_s_.load();
  return s == 0 ? absl::InfiniteFuture() : absl::FromUnixSeconds(s);
}

bool Session::Retire(const std::string& agent_why,
                     const std::string& visitor_why) {
  {
    absl::MutexLock lock(&mu_);
    if (retired_at_ != absl::InfiniteFuture()) return false;
    retired_why_ = visitor_why;
    retired_at_ = absl::Now();
  }
  SendGoAway(agent_why, absl::ZeroDuration());
  return true;
}

absl::Time Session::retired_at() const {
  absl::MutexLock lock(&mu_);
  return retired_at_;
}

Session::~Session() = default;

void Session::SetTunnels(std::vector<SessionTunnel> tunnels, absl::Time now) {
  tunnels_ = std::move(tunnels);
  connected_at_ = now;
}

SessionCounters Session::counters() const {
  SessionCounters c;
  c.requests = requests_.load(std::memory_order_relaxed);
  c.bytes_in = bytes_in_.load(std::memory_order_relaxed);
  c.bytes_out = bytes_out_.load(std::memory_order_relaxed);
  c.errors = agent_errors_.load(std::memory_order_relaxed);
  c.health_transitions = health_transitions_.load(std::memory_order_relaxed);
  return c;
}

void Session::EnableBatching(uint32_t max_bytes) {
  batch_bytes_ = max_bytes;
  outbox_.EnableBatching(max_bytes);
}

void Session::SetAgentReceiveWindow(uint32_t window) {
  if (window == 0) return;
  limits_.agent_receive_window =
      std::clamp<uint32_t>(window, common::kMinStreamWindow, 16u << 20);
}

void Session::Enqueue(Envelope e, bool control) {
  const Envelope* to_write = nullptr;
  bool more = false;
  bool unread = false;
  {
    absl::MutexLock lock(&mu_);
    if (finish_requested_ || done_) return;
    if (control && outbox_.control_size() >= limits_.max_queued_control) {
      unread = true;
    } else if (control) {
      outbox_.PushControl(std::move(e));
    } else {
      outbox_.Push(std::move(e));
    }
    if (!unread && !writing_ && !flush_deferred_) {
      if (common::RoundEnd* round = common::RoundEnd::Current()) {
        // On a front-door loop: written when its round has run, with
        // whatever the round's other requests queue meanwhile.
        flush_deferred_ = true;
        round->Defer([weak = weak_from_this()] {
          if (auto self = weak.lock()) self->FlushDeferred();
        });
      } else if (PopForWriteLocked(&more)) {
        to_write = &current_;
      }
    }
  }
  if (unread) {
    // The agent does not read its stream (a hostile one may ping and never
    // read the pongs): its session ends, not our memory.
    const std::string detail = absl::StrCat(
        limits_.max_queued_control, " control messages wait to be sent");
    NoteViolation(Violation::kUnreadStream, detail);
    Close(grpc::Status(
              grpc::StatusCode::RESOURCE_EXHAUSTED,
              absl::StrCat("the agent does not read its stream: ", detail)),
          /*drain=*/false);
    return;
  }
  // No lock across the write. The call cannot finish meanwhile: Finish
  // waits for writing_ to drop, which only OnWriteDone does.
  if (to_write != nullptr) writer_->Write(to_write, more);
}

bool Session::PopForWriteLocked(bool* more) {
  if (!outbox_.TryPop(&current_)) return false;
  writing_ = true;
  *more = !outbox_.empty();
  metrics_->messages_to_agent->Increment();
  metrics_->envelopes_to_agent->Increment(
      current_.has_batch() ? current_.batch().envelopes_size() : 1);
  return true;
}

void Session::FlushDeferred() {
  const Envelope* to_write = nullptr;
  bool more = false;
  {
    absl::MutexLock lock(&mu_);
    flush_deferred_ = false;
    // (Close writes what is queued itself.)
    if (done_ || finished_ || writing_) return;
    if (PopForWriteLocked(&more)) to_write = &current_;
  }
  if (to_write != nullptr) writer_->Write(to_write, more);
}

void Session::Send(Envelope e) { Enqueue(std::move(e), false); }
void Session::SendControl(Envelope e) { Enqueue(std::move(e), true); }

void Session::SendData(uint64_t stream_id, std::string data, bool end) {
  Enqueue(common::MakeData(stream_id, std::move(data), end), false);
}

void Session::SendClose(uint64_t stream_id, TunnelClose::Reason reason,
                        absl::string_view message) {
  metrics_->stream_close(/*from_agent=*/false, reason)->Increment();
  Enqueue(common::MakeClose(stream_id, reason, message), true);
}

void Session::OnWriteDone(bool ok) {
  const Envelope* to_write = nullptr;
  bool more = false;
  bool finish = false;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The call is broken; nothing more can be written.
      outbox_.Clear();
      if (!finish_requested_) {
        finish_requested_ = true;
        finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                      "write to agent failed");
      }
    }
    if (ok && PopForWriteLocked(&more)) {
      to_write = &current_;
    } else if (finish_requested_ && !finished_) {
      finished_ = true;
      finish = true;
      status = finish_status_;
    }
  }
  if (to_write != nullptr) {
    writer_->Write(to_write, more);
  } else if (finish) {
    writer_->End(status);
  }
}

void Session::Close(grpc::Status status, bool drain) {
  bool finish = false;
  const Envelope* to_write = nullptr;
  bool more = false;
  {
    absl::MutexLock lock(&mu_);
    if (finish_requested_ || done_) return;
    finish_requested_ = true;
    finish_status_ = status;
    if (!drain) outbox_.Clear();
    if (!writing_) {
      if (PopForWriteLocked(&more)) {
        // Deliver what is queued first; OnWriteDone finishes after it.
        to_write = &current_;
      } else {
        finished_ = true;
        finish = true;
      }
    }
  }
  if (to_write != nullptr) {
    writer_->Write(to_write, more);
  } else if (finish) {
    writer_->End(status);
  }
}

bool Session::closing() const {
  absl::MutexLock lock(&mu_);
  return finish_requested_ || done_;
}

absl::StatusOr<std::unique_ptr<TunnelStream>> Session::OpenStream(
    tunnel::v1::TunnelRequest&& head) {
  auto channel = std::make_shared<common::StreamChannel>(
      limits_.agent_receive_window, limits_.gateway_receive_window);
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (finish_requested_ || done_) {
      return absl::UnavailableError("the agent is disconnecting");
    }
    if (!retired_why_.empty()) return absl::UnavailableError(retired_why_);
    if (draining_) {
      return absl::UnavailableError(
          "the agent is shutting down; it should be back shortly");
    }
    if (!unhealthy_.empty()) {
      if (auto it = unhealthy_.find(head.tunnel_slug());
          it != unhealthy_.end()) {
        return LocalServiceUnhealthyError(
            absl::StrCat("the local service behind agent ", agent_id_,
                         " is unhealthy: ", it->second));
      }
    }
    if (streams_.size() >= limits_.max_streams) {
      metrics_->max_streams_rejections->Increment();
      return absl::ResourceExhaustedError(absl::StrCat(
          "the agent has ", streams_.size(), " requests in flight (limit ",
          limits_.max_streams, ")"));
    }
    if (outbox_.queued_bytes() > limits_.max_queued_bytes) {
      // Heads count too: an agent that reads nothing must not make us queue
      // every visitor's head (up to --max-request-head each).
      metrics_->send_queue_rejections->Increment();
      return absl::ResourceExhaustedError(
          "the agent is not taking requests as fast as they come (its send "
          "queue is full)");
    }
    id = next_stream_id_++;
    streams_[id] = channel;
  }
  requests_.fetch_add(1, std::memory_order_relaxed);
  head.set_stream_id(id);
  // The front door packs a head's fields; an agent that reads no blocks
  // gets them as HeaderFields. The block is the gateway's own, well formed.
  if (!header_blocks_) (void)common::ExpandHeaderBlock(&head);
  Envelope e;
  *e.mutable_request() = std::move(head);
  Send(std::move(e));
  return std::unique_ptr<TunnelStream>(
      new GatewayStream(shared_from_this(), id, std::move(channel)));
}

void Session::OnHealth(const tunnel::v1::Health& h) {
  absl::MutexLock lock(&mu_);
  for (const tunnel::v1::TunnelHealth& t : h.tunnels()) {
    // Only the session's own tunnels, and a bounded reason: the agent is
    // not trusted with the gateway's memory.
    bool ours = false;
    for (const SessionTunnel& st : tunnels_) ours |= st.slug == t.slug();
    if (!ours) continue;
    if (t.healthy()) {
      if (unhealthy_.erase(t.slug()) > 0) {
        metrics_->became_healthy->Increment();
        health_transitions_.fetch_add(1, std::memory_order_relaxed);
      }
    } else {
      if (!unhealthy_.contains(t.slug())) {
        metrics_->became_unhealthy->Increment();
        health_transitions_.fetch_add(1, std::memory_order_relaxed);
      }
      unhealthy_[t.slug()] = t.reason().substr(0, 200);
    }
    TUNNEL_LOG(INFO) << "agent " << agent_id_ << " reports tunnel " << t.slug()
                     << (t.healthy() ? " healthy"
                                     : absl::StrCat(" unhealthy: ",
                                                    t.reason().substr(0, 200)));
  }
}

std::optional<std::string> Session::UnhealthyReason(
    absl::string_view slug) const {
  absl::MutexLock lock(&mu_);
  auto it = unhealthy_.find(slug);
  if (it == unhealthy_.end()) return std::nullopt;
  return it->second;
}

size_t Session::stream_count() const {
  absl::MutexLock lock(&mu_);
  return streams_.size();
}

SessionStats Session::Stats() const {
  std::vector<std::shared_ptr<common::StreamChannel>> channels;
  {
    absl::MutexLock lock(&mu_);
    channels.reserve(streams_.size());
    for (const auto& [id, ch] : streams_) channels.push_back(ch);
  }
  SessionStats s;
  s.streams = channels.size();
  s.queued_bytes = outbox_.queued_bytes();
  s.queued_messages = outbox_.size();
  for (const auto& ch : channels) {
    if (ch->send_stalled()) ++s.stalled_to_agent;
    if (ch->receive_window_full()) ++s.stalled_to_visitor;
  }
  return s;
}

grpc::Status Session::end_status() const {
  absl::MutexLock lock(&mu_);
  return finish_requested_ ? finish_status_ : grpc::Status::OK;
}

std::shared_ptr<common::StreamChannel> Session::FindStream(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second;
}

void Session::RemoveStream(uint64_t id) {
  absl::MutexLock lock(&mu_);
  streams_.erase(id);
}

bool Session::NeverOpened(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  return id == 0 || id >= next_stream_id_;
}

void Session::FailStream(uint64_t id,
                         const std::shared_ptr<common::StreamChannel>& ch,
                         Violation v, TunnelClose::Reason reason,
                         const absl::Status& why) {
  metrics_->violation(v)->Increment();
  common::LogEvent(common::LogLevel::kWarning, "agent_protocol_violation")
      .Str("agent_id", agent_id_)
      .Str("session", session_id_)
      .Str("kind", ViolationName(v))
      .Int("stream", static_cast<int64_t>(id))
      .Str("detail", why.message())
      .Str("action", "stream_closed");
  ch->Abort(absl::AbortedError(
      absl::StrCat("the agent broke the protocol: ", why.message())));
  SendClose(id, reason, why.message());
}

void Session::NoteViolation(Violation v, absl::string_view detail) {
  metrics_->violation(v)->Increment();
  common::LogEvent(common::LogLevel::kWarning, "agent_protocol_violation")
      .Str("agent_id", agent_id_)
      .Str("session", session_id_)
      .Str("kind", ViolationName(v))
      .Str("detail", detail)
      .Str("action", "session_closed");
}

void Session::CloseForViolation(Violation v, absl::string_view detail) {
  NoteViolation(v, detail);
  Close(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("protocol violation (", ViolationName(v),
                                  "): ", detail)),
        /*drain=*/false);
}

void Session::OnEnvelope(Envelope e) {
  metrics_->messages_from_agent->Increment();
  if (!e.has_batch()) {
    metrics_->envelopes_from_agent->Increment();
    OnOne(e);
    return;
  }
  auto* members = e.mutable_batch()->mutable_envelopes();
  // The whole batch is checked before any of it is acted on.
  absl::string_view wrong;
  if (batch_bytes_ == 0) {
    wrong = "a batch, which it did not agree to at connect";
  } else if (members->empty()) {
    wrong = "an empty batch";
  }
  for (const Envelope& m : *members) {
    if (!wrong.empty()) break;
    switch (m.message_case()) {
      case Envelope::kBatch:
        wrong = "a batch inside a batch";
        break;
      case Envelope::kConnect:
      case Envelope::kAccepted:
      case Envelope::kConnectError:
        wrong = "a handshake message inside a batch";
        break;
      default:
        break;
    }
  }
  if (!wrong.empty()) {
    CloseForViolation(Violation::kInvalidBatch,
                      absl::StrCat("the agent sent ", wrong));
    return;
  }
  metrics_->envelopes_from_agent->Increment(members->size());
  for (Envelope& m : *members) {
    if (!OnOne(m)) return;
  }
}

bool Session::SendRelay(Envelope e, absl::Time deadline) {
  if (closing()) return false;
  // Frames and events share the data lane: a browser's CLIENT_DISCONNECTED
  // must not overtake its last frames, nor any event ConnectAccepted.
  if (deadline == absl::InfinitePast()) {
    Enqueue(std::move(e), /*control=*/false);
    return true;
  }
  if (!outbox_.WaitForRoom(limits_.max_queued_bytes, deadline)) return false;
  Enqueue(std::move(e), /*control=*/false);
  return true;
}

bool Session::OnOne(Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kRelay:
      if (relay_ == nullptr) {
        CloseForViolation(Violation::kUnexpectedMessage,
                          "the agent sent a relay frame but hosts no share");
        return false;
      }
      relay_->FromAgent(this, e.mutable_relay());
      return true;
    case Envelope::kResponse:
    case Envelope::kData:
    case Envelope::kClose:
      return OnStreamMessage(e);
    case Envelope::kControl: {
      const auto& c = e.control();
      if (c.has_ping()) {
        SendControl(common::MakePong(c.ping().nonce()));
      } else if (c.has_goaway()) {
        TUNNEL_LOG(INFO) << "agent " << agent_id_
                         << " is shutting down: " << c.goaway().reason();
        StopTakingStreams("no new requests will come", /*drain=*/false);
      } else if (c.has_window_update()) {
        return OnStreamMessage(e);
      } else if (c.has_health()) {
        OnHealth(c.health());
      }
      return true;
    }
    default:
      CloseForViolation(Violation::kUnexpectedMessage,
                        absl::StrCat("the agent sent ", UnexpectedKind(e),
                                     " after the handshake"));
      return false;
  }
}

bool Session::OnStreamMessage(Envelope& e) {
  const uint64_t id = StreamIdOf(e);
  if (e.has_close()) {
    metrics_->stream_close(/*from_agent=*/true, e.close().reason())
        ->Increment();
    if (e.close().reason() != TunnelClose::CANCELLED) {
      agent_errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  std::shared_ptr<common::StreamChannel> ch = FindStream(id);
  if (ch == nullptr) {
    if (NeverOpened(id)) {
      CloseForViolation(
          Violation::kUnknownStream,
          absl::StrCat("the agent sent ", KindName(e), " for stream ", id,
                       ", which the gateway never opened"));
      return false;
    }
    // Messages for streams that already ended are expected in races (the
    // visitor left while data was in flight); count them, drop them.
    ++unknown_stream_messages_;
    return true;
  }
  switch (e.message_case()) {
    case Envelope::kResponse: {
      auto& r = *e.mutable_response();
      if (r.status() < 100 || r.status() > 599) {
        FailStream(id, ch, Violation::kInvalidStatus,
                   TunnelClose::PROTOCOL_ERROR,
                   absl::InvalidArgumentError(absl::StrCat(
                       "response status ", r.status(), " is not 100-599")));
        return true;
      }
      if (r.body().size() > limits_.max_chunk) {
        FailStream(id, ch, Violation::kOversizedChunk,
                   TunnelClose::PROTOCOL_ERROR,
                   absl::InvalidArgumentError("data chunk over the limit"));
        return true;
      }
      // The head goes to the visitor's fiber, the body to the stream's
      // queue: both moved, neither copied.
      std::string body = std::move(*r.mutable_body());
      r.clear_body();
      const bool end = r.end_stream();
      tunnel::v1::TunnelResponse head = std::move(r);
      const int dropped_in_block =
          common::DropUnsafeHeaders(head.mutable_header_block());
      if (dropped_in_block < 0) {
        FailStream(id, ch, Violation::kInvalidHeader,
                   TunnelClose::PROTOCOL_ERROR,
                   absl::InvalidArgumentError(
                       "the response's header block does not parse"));
        return true;
      }
      if (int dropped = common::DropUnsafeHeaders(head.mutable_headers()) +
                        dropped_in_block;
          dropped > 0) {
        // A field with CR, LF or NUL would split the visitor's response;
        // the rest of the response is still good.
        metrics_->violation(Violation::kInvalidHeader)->Increment();
        common::LogEvent(common::LogLevel::kWarning, "agent_protocol_violation")
            .Str("agent_id", agent_id_)
            .Str("session", session_id_)
            .Str("kind", ViolationName(Violation::kInvalidHeader))
            .Int("stream", static_cast<int64_t>(id))
            .Int("fields", dropped)
            .Str("action", "fields_dropped");
      }
      if (absl::Status s = ch->SetHead(std::move(head)); !s.ok()) {
        FailStream(id, ch, Violation::kDuplicateResponse,
                   TunnelClose::PROTOCOL_ERROR, s);
        return true;
      }
      if (!body.empty() || end) {
        // Counted before the visitor can see them (bytes the agent sent).
        bytes_out_.fetch_add(body.size(), std::memory_order_relaxed);
        if (absl::Status s = ch->PushData(std::move(body), end); !s.ok()) {
          FailStream(id, ch, Violation::kFlowControl,
                     TunnelClose::FLOW_CONTROL_ERROR, s);
        }
      }
      return true;
    }
    case Envelope::kData: {
      auto& d = *e.mutable_data();
      if (d.data().size() > limits_.max_chunk) {
        FailStream(id, ch, Violation::kOversizedChunk,
                   TunnelClose::PROTOCOL_ERROR,
                   absl::InvalidArgumentError("data chunk over the limit"));
        return true;
      }
      bytes_out_.fetch_add(d.data().size(), std::memory_order_relaxed);
      if (absl::Status s =
              ch->PushData(std::move(*d.mutable_data()), d.end_stream());
          !s.ok()) {
        FailStream(id, ch,
                   absl::IsFailedPrecondition(s) ? Violation::kDataAfterEnd
                                                 : Violation::kFlowControl,
                   TunnelClose::FLOW_CONTROL_ERROR, s);
      }
      return true;
    }
    case Envelope::kClose:
      ch->Abort(StatusFromClose(e.close()));
      return true;
    default:
      if (absl::Status s =
              ch->AddSendCredit(e.control().window_update().increment());
          !s.ok()) {
        FailStream(id, ch, Violation::kFlowControl,
                   TunnelClose::FLOW_CONTROL_ERROR, s);
      }
      return true;
  }
}

void Session::OnDone() {
  absl::flat_hash_map<uint64_t, std::shared_ptr<common::StreamChannel>> streams;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    finish_requested_ = true;
    outbox_.Clear();
    streams.swap(streams_);
  }
  for (auto& [id, ch] : streams) {
    // Responses that arrived whole before the call ended are still served.
    ch->AbortIfIncomplete(absl::UnavailableError("the agent disconnected"));
  }
  if (relay_ != nullptr) relay_->Unhost(this);
}

}  // namespace tunnel::server
