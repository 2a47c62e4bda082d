// The HTTP server's insides (internal).
//   server.cpp           serve(), the loops' threads, accept, the monitor, drain and hammer
//   http1_connection.cpp one connection: read, parse, dispatch, write, timeouts
//
//   http2_connection.cpp one HTTP/2 connection (nghttp2): streams, flow control, GOAWAY
//   ../io/tls.cpp        certificates, SNI, ALPN; SSL reads and writes like recv/send
//
// A connection starts in phase::handshake on a TLS listener; ALPN then makes it HTTP/1.1
// (the default) or HTTP/2 (`h2` set). On a plain listener it starts as HTTP/1.1 and turns
// into HTTP/2 if h2c is on and its first bytes are the HTTP/2 connection preface.
//
// Ownership and threads. Each loop has one epoll instance and one owner thread at a time;
// only the owner touches the loop's connections, except:
//  - a connection whose handler is running (`busy`) belongs to the thread running it. If
//    that thread is handed off (the monitor gave the loop a new owner because the handler
//    blocked), it finishes the request, stores what is left in the connection and posts a
//    resume task; the new owner skips busy connections until then;
//  - hammer() and stop() may shutdown() any connection's socket from another thread, under
//    `conns_mu` (shutdown frees nothing; the owner then sees the error and closes).
#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../io/file_watch.hpp"
#include "../io/tls.hpp"
#include "endless/core/unique_fd.hpp"
#include "endless/core/upgrader.hpp"
#include "endless/http/server.hpp"
#include "http1_parser.hpp"
#include "metrics.hpp"

namespace endless::http {

struct loop;

// Timer lists: each holds connections waiting for one kind of deadline, all with the same
// duration, so appending at the tail keeps the list sorted and every operation is O(1).
enum class timer_kind : std::uint8_t {
  none,
  handshake,
  header,
  body,
  idle,
  write,
  linger,
  goaway,    // HTTP/2 drain: the final GOAWAY is due
  handover,  // draining: try again to pass an idle connection on (the channel was full)
  count
};

// TLS state of a connection (absent on plain connections).
struct tls_conn {
  SSL* ssl = nullptr;
  std::shared_ptr<const io::tls_set> certs;  // keeps the SNI contexts alive for this SSL
  std::string server_name, client_subject;
  bool read_wants_write = false;  // the last read waits for writability, not readability
  bool write_wants_read = false;  // and the last write for readability
  bool failed = false;            // a fatal TLS error: no close_notify
  ~tls_conn() { SSL_free(ssl); }
};

struct h2_session;  // http2_connection.cpp

struct connection {
  int fd = -1;
  std::uint64_t id = 0;
  std::string remote;

  enum class phase : std::uint8_t { handshake, head, body, lingering, closed } stage = phase::head;
  bool busy = false;          // a handler is running for it (maybe on a handed-off thread)
  bool closing = false;       // the last response is written; close (lingering) after it
  bool read_blocked = false;  // output is pending: stop reading until it drains
  bool sent_continue = false;
  bool active = false;        // between the first byte of a request and its response
  bool client_close = false;  // the client asked for the close (Connection: close, HTTP/1.0)
  bool discarded = false;     // bytes after the last request were dropped: linger
  bool fresh = true;          // no request served yet (h2c looks for the preface then)
  bool registered = false;
  bool handed = false;              // passed to the new process: the hammer must not touch it
  std::uint8_t handover_tries = 0;  // retries while the channel to the new process is full    // in
                                    // the loop's epoll set (a new connection is served first)
  std::size_t scan = 0;             // find_head_end's resume point
  std::size_t head_length = 0;
  std::size_t body_consumed = 0;  // chunked: bytes of `in` after the head already decoded
  std::string in;                 // unparsed bytes carried between reads
  std::string out;                // bytes not yet written
  std::string body;               // decoded chunked body
  h1::chunked_decoder chunked;
  server_metrics* metrics = nullptr;  // the server's, for the bytes and states counted here
  std::int8_t metric_state = -1;      // conn_state counted in the gauges (-1: none)
  tls_conn* tls = nullptr;            // owned; freed with the connection
  h2_session* h2 = nullptr;           // owned; set once the connection speaks HTTP/2

  // Posted tasks that name this connection: it is not freed before they ran. Atomic: a
  // handed-off handler thread posts (++) while the loop's new owner runs tasks (--).
  std::atomic<int> refs{0};

  // the loop's list of live connections (under loop::conns_mu)
  connection* conn_prev = nullptr;
  connection* conn_next = nullptr;
  bool linked = false;

  // timer list links
  timer_kind timer = timer_kind::none;
  std::int64_t deadline_ms = 0;
  connection* prev = nullptr;
  connection* next = nullptr;
};

struct timer_list {
  connection* head = nullptr;
  connection* tail = nullptr;
  std::int64_t duration_ms = 0;  // 0: not used
};

struct server_state;

struct loop {
  server_state* srv = nullptr;
  int index = 0;
  core::unique_fd epoll;
  core::unique_fd wake;      // eventfd: tasks posted
  core::unique_fd listener;  // this loop's copy; registered with EPOLLEXCLUSIVE
  bool accepting = false;
  std::int64_t accept_paused_until = 0;  // EMFILE back-off
  int accept_pauses = 0;                 // in the current episode of EMFILE (0: none)

  // (owner) timers and counts
  timer_list timers[static_cast<int>(timer_kind::count)];
  std::int64_t now_ms = 0;
  std::size_t conn_count = 0;
  bool draining = false;

  bool reported_drained = false;
  std::int64_t idle_ms = 0;     // the idle timer's duration when not draining
  std::uint64_t drain_gen = 0;  // which drain of the server this loop is in (drain_mu)

  // The batch of events taken from epoll. Threads claim them one by one (next_event), so
  // when the owner blocks in a handler the new owner carries on with the rest of the batch.
  epoll_event events[256];
  int event_count = 0;
  std::atomic<int> next_event{0};

  // Posted tasks, run by the owner.
  std::mutex tasks_mu;
  std::deque<std::function<void()>> tasks;
  void post(std::function<void()> task);

  // Closed connections, freed at the end of the batch (and once no posted task names them):
  // until then an event or a task that still points to one finds it marked closed.
  std::vector<connection*> graveyard;
  void sweep();

  // Every live connection, for hammer() and stop() from other threads: an intrusive list,
  // so accepting and closing allocate nothing.
  std::mutex conns_mu;
  connection* conns = nullptr;
  void link(connection* c);
  void unlink(connection* c);

  // Who owns the loop: (generation << 32) | (handler sequence << 1) | in_handler.
  // The owner publishes each handler call; the monitor takes the loop over (generation + 1)
  // from a thread stuck in the same call across two ticks.
  std::atomic<std::uint64_t> ownership{0};
};

struct server_state {
  server_options opts;
  std::unique_ptr<io::tls_store> tls;  // null: plain HTTP
  handler fn;
  std::function<void(std::string_view)> before_begin;
  std::function<void()> shutdown_initiated;
  std::function<void(std::uint64_t, conn_state)> conn_cb;
  std::vector<std::tuple<core::hook, int, std::function<void()>>> hooks;
  std::string network, address;  // for the registry
  core::upgrader* up = nullptr;
  std::string bound;  // the listener's local address: the key of a connection hand-over
  std::atomic<unsigned> next_adopt_loop{0};

  std::vector<std::unique_ptr<loop>> loops;
  std::atomic<std::uint64_t> next_conn_id{1};
  std::atomic<bool> stopping{false};
  std::atomic<bool> draining{false};  // set when the drain begins; read after each handler
  std::atomic<int> live_threads{0};
  std::atomic<std::uint64_t> tls_handshake_failures{0};
  std::unique_ptr<io::file_watch> cert_watch;
  std::mutex threads_mu;
  std::condition_variable threads_cv;
  std::thread monitor;
  std::mutex monitor_mu;
  std::condition_variable monitor_cv;

  // Drain bookkeeping.
  std::mutex drain_mu;
  std::function<void()> drain_done;
  int loops_drained = 0;
  std::uint64_t drain_gen = 0;  // one per begin_drain() and per resume()

  void log(std::string_view line) const;
  server_metrics metrics;
  void state_changed(connection& c, conn_state s) {
    metric_block& b = metrics.thread_block();
    if (c.metric_state >= 0) metric_block::add(b.conns[c.metric_state], std::int64_t{-1});
    c.metric_state = s == conn_state::closed ? std::int8_t{-1} : static_cast<std::int8_t>(s);
    if (c.metric_state >= 0) metric_block::add(b.conns[c.metric_state], std::int64_t{1});
    if (conn_cb) conn_cb(c.id, s);
  }
};

// http1_connection.cpp
void timer_arm(loop& l, connection& c, timer_kind k);
void timer_unlink(loop& l, connection& c);
// Runs fn(l, c) as a task of the loop; `c` is not freed before it ran (if it was closed
// meanwhile, fn is not called).
void post_for(loop& l, connection& c, void (*fn)(loop&, connection&));
std::string_view current_http_date();  // this second's IMF-fixdate (RFC 9110 §5.6.7)
// recv()/send() on the connection's transport (plain or TLS).
ssize_t conn_recv(connection& c, char* buf, std::size_t len);
ssize_t conn_send(connection& c, const char* buf, std::size_t len);
// Sends all of `bytes` (after nothing else), waiting for the socket up to `limit` (0: no
// limit). For a thread that owns the connection while a handler streams.
bool send_blocking(connection& c, std::string_view bytes, std::chrono::milliseconds limit);
void free_connection(connection* c);  // closes nothing: frees the struct and its state
// Serves what a new connection already sent, then registers it with epoll if it is still
// open; false when this thread lost the loop meanwhile (touch nothing of it then).
bool on_accepted(loop& l, int fd, const sockaddr_storage& peer, socklen_t len,
                 bool adopted = false);
// A connection the old process handed over: served and registered like a new one, but an
// idle keep-alive connection (idle timer, no h2c preface).
void on_adopted(loop& l, int fd);
// Whether `c` can be passed to the new process when it is idle (plain HTTP/1.1, hand-over on,
// a new process taking them).
bool can_hand_over(const loop& l, const connection& c);
// Handles readiness of `c`; returns false when this thread lost the loop (handed off).
bool on_io(loop& l, connection& c, std::uint32_t events);
void on_resume(loop& l, connection& c);
void expire_timers(loop& l);
void begin_loop_drain(loop& l);
// server.cpp: takes the listener out of this loop's epoll set. The socket stays open: the
// new process shares it, and a rollback accepts on it again.
void leave_listener(loop& l);
void end_loop_drain(loop& l);               // a rollback: accept again
std::int64_t next_deadline(const loop& l);  // -1: none
void close_connection(loop& l, connection& c);
std::int64_t coarse_now_ms();

// http2_connection.cpp
// Turns `c` into an HTTP/2 connection (after ALPN h2, or a preface on a plain listener).
void h2_start(loop& l, connection& c);
// Feeds bytes read from the connection; returns false when this thread lost the loop.
bool h2_on_data(loop& l, connection& c, std::string_view data);
// Sends what the session has to send, dispatches queued requests; false: lost the loop.
bool h2_on_io(loop& l, connection& c);
// Reads what the socket has and feeds it to the session; false: lost the loop.
bool h2_read(loop& l, connection& c);
void h2_goaway_due(loop& l, connection& c);
void h2_close_idle(loop& l, connection& c);
bool h2_resume(loop& l, connection& c);  // false: this thread lost the loop
void h2_begin_drain(loop& l, connection& c);
void h2_free(h2_session* s);

// server.cpp
void check_drained(loop& l);
// Runs the handler with the hand-off protocol; false when this thread lost the loop.
bool run_handler(loop& l, const request& req, response& res);
void run_loop(loop& l, std::uint64_t generation);

}  // namespace endless::http
