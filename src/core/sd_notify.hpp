// systemd's notify protocol (internal): datagrams of "KEY=VALUE\n..." to $NOTIFY_SOCKET,
// a path or, with a leading '@', an abstract socket (sd_notify(3)). The sender's pid comes
// from the kernel's credentials, so which process sends a message matters: see
// upgrader.cpp for who says what during an upgrade. Thread safety: const and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

namespace endless::core {

class notifier {
 public:
  notifier() = default;
  explicit notifier(std::string socket_path) : path_(std::move(socket_path)) {}

  bool enabled() const noexcept { return !path_.empty(); }
  const std::string& path() const noexcept { return path_; }
  // No-op (success) when not enabled.
  std::error_code notify(std::string_view state) const;

 private:
  std::string path_;
};

std::uint64_t monotonic_usec() noexcept;

}  // namespace endless::core
