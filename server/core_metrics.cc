#include "server/core_metrics.h"

#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "server/session_registry.h"

namespace tunnel::server {
namespace {

using tunnel::v1::ConnectError;
using tunnel::v1::TunnelClose;

}  // namespace

absl::string_view ViolationName(Violation v) {
  switch (v) {
    case Violation::kUnexpectedMessage:
      return "unexpected_message";
    case Violation::kUnknownStream:
      return "unknown_stream";
    case Violation::kOversizedMessage:
      return "oversized_message";
    case Violation::kDuplicateResponse:
      return "duplicate_response";
    case Violation::kInvalidStatus:
      return "invalid_status";
    case Violation::kOversizedChunk:
      return "oversized_chunk";
    case Violation::kFlowControl:
      return "flow_control";
    case Violation::kDataAfterEnd:
      return "data_after_end";
    case Violation::kInvalidHeader:
      return "invalid_header";
    case Violation::kUnreadStream:
      return "unread_stream";
    case Violation::kInvalidBatch:
      return "invalid_batch";
  }
  return "unknown";
}

CoreMetrics::CoreMetrics(common::MetricsRegistry* registry) {
  common::CounterFamily* auth = registry->AddCounter(
      "tunnel_agent_auth_failures_total",
      "Agent connections refused before a session existed, by reason.",
      {"reason"});
  for (int i = 0; i < kAuthFailures; ++i) {
    auth_failures_[i] = auth->WithLabels({std::string(
        common::AuthFailureName(static_cast<common::AuthFailure>(i)))});
  }
  common::CounterFamily* refusals = registry->AddCounter(
      "tunnel_agent_connect_refusals_total",
      "Authenticated agents refused at the handshake, by ConnectError code.",
      {"code"});
  for (int i = 0; i < ConnectError::Code_ARRAYSIZE; ++i) {
    refusals_[i] = refusals->WithLabels({absl::AsciiStrToLower(
        ConnectError::Code_Name(static_cast<ConnectError::Code>(i)))});
  }
  common::CounterFamily* capacity = registry->AddCounter(
      "tunnel_capacity_rejections_total",
      "Work refused at a configured limit: agents at --max-agents, visitor "
      "requests (503 gateway_busy) at --max-streams-per-agent or while the "
      "agent's send queue is full (send_queue).",
      {"limit"});
  max_agents_rejections = capacity->WithLabels({"max_agents"});
  max_streams_rejections = capacity->WithLabels({"max_streams_per_agent"});
  send_queue_rejections = capacity->WithLabels({"send_queue"});
  common::CounterFamily* closes = registry->AddCounter(
      "tunnel_stream_closes_total",
      "Streams closed before their normal end (TunnelClose), by sender and "
      "reason.",
      {"sender", "reason"});
  for (int from_agent = 0; from_agent < 2; ++from_agent) {
    for (int i = 0; i < TunnelClose::Reason_ARRAYSIZE; ++i) {
      closes_[from_agent][i] =
          closes->WithLabels({from_agent ? "agent" : "gateway",
                              absl::AsciiStrToLower(TunnelClose::Reason_Name(
                                  static_cast<TunnelClose::Reason>(i)))});
    }
  }
  common::CounterFamily* violations = registry->AddCounter(
      "tunnel_protocol_violations_total",
      "Protocol rules agents broke after the handshake, by kind; each closed "
      "the offending stream or session, or (invalid_header) dropped the "
      "field.",
      {"kind"});
  for (int i = 0; i < kViolationKinds; ++i) {
    violations_[i] = violations->WithLabels(
        {std::string(ViolationName(static_cast<Violation>(i)))});
  }
  agent_connects =
      registry
          ->AddCounter("tunnel_agent_connects_total",
                       "Agent sessions accepted (handshake completed).")
          ->WithLabels({});
  agent_disconnects = registry
                          ->AddCounter("tunnel_agent_disconnects_total",
                                       "Accepted agent sessions that ended.")
                          ->WithLabels({});
  auth_rate_limited =
      registry
          ->AddCounter("tunnel_agent_auth_rate_limited_total",
                       "Agent Connect calls refused unchecked because their "
                       "source IP failed authentication more than "
                       "--auth-failures-per-minute times this minute.")
          ->WithLabels({});
  sessions_revoked =
      registry
          ->AddCounter("tunnel_agent_sessions_revoked_total",
                       "Live agent sessions closed because a credentials "
                       "reload revoked or removed their token.")
          ->WithLabels({});
  sessions_expired =
      registry
          ->AddCounter("tunnel_agent_sessions_expired_total",
                       "Live agent sessions ended because their token "
                       "expired (new requests refused at once, the session "
                       "closed once those in flight finished).")
          ->WithLabels({});
  common::CounterFamily* health = registry->AddCounter(
      "tunnel_health_transitions_total",
      "Agents' reports of a tunnel's local service turning unhealthy or "
      "healthy again (agent-tunnel --health-check).",
      {"to"});
  became_unhealthy = health->WithLabels({"unhealthy"});
  became_healthy = health->WithLabels({"healthy"});
  common::CounterFamily* reloads = registry->AddCounter(
      "tunnel_credentials_reloads_total",
      "Reloads of the credentials file (SIGHUP or the admin API), by result; "
      "a failed reload keeps the credentials in force.",
      {"result"});
  credential_reloads_ok = reloads->WithLabels({"ok"});
  credential_reloads_failed = reloads->WithLabels({"error"});
  common::CounterFamily* messages = registry->AddCounter(
      "tunnel_agent_messages_total",
      "gRPC messages on agent streams, by direction (to_agent, from_agent).",
      {"direction"});
  messages_to_agent = messages->WithLabels({"to_agent"});
  messages_from_agent = messages->WithLabels({"from_agent"});
  common::CounterFamily* envelopes = registry->AddCounter(
      "tunnel_agent_envelopes_total",
      "Envelopes on agent streams, by direction; above "
      "tunnel_agent_messages_total when envelopes travel in batches.",
      {"direction"});
  envelopes_to_agent = envelopes->WithLabels({"to_agent"});
  envelopes_from_agent = envelopes->WithLabels({"from_agent"});
  live_tokens = registry
                    ->AddGauge("tunnel_credentials_live_tokens",
                               "Tokens in force (not revoked).")
                    ->WithLabels({});
}

common::Counter* CoreMetrics::auth_failure(common::AuthFailure why) const {
  int i = static_cast<int>(why);
  return auth_failures_[i >= 0 && i < kAuthFailures ? i : 0];
}

common::Counter* CoreMetrics::connect_refusal(int code) const {
  return refusals_[ConnectError::Code_IsValid(code) ? code : 0];
}

common::Counter* CoreMetrics::stream_close(bool from_agent, int reason) const {
  return closes_[from_agent ? 1 : 0]
                [TunnelClose::Reason_IsValid(reason) ? reason : 0];
}

void CoreMetrics::ObserveSessions(common::MetricsRegistry* registry,
                                  const SessionRegistry* sessions) {
  common::Gauge* connected =
      registry->AddGauge("tunnel_sessions", "Agent sessions connected.")
          ->WithLabels({});
  common::Gauge* streams =
      registry
          ->AddGauge("tunnel_streams_in_flight",
                     "Visitor requests in flight on agent sessions.")
          ->WithLabels({});
  common::Gauge* queued_bytes =
      registry
          ->AddGauge("tunnel_send_queue_bytes",
                     "Body bytes queued towards agents, across sessions.")
          ->WithLabels({});
  common::Gauge* queued_messages =
      registry
          ->AddGauge("tunnel_send_queue_messages",
                     "Messages queued towards agents, across sessions.")
          ->WithLabels({});
  common::GaugeFamily* stalled = registry->AddGauge(
      "tunnel_streams_stalled",
      "Streams waiting on flow-control credit: to_agent, a visitor upload "
      "waits for the agent's window; to_visitor, the agent is out of credit "
      "because the visitor reads slowly.",
      {"direction"});
  common::Gauge* stalled_to_agent = stalled->WithLabels({"to_agent"});
  common::Gauge* stalled_to_visitor = stalled->WithLabels({"to_visitor"});
  registry->AddCollectHook([=] {
    SessionStats total;
    std::vector<std::shared_ptr<Session>> live = sessions->Sessions();
    for (const auto& s : live) {
      SessionStats one = s->Stats();
      total.streams += one.streams;
      total.queued_bytes += one.queued_bytes;
      total.queued_messages += one.queued_messages;
      total.stalled_to_agent += one.stalled_to_agent;
      total.stalled_to_visitor += one.stalled_to_visitor;
    }
    connected->Set(static_cast<int64_t>(live.size()));
    streams->Set(static_cast<int64_t>(total.streams));
    queued_bytes->Set(static_cast<int64_t>(total.queued_bytes));
    queued_messages->Set(static_cast<int64_t>(total.queued_messages));
    stalled_to_agent->Set(static_cast<int64_t>(total.stalled_to_agent));
    stalled_to_visitor->Set(static_cast<int64_t>(total.stalled_to_visitor));
  });
  // Pools: members by state, and each member's load. Series of members
  // that left are set to 0 (a family keeps its children).
  common::GaugeFamily* members = registry->AddGauge(
      "tunnel_pool_members",
      "Connected members of each pool by state: healthy (takes new "
      "requests), unhealthy (its agent reports its local service down), "
      "draining.",
      {"pool", "state"});
  common::GaugeFamily* member_streams = registry->AddGauge(
      "tunnel_pool_member_streams",
      "Requests in flight on each pool member's session.", {"pool", "agent"});
  common::GaugeFamily* member_requests = registry->AddGauge(
      "tunnel_pool_member_requests",
      "Requests each pool member's current session has taken (starts over "
      "when the member reconnects).",
      {"pool", "agent"});
  common::GaugeFamily* member_errors = registry->AddGauge(
      "tunnel_pool_member_errors",
      "Requests each pool member's current session ended with an error "
      "(its service unreachable or failing, a timeout; starts over when it "
      "reconnects).",
      {"pool", "agent"});
  common::GaugeFamily* member_flips = registry->AddGauge(
      "tunnel_pool_member_health_transitions",
      "Health changes each pool member's current session reported.",
      {"pool", "agent"});
  auto seen = std::make_shared<std::set<std::pair<std::string, std::string>>>();
  registry->AddCollectHook([=] {
    std::set<std::pair<std::string, std::string>> now;
    for (const PoolView& p : sessions->Pools()) {
      int64_t healthy = 0, unhealthy = 0, draining = 0;
      for (const auto& m : p.members) {
        if (m->draining()) {
          ++draining;
        } else if (m->UnhealthyReason(p.slug).has_value()) {
          ++unhealthy;
        } else {
          ++healthy;
        }
        member_streams->WithLabels({p.pool, m->agent_id()})
            ->Set(static_cast<int64_t>(m->stream_count()));
        const SessionCounters c = m->counters();
        member_requests->WithLabels({p.pool, m->agent_id()})
            ->Set(static_cast<int64_t>(c.requests));
        member_errors->WithLabels({p.pool, m->agent_id()})
            ->Set(static_cast<int64_t>(c.errors));
        member_flips->WithLabels({p.pool, m->agent_id()})
            ->Set(static_cast<int64_t>(c.health_transitions));
        now.insert({p.pool, m->agent_id()});
      }
      members->WithLabels({p.pool, "healthy"})->Set(healthy);
      members->WithLabels({p.pool, "unhealthy"})->Set(unhealthy);
      members->WithLabels({p.pool, "draining"})->Set(draining);
    }
    for (const auto& [pool, agent] : *seen) {
      if (now.count({pool, agent}) > 0) continue;
      member_streams->WithLabels({pool, agent})->Set(0);
      member_requests->WithLabels({pool, agent})->Set(0);
      member_errors->WithLabels({pool, agent})->Set(0);
      member_flips->WithLabels({pool, agent})->Set(0);
    }
    seen->insert(now.begin(), now.end());
  });
}

}  // namespace tunnel::server
