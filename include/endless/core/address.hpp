// Listen addresses: parsing `network` + `address` (Go's net.Listen forms) into a socket
// address, and checking that a socket is bound where a name says it should be.
//   tcp   ":8080" (all addresses, IPv6 dual-stack, IPv4 if the host has no IPv6),
//         "127.0.0.1:8080", "[::1]:8080", "localhost:8080" (IPv4 preferred, as Go does)
//   tcp4  IPv4 only;  tcp6  IPv6 only (IPV6_V6ONLY)
//   unix  a filesystem path, or "@name" for the Linux abstract namespace
// Thread safety: pure functions (resolution calls getaddrinfo, which is thread-safe).
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <system_error>

namespace endless::core {

enum class network { tcp, tcp4, tcp6, unix_stream };

struct endpoint {
  network net = network::tcp;
  sockaddr_storage addr{};
  socklen_t len = 0;
  bool any_port = false;  ///< port 0 was asked for: any bound port matches
  std::string name;       ///< registry name: "<network>:<address as given>", e.g. "tcp::8080"

  const sockaddr* sa() const noexcept { return reinterpret_cast<const sockaddr*>(&addr); }
};

/// Resolves `address` for `net`. On failure returns an error and, if `why` is given, a
/// sentence saying what is wrong with the input.
std::error_code resolve(std::string_view net, std::string_view address, endpoint& out,
                        std::string* why = nullptr);

/// True when `bound` (from getsockname) is the address `want` asks for.
bool same_address(const endpoint& want, const sockaddr* bound, socklen_t len) noexcept;

/// "127.0.0.1:8080", "[::1]:8080", "/run/app.sock", "@abstract".
std::string to_string(const sockaddr* sa, socklen_t len);

/// The bound address of a socket as text (getsockname), or "?" on error.
std::string local_address(int fd);

}  // namespace endless::core
