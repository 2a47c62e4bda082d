// Signal delivery for the upgrader (internal): the handlers only save errno and write the
// signal number to a non-blocking pipe; the upgrader's thread reads it. This works whichever
// thread the kernel picks, including threads the application started before us (signalfd
// would need the signal blocked in all of them). Between fork and exec the child still has
// our handler; it checks the pid so a signal there never reaches the parent's pipe.
#pragma once

#include <signal.h>

#include <map>
#include <vector>

#include "endless/core/unique_fd.hpp"

namespace endless::core {

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
