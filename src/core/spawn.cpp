#include "spawn.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "endless/core/error.hpp"
#include "protocol.hpp"
#include "sanitizers.hpp"
#include "startup.hpp"

extern char** environ;

namespace endless::core {
namespace {

constexpr unsigned kCloseRangeCloexec = 1u << 2;  // CLOSE_RANGE_CLOEXEC (linux/close_range.h)

std::error_code last_error() {
  return {errno, std::system_category()};
}

bool is_protocol_variable(const char* entry) {
  for (const char* name : protocol::kAllVariables) {
    size_t n = std::strlen(name);
    if (std::strncmp(entry, name, n) == 0 && entry[n] == '=') return true;
  }
  return false;
}

// "NAME=" followed by room for a pid that only the child knows.
struct pid_slot {
  std::vector<char> text;
  size_t digits_at = 0;
  explicit pid_slot(const char* name) {
    std::string prefix = std::string(name) + "=";
    text.assign(prefix.begin(), prefix.end());
    digits_at = text.size();
    text.resize(text.size() + 24, '\0');
  }
  // Async-signal-safe.
  void fill(pid_t pid) noexcept {
    char rev[24];
    int n = 0;
    auto v = static_cast<unsigned long>(pid);
    do {
      rev[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v && n < 23);
    for (int i = 0; i < n; ++i)
      text[digits_at + i] = rev[n - 1 - i];
    text[digits_at + n] = '\0';
  }
};

std::string describe(const siginfo_t& si) {
  if (si.si_code == CLD_EXITED) return "exited with status " + std::to_string(si.si_status);
  if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
    const char* name = ::sigdescr_np(si.si_status);
    return "was killed by signal " + std::to_string(si.si_status) +
           (name ? std::string(" (") + name + ")" : "");
  }
  return "ended with code " + std::to_string(si.si_code);
}

constexpr auto kWaitPidfd = static_cast<idtype_t>(3);  // P_PIDFD (Linux 5.4)

// What the child does between its creation and exec: async-signal-safe calls only, and no
// write to memory but its own stack, the two pid slots and (through libc) the calling
// thread's errno (it may share our memory; errno is read right after, before anything else).
struct child_plan {
  const char* exe = nullptr;
  char** argv = nullptr;
  char** envp = nullptr;
  pid_slot* listen_pid = nullptr;
  pid_slot* watchdog_pid = nullptr;
  struct move {
    int from, to;
  };
  std::vector<move> moves;  // dup2(from, to), in order; every `from` is above every `to`
  int cloexec_from = 0;     // everything from here up is not inherited
  int err_write = -1;       // the exec's errno goes here if it fails (close-on-exec)
};

[[noreturn]] void run_child(const child_plan& p) noexcept {
  // Signals arrive blocked (start_child). A handler of ours must never run here: with a
  // shared address space it would act on the parent's memory. exec resets handlers anyway;
  // reset them first so that a signal that arrives before the exec acts as it will after it.
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) != 0) continue;  // glibc's own real-time signals
    if (old.sa_handler == SIG_IGN || old.sa_handler == SIG_DFL) continue;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  pid_t self = static_cast<pid_t>(::syscall(SYS_getpid));
  p.listen_pid->fill(self);
  p.watchdog_pid->fill(self);
  for (const auto& m : p.moves) {
    if (::dup2(m.from, m.to) < 0) goto fail;
  }
  // Nothing else goes to the new process: an fd the application (or a library: Asio's
  // accept, a database client) opened without FD_CLOEXEC, a client connection above all,
  // would otherwise live on in every later generation and never reach its EOF. The fds from
  // cloexec_from up are marked close-on-exec (err_write is already). Linux >= 5.11; on an
  // older kernel this fails and such fds leak as before.
  (void)::syscall(SYS_close_range, static_cast<unsigned>(p.cloexec_from), ~0U, kCloseRangeCloexec);
  ::execve(p.exe, p.argv, p.envp);
fail:
  int e = errno;
  // syscall(2), not write(2): glibc's write is a cancellation point and would mark the
  // parent thread's control block, which this child shares.
  (void)::syscall(SYS_write, p.err_write, &e, sizeof e);
  ::_exit(127);
}

// The child is created the way posix_spawn(3) does it: clone(CLONE_VM | CLONE_VFORK) on a
// stack of its own, so that no page table is copied and we go on once it has exec'd. A
// fork() of a serving process with threads and a warm heap took 0.7-0.9 ms here, a third of
// a hand-over beyond the new program's own start-up. Under a sanitizer a plain fork(): its
// runtime does not expect a second task in the same address space.
#if defined(ENDLESS_SANITIZED)
constexpr const char* kStartCall = "fork";

pid_t start_child(const child_plan& plan) {
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::fork();
  if (pid == 0) run_child(plan);
  int e = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = e;
  return pid;
}
#else
constexpr const char* kStartCall = "clone";
constexpr std::size_t kChildStack = 64 * 1024;
constexpr std::size_t kGuard = 4096;  // below the stack: an overflow faults, never writes ours

int child_entry(void* plan) {
  run_child(*static_cast<const child_plan*>(plan));
}

pid_t start_child(const child_plan& plan) {
  void* area = ::mmap(nullptr, kGuard + kChildStack, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (area == MAP_FAILED) return -1;
  if (::mprotect(area, kGuard, PROT_NONE) != 0) {
    int e = errno;
    ::munmap(area, kGuard + kChildStack);
    errno = e;
    return -1;
  }
  char* stack = static_cast<char*>(area) + kGuard;
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::clone(child_entry, stack + kChildStack, CLONE_VM | CLONE_VFORK | SIGCHLD,
                      const_cast<child_plan*>(&plan));
  int e = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::munmap(area, kGuard + kChildStack);
  errno = e;
  return pid;
}
#endif

}  // namespace

int pidfd_open(pid_t pid) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

int pidfd_signal(int pidfd, int signo) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signo, nullptr, 0));
}

std::error_code spawn(const spawn_request& req, spawned& out, std::string& why) {
  const int n = static_cast<int>(req.fds.size());
  const int ready_target = protocol::kFirstFd + n;
  const int table_target = req.table_fd >= 0 ? ready_target + 1 : -1;
  const int elders_target = ready_target + (req.table_fd >= 0 ? 2 : 1);
  const int elders_count = static_cast<int>(req.elders.size());
  const int staging_floor = elders_target + elders_count;  // nothing the child dup2()s over

  // Stage every fd the child needs above the targets, so dup2 in the child cannot clobber
  // a source it still has to copy.
  std::vector<unique_fd> staged;
  for (const auto& fd : req.fds) {
    staged.emplace_back(::fcntl(fd.fd.get(), F_DUPFD_CLOEXEC, staging_floor));
    if (!staged.back()) {
      std::error_code ec = last_error();
      why = "can't start new process: dup of '" + fd.name + "': " + ec.message();
      return ec;
    }
  }
  unique_fd table;
  if (req.table_fd >= 0) table.reset(::fcntl(req.table_fd, F_DUPFD_CLOEXEC, staging_floor));
  std::vector<unique_fd> elders;
  for (const auto& e : req.elders) {
    elders.emplace_back(::fcntl(e.pidfd, F_DUPFD_CLOEXEC, staging_floor));
    if (!elders.back()) {
      std::error_code ec = last_error();
      why = "can't start new process: dup of a pidfd: " + ec.message();
      return ec;
    }
  }
  if (req.table_fd >= 0 && !table) {
    std::error_code ec = last_error();
    why = "can't start new process: dup of the generation table: " + ec.message();
    return ec;
  }
  unique_fd ready(::fcntl(req.ready_fd, F_DUPFD_CLOEXEC, staging_floor));
  int err_pipe[2];
  if (!ready || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
    std::error_code ec = last_error();
    why = "can't start new process: pipe: " + ec.message();
    return ec;
  }
  unique_fd err_read(err_pipe[0]);
  unique_fd err_write(::fcntl(err_pipe[1], F_DUPFD_CLOEXEC, staging_floor));
  ::close(err_pipe[1]);
  if (!err_write) {
    std::error_code ec = last_error();
    why = "can't start new process: dup: " + ec.message();
    return ec;
  }

  // The environment: ours minus the protocol variables, plus this upgrade's.
  std::vector<std::string> vars;
  for (char** e = environ; e && *e; ++e) {
    if (!is_protocol_variable(*e)) vars.emplace_back(*e);
  }
  std::string names;
  std::string owned;
  for (const auto& fd : req.fds) {
    if (!names.empty()) names += ':';
    names += encode_fd_name(fd.name);
    owned += fd.owns_path ? '1' : '0';
  }
  vars.push_back(std::string(protocol::kListenFds) + "=" + std::to_string(n));
  vars.push_back(std::string(protocol::kListenFdNames) + "=" + names);
  vars.push_back(std::string(protocol::kFdOwned) + "=" + owned);
  vars.push_back(std::string(protocol::kProtocol) + "=" + std::to_string(protocol::kVersion));
  vars.push_back(std::string(protocol::kReadyFd) + "=" + std::to_string(ready_target));
  vars.push_back(std::string(protocol::kGeneration) + "=" + std::to_string(req.generation));
  if (table_target >= 0) {
    vars.push_back(std::string(protocol::kTable) + "=" + std::to_string(table_target));
  }
  if (elders_count > 0) {
    std::string list;
    for (int i = 0; i < elders_count; ++i) {
      const auto& e = req.elders[static_cast<std::size_t>(i)];
      if (i) list += ',';
      list.append(std::to_string(e.generation)).append("/").append(std::to_string(e.pid));
      list.append("/").append(std::to_string(elders_target + i));
    }
    vars.push_back(std::string(protocol::kElders) + "=" + list);
  }
  if (!req.notify_socket.empty()) {
    vars.push_back(std::string(protocol::kNotifySocket) + "=" + req.notify_socket);
  }
  if (req.watchdog_usec) {
    vars.push_back(std::string(protocol::kWatchdogUsec) + "=" + std::to_string(req.watchdog_usec));
  }
  pid_slot listen_pid(protocol::kListenPid);
  pid_slot watchdog_pid(protocol::kWatchdogPid);
  std::vector<char*> envp;
  for (auto& v : vars)
    envp.push_back(v.data());
  envp.push_back(listen_pid.text.data());
  if (req.watchdog_usec) envp.push_back(watchdog_pid.text.data());
  envp.push_back(nullptr);

  std::vector<std::string> argv_copy = req.argv;
  if (argv_copy.empty()) argv_copy.push_back(req.executable);
  std::vector<char*> argv;
  for (auto& a : argv_copy)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  const char* exe = req.executable.c_str();

  child_plan plan;
  plan.exe = exe;
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.listen_pid = &listen_pid;
  plan.watchdog_pid = &watchdog_pid;
  for (const auto& fd : staged)
    plan.moves.push_back({fd.get(), protocol::kFirstFd + static_cast<int>(plan.moves.size())});
  plan.moves.push_back({ready.get(), ready_target});
  if (table_target >= 0) plan.moves.push_back({table.get(), table_target});
  for (int i = 0; i < elders_count; ++i)
    plan.moves.push_back({elders[static_cast<std::size_t>(i)].get(), elders_target + i});
  plan.cloexec_from = elders_target + elders_count;
  plan.err_write = err_write.get();

  pid_t pid = start_child(plan);
  if (pid < 0) {
    std::error_code ec = last_error();
    why = "can't start new process: " + std::string(kStartCall) + ": " + ec.message();
    return ec;
  }
  err_write.reset();
  out.pid = pid;
  out.pidfd.reset(pidfd_open(pid));
  int child_errno = 0;
  ssize_t got;
  do {
    got = ::read(err_read.get(), &child_errno, sizeof child_errno);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof child_errno)) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    out.pid = -1;
    out.pidfd.reset();
    why = std::string("can't start new process: exec ") + req.executable + ": " +
          std::strerror(child_errno);
    return errc::exec_failed;
  }
  if (!out.pidfd) {
    // Without a pidfd we can't watch the child; give up on this upgrade cleanly. It is our
    // unreaped child, so its pid is still ours to kill and wait for.
    std::error_code ec = last_error();
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    out.pid = -1;
    why = "can't start new process: pidfd_open: " + ec.message();
    return ec;
  }
  return {};
}

std::string kill_and_reap(const spawned& child) {
  if (!child.pidfd) return "not running";
  if (pidfd_signal(child.pidfd.get(), SIGKILL) != 0 && errno != ESRCH) {
    return std::string("could not be killed: ") + std::strerror(errno);
  }
  // SIGKILL takes effect at once unless the child is in uninterruptible sleep.
  pollfd p{child.pidfd.get(), POLLIN, 0};
  ::poll(&p, 1, 5000);
  siginfo_t si{};
  if (::waitid(kWaitPidfd, static_cast<id_t>(child.pidfd.get()), &si, WEXITED | WNOHANG) != 0) {
    return errno == ECHILD ? "exited (reaped elsewhere, status unknown)" : "could not be reaped";
  }
  if (si.si_pid == 0) return "did not exit after SIGKILL";
  return describe(si);
}

exit_kind reap_exited(const spawned& child, std::string& how) {
  siginfo_t si{};
  if (::waitid(kWaitPidfd, static_cast<id_t>(child.pidfd.get()), &si, WEXITED | WNOHANG) != 0) {
    how = errno == ECHILD ? "exited (reaped elsewhere, status unknown)" : "could not be reaped";
    return exit_kind::unknown;
  }
  if (si.si_pid == 0) {
    how = "ended in a way we could not read";
    return exit_kind::unknown;
  }
  how = describe(si);
  return si.si_code == CLD_EXITED && si.si_status == 0 ? exit_kind::clean : exit_kind::crashed;
}

}  // namespace endless::core
