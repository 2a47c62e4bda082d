// Starting the new process of an upgrade (internal): fork + exec with the handed-over fds
// at 3.., the readiness channel, the generation table and the elders' pidfds after them,
// and the protocol variables (protocol.hpp).
// Everything is prepared before fork; between fork and exec the child makes only
// async-signal-safe calls. An exec failure comes back through a CLOEXEC pipe, so a missing
// or non-executable binary is reported at once with its errno.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <system_error>
#include <vector>

#include "endless/core/registry.hpp"
#include "endless/core/unique_fd.hpp"

namespace endless::core {

struct spawn_request {
  std::string executable;
  std::vector<std::string> argv;
  std::vector<registry::handover_fd> fds;  // duplicates owned by the request
  int ready_fd = -1;                       // the child's end of the readiness channel
  std::uint64_t generation = 0;
  int table_fd = -1;  // the generation table, or -1 (lineage.hpp)
  struct elder {
    std::uint64_t generation;
    pid_t pid;
    int pidfd;
  };
  std::vector<elder> elders;  // oldest first; the fds stay the caller's
  std::string notify_socket;
  std::uint64_t watchdog_usec = 0;
};

struct spawned {
  pid_t pid = -1;
  unique_fd pidfd;
  // Not our child (a takeover: it started on its own): its exit status can't be read.
  bool foreign = false;
};

// On failure returns an error and `why` says what failed ("exec /srv/app: No such file...").
std::error_code spawn(const spawn_request& req, spawned& out, std::string& why);

// pidfd_open(2) and pidfd_send_signal(2), raw syscalls (glibc 2.36's <sys/pidfd.h> declares
// them without C linkage for C++): -1 with errno on failure.
int pidfd_open(pid_t pid) noexcept;
int pidfd_signal(int pidfd, int signo) noexcept;

// Kills (SIGKILL) and reaps the child; returns how it ended, as text ("exited with status 1",
// "was killed by signal 11 (Segmentation fault)"). Everything goes through the pidfd, so a
// pid reaped elsewhere (SIGCHLD ignored, a waitpid(-1) reaper) and reused is never hit.
std::string kill_and_reap(const spawned& child);
// Reaps a child whose pidfd is readable, without killing it; `how` describes the end.
// crashed: killed by a signal or a non-zero exit status; unknown: reaped elsewhere.
enum class exit_kind { clean, crashed, unknown };
exit_kind reap_exited(const spawned& child, std::string& how);

}  // namespace endless::core
