// The pid file (internal): written by whichever process serves, atomically (a temporary file
// in the same directory, then rename), so a reader never sees a partial pid. Removed only by
// a final shutdown and only while it still names this process.
#pragma once

#include <sys/types.h>

#include <string>
#include <system_error>

namespace endless::core {

std::error_code write_pid_file(const std::string& path, pid_t pid);
// The two halves of write_pid_file(): the temporary file with the pid (where a full disk or
// a missing directory shows), and the rename that makes it the pid file.
std::error_code stage_pid_file(const std::string& path, pid_t pid, std::string& staged);
std::error_code commit_pid_file(const std::string& staged, const std::string& path);
void discard_pid_file(const std::string& staged);
// -1 when missing or unreadable.
pid_t read_pid_file(const std::string& path);
// Removes `path` if it names `pid`; returns whether it did.
bool remove_pid_file(const std::string& path, pid_t pid);

}  // namespace endless::core
