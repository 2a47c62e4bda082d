// Upgrades with real processes: the socket survives, the pid file follows, no client
// is refused or reset, failed new processes are rolled back, fds do not leak.
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "fixture.hpp"

namespace endless::test {
namespace {

class upgrade_test : public core_fixture {
 protected:
  // The helper's open fds, without the connections of requests that just finished (their
  // server threads close them a moment after the client has read the response): the least
  // of a few samples.
  int settled_fds() {
    int least = 1 << 30;
    for (int i = 0; i < 5; ++i)
      least = std::min(least, std::stoi(get_body("/fds")));
    return least;
  }
};

TEST_F(upgrade_test, same_socket_and_pid_file_across_three_upgrades) {
  pid_t pid = start({"--addr", "127.0.0.1:0"});
  ASSERT_GT(port, 0);
  const std::string inode = get_body("/inode");
  EXPECT_EQ(get_body("/pid"), std::to_string(pid));
  for (int i = 1; i <= 3; ++i) {
    pid_t next = upgrade(pid);
    ASSERT_GT(next, 0);
    EXPECT_EQ(get_body("/inode"), inode) << "upgrade " << i << " changed the listening socket";
    EXPECT_EQ(get_body("/generation"), std::to_string(i));
    EXPECT_EQ(read_pid(pidfile), next);
    EXPECT_TRUE(procs.wait_gone(pid, 10s)) << "old process " << pid << " did not exit";
    EXPECT_EQ(read_pid(pidfile), next) << "the old process touched the pid file on its way out";
    pid = next;
  }
  EXPECT_EQ(get_body("/env"), "none") << "protocol variables leak to what the app starts";
}

TEST_F(upgrade_test, tight_connect_loop_sees_no_refused_or_reset_connection) {
  pid_t pid = start({"--addr", "127.0.0.1:0"});
  tight_client client(port, "Hello Zero-Downtime!\n");
  upgrades_under(client, pid, 3);
}

struct fault_case {
  const char* fault;
  const char* logged;
};

void PrintTo(const fault_case& c, std::ostream* os) {
  *os << c.fault;
}

class failed_upgrade_test : public core_fixture,
                            public ::testing::WithParamInterface<fault_case> {};

TEST_P(failed_upgrade_test, old_process_keeps_serving_and_a_later_upgrade_succeeds) {
  const std::string fault_file = dir / "fault";
  pid_t pid =
      start({"--addr", "127.0.0.1:0", "--upgrade-timeout", "1500", "--fault-file", fault_file});
  write_file(fault_file, GetParam().fault);
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, GetParam().logged), 1) << read_file(log);
  // Still the old process, still answering, pid file untouched.
  EXPECT_EQ(read_pid(pidfile), pid);
  for (int i = 0; i < 20; ++i) {
    auto r = http_get(port, "/pid");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.x_pid, pid);
  }
  std::filesystem::remove(fault_file);
  pid_t next = upgrade(pid);
  EXPECT_GT(next, 0);
  EXPECT_TRUE(procs.wait_gone(pid, 10s));
}

INSTANTIATE_TEST_SUITE_P(faults, failed_upgrade_test,
                         ::testing::Values(fault_case{"exit1",
                                                      "exited with status 1 before it was ready"},
                                           fault_case{"noready", "was not ready within 1500 ms"},
                                           fault_case{"segv", "was killed by signal 11"}),
                         [](const auto& p) { return std::string(p.param.fault); });

TEST_F(upgrade_test, missing_binary_is_reported_and_old_keeps_serving) {
  // A copy of the helper that the "deploy" then deletes.
  const std::string exe = dir / "app";
  std::filesystem::copy_file(HELPER_PATH, exe);
  pid_t pid = start({"--addr", "127.0.0.1:0"}, {}, exe);
  std::filesystem::remove(exe);
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s));
  EXPECT_EQ(count_lines(log, "exec " + exe + ": No such file or directory"), 1) << read_file(log);
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid);
}

TEST_F(upgrade_test, binary_that_is_not_executable_is_reported_and_old_keeps_serving) {
  const std::string exe = dir / "app";
  std::filesystem::copy_file(HELPER_PATH, exe);
  pid_t pid = start({"--addr", "127.0.0.1:0"}, {}, exe);
  std::filesystem::permissions(exe, std::filesystem::perms::owner_read |
                                        std::filesystem::perms::owner_write);  // a broken deploy
  // (Even root needs an x bit on a regular file to exec it: none is left.)
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s));
  EXPECT_EQ(count_lines(log, "exec " + exe + ": Permission denied"), 1) << read_file(log);
  EXPECT_EQ(read_pid(pidfile), pid);
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid);
  std::filesystem::permissions(exe, std::filesystem::perms::owner_all);
  pid_t next = upgrade(pid);
  EXPECT_GT(next, 0);
}

// The old process killed (-9) while it drains: the new one, already serving, goes on alone;
// only the old process's own in-flight request is lost. The pid file keeps naming the new
// process, and it can be upgraded again.
TEST_F(upgrade_test, sigkill_of_the_old_process_mid_drain_leaves_the_new_one_serving) {
  pid_t old = start({"--addr", "127.0.0.1:0", "--hammer-time", "30"});
  in_flight slow(port, "/sleep?ms=5000");  // keeps the old process draining
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  ASSERT_FALSE(procs.gone(old)) << "the old process did not wait for its request";
  ::kill(old, SIGKILL);
  ASSERT_TRUE(procs.wait_gone(old, 5s));
  for (int i = 0; i < 50; ++i) {
    auto r = http_get(port, "/pid");
    ASSERT_TRUE(r.ok) << "request " << i << ": " << r.error;
    EXPECT_EQ(r.x_pid, next);
  }
  EXPECT_EQ(read_pid(pidfile), next);
  pid_t third = upgrade(next);
  ASSERT_GT(third, 0) << read_file(log);
  EXPECT_TRUE(procs.wait_gone(next, 10s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, third);
  EXPECT_EQ(read_pid(pidfile), third);
}

// The new process killed (-9) while it starts up, before it is ready: a rollback like a
// crash, reported with the signal; the old process never stopped accepting.
TEST_F(upgrade_test, sigkill_of_the_new_process_mid_hand_over_rolls_back) {
  const std::string fault_file = dir / "fault";
  pid_t pid =
      start({"--addr", "127.0.0.1:0", "--upgrade-timeout", "30000", "--fault-file", fault_file});
  write_file(fault_file, "noready");
  ::kill(pid, SIGHUP);
  pid_t child = -1;
  ASSERT_TRUE(
      wait_until([&] { return (child = logged_process(log, "started new process ")) > 0; }, 5s));
  procs.track(child);
  // Requests during the hand-over go to the old process, which keeps accepting.
  for (int i = 0; i < 20; ++i)
    ASSERT_EQ(http_get(port, "/pid").x_pid, pid) << "request " << i;
  ::kill(child, SIGKILL);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 5s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, "was killed by signal 9"), 1) << read_file(log);
  EXPECT_EQ(read_pid(pidfile), pid);
  for (int i = 0; i < 20; ++i)
    ASSERT_EQ(http_get(port, "/pid").x_pid, pid) << "request " << i;
  std::filesystem::remove(fault_file);
  EXPECT_GT(upgrade(pid), 0);
}

// The disk holding the pid file is full when the new process starts: it writes the pid to
// a temporary file before it says it is ready, sees ENOSPC, and does not take over. The old
// process keeps serving and the pid file keeps naming it. The full disk is a 64 KiB tmpfs
// in a mount namespace of the helper's own (unshare -m), filled up by the test through
// /proc/<pid>/root.
TEST_F(upgrade_test, full_disk_for_the_pid_file_rolls_back) {
  const std::string unshare = run_command("command -v unshare | tr -d '\\n'");
  if (unshare.empty()) GTEST_SKIP() << "no unshare";
  const std::string mnt = dir / "run";
  std::filesystem::create_directory(mnt);
  const std::string probe = run_command(unshare + " -m --propagation private sh -c 'mount -t " +
                                        "tmpfs -o size=64k tmpfs " + mnt + " && echo mounted'");
  if (probe.find("mounted") == std::string::npos) GTEST_SKIP() << "can't mount: " << probe;
  processes::spec s;
  s.argv = {unshare,
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs " + mnt + " && exec " + HELPER_PATH + " --pidfile " +
                mnt + "/pid --addr 127.0.0.1:0"};
  s.log = log;
  pid_t pid = procs.start(s);
  auto in_ns = [&](pid_t p, const std::string& path) {
    return "/proc/" + std::to_string(p) + "/root" + path;
  };
  ASSERT_TRUE(wait_until([&] { return read_pid(in_ns(pid, mnt + "/pid")) == pid; }, 10s))
      << read_file(log);
  EXPECT_FALSE(std::filesystem::exists(mnt + "/pid")) << "not in a mount namespace of its own";
  port = logged_port(log, pid);
  ASSERT_GT(port, 0);
  {
    // Fill the tmpfs.
    FILE* f = std::fopen(in_ns(pid, mnt + "/fill").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string block(4096, 'x');
    for (int i = 0; i < 64; ++i) {
      if (std::fwrite(block.data(), 1, block.size(), f) != block.size() || std::fflush(f) != 0)
        break;
    }
    std::fclose(f);
  }
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, "No space left on device; not taking over"), 1) << read_file(log);
  EXPECT_EQ(read_pid(in_ns(pid, mnt + "/pid")), pid);
  for (int i = 0; i < 20; ++i)
    ASSERT_EQ(http_get(port, "/pid").x_pid, pid) << "request " << i;
  // Space again: the next upgrade goes through and the pid file follows.
  std::filesystem::remove(in_ns(pid, mnt + "/fill"));
  ::kill(pid, SIGHUP);
  pid_t next = -1;
  ASSERT_TRUE(
      wait_until([&] { return (next = logged_process(log, "is ready; handing over")) > 0; }, 10s))
      << read_file(log);
  procs.track(next);
  EXPECT_TRUE(wait_until([&] { return read_pid(in_ns(next, mnt + "/pid")) == next; }, 5s));
  EXPECT_TRUE(procs.wait_gone(pid, 10s));
  EXPECT_TRUE(wait_until([&] { return http_get(port, "/pid").x_pid == next; }, 5s));
}

// An fd the application opened without O_CLOEXEC stays out of the new process: only the
// listeners and the protocol's fds cross an upgrade.
TEST_F(upgrade_test, fds_opened_without_cloexec_do_not_reach_the_new_process) {
  const std::string marker = dir / "leak-marker";
  write_file(marker, "x");
  pid_t a = start({"--addr", "127.0.0.1:0", "--open-file", marker});
  auto holds_marker = [&](pid_t p) {
    std::error_code ec;
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(p) + "/fd", ec)) {
      if (std::filesystem::read_symlink(e.path(), ec).string() == marker) return true;
    }
    return false;
  };
  ASSERT_TRUE(holds_marker(a)) << "the helper did not open it";
  pid_t b = upgrade(a);
  ASSERT_GT(b, 0);
  EXPECT_FALSE(holds_marker(b)) << "the new process inherited an fd it was never given";
}

// A server that is PID 1 (a container's init, here in a pid namespace of its own) refuses to
// upgrade: its exit at the end of the drain would take the new process with it.
TEST_F(upgrade_test, pid_1_refuses_to_upgrade_and_keeps_serving) {
  const std::string unshare = run_command("command -v unshare | tr -d '\\n'");
  if (unshare.empty()) GTEST_SKIP() << "no unshare";
  if (run_command(unshare + " --pid --fork sh -c 'echo $$'") != "1\n") {
    GTEST_SKIP() << "can't make a pid namespace here";
  }
  // How the test finds the helper from outside (CONFIG_PROC_CHILDREN).
  if (!std::filesystem::exists("/proc/self/task/" + std::to_string(::getpid()) + "/children")) {
    GTEST_SKIP() << "no /proc/<pid>/task/<tid>/children";
  }
  processes::spec s;
  s.argv = {unshare, "--pid", "--fork", HELPER_PATH, "--pidfile", pidfile, "--addr", "127.0.0.1:0"};
  s.log = log;
  pid_t outer = procs.start(s);
  ASSERT_TRUE(wait_until([&] { return read_pid(pidfile) == 1; }, 10s)) << read_file(log);
  port = logged_port(log, 1);
  ASSERT_GT(port, 0) << read_file(log);
  // The helper as the test sees it: unshare's child.
  pid_t helper = std::atoi(
      read_file("/proc/" + std::to_string(outer) + "/task/" + std::to_string(outer) + "/children")
          .c_str());
  ASSERT_GT(helper, 0);
  procs.track(helper);  // killing unshare would leave it running
  ::kill(helper, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, "this process is PID 1 (a container's init)"), 1) << read_file(log);
  EXPECT_EQ(count_lines(log, "started new process"), 0) << read_file(log);
  EXPECT_TRUE(http_get(port, "/pid").ok);
  ::kill(helper, SIGTERM);
  EXPECT_TRUE(procs.wait_gone(outer, 10s));
}

// A second SIGHUP while the first upgrade runs or while the old process drains is neither
// lost nor doubled: the old process starts no second child, the new process upgrades once
// more (protocol 'U'), so the binary on disk at the last signal ends up serving.
TEST_F(upgrade_test, a_second_sighup_gives_exactly_one_more_upgrade) {
  pid_t pid = start({"--addr", "127.0.0.1:0"});
  // A slow request keeps the old process alive (upgrading, then draining) for the second
  // signal; two signals sent at once could merge into one pending signal in the kernel.
  in_flight slow(port, "/sleep?ms=2000");
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "forking.") == 1; }, 5s));
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until(
      [&] {
        return count_lines(log, "passed on to the new process") +
                   count_lines(log, "upgrades again once it is ready") ==
               1;
      },
      5s))
      << read_file(log);
  auto r = slow.finish();
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, pid);
  ASSERT_TRUE(wait_until(
      [&] { return count_lines(log, "Upgrade passed on by the old process. forking.") == 1; }, 10s))
      << read_file(log);
  pid_t last = -1;
  ASSERT_TRUE(wait_until(
      [&] {
        last = read_pid(pidfile);
        return last > 0 && count_lines(log, " tcp:127.0.0.1:") == 3 &&
               http_get(port, "/pid").x_pid == last;
      },
      10s))
      << read_file(log);
  procs.track(last);
  ASSERT_TRUE(procs.wait_gone(pid, 10s));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(count_lines(log, "forking."), 2) << read_file(log);
  EXPECT_EQ(count_lines(log, " tcp:127.0.0.1:"), 3) << "one process per upgrade asked for";
  EXPECT_EQ(http_get(port, "/pid").x_pid, last);
}

TEST_F(upgrade_test, tcp_and_unix_listeners_upgrade_together) {
  const std::string sock = dir / "sock";
  pid_t pid = start({"--addr", "127.0.0.1:0", "--unix", sock});
  struct stat before {};
  ASSERT_EQ(::stat(sock.c_str(), &before), 0);
  ASSERT_EQ(http_get_unix(sock, "/pid").x_pid, pid);
  pid_t next = upgrade(pid);
  ASSERT_TRUE(procs.wait_gone(pid, 10s));
  auto r = http_get_unix(sock, "/pid");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, next);
  EXPECT_EQ(http_get(port, "/pid").x_pid, next);
  struct stat after {};
  ASSERT_EQ(::stat(sock.c_str(), &after), 0) << "the old process unlinked the socket path";
  EXPECT_EQ(after.st_ino, before.st_ino);
  // A final shutdown removes the path it created.
  ::kill(next, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(next, 10s));
  EXPECT_FALSE(std::filesystem::exists(sock));
}

TEST_F(upgrade_test, other_fds_are_passed_along_by_name) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--udp", "udp:stats"});
  const std::string inode = get_body("/udp");
  ASSERT_NE(inode, "0");
  pid = upgrade(pid);
  EXPECT_EQ(get_body("/udp"), inode);
}

TEST_F(upgrade_test, rename_deploy_runs_the_new_binary_even_after_chdir) {
  const std::string app = dir / "app";
  std::filesystem::copy_file(HELPER_PATH, app);
  processes::spec s;
  s.argv = {"./app", "--pidfile", pidfile, "--addr", "127.0.0.1:0", "--chdir", "/"};
  s.cwd = dir.path;
  s.log = log;
  pid_t pid = started(procs.start(s));
  EXPECT_EQ(get_body("/version"), "1");
  // Build the new version beside it and rename it over the old path, as deploys do.
  std::filesystem::copy_file(HELPER_V2_PATH, dir / "app.new");
  std::filesystem::rename(dir / "app.new", app);
  pid = upgrade(pid);
  EXPECT_EQ(get_body("/version"), "2");
}

TEST_F(upgrade_test, no_fd_leak_in_the_old_process_over_failed_upgrades) {
  const std::string fault_file = dir / "fault";
  pid_t pid = start({"--addr", "127.0.0.1:0", "--fault-file", fault_file});
  write_file(fault_file, "exit1");
  ASSERT_EQ(get_body("/upgrade"), "new process exited before it was ready");
  const int fds = settled_fds();
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(get_body("/upgrade"), "new process exited before it was ready");
  }
  std::filesystem::remove(fault_file);
  EXPECT_TRUE(wait_until([&] { return settled_fds() <= fds; }, 5s))
      << "failed upgrades leak fds in the process that stays: " << settled_fds() << " > " << fds;
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid);
}

TEST_F(upgrade_test, no_fd_leak_over_twenty_upgrades) {
  pid_t pid = start({"--addr", "127.0.0.1:0", "--unix", dir / "sock"});
  pid = upgrade(pid);
  const int fds = settled_fds();
  for (int i = 2; i <= 20; ++i) {
    pid_t next = upgrade(pid);
    ASSERT_GT(next, 0) << "upgrade " << i;
    ASSERT_TRUE(procs.wait_gone(pid, 10s));
    pid = next;
  }
  EXPECT_TRUE(wait_until([&] { return settled_fds() <= fds; }, 5s))
      << "open fds grew over 20 upgrades: " << settled_fds() << " > " << fds;
  EXPECT_EQ(get_body("/generation"), "20");
}

TEST_F(upgrade_test, upgrade_api_reports_the_real_outcome) {
  const std::string fault_file = dir / "fault";
  pid_t pid = start({"--addr", "127.0.0.1:0", "--fault-file", fault_file});
  write_file(fault_file, "exit1");
  EXPECT_EQ(get_body("/upgrade"), "new process exited before it was ready");
  EXPECT_EQ(read_pid(pidfile), pid);
  std::filesystem::remove(fault_file);
  in_flight request(port, "/upgrade", /*keep_alive=*/true);
  auto r = request.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(r.x_pid, pid) << "the request was answered by the old process";
  EXPECT_EQ(r.connection, "close") << "a draining process ends keep-alive";
  // The new process writes the pid file right after the old one acknowledged it.
  pid_t next = -1;
  ASSERT_TRUE(wait_until([&] { return (next = read_pid(pidfile)) != pid && next > 0; }, 5s));
  procs.track(next);
  EXPECT_TRUE(procs.wait_gone(pid, 10s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, next);
}

TEST_F(upgrade_test, sigterm_during_an_upgrade_kills_the_new_process_and_drains) {
  const std::string fault_file = dir / "fault";
  pid_t pid = start({"--addr", "127.0.0.1:0", "--fault-file", fault_file});
  write_file(fault_file, "noready");
  ::kill(pid, SIGHUP);
  pid_t child = -1;
  ASSERT_TRUE(
      wait_until([&] { return (child = logged_process(log, "started new process ")) > 0; }, 5s));
  procs.track(child);
  ::kill(pid, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(pid, 10s)) << read_file(log);
  EXPECT_TRUE(procs.wait_gone(child, 5s)) << "the half-started new process was left running";
  EXPECT_EQ(count_lines(log, "upgrade aborted by shutdown"), 1) << read_file(log);
  EXPECT_FALSE(std::filesystem::exists(pidfile));
}

}  // namespace
}  // namespace endless::test
