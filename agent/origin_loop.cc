#include "agent/origin_loop.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "agent/response_parser.h"
#include "common/envelopes.h"
#include "common/headers.h"
#include "common/log.h"
#include "common/socket_io.h"

namespace tunnel::agent {
namespace {

using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

CURLM* Multi(void* m) { return static_cast<CURLM*>(m); }

// Easy handles kept for reuse (each holds a receive buffer of a chunk).
constexpr size_t kMaxIdleHandles = 16;
// The native client's reads (one buffer for the loop) and the longest
// response head it accepts (libcurl's limit too).
constexpr size_t kReadBytes = 64 * 1024;
constexpr uint32_t kMaxResponseHeadBytes = 100 * 1024;

// Targets the native client serves: plain http at an address, or at
// "localhost" (always the loopback addresses, RFC 6761), so that connecting
// never waits for a name server. The rest (https, names) go to libcurl.
bool NativeTarget(const LocalTarget& t) {
  return t.scheme == "http" &&
         (t.host == "localhost" || common::IsIpAddress(t.host));
}

// The addresses to try for `t`, in order.
std::vector<sockaddr_storage> TargetAddresses(const LocalTarget& t) {
  std::vector<std::string> hosts;
  if (t.host == "localhost") {
    hosts = {"127.0.0.1", "::1"};
  } else {
    hosts = {t.host};
  }
  std::vector<sockaddr_storage> out;
  for (const std::string& h : hosts) {
    sockaddr_storage a{};
    auto* a4 = reinterpret_cast<sockaddr_in*>(&a);
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&a);
    if (inet_pton(AF_INET, h.c_str(), &a4->sin_addr) == 1) {
      a4->sin_family = AF_INET;
      a4->sin_port = htons(static_cast<uint16_t>(t.port));
    } else if (inet_pton(AF_INET6, h.c_str(), &a6->sin6_addr) == 1) {
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons(static_cast<uint16_t>(t.port));
    } else {
      continue;
    }
    out.push_back(a);
  }
  return out;
}

// No byte a request line cannot carry (controls, space, DEL).
bool IsRequestTargetSafe(absl::string_view v) {
  for (unsigned char c : v) {
    if (c <= 0x20 || c == 0x7f) return false;
  }
  return !v.empty();
}

// What went wrong with the local service, in words (libcurl's own names mean
// little to a user). `connected`: a connection to the service existed.
std::string LocalErrorWords(CURLcode code, long os_errno, bool connected,
                            absl::Duration local_timeout) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
      if (os_errno == ECONNREFUSED) {
        return "connection refused: nothing listens there, or it is down";
      }
      return absl::StrCat("could not connect: ",
                          os_errno != 0
                              ? std::strerror(static_cast<int>(os_errno))
                              : "unknown error");
    case CURLE_COULDNT_RESOLVE_HOST:
      return "its host name does not resolve";
    case CURLE_OPERATION_TIMEDOUT:
      if (!connected) return "no answer to the connection attempt in time";
      return absl::StrCat("the service sent nothing for ",
                          absl::FormatDuration(local_timeout));
    case CURLE_GOT_NOTHING:
      return "the service closed the connection without answering";
    case CURLE_SEND_ERROR:
      return "the service closed the connection while the request was sent";
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
      return "the service closed the connection before answering in full";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
      return "TLS with the service failed";
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return "the service's answer is not HTTP/1.x";
    default:
      return curl_easy_strerror(code);
  }
}

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

struct OriginLoop::Transfer {
  OriginLoop* loop = nullptr;
  std::shared_ptr<AgentStream> s;
  OriginSession session;
  CURL* easy = nullptr;
  // The request's fields for curl: their lines, NUL-terminated, in one
  // buffer, and list nodes pointing into it (curl only reads the list), so
  // a request's fields cost two allocations instead of three each.
  std::string header_lines;
  std::vector<curl_slist> header_list;
  bool launched = false;  // counted in running_
  bool in_multi = false;
  char error[CURL_ERROR_SIZE] = {};
  // Response.
  int status = 0;
  // The head as it arrives (moved into its envelope when complete).
  tunnel::v1::TunnelResponse response;
  bool head_sent = false;
  bool end_sent = false;
  bool origin_done = false;  // complete; body bytes may still wait for credit
  std::string pending;       // body bytes received, waiting for credit
  bool recv_paused = false;
  // Request body.
  std::string up;
  size_t up_off = 0;
  bool up_end = false;
  bool send_paused = false;
  // The native client's (NativeTarget): the connection it holds, the
  // request's head (kept to send again on a fresh connection if a kept one
  // turns out closed before any answer), and the response's parser.
  bool native = false;
  Conn* conn = nullptr;
  std::string request_head;
  bool chunked_up = false;    // the body goes in chunked coding
  bool body_taken = false;    // body bytes left the channel: no second try
  bool request_sent = false;  // every byte of the request is out
  bool retried = false;
  bool answered = false;  // a byte of the response arrived
  bool failing = false;   // FailSoon: ends at the loop's next round
  std::optional<ResponseParser> parser;
};

// A keep-alive HTTP/1.1 connection of the native client to one target:
// serving one transfer at a time, or idle in the pool (still watched, so a
// service closing it is noticed at once).
struct OriginLoop::Conn {
  int fd = -1;
  uint64_t serial = 0;
  std::string key;        // the pool it belongs to (target host:port)
  Transfer* t = nullptr;  // null while idle
  bool connecting = false;
  bool reused = false;                      // it answered a request before
  std::vector<sockaddr_storage> addresses;  // while connecting: left to try
  size_t address = 0;
  uint32_t events = 0;  // epoll interest (0: not registered)
  std::string in;       // received, not parsed yet (a head in pieces)
  std::string out;      // to send
  size_t out_off = 0;
  absl::Time deadline = absl::InfiniteFuture();
  absl::Time queued_at = absl::InfiniteFuture();  // its entry in deadlines_
};

OriginLoop::OriginLoop(size_t max_concurrent, absl::Duration local_timeout,
                       absl::Duration connect_timeout)
    : max_concurrent_(std::max<size_t>(max_concurrent, 1)),
      local_timeout_(local_timeout),
      connect_timeout_(connect_timeout) {
  GlobalInit();
  read_buf_ = std::make_unique<char[]>(kReadBytes);
  multi_ = curl_multi_init();
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wakeup_->fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wakeup_->fd, &ev);
  curl_multi_setopt(Multi(multi_), CURLMOPT_SOCKETFUNCTION,
                    &OriginLoop::OnSocket);
  curl_multi_setopt(Multi(multi_), CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(Multi(multi_), CURLMOPT_TIMERFUNCTION,
                    &OriginLoop::OnTimer);
  curl_multi_setopt(Multi(multi_), CURLMOPT_TIMERDATA, this);
  // Idle connections kept for reuse. libcurl's default is four per handle
  // in the multi; a transfer's handle leaves it when done, so after a lull
  // (few transfers running) it closed connections that the next burst had
  // to open again: ~100 new connections a second at a steady 64 in flight.
  curl_multi_setopt(Multi(multi_), CURLMOPT_MAXCONNECTS,
                    static_cast<long>(max_concurrent_));
  thread_ = std::thread([this] { Run(); });
}

OriginLoop::~OriginLoop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  WakeLoop();
  thread_.join();
  curl_multi_cleanup(Multi(multi_));
  close(epoll_fd_);
}

void OriginLoop::WakeLoop() { wakeup_->Wake(); }

int OriginLoop::OnSocket(void*, int fd, int what, void* userp, void* socketp) {
  auto* loop = static_cast<OriginLoop*>(userp);
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(loop->epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    return 0;
  }
  epoll_event ev{};
  ev.data.fd = fd;
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (socketp == nullptr) {
    // New to us: marked so that later calls modify instead of add.
    epoll_ctl(loop->epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    curl_multi_assign(Multi(loop->multi_), fd, loop);
  } else {
    epoll_ctl(loop->epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
  }
  return 0;
}

int OriginLoop::OnTimer(void*, long timeout_ms, void* userp) {
  auto* loop = static_cast<OriginLoop*>(userp);
  loop->timer_ = timeout_ms < 0 ? absl::InfiniteFuture()
                                : absl::Now() + absl::Milliseconds(timeout_ms);
  return 0;
}

void OriginLoop::Start(std::shared_ptr<AgentStream> s, OriginSession session) {
  Post(Command{Op::kStart, std::move(s), std::move(session)});
}

void OriginLoop::Wake(std::shared_ptr<AgentStream> s) {
  Post(Command{Op::kWake, std::move(s), {}});
}

void OriginLoop::Cancel(std::shared_ptr<AgentStream> s) {
  Post(Command{Op::kCancel, std::move(s), {}});
}

void OriginLoop::Post(Command c) {
  bool first;
  {
    absl::MutexLock lock(&mu_);
    first = commands_.empty();
    commands_.push_back(std::move(c));
  }
  // One wake-up per batch of commands: the loop takes them all at once.
  if (first) WakeLoop();
}

void OriginLoop::Run() {
  std::vector<Command> commands;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      commands.swap(commands_);
    }
    for (Command& c : commands) {
      if (c.op == Op::kStart) {
        Begin(std::move(c.stream), std::move(c.session));
        continue;
      }
      auto it = transfers_.find(c.stream.get());
      if (it == transfers_.end()) continue;  // over already
      if (c.op == Op::kWake) {
        Resume(it->second.get());
      } else {
        Finish(it->second.get());
      }
    }
    commands.clear();
    FailNow();
    if (wakeup_->room.exchange(false, std::memory_order_acq_rel)) {
      // Some outbox has room: everyone who waited tries again (those whose
      // outbox is still full ask it again).
      std::vector<Transfer*> retry(room_waiters_.begin(), room_waiters_.end());
      room_waiters_.clear();
      room_asked_.clear();
      for (Transfer* t : retry) Resume(t);
    }
    ExpireDeadlines();
    FailNow();
    int running = 0;
    if (timer_ <= absl::Now()) {
      // libcurl's own deadlines, and transfers just added or unpaused.
      timer_ = absl::InfiniteFuture();
      curl_multi_socket_action(Multi(multi_), CURL_SOCKET_TIMEOUT, 0, &running);
    }
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(Multi(multi_), &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      const CURLcode result = msg->data.result;
      char* priv = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
      OnDone(reinterpret_cast<Transfer*>(priv), result);
    }
    // Every session's writer once per round, after all transfers spoke.
    for (common::Outbox* o : touched_) o->WakeWriter();
    touched_.clear();
    touched_keep_.clear();
    // Wait for sockets, the next command, room in an outbox, or libcurl's
    // timer.
    const absl::Time next = std::min(timer_, NextDeadline());
    const int wait_ms =
        !failing_.empty() ? 0
        : next == absl::InfiniteFuture()
            ? -1
            : static_cast<int>(std::max<int64_t>(
                  0, absl::ToInt64Milliseconds(absl::Ceil(
                         next - absl::Now(), absl::Milliseconds(1)))));
    epoll_event events[64];
    const int n = epoll_wait(epoll_fd_, events, 64, wait_ms);
    for (int i = 0; i < n; ++i) {
      if ((events[i].data.u64 & kNativeTag) != 0) {
        auto it = conns_.find(events[i].data.u64 & ~kNativeTag);
        // (Gone: closed by an earlier event of this round.)
        if (it != conns_.end()) OnConnEvent(it->second.get(), events[i].events);
        continue;
      }
      const int fd = events[i].data.fd;
      if (fd == wakeup_->fd) {
        wakeup_->Drain();
        continue;
      }
      int mask = 0;
      if (events[i].events & EPOLLIN) mask |= CURL_CSELECT_IN;
      if (events[i].events & EPOLLOUT) mask |= CURL_CSELECT_OUT;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) mask |= CURL_CSELECT_ERR;
      curl_multi_socket_action(Multi(multi_), fd, mask, &running);
    }
  }
  // Stopping: drop every transfer without telling sessions (they are gone).
  for (auto& [stream, t] : transfers_) {
    if (t->in_multi) curl_multi_remove_handle(Multi(multi_), t->easy);
    if (t->easy != nullptr) curl_easy_cleanup(t->easy);
  }
  transfers_.clear();
  for (auto& [serial, c] : conns_) {
    if (c->fd >= 0) ::close(c->fd);
  }
  conns_.clear();
  for (void* h : idle_handles_) curl_easy_cleanup(static_cast<CURL*>(h));
  idle_handles_.clear();
}

void OriginLoop::Begin(std::shared_ptr<AgentStream> s, OriginSession session) {
  auto owned = std::make_unique<Transfer>();
  Transfer* t = owned.get();
  t->loop = this;
  t->s = std::move(s);
  t->session = std::move(session);
  transfers_[t->s.get()] = std::move(owned);
  if (running_ >= max_concurrent_) {
    waiting_.push_back(t);
    queued_.store(waiting_.size(), std::memory_order_relaxed);
    return;
  }
  Launch(t);
}

void OriginLoop::Launch(Transfer* t) {
  ++running_;
  t->launched = true;
  const AgentStream& s = *t->s;
  const tunnel::v1::TunnelRequest& head = s.head;
  const LocalTarget& target = *s.target;
  if (NativeTarget(target)) {
    LaunchNative(t);
    return;
  }
  CURL* e;
  if (!idle_handles_.empty()) {
    e = static_cast<CURL*>(idle_handles_.back());
    idle_handles_.pop_back();
    curl_easy_reset(e);
  } else {
    e = curl_easy_init();
  }
  t->easy = e;
  const std::string url =
      absl::StrCat(target.scheme, "://", target.host, ":", target.port, "/");
  std::string request_target = target.base_path + head.path();
  if (request_target.empty() || request_target[0] != '/') {
    request_target.insert(0, "/");
  }
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());
  // The path and query exactly as the visitor sent them: no normalizing.
  curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, request_target.c_str());
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PRIVATE, reinterpret_cast<char*>(t));
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &OriginLoop::OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &OriginLoop::OnBody);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(
      e, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(connect_timeout_)));
  // The service silent this long (below one byte a second): it fails.
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Seconds(
                              absl::Ceil(local_timeout_, absl::Seconds(1))))));
  if (target.scheme == "https") {
    // Local services use self-signed certificates as a rule.
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  // Bytes pass through untouched: no decompression (no Accept-Encoding
  // of curl's own), no redirects followed (the visitor follows them).
  bool has_accept = false;
  int64_t length = -1;
  // Which fields go, and the room their lines take (so that the buffer
  // never moves while nodes point into it).
  size_t room = sizeof("Accept:") + sizeof("Expect:");
  size_t lines = 2;
  std::vector<bool>& skip = skip_scratch_;
  skip.assign(static_cast<size_t>(head.headers_size()), false);
  for (int i = 0; i < head.headers_size(); ++i) {
    const tunnel::v1::Header& h = head.headers(i);
    const std::string& name = h.name();
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      if (s.has_body) {
        // curl writes it from CURLOPT_INFILESIZE_LARGE.
        if (!absl::SimpleAtoi(h.value(), &length)) length = -1;
        skip[i] = true;
        continue;
      }
    } else if (absl::EqualsIgnoreCase(name, "Expect")) {
      skip[i] = true;  // the gateway answered 100-continue already
      continue;
    } else if (absl::EqualsIgnoreCase(name, "Accept")) {
      has_accept = true;
    }
    room += name.size() + h.value().size() + 3;
    ++lines;
  }
  t->header_lines.clear();
  t->header_lines.reserve(room);
  t->header_list.clear();
  t->header_list.reserve(lines);
  auto add_line = [t](absl::string_view a, absl::string_view b,
                      absl::string_view c) {
    const size_t at = t->header_lines.size();
    absl::StrAppend(&t->header_lines, a, b, c);
    t->header_lines.push_back('\0');
    t->header_list.push_back(curl_slist{t->header_lines.data() + at, nullptr});
  };
  for (int i = 0; i < head.headers_size(); ++i) {
    if (skip[i]) continue;
    const tunnel::v1::Header& h = head.headers(i);
    // "Name;" is how curl sends a field with an empty value.
    if (h.value().empty()) {
      add_line(h.name(), ";", "");
    } else {
      add_line(h.name(), ": ", h.value());
    }
  }
  // No fields of curl's own that the visitor did not send.
  if (!has_accept) add_line("Accept:", "", "");
  if (s.has_body) add_line("Expect:", "", "");
  for (size_t i = 0; i + 1 < t->header_list.size(); ++i) {
    t->header_list[i].next = &t->header_list[i + 1];
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER,
                   t->header_list.empty() ? nullptr : t->header_list.data());
  const std::string& method = head.method();
  if (method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (method != "GET" || s.has_body) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  if (s.has_body) {
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, &OriginLoop::OnRead);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    // Without a length curl sends the body chunked.
    if (length >= 0) {
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(length));
    }
  }
  curl_multi_add_handle(Multi(multi_), e);
  t->in_multi = true;
}

size_t OriginLoop::OnHeader(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  const size_t len = size * n;
  // The end of a head: informational ones (100, 103) are not the answer.
  if (common::ParseResponseHeadLine(absl::string_view(data, len), &t->status,
                                    t->response.mutable_headers()) ==
          common::ResponseHeadLine::kEnd &&
      (t->status < 100 || t->status >= 200)) {
    t->loop->OnHead(t);
  }
  return len;
}

void OriginLoop::OnHead(Transfer* t) {
  if (t->head_sent) return;
  const std::string& method = t->s->head.method();
  // No body by definition: the response is complete with its head.
  const bool bodyless =
      method == "HEAD" || t->status == 204 || t->status == 304;
  if (t->s->capture != nullptr) {
    t->s->capture->ResponseHead(t->status, t->response.headers());
  }
  Envelope e;
  auto* r = e.mutable_response();
  *r = std::move(t->response);
  r->set_stream_id(t->s->id);
  r->set_status(static_cast<uint32_t>(t->status));
  common::StripHopByHop(r->mutable_headers());
  r->set_end_stream(bodyless);
  t->session.outbox->Push(std::move(e));
  Touch(t);
  t->head_sent = true;
  t->end_sent = bodyless;
}

size_t OriginLoop::OnBody(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  const size_t len = size * n;
  if (!t->head_sent) t->loop->OnHead(t);
  if (t->end_sent) return len;  // a body where none may be: ignored
  if (t->s->capture != nullptr) {
    t->s->capture->ResponseBody(absl::string_view(data, len));
  }
  t->pending.append(data, len);
  if (!t->loop->FlushPending(t)) {
    if (!t->s->channel.status().ok()) return 0;  // cancelled: stop
    // Out of credit (or the outbox is full): the service waits.
    t->recv_paused = true;
    curl_easy_pause(t->easy,
                    CURLPAUSE_RECV | (t->send_paused ? CURLPAUSE_SEND : 0));
  }
  return len;
}

bool OriginLoop::OutboxFull(Transfer* t) {
  const OriginSession& session = t->session;
  if (session.outbox->queued_bytes() <= session.max_queued_bytes) return false;
  room_waiters_.insert(t);
  if (room_asked_.emplace(session.outbox, session.keep).second) {
    LoopWakeup::AskRoom(wakeup_, session.outbox, session.max_queued_bytes);
  }
  return true;
}

bool OriginLoop::FlushPending(Transfer* t) {
  const OriginSession& session = t->session;
  size_t sent = 0;
  while (sent < t->pending.size()) {
    if (OutboxFull(t)) break;
    absl::StatusOr<size_t> credit = t->s->channel.AcquireSendCredit(
        std::min<size_t>(t->pending.size() - sent, session.max_chunk),
        absl::InfinitePast());
    if (!credit.ok()) break;  // none now; Wake brings more
    if (sent == 0 && *credit == t->pending.size()) {
      session.outbox->PushData(t->s->id, std::move(t->pending), false);
      t->pending.clear();
      Touch(t);
      return true;
    }
    session.outbox->PushData(t->s->id, t->pending.substr(sent, *credit), false);
    sent += *credit;
    Touch(t);
  }
  t->pending.erase(0, sent);
  return t->pending.empty();
}

size_t OriginLoop::OnRead(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  const size_t cap = size * n;
  AgentStream& s = *t->s;
  while (t->up_off >= t->up.size()) {
    if (t->up_end) return 0;
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> c =
        s.channel.PopData(absl::InfinitePast(), &ack);
    if (ack > 0) {
      t->session.outbox->PushControl(common::MakeWindowUpdate(s.id, ack));
      t->loop->Touch(t);
    }
    if (!c.ok()) {
      if (!s.channel.status().ok()) return CURL_READFUNC_ABORT;
      t->send_paused = true;  // nothing from the visitor yet
      return CURL_READFUNC_PAUSE;
    }
    t->up = std::move(c->data);
    t->up_off = 0;
    t->up_end = c->end;
    if (s.capture != nullptr) {
      s.capture->RequestBody(t->up);
      if (t->up_end) s.capture->RequestEnd();
    }
  }
  const size_t k = std::min(cap, t->up.size() - t->up_off);
  std::memcpy(data, t->up.data() + t->up_off, k);
  t->up_off += k;
  return k;
}

void OriginLoop::Resume(Transfer* t) {
  if (!t->launched || t->failing) return;
  if (t->recv_paused && FlushPending(t)) {
    t->recv_paused = false;
    if (t->origin_done) {
      // Complete, and now the last bytes are out too.
      t->session.outbox->PushData(t->s->id, "", true);
      Touch(t);
      t->end_sent = true;
      Finish(t);
      return;
    }
    if (t->conn != nullptr && !t->conn->connecting) {
      Active(t->conn);
      SetInterest(t->conn);  // reading again
    }
  }
  if (t->native) {
    if (t->send_paused && t->conn != nullptr && !t->conn->connecting) {
      t->send_paused = false;
      Active(t->conn);
      WriteConn(t->conn);
    }
    return;
  }
  if (!t->in_multi) return;
  t->send_paused = false;  // curl asks again; OnRead pauses if still nothing
  curl_easy_pause(t->easy, t->recv_paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
}

void OriginLoop::OnDone(Transfer* t, int result) {
  curl_multi_remove_handle(Multi(multi_), t->easy);
  t->in_multi = false;
  const CURLcode code = static_cast<CURLcode>(result);
  if (t->s->is_cancelled()) {
    Finish(t);  // the gateway knows
    return;
  }
  if (code == CURLE_OK) {
    if (!t->head_sent) {
      long status = 0;
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
      t->status = static_cast<int>(status);
    }
    Completed(t);
    return;
  }
  long os_errno = 0;
  curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
  curl_off_t connect_us = 0;
  curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
  const bool connected = connect_us > 0;
  const bool unreachable = code == CURLE_COULDNT_CONNECT ||
                           code == CURLE_COULDNT_RESOLVE_HOST ||
                           (code == CURLE_OPERATION_TIMEDOUT && !connected);
  Fail(t, unreachable,
       LocalErrorWords(code, os_errno, connected, local_timeout_));
}

void OriginLoop::Completed(Transfer* t) {
  if (!t->head_sent) OnHead(t);
  t->origin_done = true;
  if (!t->end_sent && t->pending.empty()) {
    t->session.outbox->PushData(t->s->id, "", true);
    Touch(t);
    t->end_sent = true;
  }
  // Else the last bytes wait for credit (Resume finishes).
  if (t->end_sent) Finish(t);
}

void OriginLoop::Fail(Transfer* t, bool unreachable, const std::string& words) {
  const std::string& url = t->s->target->url;
  const auto& head = t->s->head;
  std::string msg;
  if (!t->head_sent) {
    msg = unreachable
              ? absl::StrCat("the agent cannot reach its local service at ",
                             url, " (", words, ")")
              : absl::StrCat("the local service at ", url,
                             " failed before responding (", words, ")");
  } else {
    msg = absl::StrCat("the local service at ", url,
                       " broke off its response (", words, ")");
  }
  TUNNEL_LOG(WARNING) << head.method() << " " << head.path() << ": " << msg
                      << " (request " << head.request_id() << ")";
  if (t->s->capture != nullptr) {
    t->s->capture->Finish(Inspector::Outcome::kLocalError, msg);
  }
  SendClose(t,
            unreachable && !t->head_sent ? TunnelClose::LOCAL_UNREACHABLE
                                         : TunnelClose::LOCAL_ERROR,
            msg);
  Finish(t);
}

void OriginLoop::SendClose(Transfer* t, int reason,
                           const std::string& message) {
  t->session.outbox->PushControl(common::MakeClose(
      t->s->id, static_cast<TunnelClose::Reason>(reason), message));
  Touch(t);
}

void OriginLoop::Touch(Transfer* t) {
  if (touched_.insert(t->session.outbox).second) {
    touched_keep_.push_back(t->session.keep);
  }
}

void OriginLoop::Finish(Transfer* t) {
  // A connection still held mid-answer cannot serve another request.
  if (t->conn != nullptr) CloseConn(t->conn);
  if (t->in_multi) {
    curl_multi_remove_handle(Multi(multi_), t->easy);
    t->in_multi = false;
  }
  if (t->easy != nullptr) {
    // A handle keeps its buffers: reused, but only so many kept idle.
    if (idle_handles_.size() < kMaxIdleHandles) {
      idle_handles_.push_back(t->easy);
    } else {
      curl_easy_cleanup(t->easy);
    }
    t->easy = nullptr;
  }
  room_waiters_.erase(t);
  if (t->s->capture != nullptr) {
    // Unless it failed already (OnDone): complete, or the gateway ended it.
    const absl::Status why = t->s->channel.status();
    t->s->capture->Finish(t->end_sent ? Inspector::Outcome::kComplete
                                      : Inspector::Outcome::kCancelled,
                          why.ok() ? "" : why.message());
  }
  if (t->launched) {
    --running_;
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), t));
    queued_.store(waiting_.size(), std::memory_order_relaxed);
  }
  if (t->session.done) t->session.done(t->s->id);
  AgentStream* const key = t->s.get();
  transfers_.erase(key);  // destroys *t
  // The next waiting transfer takes the freed place.
  while (running_ < max_concurrent_ && !waiting_.empty()) {
    Transfer* next = waiting_.front();
    waiting_.pop_front();
    queued_.store(waiting_.size(), std::memory_order_relaxed);
    Launch(next);
  }
}

// --- The native client -----------------------------------------------------

bool OriginLoop::BuildRequest(Transfer* t) {
  const AgentStream& s = *t->s;
  const tunnel::v1::TunnelRequest& head = s.head;
  const LocalTarget& target = *s.target;
  const std::string& method = head.method();
  std::string path = target.base_path + head.path();
  if (path.empty() || path[0] != '/') path.insert(0, "/");
  // A hostile gateway must not be able to split the request in two.
  if (!common::IsValidHeaderName(method) || !IsRequestTargetSafe(path)) {
    return false;
  }
  std::string& r = t->request_head;
  size_t room = method.size() + path.size() + 64 + target.host.size();
  for (const tunnel::v1::Header& h : head.headers()) {
    room += h.name().size() + h.value().size() + 4;
  }
  r.clear();
  r.reserve(room);
  absl::StrAppend(&r, method, " ", path, " HTTP/1.1\r\n");
  // Host first (RFC 9110 7.2; and where libcurl puts it): the visitor's, or
  // the target's.
  const std::string* host = common::FindHeader(head.headers(), "Host");
  if (host != nullptr && common::IsValidHeaderValue(*host)) {
    absl::StrAppend(&r, "Host: ", *host, "\r\n");
  } else {
    const bool v6 = target.host.find(':') != std::string::npos;
    absl::StrAppend(&r, "Host: ", v6 ? "[" : "", target.host, v6 ? "]" : "",
                    ":", target.port, "\r\n");
  }
  int64_t length = -1;
  for (const tunnel::v1::Header& h : head.headers()) {
    const std::string& name = h.name();
    if (!common::IsValidHeaderName(name) ||
        !common::IsValidHeaderValue(h.value())) {
      continue;
    }
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      if (s.has_body) {
        // Written below, from the one value it says.
        if (!absl::SimpleAtoi(h.value(), &length)) length = -1;
        continue;
      }
    } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding") ||
               absl::EqualsIgnoreCase(name, "Expect")) {
      // The body's framing is this hop's (and the gateway answered
      // 100-continue already).
      continue;
    } else if (absl::EqualsIgnoreCase(name, "Host")) {
      continue;  // first, above
    }
    absl::StrAppend(&r, name, ": ", h.value(), "\r\n");
  }
  if (s.has_body) {
    if (length >= 0) {
      absl::StrAppend(&r, "Content-Length: ", length, "\r\n");
    } else {
      r += "Transfer-Encoding: chunked\r\n";
      t->chunked_up = true;
    }
  }
  r += "\r\n";
  return true;
}

void OriginLoop::LaunchNative(Transfer* t) {
  t->native = true;
  if (!BuildRequest(t)) {
    FailSoon(t, false,
             "the request's method or path cannot be sent in HTTP/1.1");
    return;
  }
  t->parser.emplace(t->response.mutable_headers(), &t->pending,
                    kMaxResponseHeadBytes, t->s->head.method() == "HEAD");
  const LocalTarget& target = *t->s->target;
  Conn* c = nullptr;
  const std::string key = absl::StrCat(target.host, ":", target.port);
  if (auto it = idle_.find(key); it != idle_.end() && !it->second.empty()) {
    c = it->second.back();
    it->second.pop_back();
    --idle_count_;
  } else {
    int err = 0;
    c = OpenConn(target, key, &err);
    if (c == nullptr) {
      FailSoon(t, true, ConnectWords(err));
      return;
    }
  }
  Attach(c, t);
}

std::string OriginLoop::ConnectWords(int err) {
  if (err == ECONNREFUSED) {
    return "connection refused: nothing listens there, or it is down";
  }
  return absl::StrCat("could not connect: ", std::strerror(err));
}

OriginLoop::Conn* OriginLoop::OpenConn(const LocalTarget& target,
                                       const std::string& key, int* err) {
  auto owned = std::make_unique<Conn>();
  Conn* c = owned.get();
  c->serial = ++next_serial_;
  c->key = key;
  c->addresses = TargetAddresses(target);
  *err = EADDRNOTAVAIL;
  if (!StartConnect(c, err)) return nullptr;
  conns_[c->serial] = std::move(owned);
  return c;
}

bool OriginLoop::StartConnect(Conn* c, int* err) {
  while (c->address < c->addresses.size()) {
    const sockaddr_storage& a = c->addresses[c->address];
    const int fd =
        ::socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *err = errno;
      return false;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const socklen_t len =
        a.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), len);
    if (rc == 0 || errno == EINPROGRESS) {
      c->fd = fd;
      c->connecting = rc != 0;
      c->events = 0;
      return true;
    }
    *err = errno;
    ::close(fd);
    ++c->address;
  }
  return false;
}

void OriginLoop::Attach(Conn* c, Transfer* t) {
  c->t = t;
  t->conn = c;
  c->out = t->request_head;
  c->out_off = 0;
  c->in.clear();
  if (c->connecting) {
    ArmDeadline(c, absl::Now() + connect_timeout_);
    SetInterest(c);
    return;
  }
  ArmDeadline(c, absl::Now() + local_timeout_);
  WriteConn(c);
}

uint32_t OriginLoop::WantedEvents(const Conn& c) const {
  if (c.t == nullptr) return EPOLLIN;  // idle: the service closing it
  if (c.connecting) return EPOLLOUT;
  uint32_t e = 0;
  if (!c.t->recv_paused) e |= EPOLLIN;
  if (c.out_off < c.out.size()) e |= EPOLLOUT;
  return e;
}

void OriginLoop::SetInterest(Conn* c) {
  const uint32_t want = WantedEvents(*c);
  if (want == c->events) return;
  if (want == 0) {
    // Out of the epoll entirely: a paused connection's hang-up would
    // otherwise be reported again and again.
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  } else {
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = kNativeTag | c->serial;
    epoll_ctl(epoll_fd_, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd,
              &ev);
  }
  c->events = want;
}

void OriginLoop::ArmDeadline(Conn* c, absl::Time when) {
  c->deadline = when;
  if (when < c->queued_at) {
    deadlines_.push({when, c->serial});
    c->queued_at = when;
  }
}

void OriginLoop::ExpireDeadlines() {
  const absl::Time now = absl::Now();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    const auto [at, serial] = deadlines_.top();
    deadlines_.pop();
    auto it = conns_.find(serial);
    if (it == conns_.end()) continue;
    Conn* c = it->second.get();
    if (c->queued_at != at) continue;  // a later one of its entries
    c->queued_at = absl::InfiniteFuture();
    if (c->t == nullptr || c->deadline == absl::InfiniteFuture()) continue;
    if (c->deadline > now) {
      ArmDeadline(c, c->deadline);
      continue;
    }
    Transfer* t = c->t;
    if (c->connecting) {
      FailSoon(t, true, "no answer to the connection attempt in time");
    } else if (t->recv_paused || t->send_paused) {
      // Waiting for the visitor (credit, or body bytes), not the service:
      // its clock starts again when the transfer resumes.
      c->deadline = absl::InfiniteFuture();
    } else {
      FailSoon(t, false,
               absl::StrCat("the service sent nothing for ",
                            absl::FormatDuration(local_timeout_)));
    }
  }
}

absl::Time OriginLoop::NextDeadline() const {
  return deadlines_.empty() ? absl::InfiniteFuture() : deadlines_.top().first;
}

void OriginLoop::Active(Conn* c) {
  c->deadline = absl::Now() + local_timeout_;
  if (c->deadline < c->queued_at) ArmDeadline(c, c->deadline);
}

void OriginLoop::OnConnEvent(Conn* c, uint32_t events) {
  if (c->t == nullptr) {
    // Idle: the service closed it (or said something unasked).
    CloseConn(c);
    return;
  }
  if (c->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      // The next address (localhost: ::1 after 127.0.0.1), else it fails.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
      ::close(c->fd);
      c->fd = -1;
      ++c->address;
      int next_err = err;
      if (c->address < c->addresses.size() && StartConnect(c, &next_err)) {
        Attach(c, c->t);
        return;
      }
      FailSoon(c->t, true, ConnectWords(err));
      return;
    }
    c->connecting = false;
    ArmDeadline(c, absl::Now() + local_timeout_);
    WriteConn(c);
    return;
  }
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && !ReadConn(c)) return;
  if ((events & EPOLLOUT) != 0) WriteConn(c);
}

bool OriginLoop::WriteConn(Conn* c) {
  Transfer* t = c->t;
  AgentStream& s = *t->s;
  while (true) {
    if (c->out_off < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_off,
                               c->out.size() - c->out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (!Retry(t)) {
          FailSoon(t, false,
                   "the service closed the connection while the request was "
                   "sent");
        }
        return false;
      }
      c->out_off += static_cast<size_t>(n);
      Active(c);
      continue;
    }
    c->out.clear();
    c->out_off = 0;
    if (t->request_sent) break;
    if (!s.has_body || t->up_end) {
      t->request_sent = true;
      break;
    }
    // The next piece of the body, as the visitor sends it.
    uint32_t ack = 0;
    absl::StatusOr<common::Chunk> chunk =
        s.channel.PopData(absl::InfinitePast(), &ack);
    if (ack > 0) {
      t->session.outbox->PushControl(common::MakeWindowUpdate(s.id, ack));
      Touch(t);
    }
    if (!chunk.ok()) {
      // Nothing yet (Wake resumes), or cancelled (Cancel ends it).
      t->send_paused = true;
      break;
    }
    t->body_taken = true;
    t->up_end = chunk->end;
    if (s.capture != nullptr) {
      s.capture->RequestBody(chunk->data);
      if (chunk->end) s.capture->RequestEnd();
    }
    if (t->chunked_up) {
      if (!chunk->data.empty()) {
        absl::StrAppend(&c->out, absl::Hex(chunk->data.size()), "\r\n",
                        chunk->data, "\r\n");
      }
      if (chunk->end) c->out += "0\r\n\r\n";
    } else {
      c->out = std::move(chunk->data);
    }
  }
  SetInterest(c);
  return true;
}

bool OriginLoop::ReadConn(Conn* c) {
  Transfer* t = c->t;
  while (!t->recv_paused) {
    size_t want = kReadBytes;
    if (t->head_sent) {
      // No more than can go on now: bytes waiting for credit or room would
      // sit in memory (up to a read per transfer) rather than in the
      // service's socket, where they slow the service down.
      const size_t credit = t->s->channel.send_credit();
      if (credit == 0 || OutboxFull(t)) {
        t->recv_paused = true;
        break;
      }
      want = std::min(want, credit);
    }
    const ssize_t n = ::recv(c->fd, read_buf_.get(), want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      return ConnEnded(c, errno);
    }
    if (n == 0) return ConnEnded(c, 0);
    t->answered = true;
    Active(c);
    if (!Parse(c, absl::string_view(read_buf_.get(), static_cast<size_t>(n)))) {
      return false;
    }
    if (static_cast<size_t>(n) < want) break;  // the rest: next event
  }
  SetInterest(c);
  return true;
}

bool OriginLoop::Parse(Conn* c, absl::string_view bytes) {
  Transfer* t = c->t;
  absl::string_view data = bytes;
  if (!c->in.empty()) {
    c->in.append(bytes.data(), bytes.size());
    data = c->in;
  }
  const size_t body_before = t->pending.size();
  size_t off = 0;
  bool done = false;
  while (off < data.size()) {
    size_t used = 0;
    std::string error;
    if (!t->parser->Feed(data.substr(off), &used, &error)) {
      FailSoon(
          t, false,
          absl::StrCat("the service's answer is not HTTP/1.x (", error, ")"));
      return false;
    }
    off += used;
    if (t->parser->is_header_done() && !t->parser->informational()) {
      t->status = t->parser->status();
      // The head goes at once, before any body byte.
      if (!t->head_sent) OnHead(t);
    }
    if (t->parser->is_done()) {
      if (!t->parser->informational()) {
        done = true;
        break;
      }
      // 100 Continue, 103 Early Hints: not the answer; the next head is.
      t->parser.emplace(t->response.mutable_headers(), &t->pending,
                        kMaxResponseHeadBytes, t->s->head.method() == "HEAD");
      continue;
    }
    if (used == 0) break;  // a head in pieces: wait for more
  }
  if (data.data() == c->in.data()) {
    c->in.erase(0, off);
  } else {
    c->in.assign(data.data() + off, data.size() - off);
  }
  if (t->s->capture != nullptr && t->pending.size() > body_before) {
    t->s->capture->ResponseBody(
        absl::string_view(t->pending).substr(body_before));
  }
  if (!t->pending.empty() && !FlushPending(t)) {
    // Out of credit (or the outbox is full): the service waits.
    t->recv_paused = true;
  }
  if (done) {
    ResponseDone(c);
    return false;
  }
  if (!t->s->channel.status().ok()) return false;  // cancelled: Cancel ends it
  return true;
}

void OriginLoop::ResponseDone(Conn* c) {
  Transfer* t = c->t;
  // Kept for the next request only if both sides say so and nothing is
  // left over on it.
  if (t->parser->keep_alive() && t->request_sent && c->in.empty()) {
    ReleaseConn(c);
  } else {
    CloseConn(c);
  }
  Completed(t);
}

bool OriginLoop::ConnEnded(Conn* c, int err) {
  Transfer* t = c->t;
  if (err == 0 && t->parser->is_header_done() && t->parser->need_eof()) {
    // A body that runs until the connection closes.
    std::string error;
    if (t->parser->FeedEnd(&error)) {
      ResponseDone(c);  // not kept: keep_alive() is false
      return false;
    }
  }
  if (Retry(t)) return false;
  FailSoon(t, false,
           err != 0 && err != ECONNRESET
               ? absl::StrCat("reading its answer failed: ", std::strerror(err))
           : !t->answered
               ? "the service closed the connection without answering"
               : "the service closed the connection before answering in full");
  return false;
}

bool OriginLoop::Retry(Transfer* t) {
  Conn* old = t->conn;
  // A kept connection the service had closed as this request went out:
  // once more on a new one, unless something of it cannot be sent again.
  if (old == nullptr || !old->reused || t->answered || t->body_taken ||
      t->retried) {
    return false;
  }
  t->retried = true;
  CloseConn(old);
  t->request_sent = false;
  t->parser.emplace(t->response.mutable_headers(), &t->pending,
                    kMaxResponseHeadBytes, t->s->head.method() == "HEAD");
  int err = 0;
  Conn* c =
      OpenConn(*t->s->target,
               absl::StrCat(t->s->target->host, ":", t->s->target->port), &err);
  if (c == nullptr) {
    FailSoon(t, true, ConnectWords(err));
    return true;
  }
  Attach(c, t);
  return true;
}

void OriginLoop::ReleaseConn(Conn* c) {
  if (c->t != nullptr) c->t->conn = nullptr;
  c->t = nullptr;
  if (idle_count_ >= max_concurrent_) {
    CloseConn(c);
    return;
  }
  c->reused = true;
  c->out.clear();
  c->out_off = 0;
  c->deadline = absl::InfiniteFuture();
  SetInterest(c);
  idle_[c->key].push_back(c);
  ++idle_count_;
}

void OriginLoop::CloseConn(Conn* c) {
  if (c->t != nullptr) {
    c->t->conn = nullptr;
  } else if (auto it = idle_.find(c->key); it != idle_.end()) {
    auto& v = it->second;
    if (auto pos = std::find(v.begin(), v.end(), c); pos != v.end()) {
      v.erase(pos);
      --idle_count_;
    }
  }
  if (c->fd >= 0) ::close(c->fd);  // leaves the epoll with it
  conns_.erase(c->serial);         // destroys *c
}

void OriginLoop::FailSoon(Transfer* t, bool unreachable, std::string words) {
  if (t->failing) return;
  t->failing = true;
  if (t->conn != nullptr) CloseConn(t->conn);
  failing_.push_back(Failure{t->s.get(), unreachable, std::move(words)});
}

void OriginLoop::FailNow() {
  // One at a time: a failure's Finish may start a waiting transfer that
  // fails too, which is added here (no recursion).
  for (size_t i = 0; i < failing_.size(); ++i) {
    auto it = transfers_.find(failing_[i].stream);
    if (it == transfers_.end()) continue;  // cancelled meanwhile
    Transfer* t = it->second.get();
    if (t->s->is_cancelled()) {
      Finish(t);
      continue;
    }
    const Failure f = failing_[i];
    Fail(t, f.unreachable, f.words);
  }
  failing_.clear();
}

}  // namespace tunnel::agent
