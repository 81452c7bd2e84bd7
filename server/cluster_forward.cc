#include "server/cluster_forward.h"

#include <atomic>
#include <deque>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/fiber_wait.h"
#include "common/flow_control.h"
#include "common/header_block.h"
#include "common/hmac_auth.h"
#include "common/log.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "httpfront/front_server.h"

namespace tunnel::server {

using tunnel::v1::ForwardFrame;

struct ForwardCounters {
  explicit ForwardCounters(common::MetricsRegistry* metrics, const char* side) {
    common::CounterFamily* requests = metrics->AddCounter(
        absl::StrCat("tunnel_cluster_forwarded_", side, "_total"),
        absl::StrCat("Requests ",
                     std::string(side) == "out"
                         ? "this replica forwarded to the replica whose agent "
                           "serves the tunnel"
                         : "other replicas forwarded to this one",
                     ", by outcome of the open"),
        {"outcome"});
    opened = requests->WithLabels({"opened"});
    refused = requests->WithLabels({"refused"});
    // Only a caller can fail to reach the other side.
    if (std::string(side) == "out") {
      failed = requests->WithLabels({"unreachable"});
    }
  }
  common::Counter* opened;   // the owner opened the stream
  common::Counter* refused;  // the owner said no (out) / a bad signature (in)
  common::Counter* failed = nullptr;  // out: the owner could not be reached
};

namespace {

// Credit each side of a forwarded stream starts with.
constexpr uint32_t kForwardWindow = common::kDefaultStreamWindow;

absl::Status StatusOf(const tunnel::v1::ForwardStatus& s) {
  absl::Status st(static_cast<absl::StatusCode>(s.code()), s.message());
  if (st.ok()) st = absl::UnknownError(s.message());
  if (s.local_service_unhealthy()) {
    st = LocalServiceUnhealthyError(s.message());
  }
  return st;
}

ForwardFrame StatusFrame(const absl::Status& s) {
  ForwardFrame f;
  auto* st = f.mutable_status();
  st->set_code(static_cast<int32_t>(s.code()));
  st->set_message(std::string(s.message()));
  st->set_local_service_unhealthy(IsLocalServiceUnhealthy(s));
  return f;
}

ForwardFrame DataFrame(std::string data, bool end) {
  ForwardFrame f;
  f.mutable_data()->set_data(std::move(data));
  f.mutable_data()->set_end_stream(end);
  return f;
}

ForwardFrame WindowFrame(uint32_t increment) {
  ForwardFrame f;
  f.mutable_window_update()->set_increment(increment);
  return f;
}

// What a Forward call's reactor does for the code that relays its stream.
class CallOps {
 public:
  virtual ~CallOps() = default;
  virtual void DoWrite(const ForwardFrame* f) = 0;
  virtual void DoFinish(const grpc::Status& s) = 0;  // server side only
};

// State a Forward call's reactor shares with the fibers relaying its
// stream: the credit both ways (chan) and the write queue, one write
// outstanding at a time. Reactor methods are never called under mu.
struct Link {
  Link() : chan(kForwardWindow, kForwardWindow) {}

  common::StreamChannel chan;

  // Any thread. False once the call is over or finishing.
  bool Send(ForwardFrame f) {
    CallOps* ops;
    {
      absl::MutexLock lock(&mu);
      if (ops_ == nullptr || finishing_ || failed_) return false;
      if (writing_) {
        queue_.push_back(std::move(f));
        return true;
      }
      writing_ = true;
      current_ = std::move(f);
      ops = ops_;
    }
    ops->DoWrite(&current_);
    return true;
  }

  // The reactor's OnWriteDone.
  void WriteDone(bool ok) {
    CallOps* ops;
    bool finish = false;
    {
      absl::MutexLock lock(&mu);
      if (!ok) failed_ = true;
      if (failed_ || queue_.empty()) {
        writing_ = false;
        queue_.clear();
        finish = finishing_ && !finished_;
        if (finish) finished_ = true;
        if (!finish) return;
      } else {
        current_ = std::move(queue_.front());
        queue_.pop_front();
      }
      ops = ops_;
    }
    if (finish) {
      ops->DoFinish(finish_status_);
    } else {
      ops->DoWrite(&current_);
    }
  }

  // Server side: ends the call once what is queued is written. Once.
  void Finish(grpc::Status s) {
    CallOps* ops;
    {
      absl::MutexLock lock(&mu);
      if (ops_ == nullptr || finishing_) return;
      finishing_ = true;
      finish_status_ = std::move(s);
      if (writing_) return;  // WriteDone finishes
      finished_ = true;
      ops = ops_;
    }
    ops->DoFinish(finish_status_);
  }

  void Attach(CallOps* ops) {
    absl::MutexLock lock(&mu);
    ops_ = ops;
  }
  // The reactor's OnDone: nothing touches it from now on.
  void Detach() {
    absl::MutexLock lock(&mu);
    ops_ = nullptr;
    queue_.clear();
  }

  absl::Mutex mu;
  // Client side: the owner's answer to `open`.
  bool opened ABSL_GUARDED_BY(mu) = false;
  absl::Status open_error ABSL_GUARDED_BY(mu);
  common::FiberWaitList open_waiters ABSL_GUARDED_BY(mu);
  // Server side: whether the relay fiber runs (and finishes the call) or
  // never will (the call ended first, or no fiber could be had).
  enum class Relay { kPending, kRunning, kDropped };
  Relay relay ABSL_GUARDED_BY(mu) = Relay::kPending;

 private:
  CallOps* ops_ ABSL_GUARDED_BY(mu) = nullptr;
  std::deque<ForwardFrame> queue_ ABSL_GUARDED_BY(mu);
  ForwardFrame current_;  // owned by whoever set writing_
  bool writing_ ABSL_GUARDED_BY(mu) = false;
  bool failed_ ABSL_GUARDED_BY(mu) = false;
  bool finishing_ ABSL_GUARDED_BY(mu) = false;
  bool finished_ ABSL_GUARDED_BY(mu) = false;
  grpc::Status finish_status_;  // set once, before finishing_ is read true
};

// Sends `data` (and `end`) as data frames within the peer's credit.
// False when the link failed or the deadline passed.
bool SendWithCredit(Link& link, std::string data, bool end,
                    absl::Time deadline) {
  size_t off = 0;
  while (off < data.size()) {
    absl::StatusOr<size_t> n = link.chan.AcquireSendCredit(
        std::min<size_t>(data.size() - off, common::kMaxChunkBytes), deadline);
    if (!n.ok()) return false;
    const bool last = off + *n == data.size();
    if (!link.Send(DataFrame(data.substr(off, *n), end && last))) return false;
    off += *n;
  }
  if (data.empty() && end) return link.Send(DataFrame("", true));
  return true;
}

// Marks an open that failed because the owner could not be reached (the
// next replica serving the slug is tried), not because it said no.
constexpr char kUnreachablePayload[] = "tunnel.v1/cluster-unreachable";

absl::Status ReplicaGone() {
  return absl::AbortedError(
      "the gateway replica serving this tunnel went away mid-request");
}

}  // namespace

// --- The forwarding side -------------------------------------------------

struct ClusterRouter::Peer {
  std::string replica_id;
  std::string advertise;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<tunnel::v1::ClusterService::Stub> stub;
};

namespace {

class ForwardCall final
    : public grpc::ClientBidiReactor<ForwardFrame, ForwardFrame>,
      public CallOps {
 public:
  ForwardCall(std::shared_ptr<Link> link, std::string replica)
      : link_(std::move(link)), replica_(std::move(replica)) {
    link_->Attach(this);
  }

  grpc::ClientContext* context() { return &context_; }

  void Begin(tunnel::v1::ClusterService::Stub* stub, ForwardFrame open) {
    stub->async()->Forward(&context_, this);
    // Held until the stream object lets go, so that a write it starts
    // can never find the reactor gone.
    AddHold();
    link_->Send(std::move(open));
    StartRead(&in_);
    StartCall();
  }
  void Release() { RemoveHold(); }
  void Cancel() { context_.TryCancel(); }

  void DoWrite(const ForwardFrame* f) override { StartWrite(f); }
  void DoFinish(const grpc::Status&) override {}

  void OnWriteDone(bool ok) override { link_->WriteDone(ok); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // Why comes with OnDone, which waits for the stream to let go; an
      // open waiting for the answer learns now that there is none.
      Ended(opened() ? ReplicaGone() : Unreachable());
      return;
    }
    common::StreamChannel& chan = link_->chan;
    switch (in_.frame_case()) {
      case ForwardFrame::kOpened: {
        absl::MutexLock lock(&link_->mu);
        link_->opened = true;
        link_->open_waiters.WakeAll();
        break;
      }
      case ForwardFrame::kResponse: {
        // As from an agent's session: the head alone (its end_stream a
        // hint); every body byte, and the end, come as data.
        tunnel::v1::TunnelResponse head = std::move(*in_.mutable_response());
        if (!head.body().empty()) {
          Broken(absl::InvalidArgumentError("body bytes in the head"));
        } else if (absl::Status s = chan.SetHead(std::move(head)); !s.ok()) {
          Broken(s);
        }
        break;
      }
      case ForwardFrame::kData: {
        tunnel::v1::TunnelData& d = *in_.mutable_data();
        if (absl::Status s =
                chan.PushData(std::move(*d.mutable_data()), d.end_stream());
            !s.ok()) {
          Broken(s);
        }
        break;
      }
      case ForwardFrame::kWindowUpdate:
        if (absl::Status s =
                chan.AddSendCredit(in_.window_update().increment());
            !s.ok()) {
          Broken(s);
        }
        break;
      case ForwardFrame::kStatus: {
        absl::Status st = StatusOf(in_.status());
        absl::MutexLock lock(&link_->mu);
        if (!link_->opened) {
          link_->open_error = st;
          link_->open_waiters.WakeAll();
        }
        chan.Abort(st);
        break;
      }
      default:
        Broken(absl::InternalError("unexpected frame from the owner"));
    }
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& s) override {
    if (!s.ok() && !opened() && s.error_code() != grpc::StatusCode::CANCELLED) {
      // The call never got through (refused connection, TLS, a wrong
      // secret): say why, at most once a second.
      static std::atomic<int64_t> last_log_s{0};
      const int64_t now_s = absl::ToUnixSeconds(absl::Now());
      if (last_log_s.exchange(now_s) != now_s) {
        TUNNEL_LOG(WARNING) << "cluster: cannot forward to replica " << replica_
                            << ": " << s.error_message();
      }
    }
    Ended(s.ok() ? ReplicaGone() : Unreachable());
    link_->Detach();
    delete this;
  }

 private:
  // The owner broke the protocol: the stream fails, the call is cancelled.
  void Broken(const absl::Status& why) {
    TUNNEL_LOG(WARNING) << "cluster: forwarded stream broken: "
                        << why.message();
    link_->chan.Abort(absl::AbortedError(
        absl::StrCat("the gateway replica serving this tunnel broke the "
                     "forwarding protocol: ",
                     why.message())));
    context_.TryCancel();
  }
  bool opened() {
    absl::MutexLock lock(&link_->mu);
    return link_->opened;
  }
  static absl::Status Unreachable() {
    return absl::UnavailableError(
        "the gateway replica serving this tunnel cannot be reached");
  }
  void Ended(const absl::Status& why) {
    absl::MutexLock lock(&link_->mu);
    if (!link_->opened && link_->open_error.ok()) {
      link_->open_error = absl::UnavailableError(why.message());
      link_->open_error.SetPayload(kUnreachablePayload, absl::Cord("1"));
      link_->open_waiters.WakeAll();
    }
    link_->chan.AbortIfIncomplete(why);
  }

  std::shared_ptr<Link> link_;
  const std::string replica_;
  grpc::ClientContext context_;
  ForwardFrame in_;
};

// A request's stream on another replica, as the front door sees it.
class ForwardStream final : public TunnelStream {
 public:
  ForwardStream(std::shared_ptr<Link> link, ForwardCall* call, uint64_t id,
                const void* owner, bool request_finished)
      : link_(std::move(link)),
        call_(call),
        id_(id),
        owner_(owner),
        request_finished_(request_finished) {}
  ~ForwardStream() override {
    if (!request_finished_ || !link_->chan.receive_finished()) {
      call_->Cancel();
    }
    call_->Release();
  }

  uint64_t id() const override { return id_; }
  const void* owner() const override { return owner_; }

  absl::Status SendBody(absl::string_view data, absl::Time deadline) override {
    if (!SendWithCredit(*link_, std::string(data), false, deadline)) {
      absl::Status s = link_->chan.status();
      return s.ok() ? absl::DeadlineExceededError(
                          "timed out waiting for the peer to accept more data")
                    : s;
    }
    return absl::OkStatus();
  }
  absl::Status FinishBody() override {
    request_finished_ = true;
    if (!link_->Send(DataFrame("", true))) {
      absl::Status s = link_->chan.status();
      return s.ok() ? ReplicaGone() : s;
    }
    return absl::OkStatus();
  }
  absl::StatusOr<tunnel::v1::TunnelResponse> AwaitResponseHead(
      absl::Time deadline) override {
    return link_->chan.AwaitHead(deadline);
  }
  absl::StatusOr<common::Chunk> ReadBody(absl::Time deadline) override {
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> c = link_->chan.PopData(deadline, &ack);
    if (ack > 0) link_->Send(WindowFrame(ack));
    return c;
  }
  void Cancel(absl::string_view why) override {
    link_->chan.Abort(absl::CancelledError(why));
    call_->Cancel();
  }

 private:
  std::shared_ptr<Link> link_;
  ForwardCall* const call_;  // alive while we hold it
  const uint64_t id_;
  const void* const owner_;
  bool request_finished_;
};

std::atomic<uint64_t> next_forward_id{1};

}  // namespace

ClusterRouter::ClusterRouter(
    SessionRegistry* local, ClusterDirectory* directory,
    std::shared_ptr<grpc::ChannelCredentials> credentials,
    common::MetricsRegistry* metrics)
    : local_(local),
      directory_(directory),
      credentials_(std::move(credentials)),
      counters_(std::make_unique<ForwardCounters>(metrics, "out")) {}

ClusterRouter::~ClusterRouter() = default;

ClusterRouter::Peer* ClusterRouter::PeerFor(const RemoteRoute& route) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Peer>& p = peers_[route.advertise];
  if (p == nullptr) {
    p = std::make_unique<Peer>();
    p->replica_id = route.replica_id;
    p->advertise = route.advertise;
    grpc::ChannelArguments args;
    const std::string& name = directory_->options().tls_name;
    if (!name.empty()) args.SetSslTargetNameOverride(name);
    // A replica that died without a word is found within seconds.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetMaxReceiveMessageSize(8 << 20);
    p->channel = grpc::CreateCustomChannel(route.advertise, credentials_, args);
    p->stub = tunnel::v1::ClusterService::NewStub(p->channel);
  }
  return p.get();
}

absl::StatusOr<std::unique_ptr<TunnelStream>> ClusterRouter::Open(
    absl::string_view slug, tunnel::v1::TunnelRequest head, const void* avoid) {
  std::shared_ptr<const std::vector<RemoteRoute>> found =
      directory_->Lookup(slug);
  if (found == nullptr) {
    absl::StatusOr<std::unique_ptr<TunnelStream>> s =
        local_->Open(slug, std::move(head), avoid);
    if (!absl::IsNotFound(s.status())) return s;
    // Unknown here, but some agent or pool of the cluster owns it: offline
    // (502), as on the gateway it last served.
    const std::string owner = directory_->OwnerOf(slug);
    if (absl::StartsWith(owner, "pool:")) {
      return absl::UnavailableError(absl::StrCat(
          "tunnel \"", slug, "\" is offline: no agent of pool \"",
          owner.substr(5), "\" is connected to any gateway of the cluster"));
    }
    if (!owner.empty()) {
      return absl::UnavailableError(
          absl::StrCat("tunnel \"", slug,
                       "\" is offline: its agent is not connected to any "
                       "gateway of the cluster"));
    }
    return s;
  }
  const std::vector<RemoteRoute>& routes = *found;
  if (local_->IsLive(slug)) {
    // A pool with members here and elsewhere: here first (no hop); the
    // others when every member here refuses.
    tunnel::v1::TunnelRequest copy = head;
    absl::StatusOr<std::unique_ptr<TunnelStream>> s =
        local_->Open(slug, std::move(head), avoid);
    if (s.ok() || !(absl::IsUnavailable(s.status()) ||
                    absl::IsResourceExhausted(s.status()) ||
                    absl::IsFailedPrecondition(s.status()))) {
      return s;
    }
    head = std::move(copy);
  }
  // Healthy replicas first, in turn.
  uint64_t start;
  {
    absl::MutexLock lock(&mu_);
    start = turn_++;
  }
  std::vector<const RemoteRoute*> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < routes.size(); ++i) {
      const RemoteRoute& r = routes[(start + i) % routes.size()];
      if (r.unhealthy == (pass == 0)) continue;
      order.push_back(&r);
    }
  }
  absl::Status last = absl::FailedPreconditionError("no other member to try");
  const ClusterOptions& opts = directory_->options();
  for (const RemoteRoute* route : order) {
    Peer* peer = PeerFor(*route);
    if (peer == avoid) continue;
    absl::StatusOr<std::vector<std::pair<std::string, std::string>>> md =
        common::SignAuthMetadata(kClusterAuthId, kClusterAuthId, opts.secret,
                                 absl::Now());
    if (!md.ok()) return md.status();
    auto link = std::make_shared<Link>();
    auto* call = new ForwardCall(link, route->replica_id);
    const uint64_t id = next_forward_id.fetch_add(1);
    head.set_stream_id(id);
    ForwardFrame open;
    *open.mutable_open() = head;
    // As HeaderFields: a replica of an older release reads no blocks. The
    // block is this gateway's own, well formed.
    (void)common::ExpandHeaderBlock(open.mutable_open());
    const bool request_finished = head.end_stream();
    grpc::ClientContext* ctx = call->context();
    for (auto& [k, v] : *md) ctx->AddMetadata(k, v);
    ctx->AddMetadata(kClusterReplicaKey, opts.id);
    call->Begin(peer->stub.get(), std::move(open));
    bool answered;
    {
      absl::MutexLock lock(&link->mu);
      auto done = [&link]() ABSL_SHARED_LOCKS_REQUIRED(link->mu) {
        return link->opened || !link->open_error.ok();
      };
      answered = common::AwaitWithDeadline(
          link->mu, absl::Condition(&done),
          absl::Now() + opts.forward_open_timeout, link->open_waiters);
      if (answered && link->opened) {
        counters_->opened->Increment();
        return std::unique_ptr<TunnelStream>(
            new ForwardStream(link, call, id, peer, request_finished));
      }
      if (answered) last = link->open_error;
    }
    call->Cancel();
    call->Release();
    if (!answered) {
      counters_->failed->Increment();
      return absl::UnavailableError(
          absl::StrCat("the gateway replica serving tunnel \"", slug, "\" (",
                       route->replica_id, ") did not answer within ",
                       absl::FormatDuration(opts.forward_open_timeout)));
    }
    // The owner's own answer (not found, offline, unhealthy, busy) is the
    // visitor's; an owner that cannot be reached makes way for the next.
    if (last.GetPayload(kUnreachablePayload).has_value()) {
      last.ErasePayload(kUnreachablePayload);
      counters_->failed->Increment();
      TUNNEL_LOG(WARNING) << "cluster: " << last.message() << " ("
                          << route->replica_id << " at " << route->advertise
                          << ")";
      continue;
    }
    counters_->refused->Increment();
    return last;
  }
  return last;
}

VisitorPolicy ClusterRouter::PolicyFor(absl::string_view slug) const {
  std::shared_ptr<const std::vector<RemoteRoute>> routes =
      directory_->Lookup(slug);
  if (routes == nullptr) return local_->PolicyFor(slug);
  return local_->PolicyFor(slug, routes->front().policy);
}

// --- The owner's side ----------------------------------------------------

namespace {

// True when the relay had not begun: it never will now.
bool Drop(Link& link) {
  absl::MutexLock lock(&link.mu);
  if (link.relay == Link::Relay::kRunning) return false;
  link.relay = Link::Relay::kDropped;
  return true;
}

// The relay of one forwarded stream on the owner, on front-door fibers.
void Relay(std::shared_ptr<Link> link, tunnel::v1::TunnelRequest head,
           SessionRegistry* registry, const ForwardServiceOptions& opts) {
  {
    absl::MutexLock lock(&link->mu);
    if (link->relay == Link::Relay::kDropped) return;  // the call ended first
    link->relay = Link::Relay::kRunning;
  }
  const std::string slug = head.tunnel_slug();
  const bool upload_done = head.end_stream();
  absl::StatusOr<std::unique_ptr<TunnelStream>> opened =
      registry->Open(slug, std::move(head));
  if (!opened.ok()) {
    link->Send(StatusFrame(opened.status()));
    link->Finish(grpc::Status::OK);
    return;
  }
  TunnelStream& stream = **opened;
  ForwardFrame ok;
  ok.mutable_opened()->set_stream_window(kForwardWindow);
  link->Send(std::move(ok));

  std::unique_ptr<httpfront::FrontServer::Sibling> upload;
  if (!upload_done) {
    upload = httpfront::FrontServer::RunOnSiblingFiber([&] {
      while (true) {
        uint32_t ack = 0;
        absl::StatusOr<common::Chunk> c =
            link->chan.PopData(absl::Now() + opts.idle_timeout, &ack);
        if (!c.ok()) {
          stream.Cancel(
              absl::StrCat("forwarded request: ", c.status().message()));
          return;
        }
        if (!c->data.empty() &&
            !stream.SendBody(c->data, absl::Now() + opts.idle_timeout).ok()) {
          return;  // the download side hears why from the stream
        }
        if (ack > 0) link->Send(WindowFrame(ack));
        if (c->end) {
          (void)stream.FinishBody();
          return;
        }
      }
    });
    if (upload == nullptr) {
      stream.Cancel("no fiber for the forwarded request's upload");
      link->Send(StatusFrame(
          absl::UnavailableError("the gateway replica is out of fibers")));
      link->Finish(grpc::Status::OK);
      return;
    }
  }
  // Download: the head, then the body within the caller's credit.
  auto fail = [&](const absl::Status& s) {
    link->Send(StatusFrame(s));
    link->chan.Abort(s);  // ends the upload side
  };
  absl::StatusOr<tunnel::v1::TunnelResponse> resp =
      stream.AwaitResponseHead(absl::Now() + opts.response_timeout);
  if (!resp.ok()) {
    fail(resp.status());
  } else {
    // The body is read from the stream (a head's end_stream is a hint and
    // its body bytes are in the stream already), then sent within credit.
    resp->clear_body();
    // As HeaderFields, as the request came (the session checked the block).
    (void)common::ExpandHeaderBlock(&*resp);
    ForwardFrame h;
    *h.mutable_response() = *std::move(resp);
    bool sent = link->Send(std::move(h));
    bool end = false;
    while (sent && !end) {
      absl::StatusOr<common::Chunk> c =
          stream.ReadBody(absl::Now() + opts.idle_timeout);
      if (!c.ok()) {
        fail(c.status());
        break;
      }
      end = c->end;
      sent = SendWithCredit(*link, std::move(c->data), end,
                            absl::Now() + opts.idle_timeout);
    }
    if (!sent) {
      stream.Cancel("the forwarding replica stopped reading");
      link->chan.Abort(absl::CancelledError("the forwarding replica left"));
    }
  }
  if (upload != nullptr) upload->Join();
  link->Finish(grpc::Status::OK);
}

class ForwardReceiver final
    : public grpc::ServerBidiReactor<ForwardFrame, ForwardFrame>,
      public CallOps {
 public:
  ForwardReceiver(const ForwardServiceOptions* options,
                  SessionRegistry* registry, httpfront::FrontDoor* front,
                  ForwardCounters* counters, std::string caller)
      : options_(options),
        registry_(registry),
        front_(front),
        counters_(counters),
        caller_(std::move(caller)),
        link_(std::make_shared<Link>()) {
    link_->Attach(this);
    StartRead(&in_);
  }

  void DoWrite(const ForwardFrame* f) override { StartWrite(f); }
  void DoFinish(const grpc::Status& s) override { Finish(s); }
  void OnWriteDone(bool ok) override { link_->WriteDone(ok); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      link_->chan.AbortIfIncomplete(
          absl::CancelledError("the forwarding replica went away"));
      if (!started_) FinishUnstarted(grpc::Status::OK);
      return;
    }
    if (!started_) {
      started_ = true;
      if (!in_.has_open()) {
        FinishUnstarted(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                     "the first frame must be open"));
        return;
      }
      counters_->opened->Increment();
      std::shared_ptr<Link> link = link_;
      SessionRegistry* registry = registry_;
      const ForwardServiceOptions* opts = options_;
      front_->RunDetached(
          [link, registry, opts,
           head = std::move(*in_.mutable_open())]() mutable {
            Relay(link, std::move(head), registry, *opts);
          },
          [link] {
            if (Drop(*link)) {
              link->Send(StatusFrame(
                  absl::UnavailableError("the gateway replica is stopping")));
              link->Finish(grpc::Status::OK);
            }
          });
    } else if (in_.has_data()) {
      tunnel::v1::TunnelData& d = *in_.mutable_data();
      if (absl::Status s = link_->chan.PushData(std::move(*d.mutable_data()),
                                                d.end_stream());
          !s.ok()) {
        Violation(s);
        return;
      }
    } else if (in_.has_window_update()) {
      if (absl::Status s =
              link_->chan.AddSendCredit(in_.window_update().increment());
          !s.ok()) {
        Violation(s);
        return;
      }
    } else {
      Violation(absl::InvalidArgumentError("unexpected frame"));
      return;
    }
    StartRead(&in_);
  }

  void OnCancel() override {
    link_->chan.Abort(
        absl::CancelledError("the forwarding replica cancelled the request"));
    FinishUnstarted(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    link_->Detach();
    delete this;
  }

 private:
  // Ends the call unless a relay fiber runs (it finishes the call then).
  void FinishUnstarted(grpc::Status s) {
    if (Drop(*link_)) link_->Finish(std::move(s));
  }

  void Violation(const absl::Status& s) {
    TUNNEL_LOG(WARNING) << "cluster: forwarded stream from replica " << caller_
                        << " broke the protocol: " << s.message();
    link_->chan.Abort(absl::AbortedError(s.message()));
  }

  const ForwardServiceOptions* const options_;
  SessionRegistry* const registry_;
  httpfront::FrontDoor* const front_;
  ForwardCounters* const counters_;
  const std::string caller_;
  std::shared_ptr<Link> link_;
  ForwardFrame in_;
  bool started_ = false;  // reaction threads only (one at a time)
};

// A call refused before anything started.
class ForwardRefusal final
    : public grpc::ServerBidiReactor<ForwardFrame, ForwardFrame> {
 public:
  explicit ForwardRefusal(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

}  // namespace

ForwardService::ForwardService(ForwardServiceOptions options,
                               SessionRegistry* registry,
                               httpfront::FrontDoor* front,
                               common::MetricsRegistry* metrics)
    : options_(std::move(options)),
      registry_(registry),
      front_(front),
      counters_(std::make_unique<ForwardCounters>(metrics, "in")) {}

ForwardService::~ForwardService() = default;

grpc::ServerBidiReactor<ForwardFrame, ForwardFrame>* ForwardService::Forward(
    grpc::CallbackServerContext* context) {
  std::map<std::string, std::string> md;
  for (const auto& [k, v] : context->client_metadata()) {
    md.emplace(std::string(k.data(), k.size()),
               std::string(v.data(), v.size()));
  }
  auto field = [&md](const char* key) -> std::string {
    auto it = md.find(key);
    return it == md.end() ? std::string() : it->second;
  };
  const std::string caller = field(kClusterReplicaKey);
  int64_t ts = 0;
  const bool parsed = absl::SimpleAtoi(field(common::kAuthTimestampKey), &ts);
  const absl::Time now = absl::Now();
  const bool fresh =
      parsed &&
      absl::AbsDuration(now - absl::FromUnixSeconds(ts)) <= options_.auth_skew;
  if (!fresh ||
      !common::SignatureValid(options_.secret, field(common::kAuthAgentIdKey),
                              field(common::kAuthTokenIdKey), ts,
                              field(common::kAuthNonceKey),
                              field(common::kAuthSignatureKey)) ||
      field(common::kAuthAgentIdKey) != kClusterAuthId) {
    counters_->refused->Increment();
    // The gRPC port is public: at most one line a second, however many.
    static std::atomic<int64_t> last_log_s{0};
    const int64_t now_s = absl::ToUnixSeconds(now);
    if (last_log_s.exchange(now_s) != now_s) {
      TUNNEL_LOG(WARNING) << "cluster: refused a forwarded request from "
                          << context->peer() << " (replica \"" << caller
                          << "\"): "
                          << (fresh ? "bad signature (another cluster secret?)"
                                    : "timestamp missing or outside the "
                                      "allowed clock skew")
                          << " (tunnel_cluster_forwarded_in_total"
                             "{outcome=\"refused\"} counts them all)";
    }
    return new ForwardRefusal(grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        fresh ? "bad cluster signature: the replicas' --cluster-secret-file "
                "differ"
              : "cluster signature timestamp missing or outside the allowed "
                "clock skew"));
  }
  return new ForwardReceiver(&options_, registry_, front_, counters_.get(),
                             caller);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClusterCredentials(
    bool tls, const std::string& ca_file, const std::string& own_cert_file) {
  if (!tls) return grpc::InsecureChannelCredentials();
  const std::string& path = ca_file.empty() ? own_cert_file : ca_file;
  std::ifstream in(path);
  std::stringstream pem;
  pem << in.rdbuf();
  if (!in || pem.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot read ", ca_file.empty() ? "--tls-cert" : "--cluster-ca", " \"",
        path, "\" (the CA other replicas' certificates are checked against)"));
  }
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = pem.str();
  return grpc::SslCredentials(o);
}

}  // namespace tunnel::server
