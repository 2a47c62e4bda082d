// A pid file that always names the serving process: rewritten (atomically) by the new
// process once it is ready, removed on a final shutdown. For systemd's PIDFile= or scripts:
//   kill -HUP $(cat /tmp/endless-example.pid)
//   pid_file [ADDR [PIDFILE]]   (defaults :8080, /tmp/endless-example.pid)
// And endless's BeforeBegin snippet: every process logs its pid once its listener is up.
// (Write pid files with pid_file(), not from before_begin: that runs before ready(), so a
// new process that is then rolled back would have named itself.)
#include <unistd.h>

#include <cstdio>
#include <ctime>

#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  server srv([](const request&, response& res) { res.text(std::to_string(::getpid()) + "\n"); });
  srv.addr(argc > 1 ? argv[1] : ":8080").pid_file(argc > 2 ? argv[2] : "/tmp/endless-example.pid");
  srv.before_begin([](std::string_view addr) {
    // Go's log format, as endless's own lines: "2006/01/02 15:04:05 message".
    char stamp[32];
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    std::strftime(stamp, sizeof stamp, "%Y/%m/%d %H:%M:%S", ::localtime_r(&now, &tm));
    std::fprintf(stderr, "%s %d %.*s\n%s Actual pid is %d\n", stamp, ::getpid(),
                 static_cast<int>(addr.size()), addr.data(), stamp, ::getpid());
  });
  return srv.listen_and_serve();
}
