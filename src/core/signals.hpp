// Signal delivery for the upgrader (internal): the handlers only save errno and write the
// signal number to a non-blocking pipe; the upgrader's thread reads it. This works whichever
// thread the kernel picks, including threads the application started before us (signalfd
// would need the signal blocked in all of them). Between fork and exec the child still has
// our handler; it checks the pid so a signal there never reaches the parent's pipe. Also the
// list of lifecycle signals, which the library's own threads start with blocked
// (io::start_thread), and settle_signal_state() for the threads that take them under TSan.
#pragma once

#include <signal.h>

#include <map>
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
