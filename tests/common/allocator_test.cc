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

// What the setting is for: freeing a burst of body-sized chunks keeps the
// memory for the next burst instead of handing it back to the kernel (at
// glibc's default 128 KiB threshold the top of the heap is trimmed to below
// 128 KiB right away).
TEST(AllocatorTest, AFreedBurstOfChunksStaysInTheHeap) {
  if (!ShouldTuneAllocator(std::getenv("GLIBC_TUNABLES"))) {
    GTEST_SKIP() << "GLIBC_TUNABLES sets the trim threshold";
  }
  ASSERT_TRUE(TuneAllocator());
  constexpr size_t kChunk = 60 * 1024;  // below the 128 KiB mmap threshold
  constexpr int kChunks = 14;
  // Reserved first, so the chunks lie back to back at the top of the heap
  // (a vector growing between them would keep them apart).
  std::vector<void*> chunks;
  chunks.reserve(kChunks);
  for (int i = 0; i < kChunks; ++i) chunks.push_back(malloc(kChunk));
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) free(*it);
  // keepcost: the free space at the top of the main heap that a trim
  // would release.
  EXPECT_GE(mallinfo2().keepcost, 512 * 1024u);
}

}  // namespace
}  // namespace tunnel::common
