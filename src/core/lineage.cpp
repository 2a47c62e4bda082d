#include "lineage.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "spawn.hpp"

namespace endless::core {

// One cache line per process: its own writes never contend with another's.
struct alignas(64) lineage::slot {
  std::atomic<std::uint64_t> generation_plus_1;  // 0: free
  std::atomic<std::int32_t> pid;
  std::atomic<std::uint32_t> st;  // state
  std::atomic<std::int64_t> connections;
  // 1 while its process is on probation (may take the service back from its new process).
  // A table made by an earlier build has zeros here: never on probation.
  std::atomic<std::uint32_t> on_probation;
};

struct lineage::table {
  static constexpr std::uint64_t kMagic = 0x656e646c65737331;  // "endless1"
  alignas(64) std::atomic<std::uint64_t> magic;
  std::atomic<std::uint64_t> drains, drain_ms, last_drain_ms;
  slot slots[kSlots];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::int64_t>::is_always_lock_free,
              "the table is shared between processes: its atomics must be lock-free");

namespace {

bool exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

std::string describe(const lineage::elder& e) {
  return "generation " + std::to_string(e.generation) + " (pid " + std::to_string(e.pid) + ")";
}

}  // namespace

lineage::~lineage() {
  if (mine_) mine_->generation_plus_1.store(0);  // a clean exit frees the slot
  if (table_) ::munmap(table_, sizeof(table));
}

bool lineage::map(int fd) {
  void* p = ::mmap(nullptr, sizeof(table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return false;
  table_ = static_cast<table*>(p);
  return true;
}

void lineage::init(startup_env& env, pid_t self, std::uint64_t generation, std::string& note) {
  self_ = self;
  generation_ = generation;
  self_pidfd_.reset(pidfd_open(self));
  for (auto& e : env.elders) {
    elders_.push_back({e.generation, e.pid, unique_fd(e.pidfd), false});
    e.pidfd = -1;
  }
  env.elders.clear();
  if (env.table_fd >= 0) {
    unique_fd fd(env.table_fd);
    env.table_fd = -1;
    struct stat st {};
    // The size is sealed by the process that created it (F_SEAL_SHRINK | F_SEAL_GROW).
    int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (::fstat(fd.get(), &st) == 0 && st.st_size == static_cast<off_t>(sizeof(table)) &&
        seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW) &&
        map(fd.get()) && table_->magic.load() == table::kMagic) {
      table_fd_ = std::move(fd);
    } else {
      if (table_) ::munmap(table_, sizeof(table));
      table_ = nullptr;
      note = "the generation table from the old process is not one: starting a new one";
    }
  }
  if (!table_) {
    unique_fd fd(::memfd_create("endless-generations", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd || ::ftruncate(fd.get(), sizeof(table)) != 0 ||
        ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 ||
        !map(fd.get())) {
      note = std::string("no generation table (") + std::strerror(errno) +
             "): other generations' figures are not shared";
      if (table_) ::munmap(table_, sizeof(table));
      table_ = nullptr;
      return;
    }
    table_->magic.store(table::kMagic);
    table_fd_ = std::move(fd);
  }
  mine_ = slot_of(generation);
  mine_->generation_plus_1.store(0);
  mine_->pid.store(self);
  mine_->st.store(static_cast<std::uint32_t>(state::starting));
  mine_->connections.store(0);
  mine_->generation_plus_1.store(generation + 1);
}

lineage::slot* lineage::slot_of(std::uint64_t generation) const noexcept {
  return table_ ? &table_->slots[generation % kSlots] : nullptr;
}

void lineage::publish_state(state s) noexcept {
  local_state_.store(static_cast<std::uint32_t>(s));
  if (mine_) mine_->st.store(static_cast<std::uint32_t>(s));
}

void lineage::publish_probation(bool on) noexcept {
  if (mine_) mine_->on_probation.store(on ? 1 : 0);
}

std::optional<pid_t> lineage::elder_on_probation() const {
  std::lock_guard lock(mu_);
  for (const auto& e : elders_) {
    if (exited(e.pidfd.get())) continue;
    const slot* s = slot_of(e.generation);
    if (s && s->generation_plus_1.load() == e.generation + 1 && s->pid.load() == e.pid &&
        s->on_probation.load() != 0) {
      return e.pid;
    }
  }
  return std::nullopt;
}

void lineage::add_connections(std::int64_t delta) noexcept {
  if (mine_) {
    mine_->connections.fetch_add(delta, std::memory_order_relaxed);
  } else {
    local_connections_.fetch_add(delta, std::memory_order_relaxed);
  }
}

std::int64_t lineage::connections() const noexcept {
  return mine_ ? mine_->connections.load(std::memory_order_relaxed)
               : local_connections_.load(std::memory_order_relaxed);
}

void lineage::record_drain(std::uint64_t ms) noexcept {
  if (table_) {
    table_->drains.fetch_add(1);
    table_->drain_ms.fetch_add(ms);
    table_->last_drain_ms.store(ms);
  } else {
    local_drains_.fetch_add(1);
    local_drain_ms_.fetch_add(ms);
    local_last_drain_ms_.store(ms);
  }
}

drain_stats lineage::drains() const noexcept {
  if (table_) return {table_->drains.load(), table_->drain_ms.load(), table_->last_drain_ms.load()};
  return {local_drains_.load(), local_drain_ms_.load(), local_last_drain_ms_.load()};
}

std::size_t lineage::prune() {
  std::lock_guard lock(mu_);
  std::erase_if(elders_, [](const elder& e) { return !e.pidfd || exited(e.pidfd.get()); });
  return elders_.size();
}

std::vector<int> lineage::elder_pidfds() const {
  std::lock_guard lock(mu_);
  std::vector<int> out;
  for (const auto& e : elders_)
    out.push_back(e.pidfd.get());
  return out;
}

std::vector<std::string> lineage::hammer_oldest(std::size_t count, int signo) {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (auto& e : elders_) {
    if (out.size() == count) break;
    if (e.hammered) continue;
    if (pidfd_signal(e.pidfd.get(), signo) == 0) {
      e.hammered = true;
      out.push_back(describe(e));
    }
  }
  return out;
}

std::vector<std::string> lineage::kill_hammered() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (auto& e : elders_) {
    if (e.hammered && !exited(e.pidfd.get()) && pidfd_signal(e.pidfd.get(), SIGKILL) == 0) {
      out.push_back(describe(e));
    }
  }
  return out;
}

std::vector<lineage::handed_elder> lineage::for_child() const {
  std::lock_guard lock(mu_);
  std::vector<handed_elder> out;
  for (const auto& e : elders_) {
    if (!exited(e.pidfd.get())) out.push_back({e.generation, e.pid, e.pidfd.get()});
  }
  if (self_pidfd_) out.push_back({generation_, self_, self_pidfd_.get()});
  return out;
}

std::vector<generation_info> lineage::snapshot() const {
  std::vector<generation_info> out;
  auto from_slot = [&](std::uint64_t g, pid_t pid) -> bool {
    const slot* s = slot_of(g);
    if (!s || s->generation_plus_1.load() != g + 1 || s->pid.load() != pid) return false;
    out.push_back({g, pid, static_cast<state>(s->st.load()), s->connections.load(), false});
    return true;
  };
  {
    std::lock_guard lock(mu_);
    for (const auto& e : elders_) {
      if (!exited(e.pidfd.get())) from_slot(e.generation, e.pid);
    }
  }
  if (!from_slot(generation_, self_)) {
    out.push_back({generation_, self_, static_cast<state>(local_state_.load()),
                   local_connections_.load(), true});
  }
  out.back().self = true;
  return out;
}

}  // namespace endless::core
