#include "signals.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "endless/core/error.hpp"

namespace endless::core {
namespace {

// The state a signal handler may touch: plain atomics, set before handlers are installed.
std::atomic<int> g_write_fd{-1};
std::atomic<pid_t> g_owner{0};

void on_signal(int signo) {
  int saved = errno;
  int fd = g_write_fd.load(std::memory_order_relaxed);
  if (fd >= 0 && static_cast<pid_t>(::syscall(SYS_getpid)) == g_owner.load()) {
    auto byte = static_cast<unsigned char>(signo);
    (void)!::write(fd, &byte, 1);  // a full pipe drops the byte: that signal is pending anyway
  }
  errno = saved;
}

}  // namespace

sigset_t lifecycle_signals() noexcept {
  sigset_t set;
  ::sigemptyset(&set);
  for (int s : {SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGTSTP})
    ::sigaddset(&set, s);
  return set;
}

void settle_signal_state() noexcept {
  (void)::poll(nullptr, 0, 0);
}

signal_pipe::signal_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw std::system_error(errno, std::system_category(), "can't create the signal pipe");
  }
  read_.reset(fds[0]);
  write_.reset(fds[1]);
  int expected = -1;
  if (!g_write_fd.compare_exchange_strong(expected, write_.get())) {
    throw std::system_error(make_error_code(std::errc::device_or_resource_busy),
                            "only one endless::core::upgrader may handle signals per process");
  }
  g_owner.store(::getpid());
}

signal_pipe::~signal_pipe() {
  for (auto& [signo, old] : previous_)
    ::sigaction(signo, &old, nullptr);
  g_write_fd.store(-1);
}

void signal_pipe::handle(int signo) {
  if (previous_.count(signo)) return;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  struct sigaction old {};
  if (::sigaction(signo, &sa, &old) != 0) {
    throw std::system_error(errno, std::system_category(), "sigaction");
  }
  previous_[signo] = old;
}

std::vector<int> signal_pipe::take() {
  std::vector<int> out;
  unsigned char buf[64];
  for (;;) {
    ssize_t n = ::read(read_.get(), buf, sizeof buf);
    if (n <= 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

}  // namespace endless::core
