// The example server of DESIGN.md, used by the demo, the tests and the benchmarks:
//   hello --addr HOST:PORT [--pidfile FILE] [--hammer-time SECONDS] [--threads N]
//         [--tls-cert FILE --tls-key FILE] [--h2c] [--access-log] [--reuseport]
//   GET /                 200 "Hello Zero-Downtime!\n"
//   GET /ping?seq=N&ms=M  waits M ms (blocking this handler only), then 200 "pong-N"
//   GET /pid              the serving process's pid
//   GET /healthz /readyz /metrics   liveness, readiness (503 once draining), Prometheus
// Every response carries X-Pid. SIGHUP restarts it with zero downtime; SIGTERM drains.
// With a certificate it serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) and reloads the
// certificate when its files change; --h2c adds HTTP/2 with prior knowledge on plain HTTP.
// --reuseport binds with SO_REUSEPORT, for the SO_REUSEPORT takeover (docs/core.md).
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <string>
#include <thread>

#include "endless/endless.hpp"

namespace {

int usage(const char* why) {
  std::fprintf(
      stderr,
      "hello: %s\nusage: hello --addr HOST:PORT [--pidfile FILE] [--hammer-time SECONDS] "
      "[--threads N] [--tls-cert FILE --tls-key FILE] [--h2c] [--access-log] [--reuseport]\n",
      why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  namespace http = endless::http;
  http::server_options& o = http::defaults();
  o.addr = "127.0.0.1:8080";
  bool access_log = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--h2c") {
      o.http2.cleartext = true;
      continue;
    }
    if (flag == "--access-log") {
      access_log = true;
      continue;
    }
    if (flag == "--reuseport") {
      o.reuse_port = true;
      continue;
    }
    if (i + 1 >= argc) return usage(("missing value for " + flag).c_str());
    std::string value = argv[++i];
    try {
      if (flag == "--addr") {
        o.addr = value;
      } else if (flag == "--pidfile") {
        o.pid_file = value;
      } else if (flag == "--hammer-time") {
        o.hammer_time = std::chrono::milliseconds(static_cast<long long>(std::stod(value) * 1000));
      } else if (flag == "--tls-cert") {
        o.tls.cert_file = value;
      } else if (flag == "--tls-key") {
        o.tls.key_file = value;
      } else if (flag == "--threads") {
        o.threads = std::stoi(value);
      } else {
        return usage(("unknown flag " + flag).c_str());
      }
    } catch (const std::exception&) {
      return usage(("bad value '" + value + "' for " + flag).c_str());
    }
  }

  if (o.tls.cert_file.empty() != o.tls.key_file.empty()) {
    return usage("--tls-cert and --tls-key go together");
  }
  const std::string pid = std::to_string(::getpid());
  http::router r;
  if (access_log) r.use(http::access_log());
  r.get("/", [](const http::request&, http::response& res) { res.text("Hello Zero-Downtime!\n"); });
  r.get("/pid", [&pid](const http::request&, http::response& res) { res.text(pid); });
  r.get("/ping", [](const http::request& req, http::response& res) {
    std::string seq = req.query_value("seq").value_or("0");
    long ms = 0;
    std::string m = req.query_value("ms").value_or("0");
    std::from_chars(m.data(), m.data() + m.size(), ms);
    // A plain blocking sleep: the server gives this loop a new thread meanwhile.
    if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 600000L)));
    res.text("pong-" + seq);
  });
  http::server srv([&](const http::request& req, http::response& res) {
    res.header("X-Pid", pid);
    r(req, res);
  });
  // For load balancers and Prometheus (deploy/kubernetes): /readyz answers 503 once this
  // process drains.
  r.get("/healthz", srv.healthz_handler());
  r.get("/readyz", srv.readyz_handler());
  r.get("/metrics", srv.metrics_handler());
  return srv.listen_and_serve();
}
