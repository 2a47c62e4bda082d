// A program built against an installed endless (tests/package/run.sh): the README's hello,
// with a pid file so that the script knows when it is ready.
#include <endless/endless.hpp>

int main(int argc, char** argv) {
  if (argc != 3) return 2;  // consumer ADDR PIDFILE
  endless::http::router r;
  r.get("/", [](const endless::http::request&, endless::http::response& res) {
    res.text("Hello Zero-Downtime!\n");
  });
  endless::http::server srv(r);
  srv.addr(argv[1]).pid_file(argv[2]);
  return srv.listen_and_serve();
}
