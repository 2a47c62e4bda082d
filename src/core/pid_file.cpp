#include "pid_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>

#include "endless/core/unique_fd.hpp"

namespace endless::core {

std::error_code stage_pid_file(const std::string& path, pid_t pid, std::string& staged) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::string text = std::to_string(pid) + "\n";
  std::error_code ec;
  {
    unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return {errno, std::system_category()};
    ssize_t n = ::write(fd.get(), text.data(), text.size());
    // No fsync: the rename already makes the switch atomic for readers, and a pid is
    // meaningless after a crash. An fsync here would put the disk's latency between the old
    // process stopping to accept and the new one starting (tens of ms on this machine).
    if (n != static_cast<ssize_t>(text.size())) {
      ec = n < 0 ? std::error_code(errno, std::system_category())
                 : std::make_error_code(std::errc::no_space_on_device);
    }
  }
  if (ec) {
    ::unlink(tmp.c_str());
    return ec;
  }
  staged = std::move(tmp);
  return {};
}

std::error_code commit_pid_file(const std::string& staged, const std::string& path) {
  if (::rename(staged.c_str(), path.c_str()) == 0) return {};
  std::error_code ec(errno, std::system_category());
  ::unlink(staged.c_str());
  return ec;
}

void discard_pid_file(const std::string& staged) {
  if (!staged.empty()) ::unlink(staged.c_str());
}

std::error_code write_pid_file(const std::string& path, pid_t pid) {
  std::string staged;
  if (auto ec = stage_pid_file(path, pid, staged)) return ec;
  return commit_pid_file(staged, path);
}

pid_t read_pid_file(const std::string& path) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return -1;
  char buf[32];
  ssize_t n = ::read(fd.get(), buf, sizeof buf);
  if (n <= 0) return -1;
  pid_t pid = -1;
  auto [end, err] = std::from_chars(buf, buf + n, pid);
  if (err != std::errc{} || end == buf) return -1;
  return pid;
}

bool remove_pid_file(const std::string& path, pid_t pid) {
  if (path.empty() || read_pid_file(path) != pid) return false;
  return ::unlink(path.c_str()) == 0;
}

}  // namespace endless::core
