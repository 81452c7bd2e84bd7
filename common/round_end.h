// Work an event loop's thread does once its current round has run
// everything that was ready, just before it waits again. What the handlers
// of one round hand to the same place can then leave together: the front
// door's requests of a round reach their agent in one gRPC message instead
// of one message each.
//
// A thread without a loop has no round (Current() is null): the caller acts
// at once.
#ifndef TUNNEL_COMMON_ROUND_END_H_
#define TUNNEL_COMMON_ROUND_END_H_

#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace tunnel::common {

class RoundEnd {
 public:
  // The loop, on its own thread, before its first round (null: none).
  static void InstallOnThisThread(RoundEnd* r);
  // This thread's loop's, or null on a thread without a loop.
  static RoundEnd* Current();
  // Runs `fn` at the end of the current round (on the loop's thread only).
  void Defer(absl::AnyInvocable<void()> fn) { work_.push_back(std::move(fn)); }
  // The loop, at the end of each round; work deferred meanwhile runs too.
  void Run();

 private:
  std::vector<absl::AnyInvocable<void()>> work_;
  std::vector<absl::AnyInvocable<void()>> running_;
};

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ROUND_END_H_
