#include "agent/origin_loop.h"

#include <curl/curl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "agent/origin_internal.h"
#include "common/envelopes.h"
#include "common/header_block.h"
#include "common/headers.h"
#include "common/log.h"
#include "common/wake_fd.h"

namespace tunnel::agent {
namespace {

using tunnel::v1::Envelope;
using tunnel::v1::TunnelClose;

CURLM* Multi(void* m) { return static_cast<CURLM*>(m); }

// Easy handles kept for reuse (each holds a receive buffer of a chunk).
constexpr size_t kMaxIdleHandles = 16;
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
  ev.events = common::kWakeFdEvents;
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
      if (fd == wakeup_->fd) continue;  // a wake-up: nothing to read
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
  skip.clear();
  auto note = [&](absl::string_view name, absl::string_view value) {
    skip.push_back(true);
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      if (s.has_body) {
        // curl writes it from CURLOPT_INFILESIZE_LARGE.
        if (!absl::SimpleAtoi(value, &length)) length = -1;
        return;
      }
    } else if (absl::EqualsIgnoreCase(name, "Expect")) {
      return;  // the gateway answered 100-continue already
    } else if (absl::EqualsIgnoreCase(name, "Accept")) {
      has_accept = true;
    }
    skip.back() = false;
    room += name.size() + value.size() + 3;
    ++lines;
  };
  common::ForEachField(head, note);
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
  size_t i = 0;
  auto add = [&](absl::string_view name, absl::string_view value) {
    if (skip[i++]) return;
    // "Name;" is how curl sends a field with an empty value.
    if (value.empty()) {
      add_line(name, ";", "");
    } else {
      add_line(name, ": ", value);
    }
  };
  common::ForEachField(head, add);
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
    t->s->capture->ResponseHead(t->status, common::FieldsOf(t->response));
  }
  Envelope e;
  auto* r = e.mutable_response();
  *r = std::move(t->response);
  r->set_stream_id(t->s->id);
  r->set_status(static_cast<uint32_t>(t->status));
  // The native client's fields are in the block (its own, well formed),
  // libcurl's in `headers`.
  (void)common::StripHopByHop(r->mutable_header_block());
  common::StripHopByHop(r->mutable_headers());
  if (!t->session.header_blocks) (void)common::ExpandHeaderBlock(r);
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

bool OriginLoop::QueueOverBound(const Transfer& t) {
  return t.session.outbox->queued_bytes() > t.session.max_queued_bytes;
}

bool OriginLoop::OutboxFull(Transfer* t) {
  if (!QueueOverBound(*t)) return false;
  const OriginSession& session = t->session;
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

}  // namespace tunnel::agent
