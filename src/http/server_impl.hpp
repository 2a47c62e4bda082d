// The HTTP server's insides (internal).
//   server.cpp           serve(), the loops' threads, accept, the monitor, drain and hammer
//   http1_connection.cpp one connection: read, parse, dispatch, write, timeouts
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
#include <mutex>
#include <string>
#include <vector>

#include "endless/core/unique_fd.hpp"
#include "endless/core/upgrader.hpp"
#include "endless/http/server.hpp"
#include "http1_parser.hpp"

namespace endless::http {

struct loop;

// Timer lists: each holds connections waiting for one kind of deadline, all with the same
// duration, so appending at the tail keeps the list sorted and every operation is O(1).
enum class timer_kind : std::uint8_t { none, header, body, idle, write, linger, count };

struct connection {
  int fd = -1;
  std::uint64_t id = 0;
  std::string remote;

  enum class phase : std::uint8_t { head, body, lingering, closed } stage = phase::head;
  bool busy = false;          // a handler is running for it (maybe on a handed-off thread)
  bool closing = false;       // the last response is written; close (lingering) after it
  bool read_blocked = false;  // output is pending: stop reading until it drains
  bool sent_continue = false;
  bool active = false;        // between the first byte of a request and its response
  bool client_close = false;  // the client asked for the close (Connection: close, HTTP/1.0)
  bool discarded = false;     // bytes after the last request were dropped: linger
  std::size_t scan = 0;       // find_head_end's resume point
  std::size_t head_length = 0;
  std::size_t body_consumed = 0;  // chunked: bytes of `in` after the head already decoded
  std::string in;                 // unparsed bytes carried between reads
  std::string out;                // bytes not yet written
  std::string body;               // decoded chunked body
  h1::chunked_decoder chunked;

  int refs = 0;  // posted tasks that name this connection: it is not freed before they ran

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

  // (owner) timers and counts
  timer_list timers[static_cast<int>(timer_kind::count)];
  std::int64_t now_ms = 0;
  std::size_t conn_count = 0;
  bool draining = false;

  bool reported_drained = false;

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
  handler fn;
  std::function<void(std::string_view)> before_begin;
  std::function<void()> shutdown_initiated;
  std::function<void(std::uint64_t, conn_state)> conn_cb;
  std::vector<std::tuple<core::hook, int, std::function<void()>>> hooks;
  std::string network, address;  // for the registry
  core::upgrader* up = nullptr;

  std::vector<std::unique_ptr<loop>> loops;
  std::atomic<std::uint64_t> next_conn_id{1};
  std::atomic<bool> stopping{false};
  std::atomic<bool> draining{false};  // set when the drain begins; read after each handler
  std::atomic<int> live_threads{0};
  std::mutex threads_mu;
  std::condition_variable threads_cv;
  std::thread monitor;
  std::mutex monitor_mu;
  std::condition_variable monitor_cv;

  // Drain bookkeeping.
  std::mutex drain_mu;
  std::function<void()> drain_done;
  int loops_drained = 0;

  void log(std::string_view line) const;
  void state_changed(connection& c, conn_state s) {
    if (conn_cb) conn_cb(c.id, s);
  }
};

// http1_connection.cpp
void on_accepted(loop& l, int fd, const sockaddr_storage& peer, socklen_t len);
// Handles readiness of `c`; returns false when this thread lost the loop (handed off).
bool on_io(loop& l, connection& c, std::uint32_t events);
void on_resume(loop& l, connection& c);
void expire_timers(loop& l);
void begin_loop_drain(loop& l);
std::int64_t next_deadline(const loop& l);  // -1: none
void close_connection(loop& l, connection& c);
std::int64_t coarse_now_ms();

// server.cpp
void check_drained(loop& l);
// Runs the handler with the hand-off protocol; false when this thread lost the loop.
bool run_handler(loop& l, const request& req, response& res);
void run_loop(loop& l, std::uint64_t generation);

}  // namespace endless::http
