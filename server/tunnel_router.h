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

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/cidr.h"
#include "common/flow_control.h"
#include "tunnel/v1/tunnel.pb.h"

namespace tunnel::server {

// One HTTP exchange in flight on an agent session. Owned by one front-door
// worker thread; for an upgraded connection, one thread sends (SendBody,
// FinishBody) while another reads (ReadBody). Destroying it before the response
// finished cancels the stream at the agent (TunnelClose CANCELLED).
class TunnelStream {
 public:
  virtual ~TunnelStream() = default;

  virtual uint64_t id() const = 0;
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
  // stream_id is filled in here). Thread-safe.
  virtual absl::StatusOr<std::unique_ptr<TunnelStream>> Open(
      absl::string_view slug, tunnel::v1::TunnelRequest head) = 0;
  // The hash of the code visitors must present for `slug`, or nullopt for a
  // public (or unknown) tunnel. Thread-safe; cheap (a map lookup).
  virtual std::optional<tunnel::v1::AccessCodeHash> AccessCodeFor(
      absl::string_view /*slug*/) const {
    return std::nullopt;
  }
  // Who may reach `slug` (null: everyone). Thread-safe; cheap.
  virtual std::shared_ptr<const common::IpRules> IpRulesFor(
      absl::string_view /*slug*/) const {
    return nullptr;
  }
};

}  // namespace tunnel::server

#endif  // TUNNEL_SERVER_TUNNEL_ROUTER_H_
