#include "sd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include "endless/core/unique_fd.hpp"

namespace endless::core {

std::error_code notifier::notify(std::string_view state) const {
  if (path_.empty()) return {};
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (path_.size() >= sizeof un.sun_path) return std::make_error_code(std::errc::filename_too_long);
  std::memcpy(un.sun_path, path_.data(), path_.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + path_.size();
  if (path_[0] == '@') un.sun_path[0] = '\0';
  unique_fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return {errno, std::system_category()};
  ssize_t n = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                       reinterpret_cast<sockaddr*>(&un), len);
  if (n < 0) return {errno, std::system_category()};
  return {};
}

std::uint64_t monotonic_usec() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace endless::core
