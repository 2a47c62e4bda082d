#include "endless/http/server.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../core/signals.hpp"
#include "../io/nocancel.hpp"
#include "detail.hpp"
#include "endless/core/address.hpp"
#include "server_impl.hpp"
#include "ticks.hpp"

namespace endless::http {

// ------------------------------------------------------------------ options and setters

server_options& defaults() {
  static server_options the_defaults;
  return the_defaults;
}

struct server::impl final : core::drainable {
  // On the heap so that it can outlive the server when a handler thread is still running
  // at exit (see ~impl).
  std::unique_ptr<server_state> state = std::make_unique<server_state>();
  server_state& st = *state;

  void start(core::unique_fd listener);
  void start_accepting();
  void stop();
  void begin_drain(std::function<void()> done) override;
  void hammer() noexcept override;
  bool can_resume() const noexcept override { return true; }
  bool adopt(core::unique_fd& conn, std::string_view listener) override;
  std::string adopts_for() const override {
    return st.opts.hand_over_idle && !st.tls ? st.bound : std::string();
  }
  bool adopt_new(core::unique_fd& conn, std::string_view listener) override;
  std::string adopts_new_for() const override {
    return st.network == "unix" ? std::string() : st.bound;
  }
  void resume() override;
  void release_listeners() noexcept override;
  ~impl();
};

server::server(handler h) : impl_(std::make_unique<impl>()) {
  impl_->st.opts = defaults();
  impl_->st.fn = std::move(h);
}

server::server(const router& r)
    : server(handler([&r](const request& q, response& s) { r(q, s); })) {}

server::~server() = default;

server_options& server::options() noexcept {
  return impl_->st.opts;
}
server& server::addr(std::string a) {
  impl_->st.opts.addr = std::move(a);
  return *this;
}
server& server::read_timeout(std::chrono::milliseconds d) {
  impl_->st.opts.read_timeout = d;
  return *this;
}
server& server::read_header_timeout(std::chrono::milliseconds d) {
  impl_->st.opts.read_header_timeout = d;
  return *this;
}
server& server::write_timeout(std::chrono::milliseconds d) {
  impl_->st.opts.write_timeout = d;
  return *this;
}
server& server::idle_timeout(std::chrono::milliseconds d) {
  impl_->st.opts.idle_timeout = d;
  return *this;
}
server& server::max_header_bytes(std::size_t n) {
  impl_->st.opts.max_header_bytes = n;
  return *this;
}
server& server::max_body_bytes(std::size_t n) {
  impl_->st.opts.max_body_bytes = n;
  return *this;
}
server& server::hammer_time(std::chrono::milliseconds d) {
  impl_->st.opts.hammer_time = d;
  return *this;
}
server& server::threads(int n) {
  impl_->st.opts.threads = n;
  return *this;
}
server& server::pid_file(std::string path) {
  impl_->st.opts.pid_file = std::move(path);
  return *this;
}
server& server::before_begin(std::function<void(std::string_view)> fn) {
  impl_->st.before_begin = std::move(fn);
  return *this;
}
server& server::shutdown_initiated(std::function<void()> fn) {
  impl_->st.shutdown_initiated = std::move(fn);
  return *this;
}
server& server::on(core::hook when, int signo, std::function<void()> fn) {
  impl_->st.hooks.emplace_back(when, signo, std::move(fn));
  return *this;
}
server& server::on_conn_state(std::function<void(std::uint64_t, conn_state)> fn) {
  impl_->st.conn_cb = std::move(fn);
  return *this;
}

server& server::tls(std::string cert_file, std::string key_file) {
  impl_->st.opts.tls.cert_file = std::move(cert_file);
  impl_->st.opts.tls.key_file = std::move(key_file);
  return *this;
}
server& server::add_certificate(std::string cert_file, std::string key_file) {
  impl_->st.opts.tls.sni_certificates.emplace_back(std::move(cert_file), std::move(key_file));
  return *this;
}
server& server::client_ca(std::string ca_file, client_auth mode) {
  impl_->st.opts.tls.client_ca_file = std::move(ca_file);
  impl_->st.opts.tls.verify_client = mode;
  return *this;
}
server& server::h2c(bool on) {
  impl_->st.opts.http2.cleartext = on;
  return *this;
}

metrics_snapshot server::metrics() const {
  const server_state& st = impl_->st;
  metrics_snapshot m = st.metrics.totals();
  if (core::upgrader* up = st.up) {
    m.restarts = up->upgrades();
    m.restart_failures = up->upgrade_failures();
    m.generation = up->generation();
    m.generations = up->generations();
    for (const auto& g : m.generations) {
      if (!g.self) ++m.draining_processes;
    }
    core::drain_stats d = up->drains();
    m.drains = d.count;
    m.drain_seconds_sum = static_cast<double>(d.total_ms) / 1000;
    m.last_drain_seconds = static_cast<double>(d.last_ms) / 1000;
  }
  return m;
}

handler server::metrics_handler() const {
  return [this](const request&, response& res) {
    res.send(render_prometheus(metrics()), "text/plain; version=0.0.4; charset=utf-8");
  };
}

handler server::healthz_handler() const {
  return [](const request&, response& res) { res.text("ok\n"); };
}

handler server::readyz_handler() const {
  return [this](const request&, response& res) {
    core::upgrader* up = impl_->st.up;
    bool ready = !impl_->st.draining.load() && up && up->current_state() != core::state::draining &&
                 up->current_state() != core::state::stopped &&
                 up->current_state() != core::state::starting;
    if (ready) {
      res.text("ready\n");
    } else {
      res.status(503).text("draining\n");
    }
  };
}

std::vector<core::generation_info> server::generations() const {
  core::upgrader* up = impl_->st.up;
  return up ? up->generations() : std::vector<core::generation_info>{};
}

bool server::reload_certificates(std::error_code& ec) noexcept {
  ec.clear();
  server_state& st = impl_->st;
  if (!st.tls) {
    ec = std::make_error_code(std::errc::operation_not_permitted);
    return false;
  }
  try {
    std::string what;
    bool ok = st.tls->reload(what);
    st.log(what);
    if (!ok) ec = std::make_error_code(std::errc::invalid_argument);
    return ok;
  } catch (...) {
    ec = std::make_error_code(std::errc::not_enough_memory);
    return false;
  }
}

void server::reload_certificates() {
  server_state& st = impl_->st;
  if (!st.tls) throw std::logic_error("reload_certificates: this server has no TLS");
  std::string what;
  bool ok = st.tls->reload(what);
  st.log(what);
  if (!ok) throw std::runtime_error(what);
}

int server::listen_and_serve_tls(std::string_view addr, std::string cert_file,
                                 std::string key_file) {
  impl_->st.opts.addr = std::string(addr);
  tls(std::move(cert_file), std::move(key_file));
  return serve({this});
}

int listen_and_serve_tls(std::string_view addr, std::string cert_file, std::string key_file,
                         handler h) {
  server s(std::move(h));
  return s.listen_and_serve_tls(addr, std::move(cert_file), std::move(key_file));
}

int listen_and_serve_tls(std::string_view addr, std::string cert_file, std::string key_file,
                         const router& r) {
  server s(r);
  return s.listen_and_serve_tls(addr, std::move(cert_file), std::move(key_file));
}

int server::listen_and_serve() {
  return serve({this});
}
int server::listen_and_serve(std::string_view addr) {
  impl_->st.opts.addr = std::string(addr);
  return serve({this});
}

int listen_and_serve(std::string_view addr, handler h) {
  server s(std::move(h));
  return s.listen_and_serve(addr);
}

int listen_and_serve(std::string_view addr, const router& r) {
  server s(r);
  return s.listen_and_serve(addr);
}

void server_state::log(std::string_view line) const {
  if (up) {
    up->log(line);
  } else {
    std::string out(line);
    out += '\n';
    (void)!::write(2, out.data(), out.size());
  }
}

// ------------------------------------------------------------------ loops and threads

void loop::link(connection* c) {
  c->conn_next = conns;
  c->conn_prev = nullptr;
  if (conns) conns->conn_prev = c;
  conns = c;
  c->linked = true;
}

void loop::unlink(connection* c) {
  if (!c->linked) return;
  (c->conn_prev ? c->conn_prev->conn_next : conns) = c->conn_next;
  if (c->conn_next) c->conn_next->conn_prev = c->conn_prev;
  c->conn_prev = c->conn_next = nullptr;
  c->linked = false;
}

void loop::sweep() {
  std::erase_if(graveyard, [](connection* c) {
    if (c->refs.load(std::memory_order_relaxed) > 0) return false;
    free_connection(c);
    return true;
  });
}

void loop::post(std::function<void()> task) {
  {
    std::lock_guard lock(tasks_mu);
    tasks.push_back(std::move(task));
  }
  std::uint64_t one = 1;
  (void)!::write(wake.get(), &one, sizeof one);
}

namespace {

constexpr std::uint64_t kInHandler = 1;

int cpus_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

void register_listener(loop& l) {
  epoll_event ev{};
  // EPOLLEXCLUSIVE: one loop wakes per new connection, not all of them.
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.ptr = &l.listener;
  if (::epoll_ctl(l.epoll.get(), EPOLL_CTL_ADD, l.listener.get(), &ev) == 0) l.accepting = true;
}

}  // namespace

void leave_listener(loop& l) {
  if (l.listener && l.accepting) {
    ::epoll_ctl(l.epoll.get(), EPOLL_CTL_DEL, l.listener.get(), nullptr);
  }
  l.accepting = false;
  l.accept_paused_until = 0;
}

namespace {

void accept_batch(loop& l) {
  // A drain has begun: leave the listener now, not once the drain's task has waited behind
  // this batch and the next, so that the connections that arrive from here on wake the new
  // process. What is queued already (its wake-up may have come to us) is still taken here.
  if (!l.accepting) return;
  const bool draining = l.srv->draining.load(std::memory_order_relaxed);
  if (draining) leave_listener(l);
  for (int i = 0; i < 64 && (draining || l.accepting); ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(l.listener.get(), reinterpret_cast<sockaddr*>(&ss), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (l.accept_pauses) {
        l.srv->log("accept: fds available again after " + std::to_string(l.accept_pauses) +
                   " pause(s) of 100 ms");
        l.accept_pauses = 0;
      }
      if (!on_accepted(l, fd, ss, len)) return;  // a handler blocked: the loop moved on
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
    // Out of the epoll set already: what is left in the queue goes to the new process (a
    // shared socket) or to the core's retiring listener (SO_REUSEPORT), not to us.
    if (draining) return;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // Out of fds: stop accepting for a moment instead of spinning on a readable listener.
      // The queue keeps the connections; we take them once fds are free again.
      // Logged once per episode: a server out of fds for a minute writes two lines, not 600.
      if (l.accept_pauses++ == 0) {
        l.srv->log(std::string("accept: ") + std::strerror(errno) +
                   "; pausing accepts for 100 ms at a time until fds are free");
      }
      ::epoll_ctl(l.epoll.get(), EPOLL_CTL_DEL, l.listener.get(), nullptr);
      l.accepting = false;
      l.accept_paused_until = l.now_ms + 100;
      return;
    }
    l.srv->log(std::string("accept: ") + std::strerror(errno));
    return;
  }
}

// Another thread owns the loop now: its events (and tasks) go to the new owner.
bool still_owner(const loop& l, std::uint64_t generation) {
  return (l.ownership.load(std::memory_order_acquire) >> 32) == generation;
}

// Runs the posted tasks one at a time, so that if one of them loses the loop (a handler
// blocked) the rest stay queued for the new owner. Returns false then.
bool run_tasks(loop& l, std::uint64_t generation) {
  std::uint64_t count;
  (void)!::read(l.wake.get(), &count, sizeof count);
  for (;;) {
    std::function<void()> task;
    {
      std::lock_guard lock(l.tasks_mu);
      if (l.tasks.empty()) return true;
      task = std::move(l.tasks.front());
      l.tasks.pop_front();
    }
    task();
    if (!still_owner(l, generation)) {
      std::uint64_t one = 1;
      (void)!::write(l.wake.get(), &one, sizeof one);  // the new owner looks at the rest
      return false;
    }
  }
}

void spawn_loop_thread(loop& l, std::uint64_t generation) {
  server_state& st = *l.srv;
  st.live_threads.fetch_add(1);
  core::start_thread([&l, generation] { run_loop(l, generation); }).detach();
}

void monitor(server_state& st) {
  std::vector<std::uint64_t> seen(st.loops.size(), 0);
  bool warned = false;
  std::unique_lock lock(st.monitor_mu);
  while (!st.stopping.load()) {
    st.monitor_cv.wait_for(lock, std::chrono::milliseconds(10));
    ticks::calibrate_step();
    for (std::size_t i = 0; i < st.loops.size(); ++i) {
      loop& l = *st.loops[i];
      std::uint64_t v = l.ownership.load(std::memory_order_acquire);
      if ((v & kInHandler) && v == seen[i]) {
        // The same handler call across a whole tick: hand the loop to a new thread.
        if (st.live_threads.load() >= st.opts.max_threads) {
          if (!warned)
            st.log("all " + std::to_string(st.opts.max_threads) +
                   " loop threads are blocked in handlers; raise max_threads");
          warned = true;
          continue;
        }
        std::uint64_t next = ((v >> 32) + 1) << 32;
        if (l.ownership.compare_exchange_strong(v, next)) {
          spawn_loop_thread(l, next >> 32);
          // Tasks queued behind the blocked one have no wake-up of their own left.
          std::uint64_t one = 1;
          (void)!::write(l.wake.get(), &one, sizeof one);
          v = next;
        }
      }
      seen[i] = v;
    }
  }
}

}  // namespace

bool run_handler(loop& l, const request& req, response& res) {
  std::uint64_t cur = l.ownership.load(std::memory_order_relaxed);
  std::uint64_t seq = ((cur >> 1) + 1) & 0x7fffffffu;
  std::uint64_t busy = (cur & ~0xffffffffull) | (seq << 1) | kInHandler;
  l.ownership.store(busy, std::memory_order_release);
  const ticks::reading t0 = ticks::now();
  try {
    l.srv->fn(req, res);
  } catch (const std::exception& e) {
    l.srv->log("handler for " + std::string(req.method()) + " " + std::string(req.target()) +
               " threw: " + e.what());
    detail::access::set_failed(res);
  } catch (...) {
    l.srv->log("handler for " + std::string(req.method()) + " " + std::string(req.target()) +
               " threw");
    detail::access::set_failed(res);
  }
  const std::uint64_t ns = ticks::ns_since(t0);
  l.srv->metrics.count_request(req.method(), detail::access::ok(res) ? res.status() : 500, ns);
  std::uint64_t expected = busy;
  return l.ownership.compare_exchange_strong(expected, busy & ~kInHandler,
                                             std::memory_order_acq_rel);
}

namespace {

// Handles the events of the current batch not yet claimed; false when this thread lost the
// loop in one of them.
bool handle_batch(loop& l, std::uint64_t generation) {
  for (;;) {
    int i = l.next_event.fetch_add(1, std::memory_order_relaxed);
    if (i >= l.event_count) return true;
    void* p = l.events[i].data.ptr;
    if (p == &l.wake) {
      if (!run_tasks(l, generation)) return false;
    } else if (p == &l.listener) {
      accept_batch(l);
    } else {
      on_io(l, *static_cast<connection*>(p), l.events[i].events);
    }
    if (!still_owner(l, generation)) return false;
  }
}

}  // namespace

void run_loop(loop& l, std::uint64_t generation) {
  server_state& st = *l.srv;
  // A new owner first finishes the batch its predecessor was in the middle of.
  while (!st.stopping.load(std::memory_order_relaxed) && handle_batch(l, generation)) {
    expire_timers(l);
    if (!l.accepting && l.accept_paused_until && !l.draining && l.now_ms >= l.accept_paused_until) {
      l.accept_paused_until = 0;
      if (l.listener) register_listener(l);
    }
    std::int64_t deadline = next_deadline(l);
    if (!l.accepting && l.accept_paused_until && !l.draining) {
      deadline = deadline < 0 ? l.accept_paused_until : std::min(deadline, l.accept_paused_until);
    }
    int timeout =
        deadline < 0
            ? 1000
            : static_cast<int>(std::clamp<std::int64_t>(deadline - coarse_now_ms() + 1, 0, 1000));
    l.sweep();  // the batch is done: nothing in it points to a closed connection any more
    int n = io::epoll_wait(l.epoll.get(), l.events, 256, timeout);
    l.now_ms = coarse_now_ms();
    l.event_count = n > 0 ? n : 0;
    l.next_event.store(0, std::memory_order_relaxed);
  }
  st.metrics.release_thread_block();
  io::tls_thread_exit();
  // Notify under the lock: once stop() sees no live thread it may free `st`, so nothing of
  // it may be touched after the unlock.
  std::lock_guard lock(st.threads_mu);
  st.live_threads.fetch_sub(1);
  st.threads_cv.notify_all();
}

// ------------------------------------------------------------------ lifecycle

void server::impl::start(core::unique_fd listener) {
  int n = st.opts.threads > 0 ? st.opts.threads : cpus_available();
  std::int64_t idle =
      (st.opts.idle_timeout.count() ? st.opts.idle_timeout : st.opts.read_timeout).count();
  for (int i = 0; i < n; ++i) {
    auto l = std::make_unique<loop>();
    l->srv = &st;
    l->index = i;
    l->epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
    l->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!l->epoll || !l->wake) throw std::system_error(errno, std::system_category(), "epoll");
    l->listener.reset(::fcntl(listener.get(), F_DUPFD_CLOEXEC, 0));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &l->wake;
    ::epoll_ctl(l->epoll.get(), EPOLL_CTL_ADD, l->wake.get(), &ev);
    auto set = [&](timer_kind k, std::chrono::milliseconds d) {
      l->timers[static_cast<int>(k)].duration_ms = d.count();
    };
    set(timer_kind::handshake, st.opts.tls.handshake_timeout);
    set(timer_kind::goaway, st.opts.http2.goaway_wait);
    set(timer_kind::handover, std::chrono::milliseconds(10));
    set(timer_kind::header, st.opts.read_header_timeout);
    set(timer_kind::body, st.opts.read_timeout);
    set(timer_kind::write, st.opts.write_timeout);
    l->timers[static_cast<int>(timer_kind::idle)].duration_ms = idle;
    l->idle_ms = idle;
    l->timers[static_cast<int>(timer_kind::linger)].duration_ms = 2000;
    l->now_ms = coarse_now_ms();
    st.loops.push_back(std::move(l));
  }
  // O_NONBLOCK is shared with the other process's copy of the socket; every server here
  // accepts non-blocking.
  ::fcntl(listener.get(), F_SETFL, ::fcntl(listener.get(), F_GETFL) | O_NONBLOCK);
  // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one call instead of
  // one per connection. (Responses go out in one send; without it a response split over
  // segments could wait for a delayed ACK.) Fails harmlessly on unix sockets.
  int one = 1;
  ::setsockopt(listener.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // The option is the socket's, shared with the other process during an upgrade: set it
  // either way so that a new version that turned it off really has it off.
  int defer = st.opts.defer_accept ? 1 : 0;
  ::setsockopt(listener.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer);
  for (auto& l : st.loops)
    spawn_loop_thread(*l, 0);
  st.monitor = core::start_thread([this] { monitor(st); });
}

void server::impl::start_accepting() {
  for (auto& l : st.loops) {
    loop* lp = l.get();
    lp->post([lp] {
      if (!lp->draining && lp->listener) register_listener(*lp);
    });
  }
}

void server::impl::begin_drain(std::function<void()> done) {
  st.draining.store(true);
  if (st.shutdown_initiated) st.shutdown_initiated();
  {
    std::lock_guard lock(st.drain_mu);
    st.drain_done = std::move(done);
    st.loops_drained = 0;
    ++st.drain_gen;
  }
  for (auto& l : st.loops) {
    loop* lp = l.get();
    lp->post([lp] { begin_loop_drain(*lp); });
  }
}

void end_loop_drain(loop& l) {
  if (!l.draining) return;
  l.draining = false;
  l.reported_drained = false;
  l.now_ms = coarse_now_ms();
  l.timers[static_cast<int>(timer_kind::idle)].duration_ms = l.idle_ms;
  if (l.listener && !l.accepting) register_listener(l);
}

// A rollback (core probation): accept again. Connections already told to close (or sent a
// GOAWAY) still end; the rest carry on as if no drain had begun.
void server::impl::resume() {
  {
    std::lock_guard lock(st.drain_mu);
    st.drain_done = nullptr;  // that drain is over: its `done` must never run
    st.loops_drained = 0;
    ++st.drain_gen;
  }
  st.draining.store(false);
  for (auto& l : st.loops) {
    loop* lp = l.get();
    lp->post([lp] { end_loop_drain(*lp); });
  }
}

bool server::impl::adopt(core::unique_fd& conn, std::string_view listener) {
  // Also while draining (the old process sent it before it read our 'D'): served, then
  // passed on to our own new process or closed when idle, like the connections we hold.
  if (!st.opts.hand_over_idle || st.tls || listener != st.bound || st.loops.empty()) {
    return false;
  }
  loop* lp = st.loops[st.next_adopt_loop.fetch_add(1) % st.loops.size()].get();
  int fd = conn.release();
  lp->post([lp, fd] { on_adopted(*lp, fd); });
  return true;
}

bool server::impl::adopt_new(core::unique_fd& conn, std::string_view listener) {
  // Queued for the old process's socket and never read: served as if accepted here (TLS too).
  if (listener != st.bound || st.loops.empty()) return false;
  loop* lp = st.loops[st.next_adopt_loop.fetch_add(1) % st.loops.size()].get();
  int fd = conn.release();
  lp->post([lp, fd] {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) len = 0;
    (void)on_accepted(*lp, fd, ss, len);
  });
  return true;
}

void server::impl::release_listeners() noexcept {
  for (auto& l : st.loops) {
    loop* lp = l.get();
    lp->post([lp] {
      if (!lp->draining) return;  // rolled back meanwhile: still needed
      lp->listener.reset();
    });
  }
}

void check_drained(loop& l) {
  if (!l.draining || l.conn_count != 0 || l.reported_drained) return;
  l.reported_drained = true;
  server_state& st = *l.srv;
  std::function<void()> done;
  {
    std::lock_guard lock(st.drain_mu);
    // A loop still in a drain that a rollback ended (its end_loop_drain() not run yet)
    // counts for no later drain.
    if (l.drain_gen != st.drain_gen) return;
    if (++st.loops_drained == static_cast<int>(st.loops.size())) done = std::move(st.drain_done);
  }
  if (done) done();
}

void server::impl::hammer() noexcept {
  for (auto& l : st.loops) {
    std::lock_guard lock(l->conns_mu);
    for (connection* c = l->conns; c; c = c->conn_next) {
      if (!c->handed) ::shutdown(c->fd, SHUT_RDWR);  // a handed one is the new process's
    }
  }
}

void server::impl::stop() {
  st.cert_watch.reset();  // joins its thread: no reload (nor log line) after this
  st.stopping.store(true);
  { std::lock_guard lock(st.monitor_mu); }
  st.monitor_cv.notify_all();
  if (st.monitor.joinable()) st.monitor.join();
  for (auto& l : st.loops) {
    std::uint64_t one = 1;
    (void)!::write(l->wake.get(), &one, sizeof one);
  }
  // Handlers still blocked after the hammer may never return; do not wait for them forever.
  std::unique_lock lock(st.threads_mu);
  st.threads_cv.wait_for(lock, std::chrono::seconds(2),
                         [&] { return st.live_threads.load() == 0; });
}

server::impl::~impl() {
  stop();
  if (st.live_threads.load() != 0) {
    // A handler thread is still running and will touch its loop and the server's state when
    // it returns: leak them rather than free memory under it (the process is exiting).
    (void)state.release();
    return;
  }
  for (auto& l : st.loops) {
    std::lock_guard lock(l->conns_mu);
    while (connection* c = l->conns) {
      l->unlink(c);
      ::close(c->fd);
      free_connection(c);
    }
    for (connection* c : l->graveyard)
      free_connection(c);
    l->graveyard.clear();
  }
}

// ------------------------------------------------------------------ serve

namespace {

// Loads the server's certificates (throws with the reason: the process must not become
// ready without them) and watches their files.
void start_tls(server_state& st) {
  const tls_options& t = st.opts.tls;
  if (t.cert_file.empty() && t.key_file.empty() && t.sni_certificates.empty()) return;
  io::tls_config cfg;
  cfg.certificates.push_back({t.cert_file, t.key_file});
  for (const auto& [cert, key] : t.sni_certificates)
    cfg.certificates.push_back({cert, key});
  cfg.client_ca_file = t.client_ca_file;
  cfg.client_auth = t.verify_client == client_auth::none       ? io::client_auth_mode::none
                    : t.verify_client == client_auth::optional ? io::client_auth_mode::optional
                                                               : io::client_auth_mode::required;
  cfg.min_version = t.tls13_only ? TLS1_3_VERSION : TLS1_2_VERSION;
  cfg.ciphers = t.ciphers;
  cfg.ciphersuites = t.ciphersuites;
  cfg.offer_h2 = st.opts.http2.enabled;
  auto store = std::make_unique<io::tls_store>();
  std::string why;
  if (!store->load(cfg, why)) throw std::runtime_error("TLS: " + why);
  st.tls = std::move(store);
  if (t.watch_files) {
    std::vector<std::string> files;
    for (const auto& c : cfg.certificates) {
      files.push_back(c.cert_file);
      files.push_back(c.key_file);
    }
    server_state* sp = &st;
    try {
      st.cert_watch = std::make_unique<io::file_watch>(files, [sp] {
        std::string what;
        sp->tls->reload(what);
        sp->log(what);
      });
    } catch (const std::exception& e) {
      // The certificates are loaded; only their automatic reload is missing. Not a reason
      // to refuse to start (and fail an upgrade): say so and go on.
      st.log(std::string("TLS: can't watch the certificate files, reload_certificates() only: ") +
             e.what());
    }
  }
}

void split_addr(const std::string& addr, std::string& network, std::string& address) {
  if (addr.rfind("unix:", 0) == 0) {
    network = "unix";
    address = addr.substr(5);
  } else {
    network = "tcp";
    address = addr;
  }
}

}  // namespace

int serve(std::initializer_list<server*> servers) {
  if (servers.size() == 0) return 1;
  // Every connection is an fd: raise the soft limit to the hard one, as Go's runtime does.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  const server_options& first = (*servers.begin())->impl_->st.opts;
  core::options o;
  o.hammer_time = first.hammer_time;
  o.upgrade_timeout = first.upgrade_timeout;
  o.probation = first.probation;
  o.max_draining = first.max_draining;
  o.max_draining_wait = first.max_draining_wait;
  o.pid_file = first.pid_file;
  o.reuse_port = first.reuse_port;
  o.control_socket = first.control_socket;
  o.log = first.log;
  std::vector<server::impl*> started;
  try {
    core::upgrader up(o);
    // Declared after `up`, so the servers stop (and their threads stop logging through it)
    // before the upgrader goes away, on every path out of this block.
    struct stopper {
      std::vector<server::impl*>& servers;
      std::initializer_list<server*> all;
      ~stopper() {
        for (auto* s : servers)
          s->stop();
        for (server* s : all) {
          s->impl_->st.cert_watch.reset();
          s->impl_->st.up = nullptr;
        }
      }
    } guard{started, servers};
    for (server* s : servers) {
      server_state& st = s->impl_->st;
      st.up = &up;
      split_addr(st.opts.addr, st.network, st.address);
      start_tls(st);
      for (auto& [when, signo, fn] : st.hooks)
        up.on(when, signo, fn);
    }
    for (server* s : servers) {
      server_state& st = s->impl_->st;
      core::unique_fd fd = up.listen(st.network, st.address);
      std::string bound =
          st.network == "unix" ? "unix:" + st.address : core::local_address(fd.get());
      st.bound = bound;
      s->impl_->start(std::move(fd));
      started.push_back(s->impl_.get());
      if (st.before_begin) {
        st.before_begin(bound);
      } else {
        up.log(std::to_string(::getpid()) + " " + bound);
      }
      up.attach(*s->impl_);
    }
    for (server* s : servers) {
      server_state& st = s->impl_->st;
      // Counters carry over upgrades, keyed by the listener (inherited: the same address).
      std::string prefix = "http|" + st.bound + "|";
      up.on_carry([&st, prefix] { return st.metrics.carry(prefix); });
    }
    up.ready();
    for (server* s : servers)
      s->impl_->st.metrics.set_base(up, "http|" + s->impl_->st.bound + "|");
    // Accept only once ready: a new process that is rolled back never holds connections.
    for (auto* s : started)
      s->start_accepting();
    up.wait();
    for (auto* s : started)
      up.detach(*s);
  } catch (const std::exception& e) {
    std::string line = std::string("endless: ") + e.what() + "\n";
    (void)!::write(2, line.data(), line.size());
    return 1;
  }
  // A handler still blocked after the hammer (and the 2 s stop() gave it) may wake up any
  // time and use what the program is about to destroy (the router, the handler's captures).
  // Go ends every goroutine when main returns; end the process now, the same way.
  std::size_t stuck = 0;
  for (server* s : servers)
    stuck += s->impl_->st.live_threads.load();
  if (stuck != 0) {
    std::string line = std::to_string(::getpid()) + " " + std::to_string(stuck) +
                       " handler thread(s) still running after the hammer; exiting now\n";
    (void)!::write(2, line.data(), line.size());
    std::fflush(nullptr);
    std::_Exit(0);
  }
  return 0;
}

}  // namespace endless::http
