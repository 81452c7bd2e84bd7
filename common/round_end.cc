#include "common/round_end.h"

#include <utility>

namespace tunnel::common {
namespace {

thread_local RoundEnd* tl_round_end = nullptr;

}  // namespace

void RoundEnd::InstallOnThisThread(RoundEnd* r) { tl_round_end = r; }

RoundEnd* RoundEnd::Current() { return tl_round_end; }

void RoundEnd::Run() {
  while (!work_.empty()) {
    running_.swap(work_);
    for (auto& fn : running_) fn();
    running_.clear();
  }
}

}  // namespace tunnel::common
