// libFuzzer target for the HTTP/2 path: our nghttp2 callbacks, the streams and the
// responses built on them (http2_connection.cpp), driven in-process on a real loop and a
// real connection, the way server.cpp drives them, but on this thread and without threads
// of its own. The connection's fd is one end of a socketpair; the harness is the client at
// the other end: it writes the client preface and then the fuzzed bytes in pieces, calls
// on_io() after each piece, runs the posted tasks, and reads what the server wrote. At the
// end: timers expire, the client closes or the server does, the graveyard is swept.
//
// Handlers answer by path: "/stream/<n>/<size>" (response::write, and the client sends its
// next bytes meanwhile), "/stream-trailers/<n>/<size>", "/trailers", "/big/<KiB>",
// "/status/<code>", "/echo", "/throw", "/throw-after-write", "/write-until-fail", "/blocked"
// (the loop is handed to a new owner meanwhile), anything else a short text.
//
// Checks beyond ASan/UBSan/LSan: the connection is reported created first and closed once,
// last; no posted task is left and the swept graveyard is empty; the server's output is a
// sequence of well-formed frames, starting with SETTINGS, never on a stream the client could
// not have opened; a handler never sees a body over max_body_bytes.
//
// Input: [flags][split][frames...] (the harness sends the preface itself).
//   flags bit 0: h2c prior knowledge (the preface goes through the HTTP/1.1 reader);
//                otherwise h2_start() first, as after ALPN h2
//         bit 1: drain (two GOAWAYs) after the piece chosen by split's high nibble
//         bit 2: small limits: max_body_bytes 1000, max_header_bytes 300
//         bit 3: small settings: initial window 1000, 2 concurrent streams
//         bit 4: expire every timer at the end
//         bit 5: the client closes (EOF) at the end; otherwise close_connection()
//         bit 6: a small socket buffer, and the client reads only every 4th piece
//         bit 7: handlers stream what they would have sent at once
//   split bits 0-2: the piece size (1, 9, 10, 17, 64, 512, 4096, 16384); bit 3: sizes vary
#include <fcntl.h>
#include <netinet/in.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "server_impl.hpp"

using namespace endless::http;

namespace {

[[noreturn]] void failed(const char* what, int line) {
  // Through the sanitizers' report fd: fuzz.sh runs this target with stderr closed (the
  // server logs each exception a handler throws).
  char line_text[512];
  std::snprintf(line_text, sizeof line_text, "%s:%d: check failed: %s", __FILE__, line, what);
  __sanitizer_report_error_summary(line_text);
  std::abort();
}
// A failed invariant names itself before the abort that libFuzzer reports.
#define CHECK(cond) ((cond) ? void() : failed(#cond, __LINE__))

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr std::size_t kMaxReceived = 4 << 20;

// The client end of the socketpair and what goes through it.
struct client {
  int fd = -1;
  std::string input;  // preface + fuzzed frames
  std::size_t pos = 0;
  std::vector<std::size_t> sizes;
  std::size_t piece = 0;
  bool lazy_reader = false;
  bool stream_everything = false;
  std::size_t max_body = 0;
  std::string received;
  bool truncated = false;
  std::vector<conn_state> states;
  loop* l = nullptr;

  // Sends the next piece of input (as much of it as the socket takes).
  void send_piece() {
    if (pos >= input.size()) return;
    std::size_t n = std::min(sizes[piece++ % sizes.size()], input.size() - pos);
    ssize_t w = ::send(fd, input.data() + pos, n, MSG_NOSIGNAL);
    if (w > 0) pos += static_cast<std::size_t>(w);
  }
  void read_all() {
    char buf[16384];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return;
      if (received.size() < kMaxReceived) {
        received.append(buf, static_cast<std::size_t>(n));
      } else {
        truncated = true;
      }
    }
  }
  // What the client does while a handler streams: sends its next piece and reads.
  void meanwhile() {
    send_piece();
    if (!lazy_reader || piece % 4 == 0) read_all();
  }
};

client* g = nullptr;

std::string_view segment(std::string_view path, int i) {
  if (!path.empty() && path[0] == '/') path.remove_prefix(1);
  for (; i > 0; --i) {
    std::size_t slash = path.find('/');
    if (slash == std::string_view::npos) return {};
    path.remove_prefix(slash + 1);
  }
  return path.substr(0, path.find('/'));
}

unsigned number(std::string_view s, unsigned dflt, unsigned max) {
  unsigned v = dflt;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return std::min(v, max);
}

bool write_piece(response& res, std::string_view data) {
  g->meanwhile();
  return res.write(data);
}

void answer(response& res, std::string_view body) {
  if (g->stream_everything) {
    write_piece(res, body.substr(0, body.size() / 2));
    write_piece(res, body.substr(body.size() / 2));
  } else {
    res.text(body);
  }
}

void handle(const request& req, response& res) {
  CHECK(req.version_major() == 2);
  CHECK(req.body().size() <= g->max_body);
  std::string_view what = segment(req.path(), 0);
  res.header("X-Request", req.method());
  res.header("Connection", "keep-alive");  // not allowed in HTTP/2: dropped
  if (what == "stream" || what == "stream-trailers") {
    unsigned n = number(segment(req.path(), 1), 3, 8);
    unsigned size = number(segment(req.path(), 2), 100, 20000);
    std::string piece(size, 'x');
    if (what == "stream-trailers") res.trailer("X-Checksum", "42").trailer("Upgrade", "no");
    for (unsigned i = 0; i < n; ++i) {
      if (!write_piece(res, piece)) return;
    }
  } else if (what == "trailers") {
    res.trailer("X-Checksum", std::to_string(req.body().size()));
    res.trailer("Transfer-Encoding", "chunked");  // dropped
    answer(res, "with trailers\n");
  } else if (what == "big") {
    answer(res, std::string(number(segment(req.path(), 1), 100, 300) << 10, 'b'));
  } else if (what == "status") {
    res.status(static_cast<int>(number(segment(req.path(), 1), 204, 100000)));
    answer(res, "a body the status may forbid\n");
  } else if (what == "echo") {
    for (const auto& h : req.headers())
      res.header(std::string("x-echo-").append(h.name), h.value);
    if (auto q = req.query_value("name")) res.header("X-Name", *q);
    answer(res, req.body());
  } else if (what == "throw") {
    throw std::runtime_error("fuzz");
  } else if (what == "throw-after-write") {
    write_piece(res, "partial");
    throw std::runtime_error("fuzz");
  } else if (what == "blocked") {
    // As if this handler blocked and the monitor gave the loop to a new thread: dispatch
    // then finds it lost the loop, leaves the connection busy and posts a resume, which the
    // harness (the new owner) runs.
    std::uint64_t v = g->l->ownership.load();
    g->l->ownership.store(((v >> 32) + 1) << 32);
    answer(res, "late\n");
  } else if (what == "write-until-fail") {
    std::string piece(16 << 10, 'w');
    for (int i = 0; i < 32 && write_piece(res, piece); ++i) {
    }
  } else {
    answer(res, "hello\n");
  }
}

// Runs what was posted to the loop, as run_loop() does between batches.
void run_tasks(loop& l, int max) {
  for (int i = 0; i < max; ++i) {
    std::function<void()> task;
    {
      std::lock_guard lock(l.tasks_mu);
      if (l.tasks.empty()) return;
      task = std::move(l.tasks.front());
      l.tasks.pop_front();
    }
    task();
  }
}

bool stream_initiated_by_client(std::uint32_t id) {
  return id != 0 && id % 2 == 1;
}

// The server's bytes are frames (RFC 9113 §4.1): SETTINGS first, then frames of the types
// a server sends, each on the stream its type requires.
void check_frames(std::string_view out) {
  // HTTP2_FUZZ_TRACE=1 build/fuzz/http2_fuzz <input>: what the server sent, frame by frame.
  static const bool trace = std::getenv("HTTP2_FUZZ_TRACE") != nullptr;
  bool first = true;
  while (out.size() >= 9) {
    auto b = [&](std::size_t i) {
      return static_cast<std::uint32_t>(static_cast<std::uint8_t>(out[i]));
    };
    std::uint32_t len = b(0) << 16 | b(1) << 8 | b(2);
    std::uint32_t type = b(3);
    std::uint32_t id = (b(5) << 24 | b(6) << 16 | b(7) << 8 | b(8)) & 0x7fffffffu;
    if (trace) {
      std::fprintf(stderr, "frame type %u flags 0x%02x stream %u length %u%s\n", type, b(4), id,
                   len, out.size() < 9 + len ? " (truncated)" : "");
    }
    if (first && trace && type != 0x4) {
      std::fprintf(stderr, "not HTTP/2: %.*s\n",
                   static_cast<int>(std::min<std::size_t>(out.size(), 300)), out.data());
    }
    if (first) CHECK(type == 0x4 && id == 0);
    first = false;
    switch (type) {
      case 0x0:  // DATA
      case 0x1:  // HEADERS
      case 0x9:  // CONTINUATION (a response head over the client's frame size)
        CHECK(stream_initiated_by_client(id));
        break;
      case 0x3:  // RST_STREAM
        CHECK(id != 0 && len == 4);
        break;
      case 0x4:  // SETTINGS
        CHECK(id == 0 && len % 6 == 0);
        break;
      case 0x6:  // PING
        CHECK(id == 0 && len == 8);
        break;
      case 0x7:  // GOAWAY
        CHECK(id == 0 && len >= 8);
        break;
      case 0x8:  // WINDOW_UPDATE
        CHECK(len == 4);
        break;
      default:  // PRIORITY, PUSH_PROMISE or an unknown type: a server of ours sends none
        CHECK(false);
    }
    if (out.size() < 9 + len) break;
    out.remove_prefix(9 + len);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const unsigned flags = data[0], split = data[1];
  static constexpr std::size_t kSizes[] = {1, 9, 10, 17, 64, 512, 4096, 16384};
  static constexpr std::size_t kVaried[] = {1, 9, 10, 17, 64, 512};

  client cl;
  g = &cl;
  cl.input.assign(kPreface);
  cl.input.append(reinterpret_cast<const char*>(data) + 2, size - 2);
  if (split & 8) {
    cl.sizes.assign(std::begin(kVaried), std::end(kVaried));
  } else {
    cl.sizes.push_back(kSizes[split & 7]);
  }
  cl.lazy_reader = flags & 64;
  cl.stream_everything = flags & 128;

  server_state st;
  st.fn = handle;
  st.opts.http2.cleartext = true;
  // A streaming handler waits for the client's window up to write_timeout: keep it short,
  // the client here only ever sends what the input holds.
  st.opts.write_timeout = std::chrono::milliseconds(2);
  if (flags & 4) {
    st.opts.max_body_bytes = 1000;
    st.opts.max_header_bytes = 300;
  }
  if (flags & 8) {
    st.opts.http2.initial_window_size = 1000;
    st.opts.http2.max_concurrent_streams = 2;
  }
  cl.max_body = st.opts.max_body_bytes;
  st.conn_cb = [&cl](std::uint64_t, conn_state s) { cl.states.push_back(s); };

  // One loop, as server::impl::start() makes them (no listener, no thread).
  auto lp = std::make_unique<loop>();
  loop& l = *lp;
  cl.l = &l;
  l.srv = &st;
  l.epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
  l.wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  CHECK(l.epoll && l.wake);
  auto set = [&](timer_kind k, std::chrono::milliseconds d) {
    l.timers[static_cast<int>(k)].duration_ms = d.count();
  };
  set(timer_kind::goaway, st.opts.http2.goaway_wait);
  set(timer_kind::header, st.opts.read_header_timeout);
  set(timer_kind::body, st.opts.read_timeout);
  set(timer_kind::write, st.opts.write_timeout);
  set(timer_kind::idle, st.opts.idle_timeout);
  set(timer_kind::linger, std::chrono::milliseconds(2000));
  l.now_ms = coarse_now_ms();

  int sv[2];
  CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  cl.fd = sv[1];
  if (cl.lazy_reader) {
    int small = 4096;
    ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  }
  sockaddr_storage peer{};
  auto& in4 = reinterpret_cast<sockaddr_in&>(peer);
  in4.sin_family = AF_INET;
  in4.sin_port = htons(40000);
  in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  on_accepted(l, sv[0], peer, sizeof(sockaddr_in));
  connection* c = l.conns;
  CHECK(c != nullptr && c->fd == sv[0]);
  auto alive = [&] { return c->stage != connection::phase::closed; };

  if (!(flags & 1)) h2_start(l, *c);
  const std::size_t drain_at = split >> 4;
  for (std::size_t rounds = 0; alive() && cl.pos < cl.input.size() && rounds < 100000; ++rounds) {
    std::size_t before = cl.pos;
    cl.send_piece();
    (void)on_io(l, *c, EPOLLIN | EPOLLOUT);  // false: a "blocked" handler lost the loop
    run_tasks(l, 1000);                      // (which this thread then takes over)
    if (!cl.lazy_reader || cl.piece % 4 == 0 || cl.pos == before) cl.read_all();
    if ((flags & 2) && cl.piece > drain_at && !l.draining) {
      st.draining.store(true);
      begin_loop_drain(l);
      run_tasks(l, 1000);
    }
  }
  // What is left to read and to write (data sent by a handler raised no "event" yet).
  if (alive()) {
    cl.read_all();
    (void)on_io(l, *c, EPOLLIN | EPOLLOUT);
    run_tasks(l, 1000);
    cl.read_all();
  }
  if ((flags & 16) && alive()) {
    l.now_ms += 24 * 3600 * 1000;
    expire_timers(l);
    run_tasks(l, 1000);
    cl.read_all();
  }
  if ((flags & 32) && alive()) {
    ::shutdown(cl.fd, SHUT_WR);
    (void)on_io(l, *c, EPOLLIN | EPOLLRDHUP);
    run_tasks(l, 1000);
    cl.read_all();
  }
  if (alive()) close_connection(l, *c);  // as hammer and stop do
  run_tasks(l, 100000);
  {
    std::lock_guard lock(l.tasks_mu);
    CHECK(l.tasks.empty());
  }
  l.sweep();
  CHECK(l.graveyard.empty() && l.conn_count == 0 && l.conns == nullptr);
  cl.read_all();
  ::close(cl.fd);

  CHECK(!cl.states.empty() && cl.states.front() == conn_state::created);
  CHECK(cl.states.back() == conn_state::closed);
  for (std::size_t i = 0; i + 1 < cl.states.size(); ++i)
    CHECK(cl.states[i] != conn_state::closed && (i == 0) == (cl.states[i] == conn_state::created));
  if (!cl.truncated) check_frames(cl.received);
  g = nullptr;
  return 0;
}
