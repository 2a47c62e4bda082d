// The C++ twins of endless's documented examples, run and checked for the outcome each one
// documents: timeouts and the header limit (router_app), the pid file and BeforeBegin's log
// line (pid_file), hooks around SIGUSR1 in order (signal_hooks), hammer time 1 s cutting five
// slow requests (hammer_time), a background worker finished in shutdown_initiated
// (graceful_worker), two servers from one binary (two_ports), Prometheus metrics and health
// (prometheus). hello and tls are run by http_server_test, tls_test and the operations tests.
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "fixture.hpp"

namespace endless::test {
namespace {

class examples_test : public ::testing::Test {
 protected:
  temp_dir dir;
  processes procs;
  std::string log = dir / "log";
  int port = 0;

  pid_t start_example(const std::string& name, std::vector<std::string> args) {
    processes::spec s;
    s.argv = {std::string(EXAMPLES_DIR) + "/" + name};
    s.argv.insert(s.argv.end(), args.begin(), args.end());
    s.log = log;
    pid_t pid = procs.start(s);
    EXPECT_TRUE(wait_until([&] { return (port = logged_port(log, pid)) > 0; }, 10s))
        << read_file(log);
    return pid;
  }

  // SIGHUP to `old`; the new process's pid once it took over.
  pid_t sighup(pid_t old) {
    ::kill(old, SIGHUP);
    pid_t next = 0;
    EXPECT_TRUE(
        wait_until([&] { return (next = logged_process(log, "is ready; handing over")) > 0; }, 10s))
        << read_file(log);
    if (next > 0) procs.track(next);
    return next;
  }

  void TearDown() override {
    for (const char* report : {"ERROR: AddressSanitizer", "runtime error:",
                               "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer"}) {
      EXPECT_EQ(count_lines(log, report), 0) << read_file(log);
    }
  }
};

TEST_F(examples_test, router_app_has_routes_and_a_header_limit) {
  start_example("router_app", {"127.0.0.1:0"});
  EXPECT_EQ(http_get(port, "/hello").body, "WORLD!\n");
  EXPECT_EQ(http_get(port, "/items/7").body, "{\"id\":\"7\"}\n");
  auto big =
      raw_exchange(port, "GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(5000, 'x') +
                             "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(big.data.rfind("HTTP/1.1 431", 0), 0u) << big.data.substr(0, 80);
  auto small =
      raw_exchange(port, "GET /hello HTTP/1.1\r\nHost: a\r\nX-Small: " + std::string(2000, 'x') +
                             "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(small.data.rfind("HTTP/1.1 200", 0), 0u) << small.data.substr(0, 80);
  // The access log names each request.
  EXPECT_TRUE(
      wait_until([&] { return count_lines(log, "\"GET /items/7 HTTP/1.1\" 200") == 1; }, 5s))
      << read_file(log);
}

TEST_F(examples_test, pid_file_names_the_serving_process_and_before_begin_logs_it) {
  const std::string pidfile = dir / "example.pid";
  pid_t a = start_example("pid_file", {"127.0.0.1:0", pidfile});
  ASSERT_TRUE(wait_until([&] { return read_pid(pidfile) == a; }, 5s));
  EXPECT_EQ(count_lines(log, "Actual pid is " + std::to_string(a)), 1) << read_file(log);
  EXPECT_EQ(http_get(port, "/").body, std::to_string(a) + "\n");
  pid_t b = sighup(a);
  ASSERT_GT(b, 0);
  EXPECT_TRUE(wait_until([&] { return read_pid(pidfile) == b; }, 5s));
  EXPECT_EQ(count_lines(log, "Actual pid is " + std::to_string(b)), 1) << read_file(log);
  EXPECT_TRUE(procs.wait_gone(a, 15s));
  ::kill(b, SIGTERM);
  EXPECT_TRUE(procs.wait_gone(b, 10s));
  EXPECT_EQ(read_pid(pidfile), -1) << "the pid file outlived the service";
}

TEST_F(examples_test, signal_hooks_run_in_order_around_sigusr1) {
  pid_t pid = start_example("signal_hooks", {"127.0.0.1:0"});
  ::kill(pid, SIGUSR1);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "post SIGUSR1") == 1; }, 10s))
      << read_file(log);
  const std::string all = read_file(log);
  auto pre = all.find("pre SIGUSR1"), received = all.find("Received SIGUSR1."),
       post = all.find("post SIGUSR1");
  ASSERT_NE(received, std::string::npos) << all;
  EXPECT_LT(pre, received) << all;
  EXPECT_LT(received, post) << all;
  EXPECT_EQ(http_get(port, "/").body, "WORLD!\n") << "SIGUSR1 only runs the hooks";
}

// Five requests that take 5 s each are running when SIGHUP comes; hammer time is 1 s. The
// new process answers at once; after 1 s the old one closes the five connections (their
// requests fail) and exits with "[STOP - Hammer Time]".
TEST_F(examples_test, hammer_time_cuts_five_slow_requests_after_one_second) {
  pid_t a = start_example("hammer_time", {"127.0.0.1:0"});
  std::vector<std::unique_ptr<in_flight>> slow;
  for (int i = 0; i < 5; ++i)
    slow.push_back(std::make_unique<in_flight>(port, "/slow"));
  pid_t b = sighup(a);
  ASSERT_GT(b, 0);
  EXPECT_EQ(http_get(port, "/").body, "WORLD!\n");  // the new process, while the old drains
  EXPECT_TRUE(procs.wait_gone(a, 10s));
  EXPECT_EQ(count_lines(log, "[STOP - Hammer Time]"), 1) << read_file(log);
  int failed = 0;
  for (auto& r : slow)
    failed += r->finish(5000).ok ? 0 : 1;
  EXPECT_EQ(failed, 5) << "the hammer should have cut every slow request";
  EXPECT_EQ(http_get(port, "/").body, "WORLD!\n");
}

TEST_F(examples_test, graceful_worker_finishes_its_queue_on_shutdown) {
  pid_t pid = start_example("graceful_worker", {"127.0.0.1:0"});
  for (int i = 1; i <= 5; ++i) {
    auto r = raw_exchange(port,
                          "POST /jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n");
    ASSERT_NE(r.data.find("queued job " + std::to_string(i)), std::string::npos) << r.data;
  }
  ::kill(pid, SIGTERM);
  int status = -1;
  ASSERT_TRUE(procs.wait_gone(pid, 10s, &status)) << read_file(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(count_lines(log, "shutdown initiated"), 1) << read_file(log);
  EXPECT_EQ(count_lines(log, "worker: stopped after 5 job(s)"), 1) << read_file(log);
}

// Two servers from one binary (endless's multi_port): both answer, both survive a restart.
TEST_F(examples_test, two_ports_serve_both_and_restart_together) {
  pid_t a = start_example("two_ports", {"127.0.0.1:0", "127.0.0.1:0"});
  std::vector<int> ports;
  ASSERT_TRUE(wait_until([&] { return (ports = logged_ports(log, a)).size() == 2; }, 10s))
      << read_file(log);
  const char* bodies[] = {"WORLD from the first server\n", "WORLD from the second server\n"};
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(http_get(ports[i], "/").body, bodies[i]);
  pid_t b = sighup(a);
  ASSERT_GT(b, 0);
  EXPECT_TRUE(procs.wait_gone(a, 15s));
  EXPECT_EQ(logged_ports(log, b), ports) << "the same two sockets";
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(http_get(ports[i], "/").body, bodies[i]) << "after the restart";
}

TEST_F(examples_test, prometheus_serves_metrics_and_health) {
  start_example("prometheus", {"127.0.0.1:0"});
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(http_get(port, "/").body, "WORLD!\n");
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
  EXPECT_EQ(http_get(port, "/readyz").status, 200);
  auto m = http_get(port, "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("# TYPE endless_http_requests_total counter\n"), std::string::npos);
  EXPECT_NE(m.body.find("endless_http_requests_total{method=\"GET\",code=\"2xx\"} 5\n"),
            std::string::npos)
      << m.body;
  EXPECT_NE(m.body.find("endless_restarts_total 0\n"), std::string::npos) << m.body;
}

}  // namespace
}  // namespace endless::test
