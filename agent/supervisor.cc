#include "agent/supervisor.h"

#include <algorithm>
#include <utility>

namespace tunnel::agent {

Supervisor::Supervisor(BackoffPolicy policy, std::function<absl::Time()> now,
                       std::function<double()> uniform01)
    : policy_(policy),
      now_(std::move(now)),
      uniform01_(std::move(uniform01)),
      started_(now_()) {}

void Supervisor::AttemptStarted() { started_ = now_(); }

absl::Duration Supervisor::NextWait(bool accepted, absl::Duration retry_after) {
  if (accepted && now_() - started_ >= policy_.healthy_after) {
    failures_ = 0;  // it was healthy for a while: start over
  }
  const absl::Duration cap =
      std::min(policy_.max_backoff,
               policy_.initial_backoff *
                   static_cast<double>(1 << std::min(failures_, 20)));
  ++failures_;
  return std::max(cap * uniform01_(), retry_after);
}

}  // namespace tunnel::agent
