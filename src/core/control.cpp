// The control socket: endlessctl's way in (docs/core.md, "The control socket").
//
// A unix stream socket, mode 0600, registered like any listener, so that every generation
// serves the same path in turn: the process that is serving (or upgrading) accepts on it;
// a starting or draining one leaves the queue to the other. Only this process's user or
// root gets in (SO_PEERCRED, on top of the file mode).
//
// One command per connection, a line; the answer is lines, the last of them "ok ..." or
// "error <reason> <text>":
//   status        pid, state, generation, upgrade counters, a "process" line per generation
//   upgrade       "started <pid>" or "queued ...", then "ready <pid> <generation>", then
//                 (with a probation) "probation <ms>"; last "ok <pid> <generation>" once the
//                 new process serves for good, or "error <reason> <why>" with reason one of
//                 start_failed exited not_ready aborted rolled_back busy starting draining
//   stop          "stopping <pid>"; the connection then stays open until this process exits
//   stop hammer   the same, force-closing what is left here and in older generations at once
// Everything runs on the upgrader's thread.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "endless/core/address.hpp"
#include "endless/core/error.hpp"
#include "protocol.hpp"
#include "startup.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {
namespace {

constexpr std::size_t kMaxLine = 256;
constexpr auto kCommandWait = std::chrono::seconds(5);

// The reason word of a failed upgrade's answer.
const char* reason_of(std::error_code ec) {
  if (ec == errc::child_exited) return "exited";
  if (ec == errc::ready_timeout) return "not_ready";
  if (ec == errc::aborted) return "aborted";
  if (ec == errc::draining) return "draining";
  if (ec == errc::not_ready) return "starting";
  return "start_failed";
}

}  // namespace

void upgrader::impl::reply(control_client& c, const std::string& text) {
  if (!c.fd) return;
  ssize_t n;
  do {
    n = ::send(c.fd.get(), text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  // A few short lines: they fit an empty socket buffer whole, or the client is gone.
  if (n != static_cast<ssize_t>(text.size())) c.fd.reset();
}

void upgrader::impl::open_control() {
  control_path = opts.control_socket     ? *opts.control_socket
                 : opts.pid_file.empty() ? std::string()
                                         : control_socket_for(opts.pid_file);
  if (control_path.empty()) return;
  std::error_code ec;
  std::string why;
  unique_fd fd = registry::instance().listen("unix", control_path, ec, why);
  if (!fd) {
    startup().env.notes.push_back("no control socket: " + (why.empty() ? ec.message() : why));
    control_path.clear();
    return;
  }
  // Owner only. Between bind() and this the mode is the umask's: SO_PEERCRED covers that.
  // (chmod() follows symlinks: only if the path is still a socket.)
  struct stat st {};
  if (::lstat(control_path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) ||
      ::chmod(control_path.c_str(), 0600) != 0) {
    startup().env.notes.push_back("control socket " + control_path +
                                  ": can't chmod 0600: " + std::strerror(errno));
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  control_listener = std::move(fd);
}

bool upgrader::impl::control_open() const {
  state s = current.load();
  return control_listener && (s == state::serving || s == state::upgrading) &&
         control_clients.size() < kMaxControlClients &&
         (!control_backoff || clock::now() >= *control_backoff);
}

void upgrader::impl::on_control_accept() {
  // The state may have changed since poll() (a hand-over in this round): leave the client
  // to the process that serves now.
  if (!control_open()) return;
  unique_fd fd(::accept4(control_listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!fd) {
    // EAGAIN: another generation took it. Out of fds: the socket stays readable, so wait a
    // little instead of spinning.
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      control_backoff = clock::now() + std::chrono::milliseconds(100);
    }
    return;
  }
  control_backoff.reset();
  ucred cred{};
  socklen_t len = sizeof cred;
  control_client c;
  c.fd = std::move(fd);
  if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      (cred.uid != ::geteuid() && cred.uid != 0)) {
    log_pid("control socket: refused a client of uid " + std::to_string(cred.uid) + " (pid " +
            std::to_string(cred.pid) + "): only uid " + std::to_string(::geteuid()) +
            " and root may control this server");
    reply(c, "error denied uid " + std::to_string(cred.uid) + " may not control this server\n");
    return;
  }
  c.who = "pid " + std::to_string(cred.pid) + ", uid " + std::to_string(cred.uid);
  c.peer = cred.pid;
  c.deadline = clock::now() + kCommandWait;
  control_clients.push_back(std::move(c));
}

void upgrader::impl::on_control_readable(control_client& c) {
  char buf[kMaxLine];
  ssize_t n;
  do {
    n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return;
  if (n <= 0) {
    // EOF. Waiting for an answer, it may only have shut down its side (`echo upgrade | socat`):
    // keep the connection for the answer, but stop polling it.
    if (n == 0 && c.at != control_client::phase::command) {
      c.peer_done = true;
    } else {
      c.fd.reset();  // gone: whatever it asked for goes on without it
    }
    return;
  }
  if (c.at != control_client::phase::command) return;  // one command per connection
  c.in.append(buf, static_cast<std::size_t>(n));
  auto eol = c.in.find('\n');
  if (eol == std::string::npos) {
    if (c.in.size() >= kMaxLine) {
      reply(c, "error bad_command the command line is too long\n");
      c.fd.reset();
    }
    return;
  }
  std::string line = c.in.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  control_command(c, line);
}

void upgrader::impl::control_command(control_client& c, std::string_view line) {
  using phase = control_client::phase;
  const std::string via = " over the control socket (" + c.who + ")";
  if (line == "status") {
    reply(c, status_text() + "ok\n");
    c.fd.reset();
    return;
  }
  // Accepted while serving, but handed over or shutting down since (in the same round of the
  // loop): the process that serves now must answer. Retryable.
  if (state s = current.load(); s != state::serving && s != state::upgrading) {
    reply(c, std::string("error ") +
                 (s == state::starting ? "starting this process is not ready yet"
                                       : "draining this process is handing over or shutting "
                                         "down; ask again") +
                 "\n");
    c.fd.reset();
    return;
  }
  if (line == "upgrade") {
    state s = current.load();
    if (auto elder = family.elder_on_probation(); elder && s == state::serving) {
      // An upgrade now would leave two processes serving if we crashed before it was ready
      // and the elder took the service back.
      log_pid("Upgrade requested" + via + ", but pid " + std::to_string(*elder) +
              " is still on probation; refused.");
      reply(c, "error busy pid " + std::to_string(*elder) +
                   " is still on probation (it may take the service back); ask again\n");
      c.fd.reset();
      return;
    }
    if (s != state::serving) {
      std::string why =
          s == state::upgrading
              ? (upgrade ? "busy an upgrade is already running: new process " +
                               std::to_string(upgrade->child.pid)
                         : std::string("busy an upgrade is already waiting for an older "
                                       "generation to exit"))
          : s == state::starting ? std::string("starting this process is not ready yet")
                                 : std::string("draining this process is shutting down");
      log_pid("Upgrade requested" + via + ", but " + why.substr(why.find(' ') + 1) + "; refused.");
      reply(c, "error " + why + "\n");
      c.fd.reset();
      return;
    }
    std::promise<std::error_code> result;
    c.outcome = result.get_future();
    c.at = phase::upgrade;
    last_failure.clear();
    do_upgrade(std::move(result), "Upgrade requested" + via);
    if (upgrade) {
      reply(c, "started " + std::to_string(upgrade->child.pid) + "\n");
    } else if (queued) {
      reply(c, "queued " + std::to_string(family.prune()) +
                   " older generation(s) alive, max_draining " + std::to_string(max_draining) +
                   "\n");
    }
    return;
  }
  if (line == "takeover" || line.starts_with("takeover reuseport")) {
    std::string_view want = line.size() > 18 ? line.substr(18) : std::string_view();
    if (want != "" && want != " steering" && want != " migrate") {
      reply(c, "error bad_command takeover reuseport takes steering or migrate\n");
      c.fd.reset();
      return;
    }
    start_takeover(c, line != "takeover",
                   want == " steering"  ? reuseport::mechanism::steering
                   : want == " migrate" ? reuseport::mechanism::migrate
                                        : reuseport::mechanism::none);
    return;
  }
  if (line == "stop" || line == "stop hammer") {
    reply(c, "stopping " + std::to_string(pid) + "\n");
    c.at = phase::stop;  // kept open: EOF tells the client this process is gone
    do_shutdown((line == "stop" ? "Stop requested" : "Stop (hammer) requested") + via);
    if (line == "stop hammer") {
      if (current.load() == state::draining) do_hammer();
      if (probation) end_probation("hammered");
      for (const auto& who : family.hammer_oldest(family.prune(), SIGUSR2))
        log_pid("hammering " + who + ": stop (hammer) requested");
    }
    return;
  }
  log_pid("control socket: unknown command from " + c.who);
  reply(c, "error bad_command unknown command (want status, upgrade, stop or stop hammer)\n");
  c.fd.reset();
}

void upgrader::impl::start_takeover(control_client& c, bool by_reuseport,
                                    reuseport::mechanism only) {
  const std::string what = by_reuseport ? "SO_REUSEPORT takeover" : "Takeover";
  auto refuse = [&](const std::string& reason, const std::string& why) {
    log_pid(what + " requested over the control socket (" + c.who + "), but " + why + "; refused.");
    reply(c, "error " + reason + " " + why + "\n");
    c.fd.reset();
  };
  if (current.load() != state::serving) {
    return refuse("busy", upgrade ? "an upgrade is running" : "an upgrade is waiting");
  }
  if (auto elder = family.elder_on_probation()) {
    return refuse("busy", "pid " + std::to_string(*elder) + " is still on probation");
  }
  if (std::size_t alive = family.prune(); alive >= max_draining) {
    return refuse("busy", std::to_string(alive) +
                              " older generation(s) still alive (max_draining " +
                              std::to_string(max_draining) + ")");
  }
  if (c.peer <= 0 || c.peer == pid) {
    return refuse("start_failed", "the peer's pid is unknown here (another pid namespace?)");
  }
  for (const auto& g : family.snapshot()) {
    if (g.pid == c.peer) {
      return refuse("start_failed",
                    "pid " + std::to_string(c.peer) + " is a generation of this service");
    }
  }
  spawned child;
  child.pid = c.peer;
  child.foreign = true;
  child.pidfd.reset(pidfd_open(c.peer));
  if (!child.pidfd) {
    return refuse("start_failed", "pidfd_open: " + std::string(std::strerror(errno)));
  }
  // We must be able to kill it if it fails, as we would a new process of ours (a root
  // process may take over from a non-root one only if that one could stop it).
  if (pidfd_signal(child.pidfd.get(), 0) != 0) {
    return refuse("start_failed",
                  "it could not be stopped from here: " + std::string(std::strerror(errno)));
  }
  std::error_code ec;
  auto listeners = registry::instance().handover(ec);
  if (ec) return refuse("start_failed", "can't duplicate the listeners: " + ec.message());
  // SO_REUSEPORT: the TCP listeners are not passed; the new process binds its own. Our queue
  // must never be dropped (reuseport.hpp): steer, or let the kernel migrate it, or refuse.
  std::vector<std::pair<std::string, unique_fd>> shared;
  reuseport::mechanism how = reuseport::mechanism::none;
  std::string how_text;
  if (by_reuseport) {
    // Its sockets must join our groups: the same network namespace.
    auto netns = [](const std::string& who) {
      char buf[64] = {};
      ssize_t n = ::readlink(("/proc/" + who + "/ns/net").c_str(), buf, sizeof buf - 1);
      return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    };
    const std::string ours = netns("self"), theirs = netns(std::to_string(c.peer));
    if (ours.empty() || ours != theirs) {
      return refuse("unsupported", theirs.empty() ? "the peer's network namespace can't be read"
                                                  : "the peer is in another network namespace");
    }
    std::string no_steering;
    const int migrate = reuseport::migrate_req();
    for (auto& l : listeners) {
      if (!reuseport::is_tcp(l.fd.get())) continue;
      std::string address = local_address(l.fd.get());
      if (l.from_systemd) {
        // systemd keeps its copy: our close would leave the socket in the group for good.
        return refuse("unsupported", address +
                                         " came from systemd socket activation, which keeps "
                                         "the socket open; use the fd takeover");
      }
      if (int n = reuseport::listeners_on(l.fd.get()); n != 1) {
        // An older generation still closing its socket in the group is a wait; anybody
        // else sharing the address is a refusal.
        return refuse(n > 1 && family.prune() > 0 ? "busy" : "unsupported",
                      n < 0 ? "can't read /proc/net/tcp to check who listens on " + address
                            : std::to_string(n) + " sockets listen on " + address +
                                  ", not just ours (another one shares it with SO_REUSEPORT)");
      }
      if (only == reuseport::mechanism::migrate) {
        no_steering = "migrate was asked for";
      } else if (!reuseport::enabled(l.fd.get())) {
        no_steering = address + " was bound without SO_REUSEPORT (options::reuse_port)";
      } else if (auto e = reuseport::steer(l.fd.get(), 0); e && no_steering.empty()) {
        no_steering = "SO_ATTACH_REUSEPORT_CBPF on " + address + ": " + e.message();
      }
      shared.emplace_back(std::move(address), unique_fd());
    }
    if (shared.empty()) return refuse("unsupported", "there is no TCP listener to share");
    if (no_steering.empty()) {
      how = reuseport::mechanism::steering;
      how_text = "new connections steered by SO_ATTACH_REUSEPORT_CBPF";
      if (migrate == 1) how_text += ", and net.ipv4.tcp_migrate_req=1";
    } else if (migrate == 1 && only != reuseport::mechanism::steering) {
      how = reuseport::mechanism::migrate;
      how_text = "no steering (" + no_steering +
                 "): net.ipv4.tcp_migrate_req=1 moves our queue when we close";
    } else {
      const std::string sysctl =
          "net.ipv4.tcp_migrate_req=" +
          (migrate < 0 ? std::string("unreadable") : std::to_string(migrate));
      if (only == reuseport::mechanism::steering) {
        return refuse("unsupported", "steering was asked for and is not available: " + no_steering);
      }
      if (only == reuseport::mechanism::migrate) {
        return refuse("unsupported", "migrate was asked for and " + sysctl);
      }
      return refuse("unsupported",
                    "an SO_REUSEPORT takeover needs steering or net.ipv4.tcp_migrate_req=1 to "
                    "keep the connections queued here, and neither is available: " +
                        no_steering + "; " + sysctl);
    }
  }
  // The answer: every fd by index, then "end" (protocol.hpp).
  std::vector<int> fds;
  std::string text = "takeover " + std::to_string(protocol::kVersion) + "\n";
  if (by_reuseport) text += std::string("mode reuseport ") + reuseport::to_string(how) + "\n";
  text += "generation " + std::to_string(generation + 1) + "\n";
  std::size_t next_shared = 0;
  for (auto& l : listeners) {
    if (by_reuseport && reuseport::is_tcp(l.fd.get())) {
      bool v6only = false;
      std::string address = reuseport::describe(l.fd.get(), v6only);
      if (how == reuseport::mechanism::migrate) {
        // The new socket must be able to join: ours may lack SO_REUSEPORT. And no program
        // of an earlier steering may send it connections before it is ready.
        if (!reuseport::enabled(l.fd.get())) (void)reuseport::enable(l.fd.get());
        reuseport::unsteer(l.fd.get());
      }
      text += std::string("bind ") + (l.owns_path ? "1 " : "0 ") + encode_word(l.name) + " " +
              encode_word(address) + (v6only ? " 1\n" : " 0\n");
      shared[next_shared++].second = std::move(l.fd);
      continue;
    }
    text += "fd " + std::to_string(fds.size()) + (l.owns_path ? " 1 " : " 0 ") +
            encode_word(l.name) + "\n";
    fds.push_back(l.fd.get());
  }
  if (family.table_fd() >= 0) {
    text += "table " + std::to_string(fds.size()) + "\n";
    fds.push_back(family.table_fd());
  }
  for (const auto& e : family.for_child()) {
    text += "elder " + std::to_string(fds.size()) + " " + std::to_string(e.generation) + " " +
            std::to_string(e.pid) + "\n";
    fds.push_back(e.pidfd);
  }
  text += "end\n";
  if (fds.size() > protocol::kMaxTakeoverFds) return refuse("start_failed", "too many fds");
  iovec iov{text.data(), text.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(text.size())) {
    log_pid("takeover by " + c.who + " failed: could not send the listeners");
    c.fd.reset();
    return;
  }
  // From here on it is an upgrade like ours, but for how it was started: the connection is
  // its readiness channel, and on failure it is killed as a new process of ours would be.
  // The readiness channel blocks, as the socketpair of a fork/exec upgrade does ('A' and the
  // counters go out in one send).
  ::fcntl(c.fd.get(), F_SETFL, ::fcntl(c.fd.get(), F_GETFL) & ~O_NONBLOCK);
  upgrade_in_flight u;
  u.child = std::move(child);
  u.channel = std::move(c.fd);
  u.deadline = clock::now() + opts.upgrade_timeout;
  u.reuseport = how;
  u.shared = std::move(shared);
  const std::size_t passed =
      fds.size() - (family.table_fd() >= 0 ? 1 : 0) - family.for_child().size();
  const std::size_t bound = u.shared.size();
  upgrade = std::move(u);
  set_state(state::upgrading);
  if (by_reuseport) {
    log_pid(what + " requested over the control socket (" + c.who + "): " + std::to_string(bound) +
            " TCP listener(s) to share by SO_REUSEPORT (" + how_text + "), " +
            std::to_string(passed) + " other(s) passed, waiting for it to be ready");
  } else {
    log_pid(what + " requested over the control socket (" + c.who + "): passed " +
            std::to_string(listeners.size()) + " listener(s), waiting for it to be ready");
  }
}

void upgrader::impl::control_round() {
  using phase = control_client::phase;
  auto now = clock::now();
  const std::string next_generation = std::to_string(generation + 1);
  for (auto& c : control_clients) {
    if (!c.fd) continue;
    if (c.at == phase::command && now >= c.deadline) {
      reply(c, "error bad_command no command within 5 s\n");
      c.fd.reset();
    } else if (c.at == phase::upgrade &&
               c.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      std::error_code ec = c.outcome.get();
      if (ec) {
        reply(c, std::string("error ") + reason_of(ec) + " " +
                     (last_failure.empty() ? ec.message() : last_failure) + "\n");
        c.fd.reset();
      } else if (probation && probation->child.pid == handed_to) {
        reply(c, "ready " + std::to_string(handed_to) + " " + next_generation + "\nprobation " +
                     std::to_string(opts.probation.count()) + "\n");
        c.at = phase::probation;
        c.new_pid = handed_to;
      } else {
        reply(c, "ready " + std::to_string(handed_to) + " " + next_generation + "\nok " +
                     std::to_string(handed_to) + " " + next_generation + "\n");
        c.fd.reset();
      }
    } else if (c.at == phase::probation && probation_end.pid == c.new_pid) {
      reply(c, probation_end.failure.empty()
                   ? "ok " + std::to_string(c.new_pid) + " " + next_generation + "\n"
                   : "error " + probation_end.failure + " " + probation_end.how + "\n");
      c.fd.reset();
    }
  }
  std::erase_if(control_clients, [](const control_client& c) { return !c.fd; });
  // Draining for good (no probation to roll back from): the next generation serves the
  // socket, or nobody (a final shutdown), and then a client should be refused, not queued.
  state s = current.load();
  if (control_listener && (s == state::draining || s == state::stopped) && !probation) {
    control_listener.reset();
  }
}

std::string upgrader::impl::status_text() const {
  std::string out = "pid " + std::to_string(pid) + "\nstate " + to_string(current.load()) +
                    "\ngeneration " + std::to_string(generation) + "\nupgrades " +
                    std::to_string(upgrades.load()) + "\nfailed_upgrades " +
                    std::to_string(failed_upgrades.load());
  for (int r = 0; r < kReasons; ++r)
    out += std::string(" ") + kFailureReasons[r] + "=" + std::to_string(failures[r].load());
  out += "\n";
  for (const auto& g : family.snapshot()) {
    out += "process " + std::to_string(g.generation) + " " + std::to_string(g.pid) + " " +
           to_string(g.current) + " " + std::to_string(g.connections) + (g.self ? " self" : "") +
           "\n";
  }
  return out;
}

}  // namespace endless::core
