// The pid file (internal): written by whichever process serves, atomically (a temporary file
// in the same directory, then rename), so a reader never sees a partial pid. Removed only by
// a final shutdown and only while it still names this process.
#pragma once

#include <sys/types.h>

#include <string>
#include <system_error>

namespace endless::core {

std::error_code write_pid_file(const std::string& path, pid_t pid);
// -1 when missing or unreadable.
pid_t read_pid_file(const std::string& path);
// Removes `path` if it names `pid`; returns whether it did.
bool remove_pid_file(const std::string& path, pid_t pid);

}  // namespace endless::core
