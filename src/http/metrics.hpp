// The server's counters (internal): requests by method and status class, the request
// duration histogram, bytes in and out, TLS handshakes, connections by state.
//
// Hot path without contention: every thread that serves (loop threads, threads that took a
// loop over from a blocked handler) counts into a block of its own, so an increment is a
// relaxed load and store, no locked instruction; a scrape sums the blocks. Blocks are never
// freed while the server lives (a thread that exits leaves its counts behind).
// The counters of a new process start from the old process's totals (core::upgrader::
// on_carry), so they carry over an upgrade.
//
// Thread safety: count_*() from the thread that owns the block (thread_block()); totals()
// from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "endless/http/server.hpp"

namespace endless::http {

inline constexpr const char* kMethods[] = {"GET",    "HEAD",    "POST",  "PUT",
                                           "DELETE", "OPTIONS", "PATCH", "other"};
inline constexpr std::size_t kMethodCount = std::size(kMethods);
inline constexpr const char* kStatusClasses[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
inline constexpr std::size_t kClassCount = std::size(kStatusClasses);
// Upper bounds (seconds) of the request duration histogram; +Inf follows.
inline constexpr double kDurationBounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                             1,      2.5,     5,      10};
inline constexpr std::size_t kBucketCount = std::size(kDurationBounds) + 1;
inline constexpr const char* kConnStates[] = {"new", "active", "idle"};  // conn_state 0..2

struct metric_block {
  std::atomic<std::uint64_t> requests[kMethodCount][kClassCount] = {};
  std::atomic<std::uint64_t> buckets[kBucketCount] = {};  // per bucket, not cumulative
  std::atomic<std::uint64_t> duration_ns = {};
  std::atomic<std::uint64_t> bytes_in = {}, bytes_out = {};
  std::atomic<std::uint64_t> tls_ok = {}, tls_failed = {};
  std::atomic<std::int64_t> conns[std::size(kConnStates)] = {};  // gauges: deltas summed

  // Single writer: no read-modify-write instruction needed.
  template <class T>
  static void add(std::atomic<T>& a, T d) noexcept {
    a.store(a.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
};

std::size_t method_index(std::string_view method) noexcept;

// The block this thread counts into, and for which server (server_metrics::id_). Inline so
// that the serving path's several counts per request cost a compare each, not a call.
struct metric_thread_slot {
  std::uint64_t owner = 0;
  metric_block* block = nullptr;
};
inline thread_local metric_thread_slot t_metric_slot;

class server_metrics {
 public:
  server_metrics();
  // This thread's block (taken from the free list or created on first use).
  metric_block& thread_block() {
    if (t_metric_slot.owner == id_) [[likely]]
      return *t_metric_slot.block;
    return claim_thread_block();
  }
  // A serving thread is about to exit: its block goes back to the free list (its counts stay
  // in the sums; the next thread carries on counting into it).
  void release_thread_block() noexcept;

  void count_request(std::string_view method, int status, std::uint64_t duration_ns) noexcept;

  // Sums over every block, plus the carried-over base.
  metrics_snapshot totals() const;
  // Starts from the old process's totals (names as in carry()).
  void set_base(const core::upgrader& up, const std::string& prefix);
  // (name, value) of every counter, for core::upgrader::on_carry, names prefixed.
  std::vector<std::pair<std::string, std::uint64_t>> carry(const std::string& prefix) const;

 private:
  metric_block& claim_thread_block();

  const std::uint64_t id_;  // tells this server's blocks from another's in thread_local
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<metric_block>> blocks_;
  std::vector<metric_block*> free_;
  metrics_snapshot base_;  // carried over; set before serving
  std::uint64_t base_duration_ns_ = 0;
};

// The Prometheus text exposition (format 0.0.4) of a server's and its process's metrics.
std::string render_prometheus(const metrics_snapshot& m);

}  // namespace endless::http
