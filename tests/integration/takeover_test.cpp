// Takeover between independently started processes (ENDLESS_TAKEOVER): a second process,
// not started by the first, asks for its listeners over the control socket, gets them by
// SCM_RIGHTS, and takes over on ready() with the upgrade's rules: nothing lost under load
// (Connection: close and keep-alive clients), a process that fails before ready leaves the
// old one serving, another user is refused.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <string>
#include <thread>

#include "fixture.hpp"
#include "support/notify_socket.hpp"

namespace endless::test {
namespace {

class takeover_test : public core_fixture {
 protected:
  std::string sock() const { return pidfile + ".ctl"; }

  // Starts `exe` on its own (our child, not the serving process's) with ENDLESS_TAKEOVER.
  pid_t start_taking_over(std::vector<std::string> args, const std::string& exe) {
    processes::spec s;
    s.argv = {exe, "--pidfile", pidfile};
    s.argv.insert(s.argv.end(), args.begin(), args.end());
    s.env = {{"ENDLESS_TAKEOVER", sock()}};
    s.log = log;
    return procs.start(s);
  }

  // A takeover that succeeds: the pid file names the new process and it answers.
  pid_t take_over(pid_t old, std::vector<std::string> args, const std::string& exe) {
    pid_t next = start_taking_over(std::move(args), exe);
    EXPECT_TRUE(wait_until([&] { return read_pid(pidfile) == next; }, 15s)) << read_file(log);
    EXPECT_TRUE(wait_until([&] { return http_get(port, "/pid").x_pid == next; }, 10s));
    EXPECT_TRUE(procs.wait_gone(old, 20s)) << read_file(log);
    return next;
  }
};

TEST_F(takeover_test, an_independent_process_takes_the_listeners_and_the_old_one_exits) {
  pid_t a = start({"--addr", "127.0.0.1:0", "--probation-ms", "0"}, {}, HTTP_HELPER_PATH);
  const int first_port = port;
  pid_t b = take_over(a, {"--addr", "127.0.0.1:0", "--probation-ms", "0"}, HTTP_HELPER_PATH);
  EXPECT_EQ(logged_port(log, b), first_port) << "not the same socket";
  EXPECT_EQ(count_lines(log, std::to_string(b) + " took over from pid " + std::to_string(a)), 1)
      << read_file(log);
  EXPECT_EQ(
      count_lines(log, "Takeover requested over the control socket (pid " + std::to_string(b)), 1)
      << read_file(log);
  // The control socket moved with it: the next takeover (or endlessctl) reaches b.
  pid_t c = take_over(b, {"--addr", "127.0.0.1:0", "--probation-ms", "0"}, HTTP_HELPER_PATH);
  EXPECT_EQ(http_get(port, "/pid").x_pid, c);
  EXPECT_EQ(count_lines(log, std::to_string(c) + " took over from pid " + std::to_string(b)), 1)
      << read_file(log);
  auto g = http_get(port, "/generations");
  EXPECT_NE(g.body.find("2 " + std::to_string(c) + " serving"), std::string::npos) << g.body;
}

// 5 takeovers while 1,000 Connection: close and 1,000 keep-alive clients that never retry run.
TEST_F(takeover_test, five_takeovers_under_load_lose_nothing) {
  ENDLESS_PLAIN_BUILD_ONLY();
  pid_t pid = start({"--addr", "127.0.0.1:0", "--probation-ms", "0"}, {}, HTTP_HELPER_PATH);
  // Long enough for five takeovers on a loaded machine; stopped 2 s after the last.
  pid_t closing = start_load(port, "close", 1000, 90, dir / "close.txt");
  pid_t keeping = start_load(port, "keepalive", 1000, 90, dir / "keepalive.txt");
  std::this_thread::sleep_for(1s);
  for (int i = 0; i < 5; ++i)
    pid = take_over(pid, {"--addr", "127.0.0.1:0", "--probation-ms", "0"}, HTTP_HELPER_PATH);
  // Every takeover happened under load.
  ASSERT_FALSE(procs.gone(closing)) << "the load ended before the last takeover";
  ASSERT_FALSE(procs.gone(keeping)) << "the load ended before the last takeover";
  std::this_thread::sleep_for(2s);  // the last new process serves on, under load
  stop_load(closing);
  stop_load(keeping);
  expect_no_failures(closing, dir / "close.txt");
  expect_no_failures(keeping, dir / "keepalive.txt");
}

// The process taken over from drains for its own systemd unit: it keeps pinging the
// watchdog until it exits (the new process pings its own unit, not ours).
TEST_F(takeover_test, the_old_process_keeps_its_watchdog_while_it_drains) {
  notify_socket sd(dir / "notify");
  pid_t a =
      start({"--addr", "127.0.0.1:0", "--probation-ms", "0", "--hammer-time", "30"},
            {{"NOTIFY_SOCKET", dir / "notify"}, {"WATCHDOG_USEC", "200000"}}, HTTP_HELPER_PATH);
  in_flight slow(port, "/sleep?ms=2000");
  pid_t b = start_taking_over({"--addr", "127.0.0.1:0", "--probation-ms", "0"}, HTTP_HELPER_PATH);
  ASSERT_TRUE(wait_until([&] { return read_pid(pidfile) == b; }, 15s)) << read_file(log);
  std::size_t handed_at = sd.read().size();
  std::this_thread::sleep_for(1s);  // a drains: its request takes 2 s
  int pings = 0;
  const auto& all = sd.read();
  for (std::size_t i = handed_at; i < all.size(); ++i)
    pings += all[i].pid == a && all[i].text == "WATCHDOG=1";
  EXPECT_GE(pings, 3) << "the old process stopped pinging its unit's watchdog while draining";
  bool sent_mainpid = false;
  for (const auto& m : all)
    sent_mainpid = sent_mainpid || (m.pid == a && m.text.rfind("MAINPID=", 0) == 0);
  EXPECT_FALSE(sent_mainpid) << "the old unit was told about another unit's process";
  EXPECT_TRUE(slow.finish().ok);
  EXPECT_TRUE(procs.wait_gone(a, 10s));
}

TEST_F(takeover_test, a_process_that_fails_before_ready_leaves_the_old_one_serving) {
  const std::string fault = dir / "fault";
  pid_t a = start({"--addr", "127.0.0.1:0", "--upgrade-timeout", "1500"});  // core_helper
  write_file(fault, "noready");
  pid_t b = start_taking_over(
      {"--addr", "127.0.0.1:0", "--upgrade-timeout", "1500", "--fault-file", fault}, HELPER_PATH);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 15s))
      << read_file(log);
  EXPECT_TRUE(procs.wait_gone(b, 10s)) << "killed, as a new process of ours would be";
  EXPECT_EQ(read_pid(pidfile), a);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, a);
  // One that exits at once: the same.
  write_file(fault, "exit1");
  pid_t c = start_taking_over({"--addr", "127.0.0.1:0", "--fault-file", fault}, HELPER_PATH);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 2; }, 15s))
      << read_file(log);
  EXPECT_TRUE(procs.wait_gone(c, 10s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

TEST_F(takeover_test, another_user_is_refused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  const std::string setpriv = run_command("command -v setpriv | tr -d '\\n'");
  if (setpriv.empty()) GTEST_SKIP() << "no setpriv";
  pid_t a = start({"--addr", "127.0.0.1:0"});
  ::chmod(dir.path.c_str(), 0777);  // so that only the socket's own checks decide
  ::chmod(log.c_str(), 0666);
  processes::spec s;
  s.argv = {setpriv,           "--reuid=65534", "--regid=65534",
            "--clear-groups",  HELPER_PATH,     "--pidfile",
            dir / "other.pid", "--addr",        "127.0.0.1:" + std::to_string(port)};
  s.env = {{"ENDLESS_TAKEOVER", sock()}};
  s.log = log;
  pid_t b = procs.start(s);
  EXPECT_TRUE(procs.wait_gone(b, 10s)) << "it can't bind the address the old one holds";
  EXPECT_EQ(count_lines(log, "takeover from " + sock() + " failed: connect: Permission denied"), 1)
      << read_file(log);
  // With the socket's mode opened up, the old process refuses it (SO_PEERCRED).
  ASSERT_EQ(::chmod(sock().c_str(), 0666), 0);
  pid_t c = procs.start(s);
  EXPECT_TRUE(procs.wait_gone(c, 10s));
  EXPECT_EQ(count_lines(log, "control socket: refused a client of uid 65534"), 1) << read_file(log);
  EXPECT_EQ(read_pid(pidfile), a);
  EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

}  // namespace
}  // namespace endless::test
