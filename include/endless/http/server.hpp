// endless::http::server: an HTTP/1.1, HTTP/2 and HTTPS server whose restarts lose nothing.
//
//   endless::http::router r;
//   r.get("/", [](auto&, auto& res) { res.text("Hello Zero-Downtime!\n"); });
//   return endless::http::listen_and_serve(":8080", r);
//
// A server listens through endless::core's registry (so its socket survives upgrades), runs
// its event loops, and drains when the process upgrades or shuts down: it stops accepting,
// ends every keep-alive connection with its next response (Connection: close), closes idle
// connections once they stayed idle through drain_grace, lets handlers finish, and is
// force-closed by the hammer. Several servers run from one binary with serve(a, b, ...):
// one upgrader, one set of signal hooks, one ready().
//
// Threads: `threads` event loops (default: the CPUs this process may run on), each running
// handlers inline. A handler may block (sleep, call a slow database): a monitor notices a
// loop stuck in one handler for more than ~10 ms and gives that loop a fresh thread, so other
// connections never wait; the blocked thread finishes its one request and retires.
// Thread safety: configure before serving; handlers run on loop threads concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "endless/core/upgrader.hpp"
#include "endless/http/message.hpp"
#include "endless/http/router.hpp"

namespace endless::http {

using namespace std::chrono_literals;

enum class conn_state { created, active, idle, closed };

enum class client_auth { none, optional, required };

/// HTTPS. A server with a certificate serves TLS 1.2 and 1.3 on its listener (OpenSSL), with
/// ALPN h2 (HTTP/2) and http/1.1. The listener survives upgrades like any other; the new
/// process loads the files again, so a deploy that changes them takes effect with it.
struct tls_options {
  std::string cert_file;  ///< PEM: the leaf first, then the intermediates; empty: no TLS
  std::string key_file;   ///< PEM
  /// More certificates, picked by the name the client asks for (SNI; the certificate's DNS
  /// names, "*.example.com" wildcards included); cert_file is used for any other name.
  std::vector<std::pair<std::string, std::string>> sni_certificates;  ///< {cert, key}
  /// Client certificates: verified against these CAs (PEM) when verify_client is not none.
  std::string client_ca_file;
  client_auth verify_client = client_auth::none;
  bool tls13_only = false;   ///< default: TLS 1.2 and 1.3
  std::string ciphers;       ///< TLS 1.2 list; empty: ECDHE/DHE with AES-GCM or ChaCha20
  std::string ciphersuites;  ///< TLS 1.3; empty: OpenSSL's default
  /// Reload the certificates when their files change (inotify on their directories, so
  /// atomic renames like certbot's are seen). reload_certificates() works either way.
  bool watch_files = true;
  /// A client that has not finished its handshake by then is closed; 0 = none.
  std::chrono::milliseconds handshake_timeout = 10s;
};

struct http2_options {
  bool enabled = true;     ///< offer h2 in ALPN on TLS listeners
  bool cleartext = false;  ///< h2c with prior knowledge on plain listeners (RFC 9113 §3.3)
  std::uint32_t max_concurrent_streams = 100;   ///< SETTINGS_MAX_CONCURRENT_STREAMS
  std::uint32_t initial_window_size = 1 << 20;  ///< per stream, for request bodies
  /// After the first GOAWAY of a drain, how long to wait for the PING's answer before the
  /// final GOAWAY (RFC 9113 §6.8 asks for at least one round trip).
  std::chrono::milliseconds goaway_wait = 1s;
};

struct server_options {
  std::string addr = ":8080";  ///< "host:port", or "unix:/path"
  /// The request body, from the end of the head (HTTP/2: while a stream's body is incomplete,
  /// without progress); 0 = none.
  std::chrono::milliseconds read_timeout = 0ms;
  /// Request head, from its first byte (or from accept); 0 = none. Closes slowloris clients.
  std::chrono::milliseconds read_header_timeout = 10s;
  /// Sending one response, while the client does not read; 0 = none.
  std::chrono::milliseconds write_timeout = 0ms;
  /// A keep-alive connection waiting for its next request; 0 = read_timeout's value.
  std::chrono::milliseconds idle_timeout = 120s;
  std::size_t max_header_bytes = 1 << 20;  ///< Go's DefaultMaxHeaderBytes; more: 431
  std::size_t max_body_bytes = 64 << 20;   ///< more: 413
  /// While draining, an idle connection is closed after it stayed idle this long (from its
  /// last response or from the start of the drain, whichever is later).
  std::chrono::milliseconds drain_grace = 1s;
  /// TCP_DEFER_ACCEPT on a TCP listener: a connection is taken once its first bytes are in
  /// (or after about a second without any), and served in the same step, without an epoll
  /// round trip. Off: taken as soon as the handshake completes.
  bool defer_accept = true;
  /// While draining after an upgrade, idle plain HTTP/1.1 keep-alive connections are passed to
  /// the new process (SCM_RIGHTS) instead of closed, so a client that sends just as the old
  /// process would have closed loses nothing; a busy one is passed on once its response is
  /// out (no Connection: close then). TLS and HTTP/2 connections drain as before. Also
  /// whether this process takes connections passed to it.
  bool hand_over_idle = true;
  int threads = 0;         ///< event loops; 0 = CPUs in this process's affinity mask
  int max_threads = 1024;  ///< cap on loop threads, blocked handlers included
  /// Process-wide, taken from the first server given to serve():
  std::chrono::milliseconds hammer_time = core::kDefaultHammerTime;
  std::chrono::milliseconds upgrade_timeout = core::kDefaultUpgradeTimeout;
  /// After a hand-over, how long the old process stands by to take the service back if the
  /// new one crashes (core::options::probation); 0: off.
  std::chrono::milliseconds probation = core::kDefaultProbation;
  /// Back-to-back upgrades (core::options::max_draining, max_draining_wait): at most this
  /// many older generations alive; an upgrade beyond waits for one, then hammers the oldest.
  int max_draining = core::kDefaultMaxDraining;
  std::chrono::milliseconds max_draining_wait = core::kDefaultMaxDrainingWait;
  std::string pid_file;
  /// Bind TCP listeners with SO_REUSEPORT (core::options::reuse_port): needed by the
  /// SO_REUSEPORT takeover's steering (ENDLESS_TAKEOVER_MODE=reuseport, docs/core.md).
  bool reuse_port = false;
  /// endlessctl's control socket (core::options::control_socket): unset, next to the pid
  /// file ("<pid file>.ctl"); empty, none.
  std::optional<std::string> control_socket;
  core::log_sink log;  ///< empty: stderr
  tls_options tls;
  http2_options http2;
};

/// A server's metrics as plain numbers (server::metrics()); the same as its /metrics page
/// (server::metrics_handler(), Prometheus text format 0.0.4). Counters carry over upgrades:
/// a new process starts from its old process's totals.
struct metrics_snapshot {
  /// Requests answered, by method (GET HEAD POST PUT DELETE OPTIONS PATCH other, in this
  /// order) and status class (1xx..5xx); a handler that threw counts as 5xx.
  std::uint64_t requests[8][5] = {};
  /// Request duration (handler start to end) histogram: per bucket (not cumulative), upper
  /// bounds 0.1 ms .. 10 s, then +Inf; and the sum.
  std::uint64_t duration_buckets[17] = {};
  double duration_seconds_sum = 0;
  std::uint64_t bytes_in = 0, bytes_out = 0;
  std::uint64_t tls_handshakes = 0, tls_handshake_failures = 0;
  /// This process (gauges, not carried): its connections by state.
  std::int64_t connections_new = 0, connections_active = 0, connections_idle = 0;
  /// The process lifecycle (core::upgrader), carried where they are counters.
  std::uint64_t restarts = 0;
  std::vector<std::pair<std::string, std::uint64_t>> restart_failures;  ///< by reason
  std::uint64_t generation = 0;
  std::uint64_t draining_processes = 0;            ///< older generations alive
  std::vector<core::generation_info> generations;  ///< each with its connections
  std::uint64_t drains = 0;                        ///< drains finished in this lineage
  double drain_seconds_sum = 0, last_drain_seconds = 0;

  std::uint64_t requests_total() const noexcept;
  std::int64_t active_connections() const noexcept {
    return connections_new + connections_active + connections_idle;
  }
};

/// Process-wide defaults copied into every server constructed afterwards (endless's
/// DefaultReadTimeOut, DefaultWriteTimeOut, DefaultMaxHeaderBytes, DefaultHammerTime).
server_options& defaults();

class server {
 public:
  explicit server(handler h);
  explicit server(const router& r);  ///< `r` must outlive the server
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  server_options& options() noexcept;
  server& addr(std::string a);
  server& read_timeout(std::chrono::milliseconds d);
  server& read_header_timeout(std::chrono::milliseconds d);
  server& write_timeout(std::chrono::milliseconds d);
  server& idle_timeout(std::chrono::milliseconds d);
  server& max_header_bytes(std::size_t n);
  server& max_body_bytes(std::size_t n);
  server& hammer_time(std::chrono::milliseconds d);
  server& threads(int n);
  server& pid_file(std::string path);
  /// HTTPS with this certificate (chain) and key; see tls_options for the rest.
  server& tls(std::string cert_file, std::string key_file);
  /// Another certificate, served to clients that ask for one of its names (SNI).
  server& add_certificate(std::string cert_file, std::string key_file);
  server& client_ca(std::string ca_file, client_auth mode = client_auth::required);
  server& h2c(bool on = true);

  /// Loads the certificate and key files again. New handshakes use them; connections already
  /// open keep theirs. If any file fails to load or a key does not match its certificate,
  /// the certificates in use stay, the reason is logged, and this throws (or returns false).
  /// Call while serving (from any thread).
  void reload_certificates();
  bool reload_certificates(std::error_code& ec) noexcept;

  /// Metrics (Prometheus text format 0.0.4 on GET): mount where you like, e.g.
  ///   r.get("/metrics", srv.metrics_handler());
  handler metrics_handler() const;
  metrics_snapshot metrics() const;
  /// Health: /healthz answers 200 while the process runs; /readyz 200 while it serves and 503
  /// from the moment it begins to drain (an upgrade handed over, or SIGTERM), so a load
  /// balancer's checks stop sending it new traffic. Off unless mounted.
  handler healthz_handler() const;
  handler readyz_handler() const;

  /// While serving: this process and its older generations still alive, oldest first, with
  /// each one's state and open connections (core::upgrader::generations()); empty otherwise.
  std::vector<core::generation_info> generations() const;

  /// Hooks. before_begin(addr) runs when the listener is ready (default: logs "<pid> <addr>");
  /// shutdown_initiated when the drain begins; on(pre_signal|post_signal, SIGUSR1, fn) around
  /// the handling of a signal; on_conn_state for every connection's transitions (runs on
  /// loop threads: keep it short and thread-safe).
  server& before_begin(std::function<void(std::string_view addr)> fn);
  server& shutdown_initiated(std::function<void()> fn);
  server& on(core::hook when, int signo, std::function<void()> fn);
  server& on_conn_state(std::function<void(std::uint64_t conn, conn_state)> fn);

  /// Serves until drained; returns the process exit code (0, or 1 after logging why).
  int listen_and_serve();
  int listen_and_serve(std::string_view addr);
  int listen_and_serve_tls(std::string_view addr, std::string cert_file, std::string key_file);

  struct impl;

 private:
  friend int serve(std::initializer_list<server*> servers);
  std::unique_ptr<impl> impl_;
};

int listen_and_serve(std::string_view addr, handler h);
int listen_and_serve(std::string_view addr, const router& r);
int listen_and_serve_tls(std::string_view addr, std::string cert_file, std::string key_file,
                         handler h);
int listen_and_serve_tls(std::string_view addr, std::string cert_file, std::string key_file,
                         const router& r);
/// Several servers from one binary; process-wide options come from the first.
int serve(std::initializer_list<server*> servers);

}  // namespace endless::http
