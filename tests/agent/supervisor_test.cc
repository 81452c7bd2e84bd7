// The reconnect backoff on a fake clock and a fixed random source.
#include "agent/supervisor.h"

#include <vector>

#include "gtest/gtest.h"

namespace tunnel::agent {
namespace {

class SupervisorTest : public ::testing::Test {
 protected:
  Supervisor Make() {
    return Supervisor(
        policy_, [this] { return now_; }, [this] { return random_; });
  }
  BackoffPolicy policy_{absl::Milliseconds(500), absl::Seconds(30),
                        absl::Seconds(30)};
  absl::Time now_ = absl::FromUnixSeconds(1'000'000);
  double random_ = 0.999999;  // the top of each jitter range
};

TEST_F(SupervisorTest, FailuresDoubleTheCapUpToTheMaximum) {
  Supervisor s = Make();
  std::vector<double> waits;
  for (int i = 0; i < 9; ++i) {
    s.AttemptStarted();
    now_ += absl::Seconds(1);
    waits.push_back(
        absl::ToDoubleSeconds(s.NextWait(false, absl::ZeroDuration())));
  }
  const std::vector<double> caps = {0.5, 1, 2, 4, 8, 16, 30, 30, 30};
  ASSERT_EQ(waits.size(), caps.size());
  for (size_t i = 0; i < caps.size(); ++i) {
    EXPECT_NEAR(waits[i], caps[i], caps[i] * 1e-5) << "attempt " << i;
  }
  EXPECT_EQ(s.failures(), 9);
}

TEST_F(SupervisorTest, FullJitterSpansZeroToTheCap) {
  Supervisor s = Make();
  random_ = 0.0;
  EXPECT_EQ(s.NextWait(false, absl::ZeroDuration()), absl::ZeroDuration());
  random_ = 0.5;
  // Second failure: cap 1 s, half of it.
  EXPECT_EQ(s.NextWait(false, absl::ZeroDuration()), absl::Milliseconds(500));
}

TEST_F(SupervisorTest, TheGatewaysRetryAfterIsTheLeastWait) {
  Supervisor s = Make();
  random_ = 0.0;
  EXPECT_EQ(s.NextWait(false, absl::Seconds(5)), absl::Seconds(5));
  random_ = 0.999999;
  // A retry_after below the jittered wait does not shorten it.
  EXPECT_GT(s.NextWait(false, absl::Milliseconds(1)), absl::Milliseconds(900));
}

TEST_F(SupervisorTest, OnlyAHealthySessionStartsTheCountOver) {
  Supervisor s = Make();
  for (int i = 0; i < 5; ++i) s.NextWait(false, absl::ZeroDuration());
  ASSERT_EQ(s.failures(), 5);
  // Accepted, but gone after 10 s: still counted as a failure in a row.
  s.AttemptStarted();
  now_ += absl::Seconds(10);
  EXPECT_NEAR(absl::ToDoubleSeconds(s.NextWait(true, absl::ZeroDuration())), 16,
              1e-3);
  EXPECT_EQ(s.failures(), 6);
  // Accepted and up for the healthy time: back to the first step.
  s.AttemptStarted();
  now_ += absl::Seconds(30);
  EXPECT_NEAR(absl::ToDoubleSeconds(s.NextWait(true, absl::ZeroDuration())),
              0.5, 1e-3);
  EXPECT_EQ(s.failures(), 1);
  // Not accepted, however long it took (a hung handshake): no reset.
  s.AttemptStarted();
  now_ += absl::Minutes(5);
  EXPECT_NEAR(absl::ToDoubleSeconds(s.NextWait(false, absl::ZeroDuration())), 1,
              1e-3);
}

}  // namespace
}  // namespace tunnel::agent
