// The agent's call to the gateway (TunnelService.Connect) on gRPC's
// asynchronous API, with a completion queue of its own.
//
// One thread (the session's) runs the queue: it reads, hands each message
// to the session at once, and takes the writes' completions. A write starts
// on whichever thread queued its message (the origin loop, at the end of
// its round) when no write is in flight, and the next one from the previous
// one's completion. So an answer leaves from the thread that produced it,
// with no writer thread to wake on its way, and no thread ever blocks in a
// write: a gateway that reads slowly only lets the session's outbox fill,
// which its own bounds hold. The outbox's writer role (Outbox::ClaimNext,
// NextOrRelease) keeps one write in flight.
#ifndef TUNNEL_AGENT_GATEWAY_CALL_H_
#define TUNNEL_AGENT_GATEWAY_CALL_H_

#include <atomic>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/outbox.h"
#include "grpcpp/grpcpp.h"
#include "tunnel/v1/tunnel.grpc.pb.h"

namespace tunnel::agent {

class GatewayCall {
 public:
  // Prepares the call; `ctx` outlives it.
  GatewayCall(tunnel::v1::TunnelService::Stub* stub, grpc::ClientContext* ctx);
  ~GatewayCall();
  GatewayCall(const GatewayCall&) = delete;
  GatewayCall& operator=(const GatewayCall&) = delete;

  // Starts the call: sends `hello` and reads the gateway's answer. True
  // with the answer in *first once both are done; false if the call ended
  // without one. A gateway silent for `timeout` is given up on (the call
  // is cancelled).
  bool Handshake(tunnel::v1::Envelope hello, absl::Duration timeout,
                 tunnel::v1::Envelope* first);

  // Writes what `outbox` holds from now on: its wake callback must call
  // Kick. Before the first producer runs.
  void Attach(common::Outbox* outbox) { outbox_ = outbox; }
  // Runs the queue on this thread until reading ends (the gateway ended
  // the call, or it broke or was cancelled): every message goes to
  // `on_message`, in order.
  void Run(const std::function<void(tunnel::v1::Envelope*)>& on_message);
  // Something was queued (or the outbox was closed): starts a write if
  // none is in flight, or half-closes once the closed outbox is drained.
  // Any thread.
  void Kick();
  // On the thread that ran Handshake and Run, once the outbox is closed:
  // waits for the writes in flight and the call's end (cancel it first to
  // end it now), and returns its status.
  grpc::Status Finish();

 private:
  enum class Op : intptr_t { kStart = 1, kRead, kWrite, kWritesDone, kFinish };
  static void* TagOf(Op op) { return reinterpret_cast<void*>(op); }
  // The queue's next event; false when `deadline` passed first.
  bool Next(Op* op, bool* ok, absl::Time deadline);
  // Bookkeeping of an event that is not a read.
  void Handle(Op op, bool ok);
  void OnWriteDone(bool ok);
  // Starts a write of out_ (the caller holds the outbox's writer role).
  void StartWrite(bool more);
  // Half-closes once the outbox is closed and drained.
  void MaybeWritesDone();
  // Shuts the queue down and takes what is left in it.
  void ShutDownQueue();

  grpc::ClientContext* const ctx_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<
      grpc::ClientAsyncReaderWriter<tunnel::v1::Envelope, tunnel::v1::Envelope>>
      stream_;
  common::Outbox* outbox_ = nullptr;  // set by Attach
  tunnel::v1::Envelope in_;           // the read in flight's message
  tunnel::v1::Envelope out_;          // the write in flight's
  // Operations started and not yet taken from the queue.
  std::atomic<int> writes_pending_{0};
  std::atomic<int> writes_done_pending_{0};
  std::atomic<bool> writes_done_{false};
  std::atomic<bool> write_failed_{false};
  bool drained_ = false;  // the queue is shut down and empty

  // Kick starts writes from other threads: never once Finish began.
  absl::Mutex start_mu_;
  bool finishing_ ABSL_GUARDED_BY(start_mu_) = false;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_GATEWAY_CALL_H_
