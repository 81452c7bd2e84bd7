// The send queue of one session: every Envelope either side writes to the
// tunnel stream goes through one Outbox, drained by exactly one writer.
//
// Two lanes: control messages (pings, pongs, window updates, stream closes)
// jump ahead of heads and data, so flow control never waits behind bulk data.
// Within the data lane order is FIFO, and body bytes for a stream whose
// previous message (a TunnelData, or a TunnelResponse/TunnelRequest head) is
// still queued are appended to that message, up to max_chunk bytes: the
// writer sends fewer, larger messages exactly when it is the bottleneck, and
// a lone chunk (an SSE event) leaves at once.
//
// Memory is bounded twice: data is only enqueued against stream credit (so
// the data lane never holds more than streams x window), and producers of
// body bytes call WaitForRoom first, which holds them while the queued bytes
// (bodies and heads) exceed the session's limit. Control messages are never
// held; their number is the owner's to bound (see control_size).
//
// Thread-safe; WaitForRoom also suspends a front-door fiber instead of its
// thread (see fiber_wait.h).
#ifndef TUNNEL_COMMON_OUTBOX_H_
#define TUNNEL_COMMON_OUTBOX_H_

#include <cstdint>
#include <deque>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fiber_wait.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::common {

class Outbox {
 public:
  explicit Outbox(size_t max_chunk);

  // Batching, once both sides agreed on it (EnvelopeBatch in tunnel.proto):
  // from now on every pop takes all queued messages (control first, in
  // order) whose encoded size fits in `max_bytes` into one EnvelopeBatch;
  // a message that is alone, or over 16 KiB (a chunk of a large body),
  // stays plain. 0: off.
  void EnableBatching(size_t max_bytes);

  // Control lane.
  void PushControl(tunnel::v1::Envelope e);
  // Data lane; coalesces data as described above.
  void Push(tunnel::v1::Envelope e);
  // Convenience: body bytes for `stream_id`.
  void PushData(uint64_t stream_id, std::string data, bool end);

  // Takes the next message (control first). False if empty.
  bool TryPop(tunnel::v1::Envelope* out);
  // Blocks until a message, Close(), or the deadline. False if closed (and
  // drained) or timed out.
  bool PopWait(tunnel::v1::Envelope* out, absl::Time deadline);
  // Blocks while more than `max_bytes` of body bytes are queued. False on
  // deadline or Close().
  bool WaitForRoom(size_t max_bytes, absl::Time deadline);
  // The event-driven form of WaitForRoom: calls `cb` once, as soon as no
  // more than `max_bytes` are queued or the outbox is closed or cleared (at
  // once, on this thread, if that is so already). A later call replaces a
  // callback that has not run. `cb` runs with the outbox's lock held, on
  // the thread that popped: it must be short and must not call the outbox.
  void OnRoom(size_t max_bytes, absl::AnyInvocable<void()> cb);
  // Body bytes currently queued, and the heads' paths and fields (a head
  // can carry 64 KiB of them: they count against WaitForRoom's bound too).
  size_t queued_bytes() const;
  // Messages in the control lane.
  size_t control_size() const;

  // The writer role: one holder at a time writes, so the stream sees one
  // write at a time. `more` says whether further messages are queued (a
  // buffer hint).
  //
  // Takes the role and the next message if nobody holds the role, the
  // outbox is open and not empty (a writer that drains what was queued in
  // one go: the relay's pump).
  bool TryClaim(tunnel::v1::Envelope* out, bool* more);
  // For an asynchronous stream, which starts one write at a time and learns
  // later that it is done: whoever queued a message (its wake callback)
  // calls ClaimNext, which takes the role and the next message if nobody
  // holds the role and something is queued, also after Close() (what was
  // queued before it still goes out); the write's completion calls
  // NextOrRelease. Finished: closed and drained, nobody holds the role (the
  // writer half-closes then).
  bool ClaimNext(tunnel::v1::Envelope* out, bool* more);
  bool Finished() const;
  // The role holder's next message; when there is none, gives up the role.
  bool NextOrRelease(tunnel::v1::Envelope* out, bool* more);
  // Runs the wake callback: something was queued, or the outbox closed.
  void WakeWriter();
  // `fn` runs at every WakeWriter, on the caller's thread and without the
  // outbox's lock; the writer then takes the role. Set before any producer
  // runs.
  void SetWakeCallback(std::function<void()> fn) { wake_cb_ = std::move(fn); }

  // Wakes PopWait and WaitForRoom; later pushes are dropped.
  void Close();
  // Drops everything queued.
  void Clear();
  bool empty() const;
  size_t size() const;

 private:
  // One message, or a batch of them when batching is on.
  bool PopLocked(tunnel::v1::Envelope* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool PopOneLocked(tunnel::v1::Envelope* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const tunnel::v1::Envelope* PeekLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_chunk_;
  mutable absl::Mutex mu_;
  std::deque<tunnel::v1::Envelope> control_ ABSL_GUARDED_BY(mu_);
  std::deque<tunnel::v1::Envelope> data_ ABSL_GUARDED_BY(mu_);
  // Last queued data-lane message of each stream that can still take bytes.
  // Pointers stay valid: std::deque keeps element addresses across
  // push_back/pop_front, and an entry is erased before its element is popped.
  absl::flat_hash_map<uint64_t, tunnel::v1::Envelope*> open_tail_
      ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool claimed_ ABSL_GUARDED_BY(mu_) = false;  // the writer role is taken
  std::function<void()> wake_cb_;              // set before use, then read-only
  size_t batch_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Fibers in WaitForRoom (threads wait on mu_ itself): woken once the
  // queued bytes are down to the smallest limit any of them waits for.
  FiberWaitList room_waiters_ ABSL_GUARDED_BY(mu_);
  size_t room_threshold_ ABSL_GUARDED_BY(mu_) = 0;
  // OnRoom's callback and its limit.
  absl::AnyInvocable<void()> room_cb_ ABSL_GUARDED_BY(mu_);
  size_t room_cb_threshold_ ABSL_GUARDED_BY(mu_) = 0;
  void RunRoomCallbackLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_OUTBOX_H_
