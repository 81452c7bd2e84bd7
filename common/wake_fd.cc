#include "common/wake_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace tunnel::common {

int NewWakeFd() { return ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

void SignalWakeFd(int fd) {
  const uint64_t one = 1;
  if (::write(fd, &one, sizeof(one)) == sizeof(one) || errno != EAGAIN) {
    return;  // (a non-blocking eventfd write is never interrupted)
  }
  // The counter is at its maximum: back to 0, then the write is an event.
  uint64_t count;
  (void)!::read(fd, &count, sizeof(count));
  (void)!::write(fd, &one, sizeof(one));
}

}  // namespace tunnel::common
