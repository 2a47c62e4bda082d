// noop_server: the "do-nothing ceiling" that bench/run.sh measures every server against.
//
// One thread, one level-triggered epoll set, non-blocking sockets from accept4. For every
// complete request in what one read returned (headers end at "\r\n\r\n"; benchmark requests
// have no body) it appends one canned response, then hands all of them to the kernel in one
// send, so 16 pipelined requests cost one recv and one send. It routes nothing, allocates
// nothing once a connection's buffers have grown, and parses only enough to honour
// `Connection: close` (RFC 9112 §9.6), without which the "close" scenario would measure
// keep-alive again for this server only. The CPU time it spends per request is therefore
// the floor set by the kernel's loopback TCP and epoll, the figure our server is compared
// with. It is a measuring stick, not a model: no timeouts, no limits beyond a header cap,
// no bodies, no HTTP/1.0 defaults.
//
// Usage: noop_server --addr 127.0.0.1:PORT   (or --addr [::1]:PORT)

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 21\r\nContent-Type: text/plain\r\n\r\n"
    "Hello Zero-Downtime!\n";
constexpr std::string_view kCloseResponse =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 21\r\nContent-Type: text/plain\r\n"
    "\r\nHello Zero-Downtime!\n";
constexpr std::string_view kEndOfHeaders = "\r\n\r\n";
constexpr std::size_t kReadSize = 64 * 1024;
// An incomplete request longer than this is garbage for a benchmark: drop the connection
// rather than buffer without bound.
constexpr std::size_t kMaxPending = 64 * 1024;
constexpr int kMaxEvents = 256;

struct connection {
  std::string in;   // the start of a request whose end has not arrived yet
  std::string out;  // responses the kernel has not taken yet
  bool want_write = false;
  bool close_after_write = false;
};

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != lower[i]) return false;
  }
  return true;
}

bool icontains(std::string_view haystack, std::string_view lower) {
  for (std::size_t i = 0; i + lower.size() <= haystack.size(); ++i) {
    if (iequals(haystack.substr(i, lower.size()), lower)) return true;
  }
  return false;
}

// head: request line and header lines, without the final empty line.
bool wants_close(std::string_view head) {
  constexpr std::string_view kName = "connection:";
  std::size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos) {
    pos += 2;
    std::size_t end = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, end == std::string_view::npos ? end : end - pos);
    if (line.size() >= kName.size() && iequals(line.substr(0, kName.size()), kName) &&
        icontains(line.substr(kName.size()), "close")) {
      return true;
    }
    pos = end;
  }
  return false;
}

class noop_server {
 public:
  noop_server(int listener, int epoll) : listener_(listener), epoll_(epoll) {}

  [[noreturn]] void run() {
    epoll_event events[kMaxEvents];
    for (;;) {
      int n = epoll_wait(epoll_, events, kMaxEvents, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("epoll_wait");
        std::exit(1);
      }
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == listener_) {
          on_acceptable();
          continue;
        }
        if ((events[i].events & EPOLLOUT) != 0 && !flush(fd)) continue;
        if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) on_readable(fd);
      }
    }
  }

 private:
  void on_acceptable() {
    for (;;) {
      int fd = accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        // EAGAIN: queue empty. EMFILE and the like: the listener stays readable (level-
        // triggered), so the next wait retries.
        if (errno != EAGAIN && errno != EWOULDBLOCK) std::perror("accept4");
        return;
      }
      // Each response goes out in one send; Nagle would only hold back the next batch
      // while the previous one waits for its ACK.
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
        std::perror("epoll_ctl(ADD)");
        close(fd);
        continue;
      }
      auto slot = static_cast<std::size_t>(fd);
      if (slot >= connections_.size()) connections_.resize(slot + 1);
      connections_[slot] = std::make_unique<connection>();
    }
  }

  // One read per wake-up: level-triggered epoll reports the rest, and a second read that
  // would only return EAGAIN is a syscall per request the ceiling should not pay.
  void on_readable(int fd) {
    connection& c = *connections_[static_cast<std::size_t>(fd)];
    ssize_t r = recv(fd, buffer_, kReadSize, 0);
    if (r <= 0) {
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      drop(fd);
      return;
    }
    std::string_view data(buffer_, static_cast<std::size_t>(r));
    if (!c.in.empty()) {
      c.in.append(data);
      data = c.in;
    }
    std::size_t pos = 0;
    for (;;) {
      std::size_t end = data.find(kEndOfHeaders, pos);
      if (end == std::string_view::npos) break;
      bool close = wants_close(data.substr(pos, end - pos));
      c.out.append(close ? kCloseResponse : kResponse);
      pos = end + kEndOfHeaders.size();
      if (close) {
        c.close_after_write = true;
        pos = data.size();  // nothing after a "Connection: close" request is answered
        break;
      }
    }
    std::size_t rest = data.size() - pos;
    if (rest > kMaxPending) {
      drop(fd);
      return;
    }
    if (c.in.empty()) {
      if (rest != 0) c.in.assign(data.substr(pos));
    } else {
      c.in.erase(0, pos);
    }
    if (!c.out.empty()) flush(fd);
  }

  // Returns false when the connection is gone.
  bool flush(int fd) {
    connection& c = *connections_[static_cast<std::size_t>(fd)];
    while (!c.out.empty()) {
      ssize_t w = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (!c.want_write) watch(fd, c, true);
          return true;
        }
        drop(fd);
        return false;
      }
      c.out.erase(0, static_cast<std::size_t>(w));
    }
    if (c.close_after_write) {
      drop(fd);
      return false;
    }
    if (c.want_write) watch(fd, c, false);
    return true;
  }

  void watch(int fd, connection& c, bool want_write) {
    epoll_event ev{};
    ev.events = want_write ? EPOLLIN | EPOLLOUT : EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_, EPOLL_CTL_MOD, fd, &ev) != 0) std::perror("epoll_ctl(MOD)");
    c.want_write = want_write;
  }

  void drop(int fd) {
    connections_[static_cast<std::size_t>(fd)].reset();
    close(fd);  // also removes it from the epoll set: nothing else holds a duplicate
  }

  int listener_;
  int epoll_;
  std::vector<std::unique_ptr<connection>> connections_;  // indexed by fd
  char buffer_[kReadSize];
};

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s --addr HOST:PORT   (HOST an IPv4 literal or [IPv6])\n", argv0);
  std::exit(2);
}

// Fills storage from "127.0.0.1:18080" or "[::1]:18080"; returns the address length, 0 if bad.
socklen_t parse_addr(std::string_view text, sockaddr_storage& storage) {
  std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == text.size()) return 0;
  std::string host(text.substr(0, colon));
  std::string port_text(text.substr(colon + 1));
  char* end = nullptr;
  long port = std::strtol(port_text.c_str(), &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) return 0;
  storage = {};
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<std::uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6->sin6_addr) != 1) {
      return 0;
    }
    return sizeof(sockaddr_in6);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  v4->sin_family = AF_INET;
  v4->sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) != 1) return 0;
  return sizeof(sockaddr_in);
}

}  // namespace

int main(int argc, char** argv) {
  std::string_view addr_text;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--addr" && i + 1 < argc) {
      addr_text = argv[++i];
    } else if (arg.starts_with("--addr=")) {
      addr_text = arg.substr(7);
    } else {
      usage(argv[0]);
    }
  }
  sockaddr_storage addr;
  socklen_t addr_len = addr_text.empty() ? 0 : parse_addr(addr_text, addr);
  if (addr_len == 0) usage(argv[0]);

  int listener = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listener < 0) {
    std::perror("socket");
    return 1;
  }
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    std::fprintf(stderr, "can't listen on %.*s: %s\n", static_cast<int>(addr_text.size()),
                 addr_text.data(), std::strerror(errno));
    return 1;
  }
  if (listen(listener, SOMAXCONN) != 0) {
    std::perror("listen");
    return 1;
  }
  int epoll = epoll_create1(EPOLL_CLOEXEC);
  if (epoll < 0) {
    std::perror("epoll_create1");
    return 1;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listener;
  if (epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &ev) != 0) {
    std::perror("epoll_ctl(ADD listener)");
    return 1;
  }
  // Like endless: "<pid> <addr>" once listening.
  std::printf("%d %.*s\n", static_cast<int>(getpid()), static_cast<int>(addr_text.size()),
              addr_text.data());
  std::fflush(stdout);

  // The 64 KiB read buffer lives in the object: keep it off the stack.
  auto server = std::make_unique<noop_server>(listener, epoll);
  server->run();
}
