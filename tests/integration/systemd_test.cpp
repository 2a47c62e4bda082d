// systemd integration against sockets the test owns: the notify protocol (who says what,
// in which order, from which pid), the watchdog moving to the new process, and socket
// activation with systemd-socket-activate.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "fixture.hpp"
#include "support/notify_socket.hpp"

namespace endless::test {
namespace {

class systemd_test : public core_fixture {};

TEST_F(systemd_test, notify_messages_come_in_order_from_the_right_pid) {
  notify_socket sd(dir / "notify");
  pid_t a = start({"--addr", "127.0.0.1:0"},
                  {{"NOTIFY_SOCKET", dir / "notify"}, {"WATCHDOG_USEC", "200000"}});
  ASSERT_TRUE(wait_until([&] { return sd.saw(a, "WATCHDOG=1"); }, 5s));
  pid_t b = upgrade(a);
  ASSERT_TRUE(procs.wait_gone(a, 10s));
  ASSERT_TRUE(wait_until([&] { return sd.saw(b, "WATCHDOG=1"); }, 5s))
      << "the watchdog did not move to the new process";
  ::kill(b, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(b, 10s));

  const std::string handed_over = "MAINPID=" + std::to_string(b) + "\nREADY=1";
  std::vector<notify_message> others;
  size_t handed_over_at = 0;
  const auto& all = sd.read();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].pid == a && all[i].text == handed_over) handed_over_at = i;
    if (all[i].text != "WATCHDOG=1") others.push_back(all[i]);
  }
  ASSERT_EQ(others.size(), 5u);
  EXPECT_EQ(others[0].pid, a);
  EXPECT_EQ(others[0].text, "READY=1");
  EXPECT_EQ(others[1].pid, a);
  EXPECT_EQ(others[1].text.rfind("RELOADING=1\nMONOTONIC_USEC=", 0), 0u) << others[1].text;
  // The old process, still the main pid, names the new one (NotifyAccess=main accepts only
  // that); the new one says the same for NotifyAccess=all. Their order is not fixed.
  std::set<pid_t> senders = {others[2].pid, others[3].pid};
  EXPECT_EQ(senders, (std::set<pid_t>{a, b}));
  EXPECT_EQ(others[2].text, handed_over);
  EXPECT_EQ(others[3].text, handed_over);
  EXPECT_EQ(others[4].pid, b);
  EXPECT_EQ(others[4].text, "STOPPING=1");
  ASSERT_GT(handed_over_at, 0u);
  for (size_t i = handed_over_at; i < all.size(); ++i) {
    EXPECT_FALSE(all[i].pid == a && all[i].text == "WATCHDOG=1")
        << "the old process kept pinging the watchdog after the hand-over";
  }
}

TEST_F(systemd_test, failed_upgrade_tells_systemd_it_is_ready_again) {
  notify_socket sd(dir / "notify");
  const std::string fault = dir / "fault";
  pid_t a =
      start({"--addr", "127.0.0.1:0", "--fault-file", fault}, {{"NOTIFY_SOCKET", dir / "notify"}});
  write_file(fault, "exit1");
  ::kill(a, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s));
  ASSERT_TRUE(wait_until([&] { return sd.read().size() >= 3; }, 5s));
  const auto& all = sd.read();
  EXPECT_EQ(all[1].text.rfind("RELOADING=1", 0), 0u);
  EXPECT_EQ(all[2].pid, a);
  EXPECT_EQ(all[2].text.rfind("READY=1\nSTATUS=upgrade failed: ", 0), 0u) << all[2].text;
}

TEST_F(systemd_test, socket_activation_on_first_start_then_upgrade) {
  const std::string sock = dir / "sock";
  processes::spec s;
  s.argv = {"/usr/bin/systemd-socket-activate",
            "-l",
            sock,
            HELPER_PATH,
            "--pidfile",
            pidfile,
            "--unix",
            sock};
  s.log = log;
  pid_t pid = procs.start(s);
  ASSERT_TRUE(wait_until([&] { return std::filesystem::exists(sock); }, 5s)) << read_file(log);
  struct stat before {};
  ASSERT_EQ(::stat(sock.c_str(), &before), 0);
  // systemd-socket-activate execs the server on the first connection, keeping its pid.
  auto r = http_get_unix(sock, "/pid", 10000);
  ASSERT_TRUE(r.ok) << r.error << "\n" << read_file(log);
  EXPECT_EQ(r.x_pid, pid);
  ASSERT_TRUE(wait_until([&] { return read_pid(pidfile) == pid; }, 5s));
  EXPECT_EQ(count_lines(log, "closed inherited listener"), 0) << read_file(log);

  ::kill(pid, SIGHUP);
  pid_t next = -1;
  ASSERT_TRUE(wait_until([&] { return (next = read_pid(pidfile)) != pid && next > 0; }, 10s));
  procs.track(next);
  ASSERT_TRUE(procs.wait_gone(pid, 10s));
  r = http_get_unix(sock, "/pid");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, next);
  ::kill(next, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(next, 10s));
  struct stat after {};
  EXPECT_EQ(::stat(sock.c_str(), &after), 0) << "unlinked a socket path that systemd owns";
  EXPECT_EQ(after.st_ino, before.st_ino);
}

}  // namespace
}  // namespace endless::test
