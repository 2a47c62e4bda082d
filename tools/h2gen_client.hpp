// h2gen's engine: N HTTP/2 connections, each keeping M GET streams in flight, and the
// account of what became of every stream. h2gen.cpp is the command line around it.
//
// The client behaves as RFC 9113 §6.8 asks of one, like a browser or a gRPC channel: after a
// GOAWAY it opens no stream on that connection (nghttp2_session_check_request_allowed), lets
// the streams in flight finish there, and opens a replacement connection at once so the load
// goes on. Nothing is retried, so every outcome is what the server did with one stream:
//   ok                   complete response, 2xx
//   bad_status           complete response, any other status
//   refused_unprocessed  the server never processed it (RFC 9113 §8.7): RST_STREAM with
//                        REFUSED_STREAM, an id above a GOAWAY's last-stream-id, or not sent at
//                        all because a GOAWAY came first. Safe for a client to retry; counted.
//   lost_in_flight       the connection ended (EOF, reset, TLS or protocol error) while the
//                        stream was open and no GOAWAY had released it
//   stream_reset         RST_STREAM from the server with any other code
//   protocol_error       nghttp2 reset the stream itself because the response broke the rules
//   timeout              open longer than the timeout; then cancelled with RST_STREAM(CANCEL)
//   connect_fail         a connection attempt failed or timed out before TLS (one per attempt)
//   tls_fail             the TLS handshake failed, or the server did not select h2 by ALPN
// `failed` is everything but ok, so `requests == ok + failed`. Latency (ok only) runs from the
// submit to the END_STREAM.
//
// Model: one thread, one level-triggered epoll loop, a pool of connections fixed at start (N
// carrying load plus up to N+8 draining after a GOAWAY), M stream slots each; latency in a
// fixed histogram. Not thread-safe: run() owns everything it touches but `interrupted`.
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <system_error>
#include <vector>

namespace h2gen {

using clock_type = std::chrono::steady_clock;
using time_point = clock_type::time_point;

inline constexpr std::size_t kMaxPids = 1024;  // a server sending a new X-Pid each time is not ours

inline std::string errno_text(int err) {
  return std::system_category().message(err);
}

// The command line, parsed and resolved (see h2gen.cpp's usage).
struct config {
  bool tls = false;
  std::string host;       // from the URL, brackets removed: SNI and the certificate check
  std::string authority;  // host[:port] as written: the :authority pseudo-header
  std::string path = "/";
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int family = AF_INET;
  int connections = 16;
  int streams = 10;
  double duration_s = 10;
  int timeout_ms = 5000;
  bool insecure = false;
  std::string cacert;
  std::string json_path;
  bool show_pids = false;
  bool verbose = false;
};

// ---------------------------------------------------------------------------------------------
// Latency histogram (the same as loadgen's): log-linear, 32 sub-buckets per power of two, so
// every reported value is within ~3% of the truth in constant memory.

class histogram {
 public:
  void record(std::uint64_t v) {
    ++counts_[index(v)];
    ++total_;
    max_ = std::max(max_, v);
  }

  // The midpoint of the bucket holding the ceil(q * n)-th smallest sample, capped at the max;
  // q = 1 gives the exact max.
  std::uint64_t quantile(double q) const {
    if (total_ == 0 || q >= 1) return max_;
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total_)));
    rank = std::clamp<std::uint64_t>(rank, 1, total_);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(midpoint(i), max_);
    }
    return max_;
  }

 private:
  static constexpr int kSubBits = 5;
  static constexpr std::uint64_t kSub = 1u << kSubBits;
  static constexpr std::size_t kBuckets = (65 - kSubBits) * kSub;

  static std::size_t index(std::uint64_t v) {
    if (v < 2 * kSub) return v;
    int msb = std::bit_width(v) - 1;
    return (msb - kSubBits + 1) * kSub + ((v >> (msb - kSubBits)) - kSub);
  }

  static std::uint64_t midpoint(std::size_t i) {
    if (i < 2 * kSub) return i;
    int shift = static_cast<int>(i / kSub) - 1;
    std::uint64_t lower = (kSub + i % kSub) << shift;
    return lower + ((std::uint64_t{1} << shift) >> 1);
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t total_ = 0;
  std::uint64_t max_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Statistics

enum class failure {
  refused_unprocessed,
  lost_in_flight,
  stream_reset,
  protocol_error,
  bad_status,
  timeout,
  connect_fail,
  tls_fail
};
inline constexpr std::size_t kFailureKinds = 8;
inline constexpr const char* kFailureNames[kFailureKinds] = {
    "refused_unprocessed", "lost_in_flight", "stream_reset", "protocol_error",
    "bad_status",          "timeout",        "connect_fail", "tls_fail"};

// How a refused_unprocessed stream was refused: tells a server's RST_STREAM from a GOAWAY.
enum class refusal { by_rst, by_goaway, unsent };
inline constexpr std::size_t kRefusalKinds = 3;
inline constexpr const char* kRefusalNames[kRefusalKinds] = {"by_rst", "by_goaway", "unsent"};

struct pid_stat {
  std::string pid;
  std::uint64_t count = 0;
  std::int64_t first_ns = 0;  // since the start of the run
  std::int64_t last_ns = 0;
};

struct stats {
  std::uint64_t ok = 0;
  std::array<std::uint64_t, kFailureKinds> failures{};
  std::array<std::uint64_t, kRefusalKinds> refusals{};
  std::uint64_t ok_after_goaway = 0;  // completed on a connection that had a GOAWAY: the drain
  std::uint64_t goaways = 0;
  std::uint64_t goaway_notices = 0;  // last-stream-id 2^31-1: "shutting down soon"
  std::uint64_t connections = 0;     // attempts, successful or not
  std::uint64_t reconnects = 0;      // attempts beyond the first N
  histogram latency;
  std::vector<pid_stat> pids;  // in order of first appearance

  std::uint64_t failed() const {
    std::uint64_t n = 0;
    for (std::uint64_t f : failures)
      n += f;
    return n;
  }

  // A handful of pids per run: a linear scan beats any map.
  void record_pid(const std::string& pid, std::int64_t at_ns) {
    for (pid_stat& p : pids) {
      if (p.pid == pid) {
        ++p.count;
        p.last_ns = at_ns;
        return;
      }
    }
    if (pids.size() < kMaxPids) pids.push_back({pid, 1, at_ns, at_ns});
  }
};

// What a run measured.
struct run_result {
  stats s;
  time_point start, end;                             // of the load, the final drain included
  std::chrono::system_clock::time_point start_wall;  // the same instant, for other processes
};

// Runs the load until cfg.duration_s has passed or `interrupted` is set, then lets the streams
// in flight finish (for at most the timeout and a second). Returns "" once the run is done, or
// why it could not run: a setup the server rejects before any connection worked (certificate,
// ALPN, no HTTP/2 at all) stops it at once rather than counting a failure per attempt.
std::string run(const config& cfg, const std::atomic<bool>& interrupted, run_result& out);

}  // namespace h2gen
