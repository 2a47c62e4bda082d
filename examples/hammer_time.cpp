// Hammer time, like endless's "testserver": a handler that takes 5 s and a hammer time of
// 1 s. `kill -HUP` (or -TERM) while `curl localhost:8080/slow` runs: after 1 s the old
// process closes the connection and exits ("[STOP - Hammer Time]").
//   hammer_time [ADDR]   (default :8080)
#include <thread>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  router r;
  r.get("/", [](const request&, response& res) { res.text("WORLD!\n"); });
  r.get("/slow", [](const request&, response& res) {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    res.text("finished\n");
  });
  server srv(r);
  srv.addr(argc > 1 ? argv[1] : ":8080").hammer_time(std::chrono::seconds(1));
  return srv.listen_and_serve();
}
