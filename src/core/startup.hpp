// What a process learns at start-up (internal): the fds and state handed to it by systemd
// or by an endless parent, and the executable to run on the next upgrade. Read once, at
// load time, before main() and before the application can start threads or children; the
// protocol variables are then removed from the environment (see protocol.hpp).
// Thread safety: startup() returns an immutable snapshot except for the fds, which the
// registry adopts exactly once.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace endless::core {

struct inherited_fd {
  std::string name;
  int fd = -1;
  bool owns_path = false;  // see ENDLESS_FD_OWNED
};

// An older generation of this lineage, alive when the parent started us (ENDLESS_ELDERS).
struct inherited_elder {
  std::uint64_t generation = 0;
  pid_t pid = 0;
  int pidfd = -1;
};

struct startup_env {
  bool from_parent = false;  // started by an endless upgrade (not by systemd or a shell)
  // Took over from a process that did not start us (ENDLESS_TAKEOVER): `from_parent` too,
  // with process_start::parent naming that process.
  bool takeover = false;
  // An SO_REUSEPORT takeover (ENDLESS_TAKEOVER_MODE=reuseport): how the old process keeps its
  // queue ("steering" or "migrate", reuseport.hpp); empty otherwise. Our TCP listeners in
  // `fds` were bound by us, with SO_REUSEPORT.
  std::string reuseport;
  // ENDLESS_TAKEOVER was set and the takeover failed: this process must not share an
  // address by SO_REUSEPORT with the one it failed to take over from.
  bool takeover_failed = false;
  // ENDLESS_TAKEOVER was set and nothing served there: the first start. SO_REUSEPORT, if
  // configured, only where no socket listens yet.
  bool takeover_absent = false;
  std::vector<inherited_fd> fds;
  int ready_fd = -1;
  std::uint64_t generation = 0;
  int table_fd = -1;                    // ENDLESS_TABLE (from an endless parent only)
  std::vector<inherited_elder> elders;  // ENDLESS_ELDERS, oldest first
  std::string notify_socket;
  std::uint64_t watchdog_usec = 0;
  std::error_code error;           // the inheritance was refused (e.g. protocol mismatch)
  std::vector<std::string> notes;  // to be logged once a log sink exists
};

using getenv_fn = std::function<const char*(const char*)>;

// Parses the protocol variables. Pure: touches no fd.
startup_env parse_startup_env(const getenv_fn& getenv, pid_t self);

std::string encode_fd_name(std::string_view name);
std::string decode_fd_name(std::string_view encoded);
// A name in the takeover answer (protocol.hpp): '%', space and bytes outside printable ASCII
// as %XX, so that it is one word of one line. decode_word() undoes any %XX.
std::string encode_word(std::string_view name);
std::string decode_word(std::string_view encoded);

// The executable to exec on upgrade: argv[0] made absolute against the start-up cwd (so a
// symlink flip or a rename over the path runs the new file), or found in PATH, or else
// /proc/self/exe.
std::string resolve_executable(const std::string& argv0, const std::string& cwd,
                               const char* path_env);

struct process_start {
  startup_env env;
  pid_t parent = 0;       // getppid() at load time; with a takeover, the process taken over from
  int parent_pidfd = -1;  // with a takeover: a pidfd of `parent`
  std::string executable;
  std::vector<std::string> argv;
};

// The snapshot taken at load time (or on first use, whichever comes first).
process_start& startup();

}  // namespace endless::core
