// Back-to-back upgrades (upgrader.hpp, lineage.hpp): SIGHUPs faster than old processes
// drain, with long requests in flight. Every process of a test's lineage carries a marker
// in its environment, so the processes alive are counted from /proc (zombies excluded)
// without touching another test's.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fixture.hpp"

namespace endless::test {
namespace {

class generations_test : public core_fixture {
 protected:
  std::string marker = "ENDLESS_TEST_LINEAGE=" + dir.path;

  pid_t start_http(std::vector<std::string> args) {
    return start(args, {{"ENDLESS_TEST_LINEAGE", dir.path}}, HTTP_HELPER_PATH);
  }

  // The live (not zombie) processes whose environment holds our marker.
  std::set<pid_t> lineage() const {
    std::set<pid_t> out;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      std::string name = entry.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string stat = read_file("/proc/" + name + "/stat");
      std::size_t paren = stat.rfind(')');
      if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z') {
        continue;
      }
      // Field 38, exit_signal: SIGCHLD for a forked process; 0 for the helper task that
      // LeakSanitizer clones (sharing the memory, so the environment too) to check an
      // exiting process for leaks. That one is not a server process.
      std::istringstream fields(stat.substr(paren + 2));
      std::string field;
      for (int i = 3; i <= 38 && fields >> field; ++i) {
      }
      if (field == "0") continue;
      std::string env = read_file("/proc/" + name + "/environ");
      for (std::size_t at = 0; at < env.size();) {
        std::size_t end = env.find('\0', at);
        if (end == std::string::npos) end = env.size();
        if (env.compare(at, end - at, marker) == 0) {
          out.insert(std::atoi(name.c_str()));
          break;
        }
        at = end + 1;
      }
    }
    return out;
  }

  // Samples lineage() every 5 ms on a thread of its own; the largest count seen.
  struct sampler {
    generations_test& t;
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> most{0};
    std::thread th;
    explicit sampler(generations_test& owner) : t(owner) {
      th = std::thread([this] {
        for (int i = 0; i < 20000 && !stop; ++i) {  // at most ~100 s
          std::size_t n = t.lineage().size();
          if (n > most) most = n;
          std::this_thread::sleep_for(5ms);
        }
      });
    }
    ~sampler() {
      stop = true;
      th.join();
    }
  };

  pid_t start_load(const std::string& name, const std::string& target, int connections,
                   int seconds) {
    processes::spec s;
    s.argv = {LOADGEN_PATH,
              "--url",
              "http://127.0.0.1:" + std::to_string(port) + target,
              "--connections",
              std::to_string(connections),
              "--duration",
              std::to_string(seconds),
              "--timeout-ms",
              "15000"};
    s.log = dir / (name + ".log");
    return procs.start(s);
  }

  // A line of GET /generations: "generation pid state connections [self]".
  struct row {
    std::uint64_t generation = 0;
    pid_t pid = 0;
    std::string state;
    long connections = 0;
    bool self = false;
  };
  std::vector<row> generations() {
    std::vector<row> out;
    std::istringstream in(http_get(port, "/generations").body);
    for (std::string line; std::getline(in, line);) {
      std::istringstream fields(line);
      row r;
      std::string self;
      fields >> r.generation >> r.pid >> r.state >> r.connections >> self;
      r.self = self == "self";
      out.push_back(r);
    }
    return out;
  }
};

// The must-show: 10 SIGHUPs 200 ms apart (each to whichever process the pid file names)
// while keep-alive clients and 3-second requests run, none of them ever retrying. Defaults:
// max_draining 2, max_draining_wait 5 s, probation 5 s. Nothing fails, never more than
// max_draining + 1 processes are alive, every old process is gone within hammer_time, and
// the cap was really reached (an upgrade waited for an older generation).
TEST_F(generations_test, ten_sighups_200ms_apart_with_long_requests_lose_nothing) {
  ENDLESS_PLAIN_BUILD_ONLY();
  const auto hammer_time = 20s;
  pid_t first = start_http({"--hammer-time", "20"});
  sampler sample(*this);
  pid_t fast = start_load("fast", "/", 50, 10);
  pid_t slow = start_load("slow", "/sleep?ms=3000", 16, 10);
  std::this_thread::sleep_for(1s);  // every slow connection has a request in flight
  std::set<pid_t> signalled;
  for (int i = 0; i < 10; ++i) {
    pid_t serving = read_pid(pidfile);
    ASSERT_GT(serving, 0);
    procs.track(serving);
    signalled.insert(serving);
    ::kill(serving, SIGHUP);
    std::this_thread::sleep_for(200ms);
  }
  auto last_signal = std::chrono::steady_clock::now();
  // The queued upgrade goes through once an older generation has finished its 3 s requests.
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "(queued). forking.") >= 1; }, 15s))
      << read_file(log);
  bool alone = wait_until([&] { return lineage().size() == 1; }, hammer_time + 5s);
  auto settled = std::chrono::steady_clock::now() - last_signal;
  ASSERT_TRUE(alone) << read_file(log);
  for (pid_t p : {fast, slow})
    ASSERT_TRUE(procs.wait_gone(p, 30s));
  std::string fast_report = read_file(dir / "fast.log"), slow_report = read_file(dir / "slow.log");
  EXPECT_NE(fast_report.find(" failed 0 "), std::string::npos) << fast_report;
  EXPECT_NE(slow_report.find(" failed 0 "), std::string::npos) << slow_report;
  EXPECT_LE(sample.most.load(), 3u) << "more than max_draining + 1 processes alive";
  EXPECT_LT(settled, hammer_time) << "old processes outlived hammer_time";
  EXPECT_EQ(count_lines(log, "early:"), 0) << "nobody needed hammering:\n" << read_file(log);
  EXPECT_GE(count_lines(log, "older generation(s) still alive (max_draining 2)"), 1)
      << "the cap was never reached:\n"
      << read_file(log);
  pid_t last = read_pid(pidfile);
  procs.track(last);
  EXPECT_EQ(lineage(), std::set<pid_t>{last});
  auto rows = generations();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_GE(rows[0].generation, 3u);
  EXPECT_FALSE(signalled.count(last)) << "the last SIGHUPs were lost";
  EXPECT_NE(first, last);
  std::printf(
      "[ figures  ] 10 SIGHUPs 200 ms apart: %zu processes alive at most, %llu generations, "
      "last old process gone %lld ms after the last SIGHUP\n",
      sample.most.load(), static_cast<unsigned long long>(rows[0].generation),
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(settled).count()));
}

// Past max_draining_wait the oldest generation is hammered early (logged), its request in
// flight fails, and the upgrade goes on once it is gone; the next generation's request is
// untouched.
TEST_F(generations_test, past_the_wait_the_oldest_generation_is_hammered_early) {
  pid_t g0 = start_http({"--max-draining-wait-ms", "300", "--probation-ms", "0"});
  sampler sample(*this);
  in_flight on_g0(port, "/sleep?ms=20000");
  pid_t g1 = upgrade(g0);
  in_flight on_g1(port, "/sleep?ms=4000");
  pid_t g2 = upgrade(g1);
  ASSERT_GT(g2, 0);
  auto asked = std::chrono::steady_clock::now();
  pid_t g3 = upgrade(g2);
  auto took = std::chrono::steady_clock::now() - asked;
  ASSERT_GT(g3, 0);
  EXPECT_EQ(count_lines(log, "hammering generation 0 (pid " + std::to_string(g0) + ") early"), 1)
      << read_file(log);
  EXPECT_TRUE(procs.gone(g0));
  EXPECT_FALSE(on_g0.finish(1000).ok) << "the hammered generation's request";
  EXPECT_TRUE(on_g1.finish(10000).ok) << read_file(log);
  EXPECT_GE(took, 300ms) << "the upgrade did not wait";
  EXPECT_LE(sample.most.load(), 3u);
  EXPECT_EQ(http_get(port, "/pid").x_pid, g3);
}

// An upgrade asked for while one runs is not lost: the new process upgrades again once it is
// ready ('U'), so the binary on disk at the last SIGHUP ends up serving. The same for a
// SIGHUP that reaches a process already draining (a stale pid file read).
TEST_F(generations_test, an_upgrade_asked_for_meanwhile_is_passed_on) {
  pid_t g0 = start_http({"--start-delay-ms", "800", "--probation-ms", "5000"});
  ::kill(g0, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "started new process") == 1; }, 5s));
  ::kill(g0, SIGHUP);  // g1 is still starting (800 ms)
  ASSERT_TRUE(
      wait_until([&] { return count_lines(log, "upgrades again once it is ready") == 1; }, 5s))
      << read_file(log);
  ASSERT_TRUE(wait_until(
      [&] { return count_lines(log, "Upgrade passed on by the old process") == 1; }, 10s))
      << read_file(log);
  pid_t g2 = -1;
  ASSERT_TRUE(wait_until(
      [&] {
        g2 = read_pid(pidfile);
        auto rows = generations();
        return !rows.empty() && rows.back().generation == 2 && rows.back().pid == g2;
      },
      10s))
      << read_file(log);
  procs.track(g2);
  // g1 drains (its probation holds it 5 s): a SIGHUP to it goes to g2.
  pid_t g1 = -1;
  for (const auto& r : generations()) {
    if (r.generation == 1) g1 = r.pid;
  }
  ASSERT_GT(g1, 0) << read_file(log);
  ::kill(g1, SIGHUP);
  ASSERT_TRUE(wait_until(
      [&] {
        auto rows = generations();
        return !rows.empty() && rows.back().generation == 3;
      },
      15s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, "while draining: passed on to the new process"), 1) << read_file(log);
}

// GET /generations on the serving process lists every generation alive with its state and
// its connections: the older one holds its requests in flight until they finish.
TEST_F(generations_test, each_generation_reports_its_connections) {
  pid_t g0 = start_http({"--probation-ms", "0"});
  std::vector<std::unique_ptr<in_flight>> busy;
  for (int i = 0; i < 3; ++i)
    busy.push_back(std::make_unique<in_flight>(port, "/sleep?ms=2500"));
  pid_t g1 = upgrade(g0);
  auto rows = generations();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].generation, 0u);
  EXPECT_EQ(rows[0].pid, g0);
  EXPECT_EQ(rows[0].state, "draining");
  EXPECT_EQ(rows[0].connections, 3) << "its three requests in flight";
  EXPECT_FALSE(rows[0].self);
  EXPECT_EQ(rows[1].generation, 1u);
  EXPECT_EQ(rows[1].pid, g1);
  EXPECT_EQ(rows[1].state, "serving");
  EXPECT_GE(rows[1].connections, 1) << "this request's own";
  EXPECT_TRUE(rows[1].self);
  for (auto& b : busy)
    EXPECT_TRUE(b->finish(10000).ok);
  EXPECT_TRUE(procs.wait_gone(g0, 10s));
  rows = generations();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].pid, g1);
}

}  // namespace
}  // namespace endless::test
