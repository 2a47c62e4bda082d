// Signal delivery for the upgrader (internal): the handlers only save errno and write the
// signal number to a non-blocking pipe; the upgrader's thread reads it. This works whichever
// thread the kernel picks, including threads the application started before us (signalfd
// would need the signal blocked in all of them). Between fork and exec the child still has
// our handler; it checks the pid so a signal there never reaches the parent's pipe. Also the
// list of lifecycle signals, start_thread() for the library's threads, which start with them
// blocked, and settle_signal_state() for the threads that take them under TSan.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "endless/core/unique_fd.hpp"

namespace endless::core {

// SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2 and SIGTSTP.
sigset_t lifecycle_signals() noexcept;

// Closes, for the calling thread, the window in which TSan drops a signal. TSan's runtime
// (GCC 12's, at least) sets up a thread's signal state lazily, on the thread's first blocking
// call, and a signal that lands while it does so never reaches our handler (signals_test:
// 141-147 of 1,000 signals sent at that moment). A zero-timeout poll() is such a call. Call it
// before a thread may take a lifecycle signal; elsewhere it is one cheap system call. (The same
// runtime also drops a signal that lands in a thread that has begun to exit: a short-lived
// thread should keep the lifecycle signals blocked.)
void settle_signal_state() noexcept;

// Starts a thread of the library's own (event loops, the hand-off monitor, the certificate
// watcher, the upgrader's) with the lifecycle signals blocked: they then reach the upgrader's
// thread or the application's, never a loop thread that sits in epoll_wait or a handler. The
// caller's mask is restored, also when the thread cannot be created.
template <class F>
std::thread start_thread(F&& fn) {
  const sigset_t lifecycle = lifecycle_signals();
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

class signal_pipe {
 public:
  signal_pipe();   // throws std::system_error; only one may exist at a time
  ~signal_pipe();  // restores the previous handlers
  signal_pipe(const signal_pipe&) = delete;
  signal_pipe& operator=(const signal_pipe&) = delete;

  void handle(int signo);  // idempotent
  int read_fd() const noexcept { return read_.get(); }
  // Signal numbers received since the last call, in order.
  std::vector<int> take();

 private:
  unique_fd read_;
  unique_fd write_;
  std::map<int, struct sigaction> previous_;
};

}  // namespace endless::core
