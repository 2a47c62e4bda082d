// The HTTP server the integration tests start: hello's routes plus test routes.
//   --addr A (repeatable: several servers from one binary)  --pidfile F  --threads N
//   --read-header-timeout-ms N  --idle-timeout-ms N  --write-timeout-ms N
//   --max-body N  --hammer-time S  --drain-grace-ms N  --read-timeout-ms N  --log-states 1
//   --defer-accept 0|1  --probation-ms N  --hand-over 0|1  --max-draining N
//   --max-draining-wait-ms N  --start-delay-ms N (sleeps before serving)
//   --access-log 1 (http::access_log() to stderr)  --control-socket PATH ("" for none)
//   --reuseport 1 (SO_REUSEPORT listeners)  --upgrade-timeout-ms N
//   --fault-file F: read at start; "crash-after-ready" makes this process crash (SIGSEGV)
//   1 s after it is ready, i.e. after the pid file names it (needs --pidfile);
//   "exit-after-ready" makes it exit with status 0 at that time instead (not a crash);
//   "exit1-before-ready" exits 1 and "noready" sleeps 30 s before it serves at all;
//   "no-hand-over" turns hand_over_idle off in this process.
//   --tls-cert F --tls-key F  --sni-cert F --sni-key F (repeatable)  --client-ca F
//   --verify-client none|optional|required  --handshake-timeout-ms N  --tls13-only 1
//   --h2c 1  --h2 0  --max-streams N  --goaway-wait-ms N  --watch 0  --max-header N
// Routes: / /pid /sleep?ms=N /echo (body back, with its length) /stream?n=N (chunked)
// /status?code=N (that status, whatever N is)
//         /throw (handler exception) /headers (the request's header names) /big?kb=N
//         /tls (protocol, TLS, SNI, client certificate) /trailers (a body and two trailers)
//         /reload (server::reload_certificates(): 200, or 500 with the reason)
//         /cookie (the request's Cookie field) /poison (leaves an OpenSSL error queued)
//         /oom (the handler runs out of memory: std::bad_alloc)
//         /generations (a line per generation alive: generation pid state connections [self])
//         /metrics /healthz /readyz (server::metrics_handler() and the health handlers)
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  namespace http = endless::http;
  using std::chrono::milliseconds;
  http::server_options& o = http::defaults();
  std::vector<std::string> addrs;
  bool log_states = false;
  bool access_log = false;
  std::string sni_cert;
  std::string fault_file;
  milliseconds start_delay{0};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i], v = argv[i + 1];
    if (f == "--addr") {
      addrs.push_back(v);
    } else if (f == "--pidfile") {
      o.pid_file = v;
    } else if (f == "--threads") {
      o.threads = std::stoi(v);
    } else if (f == "--read-header-timeout-ms") {
      o.read_header_timeout = milliseconds(std::stoll(v));
    } else if (f == "--idle-timeout-ms") {
      o.idle_timeout = milliseconds(std::stoll(v));
    } else if (f == "--write-timeout-ms") {
      o.write_timeout = milliseconds(std::stoll(v));
    } else if (f == "--max-body") {
      o.max_body_bytes = std::stoull(v);
    } else if (f == "--hammer-time") {
      o.hammer_time = milliseconds(static_cast<long long>(std::stod(v) * 1000));
    } else if (f == "--drain-grace-ms") {
      o.drain_grace = milliseconds(std::stoll(v));
    } else if (f == "--read-timeout-ms") {
      o.read_timeout = milliseconds(std::stoll(v));
    } else if (f == "--tls-cert") {
      o.tls.cert_file = v;
    } else if (f == "--tls-key") {
      o.tls.key_file = v;
    } else if (f == "--sni-cert") {
      sni_cert = v;
    } else if (f == "--sni-key") {
      o.tls.sni_certificates.emplace_back(sni_cert, v);
    } else if (f == "--client-ca") {
      o.tls.client_ca_file = v;
    } else if (f == "--verify-client") {
      o.tls.verify_client = v == "required"   ? http::client_auth::required
                            : v == "optional" ? http::client_auth::optional
                                              : http::client_auth::none;
    } else if (f == "--handshake-timeout-ms") {
      o.tls.handshake_timeout = milliseconds(std::stoll(v));
    } else if (f == "--tls13-only") {
      o.tls.tls13_only = v == "1";
    } else if (f == "--watch") {
      o.tls.watch_files = v == "1";
    } else if (f == "--h2c") {
      o.http2.cleartext = v == "1";
    } else if (f == "--h2") {
      o.http2.enabled = v == "1";
    } else if (f == "--max-streams") {
      o.http2.max_concurrent_streams = static_cast<std::uint32_t>(std::stoul(v));
    } else if (f == "--goaway-wait-ms") {
      o.http2.goaway_wait = milliseconds(std::stoll(v));
    } else if (f == "--max-header") {
      o.max_header_bytes = std::stoull(v);
    } else if (f == "--probation-ms") {
      o.probation = milliseconds(std::stoll(v));
    } else if (f == "--max-draining") {
      o.max_draining = std::stoi(v);
    } else if (f == "--max-draining-wait-ms") {
      o.max_draining_wait = milliseconds(std::stoll(v));
    } else if (f == "--start-delay-ms") {
      start_delay = milliseconds(std::stoll(v));
    } else if (f == "--fault-file") {
      fault_file = v;
    } else if (f == "--hand-over") {
      o.hand_over_idle = v == "1";
    } else if (f == "--defer-accept") {
      o.defer_accept = v == "1";
    } else if (f == "--access-log") {
      access_log = v == "1";
    } else if (f == "--control-socket") {
      o.control_socket = v;
    } else if (f == "--upgrade-timeout-ms") {
      o.upgrade_timeout = milliseconds(std::stoll(v));
    } else if (f == "--reuseport") {
      o.reuse_port = v == "1";
    } else if (f == "--log-states") {
      log_states = v == "1";
    } else {
      std::fprintf(stderr, "http_helper: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  const std::string pid = std::to_string(::getpid());
  if (!fault_file.empty() && !o.pid_file.empty()) {
    std::string fault;
    if (FILE* f = std::fopen(fault_file.c_str(), "r")) {
      char buf[64] = {};
      fault.assign(buf, std::fread(buf, 1, sizeof buf - 1, f));
      std::fclose(f);
    }
    if (fault.rfind("no-hand-over", 0) == 0) o.hand_over_idle = false;
    // Before ready: after a takeover's load-time part (its sockets are bound by now).
    if (fault.rfind("exit1-before-ready", 0) == 0) {
      std::fprintf(stderr, "%s exiting (status 1) before ready on purpose (fault file)\n",
                   pid.c_str());
      std::_Exit(1);
    }
    if (fault.rfind("noready", 0) == 0) {
      std::fprintf(stderr, "%s never getting ready on purpose (fault file)\n", pid.c_str());
      std::this_thread::sleep_for(std::chrono::seconds(30));
      std::_Exit(1);
    }
    const bool crash = fault.rfind("crash-after-ready", 0) == 0;
    if (crash || fault.rfind("exit-after-ready", 0) == 0) {
      std::thread([pidfile = o.pid_file, self = ::getpid(), crash] {
        for (int i = 0; i < 3000; ++i) {  // up to 30 s
          char buf[32] = {};
          if (FILE* f = std::fopen(pidfile.c_str(), "r")) {
            (void)!std::fread(buf, 1, sizeof buf - 1, f);
            std::fclose(f);
          }
          if (std::atoi(buf) == self) break;
          std::this_thread::sleep_for(milliseconds(10));
        }
        std::this_thread::sleep_for(milliseconds(1000));
        if (!crash) {
          std::fprintf(stderr, "%d exiting (status 0) on purpose (fault file)\n",
                       static_cast<int>(self));
          std::_Exit(0);
        }
        std::fprintf(stderr, "%d crashing on purpose (fault file)\n", static_cast<int>(self));
        ::signal(SIGSEGV, SIG_DFL);  // die by the signal even under a sanitizer's handler
        ::raise(SIGSEGV);
      }).detach();
    }
  }
  http::router r;
  if (access_log) r.use(http::access_log());
  r.get("/", [](const http::request&, http::response& res) { res.text("Hello Zero-Downtime!\n"); });
  r.get("/pid", [&](const http::request&, http::response& res) { res.text(pid); });
  r.get("/sleep", [](const http::request& req, http::response& res) {
    std::this_thread::sleep_for(milliseconds(std::stoll(req.query_value("ms").value_or("0"))));
    res.text("slept");
  });
  r.handle("*", "/echo", [](const http::request& req, http::response& res) {
    res.header("X-Body-Length", std::to_string(req.body().size()))
        .send(req.body(), "application/octet-stream");
  });
  r.get("/stream", [](const http::request& req, http::response& res) {
    int n = std::stoi(req.query_value("n").value_or("3"));
    for (int i = 0; i < n; ++i) {
      if (!res.write("part-" + std::to_string(i) + "\n")) return;
    }
  });
  r.get("/throw", [](const http::request&, http::response&) -> void {
    throw std::runtime_error("handler failed on purpose");
  });
  r.get("/big", [](const http::request& req, http::response& res) {
    res.text(std::string(std::stoul(req.query_value("kb").value_or("1")) * 1024, 'b'));
  });
  r.get("/headers", [](const http::request& req, http::response& res) {
    std::string out;
    for (const auto& h : req.headers())
      out += std::string(h.name) + "\n";
    res.text(out);
  });
  r.get("/tls", [](const http::request& req, http::response& res) {
    res.text("HTTP/" + std::to_string(req.version_major()) + (req.secure() ? " tls" : " plain") +
             " sni=" + std::string(req.server_name()) +
             " client=" + std::string(req.client_certificate_subject()) + "\n");
  });
  r.get("/trailers", [](const http::request&, http::response& res) {
    res.trailer("X-Checksum", "abc123").trailer("X-Items", "2");
    res.text("with trailers\n");
  });
  r.get("/status", [](const http::request& req, http::response& res) {
    res.status(std::stoi(std::string(req.query_value("code").value_or("200")))).text("s\n");
  });
  r.get("/cookie", [](const http::request& req, http::response& res) {
    res.text(std::string(req.header("cookie").value_or("none")) + "\n");
  });
  // Leaves an error on this thread's OpenSSL queue, as a handler using OpenSSL may; the
  // connection's next TLS read must not mistake it for its own.
  r.get("/poison", [](const http::request&, http::response& res) {
    ERR_raise(ERR_LIB_SSL, SSL_R_BAD_LENGTH);
    res.text("poisoned\n");
  });
  http::server* first = nullptr;
  r.get("/reload", [&first](const http::request&, http::response& res) {
    try {
      first->reload_certificates();
      res.text("reloaded\n");
    } catch (const std::exception& e) {
      res.status(500).text(std::string(e.what()) + "\n");
    }
  });
  // A handler that runs out of memory for one request. Thrown rather than provoked: a real
  // huge allocation aborts under ASan instead of throwing, and may succeed under overcommit.
  r.get("/oom", [](const http::request&, http::response&) -> void { throw std::bad_alloc(); });
  r.get("/generations", [&first](const http::request&, http::response& res) {
    std::string out;
    for (const auto& g : first->generations()) {
      out += std::to_string(g.generation) + " " + std::to_string(g.pid) + " " +
             endless::core::to_string(g.current) + " " + std::to_string(g.connections) +
             (g.self ? " self" : "") + "\n";
    }
    res.text(out);
  });
  r.get("/metrics",
        [&first](const http::request& q, http::response& s) { first->metrics_handler()(q, s); });
  r.get("/healthz",
        [&first](const http::request& q, http::response& s) { first->healthz_handler()(q, s); });
  r.get("/readyz",
        [&first](const http::request& q, http::response& s) { first->readyz_handler()(q, s); });
  auto with_pid = [&](const http::request& req, http::response& res) {
    res.header("X-Pid", pid);
    r(req, res);
  };
  if (addrs.empty()) addrs.push_back("127.0.0.1:0");
  std::vector<std::unique_ptr<http::server>> servers;
  for (const auto& a : addrs) {
    servers.push_back(std::make_unique<http::server>(with_pid));
    http::server& srv = *servers.back();
    srv.addr(a);
    // Hooks through the server API: each server's run once per signal, in order.
    std::string id = std::to_string(servers.size() - 1);
    srv.on(endless::core::pre_signal, SIGUSR1,
           [id] { std::fprintf(stderr, "%d server hook pre %s\n", ::getpid(), id.c_str()); });
    srv.on(endless::core::post_signal, SIGUSR1,
           [id] { std::fprintf(stderr, "%d server hook post %s\n", ::getpid(), id.c_str()); });
    if (log_states) {
      srv.on_conn_state([](std::uint64_t conn, http::conn_state state) {
        static const char* names[] = {"created", "active", "idle", "closed"};
        std::fprintf(stderr, "conn %llu %s\n", static_cast<unsigned long long>(conn),
                     names[static_cast<int>(state)]);
      });
    }
  }
  first = servers[0].get();
  std::this_thread::sleep_for(start_delay);  // a slow start: upgrades asked for meanwhile
  if (servers.size() == 1) return http::serve({servers[0].get()});
  return http::serve({servers[0].get(), servers[1].get()});
}
