// Resource exhaustion against a real http_helper: a slowloris client at one byte a second,
// fds running out in accept (EMFILE), handlers that throw or run out of memory, and the
// header and body limits at their exact edges. (The slow reader closed by write_timeout and
// the body closed by read_timeout are in http_server_test.cpp.)
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <thread>

#include "fixture.hpp"

namespace endless::test {
namespace {

using clock_type = std::chrono::steady_clock;

const std::string kPidRequest = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
const std::string kFollowUp = "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

class exhaustion_test : public core_fixture {
 protected:
  pid_t start_http(std::vector<std::string> args) { return start(args, {}, HTTP_HELPER_PATH); }

  // The status of every response in `data`, in order. (The bodies these tests get back never
  // hold "HTTP/1.1 " themselves.)
  static std::vector<int> statuses(const std::string& data) {
    std::vector<int> out;
    for (size_t at = data.find("HTTP/1.1 "); at != std::string::npos;
         at = data.find("HTTP/1.1 ", at + 1)) {
      out.push_back(std::atoi(data.c_str() + at + 9));
    }
    return out;
  }

  static double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
  }

  // Bytes this socket sent that its peer has not acknowledged yet.
  static unsigned unacked(int fd) {
    tcp_info ti{};
    socklen_t len = sizeof ti;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return ~0u;
    return ti.tcpi_unacked;
  }

  // User plus system CPU time of `pid`, in seconds (/proc/<pid>/stat fields 14 and 15).
  static double cpu_seconds(pid_t pid) {
    std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string f;
    long long ticks = 0;
    for (int i = 3; i <= 15 && fields >> f; ++i) {
      if (i >= 14) ticks += std::stoll(f);
    }
    return static_cast<double>(ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // Open fds of `pid` numbered below `below`. (An fd the test runner leaked into us can sit
  // above RLIMIT_NOFILE: inherited, it does not count against the limit.)
  static int fd_count(pid_t pid, int below = 1 << 30) {
    int n = 0;
    std::error_code ec;
    for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
         !ec && it != end; it.increment(ec)) {
      if (std::stoi(it->path().filename().string()) < below) ++n;
    }
    return n;
  }

  // "soft hard" of RLIMIT_NOFILE as /proc/<pid>/limits shows it.
  static std::string open_files_limit(pid_t pid) {
    for (const auto& line :
         lines_with("/proc/" + std::to_string(pid) + "/limits", "Max open files")) {
      std::istringstream in(line.substr(std::string("Max open files").size()));
      std::string soft, hard;
      in >> soft >> hard;
      return soft + " " + hard;
    }
    return "";
  }

  static bool send_all(int fd, const std::string& bytes) {
    return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  static std::string prlimit_path() {
    std::string path = run_command("command -v prlimit");
    if (!path.empty() && path.back() == '\n') path.pop_back();
    return path;
  }
  // http_helper with RLIMIT_NOFILE 32:64 (serve() raises the soft limit to the hard one, as
  // Go's runtime does; prlimit execs it: same pid), one loop, ready.
  pid_t start_with_64_fds(const std::string& prlimit) {
    processes::spec s;
    s.argv = {prlimit, "--nofile=32:64", HTTP_HELPER_PATH, "--pidfile", pidfile, "--threads", "1"};
    s.log = log;
    return started(procs.start(s));
  }
  // Keep-alive connections, each answered once, until one is not: the server is out of fds.
  // `held`: the answered ones; `queued`: the one left waiting (in the kernel's queue).
  void run_out_of_fds(std::vector<int>& held, int& queued) {
    for (int i = 0; i < 100 && queued < 0; ++i) {
      int fd = connect_loopback(port);
      ASSERT_GE(fd, 0) << "connection " << i << " refused: the listener is gone";
      ASSERT_TRUE(send_all(fd, kPidRequest));
      auto r = read_response(fd, 1000);
      // A slow answer is not a missing one: without the log line, give it longer.
      if (!r.ok && count_lines(log, "Too many open files") == 0) r = read_response(fd, 4000);
      if (r.ok) {
        held.push_back(fd);
      } else {
        queued = fd;
      }
    }
    ASSERT_GE(queued, 0) << "64 fds never ran out";
  }
};

TEST_F(exhaustion_test, slowloris_at_one_byte_a_second_is_closed_by_read_header_timeout) {
  start_http({"--read-header-timeout-ms", "2000"});
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  const auto t0 = clock_type::now();
  const std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";  // never finished
  std::vector<double> sent_at;                                       // seconds after connect
  double closed_at = -1;
  std::string got;
  // One byte a second, at 0.5 s, 1.5 s, 2.5 s, ...: half a second away from the 2 s deadline
  // either side, so the test never races it. Between bytes, watch for the close.
  for (int i = 0; i < 8 && closed_at < 0; ++i) {
    const auto due = t0 + 500ms + i * 1000ms;
    for (int rounds = 0; rounds < 1000 && closed_at < 0 && clock_type::now() < due; ++rounds) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(due - clock_type::now());
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 1))) != 1) continue;
      char buf[512];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
      } else {
        closed_at = seconds_since(t0);
      }
    }
    if (closed_at >= 0) break;
    if (::send(fd, &head[static_cast<size_t>(i) % head.size()], 1, MSG_NOSIGNAL) != 1) {
      closed_at = seconds_since(t0);
      break;
    }
    sent_at.push_back(seconds_since(t0));
    // The byte reached the server: its TCP acknowledged it.
    EXPECT_TRUE(wait_until([&] { return unacked(fd) == 0; }, 1s)) << "byte " << i << " not acked";
  }
  ::close(fd);
  ASSERT_GE(closed_at, 0) << "a client sending a byte a second kept its connection for "
                          << sent_at.size() << " s";
  EXPECT_GE(closed_at, 1.9) << "closed before read_header_timeout";
  EXPECT_LE(closed_at, 3.5) << "closed long after read_header_timeout";
  ASSERT_GE(sent_at.size(), 2u) << "the close came before the bytes did";
  EXPECT_LT(closed_at - sent_at.back(), 1.3) << "bytes stopped arriving before the close";
  EXPECT_EQ(got, "") << "an incomplete head is never answered";
  std::printf(
      "[ figures  ] slowloris: %zu bytes at 1/s, all acked; closed %.2f s after connect "
      "(read_header_timeout 2 s), %.2f s after the last byte\n",
      sent_at.size(), closed_at, closed_at - sent_at.back());
  EXPECT_TRUE(http_get(port, "/").ok) << "the server stopped serving";
}

TEST_F(exhaustion_test, emfile_in_accept_backs_off_keeps_the_listener_and_recovers) {
  const std::string prlimit = prlimit_path();
  if (prlimit.empty()) GTEST_SKIP() << "no prlimit";
  pid_t pid = start_with_64_fds(prlimit);
  ASSERT_GT(port, 0) << read_file(log);
  EXPECT_EQ(open_files_limit(pid), "64 64") << "the soft limit was not raised to the hard one";
  const int base = fd_count(pid);

  std::vector<int> held;
  int queued = -1;
  ASSERT_NO_FATAL_FAILURE(run_out_of_fds(held, queued));
  EXPECT_EQ(fd_count(pid, 64), 64) << "not out of fds";
  EXPECT_GE(count_lines(log, "accept: Too many open files"), 1) << read_file(log);

  // No busy loop on the readable listener while fds stay out.

  const double cpu0 = cpu_seconds(pid);
  const auto t0 = clock_type::now();
  std::this_thread::sleep_for(2s);
  const double cpu = cpu_seconds(pid) - cpu0, wall = seconds_since(t0);
  EXPECT_EQ(count_lines(log, "pausing accepts"), 1) << "logged more than once per episode";
  EXPECT_LT(cpu, 0.2 * wall) << "a busy loop: " << cpu << " s of CPU in " << wall << " s";

  // The listener stays: a connection made now is queued by the kernel, and answered later.
  int queued2 = connect_loopback(port);
  ASSERT_GE(queued2, 0) << "the listener is gone";
  ASSERT_TRUE(send_all(queued2, kPidRequest));
  auto early = read_response(queued2, 300);
  EXPECT_FALSE(early.ok) << "answered while out of fds?";

  // Free four fds: both queued connections are taken and answered.
  for (int i = 0; i < 4 && !held.empty(); ++i) {
    ::close(held.back());
    held.pop_back();
  }
  const auto t1 = clock_type::now();
  auto r1 = read_response(queued, 5000);
  auto r2 = read_response(queued2, 5000);
  const double resumed = seconds_since(t1);
  EXPECT_TRUE(r1.ok) << r1.error;
  EXPECT_EQ(r1.x_pid, pid);
  EXPECT_TRUE(r2.ok) << r2.error;
  EXPECT_EQ(r2.x_pid, pid);
  EXPECT_TRUE(wait_until([&] { return count_lines(log, "fds available again after") == 1; }, 2s))
      << read_file(log);
  int pauses = 0;
  for (const auto& line : lines_with(log, "fds available again after"))
    pauses = std::atoi(line.c_str() + line.find("after ") + 6);

  // Everything closed: the fds come back and service goes on as before.
  const size_t peak = held.size() + 4;
  for (int fd : held)
    ::close(fd);
  ::close(queued);
  ::close(queued2);
  EXPECT_TRUE(wait_until([&] { return fd_count(pid) == base; }, 5s))
      << fd_count(pid) << " fds open, " << base << " before";
  for (int i = 0; i < 100; ++i) {
    auto r = http_get(port, "/pid");
    ASSERT_TRUE(r.ok) << "request " << i << ": " << r.error;
    ASSERT_EQ(r.x_pid, pid);
  }
  std::printf(
      "[ figures  ] EMFILE: limit 64 (soft raised from 32), %d fds at start, %zu "
      "connections held at the limit; over %.2f s out of fds: %.3f s CPU (%.1f%%), "
      "%d accept pauses (one log line); queued connections answered %.0f ms after 4 fds freed\n",
      base, peak, wall, cpu, 100 * cpu / wall, pauses, resumed * 1000);
}

// An upgrade while the old process is out of fds: passing the listeners needs fds (the
// readiness socketpair, copies of the listeners, the exec-status pipe). It fails with a
// clear reason, the old process keeps its listener and serves what queued meanwhile, and
// once fds are free again the next SIGHUP upgrades.
TEST_F(exhaustion_test, fd_limit_reached_while_passing_fds_fails_the_upgrade_cleanly) {
  const std::string prlimit = prlimit_path();
  if (prlimit.empty()) GTEST_SKIP() << "no prlimit";
  pid_t pid = start_with_64_fds(prlimit);
  ASSERT_GT(port, 0) << read_file(log);
  std::vector<int> held;
  int queued = -1;
  ASSERT_NO_FATAL_FAILURE(run_out_of_fds(held, queued));
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "upgrade failed") == 1; }, 10s))
      << read_file(log);
  EXPECT_EQ(count_lines(log, "Too many open files; still serving"), 1) << read_file(log);
  EXPECT_EQ(read_pid(pidfile), pid);
  // Fds come back: the connection queued meanwhile is answered by the same process.
  for (int fd : held)
    ::close(fd);
  held.clear();
  auto r = read_response(queued, 5000);
  ::close(queued);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, pid);
  // The server closes its ends of the freed connections once it reads their EOF (slowly
  // under a sanitizer): only then are there fds for the next upgrade.
  EXPECT_TRUE(wait_until([&] { return fd_count(pid) <= 40; }, 15s)) << fd_count(pid) << " fds open";
  pid_t next = upgrade(pid);
  ASSERT_GT(next, 0) << read_file(log);
  EXPECT_TRUE(procs.wait_gone(pid, 10s));
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, next);
}

TEST_F(exhaustion_test, a_handler_that_throws_or_runs_out_of_memory_costs_one_request) {
  pid_t pid = start_http({"--threads", "1"});
  // Pipelined on one connection: each failure is a 500 and the connection goes on.
  auto r = raw_exchange(port,
                        "GET /oom HTTP/1.1\r\nHost: x\r\n\r\nGET /throw HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /oom HTTP/1.1\r\nHost: x\r\n\r\n" +
                            kFollowUp);
  EXPECT_EQ(statuses(r.data), (std::vector<int>{500, 500, 500, 200})) << r.data;
  EXPECT_TRUE(r.closed);
  EXPECT_NE(r.data.find("\r\n\r\n" + std::to_string(pid)), std::string::npos) << r.data;
  // Many of them, on new connections: the one process goes on serving.
  for (int i = 0; i < 200; ++i) {
    auto a = http_get(port, i % 2 ? "/oom" : "/throw");
    ASSERT_TRUE(a.ok) << "request " << i << ": " << a.error;
    EXPECT_EQ(a.status, 500);
  }
  EXPECT_FALSE(procs.gone(pid));
  EXPECT_EQ(http_get(port, "/pid").x_pid, pid);
  EXPECT_EQ(count_lines(log, "threw: std::bad_alloc"), 102) << read_file(log);
  EXPECT_EQ(count_lines(log, "threw: handler failed on purpose"), 101);
}

TEST_F(exhaustion_test, header_limits_at_their_edges) {
  const std::size_t max = 16384;
  start_http({"--max-header", std::to_string(max)});
  // A head of exactly `size` bytes, final CRLF included.
  auto head_of = [](std::size_t size) {
    std::string start = "GET /pid HTTP/1.1\r\nHost: x\r\nX-Pad: ", end = "\r\n\r\n";
    return start + std::string(size - start.size() - end.size(), 'p') + end;
  };
  ASSERT_EQ(head_of(max).size(), max);
  auto at = raw_exchange(port, head_of(max) + kFollowUp);
  EXPECT_EQ(statuses(at.data), (std::vector<int>{200, 200})) << "a head of max_header_bytes";
  auto over = raw_exchange(port, head_of(max + 1) + kFollowUp);
  EXPECT_EQ(statuses(over.data), (std::vector<int>{431})) << "max_header_bytes + 1";
  EXPECT_TRUE(over.closed);

  // 100 fields in all (Host is one) is the most; one more is 431 (RFC 6585 §5).
  auto fields = [](int n) {
    std::string h = "GET /pid HTTP/1.1\r\nHost: x\r\n";
    for (int i = 1; i < n; ++i)
      h += "X-" + std::to_string(i) + ": v\r\n";
    return h + "\r\n";
  };
  auto hundred = raw_exchange(port, fields(100) + kFollowUp);
  EXPECT_EQ(statuses(hundred.data), (std::vector<int>{200, 200})) << "100 fields";
  auto hundred_one = raw_exchange(port, fields(101) + kFollowUp);
  EXPECT_EQ(statuses(hundred_one.data), (std::vector<int>{431})) << "101 fields";
  EXPECT_TRUE(hundred_one.closed);

  // The target: 8 KiB is the most; one byte more is 414 (RFC 9110 §15.5.15).
  auto target_of = [](std::size_t size) {
    std::string t = "/pid?q=";
    return "GET " + t + std::string(size - t.size(), 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n";
  };
  auto longest = raw_exchange(port, target_of(8192) + kFollowUp);
  EXPECT_EQ(statuses(longest.data), (std::vector<int>{200, 200})) << "a target of 8192 bytes";
  auto too_long = raw_exchange(port, target_of(8193) + kFollowUp);
  EXPECT_EQ(statuses(too_long.data), (std::vector<int>{414})) << "a target of 8193 bytes";
  EXPECT_TRUE(too_long.closed);
}

TEST_F(exhaustion_test, body_limits_at_their_edges) {
  const std::size_t max = 1000;
  start_http({"--max-body", std::to_string(max)});
  auto with_length = [](std::size_t n) {
    return "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(n) + "\r\n\r\n" +
           std::string(n, 'b');
  };
  auto at = raw_exchange(port, with_length(max) + kFollowUp);
  EXPECT_EQ(statuses(at.data), (std::vector<int>{200, 200})) << "Content-Length: max";
  EXPECT_NE(at.data.find("X-Body-Length: 1000\r\n"), std::string::npos);
  auto over = raw_exchange(port, with_length(max + 1) + kFollowUp);
  EXPECT_EQ(statuses(over.data), (std::vector<int>{413})) << "Content-Length: max + 1";
  EXPECT_TRUE(over.closed);

  // Chunked: the sum of the chunks is what counts, however it is cut.
  auto chunked = [](std::size_t first, std::size_t second) {
    auto hex = [](std::size_t n) {
      char buf[20];
      std::snprintf(buf, sizeof buf, "%zx", n);
      return std::string(buf);
    };
    return "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + hex(first) +
           "\r\n" + std::string(first, 'c') + "\r\n" + hex(second) + "\r\n" +
           std::string(second, 'c') + "\r\n0\r\n\r\n";
  };
  auto chunked_at = raw_exchange(port, chunked(600, 400) + kFollowUp);
  EXPECT_EQ(statuses(chunked_at.data), (std::vector<int>{200, 200})) << "chunked, max";
  EXPECT_NE(chunked_at.data.find("X-Body-Length: 1000\r\n"), std::string::npos);
  auto chunked_over = raw_exchange(port, chunked(600, 401) + kFollowUp);
  EXPECT_EQ(statuses(chunked_over.data), (std::vector<int>{413})) << "chunked, max + 1";
  EXPECT_TRUE(chunked_over.closed);

  // Too large and asking to continue: the final answer instead of 100 (RFC 9110 §10.1.1).
  auto expect = raw_exchange(port,
                             "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                             "Content-Length: 1001\r\n\r\n");
  EXPECT_EQ(statuses(expect.data), (std::vector<int>{413})) << expect.data;
  EXPECT_TRUE(expect.closed);
}

}  // namespace
}  // namespace endless::test
