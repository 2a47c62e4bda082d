// The generations of one service (internal): the older processes of this lineage that are
// still alive (draining, or on probation), and a table in shared memory where every process
// publishes its generation, pid, state and open connections for the others to read.
//
// The table is a sealed memfd (fixed size, so a mapping can never fault) created by the
// first process and inherited by each new one (ENDLESS_TABLE); process g owns slot
// g % kSlots and is the only writer of it. Elders come down as pidfds (ENDLESS_ELDERS): a new
// process gets its parent's elders still alive plus its parent. A pidfd never names a reused
// pid, so the liveness checks and the early hammer (SIGUSR2) reach exactly that process.
// A slot counts only while its process is alive (our elders' pidfds say so) and still holds
// its generation and pid: a crashed process's stale slot is ignored.
//
// Thread safety: publish_*() and add_connections() are lock-free and safe from any thread;
// snapshot() from any thread; everything else from the upgrader's thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "endless/core/upgrader.hpp"
#include "startup.hpp"

namespace endless::core {

class lineage {
 public:
  static constexpr std::size_t kSlots = 16;  // options::max_draining is capped below this

  struct elder {
    std::uint64_t generation = 0;
    pid_t pid = 0;
    unique_fd pidfd;
    bool hammered = false;  // SIGUSR2 sent (early hammer), not gone yet
  };

  lineage() = default;
  lineage(const lineage&) = delete;
  lineage& operator=(const lineage&) = delete;
  ~lineage();

  // Takes what this process inherited (`env`: the table and elders' fds are adopted) or, in
  // a first process, creates the table. Never fails: without a table (memfd refused) the
  // process serves on, and only the other generations' figures are missing; `note` says why.
  void init(startup_env& env, pid_t self, std::uint64_t generation, std::string& note);

  void publish_state(state s) noexcept;
  void publish_probation(bool on) noexcept;
  // An older generation, alive, that is on probation: it may still take the service back
  // from its new process (our parent, or the one before). Its pid.
  std::optional<pid_t> elder_on_probation() const;
  void add_connections(std::int64_t delta) noexcept;
  std::int64_t connections() const noexcept;

  // Drops the elders that exited; returns how many are alive.
  std::size_t prune();
  // The pidfds to watch for exits (valid until the next prune()).
  std::vector<int> elder_pidfds() const;
  // Sends `signo` to the `count` oldest alive elders not hammered yet, marking them; returns
  // "generation G (pid P)" of each, for the log.
  std::vector<std::string> hammer_oldest(std::size_t count, int signo);
  // SIGKILL to the elders hammered earlier that are still alive; returns them, for the log.
  std::vector<std::string> kill_hammered();

  // For the next process: the table (or -1) and our alive elders plus ourselves, oldest
  // first. The fds stay ours; spawn() duplicates them into the child.
  struct handed_elder {
    std::uint64_t generation;
    pid_t pid;
    int pidfd;
  };
  int table_fd() const noexcept { return table_fd_.get(); }
  std::vector<handed_elder> for_child() const;

  // Drains finished in this lineage (any process), for a dashboard: count, total, last.
  void record_drain(std::uint64_t ms) noexcept;
  drain_stats drains() const noexcept;

  // Ourselves and the alive elders, oldest first (upgrader::generations()).
  std::vector<generation_info> snapshot() const;

 private:
  struct slot;
  struct table;
  bool map(int fd);
  slot* slot_of(std::uint64_t generation) const noexcept;

  pid_t self_ = 0;
  std::uint64_t generation_ = 0;
  unique_fd self_pidfd_;
  unique_fd table_fd_;
  table* table_ = nullptr;
  slot* mine_ = nullptr;
  std::atomic<std::int64_t> local_connections_{0};  // without a table
  std::atomic<std::uint32_t> local_state_{0};
  std::atomic<std::uint64_t> local_drains_{0}, local_drain_ms_{0}, local_last_drain_ms_{0};
  mutable std::mutex mu_;      // elders_: changed by the upgrader's thread, read by snapshot()
  std::vector<elder> elders_;  // oldest first
};

}  // namespace endless::core
