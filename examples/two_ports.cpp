// Two servers from one binary, like endless's "multi_port": one upgrade, one set of hooks,
// one ready() for both; both listeners survive every restart.
//   two_ports [ADDR1 ADDR2]   (defaults :8080 :8081)
#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  server a([](const request&, response& res) { res.text("WORLD from the first server\n"); });
  server b([](const request&, response& res) { res.text("WORLD from the second server\n"); });
  a.addr(argc > 2 ? argv[1] : ":8080");
  b.addr(argc > 2 ? argv[2] : ":8081");
  return serve({&a, &b});
}
