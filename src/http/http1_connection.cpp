// One HTTP/1.1 connection on a loop: read, parse (http1_parser), dispatch, write, close;
// and what every connection shares: the transport (plain or TLS, with its handshake),
// accept, timers, close.
//
// Hot path, keep-alive: one recv into this thread's scratch buffer, parse in place, run the
// handler, append the response to this thread's output buffer, one send. A connection keeps
// heap buffers only while it has a partial request or unsent output, so an idle connection
// costs its small struct and nothing else.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "../io/nocancel.hpp"
#include "detail.hpp"
#include "endless/core/address.hpp"
#include "server_impl.hpp"

namespace endless::http {
namespace {

constexpr std::size_t kReadSize = 64 << 10;
constexpr std::size_t kMaxQueuedOutput = 1 << 20;

struct scratch {
  char in[kReadSize];
  std::string out;
  h1::request_head head;
  request req;
  response res;
  std::time_t date_second = 0;
  char date[64] = {};
  std::size_t date_len = 0;
};

scratch& tls() {
  thread_local scratch s;
  return s;
}

std::string_view http_date(scratch& s) {
  std::time_t now = std::time(nullptr);
  if (now != s.date_second) {
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    s.date_len = std::strftime(s.date, sizeof s.date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    s.date_second = now;
  }
  return {s.date, s.date_len};
}

timer_list& list_of(loop& l, timer_kind k) {
  return l.timers[static_cast<int>(k)];
}

}  // namespace

std::string_view current_http_date() {
  return http_date(tls());
}

// ------------------------------------------------------------------ timers

void timer_unlink(loop& l, connection& c) {
  if (c.timer == timer_kind::none) return;
  timer_list& t = list_of(l, c.timer);
  (c.prev ? c.prev->next : t.head) = c.next;
  (c.next ? c.next->prev : t.tail) = c.prev;
  c.prev = c.next = nullptr;
  c.timer = timer_kind::none;
}

void timer_arm(loop& l, connection& c, timer_kind k) {
  timer_list& t = list_of(l, k);
  if (c.timer == k && c.deadline_ms == l.now_ms + t.duration_ms) return;
  timer_unlink(l, c);
  if (t.duration_ms <= 0) return;
  c.timer = k;
  c.deadline_ms = l.now_ms + t.duration_ms;
  c.prev = t.tail;
  (t.tail ? t.tail->next : t.head) = &c;
  t.tail = &c;
}

// Posts fn(c) to the loop. The connection is not freed until the task ran; if it was
// closed meanwhile the task does nothing.
void post_for(loop& l, connection& c, void (*fn)(loop&, connection&)) {
  c.refs.fetch_add(1, std::memory_order_relaxed);
  connection* cp = &c;
  l.post([&l, cp, fn] {
    cp->refs.fetch_sub(1, std::memory_order_relaxed);
    if (cp->stage != connection::phase::closed) fn(l, *cp);
  });
}

namespace {

// ------------------------------------------------------------------ output

// Ends a connection after its last response; false if that closed (and freed) it.
bool start_linger(loop& l, connection& c);
// Draining: passes an idle connection to the new process. True if it went (and is closed
// here), or if the channel is full for now and a retry is armed (the connection stays ours,
// served as usual if the client sends meanwhile); false if it can't go (close it as usual).
bool try_hand_over(loop& l, connection& c);

// Sends c.out; false if the connection was closed.
bool flush_pending(loop& l, connection& c) {
  while (!c.out.empty()) {
    ssize_t n = conn_send(c, c.out.data(), c.out.size());
    if (n > 0) {
      c.out.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c.read_blocked = true;
      timer_arm(l, c, timer_kind::write);
      return true;
    }
    close_connection(l, c);
    return false;
  }
  std::string().swap(c.out);  // an idle connection keeps no buffer
  c.read_blocked = false;
  if (c.closing && c.stage != connection::phase::lingering) return start_linger(l, c);
  return true;
}

// Sends this thread's output for `c`; false if the connection was closed.
bool flush_scratch(loop& l, connection& c, std::string& out) {
  if (out.empty()) {
    if (c.closing && c.out.empty() && c.stage != connection::phase::lingering) {
      return start_linger(l, c);
    }
    return true;
  }
  if (c.out.empty()) {
    ssize_t n;
    do {
      n = conn_send(c, out.data(), out.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      out.clear();
      close_connection(l, c);
      return false;
    }
    std::size_t sent = n > 0 ? static_cast<std::size_t>(n) : 0;
    if (sent < out.size()) c.out.assign(out, sent, std::string::npos);
  } else {
    c.out.append(out);
  }
  out.clear();
  return flush_pending(l, c);
}

// Closing after a response: half-close and read until the client closes too, so that a
// request it already sent does not turn our close into a reset that destroys the response
// (RFC 9112 §9.6).
bool start_linger(loop& l, connection& c) {
  if (c.client_close && !c.discarded && c.in.empty()) {
    // The client asked for the close and sent nothing after its request (RFC 9112 §9.6
    // forbids it to): no unread data, so a plain close sends a FIN, not a reset.
    close_connection(l, c);
    return false;
  }
  c.stage = connection::phase::lingering;
  if (c.tls && !c.tls->failed) io::tls_close_notify(c.tls->ssl);
  ::shutdown(c.fd, SHUT_WR);
  timer_arm(l, c, timer_kind::linger);
  return true;
}

void linger_read(loop& l, connection& c) {
  char sink[4096];
  for (int i = 0; i < 64; ++i) {
    ssize_t n = io::recv(c.fd, sink, sizeof sink, 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;
  }
  close_connection(l, c);
}

void append_number(std::string& out, std::size_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void error_response(loop& l, connection& c, std::string& out, const h1::error& err) {
  std::string body =
      std::to_string(err.status) + " " + reason_phrase(err.status) + ": " + err.reason + "\n";
  out.append("HTTP/1.1 ").append(std::to_string(err.status)).append(" ");
  out.append(reason_phrase(err.status)).append("\r\nDate: ").append(http_date(tls()));
  out.append("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  append_number(out, body.size());
  out.append("\r\nConnection: close\r\n\r\n").append(body);
  c.closing = true;
  c.discarded = true;  // what follows a bad request is unread: linger
  // Answered without a handler: counted by status, method unknown ("other").
  l.srv->metrics.count_request({}, err.status, 0);
}

// The connection, as the sink a streaming handler writes to: blocking sends, bounded by
// write_timeout, after whatever earlier responses are still queued. HTTP/1.1 frames the
// body in chunks; HTTP/1.0 has no chunks and ends the body with the close.
class conn_sink final : public detail::body_sink {
 public:
  conn_sink(loop& l, connection& c, std::string& out) : l_(l), c_(c), out_(out) {}
  bool write_body(response& res, std::string_view data) override {
    std::string frame;
    bool head_only = detail::access::head_only(res);
    if (!detail::access::streaming_started(res)) {
      bool chunked = !detail::access::http10(res);
      detail::access::set_streaming(res, chunked);
      if (!chunked) detail::access::set_close(res);
      detail::write_head(frame, res, chunked ? -1 : -2);
    }
    if (!head_only && !data.empty()) {
      if (detail::access::chunked(res)) {
        char hex[20];
        auto [end, ec] = std::to_chars(hex, hex + sizeof hex, data.size(), 16);
        frame.append(hex, end).append("\r\n").append(data).append("\r\n");
      } else {
        frame.append(data);
      }
    }
    if (frame.empty()) return true;
    return send_now(frame);
  }

 private:
  bool send_now(std::string_view bytes) {
    if (!c_.out.empty() || !out_.empty()) {
      std::string queued = std::move(c_.out);
      queued.append(out_);
      out_.clear();
      c_.out.clear();
      if (!send_all(queued)) return false;
    }
    return send_all(bytes);
  }
  bool send_all(std::string_view bytes) {
    return send_blocking(c_, bytes, l_.srv->opts.write_timeout);
  }
  loop& l_;
  connection& c_;
  std::string& out_;
};

// ------------------------------------------------------------------ requests

// Splits the target into path and query; an absolute-form target keeps only its path.
void split_target(std::string_view target, std::string_view& path, std::string_view& query) {
  std::string_view t = target;
  if (t[0] != '/' && t != "*") {
    std::size_t scheme = t.find("://");
    std::size_t slash = t.find('/', scheme + 3);
    t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
  }
  std::size_t q = t.find('?');
  path = t.substr(0, q);
  query = q == std::string_view::npos ? std::string_view() : t.substr(q + 1);
}

bool bodyless_status(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

// Runs the handler for one request and appends the response to `out`. Returns false when
// this thread lost the loop while the handler ran.
bool dispatch(loop& l, connection& c, const h1::request_head& head, std::string_view body,
              std::string& out) {
  scratch& s = tls();
  std::string_view path, query;
  split_target(head.target, path, query);
  detail::access::set(s.req, head.method, head.target, path, query, head.headers.data(),
                      head.headers.size(), head.version_minor, body, c.remote);
  if (c.tls) {
    detail::access::set_connection(s.req, 1, true, c.tls->server_name, c.tls->client_subject);
  } else {
    detail::access::set_connection(s.req, 1, false, {}, {});
  }
  c.fresh = false;
  // Draining: the response ends keep-alive unless the connection can go to the new process
  // once it is idle again.
  const bool ends_here = l.srv->draining.load(std::memory_order_relaxed) && !can_hand_over(l, c);
  bool keep = head.keep_alive && !ends_here;
  if (!head.keep_alive) c.client_close = true;
  bool head_only = head.method == "HEAD";
  conn_sink sink(l, c, out);
  detail::access::reset(s.res, head_only, !keep, http_date(s), &sink);
  detail::access::set_http10(s.res, head.version_minor == 0);
  c.busy = true;
  timer_unlink(l, c);
  bool owner = run_handler(l, s.req, s.res);
  response& res = s.res;
  if (!detail::access::ok(res) && !res.streaming()) {
    // A handler that threw: 500, and the connection goes on.
    detail::access::reset(res, head_only, !keep, http_date(s), &sink);
    res.status(500).text("500 internal server error\n");
  }
  // The drain may have begun while the handler ran: this response ends keep-alive too.
  if (l.srv->draining.load(std::memory_order_relaxed) && !can_hand_over(l, c)) {
    detail::access::set_close(res);
  }
  const std::string& trailers = detail::access::trailers(res);
  if (res.streaming()) {
    if (detail::access::chunked(res) && detail::access::ok(res)) {
      if (!head_only) out.append("0\r\n").append(trailers).append("\r\n");
    } else {
      c.closing = true;  // close-delimited (HTTP/1.0) or broken mid-stream
    }
  } else {
    const std::string& b = detail::access::body(res);
    bool no_body = bodyless_status(res.status());
    if (!trailers.empty() && !no_body && !head_only && head.version_minor >= 1) {
      // Trailers need the chunked coding (RFC 9112 §7.1.2).
      detail::write_head(out, res, -1);
      if (!b.empty()) {
        char hex[20];
        auto [end, ec] = std::to_chars(hex, hex + sizeof hex, b.size(), 16);
        out.append(hex, end).append("\r\n").append(b).append("\r\n");
      }
      out.append("0\r\n").append(trailers).append("\r\n");
    } else {
      detail::write_head(out, res, no_body ? -2 : static_cast<long long>(b.size()));
      if (!head_only && !no_body) out.append(b);
    }
  }
  if (detail::access::close(res)) c.closing = true;
  if (owner) c.busy = false;
  return owner;
}

void reset_request_state(connection& c) {
  c.stage = connection::phase::head;
  c.scan = 0;
  c.head_length = 0;
  c.body_consumed = 0;
  c.chunked.reset();
  if (!c.body.empty()) std::string().swap(c.body);
  c.sent_continue = false;
  c.active = false;
}

// The head is in, the body is not (all) here yet: answer Expect: 100-continue once
// (RFC 9110 §10.1.1; chunked implies HTTP/1.1) and start the body timer.
void await_body(loop& l, connection& c, const h1::request_head& head, std::string& out) {
  if (head.expect_continue && !c.sent_continue && head.version_minor >= 1) {
    out.append("HTTP/1.1 100 Continue\r\n\r\n");
    c.sent_continue = true;
  }
  if (c.stage != connection::phase::body) {
    c.stage = connection::phase::body;
    timer_arm(l, c, timer_kind::body);
  }
}

// Parses and serves every complete request in `data`; `consumed` says how much was used.
// Returns false when this thread lost the loop (the rest is the caller's to keep).
bool process(loop& l, connection& c, std::string_view data, std::size_t& consumed,
             std::string& out) {
  const server_options& o = l.srv->opts;
  h1::limits lim;
  lim.max_header_bytes = o.max_header_bytes;
  std::size_t pos = 0;
  scratch& s = tls();
  // Bounded: a burst of pipelined requests with large responses must not build unbounded
  // output; the rest waits in c.in until the output has drained.
  while (pos < data.size() && !c.closing && out.size() + c.out.size() < kMaxQueuedOutput) {
    std::string_view rest = data.substr(pos);
    if (!c.active) {
      // RFC 9112 §2.2: ignore empty lines before a request-line.
      std::size_t skipped = 0;
      while (rest.size() >= 2 && rest[0] == '\r' && rest[1] == '\n' && skipped < 8) {
        rest.remove_prefix(2);
        pos += 2;
        ++skipped;
      }
      if (rest.empty() || rest == "\r") break;
      c.active = true;
      l.srv->state_changed(c, conn_state::active);
    }
    h1::error err;
    bool parsed = false;
    if (c.head_length == 0 && c.scan == 0 &&
        h1::parse_whole_head(rest, s.head, lim) == h1::result::done) {
      // The head came whole (nearly always): checked and parsed in one pass. (Tried once per
      // request: find_head_end moves c.scan on, so a head that trickles in is not parsed
      // over and over.)
      c.head_length = s.head.length;
      parsed = true;
    } else if (c.head_length == 0) {
      auto r = h1::find_head_end(rest, c.scan, c.head_length, lim, err);
      if (r == h1::result::incomplete) {
        // Armed once per request, at its first partial head: more bytes never extend it.
        if (c.timer != timer_kind::header) timer_arm(l, c, timer_kind::header);
        break;
      }
      if (r == h1::result::bad) {
        error_response(l, c, out, err);
        pos = data.size();
        break;
      }
    }
    if (!parsed &&
        h1::parse_head(rest.substr(0, c.head_length), s.head, lim, err) != h1::result::done) {
      error_response(l, c, out, err);
      pos = data.size();
      break;
    }
    std::string_view body;
    std::size_t total = c.head_length;
    if (s.head.body == h1::body_kind::length) {
      if (s.head.content_length > o.max_body_bytes) {
        error_response(l, c, out, {413, "request body too large"});
        pos = data.size();
        break;
      }
      total += static_cast<std::size_t>(s.head.content_length);
      if (rest.size() < total) {
        await_body(l, c, s.head, out);
        break;
      }
      body = rest.substr(c.head_length, static_cast<std::size_t>(s.head.content_length));
    } else if (s.head.body == h1::body_kind::chunked) {
      std::size_t used = 0;
      std::string_view fresh = rest.substr(c.head_length + c.body_consumed);
      auto r = c.chunked.feed(fresh, used, c.body, o.max_body_bytes, err);
      c.body_consumed += used;
      if (r == h1::result::bad) {
        error_response(l, c, out, err);
        pos = data.size();
        break;
      }
      if (r == h1::result::incomplete) {
        await_body(l, c, s.head, out);
        break;
      }
      body = c.body;
      total += c.body_consumed;
    }
    bool owner = dispatch(l, c, s.head, body, out);
    pos += total;
    reset_request_state(c);
    if (!owner) {
      consumed = pos;
      return false;
    }
  }
  if (c.closing && pos < data.size()) c.discarded = true;
  consumed = c.closing ? data.size() : pos;
  return true;
}

// The timer a connection waits under now that it has nothing to send: idle between
// requests, or the head/body timer of the request it is reading.
void settle(loop& l, connection& c) {
  if (c.stage == connection::phase::lingering || c.stage == connection::phase::closed) return;
  if (!c.out.empty()) return;  // the write timer is armed
  if (c.active) {
    timer_kind k = c.stage == connection::phase::body ? timer_kind::body : timer_kind::header;
    if (c.timer != k) timer_arm(l, c, k);
    return;
  }
  // A new plain connection that has sent nothing yet keeps the timer on_accepted() armed
  // (read_header_timeout): it is not an idle keep-alive connection.
  if (c.fresh && !c.tls && c.in.empty() && c.timer != timer_kind::none) return;
  if (c.in.empty()) std::string().swap(c.in);
  l.srv->state_changed(c, conn_state::idle);
  timer_arm(l, c, timer_kind::idle);
  // Draining: an idle connection goes to the new process (it may be closed after this).
  if (l.draining && !c.h2) (void)try_hand_over(l, c);
}

void resume_task(loop& l, connection& c) {
  on_resume(l, c);
}
void read_task(loop& l, connection& c) {
  (void)on_io(l, c, EPOLLIN);
}

// This thread lost the loop inside a handler: leave everything in the connection and let
// the loop's new owner carry on with it.
void hand_back(loop& l, connection& c, std::string_view rest, std::string& out) {
  c.in.assign(rest);
  c.out.append(out);
  out.clear();
  post_for(l, c, resume_task);
}

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

bool is_preface_start(std::string_view data) {
  std::size_t n = std::min(data.size(), kPreface.size());
  return n > 0 && data.substr(0, n) == kPreface.substr(0, n);
}

// Serves the complete requests already in c.in (held back while output was queued, or left
// by a handed-off thread). Returns false when this thread lost the loop.
[[gnu::noinline]] bool serve_held(loop& l, connection& c) {
  scratch& s = tls();
  for (int round = 0; round < 64; ++round) {
    if (c.in.empty() || c.read_blocked || c.closing || c.stage == connection::phase::closed) {
      return true;
    }
    // The start of an h2c preface that came in pieces: read_and_process() waits for the rest
    // ("PRI * HTTP/2.0\r\n\r\n", its first 18 bytes, would parse as an HTTP/1.1 head).
    if (c.fresh && !c.tls && l.srv->opts.http2.cleartext && is_preface_start(c.in)) return true;
    std::string data = std::move(c.in);
    c.in.clear();
    std::size_t consumed = 0;
    bool owner = process(l, c, data, consumed, s.out);
    if (!owner) {
      hand_back(l, c, std::string_view(data).substr(consumed), s.out);
      return false;
    }
    c.in.assign(data, consumed, std::string::npos);
    if (!flush_scratch(l, c, s.out)) return true;
    if (consumed == 0) return true;  // only a partial request is left
  }
  post_for(l, c, read_task);  // fairness: other connections first, then the rest
  return true;
}

// Called twice for every read; c.in is nearly always empty.
inline bool serve_buffered(loop& l, connection& c) {
  return c.in.empty() || serve_held(l, c);
}

bool read_and_process(loop& l, connection& c, bool peer_closed) {
  scratch& s = tls();
  for (int round = 0; round < 16; ++round) {
    std::string_view data;
    ssize_t n;
    bool from_scratch = c.in.empty();
    if (from_scratch) {
      n = conn_recv(c, s.in, kReadSize);
      if (n > 0) data = {s.in, static_cast<std::size_t>(n)};
    } else {
      std::size_t old = c.in.size();
      c.in.resize(old + kReadSize);
      n = conn_recv(c, c.in.data() + old, kReadSize);
      c.in.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
      data = c.in;
    }
    if (n == 0) {
      // The client half-closed. What it is still owed goes out first (a client that sends a
      // request and then shuts its side down waits for the answer); a partial request is
      // dropped.
      if (!c.out.empty()) {
        c.closing = true;
        c.client_close = true;
        return true;
      }
      close_connection(l, c);
      return true;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_connection(l, c);
      return true;
    }
    if (c.fresh && !c.tls && l.srv->opts.http2.cleartext && is_preface_start(data)) {
      if (data.size() < kPreface.size()) {  // the rest of the preface is on its way
        if (from_scratch) c.in.assign(data);
        continue;
      }
      // HTTP/2 with prior knowledge (RFC 9113 §3.3): what was read goes to the session.
      std::string first(data);
      c.in.clear();
      h2_start(l, c);
      return h2_on_data(l, c, first) && h2_read(l, c);
    }
    std::size_t consumed = 0;
    bool owner = process(l, c, data, consumed, s.out);
    if (!owner) {
      std::string rest(data.substr(consumed));
      hand_back(l, c, rest, s.out);
      return false;
    }
    if (from_scratch) {
      if (consumed < data.size()) c.in.assign(data.substr(consumed));
    } else {
      c.in.erase(0, consumed);
    }
    if (!flush_scratch(l, c, s.out)) return true;
    if (c.closing || c.read_blocked) break;
    // process() stops at kMaxQueuedOutput: serve what it left before reading more.
    if (!serve_buffered(l, c)) return false;
    if (c.closing || c.read_blocked || c.stage == connection::phase::closed) break;
    // A short read emptied the socket; with edge triggering a later arrival is a new event.
    // Not so for a FIN that came with the data: read on to see it. (TLS returns a record at
    // a time and may hold more decrypted bytes: read until it says EAGAIN.)
    if (static_cast<std::size_t>(n) < kReadSize && !peer_closed && !c.tls) break;
    if (round == 15) post_for(l, c, read_task);  // fairness: let other connections run
  }
  settle(l, c);
  return true;
}

}  // namespace

ssize_t conn_recv(connection& c, char* buf, std::size_t len) {
  ssize_t n;
  if (!c.tls) {
    n = io::recv(c.fd, buf, len, 0);
  } else {
    n = io::tls_read(c.tls->ssl, buf, len, c.tls->read_wants_write);
    if (n < 0 && errno != EAGAIN) c.tls->failed = true;
  }
  if (n > 0 && c.metrics) {
    metric_block::add(c.metrics->thread_block().bytes_in, static_cast<std::uint64_t>(n));
  }
  return n;
}

ssize_t conn_send(connection& c, const char* buf, std::size_t len) {
  ssize_t n;
  if (!c.tls) {
    n = io::send(c.fd, buf, len, MSG_NOSIGNAL);
  } else {
    bool wants_write = false;
    n = io::tls_write(c.tls->ssl, buf, len, wants_write);
    if (n < 0 && errno != EAGAIN) c.tls->failed = true;
    c.tls->write_wants_read = n < 0 && errno == EAGAIN && !wants_write;
  }
  if (n > 0 && c.metrics) {
    metric_block::add(c.metrics->thread_block().bytes_out, static_cast<std::uint64_t>(n));
  }
  return n;
}

bool send_blocking(connection& c, std::string_view bytes, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!bytes.empty()) {
    ssize_t n = conn_send(c, bytes.data(), bytes.size());
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
    int wait = -1;
    if (limit.count() > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0) return false;
      wait = static_cast<int>(left);
    }
    // (A TLS write may wait for the peer's bytes instead.)
    bool wants_read = c.tls && c.tls->write_wants_read;
    pollfd p{c.fd, static_cast<short>(wants_read ? POLLIN : POLLOUT), 0};
    if (::poll(&p, 1, wait) <= 0 || (p.revents & (POLLERR | POLLHUP))) return false;
  }
  return true;
}

void free_connection(connection* c) {
  delete c->tls;
  if (c->h2) h2_free(c->h2);
  delete c;
}

std::int64_t coarse_now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

namespace {

// "127.0.0.1:53412" fits std::string's small buffer: no allocation per connection.
void format_peer(std::string& out, const sockaddr_storage& ss, socklen_t len) {
  if (ss.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(ss);
    const auto* b = reinterpret_cast<const unsigned char*>(&in.sin_addr);
    char buf[32];  // "255.255.255.255:65535" is 21
    char* p = buf;
    for (int i = 0; i < 4; ++i) {
      p = std::to_chars(p, buf + 16, b[i]).ptr;  // at most 4 x "255." = 16
      *p++ = i < 3 ? '.' : ':';
    }
    p = std::to_chars(p, buf + sizeof buf, ntohs(in.sin_port)).ptr;
    out.assign(buf, p);
  } else if (ss.ss_family == AF_INET6) {
    out = core::to_string(reinterpret_cast<const sockaddr*>(&ss), len);
  }
}

}  // namespace

bool can_hand_over(const loop& l, const connection& c) {
  const server_state& st = *l.srv;
  return st.up && st.opts.hand_over_idle && !c.tls && !c.h2 && !st.bound.empty() &&
         st.up->can_hand_over();
}

void on_adopted(loop& l, int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) len = 0;
  (void)on_accepted(l, fd, ss, len, true);
}

namespace {

bool try_hand_over(loop& l, connection& c) {
  // A fresh connection (nothing sent yet) stays: it may be about to send an h2c preface,
  // and it is still under read_header_timeout.
  if (!l.draining || c.fresh || c.busy || c.active || c.closing || !c.in.empty() ||
      !c.out.empty() || c.stage != connection::phase::head || !can_hand_over(l, c)) {
    return false;
  }
  bool sent;
  {
    // Under conns_mu, so that the hammer (which shuts every linked connection down) never
    // sees one that is already the new process's.
    std::lock_guard lock(l.conns_mu);
    sent = l.srv->up->hand_over(c.fd, l.srv->bound);
    c.handed = sent;
  }
  if (!sent) {
    // The new process is behind (the channel is full): again in 10 ms, for about a second.
    if (!l.srv->up->can_hand_over() || ++c.handover_tries > 100) return false;
    timer_arm(l, c, timer_kind::handover);
    return true;
  }
  // The socket lives on in the new process: closing our copy ends nothing for the client.
  close_connection(l, c);
  return true;
}

// Adds a connection that is still open to the loop's epoll set; false if that failed (the
// connection is closed then).
bool register_connection(loop& l, connection& c) {
  if (c.registered || c.stage == connection::phase::closed) return true;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = &c;
  if (::epoll_ctl(l.epoll.get(), EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    if (c.tls) c.tls->failed = true;
    close_connection(l, c);
    return false;
  }
  c.registered = true;
  return true;
}

}  // namespace

bool on_accepted(loop& l, int fd, const sockaddr_storage& peer, socklen_t len, bool adopted) {
  auto* c = new connection;
  c->fd = fd;
  c->fresh = !adopted;
  c->metrics = &l.srv->metrics;
  c->id = l.srv->next_conn_id.fetch_add(1, std::memory_order_relaxed);

  format_peer(c->remote, peer, len);

  {
    std::lock_guard lock(l.conns_mu);
    l.link(c);
  }
  ++l.conn_count;
  if (l.srv->up) l.srv->up->add_connections(1);
  l.srv->state_changed(*c, conn_state::created);
  if (l.srv->tls) {
    auto* t = new tls_conn;
    c->tls = t;
    std::string why;
    t->ssl = l.srv->tls->new_ssl(fd, t->certs, why);
    if (!t->ssl) {
      l.srv->log("TLS: can't start a session: " + why);
      t->failed = true;
      close_connection(l, *c);
      return true;
    }
    c->stage = connection::phase::handshake;
  }
  if (c->tls) {
    timer_arm(l, *c, timer_kind::handshake);
  } else {
    timer_arm(l, *c, l.draining || adopted ? timer_kind::idle : timer_kind::header);
  }
  // With TCP_DEFER_ACCEPT the request (or ClientHello) is usually here already: serve it
  // before registering, so that a Connection: close exchange never touches epoll. Data that
  // arrives after this read is reported by EPOLL_CTL_ADD, which polls the socket as it adds.
  if (!on_io(l, *c, EPOLLIN)) return false;  // hand_back() posted the rest; c is not ours
  (void)register_connection(l, *c);
  return true;
}

namespace {

// Drives the TLS handshake; true once it is done (and the connection knows its protocol).
bool handshake(loop& l, connection& c) {
  bool wants_write = false;
  std::string why;
  int r = io::tls_handshake(c.tls->ssl, wants_write, why);
  if (r == 0) return false;
  if (r < 0) {
    // Scanners, clients that distrust the certificate, plain HTTP sent to the TLS port:
    // common and harmless, so not logged one by one.
    c.tls->failed = true;
    l.srv->tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
    metric_block::add(l.srv->metrics.thread_block().tls_failed, std::uint64_t{1});
    close_connection(l, c);
    return false;
  }
  metric_block::add(l.srv->metrics.thread_block().tls_ok, std::uint64_t{1});
  c.tls->server_name = io::tls_server_name(c.tls->ssl);
  c.tls->client_subject = io::tls_peer_subject(c.tls->ssl);
  c.stage = connection::phase::head;
  timer_unlink(l, c);
  if (io::tls_alpn(c.tls->ssl) == "h2") {
    h2_start(l, c);
  } else {
    timer_arm(l, c, l.draining ? timer_kind::idle : timer_kind::header);
  }
  return true;
}

}  // namespace

bool on_io(loop& l, connection& c, std::uint32_t events) {
  if (c.busy || c.stage == connection::phase::closed) return true;
  if (events & EPOLLERR) {
    close_connection(l, c);
    return true;
  }
  if (c.stage == connection::phase::handshake) {
    if (!handshake(l, c)) return true;
    // Application data may have come with the handshake's last flight: read it now.
    if (c.h2) {
      if (!h2_on_io(l, c)) return false;  // our SETTINGS go out first
      return h2_read(l, c);
    }
    return read_and_process(l, c, false);
  }
  if (c.h2) {
    if (!h2_on_io(l, c)) return false;
    if (c.stage == connection::phase::closed || c.busy) return true;
    bool must_read = c.read_blocked || (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) ||
                     (c.tls && c.tls->read_wants_write);
    c.read_blocked = false;
    return must_read ? h2_read(l, c) : true;
  }
  // A TLS read that waited for writability goes on when the socket is writable.
  if (c.tls && c.tls->read_wants_write && (events & EPOLLOUT)) events |= EPOLLIN;
  bool was_blocked = c.read_blocked;
  if (!c.out.empty() && !flush_pending(l, c)) return true;
  if (c.stage == connection::phase::lingering) {
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) linger_read(l, c);
    return true;
  }
  if (c.stage == connection::phase::closed || c.read_blocked || c.closing) return true;
  // Output drained: requests held back meanwhile come first, and data that arrived while we
  // were not reading raised no edge of its own, so read even without EPOLLIN.
  if (!serve_buffered(l, c)) return false;
  if (c.stage == connection::phase::closed || c.read_blocked || c.closing) return true;
  // Writable, with nothing that was waiting for it: nothing to do (a fresh connection keeps
  // its header timer).
  if (!was_blocked && !(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) return true;
  return read_and_process(l, c, events & (EPOLLRDHUP | EPOLLHUP));
}

namespace {

// False when this thread lost the loop in a handler again (touch nothing after that).
bool resume_connection(loop& l, connection& c) {
  if (c.h2) return h2_resume(l, c);
  c.busy = false;
  if (!c.out.empty() && !flush_pending(l, c)) return true;
  if (c.stage == connection::phase::closed) return true;
  if (c.closing) {
    if (c.out.empty() && c.stage != connection::phase::lingering) (void)start_linger(l, c);
    return true;
  }
  if (c.read_blocked) return true;  // the rest waits for EPOLLOUT
  if (!serve_buffered(l, c)) return false;
  if (c.stage == connection::phase::closed || c.read_blocked || c.closing) return true;
  // Whatever arrived while the handler ran raised no new edge for us: read now.
  return read_and_process(l, c, false);
}

}  // namespace

void on_resume(loop& l, connection& c) {
  // A new connection whose first handler blocked was never registered (on_accepted()). If
  // a handler blocked again, the resume task it posted registers it in turn.
  if (resume_connection(l, c)) (void)register_connection(l, c);
}

void close_connection(loop& l, connection& c) {
  if (c.stage == connection::phase::closed) return;
  bool handshaking = c.stage == connection::phase::handshake;
  c.stage = connection::phase::closed;
  timer_unlink(l, c);
  l.srv->state_changed(c, conn_state::closed);
  // TLS: tell the peer this is the end, not a truncation (no reply awaited).
  if (c.tls && !c.tls->failed && !handshaking) {
    io::tls_close_notify(c.tls->ssl);
  }
  // Remove from epoll explicitly: a copy of the fd in a forked child (between fork and exec
  // of an upgrade) would keep the registration alive after close().
  if (c.registered) ::epoll_ctl(l.epoll.get(), EPOLL_CTL_DEL, c.fd, nullptr);
  {
    std::lock_guard lock(l.conns_mu);
    l.unlink(&c);
  }
  ::close(c.fd);
  c.fd = -1;
  // Freed by loop::sweep() after this batch: later events of the batch, or posted tasks,
  // may still point here and find it closed.
  l.graveyard.push_back(&c);
  --l.conn_count;
  if (l.srv->up) l.srv->up->add_connections(-1);
  check_drained(l);
}

void expire_timers(loop& l) {
  for (int k = 1; k < static_cast<int>(timer_kind::count); ++k) {
    timer_list& t = l.timers[k];
    while (t.head && t.head->deadline_ms <= l.now_ms) {
      connection* c = t.head;
      timer_unlink(l, *c);
      if (c->h2 && k != static_cast<int>(timer_kind::goaway)) {
        h2_close_idle(l, *c);  // with a GOAWAY, so the client knows why
        continue;
      }
      if (k == static_cast<int>(timer_kind::goaway)) {
        h2_goaway_due(l, *c);  // the PING's answer is late: send the final GOAWAY anyway
        continue;
      }
      if (k == static_cast<int>(timer_kind::handover)) {
        // Still idle and still ours: again, or, with no new process to take it any more,
        // the drain's idle grace.
        if (!try_hand_over(l, *c)) timer_arm(l, *c, timer_kind::idle);
        continue;
      }
      // Header, body, idle, write, linger: the client took too long; close. (Go closes
      // silently too; a slowloris client gets nothing to read.)
      close_connection(l, *c);
    }
  }
}

std::int64_t next_deadline(const loop& l) {
  std::int64_t next = -1;
  for (int k = 1; k < static_cast<int>(timer_kind::count); ++k) {
    const timer_list& t = l.timers[k];
    if (t.head && (next < 0 || t.head->deadline_ms < next)) next = t.head->deadline_ms;
  }
  return next;
}

void begin_loop_drain(loop& l) {
  if (l.draining) return;
  l.draining = true;
  {
    std::lock_guard lock(l.srv->drain_mu);
    l.drain_gen = l.srv->drain_gen;
  }
  l.now_ms = coarse_now_ms();

  // Step 1: stop accepting. Never shutdown() the listener: the new process shares it. Our
  // copy stays open (closed with the server) for a rollback to accept on again.
  leave_listener(l);
  // Step 2: idle connections close once they stayed idle through drain_grace (from now);
  // busy ones end with their next response (Connection: close, set in dispatch).
  timer_list& idle = list_of(l, timer_kind::idle);
  idle.duration_ms = l.srv->opts.drain_grace.count();
  std::vector<connection*> idle_now, h2_now;
  {
    std::lock_guard lock(l.conns_mu);
    for (connection* c = l.conns; c; c = c->conn_next) {
      if (c->h2) {
        if (!c->busy) h2_now.push_back(c);  // a busy one starts its drain when its handler returns
      } else if (!c->busy && !c->active && c->out.empty() && c->stage == connection::phase::head) {
        idle_now.push_back(c);
      }
    }
  }
  for (connection* c : h2_now) {
    h2_begin_drain(l, *c);
    // Sent by a task each: a handler it runs may block and cost this thread the loop.
    post_for(l, *c, [](loop& lp, connection& cp) { (void)h2_on_io(lp, cp); });
  }
  for (connection* c : idle_now) {
    if (try_hand_over(l, *c)) continue;
    timer_unlink(l, *c);
    timer_arm(l, *c, timer_kind::idle);
  }
  check_drained(l);
}

namespace detail {

void write_head(std::string& out, const response& res, long long content_length) {
  // The pieces first, then one resize and a copy of each: appending them one by one cost a
  // capacity check and a call per piece, on every response.
  const std::string_view date = access::date(res);
  const std::string& fields = access::headers(res);
  if (res.status() == 200 && content_length >= 0 && !access::close(res) && !access::http10(res)) {
    // Nearly every response: the fixed parts are copies of constant size.
    constexpr std::string_view a = "HTTP/1.1 200 OK\r\nDate: ", b = "\r\nContent-Length: ";
    char length[24];
    const auto length_len = static_cast<std::size_t>(
        std::to_chars(length, length + sizeof length, content_length).ptr - length);
    const std::size_t at = out.size();
    out.resize(at + a.size() + date.size() + b.size() + length_len + 2 + fields.size() + 2);
    char* p = out.data() + at;
    std::memcpy(p, a.data(), a.size());
    p += a.size();
    if (!date.empty()) std::memcpy(p, date.data(), date.size());
    p += date.size();
    std::memcpy(p, b.data(), b.size());
    p += b.size();
    std::memcpy(p, length, length_len);
    p += length_len;
    std::memcpy(p, "\r\n", 2);
    std::memcpy(p + 2, fields.data(), fields.size());
    std::memcpy(p + 2 + fields.size(), "\r\n", 2);
    return;
  }
  const int status = wire_status(res.status());
  char line[80];  // "HTTP/1.1 404 Not Found"
  std::size_t line_len;
  if (status == 200) {
    std::memcpy(line, "HTTP/1.1 200 OK", 15);
    line_len = 15;
  } else {
    std::memcpy(line, "HTTP/1.1 ", 9);
    char* p = std::to_chars(line + 9, line + 20, status).ptr;
    *p++ = ' ';
    const char* reason = reason_phrase(status);
    const std::size_t n = ::strnlen(reason, static_cast<std::size_t>(line + sizeof line - p));
    std::memcpy(p, reason, n);
    line_len = static_cast<std::size_t>(p + n - line);
  }
  char length[24];
  std::size_t length_len = 0;
  std::string_view framing;
  if (content_length >= 0) {
    framing = "\r\nContent-Length: ";
    length_len = static_cast<std::size_t>(
        std::to_chars(length, length + sizeof length, content_length).ptr - length);
  } else if (content_length == -1) {
    framing = "\r\nTransfer-Encoding: chunked";
  }
  std::string_view connection;
  if (access::close(res)) {
    connection = "\r\nConnection: close";
  } else if (access::http10(res)) {
    connection = "\r\nConnection: keep-alive";
  }
  const std::size_t at = out.size();
  out.resize(at + line_len + 8 + date.size() + framing.size() + length_len + connection.size() + 2 +
             fields.size() + 2);
  char* p = out.data() + at;
  auto put = [&p](const char* s, std::size_t n) {
    if (n == 0) return;  // an empty view may have no data at all: memcpy wants a pointer
    std::memcpy(p, s, n);
    p += n;
  };
  put(line, line_len);
  put("\r\nDate: ", 8);
  put(date.data(), date.size());
  put(framing.data(), framing.size());
  put(length, length_len);
  put(connection.data(), connection.size());
  put("\r\n", 2);
  put(fields.data(), fields.size());
  put("\r\n", 2);
}

}  // namespace detail

}  // namespace endless::http
