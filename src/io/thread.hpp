// Threads of the library's own (event loops, the hand-off monitor, the certificate watcher)
// start with the lifecycle signals blocked (internal): SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2
// and SIGTSTP then reach the upgrader's thread or the application's, never a loop thread
// that sits in epoll_wait or a handler. (Under TSan a signal that lands in such a thread can
// wait for it; in any build it keeps the handlers' work off the serving threads.)
#pragma once

#include <pthread.h>
#include <signal.h>

#include <thread>
#include <utility>

#include "../core/signals.hpp"

namespace endless::io {

template <class F>
std::thread start_thread(F&& fn) {
  const sigset_t lifecycle = core::lifecycle_signals();
  sigset_t old;
  ::pthread_sigmask(SIG_BLOCK, &lifecycle, &old);  // inherited by the new thread
  std::thread t;
  try {
    t = std::thread(std::forward<F>(fn));
  } catch (...) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw;
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return t;
}

}  // namespace endless::io
