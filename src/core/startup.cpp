#include "startup.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "endless/core/error.hpp"
#include "endless/core/unique_fd.hpp"
#include "endless/core/upgrader.hpp"
#include "protocol.hpp"
#include "reuseport.hpp"

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

std::string encode_word(std::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : name) {
    if (c == '%' || c <= ' ' || c >= 0x7f) {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string decode_word(std::string_view encoded) {
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  std::string out;
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    if (encoded[i] == '%' && i + 2 < encoded.size() && hex(encoded[i + 1]) >= 0 &&
        hex(encoded[i + 2]) >= 0) {
      out += static_cast<char>(hex(encoded[i + 1]) * 16 + hex(encoded[i + 2]));
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
      if (env.takeover) ::close(env.table_fd);  // received by us: ours to close
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
      if (env.takeover) ::close(e.pidfd);
    }
    return !ok;
  });
}

// ENDLESS_TAKEOVER: asks the process serving `path` for its listeners (protocol.hpp). On
// success `env` is as if that process had started us; otherwise a note says why, and this
// process starts on its own (its bind fails if the other one still holds the address).
void take_over(const char* path, std::string_view mode, process_start& s) {
  // "fds", or "reuseport" with an optional mechanism ("reuseport-steering").
  const bool by_reuseport = mode.starts_with("reuseport");
  startup_env& env = s.env;
  auto fail = [&](const std::string& why) {
    env.takeover_failed = true;
    env.notes.push_back(
        std::string(by_reuseport ? "SO_REUSEPORT takeover from " : "takeover from ") + path +
        " failed: " + why + "; starting on our own");
  };
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof un.sun_path) return fail("path too long");
  std::strcpy(un.sun_path, path);
  unique_fd conn(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  // Never hang a start-up: connect() waits at most SO_SNDTIMEO on a full backlog, and the
  // whole answer must come within the same 10 s.
  timeval limit{10, 0};
  if (conn) ::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  if (!conn || ::connect(conn.get(), reinterpret_cast<sockaddr*>(&un), sizeof un) != 0) {
    const int err = errno;
    if (conn && (err == ENOENT || err == ECONNREFUSED)) {
      env.takeover_absent = true;
      // Nothing serves there: the first start of a blue/green pair, which binds the
      // addresses itself (with SO_REUSEPORT if configured, for the next takeover).
      env.notes.push_back(std::string("no takeover: nothing serves ") + path + " (" +
                          std::strerror(err) + "); starting on our own");
      return;
    }
    return fail(std::string("connect: ") + std::strerror(err));
  }
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      (cred.uid != ::geteuid() && cred.uid != 0)) {
    return fail("the socket is served by uid " + std::to_string(cred.uid) +
                ", not by ours or root");
  }
  if (cred.pid == 0) return fail("the serving process is in another pid namespace");
  timeval tv{1, 0};  // per read; the deadline bounds the whole answer
  ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string command = "takeover\n";
  if (by_reuseport) {
    command = mode.size() > 9 ? "takeover reuseport " + std::string(mode.substr(10)) + "\n"
                              : "takeover reuseport\n";
  }
  if (::send(conn.get(), command.data(), command.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(command.size())) {
    return fail(std::string("send: ") + std::strerror(errno));
  }
  std::string text;
  std::vector<int> fds;
  auto close_fds = [&] {
    for (int fd : fds)
      ::close(fd);
    fds.clear();
  };
  while (text.find("\nend\n") == std::string::npos && text.rfind("error ", 0) != 0) {
    char buf[16384];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * protocol::kMaxTakeoverFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(conn.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN) &&
        std::chrono::steady_clock::now() < deadline) {
      continue;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
    if (n <= 0 || (msg.msg_flags & MSG_CTRUNC)) {
      close_fds();
      return fail(n < 0    ? std::string("recv: ") + std::strerror(errno)
                  : n == 0 ? "the old process closed the connection"
                           : "too many fds");
    }
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > 1 << 20 || std::chrono::steady_clock::now() >= deadline) {
      close_fds();
      return fail("no complete answer");
    }
  }
  if (text.rfind("error ", 0) == 0) {
    close_fds();
    return fail("refused: " + text.substr(6, text.find('\n') - 6));
  }
  // Parse. Every fd is used once; anything inconsistent voids the takeover.
  startup_env got;
  std::vector<bool> used(fds.size(), false);
  auto take = [&](std::string_view index, int& out) {
    std::size_t i = 0;
    auto [end, ec] = std::from_chars(index.data(), index.data() + index.size(), i);
    if (ec != std::errc{} || end != index.data() + index.size() || i >= fds.size() || used[i]) {
      return false;
    }
    used[i] = true;
    out = fds[i];
    return true;
  };
  // Lines as protocol.hpp says: the header first, "end" last (and nothing after it), one
  // generation, at most one table, elders oldest first and older than us, the old process's
  // own last.
  std::vector<std::string> lines = split(text, '\n');
  bool ok = lines.size() >= 4 && lines[0] == "takeover " + std::to_string(protocol::kVersion) &&
            lines[lines.size() - 2] == "end" && lines.back().empty();
  bool have_generation = false, have_table = false;
  std::vector<int> bound;  // our own sockets (SO_REUSEPORT), closed if the answer is void
  std::string why_not;
  for (std::size_t i = 1; ok && i + 2 < lines.size(); ++i) {
    std::vector<std::string> w = split(lines[i], ' ');
    if (i == 1 && by_reuseport) {
      ok = w.size() == 3 && w[0] == "mode" && w[1] == "reuseport" &&
           (w[2] == "steering" || w[2] == "migrate");
      if (ok) got.reuseport = w[2];
    } else if (w[0] == "bind" && w.size() == 5 && by_reuseport && (w[1] == "0" || w[1] == "1") &&
               (w[4] == "0" || w[4] == "1")) {
      unique_fd fd = reuseport::bind(decode_word(w[3]), w[4] == "1", why_not);
      ok = static_cast<bool>(fd);
      if (!ok) break;
      inherited_fd f;
      f.fd = fd.release();
      bound.push_back(f.fd);
      f.owns_path = w[1] == "1";
      f.name = decode_word(w[2]);
      got.fds.push_back(f);
    } else if (w[0] == "generation" && w.size() == 2 && !have_generation) {
      ok = parse_number(w[1].c_str(), got.generation) && got.generation > 0;
      have_generation = true;
    } else if (w[0] == "fd" && w.size() == 4 && (w[2] == "0" || w[2] == "1")) {
      inherited_fd f;
      ok = take(w[1], f.fd);
      f.owns_path = w[2] == "1";
      f.name = decode_word(w[3]);
      got.fds.push_back(f);
    } else if (w[0] == "table" && w.size() == 2 && !have_table) {
      ok = take(w[1], got.table_fd);
      have_table = true;
    } else if (w[0] == "elder" && w.size() == 4) {
      inherited_elder e;
      std::uint64_t pid = 0;
      ok = take(w[1], e.pidfd) && parse_number(w[2].c_str(), e.generation) &&
           parse_number(w[3].c_str(), pid) && pid > 0 &&
           pid <= static_cast<std::uint64_t>(std::numeric_limits<pid_t>::max()) &&
           (got.elders.empty() || got.elders.back().generation < e.generation);
      e.pid = static_cast<pid_t>(pid);
      got.elders.push_back(e);
    } else {
      ok = false;
    }
  }
  ok = ok && have_generation && !got.elders.empty() &&
       got.elders.back().generation + 1 == got.generation &&
       (!by_reuseport || !got.reuseport.empty());
  if (!ok || std::find(used.begin(), used.end(), false) != used.end()) {
    close_fds();
    for (int fd : bound)
      ::close(fd);
    return fail(why_not.empty() ? "a malformed answer" : why_not);
  }
  tv = {0, 0};
  ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  got.from_parent = true;
  got.takeover = true;
  got.ready_fd = conn.release();
  got.notify_socket = env.notify_socket;  // ours (our own unit), not the old process's
  got.watchdog_usec = env.watchdog_usec;
  got.notes = std::move(env.notes);
  // The process we take over from is the last elder (SO_PEERCRED names whoever created the
  // socket: the lineage's first process). Its pidfd tells us if it goes away.
  const inherited_elder& old = got.elders.back();
  s.parent = old.pid;
  s.parent_pidfd = ::fcntl(old.pidfd, F_DUPFD_CLOEXEC, 3);
  got.notes.push_back("took over from pid " + std::to_string(old.pid) + " through " + path +
                      (by_reuseport ? " (SO_REUSEPORT, " + got.reuseport + ")" : ""));
  env = std::move(got);
}

process_start take_snapshot() {
  process_start s;
  s.parent = ::getppid();
  s.env = parse_startup_env([](const char* name) { return ::getenv(name); }, ::getpid());
  if (const char* path = ::getenv(protocol::kTakeover); path && *path && !s.env.from_parent) {
    const char* mode = ::getenv(protocol::kTakeoverMode);
    std::string_view m = mode ? mode : "";
    if (!m.empty() && m != "fds" && m != "reuseport" && m != "reuseport-steering" &&
        m != "reuseport-migrate") {
      s.env.takeover_failed = true;
      s.env.notes.push_back(std::string(protocol::kTakeoverMode) + "=" + std::string(m) +
                            " is not fds, reuseport, reuseport-steering or reuseport-migrate; "
                            "no takeover, starting on our own");
    } else if (s.env.fds.empty()) {
      take_over(path, m.empty() ? "fds" : m, s);
    } else {
      s.env.notes.push_back(std::string("ENDLESS_TAKEOVER ignored: systemd passed listeners"));
    }
  }
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
