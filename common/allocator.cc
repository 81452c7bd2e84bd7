#include "common/allocator.h"

#include <malloc.h>

#include <cstdlib>

#include "absl/strings/match.h"

namespace tunnel::common {

bool ShouldTuneAllocator(const char* glibc_tunables) {
  return glibc_tunables == nullptr ||
         !absl::StrContains(glibc_tunables, "glibc.malloc.trim_threshold");
}

bool TuneAllocator(size_t trim_threshold) {
  if (!ShouldTuneAllocator(std::getenv("GLIBC_TUNABLES"))) return false;
  return mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim_threshold)) == 1;
}

}  // namespace tunnel::common
