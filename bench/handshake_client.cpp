// handshake_client: new TLS connections, one full handshake and one request each, for
// bench/run.sh's tls-handshakes scenario.
//
// wrk and h2load both resume TLS sessions when they reconnect (they keep the session of the
// previous connection: nginx logs $ssl_session_reused "r" for almost every connection of
// `wrk -H 'Connection: close'` over https), so neither measures full handshakes. This client
// builds every connection from a fresh SSL object with no session to offer, never stores one,
// and counts any resumption it sees (there must be none). Each connection is: TCP connect, a
// full handshake (TLS 1.3 only unless --tls 1.2), one `GET / HTTP/1.1` with
// `Connection: close`, the whole response (by Content-Length, or to EOF without one), a
// close_notify and close() — what wrk's plain `Connection: close` scenario does, over TLS.
// The certificate chain is not verified (as with wrk and h2load); the handshake signature is,
// as TLS requires. Session tickets the server sends are read and counted, then dropped.
//
// Usage: handshake_client --addr 127.0.0.1:PORT [-c CONNECTIONS] [-d SECONDS] [--tls 1.2|1.3]
//
// Prints, after the run (handshakes/s counts connections completed within the duration):
//   tls: TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 EC-256/prime256v1   (version, cipher, key
//        exchange group, the server certificate's key)
//   completed: N
//   resumed: 0
//   tickets per handshake: 2.00
//   errors: E (connect a, tls b, read c, status d)
//   duration: 10.000 s
//   handshakes/s: 5000.0
//   latency p50: 1200 us
//   latency p99: 3400 us
// Latency is from connect() to the last byte of the response.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;

struct counters {
  std::uint64_t handshakes = 0, completed = 0, resumed = 0, tickets = 0;
  std::uint64_t connect_errors = 0, tls_errors = 0, read_errors = 0, status_errors = 0;
  std::vector<std::uint32_t> latency_us;
  std::string tls;  // protocol, cipher, group, signature of the first connection
};

counters stats;

int on_new_session(SSL*, SSL_SESSION*) {
  ++stats.tickets;
  return 0;  // not kept: no later connection may resume
}

struct conn {
  enum class state { idle, connecting, handshaking, writing, reading };
  int fd = -1;
  SSL* ssl = nullptr;
  state st = state::idle;
  steady::time_point start;
  std::string in;
  std::size_t written = 0;
  std::uint32_t events = 0;
};

int ep = -1;
SSL_CTX* ctx = nullptr;
sockaddr_in target{};
std::string request;

void close_conn(conn& c, bool tls_shutdown) {
  if (c.ssl) {
    if (tls_shutdown) SSL_shutdown(c.ssl);  // one close_notify, no wait for the peer's
    SSL_free(c.ssl);
    c.ssl = nullptr;
  }
  if (c.fd >= 0) ::close(c.fd);  // also leaves the epoll set
  c.fd = -1;
  c.st = conn::state::idle;
  c.in.clear();
  c.written = 0;
  c.events = 0;
}

void want(conn& c, std::uint32_t events) {
  if (c.events == events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = &c;
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev) != 0) {
    std::perror("handshake_client: epoll_ctl");
    std::exit(1);
  }
  c.events = events;
}

bool open_conn(conn& c) {
  c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    ++stats.connect_errors;
    return false;
  }
  int one = 1;
  ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.start = steady::now();
  if (::connect(c.fd, reinterpret_cast<const sockaddr*>(&target), sizeof target) != 0 &&
      errno != EINPROGRESS) {
    ++stats.connect_errors;
    close_conn(c, false);
    return false;
  }
  c.st = conn::state::connecting;
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.ptr = &c;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    std::perror("handshake_client: epoll_ctl");
    std::exit(1);
  }
  c.events = EPOLLOUT;
  return true;
}

// The response is complete: headers, then Content-Length bytes (or EOF when there is none).
// Returns 1 complete, 0 not yet, -1 malformed.
int response_complete(const std::string& in, bool eof) {
  std::size_t end = in.find("\r\n\r\n");
  if (end == std::string::npos) return eof ? -1 : 0;
  std::string head = in.substr(0, end + 2);
  for (char& ch : head)
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  std::size_t at = head.find("\r\ncontent-length:");
  if (at == std::string::npos) return eof ? 1 : 0;
  std::size_t length = std::strtoull(head.c_str() + at + 17, nullptr, 10);
  return in.size() >= end + 4 + length ? 1 : (eof ? -1 : 0);
}

void record_tls(SSL* ssl) {
  if (!stats.tls.empty()) return;
  int group = static_cast<int>(SSL_get_negotiated_group(ssl));
  std::string key = "?";
  if (X509* cert = SSL_get0_peer_certificate(ssl)) {
    if (EVP_PKEY* pkey = X509_get0_pubkey(cert)) {
      char curve[64] = "";
      const char* type = EVP_PKEY_get0_type_name(pkey);
      key = std::string(type ? type : "?") + "-" + std::to_string(EVP_PKEY_get_bits(pkey));
      if (EVP_PKEY_get_group_name(pkey, curve, sizeof curve, nullptr) == 1)
        key += "/" + std::string(curve);
    }
  }
  stats.tls = std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl) + " " +
              (group ? OBJ_nid2sn(group) : "?") + " " + key;
}

void done(conn& c) {
  if (c.in.starts_with("HTTP/1.1 200 ")) {
    ++stats.completed;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - c.start);
    stats.latency_us.push_back(static_cast<std::uint32_t>(us.count()));
  } else {
    ++stats.status_errors;
  }
  close_conn(c, true);
}

// Moves one connection as far as it can go without blocking.
void drive(conn& c) {
  for (;;) {
    switch (c.st) {
      case conn::state::idle:
        return;
      case conn::state::connecting: {
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
          ++stats.connect_errors;
          close_conn(c, false);
          return;
        }
        c.ssl = SSL_new(ctx);
        if (!c.ssl || SSL_set_fd(c.ssl, c.fd) != 1) {
          std::fprintf(stderr, "handshake_client: SSL_new failed\n");
          std::exit(1);
        }
        SSL_set_connect_state(c.ssl);
        c.st = conn::state::handshaking;
        break;
      }
      case conn::state::handshaking:
      case conn::state::writing:
      case conn::state::reading: {
        int r;
        if (c.st == conn::state::handshaking) {
          r = SSL_do_handshake(c.ssl);
          if (r == 1) {
            ++stats.handshakes;
            if (SSL_session_reused(c.ssl)) ++stats.resumed;
            record_tls(c.ssl);
            c.st = conn::state::writing;
            continue;
          }
        } else if (c.st == conn::state::writing) {
          r = SSL_write(c.ssl, request.data() + c.written,
                        static_cast<int>(request.size() - c.written));
          if (r > 0) {
            c.written += static_cast<std::size_t>(r);
            if (c.written == request.size()) c.st = conn::state::reading;
            continue;
          }
        } else {
          char buf[4096];
          r = SSL_read(c.ssl, buf, sizeof buf);
          if (r > 0) {
            c.in.append(buf, static_cast<std::size_t>(r));
            int complete = response_complete(c.in, false);
            if (complete == 1) {
              done(c);
              return;
            }
            if (complete < 0) break;
            continue;
          }
        }
        int e = SSL_get_error(c.ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
          want(c, EPOLLIN);
          return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
          want(c, EPOLLOUT);
          return;
        }
        if (c.st == conn::state::reading &&
            (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) &&
            response_complete(c.in, true) == 1) {
          done(c);
          return;
        }
        if (c.st == conn::state::reading) {
          ++stats.read_errors;
        } else {
          ++stats.tls_errors;
        }
        ERR_clear_error();
        close_conn(c, false);
        return;
      }
    }
  }
}

int usage(const char* why) {
  std::fprintf(stderr,
               "handshake_client: %s\nusage: handshake_client --addr 127.0.0.1:PORT "
               "[-c CONNECTIONS] [-d SECONDS] [--tls 1.2|1.3]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr;
  int connections = 64;
  double seconds = 10;
  std::string version = "1.3";
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (i + 1 >= argc) return usage("missing value");
    const char* value = argv[++i];
    if (flag == "--addr") {
      addr = value;
    } else if (flag == "-c") {
      connections = std::atoi(value);
    } else if (flag == "-d") {
      seconds = std::atof(value);
    } else if (flag == "--tls") {
      version = value;
    } else {
      return usage("unknown flag");
    }
  }
  std::size_t colon = addr.rfind(':');
  if (colon == std::string::npos || connections < 1 || seconds <= 0 ||
      (version != "1.2" && version != "1.3")) {
    return usage("bad arguments");
  }
  target.sin_family = AF_INET;
  target.sin_port = htons(static_cast<std::uint16_t>(std::atoi(addr.c_str() + colon + 1)));
  if (::inet_pton(AF_INET, addr.substr(0, colon).c_str(), &target.sin_addr) != 1) {
    return usage("--addr wants an IPv4 address and a port");
  }
  request = "GET / HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n\r\n";

  ctx = SSL_CTX_new(TLS_client_method());
  int proto = version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, proto);
  SSL_CTX_set_max_proto_version(ctx, proto);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  // Tickets are received (the server's work) and counted, never stored: with
  // NO_INTERNAL_STORE and a callback that keeps nothing, no session can be offered later.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, on_new_session);

  ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<conn> conns(static_cast<std::size_t>(connections));
  stats.latency_us.reserve(1 << 20);
  const auto t0 = steady::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  for (conn& c : conns)
    open_conn(c);
  std::vector<epoll_event> events(static_cast<std::size_t>(connections));
  steady::time_point now = t0;
  std::uint64_t failed_opens = 0;
  while ((now = steady::now()) < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    int n = epoll_wait(ep, events.data(), connections,
                       static_cast<int>(std::min<long long>(left + 1, 100)));
    if (n < 0 && errno != EINTR) {
      std::perror("handshake_client: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; ++i)
      drive(*static_cast<conn*>(events[static_cast<std::size_t>(i)].data.ptr));
    for (conn& c : conns) {
      if (c.st == conn::state::idle && steady::now() < deadline && !open_conn(c)) {
        // Out of ports or descriptors: say so rather than spin.
        if (++failed_opens > 100000) {
          std::fprintf(stderr, "handshake_client: connect keeps failing: %s\n",
                       std::strerror(errno));
          return 1;
        }
      }
    }
  }
  const double elapsed = std::chrono::duration<double>(now - t0).count();
  for (conn& c : conns)
    close_conn(c, false);

  auto pct = [](std::vector<std::uint32_t>& v, double p) -> std::uint32_t {
    if (v.empty()) return 0;
    auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
  };
  std::uint64_t errors =
      stats.connect_errors + stats.tls_errors + stats.read_errors + stats.status_errors;
  std::printf("handshake_client: %d connections, %.0f s, TLS %s only, %s\n", connections, seconds,
              version.c_str(), addr.c_str());
  std::printf("tls: %s\n", stats.tls.empty() ? "none" : stats.tls.c_str());
  std::printf("completed: %llu\n", static_cast<unsigned long long>(stats.completed));
  std::printf("resumed: %llu\n", static_cast<unsigned long long>(stats.resumed));
  std::printf("tickets per handshake: %.2f\n",
              stats.handshakes
                  ? static_cast<double>(stats.tickets) / static_cast<double>(stats.handshakes)
                  : 0.0);
  std::printf("errors: %llu (connect %llu, tls %llu, read %llu, status %llu)\n",
              static_cast<unsigned long long>(errors),
              static_cast<unsigned long long>(stats.connect_errors),
              static_cast<unsigned long long>(stats.tls_errors),
              static_cast<unsigned long long>(stats.read_errors),
              static_cast<unsigned long long>(stats.status_errors));
  std::printf("duration: %.3f s\n", elapsed);
  std::printf("handshakes/s: %.1f\n", static_cast<double>(stats.completed) / elapsed);
  std::uint32_t p50 = pct(stats.latency_us, 0.50);
  std::uint32_t p99 = pct(stats.latency_us, 0.99);
  std::printf("latency p50: %u us\nlatency p99: %u us\n", p50, p99);
  SSL_CTX_free(ctx);
  ::close(ep);
  return stats.completed > 0 ? 0 : 1;
}
