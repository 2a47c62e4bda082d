// h2gen: an HTTP/2 load generator that measures a server restart the way a well-behaved
// client (a browser, a gRPC channel) lives through it: after a GOAWAY it finishes its streams
// and reconnects, and it counts only what the server really lost. h2load 1.52 cannot: after
// any GOAWAY it counts its next refused submit as a failed request and never reconnects.
// The engine, the outcome classes and the model are in h2gen_client.hpp; this file is the
// command line: options, the summary and the JSON. The signal handler only sets a flag.
#include <netdb.h>
#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "h2gen_client.hpp"

namespace {

using h2gen::config;
using h2gen::errno_text;
using h2gen::kFailureKinds;
using h2gen::kFailureNames;
using h2gen::kRefusalKinds;
using h2gen::kRefusalNames;
using h2gen::pid_stat;
using h2gen::stats;
using ull = unsigned long long;  // for printf

constexpr const char* kUsage =
    "usage: h2gen --url https://HOST[:PORT]/PATH | http://HOST[:PORT]/PATH\n"
    "             [--connections N] [--streams M] [--duration S] [--timeout-ms T]\n"
    "             [--insecure | --cacert FILE] [--json FILE] [--pids] [--verbose]\n"
    "  --url U            https: TLS with ALPN h2; http: h2c with prior knowledge\n"
    "  --connections N    connections carrying load (default 16)\n"
    "  --streams M        GET streams kept in flight on each (default 10)\n"
    "  --duration S       run for S seconds (default 10), then let streams in flight finish\n"
    "  --timeout-ms T     a stream open longer than this fails and is cancelled (default 5000)\n"
    "  --insecure         do not verify the server's certificate\n"
    "  --cacert FILE      verify it against these CA certificates (default: the system's)\n"
    "  --json FILE        also write the results as JSON\n"
    "  --pids             list each X-Pid response header value seen\n"
    "  --verbose          log connection events (GOAWAY, close) on stderr\n"
    "exit status: 0 it ran (failures or not), 2 bad usage or could not run\n";

std::atomic<bool> g_interrupted{false};

void on_signal(int) {
  g_interrupted.store(true, std::memory_order_relaxed);
}

template <typename T>
bool parse_number(std::string_view s, T lo, T hi, T& out) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !(v >= lo && v <= hi)) return false;
  out = v;
  return true;
}

// scheme://host[:port][/path], host a name, IPv4 or [IPv6]. Resolved here, once, before the
// clock starts: DNS is not what we measure.
std::string set_target(config& cfg, const std::string& url) {
  const std::string bad = "bad URL '" + url + "': ";
  std::string_view u = url;
  if (u.starts_with("https://")) {
    cfg.tls = true;
    u.remove_prefix(8);
  } else if (u.starts_with("http://")) {
    u.remove_prefix(7);
  } else {
    return bad + "expected https:// or http://";
  }
  u = u.substr(0, u.find('#'));
  std::size_t slash = u.find_first_of("/?");
  std::string_view auth = u.substr(0, slash);
  if (slash != std::string_view::npos) cfg.path = std::string(u.substr(slash));
  if (cfg.path[0] == '?') cfg.path.insert(0, "/");
  if (auth.empty() || auth.find('@') != std::string_view::npos) return bad + "expected host";
  cfg.authority = std::string(auth);
  std::string port = cfg.tls ? "443" : "80";
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
  cfg.host = std::string(auth);

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(cfg.host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return "can't resolve '" + cfg.host + "': " + ::gai_strerror(rc);
  std::memcpy(&cfg.addr, res->ai_addr, res->ai_addrlen);
  cfg.addr_len = res->ai_addrlen;
  cfg.family = res->ai_family;
  ::freeaddrinfo(res);
  return "";
}

// Returns an error message, or "" with `help` set or `cfg` filled in.
std::string parse_args(int argc, char** argv, config& cfg, bool& help) {
  static constexpr std::string_view kValued[] = {
      "--url", "--connections", "--streams", "--duration", "--timeout-ms", "--cacert", "--json"};
  std::string url;
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
    if (!has_value && (flag == "--pids" || flag == "--verbose" || flag == "--insecure")) {
      (flag == "--pids" ? cfg.show_pids : flag == "--verbose" ? cfg.verbose : cfg.insecure) = true;
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
      if (!parse_number(value, 1, 100000, cfg.connections)) return bad;
    } else if (flag == "--streams") {
      if (!parse_number(value, 1, 1000, cfg.streams)) return bad;
    } else if (flag == "--duration") {
      if (!parse_number(value, 0.001, 1e6, cfg.duration_s)) return bad;
    } else if (flag == "--timeout-ms") {
      if (!parse_number(value, 1, 3600000, cfg.timeout_ms)) return bad;
    } else if (flag == "--cacert") {
      if (value.empty()) return bad;
      cfg.cacert = value;
    } else if (flag == "--json") {
      if (value.empty()) return bad;
      cfg.json_path = value;
    }
  }
  if (url.empty()) return "--url is required";
  if (cfg.insecure && !cfg.cacert.empty()) return "--insecure and --cacert exclude each other";
  if (std::string err = set_target(cfg, url); !err.empty()) return err;
  if (!cfg.tls && (cfg.insecure || !cfg.cacert.empty()))
    return "--insecure and --cacert need an https:// URL";
  return "";
}

// Each connection holds one descriptor; thousands of them need more than the usual soft limit.
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
  std::printf("requests %llu  ok %llu  failed %llu (", ull(r.requests), ull(r.ok), ull(r.failed));
  bool any = false;
  for (std::size_t i = 0; i < kFailureKinds; ++i) {
    if (s.failures[i] == 0) continue;
    std::printf("%s%s %llu", any ? ", " : "", kFailureNames[i], ull(s.failures[i]));
    any = true;
  }
  std::printf(
      "%s)  goaways %llu (notice %llu)  reconnects %llu  req/s %.0f  latency p50 %.2f "
      "p99 %.2f max %.2f ms\n",
      any ? "" : "none", ull(s.goaways), ull(s.goaway_notices), ull(s.reconnects), r.rps,
      r.latency_ms[0], r.latency_ms[2], r.latency_ms[4]);
  for (const pid_stat& p : s.pids) {
    if (!show_pids) break;
    std::printf("pid %s  count %llu  first %.1f ms  last %.1f ms\n", p.pid.c_str(), ull(p.count),
                static_cast<double>(p.first_ns) / 1e6, static_cast<double>(p.last_ns) / 1e6);
  }
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
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
                       std::chrono::system_clock::time_point start_wall) {
  std::FILE* out = std::fopen(path.c_str(), "we");
  if (!out) return "can't write " + path + ": " + errno_text(errno);
  auto start_us =
      std::chrono::duration_cast<std::chrono::microseconds>(start_wall.time_since_epoch()).count();
  std::fprintf(out,
               "{\"start_unix_us\":%lld,\"requests\":%llu,\"ok\":%llu,\"failed\":%llu,"
               "\"failures\":{",
               static_cast<long long>(start_us), ull(r.requests), ull(r.ok), ull(r.failed));
  for (std::size_t i = 0; i < kFailureKinds; ++i)
    std::fprintf(out, "%s\"%s\":%llu", i ? "," : "", kFailureNames[i], ull(s.failures[i]));
  std::fprintf(out, "},\"refused\":{");
  for (std::size_t i = 0; i < kRefusalKinds; ++i)
    std::fprintf(out, "%s\"%s\":%llu", i ? "," : "", kRefusalNames[i], ull(s.refusals[i]));
  const auto& l = r.latency_ms;
  std::fprintf(out,
               "},\"rps\":%.1f,\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
               "\"p999\":%.3f,\"max\":%.3f},\"goaways\":%llu,\"goaway_notices\":%llu,"
               "\"ok_after_goaway\":%llu,\"connections\":%llu,\"reconnects\":%llu,\"pids\":[",
               r.rps, l[0], l[1], l[2], l[3], l[4], ull(s.goaways), ull(s.goaway_notices),
               ull(s.ok_after_goaway), ull(s.connections), ull(s.reconnects));
  for (std::size_t i = 0; i < s.pids.size(); ++i) {
    const pid_stat& p = s.pids[i];
    std::fprintf(out, "%s{\"pid\":%s,\"count\":%llu,\"first_ms\":%.3f,\"last_ms\":%.3f}",
                 i ? "," : "", json_pid(p.pid).c_str(), ull(p.count),
                 static_cast<double>(p.first_ns) / 1e6, static_cast<double>(p.last_ns) / 1e6);
  }
  std::fprintf(out, "]}\n");
  if (std::fclose(out) != 0) return "can't write " + path + ": " + errno_text(errno);
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool help = false;
  if (std::string err = parse_args(argc, argv, cfg, help); help || !err.empty()) {
    if (!help) std::fprintf(stderr, "h2gen: %s\n", err.c_str());
    std::fputs(kUsage, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  // The pool (2N + 8), epoll, stdio, the JSON file and some slack.
  if (std::string err = raise_fd_limit(2 * static_cast<std::uint64_t>(cfg.connections) + 32);
      !err.empty()) {
    std::fprintf(stderr, "h2gen: %s\n", err.c_str());
    return 2;
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // plain send() uses MSG_NOSIGNAL; OpenSSL's writes do not

  h2gen::run_result res;
  if (std::string err = h2gen::run(cfg, g_interrupted, res); !err.empty()) {
    std::fprintf(stderr, "h2gen: %s\n", err.c_str());
    return 2;
  }
  double elapsed_s = std::chrono::duration<double>(res.end - res.start).count();
  summary r = summarize(res.s, elapsed_s);
  print_summary(res.s, r, cfg.show_pids);
  std::fflush(stdout);
  if (!cfg.json_path.empty()) {
    if (std::string err = write_json(cfg.json_path, res.s, r, res.start_wall); !err.empty()) {
      std::fprintf(stderr, "h2gen: %s\n", err.c_str());
      return 2;
    }
  }
  return 0;
}
