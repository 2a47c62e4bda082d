// The listener registry: the one process-wide object of endless (registry::instance()).
//
// It owns one copy of every socket this process will hand to its successor. `listen()`
// returns a listening socket that is either inherited from the previous process (matched by
// name, then checked with getsockname) or freshly bound; the caller gets its own duplicate
// to accept on and close when it stops accepting. Other fds (a UDP socket, a memfd) can be
// passed along too with `add()` and picked up again with `take()`.
//
// Names default to "<network>:<address as given>", e.g. "tcp:127.0.0.1:8080" or
// "unix:/run/app.sock". Listening twice on one address shares the socket; on port 0 each
// call gets its own ("tcp:127.0.0.1:0", then "...:0#2"), matched again by call order.
// Sockets from systemd socket activation carry systemd's names; they are matched by address
// when no name matches, and so are inherited sockets named otherwise (the old process asked
// for port 0, the new one for the port it got).
//
// The socket is created blocking; O_NONBLOCK lives on the open file description, which the
// old and new process share, so a server that sets it sets it for both (all servers here do).
//
// Thread safety: every member function may be called from any thread.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "endless/core/unique_fd.hpp"

namespace endless::core {

struct inherited_fd;

class registry {
 public:
  /// The process-wide registry, holding what this process inherited.
  static registry& instance();

  /// A registry adopting `inherited` (fds it now owns); for tests and embedding.
  explicit registry(std::vector<inherited_fd> inherited, bool from_parent = false);
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  /// A listening socket for `network` ("tcp", "tcp4", "tcp6", "unix") and `address`, or the
  /// inherited one. Throws std::system_error with the address and the reason.
  unique_fd listen(std::string_view network, std::string_view address);
  unique_fd listen(std::string_view network, std::string_view address,
                   std::error_code& ec) noexcept;
  /// Like listen(), with the reason for a failure in words.
  unique_fd listen(std::string_view network, std::string_view address, std::error_code& ec,
                   std::string& why) noexcept;

  /// The inherited fd registered under `name`, now claimed (it will be passed on again), or
  /// an empty unique_fd. Returns a duplicate.
  unique_fd take(std::string_view name);
  /// Pass a duplicate of `fd` to the next process under `name` (replaces an entry).
  void add(std::string name, int fd);

  struct handover_fd {
    std::string name;
    unique_fd fd;  ///< a duplicate, made under the registry's lock
    bool owns_path;
    bool from_systemd = false;  ///< socket activation in this process: systemd holds it too
  };
  /// What goes to the next process: every listener created or claimed, and added fds.
  /// Fails (with `ec` set and nothing returned) if a duplicate can't be made (EMFILE).
  std::vector<handover_fd> handover(std::error_code& ec) const;
  std::vector<handover_fd> handover() const;

  /// After ready(): inherited fds nobody claimed are closed (a new config dropped them).
  /// Returns the names closed.
  std::vector<std::string> close_unclaimed();
  /// Drain step 1 for this process's copies. On a final shutdown (`final`), unix socket paths
  /// this lineage created are unlinked, if they still name our socket.
  void close_all(bool final);

  bool inherited_from_parent() const noexcept { return from_parent_; }
  /// TCP listeners bound from now on get SO_REUSEPORT (options::reuse_port, set by the
  /// upgrader), so that a process started later can share their address (docs/core.md).
  /// `only_if_alone`: unless a socket listens on the address already (which SO_REUSEPORT
  /// would silently share): then the bind fails, as it would without SO_REUSEPORT.
  void set_reuse_port(bool on, bool only_if_alone = false) noexcept;
  std::size_t size() const;

 private:
  struct entry;
  struct impl;
  std::unique_ptr<impl> impl_;
  bool from_parent_ = false;
};

}  // namespace endless::core
