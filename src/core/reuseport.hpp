// SO_REUSEPORT takeover (internal; docs/core.md "Takeover with SO_REUSEPORT").
//
// Instead of passing its TCP listeners, the old process lets the new one bind its own
// sockets to the same addresses with SO_REUSEPORT. A socket that closes in a reuseport
// group resets the connections still in its own accept queue, so the old process never
// closes one while it may hold any. Two ways keep the queue:
//   steering  a classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF) returns the
//             index of the socket that gets each new connection: the old one's (0) until
//             the new process is ready, then the new one's (1). The old process then
//             accepts what is left in its queue and passes it on (protocol 'N').
//   migrate   with net.ipv4.tcp_migrate_req=1 the kernel moves a closing listener's queue
//             (and its handshakes in progress) to another socket of the group.
// Steering needs a group that exists before the new socket joins: listeners bound with
// SO_REUSEPORT from the start (options::reuse_port). It also needs the old socket to be the
// group's only member (index 0), which is checked in /proc/net/tcp{,6}.
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <system_error>

#include "endless/core/unique_fd.hpp"

namespace endless::core::reuseport {

enum class mechanism { none, steering, migrate };
const char* to_string(mechanism m) noexcept;

// net.ipv4.tcp_migrate_req in this network namespace: 1, 0, or -1 when unreadable.
int migrate_req() noexcept;

// Whether `fd` is a TCP (IPv4/IPv6) stream socket.
bool is_tcp(int fd) noexcept;
// SO_REUSEPORT on `fd`.
bool enabled(int fd) noexcept;
// Sets SO_REUSEPORT on `fd` (a listener already bound: lets another socket join its address).
std::error_code enable(int fd) noexcept;
// Steers every new connection of `fd`'s group to the socket at `index` (join order; a
// closing socket's slot is taken by the last one). An index past the end falls back to
// the kernel's hash. EINVAL: `fd` is not in a group (bound without SO_REUSEPORT).
std::error_code steer(int fd, unsigned index) noexcept;
// Takes a steering program off `fd`'s group (SO_DETACH_REUSEPORT_BPF): the kernel's hash
// again. None attached, or not in a group: nothing to do.
void unsteer(int fd) noexcept;
// How many sockets listen on `fd`'s exact local address (the group's size if all have
// SO_REUSEPORT), from /proc/net/tcp or tcp6; -1 when it can't be read.
int listeners_on(int fd) noexcept;

// The address to bind, as the old process sends it: "<ip>:<port>" or "[<ip6>]:<port>", and
// whether an IPv6 socket is v6-only (it must match the group's sockets).
std::string describe(int fd, bool& v6only);
// A new listener on `address` with SO_REUSEPORT (and SO_REUSEADDR, IPV6_V6ONLY as given),
// listening with the registry's backlog; empty with `why` on failure.
unique_fd bind(std::string_view address, bool v6only, std::string& why);

}  // namespace endless::core::reuseport
