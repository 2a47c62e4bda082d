// The endless TLS example: HTTPS on one port, HTTP/2 and HTTP/1.1 by ALPN.
//   tls [ADDR] [CERT] [KEY]   (default localhost:4242 cert.pem key.pem)
// The certificate file may hold the leaf followed by its intermediates. Replace the files
// (cp, mv, certbot's symlink switch) and new handshakes use them, no restart needed; a
// broken pair is refused with a log line and the old one stays. `kill -HUP` restarts with
// zero downtime like any endless server.
#include <cstdio>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  router r;
  r.get("/", [](const request&, response& res) { res.text("bar\n"); });
  int rc = listen_and_serve_tls(argc > 1 ? argv[1] : "localhost:4242",
                                argc > 2 ? argv[2] : "cert.pem", argc > 3 ? argv[3] : "key.pem", r);
  std::fprintf(stderr, "Server on %s stopped\n", argc > 1 ? argv[1] : "localhost:4242");
  return rc;
}
