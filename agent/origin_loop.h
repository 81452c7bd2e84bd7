// The agent's client towards its local services: one thread runs every
// ordinary (not upgraded) request on an event loop, instead of a thread per
// request with a blocking client.
//
// Two clients share the loop's epoll:
//  - plain http targets at an address or "localhost" (the usual local
//    service) go the native way: keep-alive connections of our own, pooled
//    per target and watched while idle (a service closing one is noticed at
//    once), requests written by hand and responses parsed by Boost.Beast's
//    HTTP/1 parser (Content-Length, chunked, until-close, 1xx, HEAD). A
//    small request costs a send and a recv; a kept connection the service
//    closed just as a request went out is tried once more on a new one
//    (unless response or body bytes moved already).
//  - https targets and host names go to libcurl's multi interface
//    (curl_multi_socket_action): TLS, name resolution, connection reuse.
//    It cost 40 % of the agent's CPU for small requests (its per-transfer
//    set-up and two poll calls per request), hence the native client for
//    the common case.
//
// Both stream bodies both ways and pause a transfer in either direction,
// which is how the per-stream credit becomes back-pressure: a response body
// with no credit left stops reading (the service's socket fills and it
// slows down), a request body with nothing yet from the visitor stops
// sending. The session's reader calls Wake when credit or body bytes
// arrive. The loop waits in its own epoll for the sockets, the deadlines
// and an eventfd that commands ring: a round costs the sockets that are
// ready, however many transfers wait (an idle SSE stream costs nothing).
//
// Everything a transfer sends towards the gateway goes into its session's
// Outbox without waking the writer; the loop wakes each session's writer
// once per round, after every transfer had its turn, so under load a round's
// heads and bodies leave in a few batches. The wake starts the gRPC write
// on this thread when none is in flight (agent/gateway_call.h).
//
// At most `max_concurrent` transfers run; later ones wait in order (the
// agent's --max-concurrent); as many idle connections are kept.
//
// Thread-safe: Start, Wake and Cancel from any thread.
#ifndef TUNNEL_AGENT_ORIGIN_LOOP_H_
#define TUNNEL_AGENT_ORIGIN_LOOP_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/agent_stream.h"
#include "agent/loop_wakeup.h"
#include "common/outbox.h"

namespace tunnel::agent {

// The gateway session a transfer answers on.
struct OriginSession {
  common::Outbox* outbox = nullptr;
  uint32_t max_chunk = common::kMaxChunkBytes;
  // Body bytes queued towards the gateway beyond which transfers pause.
  size_t max_queued_bytes = 2 << 20;
  // Response heads may carry their fields as a header block (agreed at
  // connect; the relay host reads both forms).
  bool header_blocks = false;
  // The stream is over (called on the loop's thread).
  std::function<void(uint64_t id)> done;
  // Keeps `outbox` and `done` valid while the transfer lives.
  std::shared_ptr<void> keep;
};

class OriginLoop {
 public:
  OriginLoop(size_t max_concurrent, absl::Duration local_timeout,
             absl::Duration connect_timeout = absl::Seconds(10));
  // Cancels what still runs or waits (their streams see no more messages).
  ~OriginLoop();

  // Forwards `s` (not an upgrade) to its target.
  void Start(std::shared_ptr<AgentStream> s, OriginSession session);
  // Credit or request body bytes arrived for `s`: resume what waited.
  void Wake(std::shared_ptr<AgentStream> s);
  // The gateway cancelled `s` (already aborted): drop its transfer.
  void Cancel(std::shared_ptr<AgentStream> s);
  // Transfers waiting because max_concurrent run.
  size_t queued() const { return queued_.load(std::memory_order_relaxed); }

 private:
  struct Transfer;
  struct Conn;
  enum class Op { kStart, kWake, kCancel };
  struct Command {
    Op op;
    std::shared_ptr<AgentStream> stream;
    OriginSession session;
  };

  void Run();
  void Post(Command c);
  void WakeLoop();
  // libcurl's socket and timer callbacks (curl_multi_socket_action).
  static int OnSocket(void* easy, int fd, int what, void* userp, void* socketp);
  static int OnTimer(void* multi, long timeout_ms, void* userp);
  void Begin(std::shared_ptr<AgentStream> s, OriginSession session);
  void Launch(Transfer* t);
  void Resume(Transfer* t);
  void OnDone(Transfer* t, int result);
  // Sends the body bytes that wait for credit; true once none wait.
  bool FlushPending(Transfer* t);
  // More body bytes queued towards the gateway than `t`'s session allows.
  static bool QueueOverBound(const Transfer& t);
  // The session's outbox is over its bound: `t` resumes when it has room.
  bool OutboxFull(Transfer* t);
  // Ends a transfer: removes it and tells its session.
  void Finish(Transfer* t);
  void Touch(Transfer* t);  // its session's writer needs waking this round

  // libcurl callbacks (userdata: the Transfer).
  static size_t OnHeader(char* data, size_t size, size_t n, void* ud);
  static size_t OnBody(char* data, size_t size, size_t n, void* ud);
  static size_t OnRead(char* data, size_t size, size_t n, void* ud);
  void OnHead(Transfer* t);
  void SendClose(Transfer* t, int reason, const std::string& message);
  // The service answered in full (body bytes may still wait for credit).
  void Completed(Transfer* t);
  // The service failed it: the gateway is told why, and it ends.
  void Fail(Transfer* t, bool unreachable, const std::string& words);

  // The native client (see the top).
  void LaunchNative(Transfer* t);
  bool BuildRequest(Transfer* t);  // false: not sendable in HTTP/1.1
  static std::string ConnectWords(int err);
  Conn* OpenConn(const LocalTarget& target, int* err);
  bool StartConnect(Conn* c, int* err);  // the next address that takes it
  void Attach(Conn* c, Transfer* t);
  uint32_t WantedEvents(const Conn& c) const;
  void SetInterest(Conn* c);
  void ArmDeadline(Conn* c, absl::Time when);
  void Active(Conn* c);  // bytes moved: the service's silence starts again
  void ExpireDeadlines();
  absl::Time NextDeadline() const;
  void OnConnEvent(Conn* c, uint32_t events);
  // Both false once `c` no longer serves its transfer (it may be gone).
  bool WriteConn(Conn* c);
  bool ReadConn(Conn* c);
  bool Parse(Conn* c, absl::string_view bytes);
  bool ConnEnded(Conn* c, int err);  // EOF (0) or a receive error
  void ResponseDone(Conn* c);
  bool Retry(Transfer* t);  // true: taken care of (again, or failing)
  void ReleaseConn(Conn* c);
  void CloseConn(Conn* c);
  // Fails `t` at the loop's next round (never inside Launch or an event
  // handler, so a failure never recurses into starting the next transfer).
  void FailSoon(Transfer* t, bool unreachable, std::string words);
  void FailNow();

  const size_t max_concurrent_;
  const absl::Duration local_timeout_;
  const absl::Duration connect_timeout_;
  void* multi_ = nullptr;  // CURLM*
  int epoll_fd_ = -1;      // libcurl's sockets and the wakeup's eventfd
  // Commands waiting, or room in an outbox.
  const std::shared_ptr<LoopWakeup> wakeup_ = std::make_shared<LoopWakeup>();
  absl::Time timer_ = absl::InfiniteFuture();  // libcurl's next deadline
  std::atomic<size_t> queued_{0};

  absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Loop thread only.
  absl::flat_hash_map<AgentStream*, std::unique_ptr<Transfer>> transfers_;
  std::deque<Transfer*> waiting_;  // not started: max_concurrent run
  size_t running_ = 0;
  // Transfers paused because their session's outbox is full, retried when
  // an outbox has room again (Outbox::OnRoom); the outboxes asked, with
  // their sessions kept alive until then.
  absl::flat_hash_set<Transfer*> room_waiters_;
  absl::flat_hash_map<common::Outbox*, std::shared_ptr<void>> room_asked_;
  absl::flat_hash_set<common::Outbox*> touched_;
  std::vector<std::shared_ptr<void>> touched_keep_;  // their sessions
  std::vector<void*> idle_handles_;                  // CURL* for reuse
  std::vector<bool> skip_scratch_;                   // Launch's, reused
  // The native client's connections (by serial; epoll events carry it with
  // kNativeTag), the idle ones by target, their deadlines (earliest first;
  // entries may be stale, see ExpireDeadlines) and failures due.
  static constexpr uint64_t kNativeTag = uint64_t{1} << 63;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Conn>> conns_;
  absl::flat_hash_map<std::string, std::vector<Conn*>> idle_;
  size_t idle_count_ = 0;
  uint64_t next_serial_ = 0;
  std::priority_queue<std::pair<absl::Time, uint64_t>,
                      std::vector<std::pair<absl::Time, uint64_t>>,
                      std::greater<>>
      deadlines_;
  struct Failure {
    AgentStream* stream;
    bool unreachable;
    std::string words;
  };
  std::vector<Failure> failing_;
  std::unique_ptr<char[]> read_buf_;  // the native client's reads
  std::thread thread_;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_ORIGIN_LOOP_H_
