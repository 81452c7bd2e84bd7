// libFuzzer target: the gateway's handling of an agent's envelopes after the
// handshake (server::Session::OnEnvelope), interleaved with what front-door
// workers do to the same session (open, read, upload, cancel, release
// streams) and with the session's end. The real Session runs; only its
// EnvelopeWriter (the gRPC reactor's side) is this file's recorder, which
// traps on a broken writer contract (two writes at once, a write after End,
// End twice).
//
// Input: records of [op:1][length:2, little-endian][payload:length]. Small
// limits (1 KiB chunks, 4 KiB windows) keep every rule within reach of
// short inputs.
//   'E' payload is a serialized tunnel.v1.Envelope from the agent
//   'O' open a stream           'R' release the oldest stream
//   'B' read a body chunk       'H' read the response head
//   'S' upload payload bytes    'C' cancel the newest stream
//   'W' the pending write completes, 'F' it fails
//   'X' close the session       other: ignored
// Waits never block: every deadline is in the past.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/log.h"
#include "common/metrics.h"
#include "server/core_metrics.h"
#include "server/session.h"
#include "tunnel/v1/tunnel.pb.h"

namespace {

using tunnel::server::Session;
using tunnel::v1::Envelope;

class RecordingWriter : public tunnel::server::EnvelopeWriter {
 public:
  void Write(const Envelope* e, bool) override {
    if (pending_ || ended_) __builtin_trap();
    pending_ = true;
    bytes_ += e->ByteSizeLong();
  }
  void End(grpc::Status) override {
    if (pending_ || ended_) __builtin_trap();
    ended_ = true;
  }
  bool TakePending() {
    bool p = pending_;
    pending_ = false;
    return p;
  }

 private:
  bool pending_ = false;
  bool ended_ = false;
  size_t bytes_ = 0;
};

// Lives for the process: metric families register once.
tunnel::common::MetricsRegistry* Registry() {
  static auto* r = new tunnel::common::MetricsRegistry();
  return r;
}
const tunnel::server::CoreMetrics* Metrics() {
  static auto* m = new tunnel::server::CoreMetrics(Registry());
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // One warning per violation would dominate the run.
  tunnel::common::SetLogLevelByName("error");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RecordingWriter writer;
  tunnel::server::SessionLimits limits;
  limits.max_streams = 8;
  limits.max_chunk = 1024;
  limits.gateway_receive_window = 4096;
  limits.agent_receive_window = 4096;
  auto session = std::make_shared<Session>("s", "agent", "tok", "peer", limits,
                                           &writer, Metrics());
  // Batches agreed, so the fuzzer reaches their rules and the envelopes
  // inside them (the gateway checks a batch's size before the session).
  session->EnableBatching(64 << 10);
  std::vector<std::unique_ptr<tunnel::server::TunnelStream>> streams;
  const absl::Time past = absl::InfinitePast();
  size_t at = 0;
  while (at + 3 <= size) {
    const char op = static_cast<char>(data[at]);
    size_t len = data[at + 1] | (static_cast<size_t>(data[at + 2]) << 8);
    at += 3;
    if (len > size - at) len = size - at;
    const std::string payload(reinterpret_cast<const char*>(data + at), len);
    at += len;
    switch (op) {
      case 'E': {
        Envelope e;
        if (e.ParseFromString(payload)) session->OnEnvelope(std::move(e));
        break;
      }
      case 'O': {
        tunnel::v1::TunnelRequest head;
        head.set_method("GET");
        head.set_path("/");
        auto s = session->OpenStream(std::move(head));
        if (s.ok()) streams.push_back(*std::move(s));
        break;
      }
      case 'R':
        if (!streams.empty()) streams.erase(streams.begin());
        break;
      case 'B':
        if (!streams.empty()) (void)streams.back()->ReadBody(past);
        break;
      case 'H':
        if (!streams.empty()) (void)streams.back()->AwaitResponseHead(past);
        break;
      case 'S':
        if (!streams.empty()) {
          if (streams.back()->SendBody(payload, past).ok()) {
            (void)streams.back()->FinishBody();
          }
        }
        break;
      case 'C':
        if (!streams.empty()) streams.back()->Cancel("fuzz");
        break;
      case 'W':
      case 'F':
        if (writer.TakePending()) session->OnWriteDone(op == 'W');
        break;
      case 'X':
        session->Close(grpc::Status::OK, payload.empty());
        break;
      default:
        break;
    }
  }
  // The call ends the way gRPC ends it: writes complete, then OnDone.
  while (writer.TakePending()) session->OnWriteDone(true);
  session->OnDone();
  streams.clear();
  if (session->stream_count() != 0) __builtin_trap();
  return 0;
}
