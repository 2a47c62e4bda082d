// endless::core errors: one `enum class errc`, its category and `make_error_code`, so every
// failure inside the library is a `std::error_code` whose message says what went wrong.
// System failures stay `std::errc`/`std::system_category` codes; these are ours.
// Thread safety: everything here is immutable and safe to use from any thread.
#pragma once

#include <string>
#include <system_error>

namespace endless::core {

enum class errc {
  bad_address = 1,       ///< unparsable or unresolvable address
  unknown_network,       ///< not tcp, tcp4, tcp6 or unix
  inherited_mismatch,    ///< an inherited fd under this name is bound elsewhere
  inherited_wrong_type,  ///< an inherited fd is not a listening stream socket
  protocol_mismatch,     ///< the parent speaks another version of the upgrade protocol
  already_upgrading,     ///< an upgrade is running
  draining,              ///< this process is shutting down
  not_ready,             ///< the operation needs ready() first
  already_ready,         ///< ready() was called twice
  exec_failed,           ///< the new process could not be executed
  child_exited,          ///< the new process exited before it was ready
  ready_timeout,         ///< the new process was not ready within upgrade_timeout
  aborted,               ///< the upgrade was cancelled by a shutdown
};

const std::error_category& category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), category()};
}

/// Builds a std::system_error whose what() is "<context>: <message>".
[[noreturn]] void throw_error(std::error_code ec, const std::string& context);

}  // namespace endless::core

#ifndef ENDLESS_DOXYGEN
template <>
struct std::is_error_code_enum<endless::core::errc> : std::true_type {};
#endif
