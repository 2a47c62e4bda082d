// A pid file that always names the serving process: rewritten (atomically) by the new
// process once it is ready, removed on a final shutdown. For systemd's PIDFile= or scripts:
//   kill -HUP $(cat /tmp/endless-example.pid)
//   pid_file [ADDR [PIDFILE]]   (defaults :8080, /tmp/endless-example.pid)
#include <unistd.h>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  server srv([](const request&, response& res) { res.text(std::to_string(::getpid()) + "\n"); });
  srv.addr(argc > 1 ? argv[1] : ":8080").pid_file(argc > 2 ? argv[2] : "/tmp/endless-example.pid");
  return srv.listen_and_serve();
}
