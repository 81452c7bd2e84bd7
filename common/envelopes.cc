#include "common/envelopes.h"

#include "common/headers.h"

namespace tunnel::common {

using tunnel::v1::Envelope;

Envelope MakeData(uint64_t stream_id, std::string data, bool end) {
  Envelope e;
  auto* d = e.mutable_data();
  d->set_stream_id(stream_id);
  *d->mutable_data() = std::move(data);
  d->set_end_stream(end);
  return e;
}

Envelope MakeClose(uint64_t stream_id, tunnel::v1::TunnelClose::Reason reason,
                   absl::string_view message) {
  Envelope e;
  auto* c = e.mutable_close();
  c->set_stream_id(stream_id);
  c->set_reason(reason);
  // A proto3 string: bytes that are not UTF-8 (from a service's or a
  // library's words) would fail the peer's parse of the whole message.
  c->set_message(Utf8Text(message));
  return e;
}

Envelope MakeWindowUpdate(uint64_t stream_id, uint32_t increment) {
  Envelope e;
  auto* wu = e.mutable_control()->mutable_window_update();
  wu->set_stream_id(stream_id);
  wu->set_increment(increment);
  return e;
}

Envelope MakePing(uint64_t nonce) {
  Envelope e;
  e.mutable_control()->mutable_ping()->set_nonce(nonce);
  return e;
}

Envelope MakePong(uint64_t nonce) {
  Envelope e;
  e.mutable_control()->mutable_pong()->set_nonce(nonce);
  return e;
}

Envelope MakeGoAway(absl::string_view reason, absl::Duration retry_after) {
  Envelope e;
  auto* g = e.mutable_control()->mutable_goaway();
  g->set_reason(std::string(reason));
  g->set_retry_after_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(retry_after)));
  return e;
}

}  // namespace tunnel::common
