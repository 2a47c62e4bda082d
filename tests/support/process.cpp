#include "process.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

extern char** environ;

namespace endless::test {

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

temp_dir::temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "endless-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

namespace {

int left_ms(std::chrono::steady_clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                  std::chrono::steady_clock::now())
                .count();
  return static_cast<int>(std::max<long long>(ms, 0));
}

// Connects and sends the request; returns the error or "".
std::string send_request(int fd, const sockaddr* sa, socklen_t len, const std::string& target,
                         int timeout_ms, bool keep_alive) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  if (::connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
    return std::string("connect: ") + std::strerror(errno);
  }
  pollfd p{fd, POLLOUT, 0};
  if (::poll(&p, 1, left_ms(deadline)) != 1) return "connect: timeout";
  int err = 0;
  socklen_t elen = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
  if (err) return std::string("connect: ") + std::strerror(err);
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: test\r\n" +
                    (keep_alive ? "" : "Connection: close\r\n") + "\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    return std::string("send: ") + std::strerror(errno);
  }
  return "";
}

http_result exchange(int fd, const sockaddr* sa, socklen_t len, const std::string& target,
                     int timeout_ms) {
  http_result r;
  r.error = send_request(fd, sa, len, target, timeout_ms, false);
  if (!r.error.empty()) return r;
  return read_response(fd, timeout_ms);
}

}  // namespace

http_result read_response(int fd, int timeout_ms) {
  http_result r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string data;
  size_t head_end = std::string::npos;
  size_t length = 0;
  // Reads until the head and Content-Length bytes of body are in (keep-alive), or EOF.
  for (;;) {
    if (head_end == std::string::npos) {
      head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        size_t cl = data.find("Content-Length: ");
        length = cl < head_end ? std::stoul(data.substr(cl + 16)) : 0;
      }
    }
    if (head_end != std::string::npos && data.size() >= head_end + 4 + length) break;
    pollfd q{fd, POLLIN, 0};
    int rc = ::poll(&q, 1, left_ms(deadline));
    if (rc == 0) {
      r.error = "timeout";
      return r;
    }
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      r.error = errno == ECONNRESET ? "reset" : std::string("recv: ") + std::strerror(errno);
      return r;
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  if (head_end == std::string::npos || data.compare(0, 9, "HTTP/1.1 ") != 0) {
    r.error = data.empty() ? "eof" : "malformed response";
    return r;
  }
  r.status = std::atoi(data.c_str() + 9);
  std::string head = data.substr(0, head_end);
  r.body = data.substr(head_end + 4);
  if (r.body.size() != length) {
    r.error = "short body";
    return r;
  }
  if (size_t xp = head.find("X-Pid: "); xp != std::string::npos) {
    r.x_pid = std::atoi(head.c_str() + xp + 7);
  }
  if (size_t c = head.find("Connection: "); c != std::string::npos) {
    r.connection = head.substr(c + 12, head.find("\r\n", c) - c - 12);
  }
  r.ok = true;
  return r;
}

namespace {
sockaddr_in loopback(int port) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(static_cast<uint16_t>(port));
  return in;
}
}  // namespace

http_result http_get(int port, const std::string& target, int timeout_ms) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in in = loopback(port);
  auto r = exchange(fd, reinterpret_cast<sockaddr*>(&in), sizeof in, target, timeout_ms);
  ::close(fd);
  return r;
}

in_flight::in_flight(int port, const std::string& target, bool keep_alive) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in in = loopback(port);
  error_ = send_request(fd_, reinterpret_cast<sockaddr*>(&in), sizeof in, target, 5000, keep_alive);
  // Accept queues are FIFO and the server accepts in order: once a later connection is
  // answered, this one has been accepted too.
  if (error_.empty() && !http_get(port, "/pid").ok) error_ = "server did not answer";
}

in_flight::~in_flight() {
  ::close(fd_);
}

http_result in_flight::finish(int timeout_ms) {
  if (!error_.empty()) {
    http_result r;
    r.error = error_;
    return r;
  }
  return read_response(fd_, timeout_ms);
}

http_result http_get_unix(const std::string& path, const std::string& target, int timeout_ms) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::snprintf(un.sun_path, sizeof un.sun_path, "%s", path.c_str());
  auto r = exchange(fd, reinterpret_cast<sockaddr*>(&un), sizeof un, target, timeout_ms);
  ::close(fd);
  return r;
}

processes::processes() {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}

processes::~processes() {
  // Signals go through pidfds taken while each process was known to be ours, so a pid
  // reaped elsewhere and reused by a stranger is never hit.
  for (const auto& [pid, pidfd] : tracked_) {
    if (!gone(pid)) ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  }
  for (const auto& [pid, pidfd] : tracked_) {
    wait_gone(pid, 5s);
    ::close(pidfd);
  }
  // Processes ours started that the test never learned of (a new process of an upgrade
  // that failed half-way) were reparented to us, the subreaper: they are our children now.
  for (int round = 0; round < 3; ++round) {
    bool any = false;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      std::string name = entry.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string stat = read_file("/proc/" + name + "/stat");
      size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      if (std::atoi(stat.c_str() + paren + 4) != ::getpid()) continue;  // field 4: ppid
      pid_t child = std::atoi(name.c_str());
      ::kill(child, SIGKILL);
      int status = 0;
      ::waitpid(child, &status, 0);
      any = true;
    }
    if (!any) break;
  }
}

void processes::track(pid_t pid) {
  if (pid <= 0 || tracked_.count(pid)) return;
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) tracked_[pid] = pidfd;
}

pid_t processes::start(const spec& s) {
  // Prepare everything before fork.
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    env[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
  }
  for (const auto& [k, v] : s.env)
    env[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) {
    if (k != "LISTEN_PID" || !s.listen_pid_self) env_strings.push_back(k + "=" + v);
  }
  std::vector<char*> envp;
  for (auto& e : env_strings)
    envp.push_back(e.data());
  char listen_pid[64] = "";
  if (s.listen_pid_self) envp.push_back(listen_pid);
  envp.push_back(nullptr);
  std::vector<std::string> args = s.argv;
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  int log = ::open(s.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) throw std::runtime_error("can't open log " + s.log);
  std::vector<int> staged;
  for (int fd : s.pass_fds)
    staged.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 100));

  pid_t pid = ::fork();
  if (pid == 0) {
    // Its own process group, with its parent (us) in another group of the same session: a
    // group is then not orphaned, so job-control signals such as SIGTSTP take effect (POSIX
    // discards them in an orphaned group, which is what ctest's group is under CI).
    ::setpgid(0, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    for (size_t i = 0; i < staged.size(); ++i)
      ::dup2(staged[i], 3 + static_cast<int>(i));
    if (s.listen_pid_self)
      std::snprintf(listen_pid, sizeof listen_pid, "LISTEN_PID=%d", ::getpid());
    if (!s.cwd.empty() && ::chdir(s.cwd.c_str()) != 0) ::_exit(126);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(log);
  for (int fd : staged)
    ::close(fd);
  if (pid < 0) throw std::runtime_error("fork failed");
  track(pid);
  return pid;
}

bool processes::gone(pid_t pid, int* status) {
  if (auto it = reaped_.find(pid); it != reaped_.end()) {
    if (status) *status = it->second;
    return true;
  }
  int st = 0;
  pid_t r = ::waitpid(pid, &st, WNOHANG);
  if (r == pid) {
    reaped_[pid] = st;
    if (status) *status = st;
    return true;
  }
  // Not our child (or reaped by its parent): its pidfd turns readable when it exits.
  auto it = tracked_.find(pid);
  if (it == tracked_.end()) {
    std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    return stat.empty();
  }
  pollfd p{it->second, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

bool processes::wait_gone(pid_t pid, std::chrono::milliseconds timeout, int* status) {
  return wait_until([&] { return gone(pid, status); }, timeout);
}

pid_t read_pid(const std::string& pidfile) {
  std::string s = read_file(pidfile);
  if (s.empty() || s.back() != '\n') return -1;
  return std::atoi(s.c_str());
}

std::vector<std::string> lines_with(const std::string& log, const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(read_file(log));
  for (std::string line; std::getline(in, line);) {
    if (line.find(text) != std::string::npos) out.push_back(line);
  }
  return out;
}

pid_t logged_process(const std::string& log, const std::string& text) {
  auto lines = lines_with(log, text);
  if (lines.empty()) return -1;
  std::size_t at = lines[0].find("process ");
  return at == std::string::npos ? -1 : std::atoi(lines[0].c_str() + at + 8);
}

std::string describe_process(pid_t pid) {
  namespace fs = std::filesystem;
  const fs::path proc = "/proc/" + std::to_string(pid);
  std::string status = read_file(proc / "status");
  if (status.empty()) return "\nprocess " + std::to_string(pid) + " is gone\n";
  auto fields = [](const std::string& text, std::initializer_list<const char*> keys) {
    std::string out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      for (const char* k : keys) {
        if (line.rfind(k, 0) == 0) out += "  " + line;
      }
    }
    return out;
  };
  std::string out = "\nprocess " + std::to_string(pid) + ":" +
                    fields(status, {"State:", "ShdPnd:", "SigIgn:", "SigCgt:"}) + "\n";
  std::error_code ec;
  for (const auto& task : fs::directory_iterator(proc / "task", ec)) {
    std::string comm = read_file(task.path() / "comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    out += " thread " + task.path().filename().string() + " (" + comm + ")" +
           fields(read_file(task.path() / "status"), {"State:", "SigPnd:", "SigBlk:"}) +
           "  wchan: " + read_file(task.path() / "wchan") + "\n" + read_file(task.path() / "stack");
  }
  return out;
}

int count_lines(const std::string& log, const std::string& text) {
  return static_cast<int>(lines_with(log, text).size());
}

std::vector<int> logged_ports(const std::string& log, pid_t pid) {
  std::vector<int> ports;
  std::string key = " " + std::to_string(pid) + " ";
  for (const auto& line : lines_with(log, key)) {
    std::string rest = line.substr(line.find(key) + key.size());
    if (rest.rfind("tcp:", 0) == 0) rest = rest.substr(4);
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos || colon + 1 >= rest.size() ||
        rest.find(' ') != std::string::npos) {
      continue;
    }
    if (rest.find_first_not_of("0123456789", colon + 1) != std::string::npos) continue;
    ports.push_back(std::atoi(rest.c_str() + colon + 1));
  }
  return ports;
}

int logged_port(const std::string& log, pid_t pid) {
  auto ports = logged_ports(log, pid);
  return ports.empty() ? 0 : ports.front();
}

int connect_loopback(int port, int rcvbuf) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in in = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&in), sizeof in) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

raw_result raw_exchange(int port, std::string_view bytes, int timeout_ms) {
  raw_result r;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in in = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&in), sizeof in) != 0) {
    ::close(fd);
    return r;
  }
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left_ms(deadline)) <= 0) break;
    char buf[65536];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      r.closed = true;
      break;
    }
    r.data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return r;
}

std::string run_command(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
    out.append(buf, n);
  ::pclose(p);
  return out;
}

}  // namespace endless::test
