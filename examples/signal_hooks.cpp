// Signal hooks, like endless's "hooks" example: code of yours before and after each signal.
// `kill -USR1 <pid>` runs only the hooks; SIGHUP upgrades with its hooks around it.
//   signal_hooks [ADDR]   (default :8080)
#include <unistd.h>

#include <csignal>
#include <cstdio>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  server srv([](const request&, response& res) { res.text("WORLD!\n"); });
  srv.addr(argc > 1 ? argv[1] : ":8080");
  srv.on(endless::core::pre_signal, SIGUSR1,
         [] { std::fprintf(stderr, "%d pre SIGUSR1\n", ::getpid()); });
  srv.on(endless::core::post_signal, SIGUSR1,
         [] { std::fprintf(stderr, "%d post SIGUSR1\n", ::getpid()); });
  srv.on(endless::core::pre_signal, SIGHUP,
         [] { std::fprintf(stderr, "%d pre SIGHUP\n", ::getpid()); });
  srv.shutdown_initiated([] { std::fprintf(stderr, "%d shutdown initiated\n", ::getpid()); });
  return srv.listen_and_serve();
}
