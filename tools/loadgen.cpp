// loadgen: an HTTP/1.1 load generator that proves a server restart loses no request.
//
// Every request is attempted exactly once and ends as "ok" or as exactly one failure class;
// nothing is retried, because a retry would hide the very loss we are looking for. The
// classes say where a request died: `connect` (never connected), `reset_new` / `reset_reused`
// (reset or EOF before any response byte, on a fresh connection / on a reused keep-alive one:
// the keep-alive close race), `reset_mid` (after some response bytes), `timeout`, `bad_status`
// (complete response, not 2xx) and `malformed`. So `requests == ok + failed` always holds.
// The timeout runs from the start of the request, connect included; a connect still pending
// then counts as `connect`. Latency (ok responses only) runs from the first request byte
// written to the last response byte read.
//
// Model: T worker threads, each owning a share of the connections, one level-triggered epoll
// loop, a timer heap for pauses and its own statistics. Nothing is shared on the hot path
// except, with --requests, one atomic counter of claimed requests; statistics are merged
// after join. The signal handler only sets a flag. Only the C++ standard library and Linux
// system calls are used, so the tool builds wherever the library does.
//
// --timeline-ms W adds a time series: per W-ms bucket of the run, how many requests ended ok
// and how many failed, by class, each counted in the bucket where its outcome became known
// (response complete, failure detected). The buckets are allocated before the clock starts,
// sized by --duration plus the drain, so recording one is an index and an increment.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using time_point = clock_type::time_point;
using std::chrono::milliseconds;
using ull = unsigned long long;  // for printf

std::int64_t nanos(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

constexpr const char* kUsage =
    "usage: loadgen --url http://HOST[:PORT]/PATH [--connections N] [--duration S | --requests N]\n"
    "               [--mode keepalive|close] [--threads T] [--pause-max-ms M] [--timeout-ms T]\n"
    "               [--json FILE] [--pids] [--timeline-ms W]\n"
    "  --connections N    concurrent connections (default 64)\n"
    "  --duration S       run for S seconds (default 10), then let requests in flight finish\n"
    "  --requests N       run exactly N requests in total instead\n"
    "  --mode M           keepalive (default): reuse connections; close: one request each\n"
    "  --threads T        worker threads, each with its own epoll loop (default 1)\n"
    "  --pause-max-ms M   after each response wait a random 0..M ms (default 0)\n"
    "  --timeout-ms T     a request without a complete response by then fails (default 10000)\n"
    "  --json FILE        also write the results as JSON\n"
    "  --pids             list each X-Pid response header value seen\n"
    "  --timeline-ms W    count outcomes per W-ms bucket of the run (JSON only; needs a duration)\n"
    "exit status: 0 no failure, 1 some failure, 2 bad usage or could not run\n";

constexpr int kLoggedFailures = 5;      // described on stderr; the rest are only counted
constexpr std::size_t kMaxPids = 1024;  // a server sending a new X-Pid every time is not ours
constexpr std::size_t kMaxTimelineBuckets = std::size_t{1} << 18;  // 8 MiB per thread at most

std::atomic<bool> g_interrupted{false};

void on_signal(int) {
  g_interrupted.store(true, std::memory_order_relaxed);
}

std::string errno_text(int err) {
  return std::system_category().message(err);
}

// ---------------------------------------------------------------------------------------------
// Options

struct config {
  std::string authority;  // host[:port] as written in the URL, for the Host header
  std::string path = "/";
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int family = AF_INET;
  int connections = 64;
  int threads = 1;
  double duration_s = 10;
  std::uint64_t requests = 0;  // 0: run for duration_s instead
  bool close_mode = false;
  int pause_max_ms = 0;
  int timeout_ms = 10000;
  std::string json_path;
  bool show_pids = false;
  int timeline_ms = 0;  // 0: no timeline
  std::string request;  // the exact bytes of every request
};

template <typename T>
bool parse_number(std::string_view s, T lo, T hi, T& out) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !(v >= lo && v <= hi)) return false;
  out = v;
  return true;
}

// Only what a local benchmark needs: http://host[:port][/path], host a name, IPv4 or [IPv6].
// Resolved here, once, before the clock starts: DNS is not what we measure.
std::string set_target(config& cfg, const std::string& url) {
  const std::string bad = "bad URL '" + url + "': ";
  std::string_view u = url;
  if (!u.starts_with("http://")) return bad + "only http:// is supported";
  u.remove_prefix(7);
  u = u.substr(0, u.find('#'));
  std::size_t slash = u.find_first_of("/?");
  std::string_view auth = u.substr(0, slash);
  if (slash != std::string_view::npos) cfg.path = std::string(u.substr(slash));
  if (cfg.path[0] == '?') cfg.path.insert(0, "/");
  if (auth.empty() || auth.find('@') != std::string_view::npos) return bad + "expected host";
  cfg.authority = std::string(auth);
  std::string port = "80";
  std::size_t colon = auth.rfind(':');
  if (colon != std::string_view::npos && auth.find(']', colon) == std::string_view::npos) {
    int p = 0;
    if (!parse_number(auth.substr(colon + 1), 1, 65535, p)) return bad + "bad port";
    port = std::string(auth.substr(colon + 1));
    auth = auth.substr(0, colon);
  }
  if (auth.size() >= 2 && auth.front() == '[' && auth.back() == ']')
    auth = auth.substr(1, auth.size() - 2);
  if (auth.empty()) return bad + "no host";

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string host(auth);
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return "can't resolve '" + host + "': " + ::gai_strerror(rc);
  std::memcpy(&cfg.addr, res->ai_addr, res->ai_addrlen);
  cfg.addr_len = res->ai_addrlen;
  cfg.family = res->ai_family;
  ::freeaddrinfo(res);
  return "";
}

// Buckets for the whole run: the duration, then the drain (at most the timeout plus 2 s, see
// worker::begin_stop), then one more for rounding.
std::size_t timeline_buckets(const config& cfg) {
  double total_ms = cfg.duration_s * 1000 + cfg.timeout_ms + 2000;
  return static_cast<std::size_t>(std::ceil(total_ms / cfg.timeline_ms)) + 1;
}

// Returns an error message, or "" with `help` set or `cfg` filled in.
std::string parse_args(int argc, char** argv, config& cfg, bool& help) {
  static constexpr std::string_view kValued[] = {
      "--url",     "--connections",  "--duration",   "--requests", "--mode",
      "--threads", "--pause-max-ms", "--timeout-ms", "--json",     "--timeline-ms"};
  std::string url;
  bool have_duration = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    bool has_value = false;
    if (std::size_t eq = flag.find('='); flag.starts_with("--") && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.resize(eq);
      has_value = true;
    }
    if (flag == "--help" || flag == "-h") {
      help = true;
      return "";
    }
    if (flag == "--pids" && !has_value) {
      cfg.show_pids = true;
      continue;
    }
    if (std::find(std::begin(kValued), std::end(kValued), flag) == std::end(kValued))
      return "unknown flag '" + std::string(argv[i]) + "'";
    if (!has_value) {
      if (i + 1 >= argc) return flag + " needs a value";
      value = argv[++i];
    }
    const std::string bad = "bad value '" + value + "' for " + flag;
    if (flag == "--url") {
      url = value;
    } else if (flag == "--connections") {
      if (!parse_number(value, 1, 1000000, cfg.connections)) return bad;
    } else if (flag == "--duration") {
      if (!parse_number(value, 0.001, 1e6, cfg.duration_s)) return bad;
      have_duration = true;
    } else if (flag == "--requests") {
      if (!parse_number<std::uint64_t>(value, 1, UINT64_MAX / 2, cfg.requests)) return bad;
    } else if (flag == "--mode") {
      if (value != "keepalive" && value != "close") return bad + " (keepalive or close)";
      cfg.close_mode = value == "close";
    } else if (flag == "--threads") {
      if (!parse_number(value, 1, 1024, cfg.threads)) return bad;
    } else if (flag == "--pause-max-ms") {
      if (!parse_number(value, 0, 3600000, cfg.pause_max_ms)) return bad;
    } else if (flag == "--timeout-ms") {
      if (!parse_number(value, 1, 3600000, cfg.timeout_ms)) return bad;
    } else if (flag == "--json") {
      if (value.empty()) return bad;
      cfg.json_path = value;
    } else if (flag == "--timeline-ms") {
      if (!parse_number(value, 1, 3600000, cfg.timeline_ms)) return bad;
    }
  }
  if (url.empty()) return "--url is required";
  if (have_duration && cfg.requests != 0) return "--duration and --requests exclude each other";
  if (cfg.threads > cfg.connections) return "--threads must not exceed --connections";
  if (cfg.timeline_ms != 0 && cfg.requests != 0)
    return "--timeline-ms needs a --duration (the buckets are sized by it)";
  if (cfg.timeline_ms != 0 && timeline_buckets(cfg) > kMaxTimelineBuckets)
    return "--timeline-ms too fine for this --duration (at most " +
           std::to_string(kMaxTimelineBuckets) + " buckets)";
  return set_target(cfg, url);
}

// Each connection holds one descriptor; 10,000 of them need more than the usual soft limit.
std::string raise_fd_limit(std::uint64_t needed) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return "getrlimit: " + errno_text(errno);
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit want = lim;
    want.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &want) == 0) lim = want;
  }
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < needed) {
    return "need " + std::to_string(needed) + " file descriptors, the limit is " +
           std::to_string(lim.rlim_cur) + " (raise the hard limit: ulimit -Hn)";
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: log-linear, 32 sub-buckets per power of two, so every reported value is
// within ~3% of the truth in constant memory, whatever the number of samples.

class histogram {
 public:
  void record(std::uint64_t v) {
    ++counts_[index(v)];
    ++total_;
    max_ = std::max(max_, v);
  }

  void merge(const histogram& o) {
    for (std::size_t i = 0; i < kBuckets; ++i)
      counts_[i] += o.counts_[i];
    total_ += o.total_;
    max_ = std::max(max_, o.max_);
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

  // Values below 2*kSub have a bucket each; above, the top kSubBits+1 bits pick the bucket.
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
// Response parser: incremental; keeps the head (for the fields) and one chunk line, counts
// body bytes without storing them. Framing follows RFC 9112 §6.3 and §7.1.

bool iequals(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char c = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    if (c != lower[i]) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  std::size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Calls fn(token) for each comma-separated token of a field value (RFC 9110 §5.6.1).
template <typename Fn>
void for_each_token(std::string_view value, Fn fn) {
  for (;;) {  // bounded: value shrinks every pass
    std::size_t comma = value.find(',');
    fn(trim(value.substr(0, comma)));
    if (comma == std::string_view::npos) return;
    value.remove_prefix(comma + 1);
  }
}

class response_parser {
 public:
  enum class result { more, complete, error };

  void reset() {
    phase_ = phase::head;
    head_.clear();
    line_.clear();
    keep_alive_ = has_pid_ = false;
    error_ = nullptr;
  }

  // Feeds bytes; `used` says how many belong to this response, so the caller can tell a
  // response followed by bytes nobody asked for.
  result feed(const char* data, std::size_t n, std::size_t& used) {
    used = 0;
    while (used < n) {  // every pass consumes at least one byte or returns
      const char* p = data + used;
      std::size_t left = n - used;
      if (phase_ == phase::head) {
        std::size_t old = head_.size();
        head_.append(p, std::min(left, kMaxHead + 4 - old));
        std::size_t end = head_.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
        if (end == std::string::npos) {
          if (head_.size() > kMaxHead) return fail("response head over 64 KiB");
          used = n;
          return result::more;
        }
        head_.resize(end + 4);
        used += end + 4 - old;
        if (result r = parse_head(); r != result::more) return r;
      } else if (phase_ == phase::body || phase_ == phase::chunk_data) {
        auto take = static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, left));
        remaining_ -= take;
        used += take;
        if (remaining_ == 0 && phase_ == phase::body) {
          phase_ = phase::done;
          return result::complete;
        }
        if (remaining_ == 0) phase_ = phase::chunk_end;
      } else if (phase_ == phase::until_close) {
        used = n;
      } else {  // a chunk-size, chunk-end or trailer line: collect it up to its LF
        const auto* lf = static_cast<const char*>(std::memchr(p, '\n', left));
        std::size_t take = lf ? static_cast<std::size_t>(lf - p) + 1 : left;
        if (line_.size() + take > kMaxLine) return fail("chunk or trailer line too long");
        line_.append(p, take);
        used += take;
        if (!lf) continue;
        if (result r = parse_line(); r != result::more) return r;
      }
    }
    return result::more;
  }

  // The server closed: the response is complete only if the close delimits its body.
  bool complete_on_eof() {
    if (phase_ != phase::until_close) return false;
    phase_ = phase::done;
    return true;
  }

  int status() const { return status_; }
  bool keep_alive() const { return keep_alive_; }
  bool has_pid() const { return has_pid_; }
  const std::string& pid() const { return pid_; }
  const char* error() const { return error_; }

 private:
  enum class phase { head, body, chunk_size, chunk_data, chunk_end, trailer, until_close, done };
  static constexpr std::size_t kMaxHead = 64 * 1024;
  static constexpr std::size_t kMaxLine = 4096;

  result fail(const char* why) {
    error_ = why;
    return result::error;
  }

  // head_ holds the status line and the fields, up to and including the empty line.
  result parse_head() {
    std::string_view h(head_);
    std::size_t eol = h.find("\r\n");
    std::string_view line = h.substr(0, eol);
    // RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    if (line.size() < 12 || !line.starts_with("HTTP/1.") || !is_digit(line[7]) || line[8] != ' ' ||
        !is_digit(line[9]) || !is_digit(line[10]) || !is_digit(line[11]) ||
        (line.size() > 12 && line[12] != ' ') || line[9] == '0')
      return fail("bad status line");
    bool http11 = line[7] != '0';
    status_ = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    bool conn_close = false, conn_keep = false, has_te = false, chunked = false;
    bool has_length = false;
    std::uint64_t length = 0;
    for (std::size_t pos = eol + 2;;) {  // bounded: pos advances, h ends with an empty line
      std::size_t end = h.find("\r\n", pos);
      line = h.substr(pos, end - pos);
      pos = end + 2;
      if (line.empty()) break;
      std::size_t colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0) return fail("bad header line");
      std::string_view name = line.substr(0, colon);
      std::string_view value = trim(line.substr(colon + 1));
      if (iequals(name, "content-length")) {
        std::uint64_t v = 0;
        if (!parse_number<std::uint64_t>(value, 0, std::uint64_t{1} << 60, v) ||
            (has_length && v != length))
          return fail("bad Content-Length");
        has_length = true;
        length = v;
      } else if (iequals(name, "transfer-encoding")) {
        has_te = true;
        for_each_token(value, [&](std::string_view t) { chunked = iequals(t, "chunked"); });
      } else if (iequals(name, "connection")) {
        for_each_token(value, [&](std::string_view t) {
          conn_close = conn_close || iequals(t, "close");
          conn_keep = conn_keep || iequals(t, "keep-alive");
        });
      } else if (iequals(name, "x-pid")) {
        pid_.assign(value);
        has_pid_ = true;
      }
    }
    if (status_ == 101) return fail("unexpected 101 Switching Protocols");
    if (status_ < 200) {  // interim (RFC 9110 §15.2): the final response follows
      head_.clear();
      has_pid_ = false;
      return result::more;
    }
    keep_alive_ = http11 ? !conn_close : conn_keep;
    if (status_ == 204 || status_ == 304 || (has_length && !has_te && length == 0)) {
      phase_ = phase::done;
    } else if (chunked) {  // Transfer-Encoding overrides Content-Length (§6.3 item 3)
      phase_ = phase::chunk_size;
    } else if (has_length && !has_te) {
      phase_ = phase::body;
      remaining_ = length;
    } else {  // §6.3 items 4 and 8: the close ends the body
      phase_ = phase::until_close;
      keep_alive_ = false;
    }
    return phase_ == phase::done ? result::complete : result::more;
  }

  // line_ holds one line, LF included: a chunk size, the CRLF after chunk data or a trailer.
  result parse_line() {
    if (line_.size() < 2 || line_[line_.size() - 2] != '\r') return fail("chunk line not CRLF");
    std::string_view line(line_.data(), line_.size() - 2);
    if (phase_ == phase::chunk_end) {
      if (!line.empty()) return fail("chunk data longer than its size");
      phase_ = phase::chunk_size;
    } else if (phase_ == phase::trailer) {
      if (line.empty()) phase_ = phase::done;  // other lines are trailer fields: ignored
    } else {
      std::uint64_t size = 0;
      auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), size, 16);
      std::string_view ext = trim(line.substr(static_cast<std::size_t>(end - line.data())));
      if (ec != std::errc() || size > (std::uint64_t{1} << 60) || (!ext.empty() && ext[0] != ';'))
        return fail("bad chunk size");
      phase_ = size == 0 ? phase::trailer : phase::chunk_data;
      remaining_ = size;
    }
    line_.clear();
    return phase_ == phase::done ? result::complete : result::more;
  }

  phase phase_ = phase::head;
  std::string head_;  // capacity kept across requests: no allocation per response
  std::string line_;
  std::string pid_;
  int status_ = 0;
  bool keep_alive_ = false;
  bool has_pid_ = false;
  const char* error_ = nullptr;
  std::uint64_t remaining_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Statistics, one per worker, merged after join.

enum class failure { connect, reset_new, reset_reused, reset_mid, timeout, bad_status, malformed };
constexpr std::size_t kFailureKinds = 7;
constexpr const char* kFailureNames[kFailureKinds] = {
    "connect", "reset_new", "reset_reused", "reset_mid", "timeout", "bad_status", "malformed"};

// Outcomes that became known within one timeline bucket. 32 bits: even 1 s buckets at 1M req/s
// stay far below 2^32.
struct timeline_bucket {
  std::uint32_t ok = 0;
  std::array<std::uint32_t, kFailureKinds> failures{};
};

struct pid_stat {
  std::string pid;
  std::uint64_t count = 0;
  std::int64_t first_ns = 0;  // since the start of the run
  std::int64_t last_ns = 0;
};

struct stats {
  std::uint64_t ok = 0;
  std::array<std::uint64_t, kFailureKinds> failures{};
  histogram latency;
  std::vector<pid_stat> pids;             // in order of first appearance
  std::vector<timeline_bucket> timeline;  // empty without --timeline-ms
  std::int64_t bucket_ns = 1;

  void enable_timeline(const config& cfg) {
    if (cfg.timeline_ms == 0) return;
    timeline.assign(timeline_buckets(cfg), {});
    bucket_ns = std::int64_t{cfg.timeline_ms} * 1000000;
  }

  // at_ns: since the start of the run. Never past the end: the run is bounded by the duration
  // and the drain the buckets are sized for; clamped all the same.
  timeline_bucket* bucket_at(std::int64_t at_ns) {
    if (timeline.empty()) return nullptr;
    auto i = static_cast<std::size_t>(std::max<std::int64_t>(at_ns, 0) / bucket_ns);
    return &timeline[std::min(i, timeline.size() - 1)];
  }

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

  void merge(const stats& o) {
    if (timeline.size() < o.timeline.size()) timeline.resize(o.timeline.size());
    bucket_ns = o.bucket_ns;
    for (std::size_t i = 0; i < o.timeline.size(); ++i) {
      timeline[i].ok += o.timeline[i].ok;
      for (std::size_t k = 0; k < kFailureKinds; ++k)
        timeline[i].failures[k] += o.timeline[i].failures[k];
    }
    ok += o.ok;
    for (std::size_t i = 0; i < kFailureKinds; ++i)
      failures[i] += o.failures[i];
    latency.merge(o.latency);
    for (const pid_stat& q : o.pids) {
      auto it = std::find_if(pids.begin(), pids.end(), [&](auto& p) { return p.pid == q.pid; });
      if (it == pids.end()) {
        pids.push_back(q);
        continue;
      }
      it->count += q.count;
      it->first_ns = std::min(it->first_ns, q.first_ns);
      it->last_ns = std::max(it->last_ns, q.last_ns);
    }
    std::stable_sort(pids.begin(), pids.end(),
                     [](auto& a, auto& b) { return a.first_ns < b.first_ns; });
  }
};

struct shared_state {
  time_point start;
  std::chrono::system_clock::time_point start_wall;  // the same instant, for other processes
  std::atomic<std::uint64_t> claimed{0};             // --requests: requests started by all workers
  std::atomic<int> logged{0};                        // failures described on stderr so far
};

// ---------------------------------------------------------------------------------------------
// Worker: one thread, one epoll loop, a fixed set of connection slots. A slot runs one request
// at a time on its socket, and opens a new socket when it has none.

enum class conn_state {
  paused,      // between requests: in the timer heap or the ready list; socket open or not
  connecting,  // request started, non-blocking connect in progress
  writing,     // request bytes going out
  reading,     // waiting for the rest of the response
  done         // the run is over for this slot
};

struct connection {
  int fd = -1;
  std::uint32_t id = 0;
  conn_state state = conn_state::paused;
  bool reused = false;     // the socket already carried a complete response
  bool got_bytes = false;  // some response byte arrived for the current request
  bool want_out = false;   // EPOLLOUT is in the interest set
  std::size_t written = 0;
  time_point req_start;    // the timeout runs from here (connect included)
  time_point write_start;  // latency runs from here
  response_parser parser;
};

class worker {
 public:
  worker(const config& cfg, shared_state& shared, std::uint32_t first_id, std::uint32_t count,
         std::uint32_t seed)
      : cfg_(cfg),
        shared_(shared),
        conns_(count),
        rng_(seed),
        timeout_(cfg.timeout_ms),
        scan_interval_(std::clamp(cfg.timeout_ms / 10, 1, 100)) {
    for (std::uint32_t i = 0; i < count; ++i)
      conns_[i].id = first_id + i;
    stats_.enable_timeline(cfg);
  }
  ~worker() {
    for (connection& c : conns_)
      close_fd(c);
    if (epfd_ >= 0) ::close(epfd_);
  }
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  std::string open() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    return epfd_ < 0 ? "epoll_create1: " + errno_text(errno) : "";
  }

  const stats& result() const { return stats_; }

  void run() {
    deadline_ = shared_.start + std::chrono::duration_cast<clock_type::duration>(
                                    std::chrono::duration<double>(cfg_.duration_s));
    for (std::uint32_t i = 0; i < conns_.size(); ++i)
      ready_.push_back(i);
    next_scan_ = clock_type::now() + scan_interval_;
    std::array<epoll_event, 256> events{};
    // Ends once stopped with nothing in flight. Every request is bounded by its timeout and
    // the drain by hard_deadline_, so the loop is bounded in time.
    for (;;) {
      time_point now = clock_type::now();
      if (g_interrupted.load(std::memory_order_relaxed) || (timed() && now >= deadline_))
        begin_stop(now);
      if (stopping_ && in_flight_ == 0) break;
      if (stopping_ && now >= hard_deadline_) {
        expire(now, true);
        break;
      }
      // Bounded: each pass pops a timer, and a timer pushed now lies at least 1 ms ahead.
      while (!timers_.empty() && timers_.top().at <= now) {
        std::uint32_t slot = timers_.top().slot;
        timers_.pop();
        start_request(conns_[slot]);
      }
      // Swapped, so a slot that fails at once waits for the next pass instead of spinning.
      starting_.swap(ready_);
      for (std::uint32_t slot : starting_)
        start_request(conns_[slot]);
      starting_.clear();
      if (now >= next_scan_) {
        expire(now, false);
        next_scan_ = now + scan_interval_;
      }
      int n = ::epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), wait_ms(now));
      for (int i = 0; i < n; ++i)
        on_event(conns_[events[i].data.u32], events[i].events);
    }
  }

 private:
  struct timer {
    time_point at;
    std::uint32_t slot;
    friend bool operator>(const timer& a, const timer& b) { return a.at > b.at; }
  };

  bool timed() const { return cfg_.requests == 0; }
  std::uint32_t slot_of(const connection& c) const {
    return static_cast<std::uint32_t>(&c - conns_.data());
  }
  static failure reset_class(const connection& c) {
    if (c.got_bytes) return failure::reset_mid;
    return c.reused ? failure::reset_reused : failure::reset_new;
  }

  int wait_ms(time_point now) const {
    if (!ready_.empty()) return 0;
    time_point next = next_scan_;  // at most 100 ms away: the interrupt flag gets polled
    if (!timers_.empty()) next = std::min(next, timers_.top().at);
    if (!stopping_ && timed()) next = std::min(next, deadline_);
    if (stopping_) next = std::min(next, hard_deadline_);
    if (next <= now) return 0;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(next - now).count();
    return static_cast<int>((us + 999) / 1000);  // rounded up, or we would spin until due
  }

  // No new request from here on; requests in flight finish or time out.
  void begin_stop(time_point now) {
    if (stopping_) return;
    stopping_ = true;
    hard_deadline_ = now + timeout_ + std::chrono::seconds(2);
  }

  void start_request(connection& c) {
    if (!stopping_ && !timed() &&
        shared_.claimed.fetch_add(1, std::memory_order_relaxed) >= cfg_.requests)
      begin_stop(clock_type::now());
    if (stopping_) {
      close_fd(c);
      c.state = conn_state::done;
      return;
    }
    ++in_flight_;
    c.parser.reset();
    c.got_bytes = false;
    c.written = 0;
    c.req_start = c.write_start = clock_type::now();
    // A socket that sat idle may have been closed by the server since the last epoll_wait;
    // a careful client checks before reusing it, which leaves only the true race to count.
    if (c.fd >= 0 && cfg_.pause_max_ms > 0) on_idle_event(c);
    if (c.fd < 0) {
      do_connect(c);
    } else {
      do_write(c);
    }
  }

  void do_connect(connection& c) {
    c.fd = ::socket(cfg_.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return fail(c, failure::connect, errno, nullptr);
    c.reused = false;
    int one = 1;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&cfg_.addr), cfg_.addr_len);
    if (rc != 0 && errno != EINPROGRESS) return fail(c, failure::connect, errno, nullptr);
    // Level-triggered: a readable socket is reported until drained, so no EOF is missed.
    epoll_event ev{};
    ev.events = EPOLLIN | (rc != 0 ? EPOLLOUT : 0u);
    ev.data.u32 = slot_of(c);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0)
      return fail(c, failure::connect, errno, "epoll_ctl failed");
    c.want_out = rc != 0;
    if (rc != 0) {
      c.state = conn_state::connecting;
      return;
    }
    c.write_start = clock_type::now();
    do_write(c);
  }

  void on_connected(connection& c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return fail(c, failure::connect, err, nullptr);
    c.write_start = clock_type::now();
    do_write(c);
  }

  void do_write(connection& c) {
    const std::string& req = cfg_.request;
    c.state = conn_state::writing;
    while (c.written < req.size()) {  // each pass writes something or returns
      ssize_t n = ::send(c.fd, req.data() + c.written, req.size() - c.written, MSG_NOSIGNAL);
      if (n > 0) {
        c.written += static_cast<std::size_t>(n);
        continue;
      }
      int err = n < 0 ? errno : EPIPE;
      if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)
        return fail(c, reset_class(c), err, nullptr);
      return set_want_out(c, true);
    }
    if (c.want_out) set_want_out(c, false);
    c.state = conn_state::reading;
  }

  void do_read(connection& c) {
    // Bounded: level-triggered epoll reports whatever is left on the next pass.
    for (int pass = 0; pass < 4; ++pass) {
      ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
      if (n > 0) {
        c.got_bytes = true;
        std::size_t used = 0;
        auto r = c.parser.feed(buf_.data(), static_cast<std::size_t>(n), used);
        if (r == response_parser::result::error)
          return fail(c, failure::malformed, 0, c.parser.error());
        // No pipelining: bytes after the response mean its framing lied.
        if (r == response_parser::result::complete && used != static_cast<std::size_t>(n))
          return fail(c, failure::malformed, 0, "bytes after the end of the response");
        if (r == response_parser::result::complete) return on_response(c);
        if (static_cast<std::size_t>(n) < buf_.size()) return;  // drained: skip the EAGAIN
        continue;
      }
      if (n == 0 && c.parser.complete_on_eof()) return on_response(c);
      if (n == 0)
        return fail(c, reset_class(c), 0, c.got_bytes ? "EOF in the response" : "EOF, no response");
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      return fail(c, reset_class(c), errno, nullptr);
    }
  }

  void on_event(connection& c, std::uint32_t events) {
    if (c.fd < 0) return;
    if (c.state == conn_state::connecting) return on_connected(c);
    if (c.state == conn_state::paused) return on_idle_event(c);
    if (c.state == conn_state::writing && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) do_write(c);
    // A server may answer (or close) before it read the whole request: read while writing too.
    bool active = c.state == conn_state::writing || c.state == conn_state::reading;
    if (active && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) do_read(c);
  }

  // The server closed an idle keep-alive connection (or sent bytes nobody asked for, such as
  // a 408). No request was on it, so nothing is lost: the next request opens a new connection.
  // Only a close that crosses our request on the wire is the race counted as reset_reused.
  void on_idle_event(connection& c) {
    ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    close_fd(c);
  }

  void on_response(connection& c) {
    time_point end = clock_type::now();
    --in_flight_;
    int status = c.parser.status();
    if (status >= 200 && status < 300) {
      ++stats_.ok;
      stats_.latency.record(static_cast<std::uint64_t>(nanos(end - c.write_start)));
      if (timeline_bucket* b = stats_.bucket_at(nanos(end - shared_.start))) ++b->ok;
    } else {
      char why[32];
      std::snprintf(why, sizeof why, "status %d", status);
      count_failure(c, failure::bad_status, 0, why);
    }
    if (c.parser.has_pid()) stats_.record_pid(c.parser.pid(), nanos(end - shared_.start));
    // Closing right away is fine: the server's FIN is usually in already, so the TIME_WAIT
    // stays on its side.
    if (cfg_.close_mode || !c.parser.keep_alive() || c.written != cfg_.request.size())
      close_fd(c);
    else
      c.reused = true;
    schedule_next(c, true);
  }

  void fail(connection& c, failure kind, int err, const char* detail) {
    --in_flight_;
    count_failure(c, kind, err, detail);
    close_fd(c);  // whatever the socket still holds belongs to a request we gave up on
    schedule_next(c, false);
  }

  void count_failure(const connection& c, failure kind, int err, const char* detail) {
    ++stats_.failures[static_cast<std::size_t>(kind)];
    if (!stats_.timeline.empty())
      ++stats_.bucket_at(nanos(clock_type::now() - shared_.start))->failures[std::size_t(kind)];
    if (shared_.logged.load(std::memory_order_relaxed) >= kLoggedFailures) return;
    if (shared_.logged.fetch_add(1, std::memory_order_relaxed) >= kLoggedFailures) return;
    std::chrono::duration<double, std::milli> at = clock_type::now() - shared_.start;
    std::fprintf(stderr, "loadgen: failure %s on connection %u (%s) at %.1f ms: %s\n",
                 kFailureNames[static_cast<std::size_t>(kind)], c.id, c.reused ? "reused" : "new",
                 at.count(), detail ? detail : errno_text(err).c_str());
  }

  // After a failure the next request waits for the next pass of the loop, so a refused
  // connect cannot recurse; after a response it may go out at once, as a request never
  // completes synchronously.
  void schedule_next(connection& c, bool may_start_now) {
    c.state = conn_state::paused;
    if (stopping_) {
      close_fd(c);
      c.state = conn_state::done;
      return;
    }
    int delay = 0;
    if (cfg_.pause_max_ms > 0)
      delay = std::uniform_int_distribution<int>(0, cfg_.pause_max_ms)(rng_);
    if (delay > 0) {
      timers_.push({clock_type::now() + milliseconds(delay), slot_of(c)});
    } else if (may_start_now) {
      start_request(c);
    } else {
      ready_.push_back(slot_of(c));
    }
  }

  // Fails requests in flight for longer than the timeout (all of them when `all`). A scan
  // every timeout/10 (at most 100 ms) is cheaper than a timer per request at 100k req/s.
  void expire(time_point now, bool all) {
    for (connection& c : conns_) {
      bool in_flight = c.state == conn_state::connecting || c.state == conn_state::writing ||
                       c.state == conn_state::reading;
      if (!in_flight || (!all && now - c.req_start < timeout_)) continue;
      if (c.state == conn_state::connecting)
        fail(c, failure::connect, ETIMEDOUT, "connect timed out");
      else
        fail(c, failure::timeout, ETIMEDOUT, "no complete response in time");
    }
  }

  void set_want_out(connection& c, bool on) {
    epoll_event ev{};
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.u32 = slot_of(c);
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
    c.want_out = on;
  }

  void close_fd(connection& c) {
    if (c.fd >= 0) ::close(c.fd);  // also leaves the epoll set: the fd is never duplicated
    c.fd = -1;
    c.want_out = false;
    c.reused = false;
  }

  const config& cfg_;
  shared_state& shared_;
  std::vector<connection> conns_;
  std::vector<std::uint32_t> ready_;     // slots to start on the next pass
  std::vector<std::uint32_t> starting_;  // the pass's copy of ready_
  std::priority_queue<timer, std::vector<timer>, std::greater<>> timers_;
  std::minstd_rand rng_;  // pause lengths only; quality is irrelevant
  const milliseconds timeout_;
  const milliseconds scan_interval_;
  int epfd_ = -1;
  stats stats_;
  bool stopping_ = false;
  std::uint32_t in_flight_ = 0;
  time_point deadline_;
  time_point hard_deadline_;
  time_point next_scan_;
  std::array<char, 64 * 1024> buf_{};
};

// ---------------------------------------------------------------------------------------------
// Output

struct summary {
  std::uint64_t requests, ok, failed;
  double rps;
  std::array<double, 5> latency_ms;  // p50, p90, p99, p99.9, max
};

summary summarize(const stats& s, double elapsed_s) {
  summary r{s.ok + s.failed(), s.ok, s.failed(), 0, {}};
  r.rps = static_cast<double>(r.requests) / elapsed_s;
  const double qs[] = {0.5, 0.9, 0.99, 0.999, 1};
  for (std::size_t i = 0; i < r.latency_ms.size(); ++i)
    r.latency_ms[i] = static_cast<double>(s.latency.quantile(qs[i])) / 1e6;
  return r;
}

void print_summary(const stats& s, const summary& r, bool show_pids) {
  std::printf("requests %llu  ok %llu  failed %llu  (", ull(r.requests), ull(r.ok), ull(r.failed));
  for (std::size_t i = 0; i < kFailureKinds; ++i)
    std::printf("%s%s %llu", i ? ", " : "", kFailureNames[i], ull(s.failures[i]));
  std::printf(")\nreq/s %.1f  latency", r.rps);
  const char* names[] = {"p50", "p90", "p99", "p99.9", "max"};
  for (std::size_t i = 0; i < r.latency_ms.size(); ++i) {
    double ms = r.latency_ms[i];
    int digits = ms < 10 ? 2 : ms < 100 ? 1 : 0;  // two or three significant digits
    std::printf("%s%s %.*f ms", i ? "  " : " ", names[i], digits, ms);
  }
  std::printf("\n");
  for (const pid_stat& p : s.pids) {
    if (!show_pids) break;
    std::printf("pid %s  count %llu  first %.1f ms  last %.1f ms\n", p.pid.c_str(), ull(p.count),
                static_cast<double>(p.first_ns) / 1e6, static_cast<double>(p.last_ns) / 1e6);
  }
}

// A pid that is a plain number stays a JSON number; anything else becomes a string.
std::string json_pid(const std::string& pid) {
  if (!pid.empty() && pid.size() <= 18 && std::all_of(pid.begin(), pid.end(), is_digit)) return pid;
  std::string out = "\"";
  for (char c : pid) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;  // control bytes dropped
  }
  return out + "\"";
}

std::string write_json(const std::string& path, const stats& s, const summary& r,
                       const shared_state& shared) {
  std::FILE* out = std::fopen(path.c_str(), "we");
  if (!out) return "can't write " + path + ": " + errno_text(errno);
  auto start_us =
      std::chrono::duration_cast<std::chrono::microseconds>(shared.start_wall.time_since_epoch())
          .count();
  std::fprintf(out,
               "{\"start_unix_us\":%lld,\"requests\":%llu,\"ok\":%llu,\"failed\":%llu,"
               "\"failures\":{",
               static_cast<long long>(start_us), ull(r.requests), ull(r.ok), ull(r.failed));
  for (std::size_t i = 0; i < kFailureKinds; ++i)
    std::fprintf(out, "%s\"%s\":%llu", i ? "," : "", kFailureNames[i], ull(s.failures[i]));
  const auto& l = r.latency_ms;
  std::fprintf(out,
               "},\"rps\":%.1f,\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
               "\"p999\":%.3f,\"max\":%.3f},\"pids\":[",
               r.rps, l[0], l[1], l[2], l[3], l[4]);
  for (std::size_t i = 0; i < s.pids.size(); ++i) {
    const pid_stat& p = s.pids[i];
    std::fprintf(out, "%s{\"pid\":%s,\"count\":%llu,\"first_ms\":%.3f,\"last_ms\":%.3f}",
                 i ? "," : "", json_pid(p.pid).c_str(), ull(p.count),
                 static_cast<double>(p.first_ns) / 1e6, static_cast<double>(p.last_ns) / 1e6);
  }
  std::fprintf(out, "]");
  if (!s.timeline.empty()) {
    // Trailing empty buckets (the unused part of the drain allowance) are left out.
    std::size_t n = s.timeline.size();
    auto empty = [](const timeline_bucket& b) {
      return b.ok == 0 && std::all_of(b.failures.begin(), b.failures.end(),
                                      [](std::uint32_t f) { return f == 0; });
    };
    while (n > 0 && empty(s.timeline[n - 1]))
      --n;
    std::fprintf(out, ",\"timeline\":{\"bucket_ms\":%lld,\"columns\":[\"ok\"",
                 static_cast<long long>(s.bucket_ns / 1000000));
    for (const char* name : kFailureNames)
      std::fprintf(out, ",\"%s\"", name);
    std::fprintf(out, "],\"buckets\":[");
    for (std::size_t i = 0; i < n; ++i) {
      const timeline_bucket& b = s.timeline[i];
      std::fprintf(out, "%s[%lu", i ? "," : "", static_cast<unsigned long>(b.ok));
      for (std::uint32_t f : b.failures)
        std::fprintf(out, ",%lu", static_cast<unsigned long>(f));
      std::fprintf(out, "]");
    }
    std::fprintf(out, "]}");
  }
  std::fprintf(out, "}\n");
  if (std::fclose(out) != 0) return "can't write " + path + ": " + errno_text(errno);
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool help = false;
  if (std::string err = parse_args(argc, argv, cfg, help); help || !err.empty()) {
    if (!help) std::fprintf(stderr, "loadgen: %s\n", err.c_str());
    std::fputs(kUsage, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  cfg.request = "GET " + cfg.path + " HTTP/1.1\r\nHost: " + cfg.authority +
                "\r\nUser-Agent: endless-loadgen\r\nAccept: */*\r\n" +
                (cfg.close_mode ? "Connection: close\r\n" : "") + "\r\n";
  // One descriptor per connection, one epoll per thread, stdio, the JSON file and some slack.
  std::string err = raise_fd_limit(static_cast<std::uint64_t>(cfg.connections) + cfg.threads + 16);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // send() uses MSG_NOSIGNAL; this guards any other path

  shared_state shared;
  std::vector<std::unique_ptr<worker>> workers;
  std::random_device seed_source;
  auto per = static_cast<std::uint32_t>(cfg.connections / cfg.threads);
  auto extra = static_cast<std::uint32_t>(cfg.connections % cfg.threads);
  for (std::uint32_t t = 0, next_id = 0; err.empty() && t < std::uint32_t(cfg.threads); ++t) {
    std::uint32_t share = per + (t < extra ? 1 : 0);
    workers.push_back(std::make_unique<worker>(cfg, shared, next_id, share, seed_source()));
    next_id += share;
    err = workers.back()->open();
  }
  std::vector<std::thread> threads;
  shared.start = clock_type::now();
  shared.start_wall = std::chrono::system_clock::now();
  try {
    for (std::size_t t = 0; err.empty() && t < workers.size(); ++t)
      threads.emplace_back([w = workers[t].get()] { w->run(); });
  } catch (const std::system_error& e) {
    err = std::string("can't start a thread: ") + e.what();
    g_interrupted.store(true);  // the workers already running drain and stop
  }
  for (std::thread& t : threads)
    t.join();
  if (!err.empty()) {
    std::fprintf(stderr, "loadgen: %s\n", err.c_str());
    return 2;
  }
  double elapsed_s = std::chrono::duration<double>(clock_type::now() - shared.start).count();

  stats total;
  for (auto& w : workers)
    total.merge(w->result());
  summary r = summarize(total, elapsed_s);
  print_summary(total, r, cfg.show_pids);
  std::fflush(stdout);
  if (int logged = shared.logged.load(); r.failed > std::uint64_t(logged) && logged > 0)
    std::fprintf(stderr, "loadgen: %llu failures, the first %d described above\n", ull(r.failed),
                 logged);
  if (!cfg.json_path.empty()) {
    if (err = write_json(cfg.json_path, total, r, shared); !err.empty()) {
      std::fprintf(stderr, "loadgen: %s\n", err.c_str());
      return 2;
    }
  }
  return r.failed == 0 ? 0 : 1;
}
