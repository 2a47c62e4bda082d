// The old process's side of an upgrade: start the new process, wait for its readiness,
// hand over (systemd's MAINPID, then the drain) or roll back.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "endless/core/error.hpp"
#include "protocol.hpp"
#include "startup.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {

void upgrader::impl::do_upgrade(std::optional<std::promise<std::error_code>> result,
                                const std::string& what) {
  auto refuse = [&](std::error_code ec, const std::string& why) {
    log_pid(why);
    last_failure = why;
    if (result) result->set_value(ec);
  };
  switch (current.load()) {
    case state::starting:
      return refuse(errc::not_ready, what + ", but not ready yet; ignored.");
    case state::upgrading:
      // One upgrade at a time; the caller shares its outcome. The binary may have changed
      // since the running one was started: its new process upgrades again once ready.
      if (queued) {
        if (result) queued->waiting.push_back(std::move(*result));
        log_pid(what + ", but an upgrade is already waiting for an older generation; ignored.");
        return;
      }
      if (result && upgrade) upgrade->waiting.push_back(std::move(*result));
      if (upgrade && !upgrade->again) {
        upgrade->again = true;
        log_pid(what + " during an upgrade: new process " + std::to_string(upgrade->child.pid) +
                " upgrades again once it is ready.");
      } else {
        log_pid(what + ", but an upgrade is already running and will be repeated; ignored.");
      }
      return;
    case state::draining:
    case state::stopped:
      if (!final_shutdown && probation && child_channel) {
        upgrade_owed = true;
        return refuse(errc::draining,
                      what +
                          " while draining: passed on to the new process once the probation "
                          "ends.");
      }
      if (!final_shutdown && pass_on_upgrade()) {
        return refuse(errc::draining, what + " while draining: passed on to the new process.");
      }
      return refuse(errc::draining, what + ", but already shutting down; ignored.");
    case state::serving:
      break;
  }
  std::vector<std::promise<std::error_code>> waiting;
  if (result) waiting.push_back(std::move(*result));
  std::size_t alive = family.prune();
  if (alive >= max_draining) {
    // Our own drain would make one generation too many: wait for one to finish first.
    notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
    queued =
        queued_upgrade{what, std::move(waiting), clock::now() + opts.max_draining_wait, {}, {}};
    set_state(state::upgrading);
    log_pid(what + "; " + std::to_string(alive) +
            " older generation(s) still alive (max_draining " + std::to_string(max_draining) +
            "): upgrading once one exits, at the latest in " +
            std::to_string(opts.max_draining_wait.count()) + " ms after hammering the oldest.");
    return;
  }
  notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
  start_upgrade(what, std::move(waiting));
}

void upgrader::impl::on_queued() {
  auto now = clock::now();
  queued_upgrade& q = *queued;
  std::size_t alive = family.prune();
  if (alive < max_draining || (q.give_up && now >= *q.give_up)) {
    if (alive >= max_draining) {
      log_pid(std::to_string(alive) +
              " older generation(s) still alive after SIGUSR2 and SIGKILL; upgrading anyway.");
    }
    queued_upgrade taken = std::move(q);
    queued.reset();
    set_state(state::serving);
    start_upgrade(taken.what + " (queued)", std::move(taken.waiting));
    return;
  }
  if (!q.kill_at && now >= q.hammer_at) {
    for (const auto& who : family.hammer_oldest(alive - max_draining + 1, SIGUSR2)) {
      log_pid("hammering " + who + " early: " + std::to_string(alive) +
              " older generations still alive, max_draining " + std::to_string(max_draining));
    }
    q.kill_at = now + std::chrono::seconds(2);
  } else if (q.kill_at && !q.give_up && now >= *q.kill_at) {
    for (const auto& who : family.kill_hammered())
      log_pid(who + " did not exit 2000 ms after SIGUSR2; killing it");
    q.give_up = now + std::chrono::seconds(2);
  }
}

void upgrader::impl::cancel_queued(const std::string& why) {
  log_pid("queued upgrade cancelled: " + why);
  auto waiting = std::move(queued->waiting);
  queued.reset();
  set_state(state::serving);
  last_failure = "the queued upgrade was cancelled: " + why;
  for (auto& w : waiting)
    w.set_value(errc::aborted);
}

bool upgrader::impl::pass_on_upgrade() {
  std::lock_guard lock(handover_mu);
  if (!child_channel) return false;
  char u = protocol::kUpgradeAgain;
  return ::send(child_channel.get(), &u, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1;
}

void upgrader::impl::start_upgrade(const std::string& what,
                                   std::vector<std::promise<std::error_code>> waiting) {
  auto refuse = [&](std::error_code ec, const std::string& why) {
    log_pid(why);
    for (auto& w : waiting)
      w.set_value(ec);
  };
  // The new process could not even be started: count it, end systemd's reload, say why.
  auto cant_start = [&](std::error_code ec, const std::string& why) {
    count_failure(start_failed);
    last_failure = why;
    notify("READY=1\nSTATUS=upgrade failed: " + why);
    refuse(ec, "upgrade failed: " + why + "; still serving.");
  };
  if (pid == 1) {
    // A container's init: when we exit at the end of the drain, the kernel kills everything
    // left in the pid namespace, the new process included.
    log_pid(what + ".");
    return cant_start(std::make_error_code(std::errc::operation_not_permitted),
                      "this process is PID 1 (a container's init): the new process would die "
                      "with it at the end of the drain; run the server under an init that "
                      "stays, or roll out new containers instead");
  }
  log_pid(what + ". forking.");

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    std::error_code ec(errno, std::system_category());
    return cant_start(ec, "can't start new process: socketpair: " + ec.message());
  }
  unique_fd ours(pair[0]);
  unique_fd theirs(pair[1]);

  spawn_request req;
  req.executable = startup().executable;
  req.argv = startup().argv;
  std::error_code dup_ec;
  req.fds = registry::instance().handover(dup_ec);
  if (dup_ec) {
    return cant_start(
        dup_ec, "can't start new process: can't duplicate the listeners: " + dup_ec.message());
  }
  req.ready_fd = theirs.get();
  req.generation = generation + 1;
  req.table_fd = family.table_fd();
  for (const auto& e : family.for_child())
    req.elders.push_back({e.generation, e.pid, e.pidfd});
  req.notify_socket = systemd.path();
  req.watchdog_usec = watchdog_usec;
  spawned child;
  std::string why;
  if (auto ec = spawn(req, child, why)) return cant_start(ec, why);
  upgrade_in_flight u;
  u.child = std::move(child);
  u.channel = std::move(ours);
  u.started = clock::now();  // spawn() returns once the exec succeeded
  u.deadline = *u.started + opts.upgrade_timeout;
  u.waiting = std::move(waiting);
  upgrade = std::move(u);
  set_state(state::upgrading);
  log_pid("started new process " + std::to_string(upgrade->child.pid) +
          ", waiting for it to be ready");
}

void upgrader::impl::on_channel_readable() {
  // 'T' messages (listeners whose connections it takes), then 'R'.
  char buf[512];
  ssize_t n;
  do {
    n = ::recv(upgrade->channel.get(), buf, sizeof buf, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return;
  const pid_t child = upgrade->child.pid;
  bool ready = false;
  if (n > 0) {
    upgrade->received.append(buf, static_cast<std::size_t>(n));
    std::string& in = upgrade->received;
    if (in.size() > 64 * 1024 || upgrade->takes.size() > 1024) {
      fail_upgrade(errc::child_exited, "new process " + std::to_string(upgrade->child.pid) +
                                           " sent too much before its readiness and");
      return;
    }
    auto listing = [&](char c) {
      return c == protocol::kTakes ||
             (c == protocol::kTakesNew && upgrade->reuseport != reuseport::mechanism::none);
    };
    while (!in.empty() && listing(in[0]) && in.size() >= 2 &&
           in.size() >= 2u + static_cast<unsigned char>(in[1])) {
      std::size_t len = static_cast<unsigned char>(in[1]);
      (in[0] == protocol::kTakes ? upgrade->takes : upgrade->takes_new)
          .push_back(in.substr(2, len));
      in.erase(0, 2 + len);
    }
    ready = !in.empty() && in[0] == protocol::kReady;
    if (!ready && (in.empty() || listing(in[0]))) return;  // the rest is coming
  }
  if (!ready) {
    // EOF: it exited, or closed the channel without being ready. Learn how, then roll back.
    fail_upgrade(errc::child_exited,
                 "new process " + std::to_string(child) + " closed the readiness channel and");
    return;
  }
  if (upgrade->reuseport != reuseport::mechanism::none) {
    // SO_REUSEPORT: what is left in our queues goes to it ('N'), so it must take it; then
    // new connections go to its sockets (steering), or keep coming to both until ours close
    // (migrate), and the kernel moves what is left to its sockets.
    for (const auto& [address, fd] : upgrade->shared) {
      const auto& t = upgrade->takes_new;
      if (std::find(t.begin(), t.end(), address) == t.end()) {
        fail_upgrade(errc::not_ready,
                     "new process " + std::to_string(child) + " takes no connection of " + address +
                         " from our queue (drainable::adopt_new), which an SO_REUSEPORT "
                         "takeover needs; it was killed");
        return;
      }
    }
    if (upgrade->reuseport == reuseport::mechanism::steering) {
      // Slot 1 must be the new socket: ours and its, nobody else's, on each address.
      for (const auto& [address, fd] : upgrade->shared) {
        if (int sockets = reuseport::listeners_on(fd.get()); sockets != 2) {
          fail_upgrade(errc::not_ready, std::to_string(n) + " sockets listen on " + address +
                                            " at the readiness of new process " +
                                            std::to_string(child) +
                                            " (ours and its were expected); it was killed");
          return;
        }
      }
      for (const auto& [address, fd] : upgrade->shared) {
        if (auto e = reuseport::steer(fd.get(), 1)) {
          for (const auto& s : upgrade->shared)
            (void)reuseport::steer(s.second.get(), 0);
          fail_upgrade(errc::not_ready, "can't steer new connections of " + address +
                                            " to new process " + std::to_string(child) + " (" +
                                            e.message() + "); it was killed");
          return;
        }
      }
    }
  }
  // Hand-over. Acknowledge first: if the new process is gone by now nothing has been said
  // to systemd and the rollback is clean. Then, as the main pid, tell systemd who the main
  // pid is now (NotifyAccess=main would drop a MAINPID= from the new process).
  std::string ack(1, protocol::kAck);
  ack += carry_out();
  if (::send(upgrade->channel.get(), ack.data(), ack.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(ack.size())) {
    if (upgrade->reuseport == reuseport::mechanism::steering) {
      for (const auto& s : upgrade->shared)
        (void)reuseport::steer(s.second.get(), 0);  // ours again
    }
    fail_upgrade(errc::child_exited,
                 "new process " + std::to_string(child) + " went away during the hand-over");
    return;
  }
  const bool on_probation = opts.probation.count() > 0 && can_roll_back();
  if (upgrade->again) {
    // Asked for again during this upgrade: the new process repeats it (protocol 'U'), once
    // no rollback can come from us.
    if (on_probation) {
      upgrade_owed = true;
    } else {
      char u = protocol::kUpgradeAgain;
      if (::send(upgrade->channel.get(), &u, 1, MSG_NOSIGNAL) == 1) {
        log_pid("passing the upgrade asked for meanwhile on to new process " +
                std::to_string(child));
      }
    }
  }
  handed_foreign = upgrade->child.foreign;
  if (handed_foreign) {
    // A takeover: the new process belongs to another unit (if any); ours ends when we exit,
    // and keeps its watchdog pinged until then.
    notify("STATUS=taken over by pid " + std::to_string(child));
  } else {
    notify("MAINPID=" + std::to_string(child) + "\nREADY=1");
  }
  upgrades++;
  handed_to = child;
  probation_end = {};  // a verdict of an earlier upgrade is not this one's
  std::string took;
  if (upgrade->started) {
    auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - *upgrade->started);
    // Tenths of a millisecond in integers: printf would follow the application's LC_NUMERIC.
    auto tenths = (us.count() + 50) / 100;
    took.append(" (").append(std::to_string(tenths / 10)).append(".");
    took.append(std::to_string(tenths % 10)).append(" ms after its exec)");
  }
  log_pid("new process " + std::to_string(child) + " is ready; handing over" + took + ".");
  if (on_probation) {
    // Watched for the probation: if it crashes meanwhile, we take the service back.
    auto now = clock::now();
    probation = probation_watch{std::move(upgrade->child), now, now + opts.probation};
    family.publish_probation(true);
  }
  {
    // Kept for the connection hand-over and the new process's 'D' (protocol.hpp). Each
    // message with an fd costs about a kilobyte of send buffer: room for thousands at once
    // (SO_SNDBUFFORCE needs CAP_NET_ADMIN; otherwise up to net.core.wmem_max).
    int size = 8 << 20;
    if (::setsockopt(upgrade->channel.get(), SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0) {
      ::setsockopt(upgrade->channel.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
    std::lock_guard lock(handover_mu);
    child_takes_for = std::move(upgrade->takes);
    child_takes_new_for = std::move(upgrade->takes_new);
    child_channel = std::move(upgrade->channel);
  }
  child_takes.store(!child_takes_for.empty());
  if (upgrade->reuseport != reuseport::mechanism::none) {
    retiring.clear();
    for (auto& [address, fd] : upgrade->shared) {
      // Accepted from on this thread's poll: never block on an empty queue.
      ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
      retiring.push_back({address, std::move(fd)});
    }
    retiring_by = upgrade->reuseport;
    retired_since = clock::now();
    retire_at = *retired_since + std::max<std::chrono::milliseconds>(
                                     kRetireAfter, on_probation ? opts.probation : kRetireAfter);
    passed_new = lost_new = 0;
    log_pid(upgrade->reuseport == reuseport::mechanism::steering
                ? "new connections go to new process " + std::to_string(child) +
                      " (SO_ATTACH_REUSEPORT_CBPF); passing it what is left in our queue"
                : "net.ipv4.tcp_migrate_req=1: passing new process " + std::to_string(child) +
                      " what comes to our sockets until they close and the kernel moves the "
                      "rest");
  }
  auto waiting = end_upgrade();  // the child is on its own now (but for the probation)
  // Drain first: whoever waits on upgrade() sees this process already draining.
  begin_drain(false);
  for (auto& w : waiting)
    w.set_value({});
}

std::string upgrader::impl::carry_out() {
  // Our counts as they stand: the new process starts from them.
  std::vector<std::pair<std::string, std::uint64_t>> all = {
      {"endless_restarts_total", upgrades.load() + 1},  // this one, about to succeed
      {"endless_restart_failures_total", failed_upgrades.load()}};
  for (int r = 0; r < kReasons; ++r)
    all.emplace_back(std::string("endless_restart_failures_total:") + kFailureReasons[r],
                     failures[r].load());
  decltype(carriers) producers;
  {
    std::lock_guard lock(mu);
    producers = carriers;
  }
  for (auto& fn : producers) {
    try {
      auto more = fn();
      all.insert(all.end(), more.begin(), more.end());
    } catch (...) {
      log_pid("a carry-over producer threw; its counters start from zero in the new process");
    }
  }
  std::string body;
  for (const auto& [name, value] : all) {
    if (name.empty() || name.find_first_of("\t\n") != std::string::npos) continue;
    body += name + '\t' + std::to_string(value) + '\n';
  }
  if (body.size() > protocol::kMaxCarried) body.clear();  // never: a few kilobytes
  std::string out(1, protocol::kCarried);
  auto len = static_cast<std::uint32_t>(body.size());
  out.append(reinterpret_cast<const char*>(&len), sizeof len);
  return out + body;
}

std::vector<std::promise<std::error_code>> upgrader::impl::end_upgrade() {
  auto waiting = std::move(upgrade->waiting);
  upgrade.reset();
  return waiting;
}

void upgrader::impl::on_child_exited() {
  fail_upgrade(errc::child_exited, "new process " + std::to_string(upgrade->child.pid));
}

void upgrader::impl::fail_upgrade(std::error_code ec, const std::string& why) {
  std::string status = kill_and_reap(upgrade->child);
  std::string reason = why;
  if (ec == errc::child_exited) reason += " " + status + " before it was ready";
  count_failure(ec == errc::ready_timeout ? not_ready : exited);
  last_failure = reason;
  log_pid("upgrade failed: " + reason + "; still serving.");
  auto waiting = end_upgrade();
  set_state(state::serving);
  notify("READY=1\nSTATUS=upgrade failed: " + reason);
  for (auto& w : waiting)
    w.set_value(ec);
}

void upgrader::impl::abort_upgrade() {
  std::string status = kill_and_reap(upgrade->child);
  log_pid("upgrade aborted by shutdown; new process " + std::to_string(upgrade->child.pid) + " " +
          status);
  count_failure(aborted);
  last_failure =
      "aborted by a shutdown; new process " + std::to_string(upgrade->child.pid) + " " + status;
  auto waiting = end_upgrade();
  set_state(state::serving);
  for (auto& w : waiting)
    w.set_value(errc::aborted);
}

}  // namespace endless::core
