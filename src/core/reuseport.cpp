#include "reuseport.hpp"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "endless/core/address.hpp"

namespace endless::core::reuseport {
namespace {

constexpr int kBacklog = 4096;  // as the registry's

std::error_code last_error() noexcept {
  return {errno, std::system_category()};
}

}  // namespace

const char* to_string(mechanism m) noexcept {
  switch (m) {
    case mechanism::steering:
      return "steering";
    case mechanism::migrate:
      return "migrate";
    default:
      return "none";
  }
}

int migrate_req() noexcept {
  std::FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_migrate_req", "re");
  if (!f) return -1;
  int v = -1;
  if (std::fscanf(f, "%d", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}

bool is_tcp(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int type = 0;
  socklen_t tlen = sizeof type;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
         (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) &&
         ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_STREAM;
}

bool enabled(int fd) noexcept {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &v, &len) == 0 && v != 0;
}

std::error_code enable(int fd) noexcept {
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) return last_error();
  return {};
}

std::error_code steer(int fd, unsigned index) noexcept {
  sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, index}};
  sock_fprog prog{1, code};
  if (::setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) != 0) {
    return last_error();
  }
  return {};
}

void unsteer(int fd) noexcept {
  int unused = 0;
  (void)::setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &unused, sizeof unused);
}

int listeners_on(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  // /proc/net/tcp prints the address as the raw 32-bit words in hex, the port in host order.
  char want[64];
  const char* table;
  if (ss.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    std::snprintf(want, sizeof want, "%08X:%04X", in->sin_addr.s_addr, ntohs(in->sin_port));
    table = "/proc/net/tcp";
  } else if (ss.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    std::uint32_t w[4];
    std::memcpy(w, &in6->sin6_addr, sizeof w);
    std::snprintf(want, sizeof want, "%08X%08X%08X%08X:%04X", w[0], w[1], w[2], w[3],
                  ntohs(in6->sin6_port));
    table = "/proc/net/tcp6";
  } else {
    return -1;
  }
  std::ifstream in(table);
  if (!in) return -1;
  std::string line;
  std::getline(in, line);  // the header
  int count = 0;
  while (std::getline(in, line)) {
    // "  sl  local_address rem_address   st ..."
    char local[64], remote[64], st[8];
    if (std::sscanf(line.c_str(), " %*[0-9]: %63s %63s %7s", local, remote, st) != 3) continue;
    if (std::strcmp(st, "0A") == 0 && std::strcmp(local, want) == 0) ++count;
  }
  return count;
}

std::string describe(int fd, bool& v6only) {
  v6only = false;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  if (ss.ss_family == AF_INET6) {
    int v = 0;
    socklen_t vlen = sizeof v;
    v6only = ::getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, &vlen) == 0 && v != 0;
  }
  return core::to_string(reinterpret_cast<const sockaddr*>(&ss), len);
}

unique_fd bind(std::string_view address, bool v6only, std::string& why) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto colon = address.rfind(':');
  std::uint16_t port = 0;
  if (colon == std::string_view::npos ||
      std::from_chars(address.data() + colon + 1, address.data() + address.size(), port).ec !=
          std::errc{}) {
    why = "bad address " + std::string(address);
    return {};
  }
  std::string host(address.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    if (::inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6->sin6_addr) != 1) {
      why = "bad address " + std::string(address);
      return {};
    }
    len = sizeof *in6;
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &in->sin_addr) != 1) {
      why = "bad address " + std::string(address);
      return {};
    }
    len = sizeof *in;
  }
  unique_fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  auto fail = [&](const char* what) {
    why = "can't listen on " + std::string(address) + " with SO_REUSEPORT: " + what + ": " +
          std::strerror(errno);
    return unique_fd();
  };
  if (!fd) return fail("socket");
  int one = 1, v6 = v6only ? 1 : 0;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    return fail("SO_REUSEADDR");
  }
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    return fail("SO_REUSEPORT");
  }
  if (ss.ss_family == AF_INET6 &&
      ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) != 0) {
    return fail("IPV6_V6ONLY");
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return fail("bind");
  if (::listen(fd.get(), kBacklog) != 0) return fail("listen");
  return fd;
}

}  // namespace endless::core::reuseport
