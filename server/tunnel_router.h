// The only part of the gateway core the HTTP front door sees.
//
// A TunnelRouter finds the agent session serving a slug and opens a stream on
// it; a TunnelStream is one proxied HTTP exchange. Errors follow one mapping
// that the front door turns into visitor statuses (DESIGN.md, "Errors a
// visitor can get"):
//   NOT_FOUND           unknown tunnel                         -> 404
//   UNAVAILABLE         tunnel known, agent offline            -> 502
//   FAILED_PRECONDITION agent cannot reach its local service   -> 502
//   ABORTED             agent or service failed mid-exchange   -> 502 / cut
//   DEADLINE_EXCEEDED   no response head / body went idle      -> 504 / cut
//   RESOURCE_EXHAUSTED  too many streams on the session        -> 503
//   CANCELLED           stream cancelled (gateway shutdown)    -> 503 / cut
#ifndef TUNNEL_SERVER_TUNNEL_ROUTER_H_
#define TUNNEL_SERVER_TUNNEL_ROUTER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/cidr.h"
#include "common/flow_control.h"
#include "common/password_hash.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

// The users a tunnel's basic auth admits. `id` is unique per set the
// gateway made (a random 64-bit value), so what the front door caches about
// verified credentials dies with the set.
struct BasicAuthUsers {
  uint64_t id = 0;
  std::vector<common::BasicAuthUser> users;
};

// What a visitor must satisfy to reach a tunnel, in the order the front door
// checks: its address (ip_rules), basic auth, the access code. Null: no such
// rule. Each part is immutable and shared, so a lookup copies pointers only.
struct VisitorPolicy {
  std::shared_ptr<const common::IpRules> ip_rules;
  std::shared_ptr<const BasicAuthUsers> basic_auth;
  std::shared_ptr<const tunnel::v1::AccessCodeHash> access_code;
  bool empty() const {
    return ip_rules == nullptr && basic_auth == nullptr &&
           access_code == nullptr;
  }
};

// Open()'s answer when every agent serving the slug reported its local
// service unhealthy: UNAVAILABLE marked with a payload, which the front
// door answers 503 local_service_unhealthy (not 502 agent_offline).
inline constexpr char kUnhealthyPayload[] =
    "type.googleapis.com/tunnel.v1.LocalServiceUnhealthy";
inline absl::Status LocalServiceUnhealthyError(absl::string_view message) {
  absl::Status s = absl::UnavailableError(message);
  s.SetPayload(kUnhealthyPayload, absl::Cord("1"));
  return s;
}
inline bool IsLocalServiceUnhealthy(const absl::Status& s) {
  return s.GetPayload(kUnhealthyPayload).has_value();
}

// One HTTP exchange in flight on an agent session. Owned by one front-door
// worker thread; for an upgraded connection, one thread sends (SendBody,
// FinishBody) while another reads (ReadBody). Destroying it before the response
// finished cancels the stream at the agent (TunnelClose CANCELLED).
class TunnelStream {
 public:
  virtual ~TunnelStream() = default;

  virtual uint64_t id() const = 0;
  // Which agent session carries it (for TunnelRouter::Open's `avoid`).
  virtual const void* owner() const { return nullptr; }
  // Sends request body bytes, waiting for stream credit until `deadline`.
  // Splits into chunks of at most 64 KiB.
  virtual absl::Status SendBody(absl::string_view data,
                                absl::Time deadline) = 0;
  // Ends the request body.
  virtual absl::Status FinishBody() = 0;
  // The response head (status, headers); its body bytes come from ReadBody.
  virtual absl::StatusOr<tunnel::v1::TunnelResponse> AwaitResponseHead(
      absl::Time deadline) = 0;
  // Next piece of the response body, in order; Chunk.end marks a complete
  // body. Hands credit back to the agent as the caller consumes.
  virtual absl::StatusOr<common::Chunk> ReadBody(absl::Time deadline) = 0;
  // Aborts the exchange at the agent with a reason for its logs.
  virtual void Cancel(absl::string_view why) = 0;
};

class TunnelRouter {
 public:
  virtual ~TunnelRouter() = default;
  // Opens a stream to the agent serving `slug` and sends `head` (its
  // stream_id is filled in here). `avoid`: a TunnelStream::owner() not to
  // use (a pool member whose service just refused the connection); when no
  // other member can take it, the answer is the error of a plain Open.
  // Thread-safe.
  virtual absl::StatusOr<std::unique_ptr<TunnelStream>> Open(
      absl::string_view slug, tunnel::v1::TunnelRequest head,
      const void* avoid = nullptr) = 0;
  // What visitors must satisfy to reach `slug` (empty for a public or
  // unknown tunnel). Thread-safe; cheap (one lock, map lookups).
  virtual VisitorPolicy PolicyFor(absl::string_view /*slug*/) const {
    return {};
  }
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_TUNNEL_ROUTER_H_
