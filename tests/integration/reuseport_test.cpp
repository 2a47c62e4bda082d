// The SO_REUSEPORT takeover (ENDLESS_TAKEOVER_MODE=reuseport): a process started on its own
// binds its own sockets to the serving process's addresses, and the old process keeps every
// connection queued on its socket, by steering (SO_ATTACH_REUSEPORT_CBPF) or by the kernel's
// migration (net.ipv4.tcp_migrate_req=1, in a network namespace of the test's own). Nothing
// is lost under load either way; a process that fails before ready leaves the old one
// serving; the mode is refused where neither mechanism is available, and for another user.
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "fixture.hpp"

namespace endless::test {
namespace {

class reuseport_test : public core_fixture {
 protected:
  std::string sock() const { return pidfile + ".ctl"; }

  // The serving process: http_helper with SO_REUSEPORT listeners unless `reuse` is false.
  pid_t start_serving(bool reuse = true, std::vector<std::string> more = {},
                      std::map<std::string, std::string> env = {}) {
    std::vector<std::string> args = {"--addr", "127.0.0.1:0", "--probation-ms",
                                     "0",      "--reuseport", reuse ? "1" : "0"};
    args.insert(args.end(), more.begin(), more.end());
    return start(args, env, HTTP_HELPER_PATH);
  }

  // Starts an http_helper on its own that asks for an SO_REUSEPORT takeover (`mode`:
  // reuseport, reuseport-steering, reuseport-migrate), on the serving port.
  pid_t start_taking_over(const std::string& mode, std::vector<std::string> more = {}) {
    processes::spec s;
    s.argv = {HTTP_HELPER_PATH, "--pidfile", pidfile, "--addr", "127.0.0.1:" + std::to_string(port),
              "--probation-ms", "0"};
    s.argv.insert(s.argv.end(), more.begin(), more.end());
    s.env = {{"ENDLESS_TAKEOVER", sock()}, {"ENDLESS_TAKEOVER_MODE", mode}};
    s.log = log;
    return procs.start(s);
  }

  // A takeover that fails before ready on purpose (`fault`: noready, exit1-before-ready): the
  // old process logs its `nth` failed upgrade and the new one is gone (killed if it hung).
  void fail_a_takeover(const std::string& fault, int nth) {
    write_file(dir / "fault", fault);
    pid_t p = start_taking_over("reuseport", {"--fault-file", dir / "fault"});
    ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == nth; }, 15s))
        << read_file(log);
    EXPECT_TRUE(procs.wait_gone(p, 10s)) << "killed, as a new process of ours would be";
  }

  // A takeover that succeeds: the pid file names the new process, it answers, the old one
  // exits (after passing on what was left in its queue and closing its socket).
  pid_t take_over(pid_t old, const std::string& mode, const std::string& mechanism) {
    pid_t next = start_taking_over(mode);
    EXPECT_TRUE(wait_until([&] { return read_pid(pidfile) == next; }, 15s)) << read_file(log);
    EXPECT_TRUE(wait_until([&] { return http_get(port, "/pid").x_pid == next; }, 10s));
    EXPECT_TRUE(procs.wait_gone(old, 20s)) << read_file(log);
    EXPECT_EQ(count_lines(log, std::to_string(next) + " took over from pid " + std::to_string(old) +
                                   " through " + sock() + " (SO_REUSEPORT, " + mechanism + ")"),
              1)
        << read_file(log);
    EXPECT_EQ(count_lines(log, std::to_string(old) + " closing our 1 SO_REUSEPORT listener(s)"), 1)
        << read_file(log);
    return next;
  }

  // This test process, and everything it starts from now on, in a network namespace of its
  // own: loopback up, net.ipv4.tcp_migrate_req as given. (ctest runs each test in a process
  // of its own; run as a whole, the later tests just run in this namespace.)
  static void enter_own_netns(int migrate_req) {
    ASSERT_EQ(::geteuid(), 0u) << "a network namespace of the test's own needs root";
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << "unshare(CLONE_NEWNET): " << std::strerror(errno);
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(s, 0);
    ifreq ifr{};
    std::strcpy(ifr.ifr_name, "lo");
    ASSERT_EQ(::ioctl(s, SIOCGIFFLAGS, &ifr), 0);
    ifr.ifr_flags |= IFF_UP;
    ASSERT_EQ(::ioctl(s, SIOCSIFFLAGS, &ifr), 0) << std::strerror(errno);
    ::close(s);
    write_file("/proc/sys/net/ipv4/tcp_migrate_req", std::to_string(migrate_req));
    ASSERT_EQ(read_file("/proc/sys/net/ipv4/tcp_migrate_req"), std::to_string(migrate_req) + "\n");
  }

  // 5 swaps while 1,000 Connection: close and 1,000 keep-alive clients that never retry run.
  void five_swaps_under_load(const std::string& mode, const std::string& mechanism, bool reuse) {
    pid_t pid = start_serving(reuse);
    // Long enough for five swaps on a loaded machine; stopped a second after the last.
    pid_t closing = start_load(port, "close", 1000, 90, dir / "close.txt");
    pid_t keeping = start_load(port, "keepalive", 1000, 90, dir / "keepalive.txt");
    std::this_thread::sleep_for(2s);
    for (int i = 0; i < 5; ++i) {
      pid = take_over(pid, mode, mechanism);
      std::this_thread::sleep_for(1s);
    }
    ASSERT_FALSE(procs.gone(closing)) << "the load ended before the last swap";
    ASSERT_FALSE(procs.gone(keeping)) << "the load ended before the last swap";
    stop_load(closing);
    stop_load(keeping);
    expect_no_failures(closing, dir / "close.txt");
    expect_no_failures(keeping, dir / "keepalive.txt");
  }
};

TEST_F(reuseport_test, the_new_process_binds_its_own_socket_and_steering_keeps_the_old_queue) {
  // The first start of a blue/green pair: the same settings, nothing to take over yet. It
  // binds with SO_REUSEPORT, so that steering works for the next one.
  pid_t a = start_serving(true, {},
                          {{"ENDLESS_TAKEOVER", sock()}, {"ENDLESS_TAKEOVER_MODE", "reuseport"}});
  EXPECT_EQ(count_lines(log, "no takeover: nothing serves " + sock()), 1) << read_file(log);
  pid_t b = take_over(a, "reuseport", "steering");
  EXPECT_EQ(count_lines(log, std::to_string(a) +
                                 " SO_REUSEPORT takeover requested over the control socket (pid " +
                                 std::to_string(b)),
            1)
      << read_file(log);
  EXPECT_EQ(count_lines(log, "new connections go to new process " + std::to_string(b) +
                                 " (SO_ATTACH_REUSEPORT_CBPF)"),
            1)
      << read_file(log);
  // A socket of the same user joining the address now (SO_REUSEPORT lets it) gets nothing:
  // once a is gone, b points the program at its own slot, not the one a stranger would take.
  std::this_thread::sleep_for(300ms);
  {
    int one = 1;
    int stray = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(stray, 0);
    ::setsockopt(stray, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(static_cast<std::uint16_t>(port));
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(stray, reinterpret_cast<sockaddr*>(&in), sizeof in), 0)
        << std::strerror(errno);
    ASSERT_EQ(::listen(stray, 16), 0);
    for (int i = 0; i < 10; ++i)
      EXPECT_EQ(http_get(port, "/pid").x_pid, b);
    ::close(stray);
  }
  // Again from b (its socket alone on the address once more).
  pid_t c = take_over(b, "reuseport-steering", "steering");
  EXPECT_EQ(http_get(port, "/pid").x_pid, c);
  auto g = http_get(port, "/generations");
  EXPECT_NE(g.body.find("2 " + std::to_string(c) + " serving"), std::string::npos) << g.body;
}

TEST_F(reuseport_test, five_steered_swaps_under_load_lose_nothing) {
  ENDLESS_PLAIN_BUILD_ONLY();
  five_swaps_under_load("reuseport", "steering", true);
}

TEST_F(reuseport_test, five_migrated_swaps_under_load_lose_nothing) {
  ENDLESS_PLAIN_BUILD_ONLY();
  enter_own_netns(1);
  if (HasFatalFailure()) return;
  // Listeners bound without SO_REUSEPORT: steering is impossible; the kernel's migration
  // alone keeps the queue (and reuseport-migrate asks for it on every later swap).
  five_swaps_under_load("reuseport-migrate", "migrate", false);
}

TEST_F(reuseport_test,
       a_process_that_fails_before_ready_leaves_the_old_one_serving_with_its_queue) {
  pid_t a = start_serving(true, {"--upgrade-timeout-ms", "1500"});
  pid_t load = start_load(port, "close", 50, 8, dir / "close.txt");
  std::this_thread::sleep_for(500ms);
  fail_a_takeover("noready", 1);
  if (HasFatalFailure()) return;
  fail_a_takeover("exit1-before-ready", 2);
  if (HasFatalFailure()) return;
  EXPECT_EQ(read_pid(pidfile), a);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, a);
  // Steered to the old socket all along: the new ones' queues held nothing to lose.
  expect_no_failures(load, dir / "close.txt");
}

// With migration, the failed process's socket had its share of new connections: the kernel
// moves them back to the old socket when it dies.
TEST_F(reuseport_test, with_migration_a_failed_process_queue_comes_back_to_the_old_one) {
  enter_own_netns(1);
  if (HasFatalFailure()) return;
  pid_t a = start_serving(false, {"--upgrade-timeout-ms", "1500"});
  pid_t load = start_load(port, "close", 50, 8, dir / "close.txt");
  std::this_thread::sleep_for(500ms);
  fail_a_takeover("noready", 1);
  if (HasFatalFailure()) return;
  EXPECT_EQ(count_lines(log, "net.ipv4.tcp_migrate_req=1 moves our queue when we close"), 1)
      << read_file(log);
  EXPECT_EQ(read_pid(pidfile), a);
  expect_no_failures(load, dir / "close.txt");
}

TEST_F(reuseport_test, without_steering_or_migration_the_mode_is_refused_and_nothing_changes) {
  enter_own_netns(0);
  if (HasFatalFailure()) return;
  pid_t a = start_serving(false);  // no SO_REUSEPORT: no steering; the sysctl is 0
  // Configured for SO_REUSEPORT itself: after the refusal it must not share the address.
  pid_t b = start_taking_over("reuseport", {"--reuseport", "1"});
  int status = 0;
  EXPECT_TRUE(procs.wait_gone(b, 10s, &status)) << "it can't bind the address";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_EQ(count_lines(log,
                        "an SO_REUSEPORT takeover needs steering or "
                        "net.ipv4.tcp_migrate_req=1 to keep the connections queued here, "
                        "and neither is available"),
            2)
      << "logged by both: " << read_file(log);
  EXPECT_EQ(count_lines(log, std::to_string(b) + " binding without SO_REUSEPORT"), 1)
      << read_file(log);
  // Asking for one mechanism by name: refused just as clearly.
  pid_t c = start_taking_over("reuseport-steering");
  EXPECT_TRUE(procs.wait_gone(c, 10s));
  EXPECT_EQ(count_lines(log, "steering was asked for and is not available: 127.0.0.1:" +
                                 std::to_string(port) +
                                 " was bound without SO_REUSEPORT (options::reuse_port)"),
            2)
      << read_file(log);
  EXPECT_EQ(read_pid(pidfile), a);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

// A crash of the new process during the probation (the default path: probation on): the old
// process takes the service back on its own socket, which new connections reach again.
TEST_F(reuseport_test, a_crash_during_the_probation_rolls_back_to_the_old_socket) {
  const std::string fault = dir / "fault";
  pid_t a = start({"--addr", "127.0.0.1:0", "--probation-ms", "5000", "--reuseport", "1"}, {},
                  HTTP_HELPER_PATH);
  write_file(fault, "crash-after-ready");
  processes::spec s;
  s.argv = {HTTP_HELPER_PATH, "--pidfile", pidfile, "--addr", "127.0.0.1:" + std::to_string(port),
            "--fault-file",   fault};
  s.env = {{"ENDLESS_TAKEOVER", sock()}, {"ENDLESS_TAKEOVER_MODE", "reuseport"}};
  s.log = log;
  pid_t b = procs.start(s);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "rolled back: serving again") == 1; }, 20s))
      << read_file(log);
  EXPECT_TRUE(procs.wait_gone(b, 5s));
  EXPECT_EQ(read_pid(pidfile), a);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, a);
  // And the next takeover goes through as usual.
  pid_t c = take_over(a, "reuseport", "steering");
  EXPECT_EQ(http_get(port, "/pid").x_pid, c);
}

// The first start of a pair (nothing at the control socket) does not silently join a group
// that another process holds on the port: its bind fails as it would without SO_REUSEPORT.
TEST_F(reuseport_test, a_first_start_does_not_share_a_port_someone_else_serves) {
  pid_t a = start_serving();
  processes::spec s;
  s.argv = {HTTP_HELPER_PATH,
            "--pidfile",
            dir / "other.pid",
            "--addr",
            "127.0.0.1:" + std::to_string(port),
            "--reuseport",
            "1"};
  s.env = {{"ENDLESS_TAKEOVER", dir / "nothing.ctl"}, {"ENDLESS_TAKEOVER_MODE", "reuseport"}};
  s.log = log;
  pid_t b = procs.start(s);
  int status = 0;
  EXPECT_TRUE(procs.wait_gone(b, 10s, &status));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_EQ(count_lines(log, "another socket listens there with SO_REUSEPORT; not sharing it"), 1)
      << read_file(log);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

TEST_F(reuseport_test, another_user_is_refused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  const std::string setpriv = run_command("command -v setpriv | tr -d '\\n'");
  if (setpriv.empty()) GTEST_SKIP() << "no setpriv";
  pid_t a = start_serving();
  ::chmod(dir.path.c_str(), 0777);
  ::chmod(log.c_str(), 0666);
  ASSERT_EQ(::chmod(sock().c_str(), 0666), 0);  // only SO_PEERCRED decides
  processes::spec s;
  s.argv = {setpriv,           "--reuid=65534",  "--regid=65534",
            "--clear-groups",  HTTP_HELPER_PATH, "--pidfile",
            dir / "other.pid", "--addr",         "127.0.0.1:" + std::to_string(port)};
  s.env = {{"ENDLESS_TAKEOVER", sock()}, {"ENDLESS_TAKEOVER_MODE", "reuseport"}};
  s.log = log;
  pid_t b = procs.start(s);
  EXPECT_TRUE(procs.wait_gone(b, 10s)) << "it can't bind the address the old one holds";
  EXPECT_EQ(count_lines(log, "control socket: refused a client of uid 65534"), 1) << read_file(log);
  EXPECT_EQ(count_lines(log, "SO_REUSEPORT takeover from " + sock() + " failed"), 1)
      << read_file(log);
  EXPECT_EQ(read_pid(pidfile), a);
  EXPECT_EQ(http_get(port, "/pid").x_pid, a);
}

}  // namespace
}  // namespace endless::test
