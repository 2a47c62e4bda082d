// endlessctl against real servers through their control socket: the upgrade verdict for a
// good binary and for one that exits, hangs or crashes (before ready, and after it: rolled
// back), waiting out the probation, status with every generation, stop and stop --hammer
// waiting for every process, refusals (busy, other users, nothing there), and the access log
// naming pid and generation.
#include <grp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "fixture.hpp"
#include "support/notify_socket.hpp"

namespace endless::test {
namespace {

struct ctl_result {
  int rc = -1;
  std::string out, err;
};

class endlessctl_test : public core_fixture {
 protected:
  // Runs endlessctl with `args` (bounded: endlessctl's own --timeout, then timeout(1)).
  ctl_result ctl(const std::string& args) {
    static std::atomic<int> runs{0};
    const std::string err = dir / ("ctl-" + std::to_string(++runs) + ".err");
    std::string out =
        run_command("timeout 120 " ENDLESSCTL_PATH " " + args + " 2>" + err + "; echo \"rc=$?\"");
    ctl_result r;
    auto at = out.rfind("rc=");
    if (at != std::string::npos) {
      r.rc = std::atoi(out.c_str() + at + 3);
      r.out = out.substr(0, at);
    }
    r.err = read_file(err);
    return r;
  }

  pid_t start_http(std::vector<std::string> args) {
    return start(std::move(args), {}, HTTP_HELPER_PATH);
  }
};

TEST_F(endlessctl_test, upgrade_of_a_good_binary_prints_the_new_pid) {
  pid_t a = start({"--addr", "127.0.0.1:0"});
  auto r = ctl("upgrade --pidfile " + pidfile);
  ASSERT_EQ(r.rc, 0) << r.err << read_file(log);
  pid_t b = read_pid(pidfile);
  procs.track(b);
  EXPECT_NE(b, a);
  EXPECT_EQ(r.out, std::to_string(b) + "\n");
  EXPECT_NE(r.err.find("upgraded: pid " + std::to_string(b) + " (generation 1) serves"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(http_get(port, "/pid").x_pid, b);
  EXPECT_TRUE(procs.wait_gone(a, 10s));
  // The next one goes through the new process's control socket, at the same path.
  auto again = ctl("upgrade --pidfile " + pidfile);
  ASSERT_EQ(again.rc, 0) << again.err << read_file(log);
  procs.track(read_pid(pidfile));
  EXPECT_NE(again.err.find("(generation 2)"), std::string::npos) << again.err;
}

struct failure_case {
  const char* fault;
  const char* reason;
  const char* text;
};

void PrintTo(const failure_case& c, std::ostream* os) {
  *os << c.fault;
}

class endlessctl_failure_test : public endlessctl_test,
                                public ::testing::WithParamInterface<failure_case> {};

TEST_P(endlessctl_failure_test, failed_upgrade_exits_1_with_the_reason) {
  const std::string fault = dir / "fault";
  pid_t a = start({"--addr", "127.0.0.1:0", "--upgrade-timeout", "1500", "--fault-file", fault});
  write_file(fault, GetParam().fault);
  auto r = ctl("upgrade --pidfile " + pidfile);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find(std::string("upgrade failed (") + GetParam().reason + ")"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(GetParam().text), std::string::npos) << r.err;
  EXPECT_EQ(read_pid(pidfile), a);
  EXPECT_EQ(http_get(port, "/pid").x_pid, a);
  // Failures are counted, by reason, and the next upgrade works.
  auto status = ctl("status --pidfile " + pidfile);
  ASSERT_EQ(status.rc, 0) << status.err;
  EXPECT_NE(status.out.find(std::string(GetParam().reason) + "=1"), std::string::npos)
      << status.out;
  std::filesystem::remove(fault);
  auto good = ctl("upgrade --pidfile " + pidfile);
  EXPECT_EQ(good.rc, 0) << good.err;
  procs.track(read_pid(pidfile));
}

INSTANTIATE_TEST_SUITE_P(
    faults, endlessctl_failure_test,
    ::testing::Values(failure_case{"exit1", "exited", "exited with status 1 before it was ready"},
                      failure_case{"noready", "not_ready", "was not ready within 1500 ms"},
                      failure_case{"segv", "exited", "was killed by signal 11"}),
    [](const auto& p) { return std::string(p.param.fault); });

TEST_F(endlessctl_test, crash_after_ready_is_reported_as_rolled_back) {
  const std::string fault = dir / "fault";
  pid_t a = start_http({"--addr", "127.0.0.1:0", "--fault-file", fault, "--probation-ms", "5000"});
  write_file(fault, "crash-after-ready");
  auto r = ctl("upgrade --pidfile " + pidfile);
  EXPECT_EQ(r.rc, 1) << r.err << read_file(log);
  EXPECT_NE(r.err.find("on probation for 5000 ms"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("upgrade failed (rolled_back)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("was killed by signal 11"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pid " + std::to_string(a) + " serves again"), std::string::npos) << r.err;
  EXPECT_EQ(read_pid(pidfile), a);
  EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

// A new process that exits cleanly during the probation is no crash (no rollback), but the
// deploy did not work: the verdict says so.
TEST_F(endlessctl_test, a_clean_exit_during_the_probation_is_not_ok) {
  const std::string fault = dir / "fault";
  start_http({"--addr", "127.0.0.1:0", "--fault-file", fault, "--probation-ms", "5000"});
  write_file(fault, "exit-after-ready");
  auto r = ctl("upgrade --pidfile " + pidfile);
  EXPECT_EQ(r.rc, 1) << r.err << read_file(log);
  EXPECT_NE(r.err.find("upgrade failed (exited)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exited with status 0"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not a crash, so no rollback"), std::string::npos) << r.err;
}

// During the probation of the previous upgrade the new process refuses another one (busy):
// were it to crash before its own new process was ready, the old one would take the service
// back while that third process went on to serve beside it.
TEST_F(endlessctl_test, no_upgrade_while_the_previous_one_is_on_probation) {
  start_http({"--addr", "127.0.0.1:0", "--probation-ms", "3000"});
  ctl_result first;
  std::thread t([&] { first = ctl("upgrade --pidfile " + pidfile); });
  bool handed = wait_until([&] { return count_lines(log, "is ready; handing over") == 1; }, 10s);
  ctl_result second;
  if (handed) {
    // Until the new process answers (the old one no longer accepts).
    wait_until(
        [&] {
          second = ctl("upgrade --timeout 5 --pidfile " + pidfile);
          return second.rc != 4;
        },
        5s);
  }
  t.join();
  ASSERT_TRUE(handed) << read_file(log);
  EXPECT_EQ(second.rc, 3) << second.err << read_file(log);
  EXPECT_NE(second.err.find("is still on probation"), std::string::npos) << second.err;
  EXPECT_EQ(first.rc, 0) << first.err;
  procs.track(read_pid(pidfile));
  // Once the verdict is out, the next upgrade goes through.
  auto third = ctl("upgrade --pidfile " + pidfile);
  EXPECT_EQ(third.rc, 0) << third.err << read_file(log);
  procs.track(read_pid(pidfile));
}

// A client that shuts down its side after the command (echo upgrade | socat ...) still gets
// every line of the answer.
TEST_F(endlessctl_test, a_half_closed_client_still_gets_the_verdict) {
  start({"--addr", "127.0.0.1:0"});
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::snprintf(un.sun_path, sizeof un.sun_path, "%s", (pidfile + ".ctl").c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof un), 0);
  ASSERT_EQ(::send(fd, "upgrade\n", 8, MSG_NOSIGNAL), 8);
  ::shutdown(fd, SHUT_WR);
  timeval tv{15, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  for (int i = 0; i < 100; ++i) {
    char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  EXPECT_NE(got.find("\nok "), std::string::npos) << got << read_file(log);
  procs.track(read_pid(pidfile));
}

TEST_F(endlessctl_test, the_verdict_waits_for_the_probation) {
  start_http({"--addr", "127.0.0.1:0", "--probation-ms", "1500"});
  auto r = ctl("upgrade --pidfile " + pidfile);
  ASSERT_EQ(r.rc, 0) << r.err << read_file(log);
  procs.track(read_pid(pidfile));
  EXPECT_NE(r.err.find("on probation for 1500 ms"), std::string::npos) << r.err;
  // "ok" comes only once the old process has ended the probation (and logged it).
  EXPECT_EQ(count_lines(log, "probation over"), 1) << read_file(log);
}

TEST_F(endlessctl_test, status_shows_every_generation_with_its_connections) {
  pid_t a = start_http({"--addr", "127.0.0.1:0", "--probation-ms", "0"});
  in_flight slow(port, "/sleep?ms=4000");
  auto up = ctl("upgrade --pidfile " + pidfile);
  ASSERT_EQ(up.rc, 0) << up.err;
  pid_t b = read_pid(pidfile);
  procs.track(b);
  ctl_result s;
  const std::string old_line = "process 0 " + std::to_string(a) + " draining 1\n";
  const std::string new_line = "process 1 " + std::to_string(b) + " serving ";
  ASSERT_TRUE(wait_until(
      [&] {
        s = ctl("status --pidfile " + pidfile);
        return s.rc == 0 && s.out.find(old_line) != std::string::npos;
      },
      5s))
      << s.out << s.err;
  EXPECT_EQ(s.out.rfind("pid " + std::to_string(b) + "\nstate serving\ngeneration 1\n", 0), 0u)
      << s.out;
  EXPECT_NE(s.out.find("upgrades 1\n"), std::string::npos) << s.out;
  auto at = s.out.find(new_line);
  ASSERT_NE(at, std::string::npos) << s.out;
  EXPECT_NE(s.out.find(" self\n", at), std::string::npos) << s.out;
  EXPECT_TRUE(slow.finish().ok);
}

TEST_F(endlessctl_test, stop_returns_once_every_generation_is_gone) {
  pid_t a = start_http({"--addr", "127.0.0.1:0", "--probation-ms", "0"});
  in_flight slow(port, "/sleep?ms=1500");
  ASSERT_EQ(ctl("upgrade --pidfile " + pidfile).rc, 0);
  pid_t b = read_pid(pidfile);
  procs.track(b);
  const std::string sock = pidfile + ".ctl";
  ASSERT_TRUE(std::filesystem::exists(sock));
  auto r = ctl("stop --pidfile " + pidfile);
  EXPECT_EQ(r.rc, 0) << r.err << read_file(log);
  EXPECT_NE(r.err.find("pid " + std::to_string(b) + " is shutting down"), std::string::npos);
  // Both gone when it returned: the draining old one too, its request answered.
  EXPECT_TRUE(procs.wait_gone(a, 100ms));
  EXPECT_TRUE(procs.wait_gone(b, 100ms));
  EXPECT_TRUE(slow.finish(1000).ok);
  EXPECT_FALSE(std::filesystem::exists(pidfile));
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the control socket outlived the service";
  EXPECT_EQ(ctl("status --pidfile " + pidfile).rc, 4);
}

TEST_F(endlessctl_test, stop_hammer_closes_what_is_left_at_once) {
  pid_t a = start_http({"--addr", "127.0.0.1:0", "--hammer-time", "60"});
  in_flight slow(port, "/sleep?ms=60000");
  auto r = ctl("stop --hammer --timeout 20 --pidfile " + pidfile);
  EXPECT_EQ(r.rc, 0) << r.err << read_file(log);
  EXPECT_TRUE(procs.wait_gone(a, 100ms));
  EXPECT_EQ(count_lines(log, "Hammer Time"), 1) << read_file(log);
  EXPECT_FALSE(slow.finish(1000).ok);
}

TEST_F(endlessctl_test, an_upgrade_asked_for_during_one_is_refused_as_busy) {
  const std::string fault = dir / "fault";
  start({"--addr", "127.0.0.1:0", "--upgrade-timeout", "3000", "--fault-file", fault});
  write_file(fault, "noready");
  ctl_result first;
  std::thread t([&] { first = ctl("upgrade --pidfile " + pidfile); });
  bool started = wait_until([&] { return count_lines(log, "started new process") == 1; }, 10s);
  auto second = started ? ctl("upgrade --pidfile " + pidfile) : ctl_result{};
  t.join();
  ASSERT_TRUE(started) << read_file(log);
  EXPECT_EQ(second.rc, 3) << second.err;
  EXPECT_NE(second.err.find("an upgrade is already running"), std::string::npos) << second.err;
  EXPECT_EQ(first.rc, 1) << first.err;
  EXPECT_NE(first.err.find("(not_ready)"), std::string::npos) << first.err;
}

// In a child that became `uid`: connect to `path` and send "status"; exit 0 if the
// connection was refused by the file mode (EACCES), 10 if the server answered "error denied",
// other codes otherwise.
int as_other_user(const std::string& path, uid_t uid) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0) ::_exit(20);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::snprintf(un.sun_path, sizeof un.sun_path, "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof un) != 0) {
      ::_exit(errno == EACCES ? 0 : 21);
    }
    (void)!::send(fd, "status\n", 7, MSG_NOSIGNAL);  // it may have answered and closed already
    char buf[256] = {};
    std::size_t got = 0;
    for (int i = 0; i < 100 && got < sizeof buf - 1; ++i) {
      ssize_t n = ::read(fd, buf + got, sizeof buf - 1 - got);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    ::_exit(std::strncmp(buf, "error denied", 12) == 0 ? 10 : 22);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(endlessctl_test, only_the_servers_user_and_root_get_in) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  start({"--addr", "127.0.0.1:0"});
  const std::string sock = pidfile + ".ctl";
  struct stat st {};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ::chmod(dir.path.c_str(), 0755);  // let nobody reach the socket, so that the mode decides
  EXPECT_EQ(as_other_user(sock, 65534), 0) << "the 0600 mode did not keep another user out";
  // With the mode opened up, the server still refuses (SO_PEERCRED).
  ASSERT_EQ(::chmod(sock.c_str(), 0666), 0);
  EXPECT_EQ(as_other_user(sock, 65534), 10);
  EXPECT_EQ(count_lines(log, "control socket: refused a client of uid 65534"), 1) << read_file(log);
  EXPECT_EQ(ctl("status --pidfile " + pidfile).rc, 0);
}

TEST_F(endlessctl_test, clear_errors_for_no_server_and_bad_usage) {
  auto none = ctl("status --socket " + dir / "nothing.ctl");
  EXPECT_EQ(none.rc, 4);
  EXPECT_NE(none.err.find("can't connect to"), std::string::npos) << none.err;
  EXPECT_EQ(ctl("upgrade").rc, 2);
  EXPECT_EQ(ctl("frobnicate --pidfile " + pidfile).rc, 2);
  EXPECT_EQ(ctl("stop --pidfile a --socket b").rc, 2);
  EXPECT_EQ(ctl("upgrade --pidfile a --timeout -1").rc, 2);
}

TEST_F(endlessctl_test, a_server_without_a_control_socket_has_none) {
  start_http({"--addr", "127.0.0.1:0", "--control-socket", ""});
  EXPECT_FALSE(std::filesystem::exists(pidfile + ".ctl"));
  EXPECT_EQ(ctl("status --pidfile " + pidfile).rc, 4);
}

TEST_F(endlessctl_test, access_log_names_the_pid_and_generation) {
  pid_t a = start_http({"--addr", "127.0.0.1:0", "--access-log", "1", "--probation-ms", "0"});
  auto raw = raw_exchange(port,
                          "GET /pid?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: te\"st\x80\r\n"
                          "Connection: close\r\n\r\n");
  ASSERT_TRUE(raw.closed);
  const std::string expect_a = "\"GET /pid?x=1 HTTP/1.1\" 200 " +
                               std::to_string(std::to_string(a).size()) +
                               " \"-\" \"te\\\"st\\x80\" pid=" + std::to_string(a) + " gen=0 us=";
  ASSERT_TRUE(wait_until([&] { return count_lines(log, expect_a) == 1; }, 5s)) << read_file(log);
  auto line = lines_with(log, expect_a).front();
  EXPECT_EQ(line.rfind("127.0.0.1 - - [", 0), 0u) << line;
  // HEAD: no body bytes; a handler that throws: 500.
  ASSERT_TRUE(raw_exchange(port, "HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").closed);
  ASSERT_EQ(http_get(port, "/throw").status, 500);
  ASSERT_TRUE(wait_until(
      [&] {
        return count_lines(log, "\"HEAD / HTTP/1.1\" 200 0 ") == 1 &&
               count_lines(log, "\"GET /throw HTTP/1.1\" 500 0 ") == 1;
      },
      5s))
      << read_file(log);
  pid_t b = upgrade(a);
  ASSERT_GT(b, 0);
  ASSERT_TRUE(wait_until(
      [&] { return count_lines(log, " pid=" + std::to_string(b) + " gen=1 us=") > 0; }, 5s))
      << read_file(log);
}

// The unit files of deploy/systemd with their binaries and paths pointed at this build and
// this test's directory (:8080 becomes a free port).
std::string localized(std::string unit, const std::string& dir) {
  auto replace_all = [&](const std::string& from, const std::string& to) {
    for (auto at = unit.find(from); at != std::string::npos; at = unit.find(from, at + to.size()))
      unit.replace(at, from.size(), to);
  };
  replace_all("/usr/local/bin/endlessctl", ENDLESSCTL_PATH);
  replace_all("/usr/local/bin/hello-%i", HELLO_PATH);
  replace_all("/usr/local/bin/hello", HELLO_PATH);
  replace_all("/run/hello", dir);
  replace_all("--addr :8080", "--addr 127.0.0.1:0");
  return unit;
}

// The value of `key=` in a unit file (the last one wins, as in systemd).
std::string unit_value(const std::string& unit, const std::string& key) {
  std::istringstream in(unit);
  std::string value;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + "=", 0) == 0) value = line.substr(key.size() + 1);
  }
  return value;
}

TEST_F(endlessctl_test, systemd_analyze_accepts_the_unit_files) {
  if (run_command("command -v systemd-analyze").empty()) GTEST_SKIP() << "no systemd-analyze";
  const std::string version = run_command("systemd-analyze --version | head -1");
  const int systemd = std::atoi(version.c_str() + version.find(' ') + 1);
  for (const char* name : {"hello.service", "hello-notify-reload.service",
                           "hello-activated.service", "hello-activated.socket", "hello@.service"}) {
    write_file(dir / name,
               localized(read_file(std::string(DEPLOY_DIR "/systemd/") + name), dir.path));
  }
  for (const char* name : {"hello.service", "hello-notify-reload.service", "hello-activated.socket",
                           "hello-activated.service", "hello@.service"}) {
    std::string out =
        run_command("cd " + dir.path + " && systemd-analyze verify ./" + name + " 2>&1");
    if (std::string(name) == "hello-notify-reload.service" && systemd < 253) {
      // Type=notify-reload came with systemd 253; the unit says so.
      EXPECT_NE(out.find("notify-reload"), std::string::npos) << out;
      continue;
    }
    EXPECT_EQ(out, "") << name << " (systemd " << systemd << ")";
  }
}

// hello.service run the way systemd runs it: its own ExecStart and ExecReload lines, a
// NOTIFY_SOCKET that, like NotifyAccess=main, takes messages only from the main pid (moved by
// MAINPID=), and SIGTERM to every process of the service on stop (KillMode=control-group).
TEST_F(endlessctl_test, hello_service_works_as_written) {
  const std::string unit = localized(read_file(DEPLOY_DIR "/systemd/hello.service"), dir.path);
  ASSERT_EQ(unit_value(unit, "Type"), "notify");
  ASSERT_EQ(unit_value(unit, "NotifyAccess"), "main");
  ASSERT_EQ(unit_value(unit, "KillMode"), "control-group");
  std::vector<std::string> argv;
  {
    std::istringstream in(unit_value(unit, "ExecStart"));
    for (std::string w; in >> w;)
      argv.push_back(w);
  }
  pidfile = dir / "hello.pid";
  ASSERT_NE(std::find(argv.begin(), argv.end(), pidfile), argv.end()) << unit;
  notify_socket sd(dir / "notify");
  processes::spec s;
  s.argv = argv;
  // WatchdogSec=10 as written would ping every 5 s; 1 s keeps the test short.
  s.env = {{"NOTIFY_SOCKET", dir / "notify"}, {"WATCHDOG_USEC", "1000000"}};
  s.log = log;
  pid_t a = started(procs.start(s));
  ASSERT_GT(port, 0) << read_file(log);

  // What systemd accepts with NotifyAccess=main, in order.
  pid_t main_pid = a;
  std::size_t seen = 0;
  std::vector<std::string> accepted;
  // Watchdog pings apart (they come every 500 ms from whichever process is the main one,
  // whenever the upgrade happens to be), and a message repeated at once counted once: the
  // new process repeats the old one's MAINPID=+READY=1, which systemd drops when it comes
  // before the old one's (the new process is not the main pid yet then).
  bool pinged_by_new = false;
  auto take = [&] {
    const auto& all = sd.read();
    for (; seen < all.size(); ++seen) {
      if (all[seen].pid != main_pid) continue;  // dropped by systemd
      std::string text = all[seen].text;
      if (text.rfind("MAINPID=", 0) == 0) main_pid = std::atoi(text.c_str() + 8);
      if (text.rfind("RELOADING=1", 0) == 0) text = "RELOADING=1";  // MONOTONIC_USEC varies
      if (text == "WATCHDOG=1") {
        pinged_by_new = pinged_by_new || all[seen].pid != a;
      } else if (accepted.empty() || accepted.back() != text) {
        accepted.push_back(text);
      }
    }
  };
  ASSERT_TRUE(wait_until(
      [&] {
        take();
        return !accepted.empty();
      },
      5s));
  EXPECT_EQ(accepted.front(), "READY=1");

  // systemctl reload: ExecReload as written; its exit status is the upgrade's verdict.
  const std::string reload = unit_value(unit, "ExecReload");
  std::string out = run_command("timeout 120 " + reload + " 2>>" + log + "; echo \"rc=$?\"");
  ASSERT_NE(out.find("rc=0"), std::string::npos) << out << read_file(log);
  pid_t b = read_pid(pidfile);
  procs.track(b);
  EXPECT_EQ(out, std::to_string(b) + "\nrc=0\n");
  ASSERT_TRUE(wait_until(
      [&] {
        take();
        return main_pid == b && pinged_by_new;
      },
      5s))
      << "the watchdog did not move to the new process";

  // systemctl stop: SIGTERM to every process of the unit.
  ::kill(a, SIGTERM);
  ::kill(b, SIGTERM);
  ASSERT_TRUE(procs.wait_gone(b, 10s));
  ASSERT_TRUE(procs.wait_gone(a, 10s));
  take();
  const std::string handed = "MAINPID=" + std::to_string(b) + "\nREADY=1";
  EXPECT_EQ(accepted, (std::vector<std::string>{"READY=1", "RELOADING=1", handed, "STOPPING=1"}));
}

}  // namespace
}  // namespace endless::test
