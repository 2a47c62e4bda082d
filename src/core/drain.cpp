// The drain order (DESIGN.md), in this one place:
//   1. stop accepting: every server takes its listeners out of its loop and closes its
//      copies, then the registry closes ours (never shutdown(): the new process shares them)
//   2. every server lets its connections finish (HTTP/1: Connection: close on the next
//      response, idle ones closed after a grace period; HTTP/2: GOAWAY twice)
//   3. arm the hammer (hammer_time; negative = never; SIGUSR2 fires it now)
//   4. stop when every server reported drained, or when the hammer fired
// SIGINT/SIGTERM run the same drain without a new process (`final`).
#include "pid_file.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {

void upgrader::impl::do_shutdown(const std::string& what) {
  state s = current.load();
  if (s == state::draining || s == state::stopped) {
    log_pid(what + ", but already shutting down; ignored.");
    return;
  }
  log_pid(what + ".");
  if (upgrade) abort_upgrade();
  begin_drain(true);
}

void upgrader::impl::begin_drain(bool final) {
  final_shutdown = final;
  current.store(state::draining);
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
  for (drainable* d : targets) {
    d->begin_drain([box = box, d] { box->post({command::kind::drained, {}, d}); });
  }
  // A process that never served (killed before ready) must not unlink the paths of the
  // process that still does.
  registry::instance().close_all(final && served);

  // Step 3.
  if (opts.hammer_time.count() >= 0) hammer_at = clock::now() + opts.hammer_time;

  // Step 4.
  if (draining_services.empty()) finish();
}

void upgrader::impl::on_service_drained(const drainable* d) {
  if (current.load() != state::draining) return;
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
  if (final_shutdown && !opts.pid_file.empty()) remove_pid_file(opts.pid_file, pid);
  log_pid(final_shutdown ? "Shut down." : "Handed over; exiting.");
  // wait() returns at the end of this loop round, after the post-signal hooks of the
  // signal being handled (if any) have run.
  drained = true;
}

}  // namespace endless::core
