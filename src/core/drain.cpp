// The drain order (DESIGN.md), in this one place:
//   1. stop accepting: every server takes its listeners out of its loop and closes its
//      copies, then the registry closes ours (never shutdown(): the new process shares them)
//   2. every server lets its connections finish (HTTP/1: Connection: close on the next
//      response, idle ones closed after a grace period; HTTP/2: GOAWAY twice)
//   3. arm the hammer (hammer_time; negative = never; SIGUSR2 fires it now)
//   4. stop when every server reported drained, or when the hammer fired
// SIGINT/SIGTERM run the same drain without a new process (`final`).
#include <algorithm>

#include <sys/socket.h>

#include <cstring>

#include "endless/core/address.hpp"
#include "pid_file.hpp"
#include "protocol.hpp"
#include "startup.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {

void upgrader::impl::do_shutdown(const std::string& what) {
  state s = current.load();
  if (s == state::draining || s == state::stopped) {
    if (probation) {
      // A stop asked for while the old process waits out the probation: no rollback any
      // more, and no waiting for one.
      end_probation(what + ": probation ended early");
      return;
    }
    log_pid(what + ", but already shutting down; ignored.");
    return;
  }
  log_pid(what + ".");
  if (upgrade) abort_upgrade();
  if (queued) cancel_queued("shutting down");
  begin_drain(true);
}

void upgrader::impl::begin_drain(bool final) {
  final_shutdown = final;
  set_state(state::draining);
  drain_began = clock::now();
  if (parent_channel) {
    // 'D': the old process, if still on probation, must not take our exit for a crash, and
    // sends no more connections. It closes its end on reading it; we keep reading until
    // then, so that a connection it sent meanwhile is not dropped with the channel (our
    // draining servers take it and pass it on or close it when idle).
    char d = protocol::kDraining;
    if (::send(parent_channel.get(), &d, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) {
      parent_channel.reset();
    }
  }
  if (final) notify("STOPPING=1");

  std::vector<std::function<void()>> hooks;
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    hooks = shutdown_hooks;
    targets = services;
  }
  for (auto& fn : hooks) {
    try {
      fn();
    } catch (const std::exception& e) {
      log_pid(std::string("shutdown hook threw: ") + e.what());
    } catch (...) {
      log_pid("shutdown hook threw");
    }
  }
  log_pid("Waiting for connections to finish...");

  // Steps 1 and 2.
  draining_services.assign(targets.begin(), targets.end());
  std::uint64_t epoch = ++drain_epoch;
  for (drainable* d : targets) {
    d->begin_drain([box = box, d, epoch] { box->post({command::kind::drained, {}, d, epoch}); });
  }
  // A process that never served (killed before ready) must not unlink the paths of the
  // process that still does. On probation the copies stay until it ends.
  if (!probation) {
    for (drainable* d : targets)
      d->release_listeners();
    registry::instance().close_all(final && served);
  }

  // Step 3.
  if (opts.hammer_time.count() >= 0) hammer_at = clock::now() + opts.hammer_time;

  // Step 4.
  if (draining_services.empty()) finish();
}

void upgrader::impl::on_service_drained(const drainable* d, std::uint64_t epoch) {
  if (current.load() != state::draining || epoch != drain_epoch) return;
  auto it = std::find(draining_services.begin(), draining_services.end(), d);
  if (it == draining_services.end()) return;
  draining_services.erase(it);
  if (draining_services.empty()) finish();
}

void upgrader::impl::do_hammer() {
  if (current.load() != state::draining) return;
  log_pid("[STOP - Hammer Time] Forcefully shutting down parent");
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    targets = services;
  }
  for (drainable* d : targets) {
    if (std::find(draining_services.begin(), draining_services.end(), d) !=
        draining_services.end()) {
      d->hammer();
    }
  }
  draining_services.clear();
  finish();
}

void upgrader::impl::finish() {
  hammer_at.reset();
  if (probation || !retiring.empty()) {
    finish_pending = true;  // exits when the probation ends (or is ended), our queues empty
    return;
  }
  if (parent_channel) {
    // Connections the old process sent before it read our 'D' are still on their way.
    if (!channel_wait_until) channel_wait_until = clock::now() + std::chrono::seconds(2);
    if (clock::now() < *channel_wait_until) return;  // again at EOF or at the deadline
    parent_channel.reset();
  }
  channel_wait_until.reset();
  if (final_shutdown && !opts.pid_file.empty()) remove_pid_file(opts.pid_file, pid);
  if (auto n = handed.load()) {
    log_pid("passed " + std::to_string(n) + " idle connection(s) to the new process");
  }
  if (drain_began) {
    family.record_drain(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - *drain_began)
            .count()));
    drain_began.reset();
  }
  log_pid(final_shutdown ? "Shut down." : "Handed over; exiting.");
  // wait() returns at the end of this loop round, after the post-signal hooks of the
  // signal being handled (if any) have run.
  drained = true;
}

void upgrader::impl::end_probation(const std::string& why) {
  if (!probation) return;
  const pid_t child = probation->child.pid;
  log_pid("probation over (" + why + "); new process " + std::to_string(child) +
          " keeps the service");
  probation_end = {child, {}, {}};
  probation.reset();  // our child still: reaped by whoever inherits it when we exit
  family.publish_probation(false);
  if (upgrade_owed) {
    upgrade_owed = false;
    if (pass_on_upgrade()) {
      log_pid("passing the upgrade asked for meanwhile on to new process " + std::to_string(child));
    } else {
      log_pid("the upgrade asked for meanwhile is dropped: new process " + std::to_string(child) +
              " takes no more (it drains itself)");
    }
  }
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    targets = services;
  }
  for (drainable* d : targets)
    d->release_listeners();
  registry::instance().close_all(false);
  if (retire_at && retired_since) {
    // Over early (a stop, the hammer, its own drain): our queue needs only its own time.
    retire_at = std::min(*retire_at, std::max(clock::now(), *retired_since + kRetireAfter));
  }
  if (finish_pending) {
    finish_pending = false;
    finish();
  }
}

bool upgrader::impl::can_roll_back() {
  std::lock_guard lock(mu);
  return !services.empty() && std::all_of(services.begin(), services.end(),
                                          [](const drainable* d) { return d->can_resume(); });
}

void upgrader::impl::on_probation_child_exited() {
  const pid_t child = probation->child.pid;
  auto lived =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - probation->since);
  std::string how;
  exit_kind kind = reap_exited(probation->child, how);
  // A process that took over on its own is not our child: no exit status. Its exit without
  // a 'D' (it did not drain on purpose) is taken for a crash.
  bool crashed =
      kind == exit_kind::crashed || (kind == exit_kind::unknown && probation->child.foreign);
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    targets = services;
  }
  bool resumable = can_roll_back();
  if (!crashed || !resumable) {
    end_probation("new process " + std::to_string(child) + " " + how +
                  (crashed ? "; a server here can't resume, no rollback" : ", not a crash"));
    // Whoever waits for this upgrade's verdict: it did not end well, even without a rollback.
    probation_end = {child, "exited",
                     "new process " + std::to_string(child) + " " + how + " " +
                         std::to_string(lived.count()) + " ms after taking over" +
                         (crashed ? "; no rollback: a server here can't resume"
                                  : "; not a crash, so no rollback")};
    return;
  }
  probation_end = {child, "rolled_back",
                   "new process " + std::to_string(child) + " " + how + " " +
                       std::to_string(lived.count()) + " ms after taking over; pid " +
                       std::to_string(pid) + " serves again"};
  probation.reset();
  family.publish_probation(false);
  close_child_channel();
  if (upgrade_owed) {
    upgrade_owed = false;
    log_pid("the upgrade asked for meanwhile is dropped with the rollback");
  }
  rollbacks++;
  count_failure(rolled_back);  // and upgrades keeps it: counters never go down
  ++drain_epoch;               // a `drained` of the drain being undone is stale from now on
  draining_services.clear();
  hammer_at.reset();
  drain_began.reset();
  finish_pending = false;
  for (drainable* d : targets)
    d->resume();
  unretire_listeners();
  set_state(state::serving);
  if (!opts.pid_file.empty()) {
    if (auto ec = write_pid_file(opts.pid_file, pid)) {
      log_pid("can't write pid file " + opts.pid_file + ": " + ec.message());
    }
  }
  notify("MAINPID=" + std::to_string(pid) + "\nREADY=1\nSTATUS=rolled back: new process " +
         std::to_string(child) + " " + how);
  if (watchdog_usec) next_watchdog = clock::now();
  // Logged once it is true: accepting again, the pid file and systemd naming us.
  log_pid("new process " + std::to_string(child) + " " + how + " " + std::to_string(lived.count()) +
          " ms after it took over; rolled back: serving again.");
}

void upgrader::impl::close_child_channel() {
  child_takes.store(false);
  std::lock_guard lock(handover_mu);
  child_channel.reset();
  child_takes_for.clear();
}

void upgrader::impl::on_child_channel_readable() {
  char buf[512];
  ssize_t n;
  do {
    n = ::recv(child_channel.get(), buf, sizeof buf, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return;
  const pid_t child = probation ? probation->child.pid : -1;
  bool draining_child = n > 0;  // 'D' (anything else ends the hand-over too)
  if (n > 0 && buf[0] != protocol::kDraining) {
    log_pid("readiness channel: unexpected byte from the new process; no more hand-over");
  }
  close_child_channel();  // 'D' or EOF: it takes no more connections
  if (draining_child && probation) {
    end_probation("new process " + std::to_string(child) + " is draining itself");
  }
  // EOF without 'D': a crash closes it too; the pidfd tells.
}

bool upgrader::impl::on_parent_channel_readable() {
  char buf[4 + 2 + 255];  // a few 'U' bytes may come before a whole 'C' message
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(parent_channel.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  std::vector<unique_fd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
  if (n <= 0) {
    parent_channel.reset();  // the old process is gone (or read our 'D')
    if (startup().env.reuseport == "steering") {
      // Its socket closed before it went: ours moved from slot 1 to slot 0 of the group, and
      // the program still picks slot 1, where a socket joining later would get everything.
      // Only where ours is alone: with another one there, slot 0 may be that one.
      std::error_code ec;
      for (const auto& l : registry::instance().handover(ec)) {
        if (!reuseport::is_tcp(l.fd.get()) || !reuseport::enabled(l.fd.get())) continue;
        if (int alone = reuseport::listeners_on(l.fd.get()); alone == 1) {
          (void)reuseport::steer(l.fd.get(), 0);
        } else {
          log_pid(std::to_string(alone) + " sockets listen on " + local_address(l.fd.get()) +
                  " after the old process went: steering left as it is");
        }
      }
    }
    if (channel_wait_until) finish();
    return false;
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    // The kernel dropped the fd: that connection is gone. Logged once per process.
    if (lost_in_transfer++ == 0) {
      log_pid("connection hand-over: out of fds, connections passed to us are being lost");
    }
    return true;
  }
  // One message with fds per read: the kernel does not merge one with the next. 'U' carries
  // none and may come in the same read as the 'C' after it.
  std::string_view data(buf, static_cast<std::size_t>(n));
  if (!data.empty() && data[0] == protocol::kUpgradeAgain) {
    while (!data.empty() && data[0] == protocol::kUpgradeAgain)
      data.remove_prefix(1);
    do_upgrade(std::nullopt, "Upgrade passed on by the old process");
    if (data.empty() && fds.empty()) return true;
  }
  if (data.size() < 2 ||
      (data[0] != protocol::kConnection && data[0] != protocol::kNewConnection) ||
      data.size() != 2u + static_cast<unsigned char>(data[1]) || fds.size() != 1) {
    log_pid("connection hand-over: malformed message from the old process; ignoring it");
    return true;
  }
  const char kind = data[0];
  std::string_view listener = data.substr(2);
  // Draining ourselves: straight on to our own new process, if it takes it.
  if (current.load() == state::draining && send_connection(fds[0].get(), listener, kind)) {
    return true;
  }
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    targets = services;
  }
  // A connection never read from is served even while we drain (it was queued for us; our
  // servers answer it and close). An idle keep-alive one only until our drain ends.
  if (kind == protocol::kNewConnection ? !drained : (!drained && !channel_wait_until)) {
    for (drainable* d : targets) {
      if (kind == protocol::kNewConnection ? d->adopt_new(fds[0], listener)
                                           : d->adopt(fds[0], listener)) {
        adopted_count++;
        return true;
      }
    }
  }
  // Once per process: a new process that takes none (hand-over off) would log each one.
  if (refused_adoptions++ == 0) {
    log_pid("connection hand-over: no server here takes connections of " + std::string(listener) +
            "; closing them");
  }
  return true;
}

bool upgrader::impl::adopt_here(unique_fd& conn, std::string_view listener) {
  std::vector<drainable*> targets;
  {
    std::lock_guard lock(mu);
    targets = services;
  }
  for (drainable* d : targets) {
    if (d->adopt_new(conn, listener)) return true;
  }
  return false;
}

void upgrader::impl::on_retiring_readable() {
  if (retire_backoff && clock::now() < *retire_backoff) return;
  retire_backoff.reset();
  // Ours to serve, draining, when the new process takes no more.
  auto keep_here = [&] {
    if (!adopt_here(retire_pending, retire_pending_for)) {
      if (lost_new++ == 0) {
        log_pid("no process takes the connections left in our SO_REUSEPORT queue of " +
                retire_pending_for + "; closing them");
      }
      retire_pending.reset();
    }
  };
  for (int round = 0; round < 1024; ++round) {
    if (retire_pending) {
      errno = 0;
      if (send_connection(retire_pending.get(), retire_pending_for, protocol::kNewConnection)) {
        retire_pending.reset();
        passed_new++;
      } else if (child_channel && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;  // its channel is full: again when it can take more (POLLOUT)
      } else {
        keep_here();  // it takes no more (it drains itself, is gone, or the send failed)
      }
    }
    bool got = false;
    retire_all_empty = true;
    for (auto& l : retiring) {
      int fd;
      do {
        fd = ::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        // A connection that died in the queue: the next one.
      } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED || errno == EPROTO));
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          // Out of fds or memory: the queue is not empty; again in 100 ms, never closed so.
          retire_all_empty = false;
          if (!retire_backoff) {
            log_pid(std::string("accept on our SO_REUSEPORT listener of ") + l.address + ": " +
                    std::strerror(errno) + "; trying again in 100 ms");
          }
          retire_backoff = clock::now() + std::chrono::milliseconds(100);
        }
        continue;
      }
      retire_pending.reset(fd);
      retire_pending_for = l.address;
      retire_all_empty = false;
      got = true;
      break;
    }
    if (!got) return;
  }
}

void upgrader::impl::retire_listeners(bool sweep) {
  if (retiring.empty()) return;
  if (sweep) on_retiring_readable();
  if (retire_pending || !retire_all_empty) {
    // The channel is full, or accept failed: soon again, never closed with a queue.
    retire_at = clock::now() + std::chrono::milliseconds(retire_backoff ? 100 : 10);
    return;
  }
  // Empty now. With steering nothing new comes to these sockets; with migrate the kernel
  // moves whatever completes meanwhile to the new process's.
  log_pid("closing our " + std::to_string(retiring.size()) +
          " SO_REUSEPORT listener(s): " + std::to_string(passed_new) +
          " connection(s) from their queues passed to the new process" +
          (lost_new ? ", " + std::to_string(lost_new) + " closed (no taker)" : ""));
  retiring.clear();
  retire_at.reset();
  retire_backoff.reset();
  if (finish_pending && !probation) {
    finish_pending = false;
    finish();
  }
}

void upgrader::impl::unretire_listeners() {
  if (retiring.empty()) return;
  if (retiring_by == reuseport::mechanism::steering) {
    for (auto& l : retiring)
      (void)reuseport::steer(l.fd.get(), 0);  // alone again: 0 is ours
  }
  if (retire_pending && !adopt_here(retire_pending, retire_pending_for)) {
    log_pid("rollback: a connection from our SO_REUSEPORT queue had no taker");
  }
  retire_pending.reset();
  retiring.clear();
  retire_at.reset();
}

}  // namespace endless::core
