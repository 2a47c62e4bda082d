#include "sd_notify.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cstring>

#include "support/process.hpp"

namespace endless::core {
namespace {

int bound_dgram(const std::string& path, bool abstract) {
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::memcpy(un.sun_path, path.data(), path.size());
  if (abstract) un.sun_path[0] = '\0';
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&un),
                   static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size())),
            0);
  return fd;
}

std::string receive(int fd) {
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

TEST(sd_notify, sends_to_a_path) {
  test::temp_dir dir;
  int fd = bound_dgram(dir / "notify", false);
  notifier n(dir / "notify");
  ASSERT_TRUE(n.enabled());
  ASSERT_FALSE(n.notify("READY=1"));
  EXPECT_EQ(receive(fd), "READY=1");
  ::close(fd);
}

TEST(sd_notify, sends_to_an_abstract_socket) {
  std::string name = "@endless-test-" + std::to_string(::getpid());
  int fd = bound_dgram(name, true);
  ASSERT_FALSE(notifier(name).notify("STOPPING=1"));
  EXPECT_EQ(receive(fd), "STOPPING=1");
  ::close(fd);
}

TEST(sd_notify, disabled_without_a_socket_and_errors_when_nobody_listens) {
  EXPECT_FALSE(notifier().enabled());
  EXPECT_FALSE(notifier().notify("READY=1"));
  EXPECT_TRUE(notifier("/nonexistent/notify").notify("READY=1"));
}

TEST(sd_notify, monotonic_clock_moves_forward) {
  auto a = monotonic_usec();
  auto b = monotonic_usec();
  EXPECT_GT(a, 0u);
  EXPECT_LE(a, b);
}

}  // namespace
}  // namespace endless::core
