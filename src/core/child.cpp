// The new process's side of an upgrade, and ready() for a first start.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "endless/core/error.hpp"
#include "pid_file.hpp"
#include "protocol.hpp"
#include "startup.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {
namespace {

// How long the new process waits for the old one's acknowledgement. The old process answers
// within a poll round; this only bounds a wedged one.
constexpr int kAckTimeoutMs = 10'000;

// Returns true when the old process acknowledged, false when it is gone or silent.
bool handshake(int channel, std::string& why) {
  char ready = protocol::kReady;
  if (::send(channel, &ready, 1, MSG_NOSIGNAL) != 1) {
    why = std::string("can't tell the old process we are ready: ") + std::strerror(errno);
    return false;
  }
  pollfd p{channel, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, kAckTimeoutMs);
  } while (rc < 0 && errno == EINTR);
  char ack = 0;
  if (rc == 1 && ::recv(channel, &ack, 1, 0) == 1 && ack == protocol::kAck) return true;
  why = rc == 0 ? "the old process did not acknowledge" : "the old process went away";
  return false;
}

}  // namespace

std::error_code upgrader::impl::do_ready() {
  if (current.load() != state::starting) return errc::already_ready;
  if (startup().env.error) return startup().env.error;

  int channel = startup().env.ready_fd;
  if (channel >= 0) {
    unique_fd owned(channel);
    startup().env.ready_fd = -1;
    std::string why;
    if (!handshake(channel, why)) log_pid(why + "; serving on our own");
  }
  if (!opts.pid_file.empty()) {
    if (auto ec = write_pid_file(opts.pid_file, pid)) {
      log_pid("can't write pid file " + opts.pid_file + ": " + ec.message());
    }
  }
  // With NotifyAccess=main, systemd only listens to its main pid: the old process already
  // said MAINPID=<us> before acknowledging, so this message is ours to send now.
  notify(has_parent ? "MAINPID=" + std::to_string(pid) + "\nREADY=1" : std::string("READY=1"));
  for (const auto& name : registry::instance().close_unclaimed()) {
    log_pid("closed inherited listener '" + name + "': not used by this process");
  }
  if (watchdog_usec) next_watchdog = clock::now();
  current.store(state::serving);
  return {};
}

}  // namespace endless::core
