// Per-stream flow control: one StreamChannel per stream on each side.
//
// Each direction of a stream has a credit window. The sending side may have
// at most `send_window` bytes outstanding; the receiving side buffers what
// arrives and, as its consumer drains it, hands back WindowUpdate increments.
// A slow consumer therefore stops only its own stream's sender, and a stream
// never buffers more than its window (no head-of-line blocking, flat memory).
//
// Threads: the network thread calls the Push*/Add*/Set*/Abort methods; one
// producer calls AcquireSendCredit and one consumer calls PopData/AwaitHead
// (each a thread, or a fiber of the front door's loops: see fiber_wait.h).
// Every method is thread-safe; the blocking ones take a deadline and never
// wait past it.
#ifndef TUNNEL_COMMON_FLOW_CONTROL_H_
#define TUNNEL_COMMON_FLOW_CONTROL_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fiber_wait.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::common {

inline constexpr uint32_t kDefaultStreamWindow = 256 * 1024;
inline constexpr uint32_t kMaxChunkBytes = 64 * 1024;
inline constexpr uint32_t kMinStreamWindow = kMaxChunkBytes;

struct Chunk {
  std::string data;
  bool end = false;  // the sender finished this direction after `data`
};

class StreamChannel {
 public:
  StreamChannel(uint32_t send_window, uint32_t receive_window);

  // --- sending side ---
  // Waits until some credit is available and takes up to `want` bytes of it.
  // Fails with the abort status, or DEADLINE_EXCEEDED at `deadline`.
  absl::StatusOr<size_t> AcquireSendCredit(size_t want, absl::Time deadline);
  // A WindowUpdate from the peer. Fails (FLOW_CONTROL) if the credit would
  // exceed 2^31 bytes: a peer that grants more than it could have consumed
  // is broken.
  absl::Status AddSendCredit(uint64_t increment);
  // The credit there is now, without taking it.
  size_t send_credit() const;

  // --- receiving side ---
  // Bytes from the peer. Fails if the peer overran its credit or sent after
  // end_stream; the caller then aborts the stream.
  absl::Status PushData(std::string data, bool end);
  // Next chunk in order. `*ack` receives the WindowUpdate increment the
  // caller should now send (0: none yet; increments are batched to a quarter
  // window). Fails with the abort status or DEADLINE_EXCEEDED.
  absl::StatusOr<Chunk> PopData(absl::Time deadline, uint32_t* ack);

  // --- response head (gateway side only) ---
  absl::Status SetHead(tunnel::v1::TunnelResponse head);
  // The head, once: it is moved to the caller, and a second call fails
  // (FAILED_PRECONDITION).
  absl::StatusOr<tunnel::v1::TunnelResponse> AwaitHead(absl::Time deadline);

  // Terminal failure: wakes every waiter, which then returns `why`. Data not
  // yet popped is discarded: an aborted stream is never read as complete.
  // Only the first abort counts.
  void Abort(absl::Status why);
  // Like Abort, unless the peer already delivered its whole body (end
  // received): a connection that closes after a complete response does not
  // take that response away from its reader.
  void AbortIfIncomplete(absl::Status why);
  // The abort status, or OK while the stream is alive.
  absl::Status status() const;
  // True once PopData has returned the chunk with end = true.
  bool receive_finished() const;

  // Flow-control stalls, for metrics (read at scrape time): a producer is
  // waiting in AcquireSendCredit with no credit; the peer has no credit left
  // because our consumer has not drained what it sent.
  bool send_stalled() const;
  bool receive_window_full() const;

 private:
  mutable absl::Mutex mu_;
  int64_t send_credit_ ABSL_GUARDED_BY(mu_);
  int credit_waiters_ ABSL_GUARDED_BY(mu_) = 0;
  const uint32_t receive_window_;
  std::deque<Chunk> inbound_ ABSL_GUARDED_BY(mu_);
  // Bytes the peer sent that we have not yet acknowledged (buffered + popped
  // but not acked). The peer may never push us beyond receive_window_.
  uint64_t unacked_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t consumed_unacked_ ABSL_GUARDED_BY(mu_) = 0;
  bool end_received_ ABSL_GUARDED_BY(mu_) = false;
  bool end_popped_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<tunnel::v1::TunnelResponse> head_ ABSL_GUARDED_BY(mu_);
  bool head_taken_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status abort_ ABSL_GUARDED_BY(mu_);
  // Fibers waiting for credit (the producer) and for a head or data (the
  // consumer); threads wait on mu_ itself.
  FiberWaitList senders_ ABSL_GUARDED_BY(mu_);
  FiberWaitList receivers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_FLOW_CONTROL_H_
