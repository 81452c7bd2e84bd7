// The agent's client towards its local services: one thread runs every
// ordinary (not upgraded) request on libcurl's multi interface, instead of a
// thread per request with a blocking client.
//
// What libcurl brings: keep-alive connection reuse per target (the multi
// handle's connection cache), http and https targets, chunked and
// known-length bodies both ways, and pausing a transfer in either direction,
// which is how the per-stream credit becomes back-pressure: a response body
// with no credit left pauses receiving (the service's socket fills and it
// slows down), a request body with nothing yet from the visitor pauses
// sending. The session's reader calls Wake when credit or body bytes
// arrive. The loop waits in its own epoll for libcurl's sockets
// (curl_multi_socket_action), libcurl's timer and an eventfd that commands
// ring: a round costs the sockets that are ready, however many transfers
// wait (an idle SSE stream costs nothing).
//
// Everything a transfer sends towards the gateway goes into its session's
// Outbox without waking the writer; the loop wakes each session's writer
// once per round, after every transfer had its turn, so under load a round's
// heads and bodies leave in a few batches.
//
// At most `max_concurrent` transfers run; later ones wait in order (the
// agent's --max-concurrent).
//
// Thread-safe: Start, Wake and Cancel from any thread.
#ifndef TUNNEL_AGENT_ORIGIN_LOOP_H_
#define TUNNEL_AGENT_ORIGIN_LOOP_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
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
  // Ends a transfer: removes it and tells its session.
  void Finish(Transfer* t);
  void Touch(Transfer* t);  // its session's writer needs waking this round

  // libcurl callbacks (userdata: the Transfer).
  static size_t OnHeader(char* data, size_t size, size_t n, void* ud);
  static size_t OnBody(char* data, size_t size, size_t n, void* ud);
  static size_t OnRead(char* data, size_t size, size_t n, void* ud);
  void OnHead(Transfer* t);
  void SendClose(Transfer* t, int reason, const std::string& message);

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
  std::thread thread_;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_ORIGIN_LOOP_H_
