// One HTTP/2 connection (RFC 9113) on a loop, through nghttp2: frames, HPACK, flow control
// and stream states are nghttp2's; requests, handlers, timers and the drain are ours.
//
// nghttp2 callbacks only collect: a stream whose request is complete (END_STREAM) goes to
// `ready`, and requests are dispatched after nghttp2_session_mem_recv() returns, one at a
// time, through the same run_handler() as HTTP/1.1. So a handler that blocks makes the
// connection busy exactly like an HTTP/1.1 one: its thread keeps the connection, finishes
// the request and posts a resume; the other streams of this connection wait (those of other
// connections do not).
//
// A streamed response (response::write) is sent from the handler's thread: it waits, up to
// write_timeout, until the client's flow-control window lets the piece out, reading the
// client's frames meanwhile (new requests among them are queued, not run).
#include <nghttp2/nghttp2.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>

#include "detail.hpp"
#include "server_impl.hpp"

namespace endless::http {

struct h2_stream {
  std::int32_t id = 0;
  // Request: every field as name, value back to back; views are built at dispatch.
  std::string fields;
  std::vector<std::uint32_t> spans;  // name offset, name length, value offset, value length
  std::string method, path, authority;
  std::string body;
  std::size_t field_bytes = 0;
  bool fields_too_large = false;  // 431
  // 413 at once; the rest of the body is read and dropped. (RFC 9113 §8.1 allows a
  // RST_STREAM(NO_ERROR) after the response instead, but curl 7.88 reports that as a
  // stream error and loses the 413.)
  bool body_too_large = false;
  bool queued = false;     // the request is complete (or refused): waiting for dispatch
  bool head_done = false;  // the request's HEADERS (with CONTINUATIONs) are in
  bool closed = false;     // nghttp2 closed it while a handler still held it
  // Response
  std::string out;
  std::size_t out_pos = 0;
  bool streaming = false;     // a handler streams: more may come
  bool done = false;          // no more body will be added
  bool deferred = false;      // nghttp2 waits for nghttp2_session_resume_data()
  std::string trailers;       // "Name: value\r\n" ...
  h2_stream* prev = nullptr;  // the session's list of live streams
  h2_stream* next = nullptr;

  // For reuse: empty, but small buffers keep their capacity.
  void reset() {
    constexpr std::size_t kKeep = 16 << 10;
    for (std::string* b : {&fields, &body, &out, &trailers}) {
      if (b->capacity() > kKeep) std::string().swap(*b);
      b->clear();
    }
    spans.clear();
    method.clear();
    path.clear();
    authority.clear();
    id = 0;
    field_bytes = 0;
    fields_too_large = body_too_large = queued = head_done = closed = false;
    out_pos = 0;
    streaming = done = deferred = false;
    prev = next = nullptr;
  }
};

struct h2_session {
  nghttp2_session* ng = nullptr;
  loop* l = nullptr;
  connection* c = nullptr;
  std::deque<std::int32_t> ready;
  h2_stream* current = nullptr;   // the stream whose handler runs
  h2_stream* streams = nullptr;   // live streams (nghttp2_session_del does not report them)
  std::vector<h2_stream*> spare;  // closed streams kept for reuse: no allocation per request
  int open_streams = 0;
  enum class drain_stage { none, notice_sent, final_sent } drain = drain_stage::none;
  bool ping_acked = false;
  // Memory a client can make us hold: request bodies not yet dispatched, and response bodies
  // waiting for its flow-control window. Both bounded (see on_data_chunk, dispatch_ready).
  std::size_t body_bytes = 0;
  std::size_t response_bytes = 0;
  std::int64_t final_goaway_due_ms = 0;  // the final GOAWAY goes out by then at the latest
  bool notice_sent = false;              // the first GOAWAY has been serialised
  bool broken = false;                   // the transport failed under a streaming handler
};

namespace {

constexpr std::size_t kReadSize = 16 << 10;
constexpr std::size_t kMaxBufferedOutput = 256 << 10;
constexpr std::size_t kMaxWaitingResponses = 8 << 20;
constexpr std::uint8_t kDrainPing[8] = {'e', 'n', 'd', 'l', 'e', 's', 's', '!'};

struct head_field {
  std::size_t name, name_len, value, value_len;
};

struct h2_scratch {
  std::vector<head_field> fields;
  request req;
  response res;
  std::vector<header> headers;
  std::string lower;   // lower-cased response field names, for nghttp2_nv
  std::string cookie;  // the request's cookie fields, joined
  std::vector<nghttp2_nv> nv;
  char in[kReadSize];
};

h2_scratch& scratch() {
  thread_local h2_scratch s;
  return s;
}

h2_session& session_of(void* user_data) {
  return *static_cast<h2_session*>(user_data);
}

h2_stream* stream_of(nghttp2_session* ng, std::int32_t id) {
  return static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(ng, id));
}

void recycle(h2_session& s, h2_stream* st) {
  if (s.spare.size() >= 16) {
    delete st;
    return;
  }
  st->reset();
  s.spare.push_back(st);
}

void make_ready(h2_session& s, h2_stream& st) {
  if (st.queued) return;
  st.queued = true;
  s.ready.push_back(st.id);
}

// ------------------------------------------------------------------ nghttp2 callbacks

int on_begin_headers(nghttp2_session* ng, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2_session& s = session_of(user_data);
  h2_stream* st;
  if (s.spare.empty()) {
    st = new h2_stream;
  } else {
    st = s.spare.back();
    s.spare.pop_back();
  }
  st->id = frame->hd.stream_id;
  st->next = s.streams;
  if (s.streams) s.streams->prev = st;
  s.streams = st;
  nghttp2_session_set_stream_user_data(ng, st->id, st);
  if (s.open_streams++ == 0) s.l->srv->state_changed(*s.c, conn_state::active);
  return 0;
}

int on_header(nghttp2_session* ng, const nghttp2_frame* frame, const std::uint8_t* name,
              std::size_t namelen, const std::uint8_t* value, std::size_t valuelen, std::uint8_t,
              void* user_data) {
  h2_stream* st = stream_of(ng, frame->hd.stream_id);
  if (!st) return 0;
  h2_session& s = session_of(user_data);
  // RFC 9113 §6.5.2: a field's size is its name, its value and 32.
  st->field_bytes += namelen + valuelen + 32;
  if (st->field_bytes > s.l->srv->opts.max_header_bytes) {
    st->fields_too_large = true;
    return 0;
  }
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers: accepted, unused
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (!n.empty() && n[0] == ':') {
    // nghttp2 has checked the pseudo-header fields (RFC 9113 §8.3).
    if (n == ":method")
      st->method = v;
    else if (n == ":path")
      st->path = v;
    else if (n == ":authority")
      st->authority = v;
    return 0;
  }
  auto off = static_cast<std::uint32_t>(st->fields.size());
  st->fields.append(n).append(v);
  st->spans.insert(st->spans.end(), {off, static_cast<std::uint32_t>(namelen),
                                     off + static_cast<std::uint32_t>(namelen),
                                     static_cast<std::uint32_t>(valuelen)});
  return 0;
}

int on_data_chunk(nghttp2_session* ng, std::uint8_t, std::int32_t id, const std::uint8_t* data,
                  std::size_t len, void* user_data) {
  h2_stream* st = stream_of(ng, id);
  if (!st || st->body_too_large) return 0;
  h2_session& s = session_of(user_data);
  // max_body_bytes bounds one request's body and, over HTTP/2, all the bodies buffered on one
  // connection at once (nghttp2 reopens the window as data arrives, so flow control alone
  // would let 100 streams each buffer max_body_bytes).
  std::size_t limit = s.l->srv->opts.max_body_bytes;
  if (st->body.size() + len > limit || s.body_bytes + len > limit) {
    st->body_too_large = true;
    s.body_bytes -= st->body.size();
    std::string().swap(st->body);
    make_ready(s, *st);  // answer 413 now, not after the whole body
    return 0;
  }
  st->body.append(reinterpret_cast<const char*>(data), len);
  s.body_bytes += len;
  return 0;
}

int on_frame_recv(nghttp2_session* ng, const nghttp2_frame* frame, void* user_data) {
  h2_session& s = session_of(user_data);
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        if (h2_stream* st = stream_of(ng, frame->hd.stream_id)) st->head_done = true;
      }
      [[fallthrough]];
    case NGHTTP2_DATA:
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        if (h2_stream* st = stream_of(ng, frame->hd.stream_id)) make_ready(s, *st);
      }
      break;
    case NGHTTP2_PING:
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) &&
          std::memcmp(frame->ping.opaque_data, kDrainPing, 8) == 0) {
        s.ping_acked = true;
      }
      break;
    default:
      break;
  }
  return 0;
}

int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type == NGHTTP2_GOAWAY) session_of(user_data).notice_sent = true;
  return 0;
}

int on_stream_close(nghttp2_session* ng, std::int32_t id, std::uint32_t, void* user_data) {
  h2_session& s = session_of(user_data);
  h2_stream* st = stream_of(ng, id);
  if (!st) return 0;
  nghttp2_session_set_stream_user_data(ng, id, nullptr);
  s.body_bytes -= st->body.size();
  s.response_bytes -= st->out.size() - st->out_pos;
  (st->prev ? st->prev->next : s.streams) = st->next;
  if (st->next) st->next->prev = st->prev;
  if (st == s.current) {
    st->closed = true;  // its handler still runs; dispatch frees it
  } else {
    recycle(s, st);
  }
  if (--s.open_streams == 0) s.l->srv->state_changed(*s.c, conn_state::idle);
  return 0;
}

bool dropped_field(std::string_view lower_name);

ssize_t read_body(nghttp2_session* ng, std::int32_t id, std::uint8_t* buf, std::size_t length,
                  std::uint32_t* flags, nghttp2_data_source* source, void* user_data) {
  auto* st = static_cast<h2_stream*>(source->ptr);
  std::size_t n = std::min(length, st->out.size() - st->out_pos);
  std::memcpy(buf, st->out.data() + st->out_pos, n);
  st->out_pos += n;
  static_cast<h2_session*>(user_data)->response_bytes -= n;
  if (st->out_pos == st->out.size()) {
    st->out.clear();
    st->out_pos = 0;
    if (st->streaming && !st->done) {
      if (n > 0) return static_cast<ssize_t>(n);
      st->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!st->trailers.empty()) {
      // Trailers end the stream instead (RFC 9113 §8.1).
      h2_scratch& sc = scratch();
      sc.nv.clear();
      sc.lower.clear();
      std::vector<std::pair<std::size_t, std::size_t>> idx;
      std::string_view t = st->trailers;
      while (!t.empty()) {
        std::size_t eol = t.find("\r\n");
        std::string_view line = t.substr(0, eol);
        t.remove_prefix(eol == std::string_view::npos ? t.size() : eol + 2);
        std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        std::string_view name = line.substr(0, colon), value = line.substr(colon + 1);
        while (!value.empty() && value[0] == ' ')
          value.remove_prefix(1);
        std::size_t off = sc.lower.size();
        for (char ch : name)
          sc.lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
        if (dropped_field(std::string_view(sc.lower).substr(off))) {
          sc.lower.resize(off);
          continue;
        }
        sc.lower.append(value);
        idx.emplace_back(off, name.size());
      }
      for (std::size_t i = 0; i < idx.size(); ++i) {
        std::size_t end = i + 1 < idx.size() ? idx[i + 1].first : sc.lower.size();
        auto* base = reinterpret_cast<std::uint8_t*>(sc.lower.data());
        sc.nv.push_back({base + idx[i].first, base + idx[i].first + idx[i].second, idx[i].second,
                         end - idx[i].first - idx[i].second, NGHTTP2_NV_FLAG_NONE});
      }
      if (nghttp2_submit_trailer(ng, id, sc.nv.data(), sc.nv.size()) == 0) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      }
    }
  }
  return static_cast<ssize_t>(n);
}

nghttp2_session_callbacks* callbacks() {
  static nghttp2_session_callbacks* cbs = [] {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(c, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(c, on_frame_send);
    return c;
  }();
  return cbs;
}

// ------------------------------------------------------------------ responses

bool bodyless(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

// Fields not allowed in HTTP/2 (RFC 9113 §8.2.2) or written by us.
bool dropped_field(std::string_view lower_name) {
  return lower_name == "connection" || lower_name == "keep-alive" ||
         lower_name == "proxy-connection" || lower_name == "transfer-encoding" ||
         lower_name == "upgrade";
}

// Builds the nv list for a response head in scratch().nv (valid until the next call).
void build_head(const response& res, long long content_length) {
  h2_scratch& sc = scratch();
  sc.nv.clear();
  sc.lower.clear();
  char status[4];
  int code = detail::wire_status(res.status());
  status[0] = static_cast<char>('0' + code / 100);
  status[1] = static_cast<char>('0' + code / 10 % 10);
  status[2] = static_cast<char>('0' + code % 10);
  // Offsets first (sc.lower may reallocate while it grows), pointers at the end.
  std::vector<head_field>& fields = sc.fields;
  fields.clear();
  auto add = [&](std::string_view name, std::string_view value, bool lower) {
    head_field f{sc.lower.size(), name.size(), 0, value.size()};
    for (char ch : name)
      sc.lower.push_back(lower && ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch | 0x20) : ch);
    f.value = sc.lower.size();
    sc.lower.append(value);
    fields.push_back(f);
  };
  add(":status", std::string_view(status, 3), false);
  add("date", detail::access::date(res), false);
  if (content_length >= 0) add("content-length", std::to_string(content_length), false);
  std::string_view h = detail::access::headers(res);
  while (!h.empty()) {
    std::size_t eol = h.find("\r\n");
    std::string_view line = h.substr(0, eol);
    h.remove_prefix(eol == std::string_view::npos ? h.size() : eol + 2);
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon), value = line.substr(colon + 1);
    while (!value.empty() && value[0] == ' ')
      value.remove_prefix(1);
    std::size_t before = sc.lower.size();
    add(name, value, true);
    if (dropped_field(std::string_view(sc.lower).substr(before, name.size()))) {
      fields.pop_back();
      sc.lower.resize(before);
    }
  }
  // nghttp2_submit_response() and _trailer() copy the fields: scratch may be reused after.
  auto* base = reinterpret_cast<std::uint8_t*>(sc.lower.data());
  for (const head_field& f : fields)
    sc.nv.push_back({base + f.name, base + f.value, f.name_len, f.value_len, NGHTTP2_NV_FLAG_NONE});
}

// Sends the response head (and sets up the body) for a handler's response.
void submit(h2_session& s, h2_stream& st, response& res, bool head_only) {
  bool no_body = bodyless(res.status());
  nghttp2_data_provider provider{};
  provider.source.ptr = &st;
  provider.read_callback = read_body;
  bool has_data = !head_only && !no_body;
  if (st.streaming) {
    build_head(res, -1);
  } else {
    st.out = detail::access::body(res);
    st.out_pos = 0;
    s.response_bytes += st.out.size();
    st.trailers = detail::access::trailers(res);
    has_data = has_data && (!st.out.empty() || !st.trailers.empty());
    build_head(res, no_body ? -1 : static_cast<long long>(detail::access::body(res).size()));
  }
  h2_scratch& sc = scratch();
  nghttp2_submit_response(s.ng, st.id, sc.nv.data(), sc.nv.size(), has_data ? &provider : nullptr);
}

// Sends what nghttp2 has into c.out and the socket; false if the connection failed.
bool flush(loop& l, connection& c) {
  h2_session& s = *c.h2;
  for (;;) {
    while (!c.out.empty()) {
      ssize_t n = conn_send(c, c.out.data(), c.out.size());
      if (n > 0) {
        c.out.erase(0, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        timer_arm(l, c, timer_kind::write);
        return true;
      }
      return false;
    }
    // Gather frames into one buffer, so that a burst of them costs one send.
    while (c.out.size() < kMaxBufferedOutput) {
      const std::uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(s.ng, &p);
      if (n < 0) return false;
      if (n == 0) break;
      c.out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    }
    if (c.out.empty()) {
      std::string().swap(c.out);
      return true;
    }
  }
}

// The timer this connection waits under now.
void settle(loop& l, connection& c) {
  h2_session& s = *c.h2;
  if (!c.out.empty()) return;  // the write timer
  if (s.drain == h2_session::drain_stage::notice_sent) {
    if (c.timer != timer_kind::goaway) timer_arm(l, c, timer_kind::goaway);
    return;
  }
  if (s.open_streams == 0) {
    if (c.timer != timer_kind::idle) timer_arm(l, c, timer_kind::idle);
    return;
  }
  // Streams are open. A request head must be complete within read_header_timeout (never
  // extended); a body within read_timeout; and a client that sends nothing (no body bytes,
  // no WINDOW_UPDATE for our answers) for idle_timeout (write_timeout for our answers, if
  // set) is gone. Re-arming on every event makes those inactivity timeouts.
  bool heads_pending = false, bodies_pending = false;
  for (const h2_stream* st = s.streams; st; st = st->next) {
    if (!st->head_done)
      heads_pending = true;
    else if (!st->queued)
      bodies_pending = true;
  }
  timer_kind k = timer_kind::idle;
  if (heads_pending) {
    k = timer_kind::header;
    if (c.timer == k) return;  // armed at the first incomplete head, not extended
  } else if (bodies_pending && l.timers[static_cast<int>(timer_kind::body)].duration_ms > 0) {
    k = timer_kind::body;
    if (c.timer == k) return;
  } else if (!bodies_pending && l.srv->opts.write_timeout.count() > 0) {
    k = timer_kind::write;
  }
  timer_arm(l, c, k);
}

void final_goaway(h2_session& s) {
  if (s.drain != h2_session::drain_stage::notice_sent) return;
  s.drain = h2_session::drain_stage::final_sent;
  // Streams up to this id are (or will be) answered; the client may retry any later one
  // elsewhere (RFC 9113 §6.8).
  nghttp2_submit_goaway(s.ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s.ng),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

class h2_sink final : public detail::body_sink {
 public:
  h2_sink(loop& l, connection& c, h2_stream& st) : l_(l), c_(c), st_(st) {}
  bool write_body(response& res, std::string_view data) override {
    h2_session& s = *c_.h2;
    if (st_.closed || s.broken) return false;
    if (!detail::access::streaming_started(res)) {
      detail::access::set_streaming(res, false);
      st_.streaming = true;
      submit(s, st_, res, detail::access::head_only(res));
    }
    if (detail::access::head_only(res) || bodyless(res.status())) {
      (void)pump(false);  // the head ended the stream: there is no body to send
      return !s.broken;
    }
    if (data.empty()) return pump(false);
    st_.out.append(data);
    s.response_bytes += data.size();
    if (st_.deferred) {
      st_.deferred = false;
      nghttp2_session_resume_data(s.ng, st_.id);
    }
    return pump(true);
  }

 private:
  // Sends until this stream's queued body is out (or only the frames, if !wait_body),
  // reading the client's WINDOW_UPDATEs meanwhile.
  bool pump(bool wait_body) {
    h2_session& s = *c_.h2;
    // Bounded even without a write_timeout: a client that never opens its window would
    // otherwise hold this thread forever.
    auto limit = l_.srv->opts.write_timeout.count() > 0 ? l_.srv->opts.write_timeout
                                                        : l_.srv->opts.idle_timeout;
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (int round = 0;; ++round) {
      std::string pending = std::move(c_.out);
      c_.out.clear();
      for (;;) {
        const std::uint8_t* p = nullptr;
        ssize_t n = nghttp2_session_mem_send(s.ng, &p);
        if (n < 0) return fail();
        if (n == 0) break;
        pending.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
        if (pending.size() >= kMaxBufferedOutput) break;
      }
      if (!pending.empty() && !send_blocking(c_, pending, limit)) return fail();
      if (st_.closed) return false;
      if (!wait_body || st_.out.size() == st_.out_pos) {
        if (nghttp2_session_want_write(s.ng) && round < 64) continue;
        return true;
      }
      // The flow-control window is shut: wait for the client to open it.
      char* buf = scratch().in;
      for (;;) {
        ssize_t n = conn_recv(c_, buf, kReadSize);
        if (n > 0) {
          if (nghttp2_session_mem_recv(s.ng, reinterpret_cast<std::uint8_t*>(buf),
                                       static_cast<std::size_t>(n)) < 0) {
            return fail();
          }
          break;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          return fail();
        }
        int wait = -1;
        if (limit.count() > 0) {
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
          if (left <= 0) return fail();
          wait = static_cast<int>(left);
        }
        pollfd pf{c_.fd, POLLIN, 0};
        if (::poll(&pf, 1, wait) <= 0) return fail();
      }
      if (st_.closed) return false;
    }
  }
  bool fail() {
    c_.h2->broken = true;
    return false;
  }
  loop& l_;
  connection& c_;
  h2_stream& st_;
};

// Runs the handler for one complete request; false when this thread lost the loop.
bool dispatch(loop& l, connection& c, h2_stream& st) {
  h2_session& s = *c.h2;
  h2_scratch& sc = scratch();
  sc.headers.clear();
  bool has_host = false;
  int cookies = 0;
  sc.cookie.clear();
  for (std::size_t i = 0; i + 3 < st.spans.size(); i += 4) {
    std::string_view name(st.fields.data() + st.spans[i], st.spans[i + 1]);
    std::string_view value(st.fields.data() + st.spans[i + 2], st.spans[i + 3]);
    if (name == "host") has_host = true;
    if (name == "cookie") {
      // Split cookie fields become one again (RFC 9113 §8.2.3), as HTTP/1.1 sends them.
      sc.cookie.append(cookies++ ? "; " : "").append(value);
      continue;
    }
    sc.headers.push_back({name, value});
  }
  if (cookies > 0) sc.headers.push_back({"cookie", sc.cookie});
  // Handlers look for Host as in HTTP/1.1 (RFC 9113 §8.3.1: :authority takes its place).
  if (!has_host && !st.authority.empty()) sc.headers.push_back({"host", st.authority});
  std::string_view target = st.path;
  std::size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  detail::access::set(sc.req, st.method, target, path, query, sc.headers.data(), sc.headers.size(),
                      0, st.body, c.remote);
  if (c.tls) {
    detail::access::set_connection(sc.req, 2, true, c.tls->server_name, c.tls->client_subject);
  } else {
    detail::access::set_connection(sc.req, 2, false, {}, {});
  }
  bool head_only = st.method == "HEAD";
  h2_sink sink(l, c, st);
  response& res = sc.res;
  detail::access::reset(res, head_only, false, current_http_date(), &sink);
  bool owner = true;
  if (st.fields_too_large) {
    res.status(431).text("431 request header fields too large\n");
    l.srv->metrics.count_request(st.method, 431, 0);
  } else if (st.body_too_large) {
    res.status(413).text("413 request body too large\n");
    l.srv->metrics.count_request(st.method, 413, 0);
  } else {
    c.busy = true;
    timer_unlink(l, c);
    s.current = &st;
    owner = run_handler(l, sc.req, res);
    s.current = nullptr;
    if (!detail::access::ok(res) && !res.streaming()) {
      detail::access::reset(res, head_only, false, current_http_date(), &sink);
      res.status(500).text("500 internal server error\n");
    }
  }
  if (!st.closed) {  // the body is not needed any more
    s.body_bytes -= st.body.size();
    std::string().swap(st.body);
  }
  if (st.closed) {
    recycle(s, &st);  // the client reset it while the handler ran
  } else if (res.streaming()) {
    if (!s.broken) {
      st.done = true;
      st.trailers = detail::access::trailers(res);
      if (!detail::access::ok(res)) {
        nghttp2_submit_rst_stream(s.ng, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR);
      } else if (st.deferred) {
        st.deferred = false;
        nghttp2_session_resume_data(s.ng, st.id);
      }
    }
  } else {
    submit(s, st, res, head_only);
  }
  if (owner) c.busy = false;
  return owner;
}

void resume_task(loop& l, connection& c) {
  on_resume(l, c);
}

// Dispatches the queued requests; false when this thread lost the loop.
bool dispatch_ready(loop& l, connection& c) {
  h2_session& s = *c.h2;
  while (!s.ready.empty() && !s.broken) {
    // Answers wait for the client's window: run no more handlers while too much waits (the
    // next read, a WINDOW_UPDATE among others, brings us back here).
    if (s.response_bytes >= kMaxWaitingResponses) break;
    std::int32_t id = s.ready.front();
    s.ready.pop_front();
    h2_stream* st = stream_of(s.ng, id);
    if (!st) continue;  // reset by the client meanwhile
    if (!dispatch(l, c, *st)) {
      post_for(l, c, resume_task);
      return false;
    }
    // A drain that began while the handler ran: announce it before the next one runs.
    if (s.drain == h2_session::drain_stage::none &&
        l.srv->draining.load(std::memory_order_relaxed)) {
      h2_begin_drain(l, c);
    }
    // The answers of a batch go out together, after it (one TLS record and one send, not
    // one per stream), as HTTP/1.1's pipelined answers do; kMaxWaitingResponses bounds them.
  }
  return true;
}

}  // namespace

void h2_start(loop& l, connection& c) {
  auto* s = new h2_session;
  s->l = &l;
  s->c = &c;
  c.h2 = s;
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // (Response heads up to 1 MiB. Requests: max_header_bytes is checked in on_header and
  // answered with 431; nghttp2's HPACK decoder itself refuses any single field over 64 KiB
  // with a connection error.)
  nghttp2_option_set_max_send_header_block_length(opt, 1 << 20);
  nghttp2_session_server_new2(&s->ng, callbacks(), s, opt);
  nghttp2_option_del(opt);
  const http2_options& o = l.srv->opts.http2;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       static_cast<std::uint32_t>(std::min<std::size_t>(l.srv->opts.max_header_bytes, 1u << 30))},
  };
  nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  // The connection's window: room for several streams' bodies at once.
  nghttp2_session_set_local_window_size(
      s->ng, NGHTTP2_FLAG_NONE, 0,
      static_cast<std::int32_t>(
          std::min<std::uint64_t>(std::uint64_t{o.initial_window_size} * 4, (1u << 31) - 1)));
  c.stage = connection::phase::head;
  l.srv->state_changed(c, conn_state::idle);
  if (l.draining) h2_begin_drain(l, c);
  settle(l, c);
}

void h2_free(h2_session* s) {
  if (s->ng) nghttp2_session_del(s->ng);
  while (h2_stream* st = s->streams) {
    s->streams = st->next;
    delete st;
  }
  for (h2_stream* st : s->spare)
    delete st;
  delete s;
}

bool h2_on_data(loop& l, connection& c, std::string_view data) {
  h2_session& s = *c.h2;
  ssize_t r = nghttp2_session_mem_recv(s.ng, reinterpret_cast<const std::uint8_t*>(data.data()),
                                       data.size());
  if (r < 0) {
    // nghttp2 has queued a GOAWAY with the reason (a protocol error, a bad preface):
    // send it, then close.
    (void)flush(l, c);
    close_connection(l, c);
    return true;
  }
  return h2_on_io(l, c);
}

bool h2_on_io(loop& l, connection& c) {
  if (c.stage == connection::phase::closed || c.busy) return true;
  h2_session& s = *c.h2;
  if (!s.broken && l.srv->draining.load(std::memory_order_relaxed) &&
      s.drain == h2_session::drain_stage::none) {
    h2_begin_drain(l, c);  // the drain began while a handler of ours ran
    if (c.stage == connection::phase::closed) return true;
  }
  // The PING's answer, or the deadline (a busy connection reads no answers meanwhile, and
  // its timer restarts with each handler).
  if (s.ping_acked || (s.drain == h2_session::drain_stage::notice_sent &&
                       coarse_now_ms() >= s.final_goaway_due_ms)) {
    final_goaway(s);
  }
  if (s.broken) {
    close_connection(l, c);
    return true;
  }
  if (!dispatch_ready(l, c)) return false;
  if (c.stage == connection::phase::closed) return true;
  if (s.ping_acked) final_goaway(s);
  if (s.broken || !flush(l, c)) {
    close_connection(l, c);
    return true;
  }
  if (c.out.empty() && !nghttp2_session_want_read(s.ng) && !nghttp2_session_want_write(s.ng)) {
    close_connection(l, c);  // GOAWAY exchanged and no stream left
    return true;
  }
  settle(l, c);
  return true;
}

bool h2_read(loop& l, connection& c) {
  char* buf = scratch().in;
  for (int round = 0; round < 64; ++round) {
    if (c.stage == connection::phase::closed || c.busy) return true;
    if (c.out.size() >= kMaxBufferedOutput) {
      c.read_blocked = true;  // the client reads first; on_io reads once output drains
      return true;
    }
    ssize_t n = conn_recv(c, buf, kReadSize);
    if (n == 0) {
      close_connection(l, c);
      return true;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      close_connection(l, c);
      return true;
    }
    if (!h2_on_data(l, c, std::string_view(buf, static_cast<std::size_t>(n)))) return false;
    if (!c.tls && static_cast<std::size_t>(n) < kReadSize) return true;
  }
  post_for(l, c, [](loop& lp, connection& cp) { (void)h2_read(lp, cp); });
  return true;
}

bool h2_resume(loop& l, connection& c) {
  c.busy = false;
  if (!h2_on_io(l, c)) return false;
  if (c.stage == connection::phase::closed || c.busy) return true;
  return h2_read(l, c);  // what arrived while the handler ran raised no edge for us
}

void h2_begin_drain(loop& l, connection& c) {
  h2_session& s = *c.h2;
  if (s.drain != h2_session::drain_stage::none) return;
  // RFC 9113 §6.8: a GOAWAY with the largest stream id first, so that streams the client
  // is opening right now are still served; after about a round trip (our PING's answer)
  // the final GOAWAY names the last stream we took.
  s.drain = h2_session::drain_stage::notice_sent;
  nghttp2_submit_shutdown_notice(s.ng);
  // The PING must follow the GOAWAY on the wire, or its answer would not prove that the
  // client has seen the GOAWAY; nghttp2 would send it first (PING is urgent to it).
  for (int i = 0; i < 4096 && !s.notice_sent; ++i) {
    const std::uint8_t* p = nullptr;
    ssize_t n = nghttp2_session_mem_send(s.ng, &p);
    if (n <= 0) break;
    c.out.append(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
  }
  nghttp2_submit_ping(s.ng, NGHTTP2_FLAG_NONE, kDrainPing);
  s.final_goaway_due_ms = coarse_now_ms() + l.srv->opts.http2.goaway_wait.count();
  timer_arm(l, c, timer_kind::goaway);
}

void h2_close_idle(loop& l, connection& c) {
  if (c.busy) return;
  nghttp2_session_terminate_session(c.h2->ng, NGHTTP2_NO_ERROR);
  (void)flush(l, c);
  close_connection(l, c);
}

void h2_goaway_due(loop& l, connection& c) {
  if (!c.h2 || c.busy) return;
  final_goaway(*c.h2);
  // Sent by a task: h2_on_io may run handlers, which must not run inside expire_timers (a
  // handler that blocks costs this thread the loop).
  post_for(l, c, [](loop& lp, connection& cp) { (void)h2_on_io(lp, cp); });
}

}  // namespace endless::http
