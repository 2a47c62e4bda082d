#include "spawn.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "endless/core/error.hpp"
#include "protocol.hpp"
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
    names += (names.empty() ? "" : ":") + encode_fd_name(fd.name);
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
      list += (i ? "," : "") + std::to_string(e.generation) + "/" + std::to_string(e.pid) + "/" +
              std::to_string(elders_target + i);
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

  pid_t pid = ::fork();
  if (pid < 0) {
    std::error_code ec = last_error();
    why = "can't start new process: fork: " + ec.message();
    return ec;
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    pid_t self = static_cast<pid_t>(::syscall(SYS_getpid));
    listen_pid.fill(self);
    watchdog_pid.fill(self);
    for (int i = 0; i < n; ++i) {
      if (::dup2(staged[i].get(), protocol::kFirstFd + i) < 0) goto fail;
    }
    if (::dup2(ready.get(), ready_target) < 0) goto fail;
    if (table_target >= 0 && ::dup2(table.get(), table_target) < 0) goto fail;
    for (int i = 0; i < elders_count; ++i) {
      if (::dup2(elders[static_cast<std::size_t>(i)].get(), elders_target + i) < 0) goto fail;
    }
    // Nothing else goes to the new process: an fd the application (or a library: Asio's
    // accept, a database client) opened without FD_CLOEXEC, a client connection above all,
    // would otherwise live on in every later generation and never reach its EOF. The fds
    // from elders_target + elders_count up are marked close-on-exec (err_write is already).
    // Linux >= 5.11; on an older kernel this fails and such fds leak as before.
    (void)::syscall(SYS_close_range, static_cast<unsigned>(elders_target + elders_count), ~0U,
                    kCloseRangeCloexec);
    ::execve(exe, argv.data(), envp.data());
  fail:
    int e = errno;
    (void)!::write(err_write.get(), &e, sizeof e);
    ::_exit(127);
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
