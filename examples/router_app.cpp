// A router app with timeouts and a header limit, like endless's "simple" example and its
// DefaultReadTimeOut / DefaultWriteTimeOut / DefaultMaxHeaderBytes: restart it with
// `kill -HUP` while `curl localhost:8080/ping?ms=3000` runs; the request completes. A
// request whose head is over 4 KiB gets 431.
//   router_app [ADDR]   (default :8080)
#include <thread>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  using namespace std::chrono_literals;
  // Process-wide defaults, copied into every server created afterwards (endless's Default*).
  server_options& d = defaults();
  d.read_timeout = 10s;
  d.write_timeout = 10s;
  d.max_header_bytes = 4096;
  router r;
  r.use(access_log());
  r.get("/", [](const request&, response& res) { res.text("WORLD!\n"); });
  r.get("/hello", [](const request&, response& res) { res.text("WORLD!\n"); });
  r.get("/ping", [](const request& req, response& res) {
    int ms = std::stoi(req.query_value("ms").value_or("3000"));
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));  // blocks this request only
    res.text("pong\n");
  });
  r.get("/items/{id}", [](const request& req, response& res) {
    res.json("{\"id\":\"" + std::string(req.param("id")) + "\"}\n");
  });
  return listen_and_serve(argc > 1 ? argv[1] : ":8080", r);
}
