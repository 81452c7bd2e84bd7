#include "agent/gateway_call.h"

#include <chrono>
#include <utility>

namespace tunnel::agent {

using tunnel::v1::Envelope;

GatewayCall::GatewayCall(tunnel::v1::TunnelService::Stub* stub,
                         grpc::ClientContext* ctx)
    : ctx_(ctx), stream_(stub->PrepareAsyncConnect(ctx, &cq_)) {}

GatewayCall::~GatewayCall() {
  if (drained_) return;
  // Finish was not reached (it drains): end the call and empty the queue.
  ctx_->TryCancel();
  ShutDownQueue();
}

void GatewayCall::ShutDownQueue() {
  cq_.Shutdown();
  void* tag;
  bool ok;
  while (cq_.Next(&tag, &ok)) {
  }
  drained_ = true;
}

bool GatewayCall::Next(Op* op, bool* ok, absl::Time deadline) {
  void* tag = nullptr;
  const grpc::CompletionQueue::NextStatus status =
      deadline == absl::InfiniteFuture()
          ? (cq_.Next(&tag, ok) ? grpc::CompletionQueue::GOT_EVENT
                                : grpc::CompletionQueue::SHUTDOWN)
          : cq_.AsyncNext(&tag, ok, absl::ToChronoTime(deadline));
  if (status != grpc::CompletionQueue::GOT_EVENT) return false;
  *op = static_cast<Op>(reinterpret_cast<intptr_t>(tag));
  return true;
}

bool GatewayCall::Handshake(Envelope hello, absl::Duration timeout,
                            Envelope* first) {
  out_ = std::move(hello);
  // The call's metadata leaves with the hello, in one write: a corked start
  // completes nothing itself.
  ctx_->set_initial_metadata_corked(true);
  stream_->StartCall(TagOf(Op::kStart));
  ++writes_pending_;
  stream_->Write(out_, TagOf(Op::kWrite));
  stream_->Read(&in_, TagOf(Op::kRead));
  bool read = false, read_ok = false;
  absl::Time deadline = absl::Now() + timeout;
  while (!read || writes_pending_.load() > 0) {
    Op op;
    bool ok = false;
    if (!Next(&op, &ok, deadline)) {
      ctx_->TryCancel();  // silent too long: every operation ends now
      deadline = absl::InfiniteFuture();
      continue;
    }
    if (op == Op::kRead) {
      read = true;
      read_ok = ok;
    } else if (op == Op::kWrite) {
      --writes_pending_;  // the hello: nothing queued behind it yet
    }
  }
  if (!read_ok) return false;
  *first = std::move(in_);
  return true;
}

void GatewayCall::Run(const std::function<void(Envelope*)>& on_message) {
  stream_->Read(&in_, TagOf(Op::kRead));
  while (true) {
    Op op;
    bool ok = false;
    if (!Next(&op, &ok, absl::InfiniteFuture())) return;
    if (op != Op::kRead) {
      Handle(op, ok);
      continue;
    }
    if (!ok) return;  // the call ended
    on_message(&in_);
    stream_->Read(&in_, TagOf(Op::kRead));
  }
}

void GatewayCall::Handle(Op op, bool ok) {
  if (op == Op::kWrite) {
    OnWriteDone(ok);
  } else if (op == Op::kWritesDone) {
    --writes_done_pending_;
  }
}

void GatewayCall::Kick() {
  absl::MutexLock lock(&start_mu_);
  if (finishing_ || outbox_ == nullptr) return;
  bool more = false;
  if (outbox_->ClaimNext(&out_, &more)) {
    StartWrite(more);
    return;
  }
  MaybeWritesDone();
}

void GatewayCall::OnWriteDone(bool ok) {
  // The completion holds the writer role until it gives it up below.
  --writes_pending_;
  // A failed write means the call is broken: cancel it (reading ends too)
  // and drop what is queued; producers never wait on the call itself.
  if (!ok && !write_failed_.exchange(true)) ctx_->TryCancel();
  bool more = false;
  while (outbox_->NextOrRelease(&out_, &more)) {
    if (!write_failed_.load(std::memory_order_relaxed)) {
      StartWrite(more);
      return;
    }
  }
  MaybeWritesDone();
}

void GatewayCall::StartWrite(bool more) {
  grpc::WriteOptions options;
  if (more) options.set_buffer_hint();  // another follows at once
  ++writes_pending_;
  stream_->Write(out_, options, TagOf(Op::kWrite));
}

void GatewayCall::MaybeWritesDone() {
  // Closed and drained (a drain): half-close, so the gateway ends the call.
  if (outbox_ != nullptr && outbox_->Finished() &&
      !writes_done_.exchange(true)) {
    ++writes_done_pending_;
    stream_->WritesDone(TagOf(Op::kWritesDone));
  }
}

grpc::Status GatewayCall::Finish() {
  {
    absl::MutexLock lock(&start_mu_);
    finishing_ = true;  // from now on only this thread starts operations
  }
  // A read in flight ends when the call does; writes end as they complete.
  while (writes_pending_.load() > 0 || writes_done_pending_.load() > 0) {
    Op op;
    bool ok = false;
    if (!Next(&op, &ok, absl::InfiniteFuture())) break;
    Handle(op, ok);
  }
  grpc::Status status;
  stream_->Finish(&status, TagOf(Op::kFinish));
  while (true) {
    Op op;
    bool ok = false;
    if (!Next(&op, &ok, absl::InfiniteFuture())) break;
    if (op == Op::kFinish) break;
    Handle(op, ok);
  }
  ShutDownQueue();
  // The stream lives in the call, which `ctx_` owns: gone before it (a
  // late Kick may keep this object a little longer).
  stream_.reset();
  return status;
}

}  // namespace tunnel::agent
