#include "agent/relay_host.h"

#include <google/protobuf/util/json_util.h>

#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/agent_stream.h"
#include "agent/origin_loop.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "common/log.h"
#include "common/outbox.h"
#include "common/random.h"
#include "tunnel/v1/relay.pb.h"

namespace tunnel::agent {

namespace relay = common::relay;
using tunnel::v1::Envelope;
using tunnel::v1::RelayFrame;

namespace {

// What a frame costs beyond its DATA body: IV, tag, message header, DATA's
// stream and flags, and room for the envelope around it.
constexpr uint32_t kFrameOverhead =
    relay::kIvBytes + relay::kTagBytes + relay::kHeaderBytes + 5 + 512;

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

bool FromJson(const std::string& json, google::protobuf::Message* m) {
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = true;
  return google::protobuf::util::JsonStringToMessage(json, m, o).ok();
}

std::string ReasonName(tunnel::v1::TunnelClose::Reason r) {
  switch (r) {
    case tunnel::v1::TunnelClose::FLOW_CONTROL_ERROR:
      return "flow_control";
    default:
      return absl::AsciiStrToLower(tunnel::v1::TunnelClose::Reason_Name(r));
  }
}

bool ValidPath(const std::string& p) {
  if (p.empty() || p[0] != '/') return false;
  for (char c : p) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  }
  return true;
}

// The types a browser sends (docs/RELAY.md).
bool FromBrowser(relay::Type t) {
  switch (t) {
    case relay::Type::kHello:
    case relay::Type::kPair:
    case relay::Type::kRequest:
    case relay::Type::kData:
    case relay::Type::kWindow:
    case relay::Type::kClose:
      return true;
    default:
      return false;
  }
}

// A method is an RFC 9110 token, as a header name is.
bool ValidMethod(const std::string& m) {
  return m.size() <= 32 && common::IsValidHeaderName(m);
}

// A redirect to the service's own origin, as a path the page can follow
// through the channel ("http://127.0.0.1:3000/x" -> "/x"); others as they
// are.
std::string LocalPath(absl::string_view location, const LocalTarget& t) {
  const std::string origin = absl::StrCat(t.scheme, "://", t.host, ":", t.port);
  std::string rest;
  if (absl::StartsWith(location, origin)) {
    rest = std::string(location.substr(origin.size()));
  } else if ((t.scheme == "http" && t.port == 80) ||
             (t.scheme == "https" && t.port == 443)) {
    const std::string bare = absl::StrCat(t.scheme, "://", t.host);
    if (absl::StartsWith(location, bare)) {
      rest = std::string(location.substr(bare.size()));
    }
  } else {
    return std::string(location);
  }
  if (rest.empty()) return "/";
  if (rest[0] != '/' && rest[0] != '?') {
    return std::string(location);  // another port
  }
  std::string path = rest[0] == '?' ? absl::StrCat("/", rest) : rest;
  // Without the service's base path: the page's paths are the service's
  // from the base on.
  if (!t.base_path.empty() && absl::StartsWith(path, t.base_path)) {
    path = path.substr(t.base_path.size());
    if (path.empty() || path[0] != '/') path = absl::StrCat("/", path);
  }
  return path;
}

}  // namespace

// One browser connection: its handshake state (reader thread), what it is
// sent (any thread, under send_mu_), its streams and its pump.
class RelayHost::Client : public std::enable_shared_from_this<Client> {
 public:
  Client(RelayHost* host, uint64_t id, RelaySink sink, uint32_t max_chunk)
      : host_(host),
        id_(id),
        sink_(std::move(sink)),
        max_chunk_(max_chunk),
        out_(max_chunk) {}

  // Before the first stream: the OriginLoop's wake-ups go to the host's
  // pump.
  void ListenForWork(std::shared_ptr<ReadyQueue> ready) {
    std::weak_ptr<Client> weak = weak_from_this();
    out_.SetWakeCallback([ready, weak] {
      std::shared_ptr<Client> c = weak.lock();
      // Queued once until the pump takes it (a round of the loop wakes
      // every outbox it touched).
      if (c == nullptr || c->queued_.exchange(true)) return;
      absl::MutexLock lock(&ready->mu);
      ready->clients.push_back(weak);
    });
  }
  // The pump took it from the ready queue: a later wake queues it again.
  void Taken() { queued_ = false; }

  uint64_t id() const { return id_; }

  // --- reader thread ---
  enum class State { kNew, kHello, kPaired };
  State state = State::kNew;
  relay::Receiver rx;

  // Starts the connection over (a HELLO): streams cancelled, pairing
  // forgotten, new nonces and sequence numbers both ways.
  void Restart(const std::string& client_nonce, bool locked, int attempts_left,
               uint32_t window) {
    CancelStreams();
    out_.Clear();
    const std::string host_nonce = common::RandomBytes(relay::kNonceBytes);
    rx.Expect(host_nonce, 1);
    state = State::kHello;
    tunnel::v1::RelayHelloAck ack;
    ack.set_host(common::Base64UrlEncode(host_nonce));
    ack.set_window(window);
    ack.set_max_chunk(max_chunk_);
    ack.set_paired(false);
    ack.set_attempts_left(static_cast<uint32_t>(attempts_left));
    ack.set_locked(locked);
    absl::MutexLock lock(&send_mu_);
    tx_conn_ = client_nonce;
    tx_seq_ = 0;
    SendLocked(relay::Type::kHelloAck, ToJson(ack));
    tx_conn_ = host_nonce;  // from now on, both ways
  }

  // With `wait` (body frames), first waits for room in the session's send
  // queue, without send_mu_ (see RelaySink::room).
  void Send(relay::Type type, const std::string& payload, bool wait) {
    const bool room = !wait || sink_.room == nullptr || sink_.room();
    absl::MutexLock lock(&send_mu_);
    if (!room) {
      Break();
      return;
    }
    SendLocked(type, payload);
  }
  void SendError(const std::string& code, const std::string& message,
                 int attempts_left = 0) {
    tunnel::v1::RelayError e;
    e.set_code(code);
    e.set_message(message);
    e.set_attempts_left(static_cast<uint32_t>(attempts_left));
    Send(relay::Type::kError, ToJson(e), false);
  }
  void SendClose(uint32_t stream, const std::string& reason,
                 const std::string& message) {
    tunnel::v1::RelayClose c;
    c.set_stream(stream);
    c.set_reason(reason);
    c.set_message(message);
    Send(relay::Type::kClose, ToJson(c), false);
  }

  std::shared_ptr<AgentStream> Find(uint32_t stream) {
    absl::MutexLock lock(&mu_);
    auto it = streams_.find(stream);
    return it == streams_.end() ? nullptr : it->second;
  }
  bool AddStream(const std::shared_ptr<AgentStream>& s) {
    absl::MutexLock lock(&mu_);
    return streams_.emplace(static_cast<uint32_t>(s->id), s).second;
  }
  void RemoveStream(uint64_t id) {
    absl::MutexLock lock(&mu_);
    streams_.erase(static_cast<uint32_t>(id));
  }
  void CancelStreams() {
    absl::flat_hash_map<uint32_t, std::shared_ptr<AgentStream>> streams;
    {
      absl::MutexLock lock(&mu_);
      streams.swap(streams_);
    }
    for (auto& [id, s] : streams) {
      s->Cancel(absl::CancelledError("the browser's connection started over"));
      host_->loop_->Cancel(s);
    }
  }

  // What the OriginLoop needs to answer this browser.
  OriginSession ForLoop(size_t max_queued_bytes) {
    OriginSession o;
    o.outbox = &out_;
    o.max_chunk = max_chunk_;
    o.max_queued_bytes = max_queued_bytes;
    o.header_blocks = true;  // Forward reads both forms
    std::weak_ptr<Client> weak = weak_from_this();
    o.done = [weak](uint64_t id) {
      if (auto c = weak.lock()) c->RemoveStream(id);
    };
    o.keep = shared_from_this();
    return o;
  }

  // The browser left (or the session ended): nothing more for it.
  void Shutdown() {
    CancelStreams();
    out_.Clear();
    out_.Close();
  }

  // The pump's thread: seals what the OriginLoop answered, in order.
  void Drain() {
    Envelope e;
    bool more = false;
    if (!out_.TryClaim(&e, &more)) return;  // closed, empty or being drained
    do {
      Forward(e);
    } while (out_.NextOrRelease(&e, &more));
  }

 private:
  void SendLocked(relay::Type type, const std::string& payload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_) {
    if (broken_) return;
    relay::Message m;
    m.type = type;
    m.dir = relay::Dir::kH2C;
    m.seq = tx_seq_++;
    m.ts_ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
    m.conn = tx_conn_;
    m.payload = payload;
    const relay::ShareSecrets& sec = host_->options_.secrets;
    Envelope e;
    RelayFrame* f = e.mutable_relay();
    f->set_session(sec.session);
    f->set_client(id_);
    f->set_frame(relay::SealFrame(sec.key, sec.session, relay::Dir::kH2C,
                                  relay::EncodeMessage(m)));
    if (!sink_.send(std::move(e))) Break();
  }

  // A frame that could not be queued leaves a gap in the sequence the
  // browser would wait on forever: this connection is over. The gateway
  // closes it (closed_by_host); the browser reconnects and says hello.
  void Break() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_) {
    if (broken_) return;
    broken_ = true;
    const relay::ShareSecrets& sec = host_->options_.secrets;
    TUNNEL_LOG(WARNING) << "share: the connection to browser " << id_
                        << " is closed: its frames could not be queued";
    Envelope bye;
    RelayFrame* b = bye.mutable_relay();
    b->set_session(sec.session);
    b->set_client(id_);
    b->set_event(RelayFrame::CLIENT_DISCONNECTED);
    (void)sink_.send(std::move(bye));
  }

  // One envelope the OriginLoop queued for this browser, as messages.
  void Forward(const Envelope& e) {
    switch (e.message_case()) {
      case Envelope::kResponse: {
        const auto& r = e.response();
        tunnel::v1::RelayResponse head;
        head.set_stream(static_cast<uint32_t>(r.stream_id()));
        head.set_status(r.status());
        common::ForEachField(
            r, [&](absl::string_view name, absl::string_view value) {
              // JSON strings must be UTF-8; a header that is not is left out
              // (the page could not read the message at all).
              if (!common::IsUtf8(name) || !common::IsUtf8(value)) return;
              tunnel::v1::Header* out = head.add_headers();
              out->set_name(std::string(name));
              out->set_value(std::string(value));
              if (absl::EqualsIgnoreCase(name, "Location")) {
                out->set_value(LocalPath(value, host_->options_.target));
              }
            });
        head.set_end(r.end_stream() && r.body().empty());
        const std::string json = ToJson(head);
        if (json.size() > max_chunk_) {
          // No frame may carry it: the stream fails instead.
          const uint32_t id = static_cast<uint32_t>(r.stream_id());
          if (std::shared_ptr<AgentStream> s = Find(id)) {
            s->Cancel(absl::ResourceExhaustedError("response head too big"));
            host_->loop_->Cancel(s);
            RemoveStream(id);
          }
          SendClose(id, "local_error",
                    absl::StrCat("the service's response head is over ",
                                 max_chunk_, " bytes"));
          return;
        }
        Send(relay::Type::kResponse, json, true);
        if (!r.body().empty()) {
          Send(relay::Type::kData,
               relay::EncodeData(static_cast<uint32_t>(r.stream_id()),
                                 r.end_stream(), r.body()),
               true);
        }
        return;
      }
      case Envelope::kData:
        Send(relay::Type::kData,
             relay::EncodeData(static_cast<uint32_t>(e.data().stream_id()),
                               e.data().end_stream(), e.data().data()),
             true);
        return;
      case Envelope::kClose:
        SendClose(static_cast<uint32_t>(e.close().stream_id()),
                  ReasonName(e.close().reason()), e.close().message());
        return;
      case Envelope::kControl:
        if (e.control().has_window_update()) {
          tunnel::v1::RelayWindow w;
          w.set_stream(
              static_cast<uint32_t>(e.control().window_update().stream_id()));
          w.set_increment(e.control().window_update().increment());
          Send(relay::Type::kWindow, ToJson(w), false);
        }
        return;
      default:
        return;
    }
  }

  RelayHost* const host_;
  const uint64_t id_;
  const RelaySink sink_;
  const uint32_t max_chunk_;
  common::Outbox out_;
  std::atomic<bool> queued_{false};  // in the host's ready queue
  absl::Mutex send_mu_;
  std::string tx_conn_ ABSL_GUARDED_BY(send_mu_);
  uint64_t tx_seq_ ABSL_GUARDED_BY(send_mu_) = 0;
  bool broken_ ABSL_GUARDED_BY(send_mu_) = false;
  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<AgentStream>> streams_
      ABSL_GUARDED_BY(mu_);
};

RelayHost::RelayHost(ShareOptions options, OriginLoop* loop)
    : options_(std::move(options)),
      loop_(loop),
      max_chunk_(options_.max_chunk),
      pump_([this] { Pump(); }) {}

RelayHost::~RelayHost() {
  Detach();
  {
    absl::MutexLock lock(&ready_->mu);
    ready_->stopping = true;
  }
  pump_.join();
}

void RelayHost::Pump() {
  ReadyQueue& ready = *ready_;
  while (true) {
    std::weak_ptr<Client> next;
    {
      absl::MutexLock lock(&ready.mu);
      auto work = [&ready]() ABSL_SHARED_LOCKS_REQUIRED(ready.mu) {
        return ready.stopping || !ready.clients.empty();
      };
      ready.mu.Await(absl::Condition(&work));
      if (ready.stopping) return;
      next = std::move(ready.clients.front());
      ready.clients.pop_front();
    }
    if (std::shared_ptr<Client> c = next.lock()) {
      c->Taken();
      c->Drain();
    }
  }
}

void RelayHost::Attach(RelaySink sink, uint32_t max_frame_bytes) {
  absl::MutexLock lock(&mu_);
  sink_ = std::move(sink);
  max_chunk_ = options_.max_chunk;
  if (max_frame_bytes > 0) {
    max_chunk_ = std::min(max_chunk_, max_frame_bytes > kFrameOverhead
                                          ? max_frame_bytes - kFrameOverhead
                                          : 1024u);
  }
}

void RelayHost::Detach() {
  absl::flat_hash_map<uint64_t, std::shared_ptr<Client>> clients;
  {
    absl::MutexLock lock(&mu_);
    clients.swap(clients_);
    sink_ = RelaySink();
  }
  for (auto& [id, c] : clients) c->Shutdown();
}

std::shared_ptr<RelayHost::Client> RelayHost::Find(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second;
}

std::shared_ptr<RelayHost::Client> RelayHost::Add(
    uint64_t id, const std::shared_ptr<Client>& replaces) {
  std::shared_ptr<Client> c;
  {
    absl::MutexLock lock(&mu_);
    if (sink_.send == nullptr) return nullptr;
    auto it = clients_.find(id);
    if (it != clients_.end() && it->second != replaces) return it->second;
    if (it == clients_.end() && clients_.size() >= kMaxClients) {
      unknown_client_.fetch_add(1, std::memory_order_relaxed);
      return nullptr;
    }
    c = std::make_shared<Client>(this, id, sink_, max_chunk_);
    c->ListenForWork(ready_);
    clients_[id] = c;
  }
  if (replaces != nullptr) replaces->Shutdown();
  return c;
}

void RelayHost::Remove(uint64_t id) {
  std::shared_ptr<Client> c;
  {
    absl::MutexLock lock(&mu_);
    auto it = clients_.find(id);
    if (it == clients_.end()) return;
    c = it->second;
    clients_.erase(it);
  }
  c->Shutdown();
}

void RelayHost::Event(const std::string& what) {
  TUNNEL_LOG(INFO) << "share: " << what;
  if (options_.on_event) options_.on_event(what);
}

void RelayHost::OnFrame(RelayFrame* f) {
  if (f->session() != options_.secrets.session) return;
  switch (f->event()) {
    case RelayFrame::CLIENT_CONNECTED:
      (void)Add(f->client());
      return;
    case RelayFrame::CLIENT_DISCONNECTED:
      Remove(f->client());
      return;
    case RelayFrame::FRAME:
      break;
    default:
      return;
  }
  std::shared_ptr<Client> c = Find(f->client());
  if (c == nullptr) {
    // A browser the gateway never announced, or one that left.
    unknown_client_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const relay::ShareSecrets& sec = options_.secrets;
  relay::Message m;
  relay::Drop drop = relay::OpenMessage(sec.key, sec.session, relay::Dir::kC2H,
                                        f->frame(), &m);
  if (drop == relay::Drop::kNone && m.type == relay::Type::kHello) {
    // A new handshake: seq 0, any conn (the browser's fresh nonce).
    if (m.seq != 0) {
      drop = relay::Drop::kSequence;
    } else {
      int attempts_left = 0;
      bool locked = false;
      {
        absl::MutexLock lock(&mu_);
        locked = locked_;
        attempts_left = locked ? 0 : relay::kMaxPairAttempts - wrong_codes_;
      }
      // A connection that said hello before starts over as a new object:
      // whatever its old streams still send goes out under the old nonce,
      // which the browser drops.
      if (c->state != Client::State::kNew) c = Add(f->client(), c);
      if (c == nullptr) return;
      c->Restart(m.conn, locked, attempts_left, options_.window);
      TUNNEL_LOG(DEBUG) << "share: browser " << c->id() << " said hello";
      return;
    }
  }
  if (drop == relay::Drop::kNone && c->state == Client::State::kNew) {
    // Nothing but a HELLO is answered first.
    pre_hello_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Only the browser's own types; any other is dropped before it could
  // move the sequence on.
  if (drop == relay::Drop::kNone && !FromBrowser(m.type)) {
    drop = relay::Drop::kMalformed;
  }
  if (drop == relay::Drop::kNone) drop = c->rx.Check(m);
  if (drop != relay::Drop::kNone) {
    dropped_[static_cast<int>(drop)].fetch_add(1, std::memory_order_relaxed);
    TUNNEL_LOG(DEBUG) << "share: dropped a frame from browser " << c->id()
                      << " (" << relay::DropName(drop) << ")";
    return;
  }
  switch (m.type) {
    case relay::Type::kPair: {
      tunnel::v1::RelayPair pair;
      if (!FromJson(m.payload, &pair)) {
        malformed_payloads_.fetch_add(1, std::memory_order_relaxed);
        return;  // counted and ignored: no attempt used
      }
      bool locked = false;
      bool just_locked = false;
      bool ok = false;
      int left = 0;
      {
        absl::MutexLock lock(&mu_);
        if (!locked_) {
          ok = relay::CodeMatches(sec.code, pair.code());
          if (!ok && ++wrong_codes_ >= relay::kMaxPairAttempts) {
            locked_ = true;
            just_locked = true;
          }
        }
        locked = locked_;
        left = relay::kMaxPairAttempts - wrong_codes_;
      }
      if (ok) {
        c->state = Client::State::kPaired;
        paired_.fetch_add(1, std::memory_order_relaxed);
        c->Send(relay::Type::kPairOk, "{}", false);
        Event(absl::StrCat("a browser paired (connection ", c->id(), ")"));
      } else if (locked) {
        c->SendError("locked",
                     "too many wrong codes: this share is locked; start a "
                     "new share on the device");
        if (just_locked) {
          Event(absl::StrCat(
              "a wrong pairing code was entered: the share is now LOCKED "
              "after ",
              relay::kMaxPairAttempts,
              " wrong codes; stop it and start a new share"));
        }
      } else {
        c->SendError("bad_code", "wrong pairing code", left);
        Event(absl::StrCat("a wrong pairing code was entered (", left,
                           " attempts left)"));
      }
      return;
    }
    case relay::Type::kRequest:
    case relay::Type::kData:
    case relay::Type::kWindow:
    case relay::Type::kClose:
      if (c->state != Client::State::kPaired) {
        not_paired_.fetch_add(1, std::memory_order_relaxed);
        c->SendError("not_paired", "enter the pairing code first");
        return;
      }
      break;
    default:
      return;  // (FromBrowser let no other type through)
  }
  if (m.type == relay::Type::kRequest) {
    tunnel::v1::RelayRequest r;
    if (!FromJson(m.payload, &r) || r.stream() == 0) {
      malformed_payloads_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!ValidMethod(r.method()) || !ValidPath(r.path())) {
      c->SendClose(r.stream(), "protocol_error",
                   "a request needs a method and a path starting with /");
      return;
    }
    tunnel::v1::TunnelRequest head;
    head.set_stream_id(r.stream());
    head.set_request_id(absl::StrCat("relay-", c->id(), "-", r.stream()));
    head.set_method(absl::AsciiStrToUpper(r.method()));
    head.set_path(r.path());
    common::HeaderList* headers = head.mutable_headers();
    headers->Reserve(r.headers_size() + 2);
    for (tunnel::v1::Header& h : *r.mutable_headers()) {
      tunnel::v1::HeaderField* f = headers->Add();
      f->set_name(std::move(*h.mutable_name()));
      f->set_value(std::move(*h.mutable_value()));
    }
    common::DropUnsafeHeaders(headers);
    common::StripHopByHop(headers);
    // The Service Worker hands the page what it gets, undecoded: ask the
    // service for an identity encoding.
    common::RemoveHeader(headers, "Accept-Encoding");
    common::AddHeader(headers, "Accept-Encoding", "identity");
    // A page's fetch() cannot name Content-Length; a bodiless POST
    // without one is refused by many servers.
    if (r.end() && common::FindHeader(*headers, "Content-Length") == nullptr &&
        (head.method() == "POST" || head.method() == "PUT" ||
         head.method() == "PATCH")) {
      common::AddHeader(headers, "Content-Length", "0");
    }
    head.set_end_stream(r.end());
    auto s = std::make_shared<AgentStream>(r.stream(), std::move(head),
                                           !r.end(), &options_.target,
                                           options_.window, options_.window);
    if (r.end()) (void)s->channel.PushData("", true);
    if (!c->AddStream(s)) {
      c->SendClose(r.stream(), "protocol_error",
                   "that stream id is in use on this connection");
      return;
    }
    requests_.fetch_add(1, std::memory_order_relaxed);
    loop_->Start(std::move(s), c->ForLoop(options_.max_queued_bytes));
    return;
  }
  if (m.type == relay::Type::kData) {
    uint32_t stream = 0;
    bool end = false;
    absl::string_view bytes;
    if (!relay::DecodeData(m.payload, &stream, &end, &bytes)) {
      malformed_payloads_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::shared_ptr<AgentStream> s = c->Find(stream);
    if (s == nullptr) return;  // ended already
    if (absl::Status st = s->channel.PushData(std::string(bytes), end);
        !st.ok()) {
      s->Cancel(absl::AbortedError(st.message()));
      loop_->Cancel(s);
      c->RemoveStream(stream);
      c->SendClose(stream, "flow_control", std::string(st.message()));
      return;
    }
    loop_->Wake(s);
    return;
  }
  if (m.type == relay::Type::kWindow) {
    tunnel::v1::RelayWindow w;
    if (!FromJson(m.payload, &w)) {
      malformed_payloads_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::shared_ptr<AgentStream> s = c->Find(w.stream());
    if (s == nullptr) return;
    if (absl::Status st = s->channel.AddSendCredit(w.increment()); !st.ok()) {
      s->Cancel(absl::AbortedError(st.message()));
      loop_->Cancel(s);
      c->RemoveStream(w.stream());
      c->SendClose(w.stream(), "flow_control", std::string(st.message()));
      return;
    }
    loop_->Wake(s);
    return;
  }
  // CLOSE: the browser gave up on a stream.
  tunnel::v1::RelayClose close;
  if (!FromJson(m.payload, &close)) {
    malformed_payloads_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (std::shared_ptr<AgentStream> s = c->Find(close.stream())) {
    s->Cancel(absl::CancelledError("the browser cancelled the request"));
    loop_->Cancel(s);
    c->RemoveStream(close.stream());
  }
}

RelayHostCounts RelayHost::counts() const {
  RelayHostCounts c;
  for (int i = 0; i < 6; ++i) c.dropped[i] = dropped_[i].load();
  c.pre_hello = pre_hello_.load();
  c.not_paired = not_paired_.load();
  c.paired = paired_.load();
  c.requests = requests_.load();
  c.unknown_client = unknown_client_.load();
  c.malformed_payloads = malformed_payloads_.load();
  absl::MutexLock lock(&mu_);
  c.wrong_codes = static_cast<uint64_t>(wrong_codes_);
  c.locked = locked_;
  return c;
}

}  // namespace tunnel::agent
