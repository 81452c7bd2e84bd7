#include "common/flow_control.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/fiber_wait.h"

namespace tunnel::common {

StreamChannel::StreamChannel(uint32_t send_window, uint32_t receive_window)
    : send_credit_(send_window), receive_window_(receive_window) {}

absl::StatusOr<size_t> StreamChannel::AcquireSendCredit(size_t want,
                                                        absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return send_credit_ > 0 || !abort_.ok();
  };
  ++credit_waiters_;
  bool ok = AwaitWithDeadline(mu_, absl::Condition(&ready), deadline, senders_);
  --credit_waiters_;
  if (!ok) {
    return absl::DeadlineExceededError(
        "timed out waiting for the peer to accept more data");
  }
  if (!abort_.ok()) return abort_;
  size_t granted = std::min<int64_t>(send_credit_, want);
  send_credit_ -= granted;
  return granted;
}

size_t StreamChannel::send_credit() const {
  absl::MutexLock lock(&mu_);
  return send_credit_ > 0 ? static_cast<size_t>(send_credit_) : 0;
}

absl::Status StreamChannel::AddSendCredit(uint64_t increment) {
  absl::MutexLock lock(&mu_);
  if (send_credit_ + increment > (uint64_t{1} << 31)) {
    return absl::OutOfRangeError(
        absl::StrCat("window update of ", increment, " overflows the window"));
  }
  send_credit_ += increment;
  senders_.WakeAll();
  return absl::OkStatus();
}

absl::Status StreamChannel::PushData(std::string data, bool end) {
  absl::MutexLock lock(&mu_);
  if (!abort_.ok()) return absl::OkStatus();  // late data for a dead stream
  if (end_received_) {
    return absl::FailedPreconditionError("data after end of stream");
  }
  if (unacked_ + data.size() > receive_window_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("peer sent ", unacked_ + data.size(),
                     " bytes beyond a window of ", receive_window_));
  }
  unacked_ += data.size();
  end_received_ = end;
  if (!data.empty() || end) {
    inbound_.push_back(Chunk{std::move(data), end});
    receivers_.WakeAll();
  }
  return absl::OkStatus();
}

absl::StatusOr<Chunk> StreamChannel::PopData(absl::Time deadline,
                                             uint32_t* ack) {
  *ack = 0;
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !inbound_.empty() || !abort_.ok();
  };
  if (!AwaitWithDeadline(mu_, absl::Condition(&ready), deadline, receivers_)) {
    return absl::DeadlineExceededError("timed out waiting for data");
  }
  if (!abort_.ok()) return abort_;
  Chunk chunk = std::move(inbound_.front());
  inbound_.pop_front();
  consumed_unacked_ += chunk.data.size();
  if (chunk.end) {
    end_popped_ = true;
  } else if (consumed_unacked_ >= receive_window_ / 4) {
    // Batch updates: one per quarter window keeps the control traffic small
    // while the sender never idles for lack of credit.
    *ack = static_cast<uint32_t>(consumed_unacked_);
    unacked_ -= consumed_unacked_;
    consumed_unacked_ = 0;
  }
  return chunk;
}

absl::Status StreamChannel::SetHead(tunnel::v1::TunnelResponse head) {
  absl::MutexLock lock(&mu_);
  if (head_.has_value()) {
    return absl::FailedPreconditionError("second response head on a stream");
  }
  head_ = std::move(head);
  receivers_.WakeAll();
  return absl::OkStatus();
}

absl::StatusOr<tunnel::v1::TunnelResponse> StreamChannel::AwaitHead(
    absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return head_.has_value() || !abort_.ok();
  };
  if (!AwaitWithDeadline(mu_, absl::Condition(&ready), deadline, receivers_)) {
    return absl::DeadlineExceededError("no response head before the deadline");
  }
  if (!abort_.ok()) return abort_;
  // Moved out, not copied (a head may carry 64 KiB of fields); head_ stays
  // set, so a second head from the peer is still refused.
  if (head_taken_) {
    return absl::FailedPreconditionError("the response head was taken already");
  }
  head_taken_ = true;
  return std::move(*head_);
}

void StreamChannel::Abort(absl::Status why) {
  absl::MutexLock lock(&mu_);
  if (!abort_.ok()) return;
  abort_ = why.ok() ? absl::CancelledError("stream closed") : std::move(why);
  inbound_.clear();
  receivers_.WakeAll();
  senders_.WakeAll();
}

void StreamChannel::AbortIfIncomplete(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    if (end_received_) return;
  }
  Abort(std::move(why));
}

absl::Status StreamChannel::status() const {
  absl::MutexLock lock(&mu_);
  return abort_;
}

bool StreamChannel::receive_finished() const {
  absl::MutexLock lock(&mu_);
  return end_popped_;
}

bool StreamChannel::send_stalled() const {
  absl::MutexLock lock(&mu_);
  return credit_waiters_ > 0 && send_credit_ <= 0 && abort_.ok();
}

bool StreamChannel::receive_window_full() const {
  absl::MutexLock lock(&mu_);
  return unacked_ >= receive_window_ && abort_.ok();
}

}  // namespace tunnel::common
