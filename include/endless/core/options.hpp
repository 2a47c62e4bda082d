// Options of the process lifecycle (endless::core::upgrader), with their defaults.
// A plain struct: fill it before constructing the upgrader; it is copied and not shared.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace endless::core {

using namespace std::chrono_literals;

/// Where log lines go. Called from the upgrader's thread and from the caller of ready();
/// must be thread-safe. Lines carry no trailing newline.
using log_sink = std::function<void(std::string_view line)>;

inline constexpr std::chrono::milliseconds kDefaultUpgradeTimeout = 60s;
inline constexpr std::chrono::milliseconds kDefaultHammerTime = 60s;
inline constexpr std::chrono::milliseconds kDefaultProbation = 5s;
inline constexpr int kDefaultMaxDraining = 2;
inline constexpr std::chrono::milliseconds kDefaultMaxDrainingWait = 5s;

struct options {
  /// How long a new process may take to call ready() before it is killed and the upgrade
  /// counted as failed.
  std::chrono::milliseconds upgrade_timeout = kDefaultUpgradeTimeout;
  /// How long a draining process waits for its connections before force-closing them.
  /// Negative: never.
  std::chrono::milliseconds hammer_time = kDefaultHammerTime;
  /// After handing over, the old process keeps its copies of the listeners (not accepting)
  /// this long: if the new process crashes meanwhile (killed by a signal, or exits non-zero)
  /// the old one accepts again at once, rewrites the pid file and tells systemd. The old
  /// process exits at the end of its drain or of the probation, whichever is later. 0: off.
  std::chrono::milliseconds probation = kDefaultProbation;
  /// Back-to-back upgrades: at most this many older generations (draining, or on probation)
  /// besides the serving process, so at most max_draining + 1 processes (1..14). An upgrade
  /// that would exceed it waits for one of them to exit, at most max_draining_wait, then the
  /// oldest is hammered early (SIGUSR2, logged) and the upgrade goes on once it is gone.
  /// Waiting first lets requests in flight there finish; 0: hammer at once.
  int max_draining = kDefaultMaxDraining;
  std::chrono::milliseconds max_draining_wait = kDefaultMaxDrainingWait;
  /// Written (atomically) by whichever process is serving; empty for none.
  std::string pid_file;
  /// The control socket (docs/core.md, endlessctl): a unix socket, mode 0600, accepting only
  /// this process's user (or root), through which `endlessctl` asks for an upgrade and waits
  /// for its real outcome, reads the status, or stops the service. It is a listener like the
  /// others: every generation serves it in turn. Unset: next to the pid file, at
  /// control_socket_for(pid_file), none without a pid file. Empty: none.
  std::optional<std::string> control_socket;
  /// Bind TCP listeners with SO_REUSEPORT, so that an independently started process can take
  /// over by binding the same address (ENDLESS_TAKEOVER_MODE=reuseport, docs/core.md), with
  /// new connections steered between the two by the kernel. Off: another process binding the
  /// address fails with EADDRINUSE, as usual; the fd takeover needs no SO_REUSEPORT.
  bool reuse_port = false;
  /// Empty: stderr, prefixed with the date and time like Go's log package.
  log_sink log;
  /// Install handlers for SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2 (and SIGTSTP once a hook
  /// is registered for it). Off: drive the upgrader through its member functions only.
  bool handle_signals = true;
};

}  // namespace endless::core
