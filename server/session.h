// One connected agent: the state its Connect call shares with the front door.
//
// A Session owns the agent's send queue and the table of streams in flight.
// Front-door worker threads open streams and enqueue envelopes from any
// thread; the agent's gRPC call (AgentConnection, on its completion-queue
// thread) feeds received envelopes in (OnEnvelope) and drives the single
// outstanding write (OnWriteDone). The call may be gone
// while workers still hold the Session (shared_ptr): after OnDone every call
// fails fast and nothing touches the call again.
#ifndef TUNNEL_SERVER_SESSION_H_
#define TUNNEL_SERVER_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/flow_control.h"
#include "common/outbox.h"
#include "grpcpp/support/status.h"
#include "server/core_metrics.h"
#include "server/tunnel_router.h"
#include "tunnel/v1/cluster.pb.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

struct SessionLimits {
  // Credit each side starts with per stream and direction.
  uint32_t gateway_receive_window = common::kDefaultStreamWindow;
  uint32_t agent_receive_window = common::kDefaultStreamWindow;
  uint32_t max_chunk = common::kMaxChunkBytes;
  size_t max_streams = 4096;
  // Bytes (bodies and heads) queued towards the agent before producers of
  // body bytes wait and new streams are refused (503).
  size_t max_queued_bytes = 16 << 20;
  // Control messages (pongs, window updates, closes) queued towards the
  // agent: beyond, the agent is not reading its stream and its session
  // ends (RESOURCE_EXHAUSTED).
  size_t max_queued_control = 4096;
};

// The gRPC call's side of a session: the one place that talks to gRPC. Calls
// come from Session only, never two writes at once, and never after End().
class EnvelopeWriter {
 public:
  virtual ~EnvelopeWriter() = default;
  // Starts the single outstanding write; `more` hints that more is queued.
  virtual void Write(const tunnel::v1::Envelope* e, bool more) = 0;
  // Finishes the RPC.
  virtual void End(grpc::Status status) = 0;
};

// One tunnel a session serves, as accepted at the handshake.
struct SessionTunnel {
  std::string name;
  std::string slug;
  std::string url;       // scheme://slug.domain[:port]/
  std::string path_url;  // scheme://domain[:port]/t/slug/
};

// What the admin API reports of a session's traffic (relaxed atomics: a
// snapshot, not a transaction).
struct SessionCounters {
  uint64_t requests = 0;   // streams opened
  uint64_t bytes_in = 0;   // body bytes visitor -> agent
  uint64_t bytes_out = 0;  // body bytes agent -> visitor
  // Streams the agent ended with an error (its service unreachable or
  // failing, a timeout: any TunnelClose but CANCELLED).
  uint64_t errors = 0;
  uint64_t health_transitions = 0;  // reported flips of a tunnel's health
};

// A point-in-time view of a session for metrics.
struct SessionStats {
  size_t streams = 0;
  size_t queued_bytes = 0;     // body bytes in the send queue
  size_t queued_messages = 0;  // messages in the send queue (both lanes)
  // Streams whose visitor upload waits for the agent's credit.
  size_t stalled_to_agent = 0;
  // Streams whose agent is out of credit (the visitor reads slowly).
  size_t stalled_to_visitor = 0;
};

class RelayHub;

class Session : public std::enable_shared_from_this<Session> {
 public:
  // `metrics` must outlive the session. `token_id` is the credential the
  // agent authenticated with (a reload that revokes it closes the session).
  Session(std::string session_id, std::string agent_id, std::string token_id,
          std::string peer, SessionLimits limits, EnvelopeWriter* writer,
          const CoreMetrics* metrics);
  ~Session();

  const std::string& id() const { return session_id_; }
  const std::string& agent_id() const { return agent_id_; }
  const std::string& token_id() const { return token_id_; }
  const std::string& peer() const { return peer_; }

  // Handshake only, before the session is registered (no stream exists yet):
  // the agent's own receive window, clamped to [64 KiB, 16 MiB]; 0 keeps the
  // default.
  void SetAgentReceiveWindow(uint32_t window);
  // Handshake only, before the session is registered: whether the agent
  // reads header blocks (ConnectRequest.header_blocks). Without, a request
  // head's block is sent as HeaderFields.
  void SetHeaderBlocks(bool on) { header_blocks_ = on; }
  bool header_blocks() const { return header_blocks_; }
  // Handshake only, before the session is registered: the tunnels it serves;
  // also marks the moment it connected. Registration publishes both to
  // other threads, which only read them after finding the session there.
  void SetTunnels(std::vector<SessionTunnel> tunnels, absl::Time now);
  // Handshake only, right after queueing ConnectAccepted: batches of up to
  // `max_bytes` (the agreed size) both ways from now on; 0 keeps them off.
  void EnableBatching(uint32_t max_bytes);
  uint32_t batch_bytes() const { return batch_bytes_; }
  const std::vector<SessionTunnel>& tunnels() const { return tunnels_; }
  // Handshake only, before the session is registered: what the agent asked
  // of visitors, and the pool it serves ("" for none), as the cluster
  // directory publishes them.
  void SetPolicy(tunnel::v1::TunnelPolicy policy, std::string pool) {
    policy_ = std::move(policy);
    pool_ = std::move(pool);
  }
  const tunnel::v1::TunnelPolicy& policy() const { return policy_; }
  // Handshake only, before the session is registered: the hub its relay
  // frames go to, when the agent hosts encrypted shares (agent-tunnel
  // share); otherwise a RelayFrame from the agent is a violation. The
  // session leaves the hub when it ends.
  // A share-only session (no public tunnel) is registered beside the
  // agent's tunnel session, not in its place: `agent-tunnel share` and
  // `agent-tunnel connect` may run with one agent id at once.
  void SetRelay(RelayHub* hub, bool share_only) {
    relay_ = hub;
    if (share_only) registry_key_ = agent_id_ + "\x1f" + "share";
  }
  // Which session of the agent this is in the registry: the agent id, or
  // the agent id marked as a share's.
  const std::string& registry_key() const { return registry_key_; }
  // Any thread (the front door's fibers): queues a relay frame or event for
  // the agent. With a `deadline` in the future, waits until then for room
  // in the send queue (false: no room in time, or the session is closing);
  // InfinitePast() queues at once (small events). Always the data lane, so
  // relay messages keep their order.
  bool SendRelay(tunnel::v1::Envelope e, absl::Time deadline);
  const std::string& pool() const { return pool_; }
  absl::Time connected_at() const { return connected_at_; }
  SessionCounters counters() const;

  // --- any thread ---
  // Queues a head or data message (data lane).
  void Send(tunnel::v1::Envelope e);
  // Queues a control message or stream close (control lane).
  void SendControl(tunnel::v1::Envelope e);
  // Queues body bytes for a stream.
  void SendData(uint64_t stream_id, std::string data, bool end);
  void SendClose(uint64_t stream_id, tunnel::v1::TunnelClose::Reason reason,
                 absl::string_view message);
  // Ends the session. With `drain`, what is queued is still written first
  // (used to deliver a ConnectError or GoAway); otherwise it is dropped.
  void Close(grpc::Status status, bool drain);
  bool closing() const;
  // Heartbeats: the call touches the session on every message; the
  // gateway's heartbeat thread pings and reaps silent sessions.
  void Touch();
  absl::Time last_seen() const;
  void SendPing(uint64_t nonce);
  // Tells the agent this gateway takes no new streams and when to come back.
  void SendGoAway(absl::string_view reason, absl::Duration retry_after);
  // Takes no new stream from now on and tells the agent which was the last
  // one it gets (GoAway{ack, last_stream_id}); `drain`: asks it to finish
  // those and exit (tunnelctl drain). The answer to an agent's own GoAway
  // is the same without `drain`.
  void StopTakingStreams(absl::string_view reason, bool drain);
  // The agent said it is shutting down: no new streams for it.
  bool draining() const;
  // When the session's token expires (InfiniteFuture: never); set at the
  // handshake and again by a credentials reload.
  void set_token_expiry(absl::Time t);
  absl::Time token_expiry() const;
  // The session may serve no more (its token expired): from now on
  // OpenStream fails UNAVAILABLE with `visitor_why`, and the agent gets a
  // GoAway with `agent_why`; streams in flight go on. True the first time
  // only.
  bool Retire(const std::string& agent_why, const std::string& visitor_why);
  // When Retire first ran (InfiniteFuture: it did not).
  absl::Time retired_at() const;
  // Opens a stream and sends its request head. Fails UNAVAILABLE once the
  // session is closing or draining, LocalServiceUnhealthyError while the
  // agent reports head.tunnel_slug()'s service unhealthy,
  // RESOURCE_EXHAUSTED at max_streams.
  // `head` is taken only on success (a pool tries the next member with it).
  absl::StatusOr<std::unique_ptr<TunnelStream>> OpenStream(
      tunnel::v1::TunnelRequest&& head);
  size_t stream_count() const;
  // Why the agent reported `slug`'s local service unhealthy, or nullopt
  // while it is healthy (ControlMessage.health).
  std::optional<std::string> UnhealthyReason(absl::string_view slug) const;
  // Takes the session's and each stream's lock briefly: for scrapes, not
  // for the data path.
  SessionStats Stats() const;
  // Why the session ended (the status its call finished with); OK while it
  // is open.
  grpc::Status end_status() const;

  // --- the call's completion-queue thread ---
  // Handles one message from the agent after the handshake: an envelope,
  // or a batch of them, each handled as if it came alone (bodies are moved
  // out, not copied). A broken rule is counted
  // (tunnel_protocol_violations_total) and closes the stream it concerns,
  // or the whole session when no stream can be blamed (see Violation in
  // core_metrics.h); a batch that breaks a batch rule is refused whole.
  void OnEnvelope(tunnel::v1::Envelope e);
  // The agent broke a session-wide rule: counts it, logs it and ends the
  // call with `code` and a message naming the violation.
  void CloseForViolation(Violation v, absl::string_view detail);
  // Counts and logs a session-wide violation that gRPC itself answered
  // (the call is over already).
  void NoteViolation(Violation v, absl::string_view detail);
  void OnWriteDone(bool ok);
  // The RPC is over: fails every stream; no further writes.
  void OnDone();

 private:
  friend class GatewayStream;
  void Enqueue(tunnel::v1::Envelope e, bool control);
  std::shared_ptr<common::StreamChannel> FindStream(uint64_t id) const;
  void RemoveStream(uint64_t id);
  // The agent broke a rule on one stream: count it, fail the stream
  // locally, tell the agent.
  void FailStream(uint64_t id, const std::shared_ptr<common::StreamChannel>& ch,
                  Violation v, tunnel::v1::TunnelClose::Reason reason,
                  const absl::Status& why);
  // For a message naming a stream that is not in the table: true if the
  // gateway never opened that id (a violation), false if it ended already
  // (a late message, expected in races).
  bool NeverOpened(uint64_t id) const;
  // One envelope; false once it closed the session.
  bool OnOne(tunnel::v1::Envelope& e);
  void OnHealth(const tunnel::v1::Health& h);
  bool OnStreamMessage(tunnel::v1::Envelope& e);
  // Takes what to write next into current_ (counted in the metrics).
  bool PopForWriteLocked(bool* more) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The write an event loop's thread deferred to the end of its round.
  void FlushDeferred();

  const std::string session_id_;
  const std::string agent_id_;
  const std::string token_id_;
  const std::string peer_;
  SessionLimits limits_;  // fixed once the session is registered
  EnvelopeWriter* const writer_;
  const CoreMetrics* const metrics_;
  common::Outbox outbox_;

  mutable absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  // A loop's round end will start the next write (common/round_end.h).
  bool flush_deferred_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
  // The message gRPC is writing; only the writer path touches it, and only
  // while writing_ is true.
  tunnel::v1::Envelope current_;
  uint64_t next_stream_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Slugs whose local service the agent reported unhealthy -> why.
  absl::flat_hash_map<std::string, std::string> unhealthy_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<common::StreamChannel>> streams_
      ABSL_GUARDED_BY(mu_);
  uint32_t batch_bytes_ = 0;              // set at the handshake only
  bool header_blocks_ = false;            // set before registration only
  std::vector<SessionTunnel> tunnels_;    // set before registration only
  absl::Time connected_at_;               // likewise
  tunnel::v1::TunnelPolicy policy_;       // likewise
  std::string pool_;                      // likewise
  RelayHub* relay_ = nullptr;             // likewise
  std::string registry_key_ = agent_id_;  // likewise
  // The admin API's counters; relaxed increments on the data path.
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> agent_errors_{0};
  std::atomic<uint64_t> health_transitions_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  std::atomic<uint64_t> unknown_stream_messages_{0};
  std::atomic<int64_t> last_seen_ns_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> token_expiry_s_{0};  // 0: never
  std::string retired_why_ ABSL_GUARDED_BY(mu_);
  absl::Time retired_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_SESSION_H_
