// Bad input gets a clear error and never a half-working process: unparsable addresses,
// ports in use, inherited fds that are wrong, LISTEN_PID of another process, a parent that
// speaks another protocol version.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "fixture.hpp"

namespace endless::test {
namespace {

class bad_input_test : public core_fixture {
 protected:
  // Runs the helper to completion (or 10 s); returns its exit code, -1 if still running.
  int run(std::vector<std::string> args, std::map<std::string, std::string> env = {},
          std::vector<int> fds = {}, bool listen_pid_self = false) {
    processes::spec s;
    s.argv = {HELPER_PATH};
    s.argv.insert(s.argv.end(), args.begin(), args.end());
    s.env = std::move(env);
    s.log = log;
    s.pass_fds = std::move(fds);
    s.listen_pid_self = listen_pid_self;
    pid_t pid = procs.start(s);
    int status = 0;
    if (!procs.wait_gone(pid, 10s, &status)) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  static int listening_socket(int type, int* port) {
    int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&in), sizeof in), 0);
    if (type == SOCK_STREAM) {
      EXPECT_EQ(::listen(fd, 16), 0);
    }
    socklen_t len = sizeof in;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&in), &len);
    *port = ntohs(in.sin_port);
    return fd;
  }
};

TEST_F(bad_input_test, unparsable_address) {
  EXPECT_EQ(run({"--addr", "127.0.0.1:http"}), 1);
  EXPECT_EQ(count_lines(log, "can't listen on tcp '127.0.0.1:http': bad port 'http'"), 1)
      << read_file(log);
  EXPECT_EQ(run({"--addr", "::1:80"}), 1);
  EXPECT_EQ(count_lines(log, "needs brackets"), 1) << read_file(log);
}

TEST_F(bad_input_test, port_in_use) {
  int used = 0;
  int fd = listening_socket(SOCK_STREAM, &used);
  EXPECT_EQ(run({"--addr", "127.0.0.1:" + std::to_string(used)}), 1);
  EXPECT_EQ(count_lines(log, "can't listen on tcp:127.0.0.1:" + std::to_string(used) +
                                 ": bind: Address already in use"),
            1)
      << read_file(log);
  ::close(fd);
}

TEST_F(bad_input_test, inherited_fd_of_the_wrong_type) {
  int udp_port = 0;
  int udp = listening_socket(SOCK_DGRAM, &udp_port);
  EXPECT_EQ(run({"--addr", "127.0.0.1:0"},
                {{"LISTEN_FDS", "1"}, {"LISTEN_FDNAMES", "tcp%3A127.0.0.1%3A0"}}, {udp}, true),
            1);
  EXPECT_EQ(count_lines(log,
                        "inherited fd 3 named 'tcp:127.0.0.1:0' is not a listening stream "
                        "socket"),
            1)
      << read_file(log);
  ::close(udp);
}

TEST_F(bad_input_test, inherited_fd_bound_elsewhere) {
  int bound = 0, other = 0;
  int fd = listening_socket(SOCK_STREAM, &bound);
  int fd2 = listening_socket(SOCK_STREAM, &other);  // keeps `other` taken meanwhile
  std::string name = "tcp%3A127.0.0.1%3A" + std::to_string(other);
  EXPECT_EQ(run({"--addr", "127.0.0.1:" + std::to_string(other)},
                {{"LISTEN_FDS", "1"}, {"LISTEN_FDNAMES", name}}, {fd}, true),
            1);
  EXPECT_EQ(count_lines(log, "is bound to 127.0.0.1:" + std::to_string(bound) +
                                 ", not 127.0.0.1:" + std::to_string(other)),
            1)
      << read_file(log);
  ::close(fd);
  ::close(fd2);
}

TEST_F(bad_input_test, listen_pid_of_another_process_is_ignored) {
  int foreign = 0;
  int fd = listening_socket(SOCK_STREAM, &foreign);
  processes::spec s;
  s.argv = {HELPER_PATH, "--pidfile", pidfile, "--addr", "127.0.0.1:0"};
  s.env = {{"LISTEN_FDS", "1"}, {"LISTEN_PID", "1"}, {"LISTEN_FDNAMES", "tcp%3A127.0.0.1%3A0"}};
  s.log = log;
  s.pass_fds = {fd};
  pid_t pid = started(procs.start(s));
  EXPECT_EQ(count_lines(log, "ignoring LISTEN_FDS=1: LISTEN_PID=1 is not this process"), 1)
      << read_file(log);
  EXPECT_NE(port, foreign) << "used fds meant for another process";
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid);
  ::close(fd);
}

TEST_F(bad_input_test, parent_speaking_another_protocol_is_refused) {
  int port_taken = 0;
  int fd = listening_socket(SOCK_STREAM, &port_taken);
  std::string addr = "127.0.0.1:" + std::to_string(port_taken);
  EXPECT_EQ(
      run({"--addr", addr},
          {{"LISTEN_FDS", "1"},
           {"LISTEN_FDNAMES", "tcp%3A" + std::string("127.0.0.1%3A") + std::to_string(port_taken)},
           {"ENDLESS_PROTOCOL", "99"}},
          {fd}, true),
      1);
  EXPECT_EQ(count_lines(log, "it speaks endless upgrade protocol 99, this binary speaks 1"), 1)
      << read_file(log);
  ::close(fd);
}

}  // namespace
}  // namespace endless::test
