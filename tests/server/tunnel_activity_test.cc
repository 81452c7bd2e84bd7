#include "server/tunnel_activity.h"

#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tunnel::server {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

TEST(TunnelActivityTest, CountsTheLastSixtyMinutes) {
  TunnelActivity a;
  EXPECT_EQ(a.RequestsInLastHour(kStart), 0u);
  a.Record(kStart);
  a.Record(kStart + absl::Seconds(10));
  a.Record(kStart + absl::Minutes(30));
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(30)), 3u);
  // 59 minutes on, the first minute still counts; at 60 it has left.
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(59)), 3u);
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(61)), 1u);
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(120)), 0u);
}

TEST(TunnelActivityTest, ReusesASlotForANewMinute) {
  TunnelActivity a;
  a.Record(kStart);
  a.Record(kStart);
  // Same slot, an hour later: the old count is replaced, not added to.
  a.Record(kStart + absl::Minutes(60));
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(60)), 1u);
  // The past is not rewritten by a late recorder.
  a.Record(kStart);
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(60)), 1u);
}

TEST(TunnelActivityTest, ConcurrentRecordsAreAllCounted) {
  TunnelActivity a;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&a, t] {
      for (int i = 0; i < 10000; ++i) {
        a.Record(kStart + absl::Minutes((i + t) % 3));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(a.RequestsInLastHour(kStart + absl::Minutes(2)), 40000u);
}

}  // namespace
}  // namespace tunnel::server
