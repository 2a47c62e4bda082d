// endless::core under another framework: examples/asio_beast (Boost.Beast on Boost.Asio)
// serves, upgrades on SIGHUP with no failed request, drains on SIGTERM, and is hammered,
// like the servers built on our own loop.
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "fixture.hpp"

namespace endless::test {
namespace {

class asio_test : public core_fixture {
 protected:
  pid_t start_asio(std::vector<std::string> args = {}) {
    args.insert(args.begin(), {"--addr", "127.0.0.1:0"});
    return start(args, {}, ASIO_BEAST_PATH);
  }
};

bool send_all(int fd, const std::string& bytes) {
  return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

const std::string kKeepAliveGet = "GET /pid HTTP/1.1\r\nHost: test\r\n\r\n";

// Waits (bounded) for the server to end the connection: EOF or a reset.
bool server_closes(int fd, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[512];
    if (::recv(fd, buf, sizeof buf, 0) <= 0) return true;
  }
}

TEST_F(asio_test, serves_root_pid_and_ping_with_x_pid) {
  pid_t pid = start_asio();
  ASSERT_GT(port, 0) << read_file(log);
  auto root = http_get(port, "/");
  ASSERT_TRUE(root.ok) << root.error;
  EXPECT_EQ(root.status, 200);
  EXPECT_EQ(root.body, "Hello Zero-Downtime!\n");
  EXPECT_EQ(root.x_pid, pid);
  auto p = http_get(port, "/pid");
  ASSERT_TRUE(p.ok) << p.error;
  EXPECT_EQ(p.body, std::to_string(pid));
  EXPECT_EQ(p.x_pid, pid);
  EXPECT_EQ(get_body("/ping?seq=7"), "pong-7");
  auto missing = http_get(port, "/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.x_pid, pid);
}

TEST_F(asio_test, ping_waits_without_blocking_other_connections) {
  start_asio();
  // in_flight's own check (a second connection answered while this one waits) proves it.
  in_flight slow(port, "/ping?seq=3&ms=1500");
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(http_get(port, "/").ok);
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "pong-3");
}

TEST_F(asio_test, keep_alive_serves_several_requests_on_one_connection) {
  pid_t pid = start_asio();
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(send_all(fd, kKeepAliveGet));
    auto r = read_response(fd, 5000);
    ASSERT_TRUE(r.ok) << "request " << i << ": " << r.error;
    EXPECT_EQ(r.x_pid, pid);
    EXPECT_NE(r.connection, "close");
  }
  // Two pipelined in one write: both answered, in order.
  ASSERT_TRUE(send_all(fd, kKeepAliveGet + "GET /ping?seq=9 HTTP/1.1\r\nHost: test\r\n\r\n"));
  EXPECT_EQ(read_response(fd, 5000).body, std::to_string(pid));
  EXPECT_EQ(read_response(fd, 5000).body, "pong-9");
  ::close(fd);
}

TEST_F(asio_test, sighup_hands_over_and_the_in_flight_request_completes) {
  pid_t old = start_asio();
  in_flight slow(port, "/ping?seq=1&ms=1500");
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "pong-1");
  EXPECT_EQ(r.x_pid, old);
  EXPECT_TRUE(procs.wait_gone(old, 10s)) << "old process " << old << " did not exit\n"
                                         << read_file(log);
  for (int i = 0; i < 20; ++i) {
    auto after = http_get(port, "/");
    ASSERT_TRUE(after.ok) << "request " << i << ": " << after.error;
    EXPECT_EQ(after.x_pid, next);
  }
  EXPECT_EQ(read_pid(pidfile), next);
}

// Asio accepts without SOCK_CLOEXEC; a connection accepted that way would live on in the new
// process after the old one closed it, and its client would never see the end.
TEST_F(asio_test, idle_keep_alive_connection_is_closed_by_the_drain) {
  pid_t old = start_asio();
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, kKeepAliveGet));
  auto r = read_response(fd, 5000);
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.x_pid, old);
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  EXPECT_TRUE(server_closes(fd, 10s)) << "the idle connection of the old process stayed open";
  EXPECT_TRUE(procs.wait_gone(old, 10s)) << read_file(log);
  ::close(fd);
}

TEST_F(asio_test, tight_connect_loop_sees_no_failure_over_three_upgrades) {
  pid_t pid = start_asio();
  tight_client client(port, "Hello Zero-Downtime!\n");
  upgrades_under(client, pid, 3);
}

TEST_F(asio_test, sigterm_drains_the_in_flight_request_and_exits) {
  pid_t pid = start_asio();
  in_flight slow(port, "/ping?seq=2&ms=1500", /*keep_alive=*/true);
  ::kill(pid, SIGTERM);
  // It stops accepting at once; the request in flight still completes.
  ASSERT_TRUE(wait_until([&] { return !http_get(port, "/").ok; }, 5s));
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "pong-2");
  EXPECT_EQ(r.x_pid, pid);
  EXPECT_EQ(r.connection, "close") << "a draining process must end keep-alive";
  int status = 0;
  ASSERT_TRUE(procs.wait_gone(pid, 10s, &status)) << read_file(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(std::filesystem::exists(pidfile)) << "final shutdown keeps the pid file";
  EXPECT_EQ(count_lines(log, "Hammer Time"), 0);
}

TEST_F(asio_test, hammer_closes_a_request_that_outlives_the_hammer_time) {
  pid_t pid = start_asio({"--hammer-time", "1"});
  in_flight slow(port, "/ping?seq=4&ms=10000");
  ::kill(pid, SIGTERM);
  // Well before the request's 10 s.
  ASSERT_TRUE(procs.wait_gone(pid, 6s)) << read_file(log);
  auto r = slow.finish(5000);
  EXPECT_FALSE(r.ok) << "the hammer let the request finish: " << r.body;
  EXPECT_EQ(count_lines(log, "Hammer Time"), 1) << read_file(log);
}

}  // namespace
}  // namespace endless::test
