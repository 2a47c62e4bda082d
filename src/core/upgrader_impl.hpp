// The upgrader's insides (internal), shared by the files that each own one side of it:
//   upgrader.cpp  public API, the thread's event loop, signals and hooks
//   parent.cpp    the old process's side of an upgrade: spawn, wait for ready, roll back
//   child.cpp     the new process's side: ready() and the handshake
//   drain.cpp     the drain order, the hammer, the end
// Fields marked (thread) are touched only by the upgrader's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "endless/core/upgrader.hpp"
#include "lineage.hpp"
#include "protocol.hpp"
#include "reuseport.hpp"
#include "sd_notify.hpp"
#include "signals.hpp"
#include "spawn.hpp"

namespace endless::core {

using clock = std::chrono::steady_clock;

struct upgrader::impl {
  explicit impl(options o);

  // --- set at construction, then read-only
  options opts;
  pid_t pid;
  notifier systemd;
  std::uint64_t watchdog_usec = 0;
  std::uint64_t generation = 0;
  bool has_parent = false;
  std::size_t max_draining = kDefaultMaxDraining;  // opts.max_draining, clamped
  lineage family;                                  // the older generations, the shared table

  // --- guarded by mu
  std::mutex mu;
  std::condition_variable stopped_cv;
  std::vector<drainable*> services;
  std::map<int, std::vector<std::function<void()>>> pre_hooks, post_hooks;
  std::vector<std::function<void()>> shutdown_hooks;

  // Commands to the upgrader's thread. Shared with the `done` callbacks handed to servers,
  // which may run after the upgrader is gone: posting then is harmless.
  struct command {
    enum class kind { ready, upgrade, shutdown, hammer, drained, detach, quit } what;
    std::promise<std::error_code> result;  // ready, upgrade, detach
    const drainable* from = nullptr;       // drained, detach
    std::uint64_t drain = 0;               // drained: which drain (a rollback ends one)
  };
  struct mailbox {
    std::mutex mu;
    std::deque<command> queue;
    unique_fd wake;  // eventfd
    void post(command c);
    std::deque<command> take();
  };
  std::shared_ptr<mailbox> box = std::make_shared<mailbox>();

  std::atomic<state> current{state::starting};
  std::atomic<std::uint64_t> upgrades{0}, failed_upgrades{0}, rollbacks{0};
  // Failed upgrades by reason (upgrader::upgrade_failures()), in this order.
  static constexpr const char* kFailureReasons[] = {"start_failed", "exited", "not_ready",
                                                    "aborted", "rolled_back"};
  enum failure_reason { start_failed, exited, not_ready, aborted, rolled_back, kReasons };
  std::atomic<std::uint64_t> failures[kReasons] = {};
  void count_failure(failure_reason r) {
    failures[r]++;
    if (r != rolled_back) failed_upgrades++;
  }
  // Carry-over (upgrader::on_carry): producers (under mu); what came from the old process
  // (written by do_ready before it returns, read-only afterwards).
  std::vector<std::function<std::vector<std::pair<std::string, std::uint64_t>>()>> carriers;
  std::map<std::string, std::uint64_t, std::less<>> carried_in;
  std::string carry_out();  // the 'S' message for the new process

  std::optional<signal_pipe> signals;
  std::thread thread;
  std::thread::id thread_id;

  // --- (thread)
  struct upgrade_in_flight {
    spawned child;
    unique_fd channel;               // our end of the readiness socketpair
    std::string received;            // bytes read from it so far
    std::vector<std::string> takes;  // listeners named by its 'T' messages
    clock::time_point deadline;
    // When its exec succeeded (unset for a takeover): the log gives its start-up, exec to
    // ready, so that a hand-over's own cost can be told from the new program's.
    std::optional<clock::time_point> started;
    std::vector<std::promise<std::error_code>> waiting;
    bool again = false;  // asked for again meanwhile: 'U' to it once it is ready
    // An SO_REUSEPORT takeover (reuseport.hpp): how our queue is kept, our copies of the TCP
    // listeners it shares (local address, fd), and the listeners named by its 'F' messages.
    reuseport::mechanism reuseport = reuseport::mechanism::none;
    std::vector<std::pair<std::string, unique_fd>> shared;
    std::vector<std::string> takes_new;
  };
  std::optional<upgrade_in_flight> upgrade;
  // An upgrade waiting for an older generation to exit (options::max_draining).
  struct queued_upgrade {
    std::string what;  // how it was asked for, for the log
    std::vector<std::promise<std::error_code>> waiting;
    clock::time_point hammer_at;               // then SIGUSR2 to the oldest
    std::optional<clock::time_point> kill_at;  // then SIGKILL to those hammered
    std::optional<clock::time_point> give_up;  // then start anyway
  };
  std::optional<queued_upgrade> queued;
  // After a hand-over: the new process, watched until `until` (options::probation).
  struct probation_watch {
    spawned child;
    clock::time_point since, until;
  };
  std::optional<probation_watch> probation;
  // To the new process after a hand-over: its 'D' comes here, connections go there
  // (protocol.hpp). Reset only by the upgrader's thread, under handover_mu; used by any
  // thread in hand_over().
  unique_fd child_channel;
  mutable std::mutex handover_mu;
  std::vector<std::string> child_takes_for;  // (handover_mu) listeners it named with 'T'
  std::atomic<bool> child_takes{false};
  std::vector<std::string> child_takes_new_for;  // (handover_mu) listeners it named with 'F'
  // After an SO_REUSEPORT takeover: our sockets in the shared groups, steered away from (or,
  // with migrate, still getting a share), accepted from until `retire_at` (at least
  // kRetireAfter after the hand-over, and past the probation) and what they hold passed to
  // the new process ('N'); then closed once empty. (thread)
  // Long enough for a handshake begun on our socket before the switch to reach our queue,
  // TCP_DEFER_ACCEPT's wait for the first request byte (1 s) and a SYN-ACK retransmit
  // included.
  static constexpr std::chrono::milliseconds kRetireAfter{3000};
  static constexpr std::size_t kRetiringPolled = 32;  // more are looked at every 10 ms
  struct retiring_listener {
    std::string address;
    unique_fd fd;
  };
  std::vector<retiring_listener> retiring;
  reuseport::mechanism retiring_by = reuseport::mechanism::none;
  std::optional<clock::time_point> retire_at, retired_since;
  std::optional<clock::time_point> retire_backoff;  // accept failed for lack of fds/memory
  bool retire_all_empty = false;   // the last accept on each retiring socket said EAGAIN
  unique_fd retire_pending;        // accepted, not sent yet (the channel was full)
  std::string retire_pending_for;  // its listener
  std::uint64_t passed_new = 0, lost_new = 0;  // 'N' sent, and closed for want of a taker
  std::atomic<std::uint64_t> handed{0}, adopted_count{0};
  std::uint64_t refused_adoptions = 0;  // (thread)
  unique_fd parent_channel;             // (new process) to the old one: 'D' when we begin to drain
  bool finish_pending = false;          // the drain ended during the probation: finish at its end
  // An upgrade asked for during ours or while we drain, owed to the new process ('U') once
  // our probation ends: sent earlier, the new process could start a third one that a
  // rollback here would leave serving beside us.
  bool upgrade_owed = false;
  // (new process) The drain ended before the old process closed the channel: finish at its
  // EOF (or this deadline), so that no connection it sent is dropped with the channel.
  std::optional<clock::time_point> channel_wait_until;
  std::uint64_t lost_in_transfer = 0;  // (thread) fds the kernel dropped (MSG_CTRUNC)
  std::uint64_t drain_epoch = 0;
  std::vector<const drainable*> draining_services;
  bool final_shutdown = false;
  bool handed_foreign = false;  // handed over to a process that took over (another unit's)
  bool served = false;   // reached state::serving: only then may a final shutdown unlink paths
  bool drained = false;  // finish() ran; becomes state::stopped at the end of the round
  std::optional<clock::time_point> hammer_at;
  std::optional<clock::time_point> drain_began;  // for the lineage's drain statistics
  std::optional<clock::time_point> next_watchdog;

  // The control socket (control.cpp): served while this process is serving or upgrading.
  static constexpr std::size_t kMaxControlClients = 16;
  struct control_client {
    unique_fd fd;
    std::string in;  // the command line, as it arrives
    enum class phase { command, upgrade, probation, stop } at = phase::command;
    clock::time_point deadline;            // phase::command: the line must come by then
    std::future<std::error_code> outcome;  // phase::upgrade
    pid_t new_pid = 0;                     // phase::probation
    std::string who;                       // "pid P, uid U", for the log
    pid_t peer = 0;                        // its pid (SO_PEERCRED)
    bool peer_done = false;                // it shut down its side: not polled any more
  };
  unique_fd control_listener;
  std::string control_path;
  std::vector<control_client> control_clients;
  // What the control clients wait for (thread): the last hand-over, the last probation's
  // end, why the last upgrade failed.
  pid_t handed_to = 0;
  struct probation_result {
    pid_t pid = 0;
    std::string failure;  // empty: it serves for good; else the reason word (rolled_back...)
    std::string how;      // the failure in words
  } probation_end;
  std::string last_failure;
  std::optional<clock::time_point> control_backoff;  // accept failed for lack of fds

  // upgrader.cpp
  void post(command c) { box->post(std::move(c)); }
  // current, and this process's slot in the generation table.
  void set_state(state s) noexcept {
    current.store(s);
    family.publish_state(s);
  }
  void loop();
  // Runs one command; false for quit.
  bool run(command& c);
  void do_detach(const drainable* d);
  void on_signal(int signo);
  void run_hooks(hook when, int signo);
  void log(std::string_view line) const;
  void log_pid(std::string_view text) const;  // "<pid> text"
  void notify(std::string_view state) const;
  std::optional<int> poll_timeout_ms() const;
  void on_timers();

  // child.cpp
  std::error_code do_ready();

  // parent.cpp
  void do_upgrade(std::optional<std::promise<std::error_code>> result, const std::string& what);
  // Forks and execs the new process (the older generations are within bounds).
  void start_upgrade(const std::string& what, std::vector<std::promise<std::error_code>> waiting);
  // A queued upgrade: an elder exited or a deadline passed.
  void on_queued();
  void cancel_queued(const std::string& why);
  // (draining) An upgrade asked of us goes to our new process ('U'); false: none to take it.
  bool pass_on_upgrade();
  void on_channel_readable();
  void on_child_exited();
  void fail_upgrade(std::error_code ec, const std::string& why);
  void abort_upgrade();
  // Forgets the upgrade in flight; returns its callers, for the caller to answer.
  std::vector<std::promise<std::error_code>> end_upgrade();

  // control.cpp
  void open_control();
  static void reply(control_client& c, const std::string& text);  // or drop the client
  bool control_open() const;                                      // accepting control clients now
  void on_control_accept();
  void on_control_readable(control_client& c);
  void control_command(control_client& c, std::string_view line);
  // "takeover": a process started on its own asks for our listeners (protocol.hpp); it
  // becomes our upgrade in flight, the connection its readiness channel.
  // `only`: the mechanism asked for ("takeover reuseport steering|migrate"), none: either.
  void start_takeover(control_client& c, bool by_reuseport, reuseport::mechanism only);
  // After each round of the loop: answers the clients whose upgrade or probation has an
  // outcome now, drops those done or silent too long.
  void control_round();
  std::string status_text() const;

  // drain.cpp
  // SIGINT/SIGTERM or shutdown(): abort an upgrade in flight, then the final drain. `what`
  // starts the log line ("Received SIGTERM").
  void do_shutdown(const std::string& what);
  void begin_drain(bool final);
  void on_service_drained(const drainable* d, std::uint64_t epoch);
  void do_hammer();
  void finish();
  // The probation's end: its deadline, or SIGTERM to this process. Closes our listener
  // copies, then finishes if the drain already has.
  void end_probation(const std::string& why);
  // The new process exited during the probation: roll back, unless it was a clean exit.
  void on_probation_child_exited();
  bool can_roll_back();  // every attached server can resume()
  void on_child_channel_readable();
  void close_child_channel();
  // upgrader::hand_over(): one connection to the new process ('C', or 'N' for one never
  // read from); any thread.
  bool send_connection(int conn, std::string_view listener,
                       char kind = protocol::kConnection) noexcept;
  // SO_REUSEPORT takeover, old process (drain.cpp): accepts from the retiring listeners and
  // passes on; at `retire_at` (and no probation) closes them once empty. `sweep`: now.
  void on_retiring_readable();
  void retire_listeners(bool sweep);
  // A rollback: our sockets get the new connections again.
  void unretire_listeners();
  // A connection from our own queue, served by one of our servers (draining or resumed).
  bool adopt_here(unique_fd& conn, std::string_view listener);
  // (new process) Takes the connections queued on the channel from the old process; false
  // once it is closed.
  bool on_parent_channel_readable();
};

}  // namespace endless::core
