// The HTTP server the integration tests start: hello's routes plus test routes.
//   --addr A (repeatable: several servers from one binary)  --pidfile F  --threads N
//   --read-header-timeout-ms N  --idle-timeout-ms N  --write-timeout-ms N
//   --max-body N  --hammer-time S  --drain-grace-ms N  --read-timeout-ms N  --log-states 1
// Routes: / /pid /sleep?ms=N /echo (body back, with its length) /stream?n=N (chunked)
//         /throw (handler exception) /headers (the request's header names) /big?kb=N
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  namespace http = endless::http;
  using std::chrono::milliseconds;
  http::server_options& o = http::defaults();
  std::vector<std::string> addrs;
  bool log_states = false;
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
    } else if (f == "--log-states") {
      log_states = v == "1";
    } else {
      std::fprintf(stderr, "http_helper: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  const std::string pid = std::to_string(::getpid());
  http::router r;
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
  if (servers.size() == 1) return http::serve({servers[0].get()});
  return http::serve({servers[0].get(), servers[1].get()});
}
