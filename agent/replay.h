// The inspector's replay: sends a captured request (as it was, or edited)
// to the local service again, with libcurl, and records it in the inspector
// as a replay of the original. Blocking: runs on the inspector server's
// request thread.
#ifndef TUNNEL_AGENT_REPLAY_H_
#define TUNNEL_AGENT_REPLAY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/inspector.h"
#include "agent/local_target.h"
#include "tunnel/v1/inspect.pb.h"

namespace tunnel::agent {

struct ReplayTimeouts {
  absl::Duration connect = absl::Seconds(10);
  // The service silent this long: the replay fails (--local-timeout).
  absl::Duration silence = absl::Seconds(60);
};

// The request `original` with `edits` applied: INVALID_ARGUMENT for an
// edit that is not valid HTTP (a method that is not a token, a path not
// starting with '/', a field name or value with CR/LF), FAILED_PRECONDITION
// for what cannot be replayed as it was (an upgrade; a body only partly
// kept and not replaced). A secret field whose edited value is still its
// masked rendition (MaskHeaderValue) keeps the captured value.
absl::Status ApplyReplayEdits(const tunnel::v1::ReplayRequest& edits,
                              Inspector::Original* original);

// Sends `request` to `target` and records it (and the service's answer) in
// `inspector`; returns the new record's id. A service that cannot be
// reached or fails is recorded too (outcome local_error): only a refused
// request is an error here.
absl::StatusOr<uint64_t> Replay(Inspector& inspector, const LocalTarget& target,
                                const Inspector::Original& request,
                                uint64_t replay_of,
                                const ReplayTimeouts& timeouts);

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_REPLAY_H_
