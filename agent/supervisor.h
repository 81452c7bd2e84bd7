// When the agent reconnects: the backoff between connection attempts, on an
// injectable clock and random source so that its rules are tested without
// waiting (tests/agent/supervisor_test.cc).
//
// Full jitter, as cloudflared and the AWS architecture blog recommend:
// after the n-th failure in a row the wait is uniform in
// [0, min(max_backoff, initial_backoff * 2^n)), so agents that lost the same
// gateway do not come back in step; never less than what the gateway asked
// for (GoAway or ConnectError retry_after). A session that was accepted and
// lasted `healthy_after` starts the count over.
//
// Not thread-safe: one Supervisor per Agent::Run.
#ifndef TUNNEL_AGENT_SUPERVISOR_H_
#define TUNNEL_AGENT_SUPERVISOR_H_

#include <functional>

#include "absl/time/time.h"

namespace tunnel::agent {

struct BackoffPolicy {
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration healthy_after = absl::Seconds(30);
};

class Supervisor {
 public:
  // `now` gives the time; `uniform01` a number in [0, 1).
  Supervisor(BackoffPolicy policy, std::function<absl::Time()> now,
             std::function<double()> uniform01);

  // Marks the start of a connection attempt.
  void AttemptStarted();
  // The attempt ended (`accepted`: the gateway accepted a session in it);
  // how long to wait before the next one, at least `retry_after`.
  absl::Duration NextWait(bool accepted, absl::Duration retry_after);
  // Failures in a row so far (what the next wait doubles from).
  int failures() const { return failures_; }

 private:
  const BackoffPolicy policy_;
  const std::function<absl::Time()> now_;
  const std::function<double()> uniform01_;
  absl::Time started_;
  int failures_ = 0;
};

}  // namespace tunnel::agent

#endif  // TUNNEL_AGENT_SUPERVISOR_H_
