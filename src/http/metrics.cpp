#include "metrics.hpp"

#include <algorithm>

namespace endless::http {
namespace {

std::atomic<std::uint64_t> g_next_id{1};

// Prometheus label values: backslash, double quote and newline escaped (format 0.0.4).
std::string escape_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Seconds to the nanosecond, without trailing zeros ("0.00025", "12.5", "3"), in integers:
// neither printf (it follows LC_NUMERIC, and "0,5" is no Prometheus sample) nor
// std::to_chars(double) (libstdc++'s needs libm's fegetround, which a build with the static
// runtime would load for that alone: 0.35 MiB of resident text).
std::string number(double v) {
  if (v != v) return "NaN";
  if (v < 0) return std::string("-").append(number(-v));
  if (v >= 1.8e10) {  // beyond 570 years of seconds: whole seconds, then +Inf
    return v < 1.8e19 ? std::to_string(static_cast<std::uint64_t>(v)) : "+Inf";
  }
  constexpr std::uint64_t kPerSecond = 1'000'000'000;
  auto ns = static_cast<std::uint64_t>(v * 1e9 + 0.5);
  std::string out = std::to_string(ns / kPerSecond);
  std::uint64_t frac = ns % kPerSecond;
  if (frac != 0) {
    char digits[9];
    for (int i = 8; i >= 0; --i) {
      digits[i] = static_cast<char>('0' + frac % 10);
      frac /= 10;
    }
    std::size_t n = 9;
    while (digits[n - 1] == '0')
      --n;
    out.append(".").append(digits, n);
  }
  return out;
}

struct writer {
  std::string out;
  void head(const char* name, const char* type, const char* help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
  }
  void sample(std::string_view name, std::string_view labels, const std::string& value) {
    out.append(name);
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ").append(value).append("\n");
  }
  void sample(std::string_view name, std::string_view labels, std::uint64_t v) {
    sample(name, labels, std::to_string(v));
  }
  void sample(std::string_view name, std::string_view labels, std::int64_t v) {
    sample(name, labels, std::to_string(v));
  }
};

}  // namespace

std::size_t method_index(std::string_view m) noexcept {
  for (std::size_t i = 0; i + 1 < kMethodCount; ++i) {
    if (m == kMethods[i]) return i;
  }
  return kMethodCount - 1;
}

std::uint64_t metrics_snapshot::requests_total() const noexcept {
  std::uint64_t n = 0;
  for (const auto& row : requests)
    for (std::uint64_t v : row)
      n += v;
  return n;
}

server_metrics::server_metrics() : id_(g_next_id.fetch_add(1)) {}

metric_block& server_metrics::claim_thread_block() {
  std::lock_guard lock(mu_);
  if (!free_.empty()) {
    t_metric_slot = {id_, free_.back()};
    free_.pop_back();
  } else {
    blocks_.push_back(std::make_unique<metric_block>());
    t_metric_slot = {id_, blocks_.back().get()};
  }
  return *t_metric_slot.block;
}

void server_metrics::release_thread_block() noexcept {
  if (t_metric_slot.owner != id_) return;
  std::lock_guard lock(mu_);
  free_.push_back(t_metric_slot.block);
  t_metric_slot = {};
}

void server_metrics::count_request(std::string_view method, int status,
                                   std::uint64_t duration_ns) noexcept {
  metric_block* block;
  try {
    block = &thread_block();
  } catch (...) {
    return;  // out of memory for a first block: this request goes uncounted
  }
  metric_block& b = *block;
  std::size_t cls = status >= 100 && status < 600 ? static_cast<std::size_t>(status / 100 - 1) : 4;
  metric_block::add(b.requests[method_index(method)][cls], std::uint64_t{1});
  const double s = static_cast<double>(duration_ns) / 1e9;
  std::size_t k = 0;
  while (k < std::size(kDurationBounds) && s > kDurationBounds[k])
    ++k;
  metric_block::add(b.buckets[k], std::uint64_t{1});
  metric_block::add(b.duration_ns, duration_ns);
}

metrics_snapshot server_metrics::totals() const {
  std::lock_guard lock(mu_);
  metrics_snapshot m = base_;
  std::uint64_t duration_ns = base_duration_ns_;
  for (const auto& b : blocks_) {
    for (std::size_t i = 0; i < kMethodCount; ++i)
      for (std::size_t j = 0; j < kClassCount; ++j)
        m.requests[i][j] += b->requests[i][j].load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < kBucketCount; ++k)
      m.duration_buckets[k] += b->buckets[k].load(std::memory_order_relaxed);
    duration_ns += b->duration_ns.load(std::memory_order_relaxed);
    m.bytes_in += b->bytes_in.load(std::memory_order_relaxed);
    m.bytes_out += b->bytes_out.load(std::memory_order_relaxed);
    m.tls_handshakes += b->tls_ok.load(std::memory_order_relaxed);
    m.tls_handshake_failures += b->tls_failed.load(std::memory_order_relaxed);
    m.connections_new += b->conns[0].load(std::memory_order_relaxed);
    m.connections_active += b->conns[1].load(std::memory_order_relaxed);
    m.connections_idle += b->conns[2].load(std::memory_order_relaxed);
  }
  m.duration_seconds_sum = static_cast<double>(duration_ns) / 1e9;
  return m;
}

std::vector<std::pair<std::string, std::uint64_t>> server_metrics::carry(
    const std::string& prefix) const {
  metrics_snapshot m = totals();
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (std::size_t i = 0; i < kMethodCount; ++i)
    for (std::size_t j = 0; j < kClassCount; ++j)
      out.emplace_back(prefix + "requests:" + kMethods[i] + ":" + kStatusClasses[j],
                       m.requests[i][j]);
  for (std::size_t k = 0; k < kBucketCount; ++k)
    out.emplace_back(prefix + "duration_bucket:" + std::to_string(k), m.duration_buckets[k]);
  {
    // As an integer: a round trip through a double could shrink it, a "reset" to Prometheus.
    std::lock_guard lock(mu_);
    std::uint64_t ns = base_duration_ns_;
    for (const auto& b : blocks_)
      ns += b->duration_ns.load(std::memory_order_relaxed);
    out.emplace_back(prefix + "duration_ns", ns);
  }
  out.emplace_back(prefix + "bytes_in", m.bytes_in);
  out.emplace_back(prefix + "bytes_out", m.bytes_out);
  out.emplace_back(prefix + "tls_ok", m.tls_handshakes);
  out.emplace_back(prefix + "tls_failed", m.tls_handshake_failures);
  return out;
}

void server_metrics::set_base(const core::upgrader& up, const std::string& prefix) {
  metrics_snapshot b;
  for (std::size_t i = 0; i < kMethodCount; ++i)
    for (std::size_t j = 0; j < kClassCount; ++j)
      b.requests[i][j] = up.carried(prefix + "requests:" + kMethods[i] + ":" + kStatusClasses[j]);
  for (std::size_t k = 0; k < kBucketCount; ++k)
    b.duration_buckets[k] = up.carried(prefix + "duration_bucket:" + std::to_string(k));
  const std::uint64_t ns = up.carried(prefix + "duration_ns");
  b.bytes_in = up.carried(prefix + "bytes_in");
  b.bytes_out = up.carried(prefix + "bytes_out");
  b.tls_handshakes = up.carried(prefix + "tls_ok");
  b.tls_handshake_failures = up.carried(prefix + "tls_failed");
  std::lock_guard lock(mu_);
  base_ = b;
  base_duration_ns_ = ns;
}

std::string render_prometheus(const metrics_snapshot& m) {
  writer w;
  w.head("endless_restarts_total", "counter", "Upgrades that handed over to a new process.");
  w.sample("endless_restarts_total", "", m.restarts);
  w.head("endless_restart_failures_total", "counter", "Upgrades that failed, by reason.");
  for (const auto& [reason, n] : m.restart_failures)
    w.sample("endless_restart_failures_total", "reason=\"" + escape_label(reason) + "\"", n);
  w.head("endless_generation", "gauge", "Upgrades that led to this process.");
  w.sample("endless_generation", "", m.generation);
  w.head("endless_draining_processes", "gauge",
         "Older generations of this process still alive (draining or on probation).");
  w.sample("endless_draining_processes", "", m.draining_processes);
  w.head("endless_active_connections", "gauge", "Open connections of this process.");
  w.sample("endless_active_connections", "", std::max<std::int64_t>(m.active_connections(), 0));
  w.head("endless_connections", "gauge", "Open connections of this process, by state.");
  // Per-thread deltas read one after another may show a state a moment below zero.
  const std::int64_t by_state[] = {std::max<std::int64_t>(m.connections_new, 0),
                                   std::max<std::int64_t>(m.connections_active, 0),
                                   std::max<std::int64_t>(m.connections_idle, 0)};
  for (std::size_t i = 0; i < std::size(kConnStates); ++i)
    w.sample("endless_connections", std::string("state=\"") + kConnStates[i] + "\"", by_state[i]);
  w.head("endless_generation_connections", "gauge",
         "Open connections of each generation alive, as it reports them.");
  for (const auto& g : m.generations) {
    w.sample("endless_generation_connections",
             "generation=\"" + std::to_string(g.generation) + "\",pid=\"" + std::to_string(g.pid) +
                 "\",state=\"" + core::to_string(g.current) + "\"",
             g.connections);
  }
  w.head("endless_drains_total", "counter", "Drains finished by the processes of this lineage.");
  w.sample("endless_drains_total", "", m.drains);
  w.head("endless_drain_seconds_total", "counter", "Time those drains took, in total.");
  w.sample("endless_drain_seconds_total", "", number(m.drain_seconds_sum));
  w.head("endless_last_drain_seconds", "gauge", "How long the last drain took.");
  w.sample("endless_last_drain_seconds", "", number(m.last_drain_seconds));
  w.head("endless_http_requests_total", "counter",
         "Requests answered, by method and status class.");
  for (std::size_t i = 0; i < kMethodCount; ++i) {
    for (std::size_t j = 0; j < kClassCount; ++j) {
      if (m.requests[i][j] == 0) continue;
      w.sample("endless_http_requests_total",
               std::string("method=\"") + kMethods[i] + "\",code=\"" + kStatusClasses[j] + "\"",
               m.requests[i][j]);
    }
  }
  w.head("endless_http_request_duration_seconds", "histogram",
         "Time from the handler's start to its end.");
  std::uint64_t cumulative = 0;
  for (std::size_t k = 0; k < kBucketCount; ++k) {
    cumulative += m.duration_buckets[k];
    std::string le = k < std::size(kDurationBounds) ? number(kDurationBounds[k]) : "+Inf";
    w.sample("endless_http_request_duration_seconds_bucket", "le=\"" + le + "\"", cumulative);
  }
  w.sample("endless_http_request_duration_seconds_sum", "", number(m.duration_seconds_sum));
  w.sample("endless_http_request_duration_seconds_count", "", cumulative);
  w.head("endless_http_received_bytes_total", "counter", "Bytes read from clients.");
  w.sample("endless_http_received_bytes_total", "", m.bytes_in);
  w.head("endless_http_sent_bytes_total", "counter", "Bytes written to clients.");
  w.sample("endless_http_sent_bytes_total", "", m.bytes_out);
  w.head("endless_tls_handshakes_total", "counter", "TLS handshakes completed.");
  w.sample("endless_tls_handshakes_total", "", m.tls_handshakes);
  w.head("endless_tls_handshake_failures_total", "counter", "TLS handshakes that failed.");
  w.sample("endless_tls_handshake_failures_total", "", m.tls_handshake_failures);
  return w.out;
}

}  // namespace endless::http
