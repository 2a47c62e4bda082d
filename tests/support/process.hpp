// Test support: start real processes, talk HTTP to them over real sockets, wait for things
// with a bound. Every wait is bounded in time; every process a test starts (and every
// process those start, via the subreaper) is killed and reaped by the test's cleanup.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace endless::test {

using namespace std::chrono_literals;

// Polls `pred` every 10 ms until it holds or `timeout` passes.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// Blocks `set` in the calling thread for the guard's lifetime (threads it starts meanwhile
// inherit the block).
class signals_blocked {
 public:
  explicit signals_blocked(const sigset_t& set) { ::pthread_sigmask(SIG_BLOCK, &set, &old_); }
  ~signals_blocked() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  signals_blocked(const signals_blocked&) = delete;
  signals_blocked& operator=(const signals_blocked&) = delete;

 private:
  sigset_t old_;
};

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& text);

struct temp_dir {
  temp_dir();
  ~temp_dir();
  std::string path;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

struct http_result {
  bool ok = false;    // a complete response was read
  std::string error;  // why not: "connect: Connection refused", "reset", "timeout", "eof"
  int status = 0;
  std::string body;
  pid_t x_pid = 0;
  std::string connection;  // the Connection header
};

// One request on a new connection ("Connection: close"), then EOF.
http_result http_get(int port, const std::string& target, int timeout_ms = 5000);
http_result http_get_unix(const std::string& path, const std::string& target,
                          int timeout_ms = 5000);
http_result read_response(int fd, int timeout_ms);

// A request sent now and known to be accepted by the server that answers now (a second
// request on a new connection was answered after it); its response is read by finish().
class in_flight {
 public:
  in_flight(int port, const std::string& target, bool keep_alive = false);
  ~in_flight();
  in_flight(const in_flight&) = delete;
  in_flight& operator=(const in_flight&) = delete;
  http_result finish(int timeout_ms = 15000);

 private:
  int fd_ = -1;
  std::string error_;
};

// Starts processes and cleans up after them. Makes the test process a subreaper, so the
// new processes of an upgrade become its children when their parent exits.
class processes {
 public:
  processes();
  ~processes();  // SIGKILLs and reaps everything still alive that it knows of

  struct spec {
    std::vector<std::string> argv;
    std::map<std::string, std::string> env;  // added to (or replacing in) ours
    std::string cwd;
    std::string log;               // stdout+stderr appended here; required
    bool listen_pid_self = false;  // set LISTEN_PID to the child's own pid
    std::vector<int> pass_fds;     // dup2'ed to 3, 4, ... in the child
  };
  pid_t start(const spec& s);

  // Remember a process to kill at the end (e.g. one read from a pid file); call while it
  // is known to be alive and ours.
  void track(pid_t pid);
  // Has `pid` exited? Reaps it if it is our child; `status` gets its wait status.
  bool gone(pid_t pid, int* status = nullptr);
  bool wait_gone(pid_t pid, std::chrono::milliseconds timeout, int* status = nullptr);

 private:
  std::map<pid_t, int> tracked_;  // pid -> pidfd
  std::map<pid_t, int> reaped_;
};

// The pid in a pid file, or -1.
pid_t read_pid(const std::string& pidfile);
// The TCP port a server logged for `pid` ("<pid> tcp:127.0.0.1:PORT" or "<pid> 127.0.0.1:PORT");
// logged_ports: all of them, in order.
int logged_port(const std::string& log, pid_t pid);
std::vector<int> logged_ports(const std::string& log, pid_t pid);

// A blocking TCP connection to 127.0.0.1:port (-1 if refused); `rcvbuf` > 0 sets SO_RCVBUF
// first, to make a server's output back up early.
int connect_loopback(int port, int rcvbuf = 0);

// Connects, sends `bytes`, and reads until the server closes or `timeout_ms` passes.
struct raw_result {
  std::string data;
  bool closed = false;  // the server closed (EOF or reset) within the time
};
raw_result raw_exchange(int port, std::string_view bytes, int timeout_ms = 5000);

// What a process is doing, for a failure message: whether it is alive, and for each thread
// its name, state, kernel wait channel and stack, and its pending and blocked signals.
std::string describe_process(pid_t pid);

// Runs a shell command; returns its stdout (stderr goes to the test's stderr).
std::string run_command(const std::string& cmd);
// How many lines of `log` contain `text`.
int count_lines(const std::string& log, const std::string& text);
std::vector<std::string> lines_with(const std::string& log, const std::string& text);
// The pid named after "process " in the first line of `log` holding `text` (such as "is
// ready; handing over" or "started new process "), or -1.
pid_t logged_process(const std::string& log, const std::string& text);

}  // namespace endless::test
