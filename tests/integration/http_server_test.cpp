// The HTTP server with real processes and real clients (curl, raw sockets): the hello
// contract, errors without desync, pipelining, bodies, streaming, timeouts, blocking
// handlers, and upgrades that lose nothing.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "fixture.hpp"

namespace endless::test {
namespace {

class http_server_test : public core_fixture {
 protected:
  // Reads until EOF (or a reset), or until nothing arrives for `quiet_ms`; bounded.
  static std::pair<std::size_t, bool> read_to_eof(int fd, int quiet_ms) {
    std::size_t got = 0;
    for (int i = 0; i < 1000000; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, quiet_ms) != 1) return {got, false};
      char buf[65536];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return {got, true};
      got += static_cast<std::size_t>(n);
    }
    return {got, false};
  }
  pid_t start_http(std::vector<std::string> args) { return start(args, {}, HTTP_HELPER_PATH); }
  int count(const std::string& hay, const std::string& needle) {
    int n = 0;
    for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1))
      ++n;
    return n;
  }
  std::string curl(const std::string& args) {
    return run_command("curl -sS --max-time 10 " + args + " 2>&1");
  }
};

TEST_F(http_server_test, hello_follows_the_example_contract) {
  pid_t pid = start({"--addr", "127.0.0.1:0"}, {}, HELLO_PATH);
  std::string url = "http://127.0.0.1:" + std::to_string(port);
  std::string out = curl("-i " + url + "/");
  EXPECT_NE(out.find("HTTP/1.1 200 OK"), std::string::npos) << out;
  EXPECT_NE(out.find("X-Pid: " + std::to_string(pid)), std::string::npos) << out;
  EXPECT_NE(out.find("\r\n\r\nHello Zero-Downtime!\n"), std::string::npos) << out;
  EXPECT_EQ(curl(url + "/pid"), std::to_string(pid));
  EXPECT_EQ(curl("'" + url + "/ping?seq=42&ms=20'"), "pong-42");
  EXPECT_EQ(curl("'" + url + "/ping?seq=5'"), "pong-5");
  std::string missing = curl("-i " + url + "/nope");
  EXPECT_NE(missing.find("404 Not Found"), std::string::npos);
  EXPECT_NE(missing.find("X-Pid: " + std::to_string(pid)), std::string::npos) << "every response";
  std::string head = curl("-I " + url + "/");
  EXPECT_NE(head.find("Content-Length: 21"), std::string::npos) << head;
  std::string wrong = curl("-i -X POST " + url + "/");
  EXPECT_NE(wrong.find("405 Method Not Allowed"), std::string::npos);
  EXPECT_NE(wrong.find("Allow: GET, HEAD"), std::string::npos) << wrong;
}

struct bad_request {
  const char* name;
  std::string bytes;
  int status;
};

TEST_F(http_server_test, bad_requests_are_answered_and_never_desync) {
  start_http({"--max-body", "100"});
  const std::string smuggled = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
  std::vector<bad_request> cases = {
      {"te_and_cl",
       "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\n\r\n",
       400},
      {"cl_conflict",
       "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n", 400},
      {"bare_lf", "GET / HTTP/1.1\nHost: x\n\n", 400},
      {"obs_fold", "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n", 400},
      {"bad_chunk", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       400},
      {"unknown_coding",
       "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
      {"version", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
      {"too_long_target", "GET /" + std::string(10000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
      {"body_too_large", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 413},
      {"no_host", "GET / HTTP/1.1\r\n\r\n", 400},
  };
  std::string many = "GET / HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 120; ++i)
    many += "X-" + std::to_string(i) + ": v\r\n";
  cases.push_back({"too_many_headers", many + "\r\n", 431});
  for (const auto& c : cases) {
    auto r = raw_exchange(port, c.bytes + smuggled);
    EXPECT_EQ(r.data.rfind("HTTP/1.1 " + std::to_string(c.status) + " ", 0), 0u) << c.name << ":\n"
                                                                                 << r.data;
    EXPECT_NE(r.data.find("Connection: close"), std::string::npos) << c.name;
    EXPECT_TRUE(r.closed) << c.name << ": connection left open";
    EXPECT_EQ(count(r.data, "HTTP/1.1 "), 1) << c.name << ": a request after it was served";
  }
  EXPECT_TRUE(http_get(port, "/").ok) << "the server survived";
}

TEST_F(http_server_test, pipelined_requests_are_answered_in_order) {
  pid_t pid = start_http({});
  std::string batch;
  for (int i = 0; i < 16; ++i) {
    batch += i % 2 ? "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n" : "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  batch += "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  auto r = raw_exchange(port, batch);
  EXPECT_TRUE(r.closed);
  EXPECT_EQ(count(r.data, "HTTP/1.1 200 OK"), 17);
  // Bodies alternate hello / pid, in request order.
  size_t at = 0;
  for (int i = 0; i < 17; ++i) {
    size_t body = r.data.find("\r\n\r\n", at) + 4;
    std::string want = i % 2 || i == 16 ? std::to_string(pid) : "Hello Zero-Downtime!\n";
    EXPECT_EQ(r.data.compare(body, want.size(), want), 0) << "response " << i;
    at = body;
  }
}

TEST_F(http_server_test, request_bodies_chunked_and_with_100_continue) {
  start_http({});
  std::string url = "http://127.0.0.1:" + std::to_string(port) + "/echo";
  std::string file = dir / "body";
  std::string payload(300000, 'x');
  for (size_t i = 0; i < payload.size(); i += 997)
    payload[i] = static_cast<char>('a' + i % 26);
  write_file(file, payload);
  EXPECT_EQ(curl("--data-binary @" + file + " -H 'Transfer-Encoding: chunked' " + url), payload);
  std::string verbose =
      run_command("curl -sS -v --max-time 10 --data-binary @" + file +
                  " -H 'Expect: 100-continue' " + url + " -o " + dir / "out" + " 2>&1");
  EXPECT_NE(verbose.find("HTTP/1.1 100 Continue"), std::string::npos) << verbose;
  EXPECT_EQ(read_file(dir / "out"), payload);
  auto r = raw_exchange(port,
                        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
                        "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(r.data.find("X-Body-Length: 9"), std::string::npos) << r.data;
  EXPECT_NE(r.data.find("Wikipedia"), std::string::npos);
  EXPECT_EQ(count(r.data, "HTTP/1.1 200"), 2) << "the request after a chunked body was lost";
}

// A handler's status outside 100-999 goes out as 500 (never as an interim 1xx), over
// HTTP/1.1 and HTTP/2 alike; the connection goes on.
TEST_F(http_server_test, status_outside_three_digits_is_500) {
  start_http({"--h2c", "1"});
  auto r = raw_exchange(port,
                        "GET /status?code=1000 HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /status?code=-7 HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /status?code=418 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(count(r.data, "HTTP/1.1 500 Internal Server Error\r\n"), 2) << r.data;
  EXPECT_EQ(count(r.data, "HTTP/1.1 418 "), 1) << r.data;
  const std::string h2 =
      curl("--http2-prior-knowledge -s -o /dev/null -w '%{http_code}' " +
           std::string("http://127.0.0.1:") + std::to_string(port) + "/status?code=1000");
  EXPECT_EQ(h2, "500");
}

TEST_F(http_server_test, streamed_response_is_chunked) {
  start_http({});
  auto r = raw_exchange(port, "GET /stream?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(r.data.find("Transfer-Encoding: chunked"), std::string::npos) << r.data;
  EXPECT_NE(r.data.find("7\r\npart-0\n\r\n7\r\npart-1\n\r\n7\r\npart-2\n\r\n0\r\n\r\n"),
            std::string::npos)
      << r.data;
  EXPECT_EQ(curl("'http://127.0.0.1:" + std::to_string(port) + "/stream?n=4'"),
            "part-0\npart-1\npart-2\npart-3\n");
  auto old = raw_exchange(port, "GET /stream?n=2 HTTP/1.0\r\n\r\n");
  EXPECT_EQ(old.data.find("Transfer-Encoding"), std::string::npos) << "no chunked for HTTP/1.0";
  EXPECT_NE(old.data.find("part-0\npart-1\n"), std::string::npos);
  EXPECT_TRUE(old.closed);
}

TEST_F(http_server_test, handler_exception_is_a_500_and_a_log_line) {
  start_http({});
  auto r = raw_exchange(port,
                        "GET /throw HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n");
  EXPECT_EQ(r.data.rfind("HTTP/1.1 500 Internal Server Error", 0), 0u) << r.data;
  EXPECT_EQ(count(r.data, "HTTP/1.1 200 OK"), 1) << "the connection goes on after a 500";
  EXPECT_EQ(count_lines(log, "threw: handler failed on purpose"), 1) << read_file(log);
}

TEST_F(http_server_test, http10_and_head) {
  start_http({});
  auto plain = raw_exchange(port, "GET / HTTP/1.0\r\n\r\n");
  EXPECT_TRUE(plain.closed);
  EXPECT_NE(plain.data.find("Connection: close"), std::string::npos);
  auto ka = raw_exchange(port, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 500);
  EXPECT_NE(ka.data.find("Connection: keep-alive"), std::string::npos) << ka.data;
  EXPECT_FALSE(ka.closed);
  auto head = raw_exchange(port, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(head.data.find("Content-Length: 21"), std::string::npos);
  EXPECT_EQ(head.data.find("Hello"), std::string::npos) << "HEAD got a body";
  EXPECT_NE(head.data.find("Date: "), std::string::npos);
}

TEST_F(http_server_test, slowloris_is_closed_by_read_header_timeout) {
  start_http({"--read-header-timeout-ms", "300"});
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(100, 'a');
  bool closed = false;
  int sent = 0;
  // One byte every 100 ms: well within any per-read timeout, never a complete head.
  for (; sent < static_cast<int>(head.size()) && !closed; ++sent) {
    if (::send(fd, &head[sent], 1, MSG_NOSIGNAL) != 1) closed = true;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) {
      char c;
      closed = ::recv(fd, &c, 1, 0) <= 0;
    }
  }
  ::close(fd);
  EXPECT_TRUE(closed) << "a slowloris client kept its connection for " << sent << " bytes";
  EXPECT_LT(sent, 60) << "closed, but long after read_header_timeout";
}

TEST_F(http_server_test, idle_keep_alive_connection_is_closed_by_idle_timeout) {
  start_http({"--idle-timeout-ms", "300"});
  auto r = raw_exchange(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 5000);
  EXPECT_EQ(count(r.data, "HTTP/1.1 200 OK"), 1);
  EXPECT_TRUE(r.closed) << "idle connection still open after 5 s";
}

TEST_F(http_server_test, a_client_that_does_not_read_is_closed_by_write_timeout) {
  start_http({"--write-timeout-ms", "300"});
  // A small receive buffer, so the server's output backs up at once.
  int fd = connect_loopback(port, 4096);
  ASSERT_GE(fd, 0);
  std::string req = "GET /big?kb=32768 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  // Read nothing until the server has given up on us (its log says nothing; the socket
  // does): then drain what was sent before the close.
  // Wait until the response has started (building 32 MiB takes a while under sanitizers),
  // then read nothing for much longer than write_timeout: the server must give up on us.
  pollfd started{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&started, 1, 30000), 1) << "no response started";
  std::this_thread::sleep_for(1500ms);
  auto [got, eof] = read_to_eof(fd, 2000);
  ::close(fd);
  EXPECT_TRUE(eof) << "still open after write_timeout";
  EXPECT_LT(got, 32u << 20) << "the whole response went out: the timeout never fired";
}

TEST_F(http_server_test, a_body_that_never_arrives_is_closed_by_read_timeout) {
  start_http({"--read-timeout-ms", "300"});
  auto r = raw_exchange(
      port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-this", 5000);
  EXPECT_TRUE(r.closed) << "a request body short by 91 bytes kept the connection";
  EXPECT_EQ(r.data, "") << "nothing is answered to an incomplete request";
}

TEST_F(http_server_test, connection_states_and_server_signal_hooks) {
  pid_t pid = start_http({"--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0", "--log-states", "1"});
  auto r = raw_exchange(port,
                        "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n");
  ASSERT_TRUE(r.closed);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, " closed") >= 1; }, 5s));
  auto states = lines_with(log, "conn ");
  ASSERT_GE(states.size(), 4u) << read_file(log);
  std::string id = states[0].substr(0, states[0].rfind(' '));
  std::vector<std::string> seen;
  for (const auto& s : states) {
    if (s.rfind(id + " ", 0) == 0) seen.push_back(s.substr(id.size() + 1));
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"created", "active", "active", "closed"}))
      << "pipelined: active stays active; then closed" << read_file(log);

  ::kill(pid, SIGUSR1);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "server hook post 1") == 1; }, 15s))
      << read_file(log);
  auto hooks = lines_with(log, "server hook");
  ASSERT_EQ(hooks.size(), 4u) << read_file(log);
  EXPECT_NE(hooks[0].find("pre 0"), std::string::npos);
  EXPECT_NE(hooks[1].find("pre 1"), std::string::npos);
  EXPECT_NE(hooks[2].find("post 0"), std::string::npos);
  EXPECT_NE(hooks[3].find("post 1"), std::string::npos);
}

TEST_F(http_server_test, pipelined_requests_behind_a_handed_off_handler_keep_their_order) {
  pid_t pid = start_http({"--threads", "1"});
  // The first handler blocks long enough for the loop to be handed to a new thread; the
  // requests pipelined behind it are served after it, in order, by the new owner.
  auto r = raw_exchange(port,
                        "GET /sleep?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /sleep?ms=100 HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        10000);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(count(r.data, "HTTP/1.1 200 OK"), 4) << r.data;
  size_t a = r.data.find("slept"), b = r.data.find("\r\n\r\n" + std::to_string(pid));
  size_t c = r.data.find("slept", a + 1), d = r.data.find("Hello Zero-Downtime!");
  EXPECT_TRUE(a < b && b < c && c < d) << r.data;
}

// A new connection is served before it is added to epoll (on_accepted()); when its first
// handler blocks and the loop moves to another thread, the new owner must still register it,
// or the next request on the connection would never be read.
TEST_F(http_server_test, a_connection_whose_first_handler_blocks_stays_usable) {
  start_http({"--threads", "1"});
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  auto exchange = [&](const std::string& target, const std::string& want) {
    std::string req = "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      return std::string("send failed");
    }
    std::string got;
    for (int i = 0; i < 100 && got.find(want) == std::string::npos; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 3000) != 1) return "no answer, got: " + got;
      char buf[4096];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return "closed, got: " + got;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return std::string("ok");
  };
  EXPECT_EQ(exchange("/sleep?ms=200", "slept"), "ok");  // long enough to be handed off
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(exchange("/", "Hello Zero-Downtime!"), "ok") << "request " << i;
  ::close(fd);
}

// TCP_DEFER_ACCEPT (on by default): a connection that has sent nothing is not taken yet;
// once its request arrives it is served at once. Off: taken at the end of the handshake.
TEST_F(http_server_test, defer_accept_takes_connections_with_their_first_bytes) {
  for (const char* defer : {"1", "0"}) {
    SCOPED_TRACE(std::string("--defer-accept ") + defer);
    pid_t pid = start_http({"--log-states", "1", "--defer-accept", defer});
    int fd = connect_loopback(port);
    ASSERT_GE(fd, 0);
    std::this_thread::sleep_for(400ms);
    EXPECT_EQ(count_lines(log, " created"), defer[0] == '1' ? 0 : 1) << read_file(log);
    std::string req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    auto [got, eof] = read_to_eof(fd, 3000);
    ::close(fd);
    EXPECT_TRUE(eof);
    EXPECT_GT(got, 0u);
    EXPECT_EQ(count_lines(log, " created"), 1) << read_file(log);
    ::kill(pid, SIGTERM);
    EXPECT_TRUE(procs.wait_gone(pid, 10s));
    ::unlink(log.c_str());
  }
}

TEST_F(http_server_test, a_half_closed_client_gets_its_whole_response) {
  start_http({});
  int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  std::string req = "GET /big?kb=8192 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  ::shutdown(fd, SHUT_WR);  // as `nc -N` does: the request is all we send
  std::size_t got = 0;
  for (int i = 0; i < 100000; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) break;
    char buf[65536];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (i == 0) std::this_thread::sleep_for(200ms);  // let the server's output back up
  }
  ::close(fd);
  EXPECT_GT(got, 8u << 20) << "the response was cut short by the client's half-close";
}

TEST_F(http_server_test, a_connection_idle_after_a_large_response_is_still_timed_out) {
  start_http({"--idle-timeout-ms", "300"});
  // A small receive buffer, so the server's output backs up at once.
  int fd = connect_loopback(port, 4096);
  ASSERT_GE(fd, 0);
  std::string req = "GET /big?kb=4096 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::this_thread::sleep_for(100ms);  // the server's send backs up: its output is queued
  const std::size_t whole = (4096u << 10) + 100;  // body plus a head of well under 100 bytes
  auto [got, eof] = read_to_eof(fd, 5000);
  ::close(fd);
  EXPECT_TRUE(eof) << "idle after its response, the connection was never timed out";
  EXPECT_GT(got, whole - 100) << "the response itself was cut";
}

TEST_F(http_server_test, a_blocking_handler_does_not_delay_other_connections) {
  start_http({"--threads", "1"});
  // in_flight's constructor gets a second request answered while the first one sleeps.
  in_flight slow(port, "/sleep?ms=3000");
  for (int i = 0; i < 20; ++i) {
    auto r = http_get(port, "/", 2000);
    ASSERT_TRUE(r.ok) << "request " << i << " waited behind a blocked handler: " << r.error;
  }
  auto r = slow.finish();
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.body, "slept");
}

// Without the connection hand-over (hand_over_idle off): keep-alive ends with the drain.
TEST_F(http_server_test, upgrade_drains_keep_alive_connections_cleanly) {
  pid_t old = start_http({"--drain-grace-ms", "300", "--hand-over", "0"});
  // An idle keep-alive connection and a request in flight, both on the old process.
  int idle = connect_loopback(port);
  ASSERT_GE(idle, 0);
  std::string req = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(idle, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  auto first = read_response(idle, 5000);
  ASSERT_TRUE(first.ok);
  EXPECT_EQ(first.connection, "");
  // Long enough that the drain surely begins while it runs, even on a slow sanitizer build.
  in_flight slow(port, "/sleep?ms=4000", /*keep_alive=*/true);

  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  auto r = slow.finish();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, old);
  EXPECT_EQ(r.connection, "close") << "keep-alive must end with the drain";
  // The idle connection is closed by the old process once it stayed idle through the grace.
  pollfd p{idle, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  char c;
  EXPECT_EQ(::recv(idle, &c, 1, 0), 0) << "closed with a FIN, not a reset";
  ::close(idle);
  EXPECT_TRUE(procs.wait_gone(old, 10s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, next);
}

// With the hand-over (the default): the idle keep-alive connection goes to the new process
// and its next request is answered there; the connection busy during the drain keeps
// keep-alive and follows once its response is out. Neither is closed.
TEST_F(http_server_test, upgrade_hands_idle_keep_alive_connections_to_the_new_process) {
  pid_t old = start_http({"--drain-grace-ms", "300"});
  int idle = connect_loopback(port);
  ASSERT_GE(idle, 0);
  std::string req = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(idle, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  auto first = read_response(idle, 5000);
  ASSERT_TRUE(first.ok);
  EXPECT_EQ(first.x_pid, old);
  int busy = connect_loopback(port);
  ASSERT_GE(busy, 0);
  std::string slow = "GET /sleep?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(busy, slow.data(), slow.size(), 0), static_cast<ssize_t>(slow.size()));
  std::this_thread::sleep_for(100ms);  // the old process has it
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  // The idle connection goes to the new process as soon as the old one's loop starts its
  // drain (a request sent before that is answered by the old process, keep-alive): it ends
  // up answered there, never closed.
  pid_t answered_by = old;
  for (int i = 0; i < 10 && answered_by != next; ++i) {
    ASSERT_EQ(::send(idle, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    auto r = read_response(idle, 5000);
    ASSERT_TRUE(r.ok) << "request " << i << " on the idle connection: " << r.error;
    EXPECT_EQ(r.connection, "");
    answered_by = r.x_pid;
    if (answered_by != next) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(answered_by, next) << "the idle connection never moved";
  // The busy one: its response from the old process, keep-alive; the next from the new one.
  auto r = read_response(busy, 10000);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.x_pid, old);
  EXPECT_EQ(r.connection, "") << "keep-alive ended although the connection could be handed over";
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(::send(busy, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  auto after = read_response(busy, 5000);
  ASSERT_TRUE(after.ok) << after.error;
  EXPECT_EQ(after.x_pid, next);
  ::close(idle);
  ::close(busy);
  EXPECT_TRUE(procs.wait_gone(old, 10s));
  EXPECT_EQ(count_lines(log, "connection hand-over"), 0) << read_file(log);
  EXPECT_GE(count_lines(log, "idle connection(s) to the new process"), 1) << read_file(log);
}

// A new process that takes no connections (hand_over_idle off there) names no listener
// before its 'R': the old one hands nothing over and drains the usual way (Connection:
// close, idle ones closed with a FIN after drain_grace), and nothing is lost in between.
TEST_F(http_server_test, new_process_that_takes_no_connections_gets_none) {
  const std::string fault = dir / "fault";
  pid_t old = start_http({"--drain-grace-ms", "300", "--fault-file", fault});
  write_file(fault, "no-hand-over");
  int idle = connect_loopback(port);
  ASSERT_GE(idle, 0);
  std::string req = "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(idle, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  ASSERT_TRUE(read_response(idle, 5000).ok);
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  pollfd p{idle, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "the idle connection was neither closed nor moved";
  char c;
  EXPECT_EQ(::recv(idle, &c, 1, 0), 0) << "closed with a FIN by the old process";
  ::close(idle);
  EXPECT_TRUE(procs.wait_gone(old, 10s));
  EXPECT_EQ(count_lines(log, "idle connection(s) to the new process"), 0) << read_file(log);
  EXPECT_EQ(count_lines(log, "connection hand-over"), 0) << read_file(log);
}

TEST_F(http_server_test, fifty_slow_pings_across_a_sighup_all_complete) {
  pid_t old = start({"--addr", "127.0.0.1:0"}, {}, HELLO_PATH);
  std::vector<std::unique_ptr<in_flight>> pings;
  for (int i = 0; i < 50; ++i) {
    pings.push_back(
        std::make_unique<in_flight>(port, "/ping?seq=" + std::to_string(i) + "&ms=3000"));
  }
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  for (int i = 0; i < 50; ++i) {
    auto r = pings[i]->finish(20000);
    ASSERT_TRUE(r.ok) << "ping " << i << ": " << r.error;
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "pong-" + std::to_string(i));
    EXPECT_EQ(r.x_pid, old);
  }
  EXPECT_TRUE(procs.wait_gone(old, 10s));
}

TEST_F(http_server_test, several_servers_from_one_binary_upgrade_together) {
  pid_t old = start_http({"--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0"});
  auto ports = logged_ports(log, old);
  ASSERT_EQ(ports.size(), 2u) << read_file(log);
  EXPECT_NE(ports[0], ports[1]) << "two servers on port 0 got one socket";
  pid_t next = upgrade(old);
  ASSERT_TRUE(procs.wait_gone(old, 10s));
  for (int p : ports)
    EXPECT_EQ(http_get(p, "/pid").x_pid, next) << "port " << p;
  EXPECT_EQ(logged_ports(log, next), ports);
}

// Probation rollback: a new process that crashes 1 s after it took over. The old process,
// standing by with its copies of the listeners, accepts again at once, rewrites the pid
// file, and a client polling all along sees at most the requests the crashing process held
// fail. A later upgrade (fixed binary) goes through as usual.
TEST_F(http_server_test, new_process_crashing_after_ready_is_rolled_back) {
  const std::string fault = dir / "fault";
  pid_t old = start_http({"--fault-file", fault, "--probation-ms", "5000"});
  write_file(fault, "crash-after-ready");
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0}, total{0};
  std::mutex mu;
  std::vector<std::pair<std::chrono::steady_clock::time_point, pid_t>> seen;
  std::thread client([&] {
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!stop && std::chrono::steady_clock::now() < deadline) {
      auto r = http_get(port, "/pid", 2000);
      ++total;
      std::lock_guard lock(mu);
      if (!r.ok) {
        ++failed;
      } else {
        seen.emplace_back(std::chrono::steady_clock::now(), r.x_pid);
      }
    }
  });
  ::kill(old, SIGHUP);
  pid_t next = -1;
  ASSERT_TRUE(wait_until(
      [&] {
        next = read_pid(pidfile);
        return next > 0 && next != old;
      },
      10s))
      << read_file(log);
  procs.track(next);
  std::filesystem::remove(fault);  // what the next upgrade runs is fixed
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "rolled back: serving again") == 1; }, 5s))
      << read_file(log);
  EXPECT_TRUE(procs.wait_gone(next, 5s));
  EXPECT_EQ(read_pid(pidfile), old) << "the pid file does not name the old process again";
  std::this_thread::sleep_for(500ms);
  stop = true;
  client.join();
  // The gap: the last answer from the crashing process to the first from the old one after.
  std::chrono::steady_clock::time_point last_new{}, back{};
  int by_new = 0;
  {
    std::lock_guard lock(mu);
    for (auto& [t, p] : seen) {
      if (p == next) {
        last_new = t;
        ++by_new;
      } else if (p == old && by_new > 0 && t > last_new && back == decltype(back){}) {
        back = t;
      }
    }
  }
  ASSERT_GT(by_new, 0) << "the new process never answered";
  ASSERT_NE(back, decltype(back){}) << "the old process never answered after the crash";
  auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(back - last_new).count();
  EXPECT_LE(failed.load(), 2) << "more failed than the crashing process can have held";
  EXPECT_LT(gap, 1000) << "the old process took " << gap << " ms to serve again";
  std::printf(
      "[ figures  ] rollback: %d requests, %d failed, %d answered by the crashing "
      "process; the old one answered again %lld ms after its last answer\n",
      total.load(), failed.load(), by_new, static_cast<long long>(gap));
  for (int i = 0; i < 20; ++i)
    ASSERT_EQ(http_get(port, "/pid").x_pid, old);
  pid_t third = upgrade(old);
  ASSERT_GT(third, 0);
  EXPECT_TRUE(wait_until([&] { return count_lines(log, "probation over") >= 1; }, 10s))
      << read_file(log);
  EXPECT_TRUE(procs.wait_gone(old, 10s));
  EXPECT_EQ(http_get(port, "/pid").x_pid, third);
}

// The same under 200 keep-alive clients that never retry (tools/loadgen, outcomes per 10 ms):
// the connections the crashing process held fail (it held them all after the hand-over),
// nothing else; the service answers again within a few buckets of the first failure.
TEST_F(http_server_test, rollback_under_200_clients_fails_only_the_crashed_connections) {
  const std::string fault = dir / "fault";
  pid_t old = start_http({"--fault-file", fault, "--probation-ms", "5000"});
  write_file(fault, "crash-after-ready");
  processes::spec s;
  s.argv = {LOADGEN_PATH,
            "--url",
            "http://127.0.0.1:" + std::to_string(port) + "/",
            "--connections",
            "200",
            "--duration",
            "6",
            "--timeline-ms",
            "10",
            "--json",
            dir / "load.json"};
  s.log = dir / "load.log";
  pid_t load = procs.start(s);
  std::this_thread::sleep_for(1500ms);
  ::kill(old, SIGHUP);
  pid_t next = -1;
  ASSERT_TRUE(wait_until(
      [&] {
        next = read_pid(pidfile);
        return next > 0 && next != old;
      },
      10s));
  procs.track(next);
  std::filesystem::remove(fault);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "rolled back: serving again") == 1; }, 5s))
      << read_file(log);
  ASSERT_TRUE(procs.wait_gone(load, 30s));
  // The timeline: [[ok, connect, reset_new, reset_reused, reset_mid, timeout, bad, malformed]].
  std::string json = read_file(dir / "load.json");
  std::size_t at = json.find("\"buckets\"");
  ASSERT_NE(at, std::string::npos) << json.substr(0, 500);
  std::vector<std::vector<long>> buckets;
  for (std::size_t i = json.find('[', at) + 1; i < json.size() && json[i] != ']';) {
    std::size_t open = json.find('[', i), close = json.find(']', open);
    if (open == std::string::npos || close == std::string::npos) break;
    std::vector<long> row;
    std::stringstream cells(json.substr(open + 1, close - open - 1));
    for (std::string cell; std::getline(cells, cell, ',');)
      row.push_back(std::stol(cell));
    buckets.push_back(row);
    i = close + 1;
    while (i < json.size() && (json[i] == ',' || json[i] == ' ' || json[i] == '\n'))
      ++i;
  }
  ASSERT_FALSE(buckets.empty());
  long failed = 0;
  std::size_t first_failure = buckets.size(), back = buckets.size();
  for (std::size_t b = 0; b < buckets.size(); ++b) {
    long f = 0;
    for (std::size_t k = 1; k < buckets[b].size(); ++k)
      f += buckets[b][k];
    failed += f;
    if (f > 0 && first_failure == buckets.size()) first_failure = b;
  }
  ASSERT_LT(first_failure, buckets.size()) << "nothing failed: did the new process crash?";
  for (std::size_t b = first_failure + 1; b < buckets.size(); ++b) {
    if (buckets[b][0] > 0) {
      back = b;
      break;
    }
  }
  ASSERT_LT(back, buckets.size()) << "no answer after the crash";
  const long gap_ms = static_cast<long>(back - first_failure) * 10;
  EXPECT_LE(failed, 200) << "more failed than the crashing process held";
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(http_get(port, "/pid").x_pid, old);
  std::printf(
      "[ figures  ] rollback under 200 clients: %ld failed (the crashed process's "
      "connections), answers again %ld ms (10 ms buckets) after the first failure\n",
      failed, gap_ms);
}

// A new process that is stopped on purpose during the old one's probation (SIGTERM: it
// drains and exits 0) is not a crash: it says 'D' when it begins to drain, the old process
// ends its probation and exits, and nothing is rolled back.
TEST_F(http_server_test, new_process_stopped_on_purpose_during_probation_is_not_rolled_back) {
  pid_t old = start_http({"--probation-ms", "20000"});
  pid_t next = upgrade(old);
  ASSERT_GT(next, 0);
  ASSERT_FALSE(procs.gone(old)) << "the old process did not stay for its probation";
  ::kill(next, SIGTERM);
  EXPECT_TRUE(procs.wait_gone(next, 10s));
  EXPECT_TRUE(procs.wait_gone(old, 10s)) << "the old process waited out all of its probation";
  EXPECT_EQ(count_lines(log, "is draining itself"), 1) << read_file(log);
  EXPECT_EQ(count_lines(log, "rolled back"), 0) << read_file(log);
}

// Every example starts, answers, and restarts with zero downtime.
TEST_F(http_server_test, examples_start_answer_and_restart) {
  struct example {
    const char* name;
    std::vector<std::string> args;
    const char* target;
    const char* body;
  };
  std::vector<example> examples = {
      {"router_app", {"127.0.0.1:0"}, "/items/7", "{\"id\":\"7\"}\n"},
      {"signal_hooks", {"127.0.0.1:0"}, "/", "WORLD!\n"},
      {"hammer_time", {"127.0.0.1:0"}, "/", "WORLD!\n"},
      {"pid_file", {"127.0.0.1:0", dir / "example.pid"}, "/", nullptr},
      {"two_ports", {"127.0.0.1:0", "127.0.0.1:0"}, "/", "WORLD from the first server\n"},
  };
  for (const auto& e : examples) {
    std::string elog = dir / (std::string(e.name) + ".log");
    processes::spec s;
    s.argv = {std::string(EXAMPLES_DIR) + "/" + e.name};
    s.argv.insert(s.argv.end(), e.args.begin(), e.args.end());
    s.log = elog;
    pid_t pid = procs.start(s);
    int p = 0;
    ASSERT_TRUE(wait_until([&] { return (p = logged_port(elog, pid)) > 0; }, 10s)) << e.name;
    auto r = http_get(p, e.target);
    ASSERT_TRUE(r.ok) << e.name << ": " << r.error;
    if (e.body) {
      EXPECT_EQ(r.body, e.body) << e.name;
    }
    ::kill(pid, SIGHUP);
    pid_t next = 0;
    if (!wait_until([&] { return (next = logged_process(elog, "is ready; handing over")) > 0; },
                    10s)) {
      // (Seen twice under TSan, cause unknown.) Is the upgrader's thread alive? SIGUSR1 only
      // logs; its line says the SIGHUP was lost rather than stuck behind something.
      std::string state = describe_process(pid);
      ::kill(pid, SIGUSR1);
      bool usr1 = wait_until([&] { return count_lines(elog, "Received SIGUSR1") > 0; }, 3s);
      FAIL() << e.name << ": no new process 10 s after SIGHUP; SIGUSR1 then "
             << (usr1 ? "logged" : "did not log either") << "\n"
             << read_file(elog) << state;
    }
    procs.track(next);
    EXPECT_TRUE(procs.wait_gone(pid, 10s)) << e.name;
    EXPECT_TRUE(http_get(p, e.target).ok) << e.name << " after the restart";
    ::kill(next, SIGTERM);
    EXPECT_TRUE(procs.wait_gone(next, 10s)) << e.name;
  }
  EXPECT_EQ(count_lines(dir / "signal_hooks.log", "pre SIGHUP"), 1);
}

// Restarts under load from a client that never retries: keep-alive and Connection: close.
class restart_under_load : public http_server_test,
                           public ::testing::WithParamInterface<const char*> {};

TEST_P(restart_under_load, loses_no_request) {
  pid_t pid = start({"--addr", "127.0.0.1:0"}, {}, HELLO_PATH);
  std::string json = dir / "load.json";
  processes::spec s;
  s.argv = {LOADGEN_PATH,
            "--url",
            "http://127.0.0.1:" + std::to_string(port) + "/",
            "--connections",
            "200",
            "--duration",
            "6",
            "--mode",
            GetParam(),
            "--pids",
            "--json",
            json};
  s.log = dir / "loadgen.log";
  pid_t load = procs.start(s);
  std::set<pid_t> pids = {pid};
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(1s);  // load keeps running between restarts
    pid = upgrade(pid);
    ASSERT_GT(pid, 0);
    pids.insert(pid);
  }
  int status = 0;
  ASSERT_TRUE(procs.wait_gone(load, 60s, &status));
  std::string report = read_file(dir / "loadgen.log");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << report << read_file(log);
  EXPECT_NE(report.find(" failed 0 "), std::string::npos) << report;
  for (pid_t p : pids) {
    EXPECT_NE(report.find("pid " + std::to_string(p) + " "), std::string::npos)
        << "no response from " << p << ":\n"
        << report;
  }
}

INSTANTIATE_TEST_SUITE_P(modes, restart_under_load, ::testing::Values("keepalive", "close"));

// The connection hand-over under load: 20 restarts while 1,000 keep-alive clients that never
// retry run, half of them back to back and half pausing a random 0-2 s between requests on
// the same connection (so that connections sit idle across every drain). Nothing fails, not
// even the "reset on a reused connection" class; idle connections really move (the old
// processes log how many they passed on).
TEST_F(http_server_test, twenty_restarts_with_idle_keep_alive_clients_lose_nothing) {
  ENDLESS_PLAIN_BUILD_ONLY();
  pid_t pid = start_http({"--probation-ms", "1000"});
  auto load = [&](const std::string& name, const std::string& pause) {
    processes::spec s;
    s.argv = {LOADGEN_PATH,
              "--url",
              "http://127.0.0.1:" + std::to_string(port) + "/",
              "--connections",
              "500",
              "--duration",
              "18",
              "--json",
              dir / (name + ".json"),
              "--pause-max-ms",
              pause};
    s.log = dir / (name + ".log");
    return procs.start(s);
  };
  pid_t busy = load("busy", "0");
  pid_t pausing = load("pausing", "2000");
  std::this_thread::sleep_for(2500ms);  // every pausing client has sent at least once
  for (int i = 0; i < 20; ++i) {
    pid = upgrade(pid);
    ASSERT_GT(pid, 0) << "restart " << i;
    std::this_thread::sleep_for(300ms);
  }
  for (auto [p, name] : {std::pair{busy, "busy"}, std::pair{pausing, "pausing"}}) {
    int status = 0;
    ASSERT_TRUE(procs.wait_gone(p, 60s, &status));
    std::string report = read_file(dir / (std::string(name) + ".log"));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << name << ":\n" << report;
    EXPECT_NE(report.find(" failed 0 "), std::string::npos) << name << ":\n" << report;
  }
  int passed = 0;
  for (const auto& line : lines_with(log, "idle connection(s) to the new process"))
    passed += std::atoi(line.c_str() + line.find("passed ") + 7);
  EXPECT_GT(passed, 500) << read_file(log);
  EXPECT_EQ(count_lines(log, "connection hand-over:"), 0) << read_file(log);
  std::printf("[ figures  ] hand-over: 20 restarts, %d idle connections passed on\n", passed);
}

// With nothing in flight, the old process hands its idle connections over at once and exits
// right after its probation (here 0): within a second of the new one being ready.
TEST_F(http_server_test, old_process_with_only_idle_connections_exits_within_a_second) {
  pid_t old = start_http({"--probation-ms", "0"});
  std::vector<int> idle;
  std::string req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 100; ++i) {
    int fd = connect_loopback(port);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    ASSERT_TRUE(read_response(fd, 5000).ok);
    idle.push_back(fd);
  }
  ::kill(old, SIGHUP);
  ASSERT_TRUE(wait_until([&] { return count_lines(log, "is ready; handing over") == 1; }, 10s));
  auto ready = std::chrono::steady_clock::now();
  ASSERT_TRUE(procs.wait_gone(old, 5s));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - ready)
                  .count();
  pid_t next = read_pid(pidfile);
  procs.track(next);
  for (int fd : idle) {
    ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    auto r = read_response(fd, 5000);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.x_pid, next);
    ::close(fd);
  }
  std::printf("[ figures  ] old process with 100 idle connections gone %lld ms after ready\n",
              static_cast<long long>(took));
}

}  // namespace
}  // namespace endless::test
