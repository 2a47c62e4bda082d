// The process lifecycle: one `upgrader` per process, owned by the application.
//
// It turns signals (or calls) into the zero-downtime state machine of DESIGN.md:
//
//   starting --ready()--> serving --SIGHUP--> upgrading --new process ready--> draining
//                            ^                     |                             |
//                            +--- new process failed (killed, counted) ----------+--> stopped
//   serving/starting --SIGINT/SIGTERM--> draining (final: no new process)
//
// Back-to-back upgrades: each process knows the older generations still alive. An upgrade
// that would leave more than options::max_draining of them draining waits (upgrading, no
// new process yet) for one to exit, at most options::max_draining_wait; then the oldest is
// hammered early (SIGUSR2) and the upgrade goes on once it is gone. An upgrade asked for
// while one is running is passed on to the new process once it is ready (protocol 'U').
//
// Servers (anything that accepts connections) attach as `drainable`s; when the drain
// begins each is told to stop accepting and to finish its connections, and reports back
// through a callback; the hammer force-closes whatever is left. Listening sockets come from
// the process-wide `registry` (listen() here is a shortcut to it).
//
// Threads: the upgrader runs one thread of its own. Signal handlers only write the signal
// number to a pipe that this thread reads, so signals work whatever threads the
// application started before. Hooks, drainable callbacks and log lines run on that thread.
// Every member function is thread-safe; ready() and upgrade() may be called from any thread
// (ready() from a hook too).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "endless/core/options.hpp"
#include "endless/core/registry.hpp"
#include "endless/core/unique_fd.hpp"

namespace endless::core {

/// A server the upgrader drains. Both calls come from the upgrader's thread.
class drainable {
 public:
  /// Drain steps 1 and 2: stop accepting (take the listeners out of the event loop and close
  /// this process's copies; never shutdown() them, the new process shares them), then let
  /// every connection finish its work and close. Call `done` (from any thread, once) when
  /// nothing is left.
  virtual void begin_drain(std::function<void()> done) = 0;
  /// Hammer time: close every remaining connection now. When it returns they are closed.
  virtual void hammer() noexcept = 0;
  /// Probation rollback (options::probation): undo begin_drain(), accepting again on the
  /// same listeners; `done` of that drain must never be called after this returns. Servers
  /// that can't return false from can_resume(), and then no process of theirs is ever
  /// taken back.
  virtual bool can_resume() const noexcept { return false; }
  virtual void resume() {}
  /// Servers that can resume keep their listener copies open through a drain; this closes
  /// them once no rollback can come (a final drain, probation off or over).
  virtual void release_listeners() noexcept {}
  /// Connection hand-over (new process): an idle connection the old process passed on,
  /// accepted by the listener whose local address is `listener` (core::local_address()).
  /// Take it (move from `conn`) and return true, or return false to let another server try
  /// (none: it is closed). Called from the upgrader's thread.
  virtual bool adopt(unique_fd& conn, std::string_view listener) {
    (void)conn;
    (void)listener;
    return false;
  }
  /// The local address of the listener whose connections adopt() takes; empty: none. Asked
  /// once, when this (new) process is ready, and told to the old process.
  virtual std::string adopts_for() const { return {}; }
  /// SO_REUSEPORT takeover (new process): a connection the old process accepted from its own
  /// socket on `listener` and never read from (what was left in its queue once new
  /// connections came here). Serve it as if this process had accepted it: take it (move from
  /// `conn`) and return true, or return false (none: it is closed). Upgrader's thread.
  virtual bool adopt_new(unique_fd& conn, std::string_view listener) {
    (void)conn;
    (void)listener;
    return false;
  }
  /// The local address of the listener whose connections adopt_new() takes; empty: none. An
  /// SO_REUSEPORT takeover fails unless every shared TCP listener is taken.
  virtual std::string adopts_new_for() const { return {}; }

 protected:
  ~drainable() = default;
};

/// Drains finished by the processes of this lineage (upgrader::drains()): how many, their
/// total and the last one's duration, from the drain's start to the process's end.
struct drain_stats {
  std::uint64_t count = 0;
  std::uint64_t total_ms = 0;
  std::uint64_t last_ms = 0;
};

enum class hook { pre_signal, post_signal };
inline constexpr hook pre_signal = hook::pre_signal;
inline constexpr hook post_signal = hook::post_signal;

enum class state { starting, serving, upgrading, draining, stopped };
const char* to_string(state s) noexcept;

/// One process of this service's lineage (upgrader::generations()).
struct generation_info {
  std::uint64_t generation = 0;  ///< upgrades that led to it
  pid_t pid = 0;
  state current = state::starting;
  std::int64_t connections = 0;  ///< open connections, as its servers report them
  bool self = false;             ///< this process
};

/// Where the control socket lives by default: "<pid file>.ctl" (endlessctl finds it the same
/// way from --pidfile).
inline std::string control_socket_for(std::string_view pid_file) {
  return std::string(pid_file) + ".ctl";
}

/// This process's generation (how many upgrades led to it), known from start-up; the same as
/// upgrader::generation(), without an upgrader.
std::uint64_t this_process_generation() noexcept;

class upgrader {
 public:
  /// Installs the signal handlers and starts the upgrader's thread. Throws std::system_error
  /// if another upgrader exists in this process.
  explicit upgrader(options opts = {});
  /// Kills an upgrade in progress, restores the signal handlers.
  ~upgrader();
  upgrader(const upgrader&) = delete;
  upgrader& operator=(const upgrader&) = delete;

  /// registry::instance().listen(): inherited or freshly bound.
  unique_fd listen(std::string_view network, std::string_view address);
  unique_fd listen(std::string_view network, std::string_view address,
                   std::error_code& ec) noexcept;

  /// `d` must outlive the upgrader or be detached first.
  void attach(drainable& d);
  void detach(drainable& d);

  /// Runs `fn` before (pre_signal) or after (post_signal) this process handles `signo`
  /// (SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGTSTP), in registration order, once per
  /// signal. Registering a SIGTSTP hook takes Ctrl-Z's stop away from the process.
  void on(hook when, int signo, std::function<void()> fn);
  /// Runs when the drain begins (endless's shutdown_initiated), on both final shutdowns and
  /// upgrades.
  void on_shutdown(std::function<void()> fn);

  /// This process can serve: tell the old process (which then drains), write the pid file,
  /// tell systemd, close inherited listeners nobody claimed. Call once.
  void ready();
  void ready(std::error_code& ec) noexcept;

  /// Starts an upgrade, as SIGHUP does. The future holds {} once the new process is ready
  /// and this one has begun draining (after waiting for an older generation, see above),
  /// or why it failed (errc::child_exited, ready_timeout, exec_failed, draining, not_ready,
  /// aborted).
  std::future<std::error_code> upgrade();
  /// Graceful shutdown, as SIGTERM does.
  void shutdown();
  /// Force-closes a draining process now, as SIGUSR2 does; ignored unless draining.
  void hammer();

  /// Blocks until the drain has finished (or the hammer fired) and the process should exit.
  void wait();
  bool wait_for(std::chrono::milliseconds timeout);

  state current_state() const noexcept;
  bool has_parent() const noexcept;           ///< started by an endless upgrade
  std::uint64_t generation() const noexcept;  ///< upgrades that led to this process
  /// Upgrades of this lineage: each process starts from its old process's counts (they carry
  /// over, see on_carry()) and adds its own.
  std::uint64_t upgrades() const noexcept;  ///< successful upgrades (new process ready)
  std::uint64_t failed_upgrades() const noexcept;
  /// Failed upgrades by reason: "start_failed" (fork, exec, fds), "exited" (before ready),
  /// "not_ready" (upgrade_timeout), "aborted" (a shutdown during it), "rolled_back" (crashed
  /// during the probation). Every reason is listed, zero or not.
  std::vector<std::pair<std::string, std::uint64_t>> upgrade_failures() const;

  /// Counters that carry over an upgrade, so that dashboards do not reset on every deploy:
  /// when this process hands over, every `fn` registered here is asked for (name, value)
  /// pairs, which travel to the new process with the readiness acknowledgement; there,
  /// carried(name) returns them once ready() has returned (0 for a name not carried). Names
  /// hold no tab or newline. The upgrader's own counters (upgrades, failures) carry already.
  void on_carry(std::function<std::vector<std::pair<std::string, std::uint64_t>>()> fn);
  std::uint64_t carried(std::string_view name) const;

  /// Connection hand-over (old process, draining after a successful upgrade): passes an idle
  /// connection to the new process over the readiness channel (SCM_RIGHTS) with the local
  /// address of the listener that accepted it. True: sent; close your copy and never touch the
  /// socket again (bytes the client sends meanwhile wait in it for the new process). False:
  /// not possible now (no new process to take it, or it is not keeping up): end it the
  /// usual way. Thread-safe; never blocks.
  bool hand_over(int conn, std::string_view listener) noexcept;
  /// Whether hand_over() can succeed now (a new process took over and still takes them).
  bool can_hand_over() const noexcept;
  std::uint64_t handed_over() const noexcept;  ///< connections passed on by this process
  std::uint64_t adopted() const noexcept;      ///< connections taken from the old process

  /// This process and the older generations of it still alive (draining, or on probation),
  /// oldest first, read from a table the processes share (lineage.hpp). Any thread.
  std::vector<generation_info> generations() const;
  /// Servers report their connections here (+1 when one opens or is adopted, -1 when it
  /// closes or is handed over), for generations() in whichever process serves. Lock-free.
  void add_connections(std::int64_t delta) noexcept;
  drain_stats drains() const noexcept;

  /// Writes to the configured log sink.
  void log(std::string_view line) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace endless::core
