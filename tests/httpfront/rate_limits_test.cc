#include "httpfront/rate_limits.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tunnel::httpfront {
namespace {

using Verdict = RateLimiter::Verdict;

RateLimiter::Options Limits(int64_t per_minute, int64_t concurrent,
                            size_t capacity = 100) {
  RateLimiter::Options o;
  o.per_minute = per_minute;
  o.concurrent = concurrent;
  o.capacity = capacity;
  return o;
}

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(RateLimiterTest, FixedWindowCountsDownAndStartsOverAfterAMinute) {
  RateLimiter limiter(Limits(3, 0));
  for (int64_t want_remaining : {2, 1, 0}) {
    RateLimiter::Decision d = limiter.Acquire(
        "cam-01", kT0 + absl::Seconds(10 * (2 - want_remaining)));
    ASSERT_EQ(d.verdict, Verdict::kAllowed);
    EXPECT_EQ(d.limit, 3);
    EXPECT_EQ(d.remaining, want_remaining);
    limiter.Release(d.slot);
  }
  // The window began at kT0 with the first request.
  RateLimiter::Decision over =
      limiter.Acquire("cam-01", kT0 + absl::Seconds(45));
  EXPECT_EQ(over.verdict, Verdict::kRateLimited);
  EXPECT_EQ(over.slot, nullptr);
  EXPECT_EQ(over.remaining, 0);
  EXPECT_EQ(over.reset, absl::Seconds(15));
  EXPECT_EQ(CeilSeconds(over.reset), 15);
  // Refusals use up nothing, and other keys have their own window.
  RateLimiter::Decision other = limiter.Acquire("api-cam-01", kT0);
  EXPECT_EQ(other.verdict, Verdict::kAllowed);
  limiter.Release(other.slot);
  // The window ends a minute after it began.
  RateLimiter::Decision again =
      limiter.Acquire("cam-01", kT0 + absl::Seconds(60));
  ASSERT_EQ(again.verdict, Verdict::kAllowed);
  EXPECT_EQ(again.remaining, 2);
  EXPECT_EQ(again.reset, absl::Seconds(60));
  limiter.Release(again.slot);
}

TEST(RateLimiterTest, ConcurrencyIsHeldUntilReleased) {
  RateLimiter limiter(Limits(0, 2));
  RateLimiter::Decision a = limiter.Acquire("k", kT0);
  RateLimiter::Decision b = limiter.Acquire("k", kT0);
  ASSERT_NE(a.slot, nullptr);
  ASSERT_NE(b.slot, nullptr);
  EXPECT_EQ(a.limit, 0);  // no per-minute limit
  EXPECT_EQ(limiter.Acquire("k", kT0).verdict, Verdict::kConcurrencyLimited);
  // A minute later the count starts over, but in-flight requests still hold.
  EXPECT_EQ(limiter.Acquire("k", kT0 + absl::Minutes(5)).verdict,
            Verdict::kConcurrencyLimited);
  limiter.Release(a.slot);
  RateLimiter::Decision c = limiter.Acquire("k", kT0);
  EXPECT_EQ(c.verdict, Verdict::kAllowed);
  limiter.Release(b.slot);
  limiter.Release(c.slot);
}

TEST(RateLimiterTest, RateIsCheckedBeforeConcurrencyAndRefusalsCostNothing) {
  RateLimiter limiter(Limits(2, 1));
  RateLimiter::Decision a = limiter.Acquire("k", kT0);
  ASSERT_NE(a.slot, nullptr);
  RateLimiter::Decision busy = limiter.Acquire("k", kT0);
  EXPECT_EQ(busy.verdict, Verdict::kConcurrencyLimited);
  EXPECT_EQ(busy.remaining, 1);  // the refusal did not count
  limiter.Release(a.slot);
  RateLimiter::Decision b = limiter.Acquire("k", kT0);
  ASSERT_NE(b.slot, nullptr);
  EXPECT_EQ(b.remaining, 0);
  EXPECT_EQ(limiter.Acquire("k", kT0).verdict, Verdict::kRateLimited);
  limiter.Release(b.slot);
}

TEST(RateLimiterTest, UncountedReleaseGivesTheRequestBackAndForgetsTheKey) {
  RateLimiter limiter(Limits(1, 0));
  for (int i = 0; i < 5; ++i) {  // e.g. requests for an unknown slug
    RateLimiter::Decision d = limiter.Acquire("nope", kT0);
    ASSERT_EQ(d.verdict, Verdict::kAllowed) << i;
    EXPECT_FALSE(d.confirmed);
    limiter.Release(d.slot, /*counted=*/false);
  }
  EXPECT_EQ(limiter.size(), 0u);
  // A confirmed key is remembered, and its requests count.
  RateLimiter::Decision d = limiter.Acquire("cam-01", kT0);
  RateLimiter::MarkConfirmed(d.slot);
  limiter.Release(d.slot);
  RateLimiter::Decision over = limiter.Acquire("cam-01", kT0);
  EXPECT_EQ(over.verdict, Verdict::kRateLimited);
  EXPECT_TRUE(over.confirmed);
  EXPECT_EQ(limiter.size(), 1u);
}

TEST(RateLimiterTest, MemoryIsBoundedButKeysInFlightStay) {
  RateLimiter limiter(Limits(1, 0, /*capacity=*/10));
  std::vector<RateLimiter::Slot*> held;
  for (int i = 0; i < 5; ++i) {
    RateLimiter::Decision d = limiter.Acquire(absl::StrCat("held-", i), kT0);
    ASSERT_NE(d.slot, nullptr);
    held.push_back(d.slot);
  }
  for (int i = 0; i < 1000; ++i) {
    RateLimiter::Decision d =
        limiter.Acquire(absl::StrCat("ip-", i), kT0 + absl::Seconds(i % 30));
    ASSERT_NE(d.slot, nullptr) << i;
    limiter.Release(d.slot);
    EXPECT_LE(limiter.size(), 10u);
  }
  // Expired windows go first once full.
  limiter.Acquire("late", kT0 + absl::Minutes(2));
  EXPECT_LE(limiter.size(), 10u);
  // The held keys were never dropped: their counts still stand.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(limiter.Acquire(absl::StrCat("held-", i), kT0).verdict,
              Verdict::kRateLimited)
        << i;
  }
  for (RateLimiter::Slot* s : held) limiter.Release(s);
}

// Many threads on few keys, with evictions going on: never more than
// `concurrent` admissions of one key are held at once, and every slot can
// be released.
TEST(RateLimiterTest, ConcurrentAcquireAndReleaseKeepTheLimit) {
  RateLimiter limiter(Limits(0, 3, /*capacity=*/4));
  constexpr int kKeys = 6;
  std::atomic<int> holding[kKeys] = {};
  std::atomic<bool> over{false};
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        const int k = (t + i) % kKeys;
        RateLimiter::Decision d =
            limiter.Acquire(absl::StrCat("key-", k), kT0 + absl::Seconds(i));
        if (d.slot == nullptr) continue;
        ++admitted;
        if (holding[k].fetch_add(1) + 1 > 3) over = true;
        holding[k].fetch_sub(1);
        limiter.Release(d.slot);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_FALSE(over);
  EXPECT_GT(admitted, 0);
  EXPECT_LE(limiter.size(), static_cast<size_t>(kKeys));
}

TEST(RateLimiterTest, OffWhenBothLimitsAreZero) {
  EXPECT_FALSE(RateLimiter(Limits(0, 0)).enabled());
  EXPECT_TRUE(RateLimiter(Limits(1, 0)).enabled());
  EXPECT_TRUE(RateLimiter(Limits(0, 1)).enabled());
}

TEST(RateLimiterTest, CeilSecondsRoundsUpToAtLeastOne) {
  EXPECT_EQ(CeilSeconds(absl::Milliseconds(1)), 1);
  EXPECT_EQ(CeilSeconds(absl::Milliseconds(1001)), 2);
  EXPECT_EQ(CeilSeconds(absl::Seconds(60)), 60);
  EXPECT_EQ(CeilSeconds(absl::ZeroDuration()), 1);
}

}  // namespace
}  // namespace tunnel::httpfront
