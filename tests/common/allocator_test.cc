#include "common/allocator.h"

#include <malloc.h>

#include <vector>

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

TEST(AllocatorTest, RespectsTheUsersOwnTrimThreshold) {
  EXPECT_TRUE(ShouldTuneAllocator(nullptr));
  EXPECT_TRUE(ShouldTuneAllocator(""));
  EXPECT_TRUE(ShouldTuneAllocator("glibc.malloc.arena_max=2"));
  EXPECT_FALSE(ShouldTuneAllocator("glibc.malloc.trim_threshold=0"));
  EXPECT_FALSE(ShouldTuneAllocator(
      "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=131072"));
}

// Frees a burst of `n` body-sized chunks (below the 128 KiB mmap threshold)
// and returns mallinfo2's keepcost: the free space at the top of the main
// heap that a trim would release, i.e. what stays for the next burst.
size_t KeptAfterBurst(int n) {
  constexpr size_t kChunk = 60 * 1024;
  // Reserved first, so the chunks lie back to back at the top of the heap
  // (a vector growing between them would keep them apart).
  std::vector<void*> chunks;
  chunks.reserve(n);
  for (int i = 0; i < n; ++i) chunks.push_back(malloc(kChunk));
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) free(*it);
  return mallinfo2().keepcost;
}

// What the setting is for: freeing a burst of body-sized chunks keeps the
// memory for the next burst instead of handing it back to the kernel (at
// glibc's default 128 KiB threshold the top of the heap is trimmed to below
// 128 KiB right away).
TEST(AllocatorTest, AFreedBurstOfChunksStaysInTheHeap) {
  if (!ShouldTuneAllocator(std::getenv("GLIBC_TUNABLES"))) {
    GTEST_SKIP() << "GLIBC_TUNABLES sets the trim threshold";
  }
  ASSERT_TRUE(TuneAllocator(kAgentTrimThreshold));
  EXPECT_GE(KeptAfterBurst(24), 1024 * 1024u);  // 1.4 MiB freed
}

// The gateway holds up to a 16 MiB send queue of body chunks per session: a
// burst that size stays in its heap, where the agent's threshold gives it
// back.
TEST(AllocatorTest, TheGatewayKeepsASendQueueOfChunks) {
  if (!ShouldTuneAllocator(std::getenv("GLIBC_TUNABLES"))) {
    GTEST_SKIP() << "GLIBC_TUNABLES sets the trim threshold";
  }
  constexpr int kChunks = 280;  // 16.4 MiB
  ASSERT_TRUE(TuneAllocator(kAgentTrimThreshold));
  EXPECT_LT(KeptAfterBurst(kChunks), kAgentTrimThreshold + (256 << 10));
  ASSERT_TRUE(TuneAllocator(kGatewayTrimThreshold));
  EXPECT_GE(KeptAfterBurst(kChunks), size_t{16} << 20);
}

}  // namespace
}  // namespace tunnel::common
