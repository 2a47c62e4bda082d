#include "file_watch.hpp"

#include "../core/signals.hpp"

#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace endless::io {
namespace {

std::pair<std::string, std::string> split(const std::string& path) {
  std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

constexpr std::uint32_t kEvents =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB | IN_ONLYDIR;

}  // namespace

file_watch::file_watch(const std::vector<std::string>& files, std::function<void()> on_change,
                       std::chrono::milliseconds quiet)
    : inotify_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)),
      stop_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      on_change_(std::move(on_change)),
      quiet_(quiet) {
  if (!inotify_ || !stop_) throw std::system_error(errno, std::system_category(), "inotify");
  auto add = [this](const std::string& path) {
    auto [dir, name] = split(path);
    names_.emplace_back(dir, name);
    for (const auto& d : dirs_)
      if (d.second == dir) return;
    int wd = ::inotify_add_watch(inotify_.get(), dir.c_str(), kEvents);
    if (wd < 0) throw std::system_error(errno, std::system_category(), "inotify watch " + dir);
    dirs_.emplace_back(wd, dir);
  };
  for (const std::string& f : files) {
    add(f);
    // A symlink (certbot's live/ → archive/): its target's directory too, for in-place
    // edits of the target.
    char real[PATH_MAX];
    if (::realpath(f.c_str(), real) && f != real) add(real);
  }
  thread_ = core::start_thread([this] { run(); });
}

file_watch::~file_watch() {
  std::uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

void file_watch::run() {
  bool pending = false;
  alignas(inotify_event) char buf[16 * 1024];
  for (;;) {
    pollfd fds[2] = {{inotify_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    int timeout = pending ? static_cast<int>(quiet_.count()) : -1;
    int n = ::poll(fds, 2, timeout);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fds[1].revents & POLLIN)) return;
    if (n == 0) {
      // Quiet for `quiet_` since the last relevant event.
      pending = false;
      try {
        on_change_();
      } catch (...) {  // (out of memory while loading) the next change tries again
      }
      continue;
    }
    ssize_t len = ::read(inotify_.get(), buf, sizeof buf);
    for (ssize_t off = 0; len > 0 && off < len;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      std::string_view name = ev->len ? std::string_view(ev->name) : std::string_view();
      std::string dir;
      for (const auto& d : dirs_)
        if (d.first == ev->wd) dir = d.second;
      // Kubernetes secret volumes swap a "..data" symlink; everything else names the file.
      bool relevant = name.substr(0, 2) == "..";
      for (const auto& [d, f] : names_)
        if (d == dir && f == name) relevant = true;
      // IN_Q_OVERFLOW: events were lost; one of them may have been ours.
      if (relevant || (ev->mask & IN_Q_OVERFLOW)) pending = true;
    }
  }
}

}  // namespace endless::io
