// The new process's side of an upgrade, and ready() for a first start.
#include <fcntl.h>
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

// Tells the old process we are ready and waits for its answer, without a timeout of our own:
// the old process bounds the hand-over with upgrade_timeout and kills us when it runs out.
// Returns {} when acknowledged; errc::aborted when the old process is alive but did not
// acknowledge (it is rolling back and about to kill us); {} with `alone` set when the old
// process is gone and we are the server now.
// `takes`: the 'T' messages that go before the 'R'.
std::error_code handshake(int channel, pid_t parent, const std::string& takes, bool& alone,
                          std::string& why) {
  std::string out = takes + protocol::kReady;
  ssize_t sent;
  do {
    sent = ::send(channel, out.data(), out.size(), MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  char ack = 0;
  ssize_t got = 0;
  if (sent == static_cast<ssize_t>(out.size())) {
    do {
      got = ::recv(channel, &ack, 1, 0);
    } while (got < 0 && errno == EINTR);
  }
  if (got == 1 && ack == protocol::kAck) return {};
  if (::getppid() != parent) {
    alone = true;
    why = "the old process went away during the hand-over; serving on our own";
    return {};
  }
  why = "the old process did not acknowledge our readiness";
  return errc::aborted;
}

}  // namespace

std::error_code upgrader::impl::do_ready() {
  if (current.load() != state::starting) return errc::already_ready;
  if (startup().env.error) return startup().env.error;

  int channel = startup().env.ready_fd;
  // The pid file is written before we say we are ready and renamed into place once the old
  // process acknowledged: a new process that can't write it (disk full, directory gone) is
  // not ready, so the old one keeps serving and the pid file keeps naming a live process.
  std::string staged;
  if (!opts.pid_file.empty()) {
    if (auto ec = stage_pid_file(opts.pid_file, pid, staged)) {
      log_pid("can't write pid file " + opts.pid_file + ": " + ec.message() +
              (channel >= 0 ? "; not taking over" : ""));
      if (channel >= 0) {
        ::close(channel);  // the old process sees the channel close and rolls back
        startup().env.ready_fd = -1;
        return ec;
      }
    }
  }
  bool alone = false;
  if (channel >= 0) {
    unique_fd owned(channel);
    startup().env.ready_fd = -1;
    std::string why;
    // The listeners whose idle connections we take from the old process (protocol.hpp).
    std::string takes;
    {
      std::lock_guard lock(mu);
      for (const drainable* d : services) {
        std::string a = d->adopts_for();
        if (!a.empty() && a.size() <= 255) {
          takes += protocol::kTakes;
          takes += static_cast<char>(a.size());
          takes += a;
        }
      }
    }
    std::error_code ec = handshake(channel, startup().parent, takes, alone, why);
    if (!why.empty()) log_pid(why);
    if (ec) {
      discard_pid_file(staged);
      return ec;
    }
    if (!alone) {
      // Kept for 'D' when we drain (protocol.hpp); inherited without FD_CLOEXEC (dup2), so
      // set it: a process we start must not hold it.
      ::fcntl(owned.get(), F_SETFD, FD_CLOEXEC);
      parent_channel = std::move(owned);
    }
  }
  if (!staged.empty()) {
    if (auto ec = commit_pid_file(staged, opts.pid_file)) {
      log_pid("can't write pid file " + opts.pid_file + ": " + ec.message());
    }
  }
  // With NotifyAccess=main systemd only listens to its main pid. The old process, still the
  // main pid, already said MAINPID=<us> and READY=1 after acknowledging; this repeats it for
  // NotifyAccess=all and for the case where the old process is gone.
  notify(has_parent ? "MAINPID=" + std::to_string(pid) + "\nREADY=1" : std::string("READY=1"));
  for (const auto& name : registry::instance().close_unclaimed()) {
    log_pid("closed inherited listener '" + name + "': not used by this process");
  }
  if (watchdog_usec) next_watchdog = clock::now();
  served = true;
  set_state(state::serving);
  return {};
}

}  // namespace endless::core
