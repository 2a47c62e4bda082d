// recv, send and epoll_wait on the serving path, without glibc's cancellation bracket
// (internal).
//
// In glibc these three are pthread cancellation points. In a process with more than one
// thread (ours always has the loop threads and the hand-off monitor) every call therefore
// runs __pthread_enable_asynccancel and __pthread_disable_asynccancel around the system
// call: 1.5% of the server's CPU per keep-alive request in a perf profile. We never cancel a
// thread, so the loops ask the kernel directly; syscall(2) is no cancellation point and sets
// errno the same way.
//
// Under a sanitizer the libc functions stay: ASan checks the buffers and TSan models the
// synchronisation through their interceptors, which a raw system call would bypass.
#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>

#include "../core/sanitizers.hpp"

namespace endless::io {

inline ssize_t recv(int fd, void* buf, std::size_t len, int flags) noexcept {
#if defined(ENDLESS_SANITIZED) || !defined(SYS_recvfrom)
  return ::recv(fd, buf, len, flags);
#else
  return ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
#endif
}

inline ssize_t send(int fd, const void* buf, std::size_t len, int flags) noexcept {
#if defined(ENDLESS_SANITIZED) || !defined(SYS_sendto)
  return ::send(fd, buf, len, flags);
#else
  return ::syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0);
#endif
}

inline int epoll_wait(int epfd, epoll_event* events, int max, int timeout_ms) noexcept {
#if defined(ENDLESS_SANITIZED) || !defined(SYS_epoll_wait)
  return ::epoll_wait(epfd, events, max, timeout_ms);
#else
  return static_cast<int>(::syscall(SYS_epoll_wait, epfd, events, max, timeout_ms));
#endif
}

}  // namespace endless::io
