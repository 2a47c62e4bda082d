#include "endless/core/upgrader.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "endless/core/error.hpp"
#include "protocol.hpp"
#include "startup.hpp"
#include "upgrader_impl.hpp"

namespace endless::core {
namespace {

std::atomic<bool> g_exists{false};

void stderr_sink(std::string_view line) {
  // Go's log format: "2006/01/02 15:04:05 message", one write per line.
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&now, &tm);
  size_t n = std::strftime(stamp, sizeof stamp, "%Y/%m/%d %H:%M:%S ", &tm);
  std::string out(stamp, n);
  out.append(line);
  out.push_back('\n');
  (void)!::write(STDERR_FILENO, out.data(), out.size());
}

bool hookable(int signo) {
  switch (signo) {
    case SIGHUP:
    case SIGINT:
    case SIGTERM:
    case SIGUSR1:
    case SIGUSR2:
    case SIGTSTP:
      return true;
    default:
      return false;
  }
}

}  // namespace

const char* to_string(state s) noexcept {
  switch (s) {
    case state::starting:
      return "starting";
    case state::serving:
      return "serving";
    case state::upgrading:
      return "upgrading";
    case state::draining:
      return "draining";
    case state::stopped:
      return "stopped";
  }
  return "?";
}

upgrader::impl::impl(options o) : opts(std::move(o)), pid(::getpid()) {
  if (!opts.log) opts.log = stderr_sink;
  const startup_env& env = startup().env;
  systemd = notifier(env.notify_socket);
  watchdog_usec = env.watchdog_usec;
  generation = env.generation;
  has_parent = env.from_parent && !env.error;
  max_draining = static_cast<std::size_t>(
      std::clamp(opts.max_draining, 1, static_cast<int>(lineage::kSlots) - 2));
  std::string note;
  family.init(startup().env, pid, generation, note);
  if (!note.empty()) startup().env.notes.push_back(note);
}

void upgrader::impl::log(std::string_view line) const {
  try {
    opts.log(line);
  } catch (...) {
    // A throwing sink must not take the lifecycle down.
  }
}

void upgrader::impl::log_pid(std::string_view text) const {
  log(std::to_string(pid) + " " + std::string(text));
}

void upgrader::impl::notify(std::string_view msg) const {
  if (auto ec = systemd.notify(msg)) {
    log_pid("can't notify systemd at " + systemd.path() + ": " + ec.message());
  }
}

void upgrader::impl::mailbox::post(command c) {
  {
    std::lock_guard lock(mu);
    queue.push_back(std::move(c));
  }
  std::uint64_t one = 1;
  (void)!::write(wake.get(), &one, sizeof one);
}

std::deque<upgrader::impl::command> upgrader::impl::mailbox::take() {
  std::uint64_t count;
  (void)!::read(wake.get(), &count, sizeof count);
  std::deque<command> batch;
  std::lock_guard lock(mu);
  batch.swap(queue);
  return batch;
}

void upgrader::impl::run_hooks(hook when, int signo) {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lock(mu);
    auto& table = when == hook::pre_signal ? pre_hooks : post_hooks;
    if (auto it = table.find(signo); it != table.end()) hooks = it->second;
  }
  for (auto& fn : hooks) {
    try {
      fn();
    } catch (const std::exception& e) {
      log_pid(std::string("signal hook threw: ") + e.what());
    } catch (...) {
      log_pid("signal hook threw");
    }
  }
}

void upgrader::impl::on_signal(int signo) {
  run_hooks(hook::pre_signal, signo);
  switch (signo) {
    case SIGHUP:
      do_upgrade(std::nullopt, "Received SIGHUP");
      break;
    case SIGINT:
    case SIGTERM:
      do_shutdown(signo == SIGINT ? "Received SIGINT" : "Received SIGTERM");
      break;
    case SIGUSR2:
      if (current.load() != state::draining) {
        log_pid("Received SIGUSR2, but not shutting down; ignored.");
        break;
      }
      log_pid("Received SIGUSR2.");
      do_hammer();
      if (probation) end_probation("hammered");
      break;
    default:
      // SIGUSR1, SIGTSTP: hooks only (endless logs them the same way)
      log_pid(signo == SIGUSR1 ? "Received SIGUSR1." : "Received SIGTSTP.");
      break;
  }
  run_hooks(hook::post_signal, signo);
}

std::optional<int> upgrader::impl::poll_timeout_ms() const {
  std::optional<clock::time_point> next;
  auto consider = [&](const std::optional<clock::time_point>& t) {
    if (t && (!next || *t < *next)) next = t;
  };
  if (upgrade) consider(upgrade->deadline);
  consider(hammer_at);
  consider(next_watchdog);
  if (probation) consider(probation->until);
  if (queued) {
    consider(queued->kill_at ? (queued->give_up ? queued->give_up : queued->kill_at)
                             : std::optional<clock::time_point>(queued->hammer_at));
  }
  consider(channel_wait_until);
  for (const auto& c : control_clients) {
    if (c.at == control_client::phase::command) consider(c.deadline);
  }
  consider(control_backoff);
  if (!retiring.empty() && !probation) consider(retire_at);
  if (!retiring.empty()) consider(retire_backoff);
  if (retiring.size() > kRetiringPolled) consider(clock::now() + std::chrono::milliseconds(10));
  if (!next) return std::nullopt;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(*next - clock::now()).count();
  return static_cast<int>(std::clamp<long long>(ms, 0, 60'000));
}

void upgrader::impl::on_timers() {
  auto now = clock::now();
  if (upgrade && now >= upgrade->deadline) {
    fail_upgrade(errc::ready_timeout, "new process " + std::to_string(upgrade->child.pid) +
                                          " was not ready within " +
                                          std::to_string(opts.upgrade_timeout.count()) + " ms");
  }
  if (hammer_at && now >= *hammer_at) do_hammer();
  if (channel_wait_until && now >= *channel_wait_until) finish();
  if (probation && now >= probation->until)
    end_probation("its " + std::to_string(opts.probation.count()) + " ms are up");
  if (queued) on_queued();
  if (!retiring.empty()) {
    if (retire_at && now >= *retire_at && !probation) {
      retire_listeners(true);
    } else if (retiring.size() > kRetiringPolled || (retire_backoff && now >= *retire_backoff)) {
      on_retiring_readable();  // those past the poll set, or after a failed accept
    }
  }
  if (next_watchdog && now >= *next_watchdog) {
    state s = current.load();
    // After a hand-over the new process pings; a final drain still owes systemd pings, and so
    // does a drain after a takeover (the new process pings its own unit, not ours).
    if (s == state::stopped || (s == state::draining && !final_shutdown && !handed_foreign)) {
      next_watchdog.reset();
    } else {
      notify("WATCHDOG=1");
      next_watchdog = now + std::chrono::microseconds(watchdog_usec / 2);
    }
  }
}

void upgrader::impl::loop() {
  for (;;) {
    // A connection from our SO_REUSEPORT queue that the new process can no longer take.
    if (retire_pending && !child_channel) on_retiring_readable();
    pollfd fds[8 + lineage::kSlots + 1 + kMaxControlClients + kRetiringPolled];
    int n = 0;
    fds[n++] = {box->wake.get(), POLLIN, 0};
    int sig_at = -1, channel_at = -1, child_at = -1;
    if (signals) {
      sig_at = n;
      fds[n++] = {signals->read_fd(), POLLIN, 0};
    }
    if (upgrade) {
      channel_at = n;
      fds[n++] = {upgrade->channel.get(), POLLIN, 0};
      child_at = n;
      fds[n++] = {upgrade->child.pidfd.get(), POLLIN, 0};
    }
    int probation_at = -1, child_channel_at = -1;
    if (probation && probation->child.pidfd) {
      probation_at = n;
      fds[n++] = {probation->child.pidfd.get(), POLLIN, 0};
    }
    if (child_channel) {
      child_channel_at = n;
      // POLLOUT: a connection from our SO_REUSEPORT queue waits for room.
      fds[n++] = {child_channel.get(), static_cast<short>(POLLIN | (retire_pending ? POLLOUT : 0)),
                  0};
    }
    // Our SO_REUSEPORT listeners being retired: what is left in their queues (not while one
    // connection already waits to be sent).
    const int retiring_at = n;
    int retiring_polled = 0;
    if (!retire_pending && !retire_backoff) {
      for (const auto& l : retiring) {
        if (retiring_polled == static_cast<int>(kRetiringPolled)) break;
        fds[n++] = {l.fd.get(), POLLIN, 0};
        ++retiring_polled;
      }
    }
    int parent_channel_at = -1;
    if (parent_channel) {
      parent_channel_at = n;
      fds[n++] = {parent_channel.get(), POLLIN, 0};
    }
    // A queued upgrade goes on when an older generation exits (on_timers() looks).
    // (Room is kept for the control socket and its clients below.)
    if (queued) {
      const int room = static_cast<int>(std::size(fds) - 1 - kMaxControlClients);
      for (int fd : family.elder_pidfds()) {
        if (n < room) fds[n++] = {fd, POLLIN, 0};
      }
    }
    int control_at = -1;
    if (control_open()) {
      control_at = n;
      fds[n++] = {control_listener.get(), POLLIN, 0};
    }
    // Clients still talking, by index (control_clients only grows during the round).
    std::size_t polled[kMaxControlClients];
    const int clients_at = n;
    std::size_t polled_count = 0;
    for (std::size_t i = 0; i < control_clients.size() && polled_count < kMaxControlClients; ++i) {
      if (control_clients[i].peer_done) continue;
      polled[polled_count++] = i;
      fds[n++] = {control_clients[i].fd.get(), POLLIN, 0};
    }
    auto timeout = poll_timeout_ms();
    int rc = ::poll(fds, static_cast<nfds_t>(n), timeout ? *timeout : -1);
    if (rc < 0 && errno != EINTR) {
      log_pid(std::string("upgrader poll failed: ") + std::strerror(errno));
      ::usleep(10'000);  // never spin
    }
    if (rc > 0 && sig_at >= 0 && fds[sig_at].revents) {
      for (int signo : signals->take())
        on_signal(signo);
    }
    if (rc > 0 && fds[0].revents) {
      auto batch = box->take();
      bool quit = false;
      for (auto& c : batch) {
        if (quit) {
          // Never leave a caller of ready()/upgrade()/detach() with a broken promise.
          if (c.what == command::kind::ready || c.what == command::kind::upgrade ||
              c.what == command::kind::detach) {
            c.result.set_value(errc::aborted);
          }
          continue;
        }
        quit = !run(c);
      }
      if (quit) return;
    }
    // The readiness byte wins over the deadline and over the exit seen in the same round:
    // a child that said 'R' and then died is the new server's problem, not a rollback.
    if (rc > 0 && upgrade && channel_at >= 0 && fds[channel_at].revents) on_channel_readable();
    if (rc > 0 && upgrade && child_at >= 0 && fds[child_at].revents) on_child_exited();
    // An exit wins over a 'D' seen in the same round only if it was a crash: the pidfd
    // first, its status decides.
    if (rc > 0 && probation && probation_at >= 0 && fds[probation_at].revents) {
      on_probation_child_exited();
    }
    bool retiring_ready = false;
    if (rc > 0 && child_channel && child_channel_at >= 0 && fds[child_channel_at].revents) {
      retiring_ready = fds[child_channel_at].revents & POLLOUT;
      if (fds[child_channel_at].revents & ~POLLOUT) on_child_channel_readable();
    }
    for (int k = 0; rc > 0 && k < retiring_polled; ++k)
      retiring_ready = retiring_ready || fds[retiring_at + k].revents;
    if (retiring_ready && !retiring.empty()) on_retiring_readable();
    if (rc > 0 && parent_channel && parent_channel_at >= 0 && fds[parent_channel_at].revents) {
      // A batch at a time, so that signals and commands are not held up by a long queue.
      for (int i = 0; i < 256 && parent_channel && on_parent_channel_readable(); ++i) {
      }
    }
    on_timers();
    if (rc > 0) {
      for (std::size_t k = 0; k < polled_count; ++k) {
        auto& c = control_clients[polled[k]];
        if (fds[clients_at + static_cast<int>(k)].revents && c.fd) on_control_readable(c);
      }
      if (control_at >= 0 && fds[control_at].revents) on_control_accept();
    }
    control_round();
    if (drained && current.load() != state::stopped) {
      {
        std::lock_guard lock(mu);
        set_state(state::stopped);
      }
      stopped_cv.notify_all();
    }
  }
}

bool upgrader::impl::run(command& c) {
  using kind = command::kind;
  switch (c.what) {
    case kind::ready:
      c.result.set_value(do_ready());
      break;
    case kind::upgrade:
      do_upgrade(std::move(c.result), "Upgrade requested");
      break;
    case kind::shutdown:
      do_shutdown("Shutdown requested");
      break;
    case kind::hammer:
      if (current.load() == state::draining) do_hammer();
      if (probation) end_probation("hammered");
      break;
    case kind::drained:
      on_service_drained(c.from, c.drain);
      break;
    case kind::detach:
      do_detach(c.from);
      c.result.set_value({});
      break;
    case kind::quit:
      return false;
  }
  return true;
}

void upgrader::impl::do_detach(const drainable* d) {
  {
    std::lock_guard lock(mu);
    std::erase(services, d);
  }
  on_service_drained(d, drain_epoch);  // a detached server no longer holds up the drain
}

// ---------------------------------------------------------------- public API

bool upgrader::impl::send_connection(int conn, std::string_view listener, char kind) noexcept {
  const bool fresh = kind == protocol::kNewConnection;
  if (!fresh && !child_takes.load(std::memory_order_acquire)) return false;
  if (listener.empty() || listener.size() > 255 || conn < 0) return false;
  char buf[2 + 255];
  buf[0] = kind;
  buf[1] = static_cast<char>(listener.size());
  std::memcpy(buf + 2, listener.data(), listener.size());
  iovec iov{buf, 2 + listener.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &conn, sizeof conn);
  std::lock_guard lock(handover_mu);
  if (!child_channel) return false;
  const auto& takes = fresh ? child_takes_new_for : child_takes_for;
  if (std::find(takes.begin(), takes.end(), listener) == takes.end()) {
    return false;  // the new process takes none of this listener's connections
  }
  ssize_t n;
  do {
    n = ::sendmsg(child_channel.get(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  // A stream socket takes a small message whole or not at all (it fits the buffer or EAGAIN).
  if (n != static_cast<ssize_t>(iov.iov_len)) return false;
  if (!fresh) handed++;
  return true;
}

bool upgrader::hand_over(int conn, std::string_view listener) noexcept {
  return impl_->send_connection(conn, listener);
}

bool upgrader::can_hand_over() const noexcept {
  return impl_->child_takes.load(std::memory_order_acquire);
}

std::uint64_t upgrader::handed_over() const noexcept {
  return impl_->handed.load();
}

std::uint64_t upgrader::adopted() const noexcept {
  return impl_->adopted_count.load();
}

upgrader::upgrader(options opts) {
  bool expected = false;
  if (!g_exists.compare_exchange_strong(expected, true)) {
    throw std::system_error(make_error_code(std::errc::device_or_resource_busy),
                            "only one endless::core::upgrader may exist per process");
  }
  try {
    impl_ = std::make_unique<impl>(std::move(opts));
    impl_->box->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    impl_->open_control();
    if (!impl_->box->wake) throw std::system_error(errno, std::system_category(), "eventfd");
    if (impl_->opts.handle_signals) {
      // The thread that builds the upgrader is usually the main thread, the kernel's first
      // choice for a process-wide signal, and the one that waits in wait().
      settle_signal_state();
      impl_->signals.emplace();
      for (int s : {SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2})
        impl_->signals->handle(s);
    }
    for (const auto& note : startup().env.notes)
      impl_->log_pid(note);
    {
      const startup_env& env = startup().env;
      bool share = impl_->opts.reuse_port || !env.reuseport.empty();
      if (share && env.takeover_failed) {
        // Never split the address with the process we failed to take over from.
        impl_->log_pid(
            "binding without SO_REUSEPORT: the takeover failed, and the address "
            "may still be served by the process it was to replace");
        share = false;
      }
      registry::instance().set_reuse_port(share, env.takeover_absent);
    }
    if (impl_->has_parent) {
      // Every process of a lineage names itself: the pid prefixes each line, this says which
      // generation it is (the access log carries both on every line).
      impl_->log_pid("generation " + std::to_string(impl_->generation) +
                     (startup().env.takeover ? ", took over from pid " : ", started by pid ") +
                     std::to_string(startup().parent));
    }
    {
      // Our thread starts with the lifecycle signals blocked and takes them (the caller's
      // mask) only once its signal state is settled (see settle_signal_state).
      sigset_t caller;
      ::pthread_sigmask(SIG_SETMASK, nullptr, &caller);
      impl_->thread = start_thread([this, caller] {
        settle_signal_state();
        ::pthread_sigmask(SIG_SETMASK, &caller, nullptr);
        impl_->loop();
      });
    }
    impl_->thread_id = impl_->thread.get_id();
  } catch (...) {
    impl_.reset();
    g_exists.store(false);
    throw;
  }
}

upgrader::~upgrader() {
  impl_->post({impl::command::kind::quit, {}, nullptr});
  impl_->thread.join();
  if (impl_->upgrade) {
    impl_->log_pid("upgrader destroyed during an upgrade; killing new process " +
                   std::to_string(impl_->upgrade->child.pid));
    (void)kill_and_reap(impl_->upgrade->child);
  }
  if (impl_->queued) {
    for (auto& w : impl_->queued->waiting)
      w.set_value(errc::aborted);
    impl_->queued.reset();
  }
  impl_.reset();  // restores signal handlers
  g_exists.store(false);
}

unique_fd upgrader::listen(std::string_view network, std::string_view address) {
  return registry::instance().listen(network, address);
}

unique_fd upgrader::listen(std::string_view network, std::string_view address,
                           std::error_code& ec) noexcept {
  return registry::instance().listen(network, address, ec);
}

void upgrader::attach(drainable& d) {
  std::lock_guard lock(impl_->mu);
  impl_->services.push_back(&d);
}

void upgrader::detach(drainable& d) {
  // Synchronous: once detach() returns, the upgrader's thread will not call `d` again.
  if (std::this_thread::get_id() == impl_->thread_id) {
    impl_->do_detach(&d);
    return;
  }
  impl::command c{impl::command::kind::detach, {}, &d};
  auto done = c.result.get_future();
  impl_->post(std::move(c));
  done.wait();
}

void upgrader::on(hook when, int signo, std::function<void()> fn) {
  if (!hookable(signo)) {
    throw std::invalid_argument("endless: no hooks for signal " + std::to_string(signo));
  }
  std::lock_guard lock(impl_->mu);
  auto& table = when == hook::pre_signal ? impl_->pre_hooks : impl_->post_hooks;
  table[signo].push_back(std::move(fn));
  // SIGTSTP keeps its default (stop, so Ctrl-Z works) until someone hooks it.
  if (signo == SIGTSTP && impl_->signals) impl_->signals->handle(SIGTSTP);
}

void upgrader::on_shutdown(std::function<void()> fn) {
  std::lock_guard lock(impl_->mu);
  impl_->shutdown_hooks.push_back(std::move(fn));
}

void upgrader::ready() {
  std::error_code ec;
  ready(ec);
  if (ec) throw_error(ec, "endless: ready() failed");
}

void upgrader::ready(std::error_code& ec) noexcept {
  if (std::this_thread::get_id() == impl_->thread_id) {
    ec = impl_->do_ready();
    return;
  }
  impl::command c{impl::command::kind::ready, {}, nullptr};
  auto result = c.result.get_future();
  impl_->post(std::move(c));
  ec = result.get();
}

std::future<std::error_code> upgrader::upgrade() {
  impl::command c{impl::command::kind::upgrade, {}, nullptr};
  auto result = c.result.get_future();
  impl_->post(std::move(c));
  return result;
}

void upgrader::shutdown() {
  impl_->post({impl::command::kind::shutdown, {}, nullptr});
}

void upgrader::hammer() {
  impl_->post({impl::command::kind::hammer, {}, nullptr});
}

void upgrader::wait() {
  std::unique_lock lock(impl_->mu);
  impl_->stopped_cv.wait(lock, [&] { return impl_->current.load() == state::stopped; });
}

bool upgrader::wait_for(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu);
  return impl_->stopped_cv.wait_for(lock, timeout,
                                    [&] { return impl_->current.load() == state::stopped; });
}

state upgrader::current_state() const noexcept {
  return impl_->current.load();
}
bool upgrader::has_parent() const noexcept {
  return impl_->has_parent;
}
std::uint64_t upgrader::generation() const noexcept {
  return impl_->generation;
}
std::uint64_t upgrader::upgrades() const noexcept {
  return impl_->upgrades.load();
}
std::uint64_t upgrader::failed_upgrades() const noexcept {
  return impl_->failed_upgrades.load();
}
std::vector<std::pair<std::string, std::uint64_t>> upgrader::upgrade_failures() const {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (int r = 0; r < impl::kReasons; ++r)
    out.emplace_back(impl::kFailureReasons[r], impl_->failures[r].load());
  return out;
}
void upgrader::on_carry(std::function<std::vector<std::pair<std::string, std::uint64_t>>()> fn) {
  std::lock_guard lock(impl_->mu);
  impl_->carriers.push_back(std::move(fn));
}
std::uint64_t upgrader::carried(std::string_view name) const {
  auto it = impl_->carried_in.find(name);
  return it == impl_->carried_in.end() ? 0 : it->second;
}
std::vector<generation_info> upgrader::generations() const {
  return impl_->family.snapshot();
}
drain_stats upgrader::drains() const noexcept {
  return impl_->family.drains();
}
void upgrader::add_connections(std::int64_t delta) noexcept {
  impl_->family.add_connections(delta);
}
void upgrader::log(std::string_view line) const {
  impl_->log(line);
}

}  // namespace endless::core
