// A NOTIFY_SOCKET of a test's own (sd_notify's datagram socket), reading each sender's pid
// from SCM_CREDENTIALS: what systemd would see, in order.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace endless::test {

struct notify_message {
  pid_t pid;
  std::string text;
};

// A NOTIFY_SOCKET of our own, reading the sender's pid from SCM_CREDENTIALS.
class notify_socket {
 public:
  explicit notify_socket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::snprintf(un.sun_path, sizeof un.sun_path, "%s", path.c_str());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&un), sizeof un), 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  }
  ~notify_socket() { ::close(fd_); }

  // Everything received so far.
  const std::vector<notify_message>& read() {
    for (;;) {
      char buf[4096];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
      iovec iov{buf, sizeof buf};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(fd_, &msg, 0);
      if (n < 0) break;
      pid_t pid = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
          ucred cred;
          std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
          pid = cred.pid;
        }
      }
      messages_.push_back({pid, std::string(buf, static_cast<size_t>(n))});
    }
    return messages_;
  }

  bool saw(pid_t pid, const std::string& text) {
    for (const auto& m : read()) {
      if (m.pid == pid && m.text == text) return true;
    }
    return false;
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<notify_message> messages_;
};

}  // namespace endless::test
