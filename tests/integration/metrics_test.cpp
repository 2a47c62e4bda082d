// Metrics and health (server::metrics_handler(), healthz_handler(), readyz_handler()) with a
// real server and real upgrades: the exposition is checked by a strict parser of the
// Prometheus text format 0.0.4 (no promtool here), counters carry over upgrades and never go
// down, and /readyz turns 503 as soon as a process drains.
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fixture.hpp"

namespace endless::test {
namespace {

// One scrape: every sample by its full name ("name{a=\"b\",...}" with labels as written).
struct exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;  // family -> type
  double at(const std::string& key) const {
    auto it = samples.find(key);
    return it == samples.end() ? -1 : it->second;
  }
};

// Parses `text` strictly; on the first violation returns false with `why`.
bool parse_exposition(const std::string& text, exposition& out, std::string& why) {
  // [a-zA-Z_:][a-zA-Z0-9_:]* for metric names, the same without ':' for label names.
  auto valid = [](const std::string& s, bool colon) {
    if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
    for (char c : s) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && !(colon && c == ':')) {
        return false;
      }
    }
    return true;
  };
  if (text.empty() || text.back() != '\n') {
    why = "does not end with a newline";
    return false;
  }
  std::set<std::string> helped, finished;
  std::string current;  // the family whose samples are being read
  std::istringstream in(text);
  int n = 0;
  auto family_of = [&](const std::string& name) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string s = suffix;
      if (name.size() > s.size() && name.ends_with(s)) {
        std::string base = name.substr(0, name.size() - s.size());
        if (out.types.count(base) && out.types[base] == "histogram") return base;
      }
    }
    return name;
  };
  for (std::string line; std::getline(in, line);) {
    ++n;
    auto fail = [&](const std::string& what) {
      why = "line " + std::to_string(n) + ": " + what + ": " + line;
      return false;
    };
    if (line.empty()) return fail("empty line");
    if (line.rfind("# ", 0) == 0) {
      std::istringstream f(line.substr(2));
      std::string kw, name, rest;
      f >> kw >> name;
      std::getline(f, rest);
      if (!valid(name, true)) return fail("bad metric name");
      if (kw == "HELP") {
        if (!helped.insert(name).second) return fail("second HELP");
        if (rest.empty() || rest[0] != ' ') return fail("HELP without text");
      } else if (kw == "TYPE") {
        static const std::set<std::string> kinds = {"counter", "gauge", "histogram", "summary",
                                                    "untyped"};
        std::string type = rest.empty() ? "" : rest.substr(1);
        if (!kinds.count(type)) return fail("unknown type");
        if (out.types.count(name)) return fail("second TYPE");
        if (finished.count(name) || current == name) return fail("TYPE after its samples");
        if (type == "counter" && !name.ends_with("_total")) return fail("counter not *_total");
        out.types[name] = type;
      } else {
        return fail("comment that is neither HELP nor TYPE");
      }
      continue;
    }
    // A sample: name, optional {labels}, one space, a value.
    std::size_t brace = line.find('{'), space;
    std::string name, labels;
    if (brace != std::string::npos && brace < line.find(' ')) {
      name = line.substr(0, brace);
      std::size_t i = brace + 1;
      std::vector<std::string> seen;
      while (i < line.size() && line[i] != '}') {
        std::size_t eq = line.find('=', i);
        if (eq == std::string::npos) return fail("label without '='");
        std::string lname = line.substr(i, eq - i);
        if (!valid(lname, false)) return fail("bad label name");
        for (const auto& s : seen)
          if (s == lname) return fail("label twice");
        seen.push_back(lname);
        if (eq + 1 >= line.size() || line[eq + 1] != '"') return fail("unquoted label value");
        std::size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            if (j + 1 >= line.size() || std::string("\\\"n").find(line[j + 1]) == std::string::npos)
              return fail("bad escape");
            ++j;
          }
        }
        if (j >= line.size()) return fail("unterminated label value");
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return fail("unterminated labels");
      labels = line.substr(brace, i - brace + 1);
      space = i + 1;
    } else {
      space = line.find(' ');
      name = line.substr(0, space);
    }
    if (!valid(name, true)) return fail("bad sample name");
    if (space >= line.size() || line[space] != ' ') return fail("no space before the value");
    std::string value = line.substr(space + 1);
    double v = 0;
    if (value == "+Inf") {
      v = INFINITY;
    } else if (value == "-Inf") {
      v = -INFINITY;
    } else if (value == "NaN") {
      v = NAN;
    } else {
      std::size_t used = 0;
      try {
        v = std::stod(value, &used);
      } catch (...) {
        return fail("value not a number");
      }
      if (used != value.size()) return fail("junk after the value");
    }
    std::string family = family_of(name);
    if (!out.types.count(family)) return fail("sample without TYPE");
    if (family != current) {
      if (finished.count(family)) return fail("family not contiguous");
      if (!current.empty()) finished.insert(current);
      current = family;
    }
    std::string type = out.types[family];
    if ((type == "counter" || type == "histogram") && !(v >= 0)) return fail("negative counter");
    if (!out.samples.emplace(name + labels, v).second) return fail("sample twice");
  }
  // Histograms: cumulative buckets ending in +Inf, equal to _count.
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    double last = -1, inf = -1;
    for (const auto& [key, v] : out.samples) {
      if (key.rfind(family + "_bucket{le=\"", 0) != 0) continue;
      if (key == family + "_bucket{le=\"+Inf\"}") inf = v;
    }
    // Bucket order as printed is checked by the caller through bounds; here the totals.
    if (inf < 0 || out.at(family + "_count") != inf || out.at(family + "_sum") < 0) {
      why = family + ": +Inf bucket, _count and _sum disagree or are missing";
      return false;
    }
    (void)last;
  }
  return true;
}

class metrics_test : public core_fixture {
 protected:
  pid_t start_http(std::vector<std::string> args) { return start(args, {}, HTTP_HELPER_PATH); }
  exposition scrape() {
    auto r = http_get(port, "/metrics");
    EXPECT_TRUE(r.ok) << r.error;
    exposition e;
    std::string why;
    EXPECT_TRUE(parse_exposition(r.body, e, why)) << why << "\n" << r.body;
    return e;
  }
  static constexpr const char* kGet2xx = "endless_http_requests_total{method=\"GET\",code=\"2xx\"}";
  static constexpr const char* kGet4xx = "endless_http_requests_total{method=\"GET\",code=\"4xx\"}";
};

TEST(exposition_parser, refuses_what_is_not_the_format) {
  exposition e;
  std::string why;
  const std::string good =
      "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n";
  EXPECT_TRUE(parse_exposition(good, e, why)) << why;
  for (const std::string& bad : {
           std::string("a_total 1\n"),                                      // no TYPE
           std::string("# TYPE a_total counter\na_total 1"),                // no final newline
           std::string("# TYPE a counter\na 1\n"),                          // counter name
           std::string("# TYPE a_total counter\na_total{x=q} 1\n"),         // unquoted
           std::string("# TYPE a_total counter\na_total{x=\"\\t\"} 1\n"),   // bad escape
           std::string("# TYPE a_total counter\na_total 1x\n"),             // junk
           std::string("# TYPE a_total counter\na_total -1\n"),             // negative counter
           std::string("# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n"),  // not contiguous
           std::string("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"),
       }) {
    exposition x;
    EXPECT_FALSE(parse_exposition(bad, x, why)) << bad;
  }
}

// Scrapes before and after three upgrades: the format holds, the process gauges follow the
// new process, the counters go on from the old process's totals and never go down.
TEST_F(metrics_test, counters_carry_over_three_upgrades) {
  pid_t pid = start_http({"--probation-ms", "0"});
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(http_get(port, "/").ok);
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(http_get(port, "/nope").status, 404);
  // Answered by the server itself, no handler: counted too.
  auto bad = raw_exchange(port,
                          "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                          "Content-Length: 2\r\n\r\n");
  ASSERT_EQ(bad.data.rfind("HTTP/1.1 400", 0), 0u) << bad.data;
  exposition first = scrape();
  EXPECT_EQ(first.at(kGet2xx), 10);
  EXPECT_EQ(first.at(kGet4xx), 5);
  EXPECT_EQ(first.at("endless_http_requests_total{method=\"other\",code=\"4xx\"}"), 1);
  EXPECT_EQ(first.at("endless_restarts_total"), 0);
  EXPECT_EQ(first.at("endless_generation"), 0);
  EXPECT_EQ(first.types["endless_http_request_duration_seconds"], "histogram");
  EXPECT_EQ(first.at("endless_http_request_duration_seconds_count"), 16);
  EXPECT_GT(first.at("endless_http_received_bytes_total"), 0);
  EXPECT_GT(first.at("endless_http_sent_bytes_total"), 0);
  EXPECT_EQ(first.at("endless_restart_failures_total{reason=\"exited\"}"), 0);
  exposition before = first;
  for (int round = 1; round <= 3; ++round) {
    pid = upgrade(pid);
    ASSERT_GT(pid, 0);
    for (int i = 0; i < 10; ++i)
      ASSERT_TRUE(http_get(port, "/").ok);
    exposition now = scrape();
    EXPECT_EQ(now.at("endless_restarts_total"), round);
    EXPECT_EQ(now.at("endless_generation"), round);
    EXPECT_EQ(now.at(kGet4xx), 5) << "carried over";
    EXPECT_GE(now.at(kGet2xx), before.at(kGet2xx) + 10) << "round " << round;
    for (const auto& [key, v] : before.samples) {
      std::string family = key.substr(0, key.find('{'));
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (family.ends_with(suffix)) family.resize(family.size() - std::strlen(suffix));
      }
      std::string type = before.types[family];
      if (type != "counter" && type != "histogram") continue;
      EXPECT_GE(now.at(key), v) << key << " went down in round " << round;
    }
    // The request duration histogram counts exactly the requests counted by class.
    double requests = 0;
    for (const auto& [key, v] : now.samples) {
      if (key.rfind("endless_http_requests_total{", 0) == 0) requests += v;
    }
    EXPECT_EQ(now.at("endless_http_request_duration_seconds_count"), requests);
    // At least this scrape's own connection (the previous request's may still be closing).
    EXPECT_GE(now.at("endless_generation_connections{generation=\"" + std::to_string(round) +
                     "\",pid=\"" + std::to_string(pid) + "\",state=\"serving\"}"),
              1);
    before = now;
  }
  EXPECT_TRUE(wait_until([&] { return scrape().at("endless_drains_total") >= 3; }, 10s));
}

// Handler durations are read from CLOCK_MONOTONIC until the TSC's rate is known (it is
// measured over the first 100 ms or so, where the kernel's clocksource is the TSC) and from
// the TSC after: both ways put a 300 ms handler in the (0.25, 0.5] bucket.
TEST_F(metrics_test, handler_durations_are_right_before_and_after_the_tsc_rate_is_known) {
  start_http({});
  ASSERT_EQ(http_get(port, "/sleep?ms=300").status, 200);  // most likely before
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(http_get(port, "/sleep?ms=300").status, 200);  // after
  exposition x = scrape();
  const std::string bucket = "endless_http_request_duration_seconds_bucket{le=\"";
  EXPECT_EQ(x.at(bucket + "0.5\"}") - x.at(bucket + "0.25\"}"), 2);
  EXPECT_GE(x.at("endless_http_request_duration_seconds_sum"), 0.6);
  EXPECT_LT(x.at("endless_http_request_duration_seconds_sum"), 0.9);
}

// /readyz answers 503 from the moment a process drains, while /healthz stays 200; the new
// process is ready. A request pipelined behind a slow one on the old process shows it.
TEST_F(metrics_test, readyz_turns_503_when_the_process_drains) {
  pid_t old = start_http({"--probation-ms", "0"});
  EXPECT_EQ(http_get(port, "/readyz").status, 200);
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  std::string two =
      "GET /sleep?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, two.data(), two.size(), MSG_NOSIGNAL), static_cast<ssize_t>(two.size()));
  std::this_thread::sleep_for(200ms);
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  std::string got;
  for (int i = 0; i < 100 && got.find("draining") == std::string::npos; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) != 1) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  EXPECT_NE(got.find("HTTP/1.1 200 OK"), std::string::npos) << got;
  EXPECT_NE(got.find("HTTP/1.1 503 Service Unavailable"), std::string::npos) << got;
  EXPECT_NE(got.find("X-Pid: " + std::to_string(old)), std::string::npos) << got;
  auto r = http_get(port, "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.x_pid, next);
}

}  // namespace
}  // namespace endless::test
