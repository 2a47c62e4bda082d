// The core's live demo: a tiny HTTP server that replaces itself with zero downtime on SIGHUP
// and drains on SIGTERM. `hello_core --addr 127.0.0.1:8080 [--pidfile F] [--hammer-time S]`
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "endless/endless.hpp"
#include "tiny_http.hpp"

int main(int argc, char** argv) {
  std::string addr = "127.0.0.1:8080";
  endless::core::options opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--addr") {
      addr = argv[i + 1];
    } else if (flag == "--pidfile") {
      opts.pid_file = argv[i + 1];
    } else if (flag == "--hammer-time") {
      opts.hammer_time =
          std::chrono::milliseconds(static_cast<long long>(std::stod(argv[i + 1]) * 1000));
    } else {
      std::fprintf(stderr, "hello_core: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  try {
    endless::core::upgrader up(opts);
    tiny::server srv(up.listen("tcp", addr), [](const std::string& target) -> tiny::response {
      if (target == "/") return {200, "Hello Zero-Downtime!\n"};
      if (target == "/pid") return {200, std::to_string(::getpid()) + "\n"};
      return {404, "not found\n"};
    });
    up.attach(srv);
    up.log(std::to_string(::getpid()) + " " + addr);
    up.ready();
    srv.start();  // after ready(): a rolled-back new process never holds connections
    up.wait();
    up.detach(srv);  // srv goes before up: the upgrader must not call it afterwards
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hello_core: %s\n", e.what());
    return 1;
  }
  return 0;
}
