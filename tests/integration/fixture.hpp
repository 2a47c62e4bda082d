// A core_helper under test: started with a pid file and a log in a fresh directory, on a
// kernel-chosen port, waited for until ready. Upgrades are waited for the same way.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"

// The heaviest load tests (hundreds of clients, many restarts) run in the plain build only:
// under a sanitizer on two cores they measure the machine's load more than our code, and
// the lighter tests exercise the same paths there. .ci/run's budget is 20 minutes.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ENDLESS_PLAIN_BUILD_ONLY() GTEST_SKIP() << "heavy load test: plain build only"
#else
#define ENDLESS_PLAIN_BUILD_ONLY() (void)0
#endif

namespace endless::test {

// GET / on a fresh connection, back to back, from a thread of its own until stop() (or 60 s,
// or 200,000 requests); every answer should be a 200 with `body`. The destructor stops it, so
// an assertion that returns early never leaves the thread running on the test's frame.
class tight_client {
 public:
  tight_client(int port, std::string body)
      : thread_([this, port, want = std::move(body)] { run(port, want); }) {}
  ~tight_client() { stop(); }
  tight_client(const tight_client&) = delete;
  tight_client& operator=(const tight_client&) = delete;

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int requests() const { return requests_; }
  // After stop():
  const std::vector<std::string>& failures() const { return failures_; }
  const std::set<pid_t>& served_by() const { return served_by_; }

 private:
  void run(int port, const std::string& body) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!stop_ && std::chrono::steady_clock::now() < deadline && requests_ < 200000) {
      auto r = http_get(port, "/");
      ++requests_;
      if (!r.ok || r.status != 200 || r.body != body) {
        failures_.push_back(r.error.empty() ? "status " + std::to_string(r.status) : r.error);
      } else {
        served_by_.insert(r.x_pid);
      }
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::vector<std::string> failures_;
  std::set<pid_t> served_by_;
  std::thread thread_;  // last: it starts once the members above exist
};

class core_fixture : public ::testing::Test {
 protected:
  temp_dir dir;
  processes procs;
  std::string log = dir / "log";
  std::string pidfile = dir / "pid";
  int port = 0;

  // Starts `exe` with --pidfile and `args`; waits until it is ready (the pid file names it).
  pid_t start(std::vector<std::string> args, std::map<std::string, std::string> env = {},
              const std::string& exe = HELPER_PATH) {
    processes::spec s;
    s.argv = {exe, "--pidfile", pidfile};
    s.argv.insert(s.argv.end(), args.begin(), args.end());
    s.env = std::move(env);
    s.log = log;
    return started(procs.start(s));
  }

  pid_t started(pid_t pid) {
    EXPECT_TRUE(wait_until([&] { return read_pid(pidfile) == pid; }, 10s)) << "not ready:\n"
                                                                           << read_file(log);
    port = logged_port(log, pid);
    return pid;
  }

  // SIGHUP to `old`; waits until a new process is ready and answering. Returns its pid.
  pid_t upgrade(pid_t old) {
    ::kill(old, SIGHUP);
    pid_t next = -1;
    bool ok = wait_until(
        [&] {
          next = read_pid(pidfile);
          return next > 0 && next != old;
        },
        15s);
    EXPECT_TRUE(ok) << "no new process after SIGHUP:\n" << read_file(log) << describe_process(old);
    if (!ok) return -1;
    procs.track(next);
    EXPECT_TRUE(wait_until([&] { return http_get(port, "/pid").x_pid == next; }, 10s))
        << read_file(log);
    return next;
  }

  // The processes under test log to `log`; a sanitizer report there fails the test even if
  // the process carried on.
  void TearDown() override {
    for (const char* report : {"ERROR: AddressSanitizer", "runtime error:",
                               "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer"}) {
      EXPECT_EQ(count_lines(log, report), 0) << read_file(log);
    }
  }

#ifdef LOADGEN_PATH
  // tools/loadgen on 127.0.0.1:`port` (`mode`: close or keepalive): clients that never retry,
  // for `seconds`, its report to `out`.
  pid_t start_load(int on_port, const std::string& mode, int connections, int seconds,
                   const std::string& out) {
    processes::spec s;
    s.argv = {LOADGEN_PATH,
              "--url",
              "http://127.0.0.1:" + std::to_string(on_port) + "/",
              "--connections",
              std::to_string(connections),
              "--duration",
              std::to_string(seconds),
              "--mode",
              mode,
              "--timeout-ms",
              "15000"};
    s.log = out;
    return procs.start(s);
  }

  // Ends a load early, as its duration would: loadgen stops sending on SIGINT, waits for
  // what is in flight and reports (exit status 0 when nothing failed).
  void stop_load(pid_t load) {
    ::kill(load, SIGINT);
  }

  // Waits for a start_load() to end and checks that it exited 0 with no failed request.
  void expect_no_failures(pid_t load, const std::string& out) {
    int status = -1;
    ASSERT_TRUE(procs.wait_gone(load, 90s, &status)) << read_file(out);
    std::string r = read_file(out);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out << ":\n" << r;
    EXPECT_NE(r.find("failed 0 "), std::string::npos) << out << ":\n" << r;
  }
#endif

  // `n` upgrades while `client` runs, each once it has made 300 more requests, and 300 more
  // after the last; then stops it and expects no failure and answers from n + 1 processes.
  void upgrades_under(tight_client& client, pid_t pid, int n) {
    for (int i = 0; i <= n; ++i) {
      int before = client.requests();
      ASSERT_TRUE(wait_until([&] { return client.requests() > before + 300; }, 10s))
          << "the client stalled\n"
          << read_file(log);
      if (i == n) break;
      pid = upgrade(pid);
      ASSERT_GT(pid, 0);
    }
    client.stop();
    EXPECT_TRUE(client.failures().empty())
        << client.failures().size() << " failed of " << client.requests()
        << ", first: " << client.failures().front();
    EXPECT_EQ(client.served_by().size(), static_cast<std::size_t>(n + 1))
        << "requests were not served by every process";
  }

  std::string get_body(const std::string& target) {
    auto r = http_get(port, target);
    EXPECT_TRUE(r.ok) << r.error;
    return r.body;
  }
};

}  // namespace endless::test
