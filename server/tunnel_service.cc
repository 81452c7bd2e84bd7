#include "server/tunnel_service.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/access_code.h"
#include "common/cidr.h"
#include "common/log.h"
#include "common/password_hash.h"
#include "common/random.h"
#include "common/slug.h"
#include "server/relay_hub.h"
#include "server/visitor_policy.h"

namespace tunnel::server {

using tunnel::v1::ConnectError;
using tunnel::v1::Envelope;

namespace {

// A pool member's request: the token carries the pool (PERMISSION_DENIED
// otherwise), and each slug is the pool's name or NAME-<pool>
// (INVALID_ARGUMENT).
absl::Status CheckPool(const tunnel::v1::ConnectRequest& req,
                       const std::optional<tunnel::v1::Credential>& cred) {
  const std::string& pool = req.pool();
  if (absl::Status s = common::CheckSlug(pool); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("pool name: ", s.message()));
  }
  if (!cred.has_value() || std::find(cred->pools().begin(), cred->pools().end(),
                                     pool) == cred->pools().end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("token ", cred.has_value() ? cred->token_id() : "?",
                     " may not serve pool \"", pool,
                     "\"; issue one with `tunnelctl token issue --id ",
                     req.agent_id(), " --pool ", pool, "`"));
  }
  for (const auto& t : req.tunnels()) {
    if (t.slug() != pool &&
        !absl::EndsWith(t.slug(), absl::StrCat("-", pool))) {
      return absl::InvalidArgumentError(
          absl::StrCat("a member of pool \"", pool, "\" serves \"", pool,
                       "\" and NAME-", pool, ", not \"", t.slug(), "\""));
    }
  }
  return absl::OkStatus();
}

// For the agent_connected log line.
std::string AccessMode(const VisitorPolicy& p) {
  std::vector<absl::string_view> parts;
  if (p.ip_rules != nullptr) parts.push_back("ip_rules");
  if (p.basic_auth != nullptr) parts.push_back("basic_auth");
  if (p.access_code != nullptr) parts.push_back("code");
  return parts.empty() ? "public" : absl::StrJoin(parts, "+");
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// One agent's Connect call on the async API. It lives on one completion
// queue: its thread runs every step (Proceed) and deletes the object once
// the call is over and no operation is outstanding. The Session (shared
// with front-door workers) outlives it when needed; all writes go through
// the Session so there is one outstanding write at most, and writes may be
// started from any thread.
class AgentConnection final : public EnvelopeWriter {
 public:
  enum class Op { kRequest, kRead, kWrite, kFinish, kDone };
  struct Tag {
    AgentConnection* conn;
    Op op;
  };

  // Waits for the next Connect call on `cq`.
  AgentConnection(TunnelServiceImpl* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), stream_(&ctx_) {
    ctx_.AsyncNotifyWhenDone(&done_tag_);
    absl::ReaderMutexLock lock(&service_->ops_mu_);
    if (service_->queues_shut_) return;  // never requested: see Proceed
    requested_ = true;
    service_->RequestConnect(&ctx_, &stream_, cq_, cq_, &request_tag_);
  }

  // The queue's thread: an operation of this call completed.
  void Proceed(Op op, bool ok) {
    switch (op) {
      case Op::kRequest:
        // Not ok: the server is shutting down; nothing else was started.
        if (!ok) {
          delete this;
          return;
        }
        // For the next agent (unless the queues are shutting down).
        if (auto* next = new AgentConnection(service_, cq_);
            !next->requested_) {
          delete next;
        }
        peer_ = ctx_.peer();
        Begin();
        break;
      case Op::kRead:
        OnReadDone(ok);
        break;
      case Op::kWrite:
        session_->OnWriteDone(ok);
        break;
      case Op::kFinish:
        break;
      case Op::kDone:
        if (ctx_.IsCancelled() && session_ != nullptr) {
          session_->Close(
              grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"), false);
        }
        break;
    }
    bool over;
    {
      absl::MutexLock lock(&mu_);
      if (op == Op::kDone) {
        done_ = true;
      } else if (op != Op::kRequest) {
        --pending_;
      }
      // Finish was started (every path ends with it), it and every read and
      // write completed, and gRPC says the call is done.
      over = done_ && finishing_ && pending_ == 0;
    }
    if (over) OnDone();
  }

 private:
  void Begin() {
    // A source that keeps failing is refused before any HMAC work, so a
    // flood of bad calls costs a map lookup each.
    const absl::Time now = absl::Now();
    const std::string limit_key = AuthLimitKey(peer_);
    if (common::AttemptLimiter* limiter = service_->auth_limiter_.get();
        limiter != nullptr) {
      if (absl::Duration wait = limiter->Blocked(limit_key, now);
          wait > absl::ZeroDuration()) {
        service_->metrics_->auth_rate_limited->Increment();
        // Not logged per call: that would let a flood fill the log.
        int64_t wait_ms =
            absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Seconds(1)));
        ctx_.AddTrailingMetadata(common::kAuthRetryAfterKey,
                                 absl::StrCat(wait_ms));
        End(grpc::Status(
            grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("too many failed authentications from ", limit_key,
                         " (limit ",
                         service_->options_.auth_failures_per_minute,
                         " per minute); retry in ", wait_ms / 1000, "s")));
        return;
      }
    }
    std::map<std::string, std::string> metadata;
    for (const auto& [key, value] : ctx_.client_metadata()) {
      metadata.emplace(std::string(key.data(), key.size()),
                       std::string(value.data(), value.size()));
    }
    common::AuthResult auth = service_->verifier_->Verify(metadata, now);
    if (!auth.ok) {
      ++service_->auth_failures_;
      if (service_->auth_limiter_ != nullptr) {
        service_->auth_limiter_->Failed(limit_key, now);
      }
      service_->metrics_->auth_failure(auth.failure)->Increment();
      // auth.message never contains a secret (hmac_auth.h).
      common::LogEvent(common::LogLevel::kWarning, "agent_auth_failed")
          .Str("peer", peer_)
          .Str("reason", common::AuthFailureName(auth.failure))
          .Str("detail", auth.message);
      End(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, auth.message));
      return;
    }
    session_ = std::make_shared<Session>(
        common::RandomHex(8), auth.agent_id, auth.token_id, peer_,
        service_->options_.limits, this, service_->metrics_);
    StartRead();
  }

 public:
  // EnvelopeWriter, called by Session only (any thread).
  void Write(const Envelope* e, bool more) override {
    absl::ReaderMutexLock ops(&service_->ops_mu_);
    if (service_->queues_shut_) return;  // the queue is draining: no more
    {
      absl::MutexLock lock(&mu_);
      ++pending_;
    }
    stream_.Write(
        *e,
        more ? grpc::WriteOptions().set_buffer_hint() : grpc::WriteOptions(),
        &write_tag_);
  }
  void End(grpc::Status status) override {
    absl::ReaderMutexLock ops(&service_->ops_mu_);
    {
      absl::MutexLock lock(&mu_);
      finishing_ = true;
      if (service_->queues_shut_) return;
      ++pending_;
    }
    stream_.Finish(status, &finish_tag_);
  }

 private:
  void StartRead() {
    absl::ReaderMutexLock ops(&service_->ops_mu_);
    if (service_->queues_shut_) return;
    {
      absl::MutexLock lock(&mu_);
      ++pending_;
    }
    stream_.Read(&in_, &read_tag_);
  }

  void OnReadDone(bool ok) {
    if (!ok) {
      // The agent half-closed or the call broke (a message over gRPC's own
      // cap, twice max_message_bytes, also ends here: gRPC refuses it
      // unseen and tells the agent RESOURCE_EXHAUSTED).
      session_->Close(grpc::Status::OK, false);
      return;
    }
    session_->Touch();
    // A batch has its own limit, the size agreed at connect (a batch that
    // was never agreed is refused by the session).
    const size_t limit =
        in_.has_batch() && session_->batch_bytes() > 0
            ? session_->batch_bytes()
            : static_cast<size_t>(service_->options_.max_message_bytes);
    if (const size_t size = in_.ByteSizeLong(); size > limit) {
      const std::string detail =
          absl::StrCat(in_.has_batch() ? "a batch of " : "a message of ", size,
                       " bytes, over ", limit);
      session_->NoteViolation(Violation::kOversizedMessage, detail);
      session_->Close(
          grpc::Status(
              grpc::StatusCode::RESOURCE_EXHAUSTED,
              absl::StrCat("protocol violation (oversized_message): ", detail)),
          false);
      return;
    }
    if (!registered_) {
      HandleConnect();
    } else {
      session_->OnEnvelope(std::move(in_));
    }
    if (!session_->closing()) StartRead();
  }

  void OnDone() {
    if (session_ != nullptr) {
      if (registered_) {
        service_->registry_->Unregister(session_.get());
        if (service_->cluster_ != nullptr) service_->cluster_->Changed();
      }
      if (accepted_) {
        service_->metrics_->agent_disconnects->Increment();
        grpc::Status why = session_->end_status();
        common::LogEvent(common::LogLevel::kInfo, "agent_disconnected")
            .Str("agent_id", session_->agent_id())
            .Str("session", session_->id())
            .Str("peer", peer_)
            .Str("reason", why.error_message().empty()
                               ? "the agent closed the stream"
                               : why.error_message())
            .Num("connected_s",
                 absl::ToDoubleSeconds(absl::Now() - connected_at_), 1);
      }
      session_->OnDone();
    }
    delete this;
  }

 private:
  void Refuse(ConnectError::Code code, const std::string& message,
              grpc::StatusCode status,
              absl::Duration retry_after = absl::ZeroDuration()) {
    common::LogEvent(common::LogLevel::kWarning, "agent_refused")
        .Str("agent_id", session_->agent_id())
        .Str("peer", peer_)
        .Str("code", absl::AsciiStrToLower(ConnectError::Code_Name(code)))
        .Str("reason", message);
    service_->metrics_->connect_refusal(code)->Increment();
    Envelope e;
    auto* err = e.mutable_connect_error();
    err->set_code(code);
    err->set_message(message);
    err->set_retry_after_ms(
        static_cast<uint32_t>(absl::ToInt64Milliseconds(retry_after)));
    session_->Send(std::move(e));
    session_->Close(grpc::Status(status, message), /*drain=*/true);
  }

  void HandleConnect() {
    const TunnelServiceOptions& opts = service_->options_;
    if (!in_.has_connect()) {
      Refuse(ConnectError::INVALID_REQUEST,
             "the first message must be a connect request",
             grpc::StatusCode::INVALID_ARGUMENT);
      return;
    }
    const auto& req = in_.connect();
    if (req.protocol_version() != tunnel::v1::PROTOCOL_VERSION_1) {
      Refuse(ConnectError::UNSUPPORTED_VERSION,
             absl::StrCat("protocol version ", req.protocol_version(),
                          " is not supported; this gateway speaks 1"),
             grpc::StatusCode::FAILED_PRECONDITION);
      return;
    }
    if (req.agent_id() != session_->agent_id()) {
      Refuse(ConnectError::AGENT_ID_MISMATCH,
             "connect.agent_id differs from the authenticated agent id",
             grpc::StatusCode::PERMISSION_DENIED);
      return;
    }
    // An agent hosting encrypted shares (agent-tunnel share) may have no
    // public tunnel.
    const bool hosts_shares = !req.relay_sessions().empty();
    if ((req.tunnels().empty() && !hosts_shares) ||
        static_cast<size_t>(req.tunnels_size()) > opts.max_tunnels_per_agent) {
      Refuse(ConnectError::INVALID_REQUEST,
             absl::StrCat("an agent must ask for 1 to ",
                          opts.max_tunnels_per_agent, " tunnels, not ",
                          req.tunnels_size()),
             grpc::StatusCode::INVALID_ARGUMENT);
      return;
    }
    if (hosts_shares && service_->relay_ == nullptr) {
      Refuse(ConnectError::INVALID_REQUEST,
             "this gateway does not relay encrypted shares (started with "
             "--relay-max-sessions 0)",
             grpc::StatusCode::FAILED_PRECONDITION);
      return;
    }
    if (static_cast<size_t>(req.relay_sessions_size()) >
        opts.max_tunnels_per_agent) {
      Refuse(
          ConnectError::INVALID_REQUEST,
          absl::StrCat("an agent may host at most ", opts.max_tunnels_per_agent,
                       " shares, not ", req.relay_sessions_size()),
          grpc::StatusCode::INVALID_ARGUMENT);
      return;
    }
    // From here on the session belongs to the hub, which forgets it when
    // it ends; a share-only one is registered beside the agent's tunnel
    // session.
    if (hosts_shares) {
      session_->SetRelay(service_->relay_, req.tunnels().empty());
    }
    if (req.random_slug()) {
      // The gateway chooses: NAME-<random> for named tunnels, and the
      // random part alone for the unnamed one.
      const std::string base = service_->registry_->UnusedRandomSlug();
      for (auto& t : *in_.mutable_connect()->mutable_tunnels()) {
        t.set_slug(
            t.name().empty()
                ? base
                : absl::StrCat(absl::AsciiStrToLower(t.name()), "-", base));
      }
    }
    const std::optional<tunnel::v1::Credential> cred =
        service_->verifier_->store()->Find(session_->token_id());
    if (!req.pool().empty()) {
      if (absl::Status s = CheckPool(req, cred); !s.ok()) {
        Refuse(absl::IsPermissionDenied(s) ? ConnectError::POOL_NOT_ALLOWED
                                           : ConnectError::INVALID_SLUG,
               std::string(s.message()),
               absl::IsPermissionDenied(s)
                   ? grpc::StatusCode::PERMISSION_DENIED
                   : grpc::StatusCode::INVALID_ARGUMENT);
        return;
      }
    }
    std::vector<std::string> slugs;
    absl::flat_hash_set<std::string> seen;
    for (const auto& t : req.tunnels()) {
      if (absl::Status s = common::CheckSlug(t.slug()); !s.ok()) {
        Refuse(ConnectError::INVALID_SLUG, std::string(s.message()),
               grpc::StatusCode::INVALID_ARGUMENT);
        return;
      }
      if (!seen.insert(t.slug()).second) {
        Refuse(ConnectError::INVALID_SLUG,
               absl::StrCat("slug \"", t.slug(), "\" is asked for twice"),
               grpc::StatusCode::INVALID_ARGUMENT);
        return;
      }
      slugs.push_back(t.slug());
    }
    absl::StatusOr<VisitorPolicy> policy =
        ParseTunnelPolicy(TunnelPolicyOf(req));
    if (!policy.ok()) {
      Refuse(ConnectError::INVALID_REQUEST,
             std::string(policy.status().message()),
             grpc::StatusCode::INVALID_ARGUMENT);
      return;
    }
    session_->SetAgentReceiveWindow(req.receive_window());
    session_->SetHeaderBlocks(req.header_blocks());
    std::vector<SessionTunnel> tunnels;
    for (const auto& t : req.tunnels()) {
      tunnels.push_back(PublicTunnel(opts, t.name(), t.slug()));
    }
    session_->SetTunnels(tunnels, absl::Now());
    session_->SetPolicy(TunnelPolicyOf(req), req.pool());
    if (cred.has_value()) {
      session_->set_token_expiry(common::CredentialExpiry(*cred));
    }
    // At capacity: a new agent is told to come back later (an agent that
    // replaces its own session does not add one).
    if (service_->registry_->session_count() >= opts.max_agents &&
        service_->registry_->FindByAgent(session_->registry_key()) == nullptr) {
      service_->metrics_->max_agents_rejections->Increment();
      Refuse(ConnectError::UNAVAILABLE,
             absl::StrCat("the gateway is at its limit of ", opts.max_agents,
                          " connected agents; retrying later"),
             grpc::StatusCode::UNAVAILABLE, opts.busy_retry_after);
      return;
    }
    // A reload may have revoked the token since Verify (the agent chooses
    // when to send its connect request): check before taking the agent's
    // place, and once more after Register, because the reload's sweep only
    // sees registered sessions.
    if (absl::Status live = service_->verifier_->store()->CheckLive(
            session_->token_id(), session_->agent_id());
        !live.ok()) {
      service_->CloseRevoked(session_, live);
      return;
    }
    if (service_->cluster_ != nullptr) {
      if (absl::Status s = service_->cluster_->Claim(
              slugs, session_->agent_id(), req.pool());
          !s.ok()) {
        Refuse(ConnectError::SLUG_TAKEN, std::string(s.message()),
               grpc::StatusCode::ALREADY_EXISTS);
        return;
      }
    }
    if (hosts_shares) {
      const std::vector<std::string> ids(req.relay_sessions().begin(),
                                         req.relay_sessions().end());
      if (absl::Status s = service_->relay_->Host(session_, ids); !s.ok()) {
        Refuse(absl::IsResourceExhausted(s) ? ConnectError::UNAVAILABLE
                                            : ConnectError::INVALID_REQUEST,
               std::string(s.message()),
               absl::IsResourceExhausted(s)
                   ? grpc::StatusCode::RESOURCE_EXHAUSTED
                   : grpc::StatusCode::INVALID_ARGUMENT,
               opts.busy_retry_after);
        return;
      }
    }
    std::shared_ptr<Session> replaced;
    if (absl::Status s = service_->registry_->Register(
            session_, slugs, &replaced, *policy, req.pool());
        !s.ok()) {
      Refuse(ConnectError::SLUG_TAKEN, std::string(s.message()),
             grpc::StatusCode::ALREADY_EXISTS);
      return;
    }
    registered_ = true;
    if (service_->cluster_ != nullptr) service_->cluster_->Changed();
    if (replaced != nullptr) {
      const size_t in_flight = replaced->stream_count();
      TUNNEL_LOG(INFO) << "agent " << session_->agent_id()
                       << " reconnected; its previous session "
                       << replaced->id() << " closes"
                       << (in_flight == 0
                               ? ""
                               : absl::StrCat(" once its ", in_flight,
                                              " request(s) in flight finish"));
      if (in_flight == 0) {
        TunnelServiceImpl::CloseReplaced(*replaced);
      } else {
        // It left the routes already: it finishes what it has, then the
        // heartbeat thread closes it (CloseReplacedSessions).
        replaced->Retire(
            "another connection with the same agent id took over; this one "
            "finishes its requests in flight",
            "the agent reconnected");
        absl::MutexLock lock(&service_->replaced_mu_);
        service_->replaced_.push_back(replaced);
      }
    }

    if (absl::Status live = service_->verifier_->store()->CheckLive(
            session_->token_id(), session_->agent_id());
        !live.ok()) {
      service_->CloseRevoked(session_, live);
      return;
    }
    accepted_ = true;
    service_->metrics_->agent_connects->Increment();

    Envelope e;
    auto* acc = e.mutable_accepted();
    acc->set_session_id(session_->id());
    acc->set_stream_window(opts.limits.gateway_receive_window);
    acc->set_max_chunk_bytes(opts.limits.max_chunk);
    acc->set_heartbeat_interval_ms(static_cast<uint32_t>(
        absl::ToInt64Milliseconds(opts.heartbeat_interval)));
    // Batches when both sides can: the smaller limit holds both ways.
    const uint32_t batch_bytes =
        req.max_batch_bytes() == 0 || opts.max_batch_bytes == 0
            ? 0
            : std::min(req.max_batch_bytes(), opts.max_batch_bytes);
    acc->set_max_batch_bytes(batch_bytes);
    acc->set_goaway_ack(true);
    acc->set_header_blocks(req.header_blocks());
    if (hosts_shares) {
      acc->set_relay_max_frame_bytes(service_->relay_->max_frame_bytes());
      acc->set_relay_url(absl::StrCat(
          opts.public_scheme, "://", opts.domain,
          opts.public_port > 0 ? absl::StrCat(":", opts.public_port) : "",
          "/relay/"));
    }
    if (const absl::Time expiry = session_->token_expiry();
        expiry != absl::InfiniteFuture()) {
      acc->set_token_expires_unix(absl::ToUnixSeconds(expiry));
    }
    for (const SessionTunnel& t : tunnels) {
      auto* at = acc->add_tunnels();
      at->set_name(t.name);
      at->set_slug(t.slug);
      at->set_url(t.url);
      at->set_path_url(t.path_url);
    }
    session_->Send(std::move(e));
    // ConnectAccepted is never part of a batch (Outbox keeps handshake
    // messages plain), so the agent reads it plainly first.
    session_->EnableBatching(batch_bytes);
    if (hosts_shares) service_->relay_->Announce(session_);
    connected_at_ = absl::Now();
    common::LogEvent(common::LogLevel::kInfo, "agent_connected")
        .Str("agent_id", session_->agent_id())
        .Str("session", session_->id())
        .Str("token", session_->token_id())
        .Str("peer", peer_)
        .Str("tunnels", absl::StrJoin(slugs, ","))
        .Str("pool", req.pool())
        .Str("access", AccessMode(*policy));
  }

  TunnelServiceImpl* const service_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<Envelope, Envelope> stream_;
  Tag request_tag_{this, Op::kRequest};
  Tag read_tag_{this, Op::kRead};
  Tag write_tag_{this, Op::kWrite};
  Tag finish_tag_{this, Op::kFinish};
  Tag done_tag_{this, Op::kDone};
  std::string peer_;
  std::shared_ptr<Session> session_;
  Envelope in_;
  bool registered_ = false;
  bool accepted_ = false;  // ConnectAccepted sent: counted and logged
  absl::Time connected_at_;
  absl::Mutex mu_;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;  // reads, writes, Finish
  bool requested_ = false;  // RequestConnect was started (queues open)
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

std::string AuthLimitKey(absl::string_view peer) {
  if (absl::ConsumePrefix(&peer, "ipv4:")) {
    return std::string(peer.substr(0, peer.rfind(':')));
  }
  if (absl::ConsumePrefix(&peer, "ipv6:")) {
    // gRPC percent-encodes the brackets: "ipv6:%5B::1%5D:443".
    std::string decoded;
    for (size_t i = 0; i < peer.size(); ++i) {
      int hi, lo;
      if (peer[i] == '%' && i + 2 < peer.size() &&
          (hi = HexDigit(peer[i + 1])) >= 0 &&
          (lo = HexDigit(peer[i + 2])) >= 0) {
        decoded.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
      } else {
        decoded.push_back(peer[i]);
      }
    }
    absl::string_view addr = decoded;
    if (absl::ConsumePrefix(&addr, "[")) addr = addr.substr(0, addr.find(']'));
    // Zone ids ("fe80::1%eth0") are not for inet_pton.
    addr = addr.substr(0, addr.find('%'));
    in6_addr a;
    if (inet_pton(AF_INET6, std::string(addr).c_str(), &a) == 1) {
      char text[INET6_ADDRSTRLEN];
      if (IN6_IS_ADDR_V4MAPPED(&a)) {
        return inet_ntop(AF_INET, &a.s6_addr[12], text, sizeof(text));
      }
      std::memset(&a.s6_addr[8], 0, 8);
      return absl::StrCat(inet_ntop(AF_INET6, &a, text, sizeof(text)), "/64");
    }
  }
  return std::string(peer);
}

SessionTunnel PublicTunnel(const TunnelServiceOptions& options,
                           absl::string_view name, absl::string_view slug) {
  std::string port =
      options.public_port > 0 ? absl::StrCat(":", options.public_port) : "";
  SessionTunnel t;
  t.name = std::string(name);
  t.slug = std::string(slug);
  t.url = absl::StrCat(options.public_scheme, "://", slug, ".", options.domain,
                       port, "/");
  t.path_url = absl::StrCat(options.public_scheme, "://", options.domain, port,
                            "/t/", slug, "/");
  return t;
}

TunnelServiceImpl::TunnelServiceImpl(TunnelServiceOptions options,
                                     SessionRegistry* registry,
                                     common::AuthVerifier* verifier,
                                     const CoreMetrics* metrics)
    : options_(std::move(options)),
      registry_(registry),
      verifier_(verifier),
      metrics_(metrics) {
  if (options_.auth_failures_per_minute > 0) {
    auth_limiter_ = std::make_unique<common::AttemptLimiter>(
        options_.auth_failures_per_minute, options_.auth_failure_max_ips);
  }
}

void TunnelServiceImpl::CloseRevoked(const std::shared_ptr<Session>& session,
                                     const absl::Status& why) {
  metrics_->sessions_revoked->Increment();
  common::LogEvent(common::LogLevel::kWarning, "agent_token_revoked")
      .Str("agent_id", session->agent_id())
      .Str("session", session->id())
      .Str("token", session->token_id())
      .Str("peer", session->peer())
      .Str("reason", why.message());
  EndForCredentials(*session, ConnectError::CREDENTIALS_REVOKED, why.message());
}

void TunnelServiceImpl::EndForCredentials(Session& session,
                                          ConnectError::Code code,
                                          absl::string_view why) {
  const std::string message = absl::StrCat(why, "; the session of agent ",
                                           session.agent_id(), " is closed");
  Envelope bye;
  auto* err = bye.mutable_connect_error();
  err->set_code(code);
  err->set_message(message);
  session.Send(std::move(bye));
  session.Close(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, message),
                /*drain=*/true);
}

void TunnelServiceImpl::CloseReplaced(Session& session) {
  Envelope bye;
  auto* err = bye.mutable_connect_error();
  err->set_code(ConnectError::REPLACED);
  err->set_message(
      "another connection with the same agent id replaced this one");
  session.Send(std::move(bye));
  session.Close(
      grpc::Status(grpc::StatusCode::ABORTED, "replaced by a newer connection"),
      /*drain=*/true);
}

size_t TunnelServiceImpl::CloseReplacedSessions(absl::Time now,
                                                absl::Duration drain_timeout) {
  std::vector<std::shared_ptr<Session>> done;
  {
    absl::MutexLock lock(&replaced_mu_);
    for (auto it = replaced_.begin(); it != replaced_.end();) {
      Session& s = **it;
      if (s.closing() || s.stream_count() == 0 ||
          now - s.retired_at() >= drain_timeout) {
        if (!s.closing()) done.push_back(*it);
        it = replaced_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::shared_ptr<Session>& s : done) CloseReplaced(*s);
  return done.size();
}

size_t TunnelServiceImpl::CloseSessionsWithoutLiveToken() {
  size_t closed = 0;
  for (const std::shared_ptr<Session>& s : registry_->Sessions()) {
    if (absl::Status live =
            verifier_->store()->CheckLive(s->token_id(), s->agent_id());
        !live.ok()) {
      CloseRevoked(s, live);
      ++closed;
    } else if (std::optional<tunnel::v1::Credential> c =
                   verifier_->store()->Find(s->token_id())) {
      s->set_token_expiry(common::CredentialExpiry(*c));  // extended?
    }
  }
  return closed;
}

size_t TunnelServiceImpl::ExpireSessions(absl::Time now,
                                         absl::Duration drain_timeout) {
  size_t closed = 0;
  for (const std::shared_ptr<Session>& s : registry_->Sessions()) {
    const absl::Time expiry = s->token_expiry();
    if (now < expiry || s->closing()) continue;
    const std::string why = common::ExpiredTokenMessage(s->token_id(), expiry);
    if (s->Retire(why, absl::StrCat("the agent's token expired at ",
                                    common::FormatUtc(expiry)))) {
      metrics_->sessions_expired->Increment();
      common::LogEvent(common::LogLevel::kWarning, "agent_token_expired")
          .Str("agent_id", s->agent_id())
          .Str("session", s->id())
          .Str("token", s->token_id())
          .Str("expired_at", common::FormatUtc(expiry))
          .Int("requests_in_flight", static_cast<int64_t>(s->stream_count()));
    }
    if (s->stream_count() > 0 && now - s->retired_at() < drain_timeout) {
      continue;  // its requests in flight finish first
    }
    EndForCredentials(*s, ConnectError::CREDENTIALS_EXPIRED, why);
    ++closed;
  }
  return closed;
}

TunnelServiceImpl::~TunnelServiceImpl() { StopServing(); }

void TunnelServiceImpl::Serve(
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues) {
  queues_ = std::move(queues);
  for (auto& q : queues_) {
    grpc::ServerCompletionQueue* cq = q.get();
    // A few calls waiting, so a burst of reconnecting agents is matched
    // without a round trip through the thread for each.
    for (int i = 0; i < 8; ++i) new AgentConnection(this, cq);
    threads_.emplace_back([cq] {
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) {
        auto* t = static_cast<AgentConnection::Tag*>(tag);
        t->conn->Proceed(t->op, ok);
      }
    });
  }
}

void TunnelServiceImpl::StopServing() {
  {
    absl::MutexLock lock(&ops_mu_);
    queues_shut_ = true;
  }
  for (auto& q : queues_) q->Shutdown();
  for (auto& t : threads_) t.join();
  threads_.clear();
  queues_.clear();
}

}  // namespace tunnel::server
