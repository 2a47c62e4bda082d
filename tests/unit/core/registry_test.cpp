#include "endless/core/registry.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <filesystem>

#include "endless/core/address.hpp"
#include "endless/core/error.hpp"
#include "startup.hpp"
#include "support/process.hpp"

namespace endless::core {
namespace {

ino_t inode(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return st.st_ino;
}

int port_of(int fd) {
  sockaddr_in in{};
  socklen_t len = sizeof in;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&in), &len);
  return ntohs(in.sin_port);
}

bool is_listening(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1;
}

// A listening socket as a previous process would pass it.
int listening_tcp(int port = 0) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&in), sizeof in), 0);
  EXPECT_EQ(::listen(fd, 8), 0);
  return fd;
}

TEST(registry, second_listen_on_an_address_shares_the_socket) {
  registry reg({});
  unique_fd probe = reg.listen("tcp", "127.0.0.1:0");
  std::string addr = "127.0.0.1:" + std::to_string(port_of(probe.get()));
  registry reg2({});
  probe.reset();
  reg.close_all(true);
  unique_fd a = reg2.listen("tcp", addr);
  ASSERT_TRUE(a);
  EXPECT_TRUE(is_listening(a.get()));
  unique_fd b = reg2.listen("tcp", addr);
  EXPECT_EQ(inode(a.get()), inode(b.get()));
  EXPECT_NE(a.get(), b.get()) << "each caller owns its own copy";
  ASSERT_EQ(reg2.handover().size(), 1u);
  EXPECT_EQ(reg2.handover()[0].name, "tcp:" + addr);
}

TEST(registry, each_listen_on_port_zero_is_its_own_socket) {
  registry reg({});
  unique_fd a = reg.listen("tcp", "127.0.0.1:0");
  unique_fd b = reg.listen("tcp", "127.0.0.1:0");
  EXPECT_NE(port_of(a.get()), port_of(b.get()));
  auto fds = reg.handover();
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_EQ(fds[0].name, "tcp:127.0.0.1:0");
  EXPECT_EQ(fds[1].name, "tcp:127.0.0.1:0#2");
  // The next process makes the same calls in the same order and gets the same sockets.
  registry next(
      {{fds[0].name, fds[0].fd.release(), false}, {fds[1].name, fds[1].fd.release(), false}}, true);
  unique_fd a2 = next.listen("tcp", "127.0.0.1:0");
  unique_fd b2 = next.listen("tcp", "127.0.0.1:0");
  EXPECT_EQ(inode(a2.get()), inode(a.get()));
  EXPECT_EQ(inode(b2.get()), inode(b.get()));
}

TEST(registry, ipv6_and_dual_stack_listeners) {
  int probe = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) GTEST_SKIP() << "no IPv6 on this host";
  ::close(probe);
  registry reg({});
  unique_fd v6 = reg.listen("tcp6", "[::1]:0");
  EXPECT_EQ(local_address(v6.get()).rfind("[::1]:", 0), 0u);
  unique_fd any = reg.listen("tcp", ":0");
  EXPECT_EQ(local_address(any.get()).rfind("[::]:", 0), 0u);
  int v6only = -1;
  socklen_t len = sizeof v6only;
  ::getsockopt(any.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len);
  EXPECT_EQ(v6only, 0) << "tcp ':port' must accept IPv4 too, as Go's does";
}

TEST(registry, inherited_socket_is_matched_by_name_and_checked) {
  int fd = listening_tcp();
  int port = port_of(fd);
  std::string addr = "127.0.0.1:" + std::to_string(port);
  registry reg({{"tcp:" + addr, fd, false}}, true);
  unique_fd got = reg.listen("tcp", addr);
  EXPECT_EQ(inode(got.get()), inode(fd));
  EXPECT_TRUE(reg.close_unclaimed().empty());
}

TEST(registry, inherited_socket_bound_elsewhere_is_an_error) {
  int fd = listening_tcp();
  int other = listening_tcp();  // a port we know is not `fd`'s
  std::string addr = "127.0.0.1:" + std::to_string(port_of(other));
  registry reg({{"tcp:" + addr, fd, false}}, true);
  std::error_code ec;
  std::string why;
  unique_fd got = reg.listen("tcp", addr, ec, why);
  EXPECT_FALSE(got);
  EXPECT_EQ(ec, errc::inherited_mismatch);
  EXPECT_EQ(why, "inherited fd " + std::to_string(fd) + " named 'tcp:" + addr +
                     "' is bound to 127.0.0.1:" + std::to_string(port_of(fd)) + ", not " + addr);
  EXPECT_THROW(reg.listen("tcp", addr), std::system_error);
  ::close(other);
}

TEST(registry, inherited_fd_of_the_wrong_type_is_an_error) {
  int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  registry reg({{"tcp:127.0.0.1:0", udp, false}}, true);
  std::error_code ec;
  EXPECT_FALSE(reg.listen("tcp", "127.0.0.1:0", ec));
  EXPECT_EQ(ec, errc::inherited_wrong_type);
}

TEST(registry, systemd_sockets_are_matched_by_address) {
  int fd = listening_tcp();
  std::string addr = "127.0.0.1:" + std::to_string(port_of(fd));
  registry reg({{"web.socket", fd, false}}, false);
  unique_fd got = reg.listen("tcp", addr);
  EXPECT_EQ(inode(got.get()), inode(fd));
  ASSERT_EQ(reg.handover().size(), 1u);
  EXPECT_EQ(reg.handover()[0].name, "tcp:" + addr) << "passed on under our name";
}

// The old process asked for port 0, the new one for the port it got: the same socket, not a
// second one beside it (with SO_REUSEPORT that one would join the group, and the unclaimed
// inherited one would close with its queue after ready).
TEST(registry, inherited_socket_named_for_port_zero_is_matched_by_its_address) {
  int fd = listening_tcp();
  std::string addr = "127.0.0.1:" + std::to_string(port_of(fd));
  registry reg({{"tcp:127.0.0.1:0", fd, false}}, true);
  reg.set_reuse_port(true);
  unique_fd got = reg.listen("tcp", addr);
  EXPECT_EQ(inode(got.get()), inode(fd));
  EXPECT_TRUE(reg.close_unclaimed().empty());
  ASSERT_EQ(reg.handover().size(), 1u);
  EXPECT_EQ(reg.handover()[0].name, "tcp:" + addr);
}

TEST(registry, reuse_port_binds_with_so_reuseport) {
  registry reg({}, false);
  unique_fd plain = reg.listen("tcp", "127.0.0.1:0");
  reg.set_reuse_port(true);
  unique_fd shared = reg.listen("tcp", "127.0.0.1:0");
  auto reuseport = [](int fd) {
    int v = 0;
    socklen_t len = sizeof v;
    ::getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &v, &len);
    return v;
  };
  EXPECT_EQ(reuseport(plain.get()), 0);
  EXPECT_EQ(reuseport(shared.get()), 1);
  // So another socket of ours can join its address; the plain one's can't be joined.
  int one = 1;
  for (auto [fd, joins] : {std::pair{shared.get(), true}, std::pair{plain.get(), false}}) {
    unique_fd other(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ::setsockopt(other.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in in{};
    socklen_t len = sizeof in;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&in), &len);
    EXPECT_EQ(::bind(other.get(), reinterpret_cast<sockaddr*>(&in), len) == 0, joins);
  }
}

TEST(registry, unclaimed_inherited_fds_are_closed_after_ready_and_not_passed_on) {
  int used = listening_tcp();
  int dropped = listening_tcp();
  std::string addr = "127.0.0.1:" + std::to_string(port_of(used));
  registry reg({{"tcp:" + addr, used, false}, {"tcp:old", dropped, false}}, true);
  (void)reg.listen("tcp", addr);
  EXPECT_EQ(reg.handover().size(), 1u);
  EXPECT_EQ(reg.close_unclaimed(), std::vector<std::string>{"tcp:old"});
  EXPECT_EQ(::fcntl(dropped, F_GETFD), -1) << "not closed";
}

TEST(registry, port_in_use_says_so) {
  int fd = listening_tcp();
  std::string addr = "127.0.0.1:" + std::to_string(port_of(fd));
  registry reg({});
  try {
    (void)reg.listen("tcp", addr);
    FAIL() << "listened on a port in use";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::address_in_use);
    EXPECT_EQ(std::string(e.what()),
              "can't listen on tcp:" + addr + ": bind: Address already in use");
  }
  ::close(fd);
}

TEST(registry, unix_socket_stale_path_is_replaced_live_one_is_in_use) {
  test::temp_dir dir;
  const std::string path = dir / "s.sock";
  {
    registry first({});
    (void)first.listen("unix", path);
    first.close_all(false);  // an upgrade: the path stays
    EXPECT_TRUE(std::filesystem::exists(path));
  }
  registry second({});
  unique_fd s = second.listen("unix", path);  // stale file from `first` is replaced
  EXPECT_TRUE(is_listening(s.get()));
  registry third({});
  std::error_code ec;
  std::string why;
  EXPECT_FALSE(third.listen("unix", path, ec, why));
  EXPECT_EQ(ec, std::errc::address_in_use);
  EXPECT_EQ(why, "can't listen on unix:" + path + ": another process is listening on it");
  second.close_all(true);  // a final shutdown removes the path it created
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(registry, unix_path_that_is_not_a_socket_is_left_alone) {
  test::temp_dir dir;
  const std::string path = dir / "file";
  test::write_file(path, "data");
  registry reg({});
  std::error_code ec;
  EXPECT_FALSE(reg.listen("unix", path, ec));
  EXPECT_EQ(ec, std::errc::address_in_use);
  EXPECT_EQ(test::read_file(path), "data");
}

TEST(registry, other_fds_are_added_and_taken_by_name) {
  registry reg({});
  int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  reg.add("udp:stats", udp);
  ASSERT_EQ(reg.handover().size(), 1u);
  EXPECT_EQ(inode(reg.handover()[0].fd.get()), inode(udp));
  unique_fd again = reg.take("udp:stats");
  EXPECT_EQ(inode(again.get()), inode(udp));
  EXPECT_FALSE(reg.take("nothing"));
  ::close(udp);
}

TEST(registry, bad_address_throws_with_the_reason) {
  registry reg({});
  try {
    (void)reg.listen("tcp", "localhost");
    FAIL();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), errc::bad_address);
    EXPECT_EQ(std::string(e.what()),
              "can't listen on tcp 'localhost': missing port in address 'localhost': bad address");
  }
}

}  // namespace
}  // namespace endless::core
