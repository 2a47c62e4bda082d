// file_watch: calls back when any of a set of files changes on disk (internal).
//
// Watches the directories that hold the files (inotify), not the files themselves, so that
// atomic-rename deploys are seen: certbot renames a new symlink over live/cert.pem, a
// Kubernetes secret volume swaps its ..data symlink, `mv new.pem cert.pem` replaces the
// inode. Bursts (a cert and its key written one after the other) are merged: the callback
// runs once `quiet` after the last event.
//
// Thread safety: the callback runs on the watcher's own thread; the destructor stops and
// joins it.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "endless/core/unique_fd.hpp"

namespace endless::io {

class file_watch {
 public:
  // Throws std::system_error if inotify is unavailable.
  file_watch(const std::vector<std::string>& files, std::function<void()> on_change,
             std::chrono::milliseconds quiet = std::chrono::milliseconds(200));
  ~file_watch();
  file_watch(const file_watch&) = delete;
  file_watch& operator=(const file_watch&) = delete;

 private:
  void run();
  core::unique_fd inotify_;
  core::unique_fd stop_;                                    // eventfd
  std::vector<std::pair<int, std::string>> dirs_;           // watch descriptor, directory
  std::vector<std::pair<std::string, std::string>> names_;  // directory, file name
  std::function<void()> on_change_;
  std::chrono::milliseconds quiet_;
  std::thread thread_;
};

}  // namespace endless::io
