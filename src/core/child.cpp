// The new process's side of an upgrade, and ready() for a first start.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>

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
// Reads exactly `len` bytes (blocking: the old process wrote them with its 'A').
bool read_exactly(int fd, char* out, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::recv(fd, out + done, len - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// The 'S' message after 'A': the counters that carry over. Anything malformed is dropped
// with a note; the hand-over goes on (they only start from zero).
void read_carried(int channel, std::map<std::string, std::uint64_t, std::less<>>& out,
                  std::string& why) {
  // 'S' goes out in the same write as 'A', so it is here already if it comes at all; an old
  // process of an earlier build sends none, and then nothing is consumed here.
  char tag = 0;
  ssize_t peeked;
  do {
    peeked = ::recv(channel, &tag, 1, MSG_PEEK | MSG_DONTWAIT);
  } while (peeked < 0 && errno == EINTR);
  if (peeked != 1 || tag != protocol::kCarried) {
    why = "no counters from the old process; they start from zero";
    return;
  }
  std::uint32_t len = 0;
  if (!read_exactly(channel, &tag, 1) || tag != protocol::kCarried ||
      !read_exactly(channel, reinterpret_cast<char*>(&len), sizeof len) ||
      len > protocol::kMaxCarried) {
    why = "no counters from the old process; they start from zero";
    return;
  }
  std::string body(len, '\0');
  if (!read_exactly(channel, body.data(), len)) {
    why = "no counters from the old process; they start from zero";
    return;
  }
  std::string_view rest(body);
  while (!rest.empty()) {
    std::size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    std::size_t tab = line.find('\t');
    std::uint64_t value = 0;
    if (tab == std::string_view::npos || tab == 0) continue;
    std::string_view digits = line.substr(tab + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc{} || end != digits.data() + digits.size()) continue;
    out[std::string(line.substr(0, tab))] = value;
  }
}

std::error_code handshake(int channel, pid_t parent, const std::string& takes, bool& alone,
                          std::string& why,
                          std::map<std::string, std::uint64_t, std::less<>>& carried) {
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
  if (got == 1 && ack == protocol::kAck) {
    read_carried(channel, carried, why);
    return {};
  }
  // Gone: our parent changed (it exited), or with a takeover the process we took over from
  // exited (its pidfd is readable).
  bool gone = ::getppid() != parent;
  if (startup().env.takeover) {
    pollfd p{startup().parent_pidfd, POLLIN, 0};
    gone = startup().parent_pidfd >= 0 && ::poll(&p, 1, 0) == 1;
  }
  if (gone) {
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
        // An SO_REUSEPORT takeover: the old process's queue comes to us too (only then: an
        // old process of the fd takeover does not know 'F').
        std::string n = startup().env.reuseport.empty() ? std::string() : d->adopts_new_for();
        if (!n.empty() && n.size() <= 255) {
          takes += protocol::kTakesNew;
          takes += static_cast<char>(n.size());
          takes += n;
        }
      }
    }
    std::error_code ec = handshake(channel, startup().parent, takes, alone, why, carried_in);
    // Our own counters go on from the old process's.
    if (auto it = carried_in.find("endless_restarts_total"); it != carried_in.end()) {
      upgrades.store(it->second);
    }
    if (auto it = carried_in.find("endless_restart_failures_total"); it != carried_in.end()) {
      failed_upgrades.store(it->second);
    }
    for (int r = 0; r < kReasons; ++r) {
      auto it =
          carried_in.find(std::string("endless_restart_failures_total:") + kFailureReasons[r]);
      if (it != carried_in.end()) failures[r].store(it->second);
    }
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
  // After a takeover we are another unit's process (if any): only READY=1 for our own.
  notify(has_parent && !startup().env.takeover ? "MAINPID=" + std::to_string(pid) + "\nREADY=1"
                                               : std::string("READY=1"));
  for (const auto& name : registry::instance().close_unclaimed()) {
    log_pid("closed inherited listener '" + name + "': not used by this process");
  }
  if (watchdog_usec) next_watchdog = clock::now();
  served = true;
  set_state(state::serving);
  return {};
}

}  // namespace endless::core
