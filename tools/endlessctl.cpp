// endlessctl: deploy, inspect and stop an endless server through its control socket
// (docs/core.md, "The control socket").
//
//   endlessctl upgrade (--pidfile FILE | --socket PATH) [--timeout S]
//   endlessctl status  (--pidfile FILE | --socket PATH)
//   endlessctl stop    (--pidfile FILE | --socket PATH) [--hammer] [--timeout S]
//
// upgrade waits for the real outcome: it prints the new pid on stdout and exits 0 once the
// new process serves for good (ready, and through its probation), or exits 1 saying why the
// upgrade failed (exited with status N, killed by signal N, not ready within T, exec failed,
// rolled back). Progress goes to stderr. With --pidfile it returns once the pid file names
// the new process (the new process writes it right after the old one's verdict).
// Exit status: 0 done; 1 the upgrade failed; 2 usage; 3 refused now (an upgrade is running,
// the server is starting or shutting down); 4 the server can't be reached; 5 timed out
// waiting (the operation goes on in the server).
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "endless/core/upgrader.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

enum exit_code { kOk = 0, kFailed = 1, kUsage = 2, kRefused = 3, kUnreachable = 4, kTimedOut = 5 };

[[noreturn]] void usage(const char* why) {
  if (why) std::fprintf(stderr, "endlessctl: %s\n", why);
  std::fputs(
      "usage: endlessctl upgrade (--pidfile FILE | --socket PATH) [--timeout SECONDS]\n"
      "       endlessctl status  (--pidfile FILE | --socket PATH)\n"
      "       endlessctl stop    (--pidfile FILE | --socket PATH) [--hammer] [--timeout "
      "SECONDS]\n"
      "The control socket is <pid file>.ctl unless the server set another.\n"
      "Exit status: 0 done, 1 upgrade failed, 2 usage, 3 refused now, 4 server unreachable,\n"
      "5 timed out waiting.\n",
      stderr);
  std::exit(kUsage);
}

// One connection to the control socket: a command, then the answer's lines.
class control_connection {
 public:
  control_connection(const std::string& path, clock_type::time_point deadline)
      : path_(path), deadline_(deadline) {}
  ~control_connection() {
    if (fd_ >= 0) ::close(fd_);
  }

  // 0, or the exit status with the reason printed.
  int connect_and_send(const std::string& command) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (path_.size() >= sizeof un.sun_path) {
      std::fprintf(stderr, "endlessctl: control socket path too long: %s\n", path_.c_str());
      return kUsage;
    }
    std::memcpy(un.sun_path, path_.data(), path_.size());
    // Non-blocking: a full backlog (a server whose control thread is stuck) must not hold
    // us past the deadline.
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd_ < 0 ? -1 : ::connect(fd_, reinterpret_cast<sockaddr*>(&un), sizeof un);
    if (rc != 0 && fd_ >= 0 && errno == EAGAIN) {
      // Unix sockets: EAGAIN while the backlog is full; retry until the deadline.
      while (rc != 0 && errno == EAGAIN && clock_type::now() < deadline_) {
        ::usleep(10'000);
        rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&un), sizeof un);
      }
      if (rc != 0 && errno == EAGAIN) {
        std::fprintf(stderr, "endlessctl: %s accepts no connection (server stuck?)\n",
                     path_.c_str());
        return kTimedOut;
      }
    }
    if (rc != 0) {
      int e = errno;
      const char* hint = e == ENOENT         ? " (no server, or one without a control socket)"
                         : e == ECONNREFUSED ? " (nobody serves it: the server is not running)"
                         : e == EACCES       ? " (only the server's user or root may use it)"
                                             : "";
      std::fprintf(stderr, "endlessctl: can't connect to %s: %s%s\n", path_.c_str(),
                   std::strerror(e), hint);
      return kUnreachable;
    }
    // The other end must be the server's: its user (the same as ours) or root. A socket at
    // that path made by anyone else could fake a verdict.
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != ::geteuid() && cred.uid != 0)) {
      std::fprintf(stderr,
                   "endlessctl: %s is served by uid %u, not by us (uid %u) or root; refusing to "
                   "talk to it\n",
                   path_.c_str(), static_cast<unsigned>(cred.uid),
                   static_cast<unsigned>(::geteuid()));
      return kUnreachable;
    }
    std::string line = command + "\n";
    if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
      std::fprintf(stderr, "endlessctl: can't send to %s: %s\n", path_.c_str(),
                   std::strerror(errno));
      return kUnreachable;
    }
    return kOk;
  }

  // The next line of the answer; nullopt at EOF (*timed_out false) or at the deadline (true).
  std::optional<std::string> next_line(bool* timed_out) {
    *timed_out = false;
    for (;;) {
      auto eol = buf_.find('\n');
      if (eol != std::string::npos) {
        std::string line = buf_.substr(0, eol);
        buf_.erase(0, eol + 1);
        return line;
      }
      if (eof_) return std::nullopt;
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock_type::now());
      if (left.count() <= 0) {
        *timed_out = true;
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 60'000)));
      if (rc < 0 && errno != EINTR) {
        eof_ = true;
        continue;
      }
      if (rc <= 0) continue;
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        eof_ = true;  // a partial last line is dropped: the server always ends lines
        continue;
      }
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }

 private:
  std::string path_;
  clock_type::time_point deadline_;
  int fd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  for (std::string w; in >> w;)
    out.push_back(w);
  return out;
}

// The text after the first `n` words.
std::string rest_after(const std::string& line, int n) {
  std::size_t at = 0;
  for (int i = 0; i < n && at != std::string::npos; ++i) {
    at = line.find(' ', at);
    if (at != std::string::npos) ++at;
  }
  return at == std::string::npos ? std::string() : line.substr(at);
}

int error_exit(const std::string& line) {
  // "error <reason> <text>"
  auto w = words(line);
  std::string reason = w.size() > 1 ? w[1] : "unknown";
  std::fprintf(stderr, "endlessctl: %s\n", rest_after(line, 2).c_str());
  if (reason == "busy" || reason == "starting" || reason == "draining") return kRefused;
  if (reason == "denied") return kUnreachable;
  if (reason == "bad_command") return kUsage;
  return kFailed;
}

int lost(const std::string& what, bool timed_out, const std::string& path) {
  if (timed_out) {
    std::fprintf(stderr, "endlessctl: no verdict in time; %s goes on in the server\n",
                 what.c_str());
    return kTimedOut;
  }
  std::fprintf(stderr, "endlessctl: %s lost the connection to %s before a verdict\n", what.c_str(),
               path.c_str());
  return kFailed;
}

// The pid in `pidfile`, or -1.
pid_t read_pid(const std::string& pidfile) {
  FILE* f = std::fopen(pidfile.c_str(), "r");
  if (!f) return -1;
  char buf[32] = {};
  std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  return n ? static_cast<pid_t>(std::atol(buf)) : -1;
}

// The new process writes the pid file just after the old one answered "ok": a deploy script
// reading it after us must find the new pid.
void wait_for_pid_file(const std::string& pidfile, pid_t pid, clock_type::time_point deadline) {
  auto until = std::min(deadline, clock_type::now() + std::chrono::seconds(5));
  while (read_pid(pidfile) != pid) {
    if (clock_type::now() >= until) {
      std::fprintf(stderr, "endlessctl: warning: %s does not name pid %d yet\n", pidfile.c_str(),
                   static_cast<int>(pid));
      return;
    }
    ::usleep(2000);
  }
}

// "error draining" or "error starting": the process that answered is handing over to (or
// taking over from) another generation; that one answers in a moment.
bool ask_again(const std::string& line, clock_type::time_point until) {
  auto w = words(line);
  if (w.size() < 2 || w[0] != "error" || (w[1] != "draining" && w[1] != "starting")) return false;
  if (clock_type::now() >= until) return false;
  ::usleep(100'000);
  return true;
}

constexpr auto kAskAgainFor = std::chrono::seconds(10);

int do_upgrade(const std::string& path, const std::string& pidfile,
               clock_type::time_point deadline) {
  auto ask_until = std::min(deadline, clock_type::now() + kAskAgainFor);
again:
  control_connection c(path, deadline);
  if (int rc = c.connect_and_send("upgrade")) return rc;
  bool timed_out = false;
  while (auto line = c.next_line(&timed_out)) {
    auto w = words(*line);
    if (w.empty()) continue;
    if (w[0] == "started" && w.size() > 1) {
      std::fprintf(stderr, "endlessctl: new process %s started, waiting for it to be ready\n",
                   w[1].c_str());
    } else if (w[0] == "queued") {
      std::fprintf(stderr, "endlessctl: upgrade queued: %s\n", rest_after(*line, 1).c_str());
    } else if (w[0] == "ready" && w.size() > 2) {
      std::fprintf(stderr, "endlessctl: new process %s (generation %s) is ready\n", w[1].c_str(),
                   w[2].c_str());
    } else if (w[0] == "probation" && w.size() > 1) {
      std::fprintf(stderr, "endlessctl: on probation for %s ms (a crash now rolls back)\n",
                   w[1].c_str());
    } else if (w[0] == "ok" && w.size() > 2) {
      if (!pidfile.empty()) wait_for_pid_file(pidfile, std::atoi(w[1].c_str()), deadline);
      std::fprintf(stderr, "endlessctl: upgraded: pid %s (generation %s) serves\n", w[1].c_str(),
                   w[2].c_str());
      std::printf("%s\n", w[1].c_str());
      return kOk;
    } else if (w[0] == "error") {
      if (ask_again(*line, ask_until)) goto again;
      std::fprintf(stderr, "endlessctl: upgrade failed (%s)\n", w.size() > 1 ? w[1].c_str() : "?");
      return error_exit(*line);
    }
  }
  return lost("the upgrade", timed_out, path);
}

int do_status(const std::string& path, clock_type::time_point deadline,
              std::vector<pid_t>* pids = nullptr) {
  control_connection c(path, deadline);
  if (int rc = c.connect_and_send("status")) return rc;
  bool timed_out = false;
  std::string out;
  while (auto line = c.next_line(&timed_out)) {
    auto w = words(*line);
    if (!w.empty() && w[0] == "ok") {
      if (!pids) std::fputs(out.c_str(), stdout);
      return kOk;
    }
    if (!w.empty() && w[0] == "error") return error_exit(*line);
    if (pids && w.size() > 2 && w[0] == "process") pids->push_back(std::atoi(w[2].c_str()));
    out += *line + "\n";
  }
  return lost("status", timed_out, path);
}

bool wait_gone(pid_t pid, clock_type::time_point deadline) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  bool gone = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 60'000)));
    if (rc > 0) {
      gone = true;
      break;
    }
    if (rc < 0 && errno != EINTR) break;
  }
  ::close(fd);
  return gone;
}

int do_stop(const std::string& path, bool hammer, clock_type::time_point deadline) {
  auto ask_until = std::min(deadline, clock_type::now() + kAskAgainFor);
again:
  std::vector<pid_t> lineage;  // every generation alive, the serving one included
  if (int rc = do_status(path, deadline, &lineage)) return rc;
  control_connection c(path, deadline);
  if (int rc = c.connect_and_send(hammer ? "stop hammer" : "stop")) return rc;
  bool timed_out = false;
  auto first = c.next_line(&timed_out);
  if (!first) return lost("the stop", timed_out, path);
  auto w = words(*first);
  if (w.empty() || w[0] != "stopping") {
    if (ask_again(*first, ask_until)) goto again;
    return error_exit(*first);
  }
  if (w.size() > 1) lineage.push_back(std::atoi(w[1].c_str()));
  std::fprintf(stderr, "endlessctl: pid %s is shutting down%s\n", w.size() > 1 ? w[1].c_str() : "?",
               hammer ? " (hammer)" : "");
  // The server keeps the connection until it exits.
  while (c.next_line(&timed_out)) {
  }
  if (timed_out) return lost("the stop", true, path);
  for (pid_t p : lineage) {
    if (!wait_gone(p, deadline)) {
      std::fprintf(stderr, "endlessctl: pid %d still runs; the stop goes on in the server\n",
                   static_cast<int>(p));
      return kTimedOut;
    }
  }
  std::fprintf(stderr, "endlessctl: stopped\n");
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage(nullptr);
  std::string command = argv[1];
  if (command == "-h" || command == "--help") usage(nullptr);
  std::string pidfile, socket_path;
  bool hammer = false;
  double timeout_s = 600;
  for (int i = 2; i < argc; ++i) {
    std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((f + " needs a value").c_str());
      return argv[++i];
    };
    if (f == "--pidfile") {
      pidfile = value();
    } else if (f == "--socket") {
      socket_path = value();
    } else if (f == "--hammer" && command == "stop") {
      hammer = true;
    } else if (f == "--timeout" && command != "status") {
      std::string v = value();
      char* end = nullptr;
      timeout_s = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end || !std::isfinite(timeout_s) || timeout_s <= 0 ||
          timeout_s > 86400 * 365) {
        usage("--timeout wants seconds > 0");
      }
    } else {
      usage(("unknown flag " + f + " for " + command).c_str());
    }
  }
  if (pidfile.empty() == socket_path.empty()) usage("give one of --pidfile and --socket");
  if (socket_path.empty()) socket_path = endless::core::control_socket_for(pidfile);
  auto deadline =
      clock_type::now() + std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
  if (command == "upgrade") return do_upgrade(socket_path, pidfile, deadline);
  if (command == "status")
    return do_status(socket_path, clock_type::now() + std::chrono::seconds(10));
  if (command == "stop") return do_stop(socket_path, hammer, deadline);
  usage(("unknown command " + command).c_str());
}
