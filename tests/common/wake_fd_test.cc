#include "common/wake_fd.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cstdint>

#include "gtest/gtest.h"

namespace tunnel::common {
namespace {

class WakeFdTest : public ::testing::Test {
 protected:
  WakeFdTest() : fd_(NewWakeFd()), epoll_fd_(epoll_create1(EPOLL_CLOEXEC)) {
    epoll_event ev{};
    ev.events = kWakeFdEvents;
    ev.data.fd = fd_;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd_, &ev);
  }
  ~WakeFdTest() override {
    close(fd_);
    close(epoll_fd_);
  }
  // Events waiting now (no wait).
  int Ready() {
    epoll_event events[4];
    return epoll_wait(epoll_fd_, events, 4, 0);
  }

  const int fd_;
  const int epoll_fd_;
};

// The loop never reads the counter: still, every wake-up is an event, and
// none is reported twice.
TEST_F(WakeFdTest, EveryWakeUpIsOneEventWithoutReading) {
  ASSERT_GE(fd_, 0);
  EXPECT_EQ(Ready(), 0);
  for (int i = 0; i < 3; ++i) {
    SignalWakeFd(fd_);
    EXPECT_EQ(Ready(), 1) << "wake-up " << i;
    EXPECT_EQ(Ready(), 0) << "reported again after wake-up " << i;
  }
}

// The counter at its maximum (2^64 - 2 wake-ups, set here directly): the
// next wake-up still arrives.
TEST_F(WakeFdTest, AWakeUpAtTheCountersMaximumStillArrives) {
  const uint64_t max = 0xfffffffffffffffe;
  ASSERT_EQ(write(fd_, &max, sizeof(max)), static_cast<ssize_t>(sizeof(max)));
  EXPECT_EQ(Ready(), 1);
  SignalWakeFd(fd_);
  EXPECT_EQ(Ready(), 1);
  uint64_t count = 0;
  ASSERT_EQ(read(fd_, &count, sizeof(count)),
            static_cast<ssize_t>(sizeof(count)));
  EXPECT_EQ(count, 1u) << "reset, then the one wake-up";
}

}  // namespace
}  // namespace tunnel::common
