#include "endless/core/registry.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>

#include "endless/core/address.hpp"
#include "endless/core/error.hpp"
#include "reuseport.hpp"
#include "startup.hpp"

namespace endless::core {
namespace {

constexpr int kBacklog = 4096;  // the kernel caps it at net.core.somaxconn

std::error_code last_error() {
  return {errno, std::system_category()};
}

unique_fd dup_cloexec(int fd, std::error_code& ec) {
  int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) ec = last_error();
  return unique_fd(d);
}

int sock_opt(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (::getsockopt(fd, level, name, &v, &len) != 0) return -1;
  return v;
}

// An inherited fd is used only if it is a listening stream socket bound where `want` says.
std::error_code verify(int fd, const endpoint& want, const std::string& name, std::string& why) {
  if (sock_opt(fd, SOL_SOCKET, SO_TYPE) != SOCK_STREAM ||
      sock_opt(fd, SOL_SOCKET, SO_ACCEPTCONN) != 1) {
    why = "inherited fd " + std::to_string(fd) + " named '" + name +
          "' is not a listening stream socket";
    return errc::inherited_wrong_type;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    why = "can't read the address of inherited fd " + std::to_string(fd);
    return last_error();
  }
  if (!same_address(want, reinterpret_cast<sockaddr*>(&ss), len)) {
    why = "inherited fd " + std::to_string(fd) + " named '" + name + "' is bound to " +
          to_string(reinterpret_cast<sockaddr*>(&ss), len) + ", not " +
          to_string(want.sa(), want.len);
    return errc::inherited_mismatch;
  }
  return {};
}

bool is_path(const endpoint& ep) {
  return ep.net == network::unix_stream &&
         reinterpret_cast<const sockaddr_un*>(&ep.addr)->sun_path[0] != '\0';
}

// A socket file left behind by a dead process is removed; a live one is "in use".
std::error_code clear_stale_unix_path(const char* path, std::string& why) {
  struct stat st {};
  if (::lstat(path, &st) != 0) return {};
  if (!S_ISSOCK(st.st_mode)) {
    why = std::string("can't listen on unix:") + path + ": the path exists and is not a socket";
    return std::make_error_code(std::errc::address_in_use);
  }
  unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
  if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&un), sizeof un) != 0 &&
      errno == ECONNREFUSED) {
    ::unlink(path);  // nobody listens: stale
    return {};
  }
  why = std::string("can't listen on unix:") + path + ": another process is listening on it";
  return std::make_error_code(std::errc::address_in_use);
}

unique_fd bind_fresh(const endpoint& ep, bool reuse_port, bool only_if_alone, std::error_code& ec,
                     std::string& why) {
  const char* path = reinterpret_cast<const sockaddr_un*>(&ep.addr)->sun_path;
  if (is_path(ep)) {
    ec = clear_stale_unix_path(path, why);
    if (ec) return {};
  }
  unique_fd fd(::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  auto fail = [&](const char* what) {
    ec = last_error();
    why = "can't listen on " + ep.name + ": " + what;
    return unique_fd();
  };
  if (!fd) return fail("socket");
  int one = 1;
  if (ep.addr.ss_family != AF_UNIX &&
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    return fail("SO_REUSEADDR");
  }
  if (reuse_port && ep.addr.ss_family != AF_UNIX &&
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    return fail("SO_REUSEPORT");
  }
  if (ep.addr.ss_family == AF_INET6) {
    int v6only = ep.net == network::tcp6 ? 1 : 0;
    if (::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) != 0) {
      return fail("IPV6_V6ONLY");
    }
  }
  if (::bind(fd.get(), ep.sa(), ep.len) != 0) return fail("bind");
  if (reuse_port && only_if_alone && ep.addr.ss_family != AF_UNIX &&
      reuseport::listeners_on(fd.get()) != 0) {
    errno = EADDRINUSE;
    return fail("bind (another socket listens there with SO_REUSEPORT; not sharing it)");
  }
  if (::listen(fd.get(), kBacklog) != 0) return fail("listen");
  return fd;
}

}  // namespace

struct registry::entry {
  enum class origin { created, parent, systemd, added };
  std::string name;
  unique_fd fd;
  origin from = origin::created;
  bool claimed = false;
  bool owns_path = false;  // we unlink the unix path on a final shutdown
  std::string path;
  dev_t dev = 0;
  ino_t ino = 0;

  void remember_path(const endpoint& ep) {
    if (!owns_path || !is_path(ep)) return;
    path = reinterpret_cast<const sockaddr_un*>(&ep.addr)->sun_path;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      dev = st.st_dev;
      ino = st.st_ino;
    }
  }
};

struct registry::impl {
  mutable std::mutex mu;
  std::vector<entry> entries;
  std::map<std::string, int> any_port_calls;
  std::atomic<bool> reuse_port{false}, reuse_port_alone{false};

  entry* find_locked(std::string_view name) {
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const entry& e) { return e.name == name; });
    return it == entries.end() ? nullptr : &*it;
  }
};

registry& registry::instance() {
  static registry the_registry(std::move(startup().env.fds), startup().env.from_parent);
  return the_registry;
}

registry::registry(std::vector<inherited_fd> inherited, bool from_parent)
    : impl_(std::make_unique<impl>()), from_parent_(from_parent) {
  for (auto& in : inherited) {
    entry e;
    e.name = in.name;
    e.fd.reset(in.fd);
    e.from = from_parent ? entry::origin::parent : entry::origin::systemd;
    e.owns_path = in.owns_path;
    impl_->entries.push_back(std::move(e));
  }
}

registry::~registry() = default;

unique_fd registry::listen(std::string_view network, std::string_view address) {
  std::error_code ec;
  std::string why;
  unique_fd fd = listen(network, address, ec, why);
  if (ec) throw_error(ec, why);
  return fd;
}

unique_fd registry::listen(std::string_view network, std::string_view address,
                           std::error_code& ec) noexcept {
  std::string why;
  return listen(network, address, ec, why);
}

unique_fd registry::listen(std::string_view network, std::string_view address, std::error_code& ec,
                           std::string& why) noexcept try {
  ec.clear();
  endpoint ep;
  std::string detail;
  if ((ec = resolve(network, address, ep, &detail))) {
    why = "can't listen on " + std::string(network) + " '" + std::string(address) + "': " + detail;
    return {};
  }
  std::lock_guard lock(impl_->mu);
  if (ep.any_port) {
    // Each listen() on port 0 is a socket of its own ("any port" twice is two ports). The
    // new process makes the same calls in the same order, so "#N" names match up again.
    int nth = ++impl_->any_port_calls[ep.name];
    if (nth > 1) ep.name.append("#").append(std::to_string(nth));
  }
  entry* e = impl_->find_locked(ep.name);
  if (!e && !ep.any_port) {
    // systemd names its sockets after units; match those by address instead. So are those of
    // an old process named otherwise ("tcp:127.0.0.1:0" there, the port it got here): binding
    // a fresh socket beside it would fail, or, with SO_REUSEPORT, put two of ours in one group
    // and close the unclaimed one with its queue after ready.
    for (auto& candidate : impl_->entries) {
      if (candidate.from == entry::origin::created || candidate.from == entry::origin::added ||
          candidate.claimed) {
        continue;
      }
      std::string ignored;
      if (!verify(candidate.fd.get(), ep, candidate.name, ignored)) {
        candidate.name = ep.name;
        e = &candidate;
        break;
      }
    }
  }
  if (e) {
    if (!e->claimed) {
      if ((ec = verify(e->fd.get(), ep, e->name, why))) return {};
      e->claimed = true;
      e->remember_path(ep);
    }
    return dup_cloexec(e->fd.get(), ec);
  }
  unique_fd fd = bind_fresh(ep, impl_->reuse_port.load(), impl_->reuse_port_alone.load(), ec, why);
  if (ec) return {};
  entry fresh;
  fresh.name = ep.name;
  fresh.fd = std::move(fd);
  fresh.claimed = true;
  fresh.owns_path = is_path(ep);
  fresh.remember_path(ep);
  impl_->entries.push_back(std::move(fresh));
  return dup_cloexec(impl_->entries.back().fd.get(), ec);
} catch (const std::bad_alloc&) {
  ec = std::make_error_code(std::errc::not_enough_memory);
  return {};
}

unique_fd registry::take(std::string_view name) {
  std::lock_guard lock(impl_->mu);
  entry* e = impl_->find_locked(name);
  if (!e) return {};
  e->claimed = true;
  std::error_code ec;
  return dup_cloexec(e->fd.get(), ec);
}

void registry::add(std::string name, int fd) {
  std::error_code ec;
  unique_fd copy = dup_cloexec(fd, ec);
  if (ec) throw_error(ec, "can't register fd " + std::to_string(fd) + " as '" + name + "'");
  std::lock_guard lock(impl_->mu);
  entry* e = impl_->find_locked(name);
  if (!e) {
    impl_->entries.emplace_back();
    e = &impl_->entries.back();
  }
  e->name = std::move(name);
  e->fd = std::move(copy);
  e->from = entry::origin::added;
  e->claimed = true;
  e->owns_path = false;
}

std::vector<registry::handover_fd> registry::handover(std::error_code& ec) const {
  std::lock_guard lock(impl_->mu);
  std::vector<handover_fd> out;
  for (const auto& e : impl_->entries) {
    if (!e.claimed || !e.fd) continue;
    unique_fd copy = dup_cloexec(e.fd.get(), ec);
    if (ec) return {};
    out.push_back({e.name, std::move(copy), e.owns_path, e.from == entry::origin::systemd});
  }
  return out;
}

std::vector<registry::handover_fd> registry::handover() const {
  std::error_code ec;
  auto out = handover(ec);
  if (ec) throw_error(ec, "can't duplicate the listeners");
  return out;
}

std::vector<std::string> registry::close_unclaimed() {
  std::lock_guard lock(impl_->mu);
  std::vector<std::string> closed;
  std::erase_if(impl_->entries, [&](const entry& e) {
    if (e.claimed) return false;
    closed.push_back(e.name);
    return true;
  });
  return closed;
}

void registry::close_all(bool final) {
  std::lock_guard lock(impl_->mu);
  for (auto& e : impl_->entries) {
    struct stat st {};
    // Only when no new process takes over, and only if the path is still our socket.
    if (final && e.owns_path && !e.path.empty() && ::stat(e.path.c_str(), &st) == 0 &&
        st.st_dev == e.dev && st.st_ino == e.ino) {
      ::unlink(e.path.c_str());
    }
  }
  impl_->entries.clear();
}

void registry::set_reuse_port(bool on, bool only_if_alone) noexcept {
  impl_->reuse_port_alone.store(only_if_alone);
  impl_->reuse_port.store(on);
}

std::size_t registry::size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->entries.size();
}

}  // namespace endless::core
