// glibc malloc settings for the gateway and the agent.
//
// glibc returns memory to the kernel whenever the free space at the top of
// a heap exceeds M_TRIM_THRESHOLD (128 KiB until a large mmap'd block is
// freed). Bodies cross both processes in chunks of up to 64 KiB, allocated
// on one thread and freed on another, so the top of an arena crosses that
// line again and again: each time glibc gives the pages back
// (madvise/sbrk, with a TLB shoot-down on the other CPU) and the next chunk
// faults them in again.
//
// The threshold that ends the churn is above the body bytes a process
// holds in flight, with room to spare: near it, runs are good or bad
// depending on where the heap's top lies. The agent holds its send queue
// (2 MiB by default) and a read per transfer: at 1 or 2 MiB some runs of
// 1 MiB responses at c=16 still cost it 1.7-2.1 s of CPU per GiB, at
// 4 MiB every run 0.9-1.1 s. The gateway holds up to its per-session send
// queue (16 MiB) and a window per stream: at 1 MiB (and in some runs at
// 8 MiB) its parse of every body chunk faulted in fresh pages; at 32 MiB,
// 1 MiB responses at c=64 went from 252-353 to 560-694 MiB/s and its CPU
// per GiB from 2.6-3.9 s to 0.8-1.1 s (tools/bench, README "Performance").
// The cost is free memory kept per malloc arena after a burst: at most
// the threshold, in the arenas that held the bodies (with 256 concurrent
// 1 MiB responses the agent's peak RSS stayed 29-31 MiB; the gateway's RSS
// after them was 45-150 MiB before and 52-130 MiB now, from run to run).
// Who raises --send-queue may raise the threshold with GLIBC_TUNABLES
// (glibc.malloc.trim_threshold), which wins over these.
#ifndef TUNNEL_COMMON_ALLOCATOR_H_
#define TUNNEL_COMMON_ALLOCATOR_H_

#include <cstddef>

namespace tunnel::common {

inline constexpr size_t kAgentTrimThreshold = size_t{4} << 20;
inline constexpr size_t kGatewayTrimThreshold = size_t{32} << 20;

// Whether TuneAllocator changes anything under this GLIBC_TUNABLES value
// (may be null): not when the user set glibc.malloc.trim_threshold there,
// which mallopt would otherwise override.
bool ShouldTuneAllocator(const char* glibc_tunables);

// Call first thing in main, before any thread starts. Returns whether the
// threshold was set (false: GLIBC_TUNABLES already sets it, or mallopt
// refused).
bool TuneAllocator(size_t trim_threshold);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_ALLOCATOR_H_
