// The engine of h2gen_client.hpp: connections (TCP, TLS, nghttp2), stream slots, and the
// classification of each stream's end. nghttp2 callbacks only record; refilling, closing and
// reconnecting happen after nghttp2_session_mem_recv() returns, so no callback re-enters.
#include "h2gen_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>

namespace h2gen {
namespace {

using std::chrono::milliseconds;
using ull = unsigned long long;  // for printf

std::int64_t nanos(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

double ms_between(time_point a, time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

constexpr int kLoggedFailures = 8;  // described on stderr; the rest are only counted
constexpr std::size_t kMaxPidLength = 64;
constexpr std::size_t kOutChunk = 64 * 1024;    // bytes taken from nghttp2 per write batch
constexpr milliseconds kConnectRetryDelay{10};  // after a failed attempt: no busy loop
constexpr std::int32_t kNoticeLastStreamId = std::numeric_limits<std::int32_t>::max();

// The first queued OpenSSL error, or `fallback`. Clears the queue.
std::string ssl_error_text(const char* fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

bool is_ip_literal(const std::string& host) {
  in6_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

// ---------------------------------------------------------------------------------------------
// TLS: one context for every connection. ALPN offers h2 only (RFC 9113 §3.2); TLS 1.2 or later
// (§9.2).

SSL_CTX* make_tls_context(const config& cfg, std::string& err) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    err = "SSL_CTX_new: " + ssl_error_text("failed");
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // A close without close_notify is an EOF like any other: the stream accounting judges it.
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
  if (SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof kAlpn) != 0) {  // 0 means success here
    err = "can't set ALPN: " + ssl_error_text("failed");
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (cfg.insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    return ctx;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  bool loaded = cfg.cacert.empty()
                    ? SSL_CTX_set_default_verify_paths(ctx) == 1
                    : SSL_CTX_load_verify_locations(ctx, cfg.cacert.c_str(), nullptr) == 1;
  if (!loaded) {
    err = "can't load CA certificates " + (cfg.cacert.empty() ? "" : "from " + cfg.cacert + " ") +
          ": " + ssl_error_text("failed");
    SSL_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

// SNI only for a name: RFC 6066 §3 forbids an IP literal there. The certificate must match the
// name or the address.
bool setup_tls(SSL* ssl, const config& cfg) {
  bool ip = is_ip_literal(cfg.host);
  if (!ip) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
    if (SSL_set_tlsext_host_name(ssl, cfg.host.c_str()) != 1) return false;
#pragma GCC diagnostic pop
  }
  if (cfg.insecure) return true;
  if (ip) return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), cfg.host.c_str()) == 1;
  return SSL_set1_host(ssl, cfg.host.c_str()) == 1;
}

// ---------------------------------------------------------------------------------------------
// Connections and streams

struct stream_slot {
  std::int32_t id = 0;  // 0: free
  time_point start;
  int status = 0;
  bool complete = false;  // END_STREAM received: the response is whole
  bool counted = false;   // outcome recorded (timed out); waiting for nghttp2 to close it
  bool rst = false;       // RST_STREAM received from the server
  std::uint32_t rst_code = 0;
  bool has_pid = false;
  std::string pid;
};

enum class phase { unused, connecting, handshaking, open };

class client;

struct h2conn {
  client* owner = nullptr;
  std::uint32_t index = 0;  // in the pool
  std::uint32_t gen = 0;    // bumped on close: epoll events for an older use are ignored
  std::uint64_t id = 0;     // attempt number, for logs
  int fd = -1;
  phase ph = phase::unused;
  int logical = -1;  // the load slot it carries; -1 once it drains (after a GOAWAY) or fails
  SSL* ssl = nullptr;
  nghttp2_session* ng = nullptr;
  bool want_out = false;     // EPOLLOUT is in the interest set
  bool established = false;  // the server's SETTINGS arrived: it speaks HTTP/2
  bool goaway = false;
  std::int32_t goaway_last_id = 0;  // the lowest last-stream-id received
  time_point opened;
  time_point goaway_at;
  std::string out;  // bytes from nghttp2 not yet written
  std::size_t out_pos = 0;
  std::vector<stream_slot> streams;
  int in_flight = 0;  // slots in use
};

class client {
 public:
  client(const config& cfg, SSL_CTX* tls, const std::atomic<bool>& interrupted, run_result& out)
      : cfg_(cfg),
        tls_(tls),
        interrupted_(interrupted),
        out_(out),
        stats_(out.s),
        pool_(2 * static_cast<std::size_t>(cfg.connections) + 8),
        timeout_(cfg.timeout_ms),
        scan_interval_(std::clamp(cfg.timeout_ms / 10, 1, 100)),
        fields_{":method",    "GET",          ":scheme", cfg.tls ? "https" : "http",
                ":authority", cfg.authority,  ":path",   cfg.path,
                "user-agent", "endless-h2gen"} {
    for (std::size_t i = 0; i < pool_.size(); ++i) {
      pool_[i].owner = this;
      pool_[i].index = static_cast<std::uint32_t>(i);
      pool_[i].streams.resize(static_cast<std::size_t>(cfg.streams));
      free_.push_back(static_cast<std::uint32_t>(pool_.size() - 1 - i));
    }
    for (std::size_t i = 0; i < fields_.size(); i += 2) {
      auto bytes = [](const std::string& s) {
        return const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(s.data()));
      };
      nv_[i / 2] = {
          bytes(fields_[i]), bytes(fields_[i + 1]), fields_[i].size(), fields_[i + 1].size(),
          static_cast<std::uint8_t>(NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE)};
    }
  }
  ~client() {
    for (h2conn& c : pool_)
      release(c);
    if (callbacks_) nghttp2_session_callbacks_del(callbacks_);
    if (epfd_ >= 0) ::close(epfd_);
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  std::string open() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) return "epoll_create1: " + errno_text(errno);
    if (nghttp2_session_callbacks_new(&callbacks_) != 0) return "nghttp2: out of memory";
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks_, on_frame_recv);
    nghttp2_session_callbacks_set_on_header_callback(callbacks_, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks_, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks_, on_frame_not_send);
    return "";
  }

  const std::string& fatal() const { return fatal_; }

  void run() {
    start_ = out_.start = clock_type::now();
    out_.start_wall = std::chrono::system_clock::now();
    deadline_ = start_ + std::chrono::duration_cast<clock_type::duration>(
                             std::chrono::duration<double>(cfg_.duration_s));
    for (int i = 0; i < cfg_.connections; ++i)
      reopen_.push_back({start_, i});
    next_scan_ = start_ + scan_interval_;
    std::array<epoll_event, 256> events{};
    // Ends once stopped with no connection left, or at the hard deadline: every stream is
    // bounded by its timeout and the drain by hard_deadline_.
    for (;;) {
      time_point now = clock_type::now();
      if (!fatal_.empty()) break;
      if (interrupted_.load(std::memory_order_relaxed) || now >= deadline_) begin_stop(now);
      if (stopping_ && open_ == 0) break;
      if (stopping_ && now >= hard_deadline_) {
        abandon_all();
        break;
      }
      start_due(now);
      again_.swap(again_pass_);  // connections that stopped reading with input left
      for (std::uint64_t key : again_pass_)
        if (h2conn* c = conn_of(key); c && c->ph == phase::open && do_read(*c)) after_io(*c);
      again_pass_.clear();
      if (now >= next_scan_) {
        scan(now);
        next_scan_ = now + scan_interval_;
      }
      int n = ::epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), wait_ms(now));
      for (int i = 0; i < n; ++i)
        if (h2conn* c = conn_of(events[i].data.u64)) on_event(*c, events[i].events);
    }
    out_.end = clock_type::now();
  }

 private:
  struct reopen_at {
    time_point at;
    int logical;
  };

  static std::uint64_t key_of(const h2conn& c) { return std::uint64_t{c.gen} << 32 | c.index; }

  h2conn* conn_of(std::uint64_t key) {
    auto index = static_cast<std::uint32_t>(key);
    if (index >= pool_.size()) return nullptr;
    h2conn& c = pool_[index];
    return c.ph != phase::unused && c.gen == key >> 32 ? &c : nullptr;
  }

  int wait_ms(time_point now) const {
    if (!again_.empty()) return 0;
    time_point next = next_scan_;  // at most 100 ms away: the interrupt flag gets polled
    if (!stopping_) next = std::min(next, deadline_);
    if (stopping_) next = std::min(next, hard_deadline_);
    // With the pool full a replacement waits for a close, which an event or a scan brings.
    for (const reopen_at& r : reopen_)  // at most N entries
      if (!free_.empty()) next = std::min(next, r.at);
    if (next <= now) return 0;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(next - now).count();
    return static_cast<int>((us + 999) / 1000);  // rounded up, or we would spin until due
  }

  // printf-style line on stderr, stamped with the time since the start.
  __attribute__((format(printf, 2, 3))) void note(const char* fmt, ...) const {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "h2gen: %9.3f ms: %s\n", ms_between(start_, clock_type::now()), line);
  }

  // ------------------------------------------------------------------------- lifecycle

  // No new stream from here on; streams in flight finish or time out.
  void begin_stop(time_point now) {
    if (stopping_) return;
    stopping_ = true;
    hard_deadline_ = now + timeout_ + std::chrono::seconds(1);
    reopen_.clear();
    for (h2conn& c : pool_)
      if (c.ph == phase::connecting || c.ph == phase::handshaking ||
          (c.ph == phase::open && c.in_flight == 0))
        close_conn(c, "run over");
  }

  // The drain ran out of time: whatever is still open timed out.
  void abandon_all() {
    for (h2conn& c : pool_) {
      if (c.ph != phase::open) {
        release(c);
        continue;
      }
      for (stream_slot& s : c.streams)
        if (s.id != 0 && !s.counted) count_failure(c, s, failure::timeout, "still open at the end");
      close_conn(c, "drain over");
    }
  }

  // Opens connections whose time has come; those the full pool cannot take yet stay queued.
  void start_due(time_point now) {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < reopen_.size(); ++i) {  // bounded: at most N entries
      if (reopen_[i].at > now || free_.empty() || stopping_) {
        reopen_[kept++] = reopen_[i];
        continue;
      }
      do_connect(reopen_[i].logical);
    }
    reopen_.resize(kept);
  }

  void do_connect(int logical) {
    h2conn& c = pool_[free_.back()];
    free_.pop_back();
    if (++stats_.connections > std::uint64_t(cfg_.connections)) ++stats_.reconnects;
    c.id = stats_.connections;
    c.logical = logical;
    c.opened = clock_type::now();
    c.established = c.goaway = c.want_out = false;
    c.goaway_last_id = kNoticeLastStreamId;
    c.in_flight = 0;
    c.out.clear();
    c.out_pos = 0;
    c.ph = phase::connecting;
    ++open_;
    c.fd = ::socket(cfg_.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return fail_attempt(c, failure::connect_fail, "socket: " + errno_text(errno));
    int one = 1;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&cfg_.addr), cfg_.addr_len);
    if (rc != 0 && errno != EINPROGRESS)
      return fail_attempt(c, failure::connect_fail, "connect: " + errno_text(errno));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u64 = key_of(c);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0)
      return fail_attempt(c, failure::connect_fail, "epoll_ctl: " + errno_text(errno));
    c.want_out = true;
    if (rc == 0) on_connected(c);
  }

  void on_event(h2conn& c, std::uint32_t events) {
    if (c.ph == phase::connecting) return on_connected(c);
    if (c.ph == phase::handshaking) return do_handshake(c);
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !do_read(c)) return;
    after_io(c);
  }

  void on_connected(h2conn& c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return fail_attempt(c, failure::connect_fail, "connect: " + errno_text(err));
    if (!cfg_.tls) return start_h2(c);
    c.ssl = SSL_new(tls_);
    if (!c.ssl || SSL_set_fd(c.ssl, c.fd) != 1 || !setup_tls(c.ssl, cfg_))
      return fail_attempt(c, failure::tls_fail, "TLS setup: " + ssl_error_text("failed"));
    SSL_set_connect_state(c.ssl);
    c.ph = phase::handshaking;
    do_handshake(c);
  }

  void do_handshake(h2conn& c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c.ssl);
    if (r != 1) {
      int e = SSL_get_error(c.ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return set_want_out(c, e == SSL_ERROR_WANT_WRITE);
      bool no_h2 = ERR_GET_REASON(ERR_peek_error()) == SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL;
      std::string why =
          "TLS handshake: " + ssl_error_text(e == SSL_ERROR_SYSCALL ? "EOF or reset" : "failed");
      long v = SSL_get_verify_result(c.ssl);
      if (v != X509_V_OK) why += std::string(" (") + X509_verify_cert_error_string(v) + ")";
      // Before any success it is the setup that is wrong, not a restart: stop right away.
      if (!ever_established_ && v != X509_V_OK) fatal_ = why + "; see --cacert and --insecure";
      if (!ever_established_ && no_h2) fatal_ = why + ": the server does not offer h2 by ALPN";
      return fail_attempt(c, failure::tls_fail, why);
    }
    const unsigned char* proto = nullptr;
    unsigned int proto_len = 0;
    SSL_get0_alpn_selected(c.ssl, &proto, &proto_len);
    if (proto_len != 2 || std::memcmp(proto, "h2", 2) != 0) {
      std::string got =
          proto_len ? "'" + std::string(reinterpret_cast<const char*>(proto), proto_len) + "'"
                    : "no protocol";
      std::string why = "the server did not select h2 by ALPN (it chose " + got + ")";
      // Before any success it is the setup that is wrong, not a restart: stop right away.
      if (!ever_established_) fatal_ = why;
      return fail_attempt(c, failure::tls_fail, why);
    }
    start_h2(c);
  }

  void start_h2(h2conn& c) {
    if (nghttp2_session_client_new(&c.ng, callbacks_, &c) != 0) {
      fatal_ = "nghttp2_session_client_new failed";
      return close_conn(c, "nghttp2 out of memory");
    }
    // The client preface ends with our SETTINGS (RFC 9113 §3.4); no push wanted.
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(c.ng, NGHTTP2_FLAG_NONE, iv, 1);
    c.ph = phase::open;
    after_io(c);
  }

  // Refill, write, and close when the connection has nothing left to do.
  void after_io(h2conn& c) {
    fill(c);
    if (std::string why; !flush(c, why)) return lost_connection(c, why);
    if (c.out_pos == c.out.size() && !nghttp2_session_want_read(c.ng) &&
        !nghttp2_session_want_write(c.ng))
      return close_conn(c, "session over");
    // Drained after a GOAWAY (or at the end of the run): nothing left to wait for.
    if (c.in_flight == 0 && (c.logical < 0 || stopping_)) return close_conn(c, "drained");
  }

  // Keeps min(M, the server's SETTINGS_MAX_CONCURRENT_STREAMS) streams open. Beyond the
  // server's limit nghttp2 would hold requests back, and a GOAWAY would then refuse requests
  // the server never saw: a loss of our own making.
  void fill(h2conn& c) {
    if (stopping_ || c.logical < 0) return;
    std::uint32_t limit = std::min<std::uint32_t>(
        static_cast<std::uint32_t>(cfg_.streams),
        nghttp2_session_get_remote_settings(c.ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS));
    time_point now = clock_type::now();
    for (stream_slot& s : c.streams) {  // bounded: M slots
      if (static_cast<std::uint32_t>(c.in_flight) >= limit) return;
      if (s.id != 0) continue;
      if (!nghttp2_session_check_request_allowed(c.ng)) return;
      std::int32_t id = nghttp2_submit_request(c.ng, nullptr, nv_.data(), nv_.size(), nullptr, &s);
      if (id < 0) {  // stream ids used up (RFC 9113 §5.1.1): carry on on a new connection
        if (cfg_.verbose) note("conn %llu: can't submit: %s", ull(c.id), nghttp2_strerror(id));
        detach(c);
        return;
      }
      s.id = id;
      s.start = now;
      s.status = 0;
      s.complete = s.counted = s.rst = s.has_pid = false;
      s.rst_code = 0;
      ++c.in_flight;
    }
  }

  // The connection carries no more new streams: a replacement takes its load slot at once.
  void detach(h2conn& c) {
    if (c.logical < 0) return;
    if (!stopping_) reopen_.push_back({clock_type::now(), c.logical});
    c.logical = -1;
  }

  // Reads what the socket (and TLS) hold, up to 16 reads, then lets other connections run.
  // false: the connection was closed.
  bool do_read(h2conn& c) {
    for (int pass = 0; pass < 16; ++pass) {
      std::string why;
      long n = transport_read(c, why);
      if (n == 0) return true;
      if (n < 0) {
        lost_connection(c, why);
        return false;
      }
      ssize_t r = nghttp2_session_mem_recv(c.ng, reinterpret_cast<const std::uint8_t*>(buf_.data()),
                                           static_cast<std::size_t>(n));
      if (r < 0) {
        std::string ignored;
        (void)flush(c, ignored);  // nghttp2 queued a GOAWAY saying why
        lost_connection(c, std::string("protocol error: ") + nghttp2_strerror(static_cast<int>(r)));
        return false;
      }
    }
    again_.push_back(key_of(c));
    return true;
  }

  // > 0: bytes in buf_; 0: nothing now; < 0: the connection is over, `why` says how.
  long transport_read(h2conn& c, std::string& why) {
    if (!c.ssl) {
      ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
      if (n > 0) return n;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
      why = n == 0 ? "EOF" : errno_text(errno);
      return -1;
    }
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(c.ssl, buf_.data(), static_cast<int>(buf_.size()));
    if (n > 0) return n;
    switch (SSL_get_error(c.ssl, n)) {
      case SSL_ERROR_WANT_READ:
        return 0;
      case SSL_ERROR_WANT_WRITE:
        set_want_out(c, true);
        return 0;
      case SSL_ERROR_ZERO_RETURN:
        why = "EOF";
        return -1;
      case SSL_ERROR_SYSCALL:
        why = errno != 0 ? errno_text(errno) : "EOF";
        return -1;
      default:
        why = "TLS: " + ssl_error_text("error");
        return -1;
    }
  }

  // > 0: bytes written; 0: not now; < 0: failed, `why` says how.
  long transport_write(h2conn& c, const char* p, std::size_t n, std::string& why) {
    if (!c.ssl) {
      ssize_t w = ::send(c.fd, p, n, MSG_NOSIGNAL);
      if (w >= 0) return w;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
      why = "send: " + errno_text(errno);
      return -1;
    }
    ERR_clear_error();
    errno = 0;
    int w = SSL_write(c.ssl, p, static_cast<int>(std::min<std::size_t>(n, INT32_MAX)));
    if (w > 0) return w;
    int e = SSL_get_error(c.ssl, w);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return 0;
    why = e == SSL_ERROR_SYSCALL ? "send: " + (errno != 0 ? errno_text(errno) : "EOF")
                                 : "TLS: " + ssl_error_text("error");
    return -1;
  }

  // Writes what nghttp2 has to send, in batches of up to 64 KiB; EPOLLOUT while some is left.
  bool flush(h2conn& c, std::string& why) {
    for (int pass = 0; pass < 64; ++pass) {
      if (c.out_pos == c.out.size()) {
        c.out.clear();
        c.out_pos = 0;
        while (c.out.size() < kOutChunk) {  // bounded: each pass takes bytes or ends
          const std::uint8_t* p = nullptr;
          ssize_t n = nghttp2_session_mem_send(c.ng, &p);
          if (n < 0) {
            why = std::string("nghttp2: ") + nghttp2_strerror(static_cast<int>(n));
            return false;
          }
          if (n == 0) break;
          c.out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
        }
        if (c.out.empty()) {
          set_want_out(c, false);
          return true;
        }
      }
      long w = transport_write(c, c.out.data() + c.out_pos, c.out.size() - c.out_pos, why);
      if (w < 0) return false;
      if (w == 0) break;
      c.out_pos += static_cast<std::size_t>(w);
    }
    set_want_out(c, true);  // more to write: on the next EPOLLOUT
    return true;
  }

  void set_want_out(h2conn& c, bool on) {
    if (c.want_out == on) return;
    epoll_event ev{};
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.u64 = key_of(c);
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
    c.want_out = on;
  }

  // Times out streams, and connection attempts, that took too long.
  void scan(time_point now) {
    for (h2conn& c : pool_) {
      if (c.ph == phase::connecting && now - c.opened >= timeout_) {
        fail_attempt(c, failure::connect_fail, "connect timed out");
      } else if (c.ph == phase::handshaking && now - c.opened >= timeout_) {
        fail_attempt(c, failure::tls_fail, "TLS handshake timed out");
      } else if (c.ph == phase::open) {
        bool stuck = false;
        for (stream_slot& s : c.streams) {
          if (s.id == 0 || now - s.start < timeout_) continue;
          // Cancelled a timeout ago and nghttp2 still could not close it: the peer is gone.
          if (s.counted) stuck = stuck || now - s.start >= 2 * timeout_;
          if (s.counted) continue;
          count_failure(c, s, failure::timeout, "no complete response in time");
          s.counted = true;
          nghttp2_submit_rst_stream(c.ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CANCEL);
        }
        if (stuck)
          close_conn(c, "unresponsive");
        else
          after_io(c);
      }
    }
  }

  // The transport or the session failed under an open connection.
  void lost_connection(h2conn& c, const std::string& why) {
    // No server has sent its SETTINGS yet: it does not speak HTTP/2 here. Stop right away.
    if (!ever_established_ && !c.established)
      fatal_ = "the server ended the connection before its SETTINGS (" + why +
               (cfg_.tls ? "): does it speak HTTP/2?"
                         : "): does it speak HTTP/2 with prior knowledge (h2c)?");
    close_conn(c, why);
  }

  // A connection attempt failed before carrying any stream.
  void fail_attempt(h2conn& c, failure kind, const std::string& why) {
    ++stats_.failures[static_cast<std::size_t>(kind)];
    if (logged_ < kLoggedFailures) {
      ++logged_;
      note("failure %s on conn %llu: %s", kFailureNames[std::size_t(kind)], ull(c.id), why.c_str());
    }
    close_conn(c, why);
  }

  // The connection is over: streams still open that no GOAWAY released were lost.
  void close_conn(h2conn& c, const std::string& why) {
    if (c.ph == phase::unused) return;
    int lost = 0;
    if (c.ph == phase::open) {
      for (stream_slot& s : c.streams) {
        if (s.id == 0 || s.counted) continue;
        if (c.goaway && s.id > c.goaway_last_id) {
          count_refusal(c, s, refusal::by_goaway, why.c_str());
        } else {
          ++lost;
          count_failure(c, s, failure::lost_in_flight, why.c_str());
        }
      }
    }
    if (cfg_.verbose)
      note("conn %llu closed (%s) after %.1f ms, %d lost, goaway %s", ull(c.id), why.c_str(),
           ms_between(c.opened, clock_type::now()), lost, c.goaway ? "yes" : "no");
    if (c.logical >= 0 && !stopping_) {
      // Straight after a connection that worked (the server closed an idle one); after one
      // that never did, a little later, so a server that is down is not hammered in a loop.
      time_point at = clock_type::now() + (c.established ? milliseconds(0) : kConnectRetryDelay);
      reopen_.push_back({at, c.logical});
    }
    c.logical = -1;
    release(c);
  }

  void release(h2conn& c) {
    if (c.ng) nghttp2_session_del(c.ng);  // calls no callback
    c.ng = nullptr;
    if (c.ssl) SSL_free(c.ssl);
    c.ssl = nullptr;
    if (c.fd >= 0) ::close(c.fd);  // also leaves the epoll set: the fd is never duplicated
    c.fd = -1;
    for (stream_slot& s : c.streams)
      s.id = 0;
    c.in_flight = 0;
    if (c.ph == phase::unused) return;
    c.ph = phase::unused;
    ++c.gen;
    --open_;
    free_.push_back(c.index);
  }

  // ------------------------------------------------------------------------- outcomes

  void count_failure(const h2conn& c, const stream_slot& s, failure kind, const char* why) {
    ++stats_.failures[static_cast<std::size_t>(kind)];
    if (logged_ >= kLoggedFailures) return;
    ++logged_;
    time_point now = clock_type::now();
    char goaway[96] = "no GOAWAY";
    if (c.goaway)
      std::snprintf(goaway, sizeof goaway, "GOAWAY last-stream-id %d %.1f ms before",
                    c.goaway_last_id, ms_between(c.goaway_at, now));
    note("failure %s: conn %llu stream %d, open %.1f ms, %s: %s", kFailureNames[std::size_t(kind)],
         ull(c.id), s.id, ms_between(s.start, now), goaway, why);
  }

  void count_refusal(const h2conn& c, const stream_slot& s, refusal how, const char* why) {
    ++stats_.refusals[static_cast<std::size_t>(how)];
    std::string detail = std::string(kRefusalNames[std::size_t(how)]) + ", " + why;
    count_failure(c, s, failure::refused_unprocessed, detail.c_str());
  }

  void on_complete(const h2conn& c, const stream_slot& s) {
    time_point now = clock_type::now();
    if (s.status >= 200 && s.status < 300) {
      ++stats_.ok;
      if (c.goaway) ++stats_.ok_after_goaway;
      stats_.latency.record(static_cast<std::uint64_t>(nanos(now - s.start)));
    } else {
      char why[32];
      std::snprintf(why, sizeof why, "status %d", s.status);
      count_failure(c, s, failure::bad_status, why);
    }
    if (s.has_pid) stats_.record_pid(s.pid, nanos(now - start_));
  }

  // RFC 9113 §6.8: a GOAWAY's last-stream-id never grows; streams above it were not
  // processed (nghttp2 closes them with REFUSED_STREAM right after this callback).
  void on_goaway(h2conn& c, const nghttp2_goaway& g) {
    ++stats_.goaways;
    if (g.last_stream_id == kNoticeLastStreamId) ++stats_.goaway_notices;
    if (!c.goaway) c.goaway_at = clock_type::now();
    c.goaway = true;
    c.goaway_last_id = std::min(c.goaway_last_id, g.last_stream_id);
    if (cfg_.verbose)
      note("conn %llu GOAWAY last-stream-id %d error %s, %d in flight", ull(c.id), g.last_stream_id,
           nghttp2_http2_strerror(g.error_code), c.in_flight);
    if (g.error_code != NGHTTP2_NO_ERROR && logged_ < kLoggedFailures) {
      ++logged_;
      note("conn %llu: GOAWAY with error %s", ull(c.id), nghttp2_http2_strerror(g.error_code));
    }
    detach(c);
  }

  // ------------------------------------------------------------------------- nghttp2 callbacks
  // They only record. user_data is the h2conn; a stream's user data its slot, valid while the
  // slot's id matches.

  static stream_slot* slot_of(nghttp2_session* ng, std::int32_t id) {
    auto* s = static_cast<stream_slot*>(nghttp2_session_get_stream_user_data(ng, id));
    return s && s->id == id ? s : nullptr;
  }

  static int on_frame_recv(nghttp2_session* ng, const nghttp2_frame* f, void* user_data) {
    auto& c = *static_cast<h2conn*>(user_data);
    switch (f->hd.type) {
      case NGHTTP2_HEADERS:
      case NGHTTP2_DATA:
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
          if (stream_slot* s = slot_of(ng, f->hd.stream_id)) s->complete = true;
        break;
      case NGHTTP2_RST_STREAM:
        if (stream_slot* s = slot_of(ng, f->hd.stream_id)) {
          s->rst = true;
          s->rst_code = f->rst_stream.error_code;
        }
        break;
      case NGHTTP2_GOAWAY:
        c.owner->on_goaway(c, f->goaway);
        break;
      case NGHTTP2_SETTINGS:  // the server preface (RFC 9113 §3.4): it speaks HTTP/2
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) c.established = c.owner->ever_established_ = true;
        break;
      case NGHTTP2_PING:
        if (c.owner->cfg_.verbose && !(f->hd.flags & NGHTTP2_FLAG_ACK))
          c.owner->note("conn %llu PING", ull(c.id));
        break;
      default:
        break;
    }
    return 0;
  }

  static int on_header(nghttp2_session* ng, const nghttp2_frame* f, const std::uint8_t* name,
                       std::size_t namelen, const std::uint8_t* value, std::size_t valuelen,
                       std::uint8_t, void*) {
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    stream_slot* s = slot_of(ng, f->hd.stream_id);
    if (!s) return 0;
    std::string_view n(reinterpret_cast<const char*>(name), namelen);
    std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":status") {
      // nghttp2 has checked it is three digits (RFC 9113 §8.3.2); interim ones get replaced.
      std::from_chars(v.data(), v.data() + v.size(), s->status);
    } else if (n == "x-pid") {  // HTTP/2 field names are lower case (§8.2.1)
      s->pid.assign(v.substr(0, kMaxPidLength));
      s->has_pid = true;
    }
    return 0;
  }

  static int on_stream_close(nghttp2_session* ng, std::int32_t id, std::uint32_t code,
                             void* user_data) {
    auto& c = *static_cast<h2conn*>(user_data);
    stream_slot* s = slot_of(ng, id);
    if (!s) return 0;  // already settled (not sent)
    client& cl = *c.owner;
    if (s->counted) {
      // Timed out earlier: already counted.
    } else if (s->complete) {
      cl.on_complete(c, *s);  // a RST_STREAM after END_STREAM changes nothing (§8.1)
    } else if (s->rst && s->rst_code == NGHTTP2_REFUSED_STREAM) {
      cl.count_refusal(c, *s, refusal::by_rst, "RST_STREAM(REFUSED_STREAM)");
    } else if (s->rst) {
      std::string why = std::string("RST_STREAM(") + nghttp2_http2_strerror(s->rst_code) + ")";
      cl.count_failure(c, *s, failure::stream_reset, why.c_str());
    } else if (code == NGHTTP2_REFUSED_STREAM && c.goaway && id > c.goaway_last_id) {
      cl.count_refusal(c, *s, refusal::by_goaway, "above the GOAWAY's last-stream-id");
    } else {
      std::string why = std::string("reset by nghttp2: ") + nghttp2_http2_strerror(code);
      cl.count_failure(c, *s, failure::protocol_error, why.c_str());
    }
    s->id = 0;
    --c.in_flight;
    return 0;
  }

  // A request HEADERS nghttp2 could not send, because a GOAWAY came first: the server never
  // saw it. Settled here, as not every nghttp2 version then reports the stream closed.
  static int on_frame_not_send(nghttp2_session*, const nghttp2_frame* f, int lib_error,
                               void* user_data) {
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    auto& c = *static_cast<h2conn*>(user_data);
    for (stream_slot& s : c.streams) {  // bounded: M slots; the stream may not exist in nghttp2
      if (s.id != f->hd.stream_id) continue;
      if (!s.counted) c.owner->count_refusal(c, s, refusal::unsent, nghttp2_strerror(lib_error));
      s.id = 0;
      --c.in_flight;
      break;
    }
    return 0;
  }

  const config& cfg_;
  SSL_CTX* tls_;
  const std::atomic<bool>& interrupted_;
  run_result& out_;
  stats& stats_;                     // out_.s
  std::vector<h2conn> pool_;         // never resized: nghttp2 and epoll hold pointers and indices
  std::vector<std::uint32_t> free_;  // unused pool entries
  std::vector<reopen_at> reopen_;    // load slots waiting for a connection
  std::vector<std::uint64_t> again_, again_pass_;  // connections to read again next pass
  const milliseconds timeout_;
  const milliseconds scan_interval_;
  std::array<std::string, 10> fields_;  // request pseudo-headers and headers, name then value
  std::array<nghttp2_nv, 5> nv_{};
  nghttp2_session_callbacks* callbacks_ = nullptr;
  int epfd_ = -1;
  int open_ = 0;  // pool entries in use
  int logged_ = 0;
  bool stopping_ = false;
  bool ever_established_ = false;
  std::string fatal_;
  time_point start_, deadline_, hard_deadline_, next_scan_;
  std::array<char, 16 * 1024> buf_{};  // one TLS record's worth
};

}  // namespace

std::string run(const config& cfg, const std::atomic<bool>& interrupted, run_result& out) {
  std::string err;
  SSL_CTX* tls = nullptr;
  if (cfg.tls && !(tls = make_tls_context(cfg, err))) return err;
  {
    client cl(cfg, tls, interrupted, out);
    err = cl.open();
    if (err.empty()) {
      cl.run();
      err = cl.fatal();
    }
  }
  if (tls) SSL_CTX_free(tls);
  return err;
}

}  // namespace h2gen
