// glibc malloc settings for the gateway and the agent.
//
// glibc returns memory to the kernel whenever the free space at the top of
// a heap exceeds M_TRIM_THRESHOLD (128 KiB until a large mmap'd block is
// freed). Bodies cross both processes in chunks of up to 64 KiB, allocated
// on one thread and freed on another, so the top of an arena crosses that
// line again and again: each time glibc gives the pages back
// (madvise/sbrk, with a TLB shoot-down on the other CPU) and the next chunk
// faults them in again. A fixed 1 MiB threshold ends that churn: 1 MiB
// responses at c=16 and c=64 went +29-38 % MiB/s with 20-30 % less CPU
// (tools/bench; README, "Performance"). The cost is at most 1 MiB of free
// memory kept per malloc arena after a burst.
#ifndef TUNNEL_COMMON_ALLOCATOR_H_
#define TUNNEL_COMMON_ALLOCATOR_H_

#include <cstddef>

namespace tunnel::common {

inline constexpr size_t kMallocTrimThreshold = 1024 * 1024;

// Whether TuneAllocator changes anything under this GLIBC_TUNABLES value
// (may be null): not when the user set glibc.malloc.trim_threshold there,
// which mallopt would otherwise override.
bool ShouldTuneAllocator(const char* glibc_tunables);

// Call first thing in main, before any thread starts. Returns whether the
// threshold was set (false: GLIBC_TUNABLES already sets it, or mallopt
// refused).
bool TuneAllocator();

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ALLOCATOR_H_
