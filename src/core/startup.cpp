#include "startup.hpp"

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>

#include "endless/core/error.hpp"
#include "endless/core/upgrader.hpp"
#include "protocol.hpp"

namespace endless::core {
namespace {

template <class T>
bool parse_number(const char* text, T& out) {
  if (!text || !*text) return false;
  std::string_view s(text);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t at = s.find(sep, start);
    out.emplace_back(s.substr(start, at - start));
    if (at == std::string_view::npos) break;
    start = at + 1;
  }
  return out;
}

// Plain read(): std::ifstream would pull iostreams and locales into every process at load
// time (about 1 MiB of resident library pages).
std::string read_file(const char* path) {
  std::string out;
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// ENDLESS_TABLE and ENDLESS_ELDERS ("g/pid/fd,..."): all or nothing. The fds are above the
// standard streams; elders are older than us, oldest first, and no fd is named twice.
void parse_lineage(const getenv_fn& getenv, startup_env& env) {
  namespace p = protocol;
  int table = -1;
  if (const char* t = getenv(p::kTable)) {
    if (parse_number(t, table) && table >= p::kFirstFd && table != env.ready_fd) {
      env.table_fd = table;
    } else {
      env.notes.push_back(std::string("ignoring ENDLESS_TABLE='") + t + "': not an fd");
    }
  }
  const char* text = getenv(p::kElders);
  if (!text || !*text) return;
  std::vector<inherited_elder> elders;
  std::vector<int> fds{env.ready_fd, env.table_fd};
  for (const auto& item : split(text, ',')) {
    auto parts = split(item, '/');
    inherited_elder e;
    bool ok = parts.size() == 3 && parse_number(parts[0].c_str(), e.generation) &&
              parse_number(parts[1].c_str(), e.pid) && e.pid > 0 &&
              parse_number(parts[2].c_str(), e.pidfd) && e.pidfd >= p::kFirstFd &&
              e.generation < env.generation &&
              (elders.empty() || elders.back().generation < e.generation) &&
              std::find(fds.begin(), fds.end(), e.pidfd) == fds.end();
    if (!ok) {
      env.notes.push_back(std::string("ignoring ENDLESS_ELDERS='") + text +
                          "': not a list of generation/pid/fd");
      return;
    }
    fds.push_back(e.pidfd);
    elders.push_back(e);
  }
  env.elders = std::move(elders);
}

}  // namespace

std::string encode_fd_name(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == '%') {
      out += "%25";
    } else if (c == ':') {
      out += "%3A";
    } else {
      out += c;
    }
  }
  return out;
}

std::string decode_fd_name(std::string_view encoded) {
  std::string out;
  for (size_t i = 0; i < encoded.size(); ++i) {
    if (encoded.substr(i, 3) == "%3A") {
      out += ':';
      i += 2;
    } else if (encoded.substr(i, 3) == "%25") {
      out += '%';
      i += 2;
    } else {
      out += encoded[i];
    }
  }
  return out;
}

startup_env parse_startup_env(const getenv_fn& getenv, pid_t self) {
  namespace p = protocol;
  startup_env env;
  if (const char* s = getenv(p::kNotifySocket)) env.notify_socket = s;

  // systemd: the watchdog applies to us only if WATCHDOG_PID is unset or names us.
  std::uint64_t usec = 0;
  if (parse_number(getenv(p::kWatchdogUsec), usec) && usec > 0) {
    pid_t wpid = 0;
    const char* wp = getenv(p::kWatchdogPid);
    if (!wp || (parse_number(wp, wpid) && wpid == self)) env.watchdog_usec = usec;
  }

  const char* proto = getenv(p::kProtocol);
  env.from_parent = proto != nullptr;
  int version = 0;
  if (env.from_parent && (!parse_number(proto, version) || version != p::kVersion)) {
    // The fds are still parsed below, so that they can be closed rather than leaked.
    env.error = errc::protocol_mismatch;
    env.notes.push_back(std::string("refusing the listeners of the old process: it speaks "
                                    "endless upgrade protocol ") +
                        proto + ", this binary speaks " + std::to_string(p::kVersion));
  }
  parse_number(getenv(p::kGeneration), env.generation);
  if (env.from_parent && !env.error) {
    int ready = -1;
    if (parse_number(getenv(p::kReadyFd), ready) && ready >= 0) env.ready_fd = ready;
  }
  // Parsed even when refused, so that they are closed rather than leaked.
  if (env.from_parent) parse_lineage(getenv, env);

  const char* fds_text = getenv(p::kListenFds);
  if (!fds_text) return env;
  pid_t listen_pid = 0;
  if (!parse_number(getenv(p::kListenPid), listen_pid) || listen_pid != self) {
    // sd_listen_fds(3): the fds are not for us; ignore them.
    env.notes.push_back(std::string("ignoring LISTEN_FDS=") + fds_text + ": LISTEN_PID=" +
                        (getenv(p::kListenPid) ? getenv(p::kListenPid) : "(unset)") +
                        " is not this process (" + std::to_string(self) + ")");
    env.ready_fd = -1;
    env.table_fd = -1;  // not ours either
    env.elders.clear();
    return env;
  }
  int count = 0;
  if (!parse_number(fds_text, count) || count < 0 || count > 65536) {
    env.notes.push_back(std::string("ignoring LISTEN_FDS='") + fds_text + "': not a count");
    return env;
  }
  std::vector<std::string> names;
  if (const char* n = getenv(p::kListenFdNames)) names = split(n, ':');
  std::string owned = getenv(p::kFdOwned) ? getenv(p::kFdOwned) : "";
  for (int i = 0; i < count; ++i) {
    inherited_fd fd;
    fd.fd = p::kFirstFd + i;
    // systemd names its fds "unknown" when none was configured; keep one name per fd.
    fd.name = i < static_cast<int>(names.size()) ? decode_fd_name(names[i]) : "unknown";
    fd.owns_path = env.from_parent && i < static_cast<int>(owned.size()) && owned[i] == '1';
    env.fds.push_back(std::move(fd));
  }
  return env;
}

std::string resolve_executable(const std::string& argv0, const std::string& cwd,
                               const char* path_env) {
  if (!argv0.empty() && argv0.find('/') != std::string::npos) {
    if (argv0[0] == '/') return argv0;
    return cwd + "/" + argv0;
  }
  if (!argv0.empty() && path_env) {
    for (const auto& dir : split(path_env, ':')) {
      std::string candidate = (dir.empty() ? cwd : dir) + "/" + argv0;
      if (::access(candidate.c_str(), X_OK) == 0) {
        return candidate[0] == '/' ? candidate : cwd + "/" + candidate;
      }
    }
  }
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return argv0;
  std::string exe(buf, static_cast<size_t>(n));
  constexpr std::string_view kDeleted = " (deleted)";
  if (exe.ends_with(kDeleted)) exe.resize(exe.size() - kDeleted.size());
  return exe;
}

namespace {

// The lineage fds are adopted (and one day closed) only if they are what they claim: the
// table a memfd, each elder a pidfd of that pid, none of them a listener. Anything else is
// left alone, never closed: it is not ours to close.
void check_lineage_fds(startup_env& env) {
  auto is_listener = [&](int fd) {
    return std::any_of(env.fds.begin(), env.fds.end(),
                       [fd](const inherited_fd& f) { return f.fd == fd; });
  };
  if (env.table_fd >= 0) {
    char target[64] = {};
    std::string link = "/proc/self/fd/" + std::to_string(env.table_fd);
    ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (is_listener(env.table_fd) || n <= 0 ||
        std::string_view(target, static_cast<std::size_t>(n)).rfind("/memfd:", 0) != 0) {
      env.notes.push_back("ignoring ENDLESS_TABLE: fd " + std::to_string(env.table_fd) +
                          " is not a memfd");
      env.table_fd = -1;
    }
  }
  std::erase_if(env.elders, [&](const inherited_elder& e) {
    std::string info = read_file(("/proc/self/fdinfo/" + std::to_string(e.pidfd)).c_str());
    if (!is_listener(e.pidfd) && info.find("\nPid:\t-1\n") != std::string::npos) {
      ::close(e.pidfd);  // a pidfd (ours) of a process gone meanwhile
      return true;
    }
    bool ok = !is_listener(e.pidfd) &&
              info.find("\nPid:\t" + std::to_string(e.pid) + "\n") != std::string::npos;
    if (!ok) {
      env.notes.push_back("ignoring elder " + std::to_string(e.pid) + ": fd " +
                          std::to_string(e.pidfd) + " is not its pidfd");
    }
    return !ok;
  });
}

process_start take_snapshot() {
  process_start s;
  s.parent = ::getppid();
  s.env = parse_startup_env([](const char* name) { return ::getenv(name); }, ::getpid());
  check_lineage_fds(s.env);
  // The inherited fds (and the readiness channel) must not leak into anything this process
  // execs except through an upgrade, which passes them explicitly.
  for (const auto& fd : s.env.fds)
    ::fcntl(fd.fd, F_SETFD, FD_CLOEXEC);
  if (s.env.error) {
    for (const auto& fd : s.env.fds)
      ::close(fd.fd);
    s.env.fds.clear();
    if (s.env.table_fd >= 0) ::close(s.env.table_fd);
    s.env.table_fd = -1;
    for (const auto& e : s.env.elders)
      ::close(e.pidfd);
    s.env.elders.clear();
  }
  if (s.env.ready_fd >= 0) ::fcntl(s.env.ready_fd, F_SETFD, FD_CLOEXEC);
  if (s.env.table_fd >= 0) ::fcntl(s.env.table_fd, F_SETFD, FD_CLOEXEC);
  for (const auto& e : s.env.elders)
    ::fcntl(e.pidfd, F_SETFD, FD_CLOEXEC);
  for (const char* name : protocol::kAllVariables)
    ::unsetenv(name);

  std::string cmdline = read_file("/proc/self/cmdline");
  if (!cmdline.empty() && cmdline.back() == '\0') cmdline.pop_back();
  if (!cmdline.empty()) s.argv = split(cmdline, '\0');
  char cwd[PATH_MAX];
  std::string dir = ::getcwd(cwd, sizeof cwd) ? cwd : "/";
  s.executable =
      resolve_executable(s.argv.empty() ? std::string() : s.argv[0], dir, ::getenv("PATH"));
  return s;
}

// Take the snapshot as the library loads: before main() can chdir, start threads, or spawn
// children that would inherit the protocol variables.
[[gnu::constructor]] void take_snapshot_at_load() {
  (void)startup();
}

}  // namespace

process_start& startup() {
  static process_start snapshot = take_snapshot();
  return snapshot;
}

// upgrader.hpp
std::uint64_t this_process_generation() noexcept {
  return startup().env.generation;
}

}  // namespace endless::core
