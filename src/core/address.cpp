#include "endless/core/address.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstring>

#include "endless/core/error.hpp"

namespace endless::core {
namespace {

std::error_code fail(std::string* why, std::string text) {
  if (why) *why = std::move(text);
  return errc::bad_address;
}

bool has_ipv6() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

std::error_code resolve_unix(std::string_view address, endpoint& out, std::string* why) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (address.empty()) return fail(why, "unix socket path is empty");
  if (address.size() >= sizeof(un.sun_path)) {
    return fail(why, "unix socket path is longer than " + std::to_string(sizeof(un.sun_path) - 1) +
                         " bytes");
  }
  if (address.find('\0') != std::string_view::npos) {
    return fail(why, "unix socket path contains a NUL byte");
  }
  std::memcpy(un.sun_path, address.data(), address.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + address.size();
  if (address[0] == '@') {
    un.sun_path[0] = '\0';  // abstract namespace; the length bounds the name
  } else {
    len += 1;  // count the terminating NUL, as the kernel reports it back
  }
  std::memcpy(&out.addr, &un, sizeof un);
  out.len = len;
  return {};
}

}  // namespace

std::error_code resolve(std::string_view net, std::string_view address, endpoint& out,
                        std::string* why) {
  out = endpoint{};
  if (net == "tcp") {
    out.net = network::tcp;
  } else if (net == "tcp4") {
    out.net = network::tcp4;
  } else if (net == "tcp6") {
    out.net = network::tcp6;
  } else if (net == "unix") {
    out.net = network::unix_stream;
  } else {
    if (why) *why = "unknown network '" + std::string(net) + "' (want tcp, tcp4, tcp6 or unix)";
    return errc::unknown_network;
  }
  out.name = std::string(net) + ":" + std::string(address);
  if (out.net == network::unix_stream) return resolve_unix(address, out, why);

  // host:port, with the host in brackets for IPv6 literals.
  auto colon = address.rfind(':');
  if (colon == std::string_view::npos) {
    return fail(why, "missing port in address '" + std::string(address) + "'");
  }
  std::string_view host = address.substr(0, colon);
  std::string_view port = address.substr(colon + 1);
  if (!host.empty() && host.front() == '[') {
    if (host.back() != ']')
      return fail(why, "missing ']' in address '" + std::string(address) + "'");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return fail(why, "IPv6 address '" + std::string(address) + "' needs brackets: [host]:port");
  }
  unsigned port_number = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), port_number);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() ||
      port_number > 65535) {
    return fail(why, "bad port '" + std::string(port) + "' in address '" + std::string(address) +
                         "' (want 0-65535)");
  }
  out.any_port = port_number == 0;

  if (host.empty()) {
    bool v6 = out.net == network::tcp6 || (out.net == network::tcp && has_ipv6());
    if (v6) {
      sockaddr_in6 in6{};
      in6.sin6_family = AF_INET6;
      in6.sin6_addr = in6addr_any;
      in6.sin6_port = htons(static_cast<uint16_t>(port_number));
      std::memcpy(&out.addr, &in6, sizeof in6);
      out.len = sizeof in6;
    } else {
      sockaddr_in in{};
      in.sin_family = AF_INET;
      in.sin_addr.s_addr = htonl(INADDR_ANY);
      in.sin_port = htons(static_cast<uint16_t>(port_number));
      std::memcpy(&out.addr, &in, sizeof in);
      out.len = sizeof in;
    }
    return {};
  }

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  hints.ai_family = out.net == network::tcp4   ? AF_INET
                    : out.net == network::tcp6 ? AF_INET6
                                               : AF_UNSPEC;
  addrinfo* list = nullptr;
  std::string host_z(host);
  std::string port_z(port);
  int rc = ::getaddrinfo(host_z.c_str(), port_z.c_str(), &hints, &list);
  if (rc != 0) {
    return fail(why, "can't resolve host '" + host_z + "': " + ::gai_strerror(rc));
  }
  const addrinfo* pick = list;
  if (!pick) return fail(why, "host '" + host_z + "' has no address");
  for (const addrinfo* ai = list; ai; ai = ai->ai_next) {
    if (ai->ai_family == AF_INET) {  // Go prefers IPv4 for a name with both
      pick = ai;
      break;
    }
  }
  std::memcpy(&out.addr, pick->ai_addr, pick->ai_addrlen);
  out.len = pick->ai_addrlen;
  ::freeaddrinfo(list);
  return {};
}

bool same_address(const endpoint& want, const sockaddr* bound, socklen_t len) noexcept {
  if (bound->sa_family != want.addr.ss_family) return false;
  switch (bound->sa_family) {
    case AF_INET: {
      auto* a = reinterpret_cast<const sockaddr_in*>(&want.addr);
      auto* b = reinterpret_cast<const sockaddr_in*>(bound);
      return a->sin_addr.s_addr == b->sin_addr.s_addr &&
             (want.any_port || a->sin_port == b->sin_port);
    }
    case AF_INET6: {
      auto* a = reinterpret_cast<const sockaddr_in6*>(&want.addr);
      auto* b = reinterpret_cast<const sockaddr_in6*>(bound);
      return std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0 &&
             (want.any_port || a->sin6_port == b->sin6_port);
    }
    case AF_UNIX: {
      // Compare the path bytes; the kernel may or may not count a trailing NUL.
      auto path_of = [](const sockaddr* sa, socklen_t l) {
        auto* un = reinterpret_cast<const sockaddr_un*>(sa);
        size_t n = l > offsetof(sockaddr_un, sun_path) ? l - offsetof(sockaddr_un, sun_path) : 0;
        std::string_view p(un->sun_path, n);
        if (!p.empty() && p[0] != '\0') p = p.substr(0, p.find('\0'));
        return p;
      };
      return path_of(want.sa(), want.len) == path_of(bound, len);
    }
    default:
      return false;
  }
}

std::string to_string(const sockaddr* sa, socklen_t len) {
  char buf[INET6_ADDRSTRLEN] = {};
  switch (sa->sa_family) {
    case AF_INET: {
      auto* in = reinterpret_cast<const sockaddr_in*>(sa);
      ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
      return std::string(buf) + ":" + std::to_string(ntohs(in->sin_port));
    }
    case AF_INET6: {
      auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
      // Appended piecewise: "[" + std::string(...) makes GCC 12 at -O3 warn (-Wrestrict,
      // a false positive in its inlined string insert).
      std::string out = "[";
      out.append(buf).append("]:").append(std::to_string(ntohs(in6->sin6_port)));
      return out;
    }
    case AF_UNIX: {
      auto* un = reinterpret_cast<const sockaddr_un*>(sa);
      size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      if (n == 0) return "@";  // unnamed
      if (un->sun_path[0] == '\0') return std::string("@").append(un->sun_path + 1, n - 1);
      return std::string(un->sun_path, ::strnlen(un->sun_path, n));
    }
    default:
      return "family " + std::to_string(sa->sa_family);
  }
}

std::string local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return to_string(reinterpret_cast<sockaddr*>(&ss), len);
}

}  // namespace endless::core
