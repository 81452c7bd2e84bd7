// The eventfd that wakes an epoll loop from other threads.
//
// Registered edge-triggered (kWakeFdEvents), every write is a new event for
// the loop, so the loop never reads the counter back: one system call less
// per wake-up (libevent does the same). The counter only grows; a write that
// would pass its maximum (after 2^64 - 2 wake-ups) resets it and writes
// again.
#ifndef TUNNEL_COMMON_WAKE_FD_H_
#define TUNNEL_COMMON_WAKE_FD_H_

#include <sys/epoll.h>

#include <cstdint>

namespace tunnel::common {

inline constexpr uint32_t kWakeFdEvents = EPOLLIN | EPOLLET;

// A non-blocking, close-on-exec eventfd; -1 on failure.
int NewWakeFd();
// One wake-up of the loop that has `fd` in its epoll set (kWakeFdEvents).
void SignalWakeFd(int fd);

}  // namespace tunnel::common

#endif  // TUNNEL_COMMON_WAKE_FD_H_
