#include "common/outbox.h"

#include <algorithm>

#include "common/envelopes.h"

namespace tunnel::common {
namespace {

using tunnel::v1::Envelope;

// The stream a data-lane message belongs to, and whether more body bytes may
// be appended to it (it does not already end its direction).
bool Appendable(const Envelope& e, uint64_t* stream_id) {
  switch (e.message_case()) {
    case Envelope::kData:
      *stream_id = e.data().stream_id();
      return !e.data().end_stream();
    case Envelope::kResponse:
      *stream_id = e.response().stream_id();
      return !e.response().end_stream();
    case Envelope::kRequest:
      *stream_id = e.request().stream_id();
      return !e.request().end_stream();
    default:
      return false;
  }
}

size_t BodySize(const Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kData:
      return e.data().data().size();
    case Envelope::kResponse:
      return e.response().body().size();
    case Envelope::kRequest:
      return e.request().body().size();
    case Envelope::kRelay:  // an encrypted share's frame: all of it
      return e.relay().frame().size();
    default:
      return 0;
  }
}

// What a head costs in the queue besides its body: its path and fields.
size_t HeadSize(const Envelope& e) {
  const google::protobuf::RepeatedPtrField<tunnel::v1::HeaderField>* headers;
  size_t n = 0;
  switch (e.message_case()) {
    case Envelope::kRequest:
      headers = &e.request().headers();
      n = e.request().path().size() + e.request().method().size() +
          e.request().header_block().size();
      break;
    case Envelope::kResponse:
      headers = &e.response().headers();
      n = e.response().header_block().size();
      break;
    default:
      return 0;
  }
  for (const auto& h : *headers) n += h.name().size() + h.value().size() + 4;
  return n;
}

size_t QueuedSize(const Envelope& e) { return BodySize(e) + HeadSize(e); }

void Append(Envelope* e, const std::string& bytes, bool end) {
  switch (e->message_case()) {
    case Envelope::kData:
      e->mutable_data()->mutable_data()->append(bytes);
      e->mutable_data()->set_end_stream(end);
      break;
    case Envelope::kResponse:
      e->mutable_response()->mutable_body()->append(bytes);
      e->mutable_response()->set_end_stream(end);
      break;
    case Envelope::kRequest:
      e->mutable_request()->mutable_body()->append(bytes);
      e->mutable_request()->set_end_stream(end);
      break;
    default:
      break;
  }
}

}  // namespace

Outbox::Outbox(size_t max_chunk) : max_chunk_(max_chunk) {}

void Outbox::PushControl(Envelope e) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  control_.push_back(std::move(e));
}

void Outbox::Push(Envelope e) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  uint64_t id = 0;
  bool appendable = Appendable(e, &id);
  if (e.message_case() == Envelope::kData) {
    auto it = open_tail_.find(id);
    if (it != open_tail_.end() &&
        BodySize(*it->second) + e.data().data().size() <= max_chunk_) {
      bytes_ += e.data().data().size();
      Append(it->second, e.data().data(), e.data().end_stream());
      if (e.data().end_stream()) open_tail_.erase(it);
      return;
    }
  }
  bytes_ += QueuedSize(e);
  data_.push_back(std::move(e));
  if (appendable) {
    open_tail_[id] = &data_.back();
  } else if (id != 0) {
    open_tail_.erase(id);
  }
}

void Outbox::PushData(uint64_t stream_id, std::string data, bool end) {
  Push(MakeData(stream_id, std::move(data), end));
}

void Outbox::EnableBatching(size_t max_bytes) {
  absl::MutexLock lock(&mu_);
  batch_bytes_ = max_bytes;
}

const Envelope* Outbox::PeekLocked() const {
  if (!control_.empty()) return &control_.front();
  if (!data_.empty()) return &data_.front();
  return nullptr;
}

// What one envelope adds to a batch's encoding: its bytes plus the field's
// tag and length (at most 1 + 5 bytes).
static size_t BatchCost(size_t envelope_bytes) { return envelope_bytes + 6; }

// Larger envelopes (body chunks of a big transfer) travel alone: batching
// them saves no write, and copying several into one message costs memory
// bandwidth and, above glibc's mmap threshold, fresh pages for every
// message (measured: a 1 GiB download fell from 330 to 130 MB/s).
constexpr size_t kMaxBatchMember = 16 << 10;

// Handshake messages always travel alone.
static bool Batchable(const Envelope& e) {
  switch (e.message_case()) {
    case Envelope::kConnect:
    case Envelope::kAccepted:
    case Envelope::kConnectError:
    case Envelope::kBatch:
      return false;
    default:
      return true;
  }
}

bool Outbox::PopLocked(Envelope* out) {
  if (!PopOneLocked(out)) return false;
  if (batch_bytes_ == 0 || !Batchable(*out)) return true;
  const Envelope* next = PeekLocked();
  if (next == nullptr || !Batchable(*next)) return true;
  const size_t first = out->ByteSizeLong();
  size_t next_size = next->ByteSizeLong();
  if (first > kMaxBatchMember || next_size > kMaxBatchMember) return true;
  // The batch's own tag and length, then its members.
  size_t total = 6 + BatchCost(first);
  size_t next_cost = BatchCost(next_size);
  if (total + next_cost > batch_bytes_) return true;
  Envelope batch;
  auto* members = batch.mutable_batch()->mutable_envelopes();
  *members->Add() = std::move(*out);
  do {
    total += next_cost;
    PopOneLocked(members->Add());
    next = PeekLocked();
    if (next == nullptr || !Batchable(*next)) break;
    next_size = next->ByteSizeLong();
    if (next_size > kMaxBatchMember) break;
    next_cost = BatchCost(next_size);
  } while (total + next_cost <= batch_bytes_);
  *out = std::move(batch);
  return true;
}

bool Outbox::PopOneLocked(Envelope* out) {
  if (!control_.empty()) {
    *out = std::move(control_.front());
    control_.pop_front();
    return true;
  }
  if (data_.empty()) return false;
  uint64_t id = 0;
  Appendable(data_.front(), &id);
  auto it = open_tail_.find(id);
  if (it != open_tail_.end() && it->second == &data_.front()) {
    open_tail_.erase(it);
  }
  bytes_ -= QueuedSize(data_.front());
  *out = std::move(data_.front());
  data_.pop_front();
  if (!room_waiters_.empty() && bytes_ <= room_threshold_) {
    room_waiters_.WakeAll();
  }
  if (room_cb_ && bytes_ <= room_cb_threshold_) RunRoomCallbackLocked();
  return true;
}

void Outbox::RunRoomCallbackLocked() {
  absl::AnyInvocable<void()> cb = std::move(room_cb_);
  room_cb_ = nullptr;
  cb();
}

bool Outbox::TryPop(Envelope* out) {
  absl::MutexLock lock(&mu_);
  return PopLocked(out);
}

bool Outbox::PopWait(Envelope* out, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || !control_.empty() || !data_.empty();
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  return PopLocked(out);
}

bool Outbox::WaitForRoom(size_t max_bytes, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto room = [this, max_bytes]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || bytes_ <= max_bytes;
  };
  room_threshold_ =
      room_waiters_.empty() ? max_bytes : std::min(room_threshold_, max_bytes);
  AwaitWithDeadline(mu_, absl::Condition(&room), deadline, room_waiters_);
  return !closed_ && bytes_ <= max_bytes;
}

void Outbox::OnRoom(size_t max_bytes, absl::AnyInvocable<void()> cb) {
  absl::MutexLock lock(&mu_);
  room_cb_ = std::move(cb);
  room_cb_threshold_ = max_bytes;
  if (closed_ || bytes_ <= max_bytes) RunRoomCallbackLocked();
}

bool Outbox::TryClaim(Envelope* out, bool* more) {
  absl::MutexLock lock(&mu_);
  if (claimed_ || closed_ || !PopLocked(out)) return false;
  claimed_ = true;
  *more = !control_.empty() || !data_.empty();
  return true;
}

bool Outbox::NextOrRelease(Envelope* out, bool* more) {
  absl::MutexLock lock(&mu_);
  if (PopLocked(out)) {
    *more = !control_.empty() || !data_.empty();
    return true;
  }
  claimed_ = false;
  return false;
}

void Outbox::WakeWriter() {
  if (wake_cb_) wake_cb_();
}

bool Outbox::ClaimNext(Envelope* out, bool* more) {
  absl::MutexLock lock(&mu_);
  if (claimed_ || !PopLocked(out)) return false;
  claimed_ = true;
  *more = !control_.empty() || !data_.empty();
  return true;
}

bool Outbox::Finished() const {
  absl::MutexLock lock(&mu_);
  return closed_ && !claimed_ && control_.empty() && data_.empty();
}

size_t Outbox::queued_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

void Outbox::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  room_waiters_.WakeAll();
  if (room_cb_) RunRoomCallbackLocked();
}

void Outbox::Clear() {
  absl::MutexLock lock(&mu_);
  control_.clear();
  data_.clear();
  open_tail_.clear();
  bytes_ = 0;
  room_waiters_.WakeAll();
  if (room_cb_) RunRoomCallbackLocked();
}

size_t Outbox::control_size() const {
  absl::MutexLock lock(&mu_);
  return control_.size();
}

bool Outbox::empty() const {
  absl::MutexLock lock(&mu_);
  return control_.empty() && data_.empty();
}

size_t Outbox::size() const {
  absl::MutexLock lock(&mu_);
  return control_.size() + data_.size();
}

}  // namespace tunnel::common
