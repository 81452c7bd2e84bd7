// The gateway core's metrics (agent sessions, authentication, streams), all
// in one registry that the ops server renders. Families whose labels come
// from a fixed enum get every child at creation, so a scrape shows 0 before
// the first event.
//
// Threads: built once at start; the pointers are then used from any thread.
#ifndef TUNNEL_SERVER_CORE_METRICS_H_
#define TUNNEL_SERVER_CORE_METRICS_H_

#include "absl/strings/string_view.h"
#include "common/hmac_auth.h"
#include "common/metrics.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

class SessionRegistry;

// Protocol rules an agent broke after its handshake: the `kind` label of
// tunnel_protocol_violations_total. The comment says what the gateway does
// (docs/DESIGN.md, "Hostile input").
enum class Violation {
  kUnexpectedMessage,  // session closed: connect again, a gateway-only kind
                       // or an empty envelope after the handshake
  kUnknownStream,      // session closed: a stream id the gateway never opened
  kOversizedMessage,   // session closed: an envelope over the gRPC limit
  kDuplicateResponse,  // stream closed: a second response head
  kInvalidStatus,      // stream closed: status outside 100-599
  kOversizedChunk,     // stream closed: body bytes over max_chunk_bytes
  kFlowControl,        // stream closed: beyond the credit, window overflow
  kDataAfterEnd,       // stream closed: body bytes after end_stream
  kInvalidHeader,      // field dropped: response header name/value unsafe
  kUnreadStream,       // session closed: the agent does not read what it is
                       // sent (pongs and other control messages pile up)
  kInvalidBatch,       // session closed: a batch not agreed at connect,
                       // empty, nested, over the agreed size, or holding a
                       // handshake message
};
inline constexpr int kViolationKinds =
    static_cast<int>(Violation::kInvalidBatch) + 1;
absl::string_view ViolationName(Violation v);

struct CoreMetrics {
  // Registers the families in `registry`, which must outlive this.
  explicit CoreMetrics(common::MetricsRegistry* registry);

  // Scrape-time gauges (sessions, streams, send queues, stalled streams)
  // read from `sessions`, which must outlive the registry's last Render.
  void ObserveSessions(common::MetricsRegistry* registry,
                       const SessionRegistry* sessions);

  // Lock-free lookups (children are resolved at construction). Values out
  // of the enum's range (an agent may send any number) count as
  // unspecified.
  common::Counter* auth_failure(common::AuthFailure why) const;
  common::Counter* connect_refusal(int code) const;
  common::Counter* stream_close(bool from_agent, int reason) const;
  common::Counter* violation(Violation v) const {
    return violations_[static_cast<int>(v)];
  }

  common::Counter* max_agents_rejections;
  common::Counter* max_streams_rejections;
  // Visitor requests refused while the agent's send queue is full.
  common::Counter* send_queue_rejections;
  common::Counter* agent_connects;
  common::Counter* agent_disconnects;
  // Connect calls refused before the HMAC check: their source IP failed
  // authentication too often (--auth-failures-per-minute).
  common::Counter* auth_rate_limited;
  // Live sessions closed because a reload revoked or removed their token.
  common::Counter* sessions_revoked;
  // Live agent sessions retired because their token expired.
  common::Counter* sessions_expired;
  // Agents' reports of a local service turning unhealthy / healthy again.
  common::Counter* became_unhealthy;
  common::Counter* became_healthy;
  // Credentials reloads (SIGHUP, admin API) that took effect / were refused.
  common::Counter* credential_reloads_ok;
  common::Counter* credential_reloads_failed;
  // gRPC messages on agent streams and the envelopes they carried (more
  // envelopes than messages: batches), per direction.
  common::Counter* messages_to_agent;
  common::Counter* envelopes_to_agent;
  common::Counter* messages_from_agent;
  common::Counter* envelopes_from_agent;
  // Tokens not revoked in the credentials in force.
  common::Gauge* live_tokens;

 private:
  static constexpr int kAuthFailures =
      static_cast<int>(common::AuthFailure::kReplay) + 1;
  common::Counter* auth_failures_[kAuthFailures];
  common::Counter* refusals_[tunnel::v1::ConnectError::Code_ARRAYSIZE];
  common::Counter* closes_[2][tunnel::v1::TunnelClose::Reason_ARRAYSIZE];
  common::Counter* violations_[kViolationKinds];
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_CORE_METRICS_H_
