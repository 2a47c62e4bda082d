// tiny_http: a deliberately small HTTP/1.1 server on endless::core, one thread per
// connection, for the core's demo and tests until endless::http lands. It shows what a
// server owes the upgrader: accept on a listener from the registry, stop accepting and let
// connections finish when the drain begins, close everything when the hammer falls.
// Not for production: no request bodies, no pipelining, no timeouts.
// Thread safety: start(), begin_drain() and hammer() may be called from any thread.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "endless/endless.hpp"

namespace tiny {

struct response {
  int status = 200;
  std::string body;
};

class server final : public endless::core::drainable {
 public:
  using handler = std::function<response(const std::string& target)>;

  server(endless::core::unique_fd listener, handler h)
      : listener_(std::move(listener)),
        handler_(std::move(h)),
        wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    // O_NONBLOCK is shared with the other process's copy; every server here wants it.
    ::fcntl(listener_.get(), F_SETFL, ::fcntl(listener_.get(), F_GETFL) | O_NONBLOCK);
  }

  ~server() {
    hammer();
    if (acceptor_.joinable()) acceptor_.join();
    // Connection threads touch `this` until their very last statement; wait for all of them
    // (the hammer has shut their sockets down and woken their sleeps).
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return running_ == 0; });
  }

  // The acceptor, and every connection thread it starts, runs with the lifecycle signals
  // blocked (a new thread inherits its creator's mask), so that SIGHUP and the rest reach the
  // upgrader's thread or the main thread. The upgrader's handler works in any thread, but under
  // TSan a signal is dropped if it lands while a thread makes its first blocking call or while
  // it exits (see settle_signal_state in src/core/signals.hpp), and every connection here is a
  // new, short-lived thread.
  void start() {
    sigset_t lifecycle, old;
    ::sigemptyset(&lifecycle);
    for (int s : {SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGTSTP})
      ::sigaddset(&lifecycle, s);
    ::pthread_sigmask(SIG_BLOCK, &lifecycle, &old);
    try {
      acceptor_ = std::thread([this] { accept_loop(); });
    } catch (...) {
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
      throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void begin_drain(std::function<void()> done) override {
    {
      std::lock_guard lock(mu_);
      done_ = std::move(done);
      draining_ = true;
    }
    wake();
    maybe_done();
  }

  void hammer() noexcept override {
    std::unique_lock lock(mu_);
    hammered_ = true;
    draining_ = true;
    for (int fd : connections_)
      ::shutdown(fd, SHUT_RDWR);
    cv_.notify_all();
    lock.unlock();
    wake();
    lock.lock();
    // Bounded: every connection thread is woken by the shutdown or the cv.
    cv_.wait_for(lock, std::chrono::seconds(5), [&] { return connections_.empty(); });
  }

  // Sleeps for `d`, or until the hammer falls (then returns false).
  bool sleep_for(std::chrono::milliseconds d) {
    std::unique_lock lock(mu_);
    return !cv_.wait_for(lock, d, [&] { return hammered_; });
  }

 private:
  static constexpr auto kIdleGrace = std::chrono::milliseconds(100);

  void wake() {
    std::uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }

  void accept_loop() {
    for (;;) {
      pollfd p[2] = {{listener_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      ::poll(p, 2, -1);
      {
        std::lock_guard lock(mu_);
        if (draining_) break;
      }
      for (;;) {
        int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) break;  // EAGAIN: the other process took it, or the queue is empty
        std::lock_guard lock(mu_);
        connections_.insert(fd);
        ++running_;
        std::thread([this, fd] { serve(fd); }).detach();
      }
    }
    // Drain step 1: stop accepting; the new process keeps the socket open.
    listener_.reset();
    {
      std::lock_guard lock(mu_);
      accepting_ = false;
    }
    maybe_done();
  }

  std::function<void()> take_done_locked() {
    if (!draining_ || accepting_ || !connections_.empty() || !done_) return nullptr;
    return std::exchange(done_, nullptr);
  }

  void maybe_done() {
    std::function<void()> done;
    {
      std::lock_guard lock(mu_);
      done = take_done_locked();
    }
    if (done) done();
  }

  bool draining() {
    std::lock_guard lock(mu_);
    return draining_;
  }

  void serve(int fd) {
    std::string buf;
    auto idle_since = std::chrono::steady_clock::now();
    for (;;) {
      size_t end = buf.find("\r\n\r\n");
      if (end == std::string::npos) {
        pollfd p{fd, POLLIN, 0};
        int rc = ::poll(&p, 1, 20);
        if (rc == 0) {
          // Drain step 2 for an idle connection: close it once it stayed idle a moment.
          if (buf.empty() && draining() &&
              std::chrono::steady_clock::now() - idle_since > kIdleGrace) {
            break;
          }
          continue;
        }
        char chunk[4096];
        ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n <= 0) break;
        buf.append(chunk, static_cast<size_t>(n));
        if (buf.size() > 16384) break;
        continue;
      }
      std::string head = buf.substr(0, end);
      buf.erase(0, end + 4);
      size_t sp1 = head.find(' ');
      size_t sp2 = head.find(' ', sp1 + 1);
      std::string target = sp1 == std::string::npos ? "/" : head.substr(sp1 + 1, sp2 - sp1 - 1);
      bool keep_alive = head.find("HTTP/1.1") != std::string::npos &&
                        head.find("Connection: close") == std::string::npos &&
                        head.find("connection: close") == std::string::npos;
      response r;
      try {
        r = handler_(target);
      } catch (const std::exception& e) {
        r = {500, std::string(e.what()) + "\n"};
      }
      if (draining()) keep_alive = false;
      std::string out =
          "HTTP/1.1 " + std::to_string(r.status) + (r.status == 200 ? " OK" : " Error") +
          "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(r.body.size()) +
          "\r\nX-Pid: " + std::to_string(::getpid()) +
          "\r\nConnection: " + (keep_alive ? "keep-alive" : "close") + "\r\n\r\n" + r.body;
      if (::send(fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) {
        break;
      }
      if (!keep_alive) break;
      idle_since = std::chrono::steady_clock::now();
    }
    std::function<void()> done;
    {
      std::lock_guard lock(mu_);
      connections_.erase(fd);
      ::close(fd);
      done = take_done_locked();
      cv_.notify_all();
    }
    if (done) done();
    std::lock_guard lock(mu_);
    --running_;  // the last touch of `this`; the destructor waits for it
    cv_.notify_all();
  }

  endless::core::unique_fd listener_;
  handler handler_;
  endless::core::unique_fd wake_;
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<int> connections_;
  std::function<void()> done_;
  bool draining_ = false;
  bool accepting_ = true;
  bool hammered_ = false;
  int running_ = 0;  // connection threads not finished yet
};

}  // namespace tiny
