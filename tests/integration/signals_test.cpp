// Signals with real processes: graceful drain, hammer, SIGUSR2, hooks, SIGTSTP.
#include <sys/wait.h>

#include <filesystem>

#include "fixture.hpp"

namespace endless::test {
namespace {

class signals_test : public core_fixture {};

char process_state(pid_t pid) {
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  return paren == std::string::npos ? '?' : stat[paren + 2];
}

TEST_F(signals_test, sigterm_waits_for_a_slow_in_flight_request) {
  pid_t pid = start({"--addr", "127.0.0.1:0"});
  in_flight slow(port, "/sleep?ms=1500", /*keep_alive=*/true);
  ::kill(pid, SIGTERM);
  // It stops accepting at once; the slow request still completes.
  ASSERT_TRUE(wait_until([&] { return !http_get(port, "/").ok; }, 5s));
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "slept");
  EXPECT_EQ(r.connection, "close") << "a draining process must end keep-alive";
  int status = 0;
  ASSERT_TRUE(procs.wait_gone(pid, 10s, &status));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(std::filesystem::exists(pidfile)) << "final shutdown keeps the pid file";
  EXPECT_EQ(count_lines(log, "Waiting for connections to finish..."), 1);
  EXPECT_EQ(count_lines(log, "Hammer Time"), 0);
}

TEST_F(signals_test, negative_hammer_time_never_fires) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--hammer-time", "-1"});
  in_flight slow(port, "/sleep?ms=2500");
  ::kill(pid, SIGTERM);
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "slept");
  EXPECT_TRUE(procs.wait_gone(pid, 10s));
  EXPECT_EQ(count_lines(log, "Hammer Time"), 0);
}

TEST_F(signals_test, one_second_hammer_closes_the_connection) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--hammer-time", "1"});
  in_flight slow(port, "/sleep?ms=30000");
  ::kill(pid, SIGTERM);
  // Nothing but the hammer can end this request before 30 s.
  auto r = slow.finish(20000);
  EXPECT_FALSE(r.ok) << "the hammered request completed: " << r.body;
  EXPECT_NE(r.error, "timeout") << "the connection was not closed";
  EXPECT_TRUE(procs.wait_gone(pid, 5s));
  EXPECT_EQ(count_lines(log, "[STOP - Hammer Time] Forcefully shutting down parent"), 1);
}

TEST_F(signals_test, sigusr2_hammers_only_when_draining) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--hammer-time", "-1"});
  ::kill(pid, SIGUSR2);
  ASSERT_TRUE(
      wait_until([&] { return count_lines(log, "SIGUSR2, but not shutting down") == 1; }, 5s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid) << "SIGUSR2 while serving did something";

  in_flight slow(port, "/sleep?ms=30000");
  ::kill(pid, SIGTERM);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "Waiting for connections") == 1; }, 5s));
  ::kill(pid, SIGUSR2);
  // Hammer time is "never": only SIGUSR2 can end this request before 30 s.
  auto r = slow.finish(20000);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error, "timeout");
  EXPECT_TRUE(procs.wait_gone(pid, 5s));
  EXPECT_EQ(count_lines(log, "Hammer Time"), 1);
}

TEST_F(signals_test, hooks_run_once_and_in_order_with_two_servers) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0", "--hooks"});
  ::kill(pid, SIGUSR1);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "hook post 10 1") == 1; }, 5s));
  auto hooks = lines_with(log, " hook ");
  ASSERT_EQ(hooks.size(), 4u) << read_file(log);
  EXPECT_NE(hooks[0].find("hook pre 10 0"), std::string::npos);
  EXPECT_NE(hooks[1].find("hook pre 10 1"), std::string::npos);
  EXPECT_NE(hooks[2].find("hook post 10 0"), std::string::npos);
  EXPECT_NE(hooks[3].find("hook post 10 1"), std::string::npos);

  ::kill(pid, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(pid, 10s));
  hooks = lines_with(log, " hook ");
  std::vector<std::string> want = {"pre 15 0",   "pre 15 1",  "shutdown 0",
                                   "shutdown 1", "post 15 0", "post 15 1"};
  ASSERT_EQ(hooks.size(), 4 + want.size()) << read_file(log);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NE(hooks[4 + i].find("hook " + want[i]), std::string::npos) << hooks[4 + i];
  }
}

TEST_F(signals_test, sighup_hooks_run_in_the_old_process_once) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--hooks"});
  pid_t next = upgrade(pid);
  ASSERT_TRUE(procs.wait_gone(pid, 10s));
  EXPECT_EQ(count_lines(log, std::to_string(pid) + " hook pre 1 0"), 1);
  EXPECT_EQ(count_lines(log, std::to_string(pid) + " hook post 1 0"), 1);
  EXPECT_EQ(count_lines(log, std::to_string(pid) + " hook shutdown 0"), 1);
  EXPECT_EQ(count_lines(log, std::to_string(next) + " hook"), 0);
}

TEST_F(signals_test, sigtstp_stops_the_process_unless_hooked) {
  pid_t plain = start({"--addr", "127.0.0.1:0"});
  ::kill(plain, SIGTSTP);
  EXPECT_TRUE(wait_until([&] { return process_state(plain) == 'T'; }, 5s))
      << "Ctrl-Z no longer stops a process without SIGTSTP hooks";
  ::kill(plain, SIGCONT);
  EXPECT_TRUE(wait_until([&] { return http_get(port, "/pid").x_pid == plain; }, 5s));
  ::kill(plain, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(plain, 10s));

  pid_t hooked = start({"--addr", "127.0.0.1:0", "--hooks"});
  ::kill(hooked, SIGTSTP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "hook post 20 0") == 1; }, 5s));
  EXPECT_NE(process_state(hooked), 'T');
  EXPECT_EQ(http_get(port, "/pid").x_pid, hooked);
}

}  // namespace
}  // namespace endless::test
