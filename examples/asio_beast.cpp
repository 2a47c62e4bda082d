// endless::core is not tied to our HTTP server: this Boost.Beast HTTP/1.1 server, on one
// Boost.Asio thread, takes its listener from the core, calls ready(), and drains when the
// core says so.
//   asio_beast --addr HOST:PORT [--pidfile FILE] [--hammer-time SECONDS]
//   GET /                 200 "Hello Zero-Downtime!\n"
//   GET /ping?seq=N&ms=M  waits M ms on a timer (the loop serves others meanwhile), then "pong-N"
//   GET /pid              the serving process's pid
// Every response carries X-Pid. SIGHUP restarts it with zero downtime; SIGTERM drains.
//
// What an Asio server owes the upgrader (class server below):
// - It accepts on the registry's socket, adopted with acceptor.assign(), and starts accepting
//   only after ready().
// - It accepts with accept4(SOCK_CLOEXEC) itself. Asio's accept() leaves the new socket
//   inheritable, and the upgrader's fork+exec would then give every open connection to the
//   new process, which holds it open after this one closes it: the client never sees the end.
// - begin_drain() and hammer() come from the upgrader's thread while the connections live on
//   the io thread: both post there, and hammer() waits, since it must return with everything
//   closed.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "endless/core/address.hpp"
#include "endless/core/upgrader.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// Drain step 2 (DESIGN.md): an idle keep-alive connection is closed only once it stayed idle
// this long, since closing it at once races a request the client may be sending on it.
constexpr auto kIdleGrace = 100ms;
constexpr std::size_t kBodyLimit = 64 * 1024;
constexpr int kAcceptBatch = 16;
constexpr long kMaxPingMs = 600000;

std::string_view query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    std::string_view pair = query.substr(0, query.find('&'));
    query.remove_prefix(std::min(query.size(), pair.size() + 1));
    std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
  }
  return {};
}

class session;

class server final : public endless::core::drainable {
 public:
  server(asio::io_context& ioc, endless::core::upgrader& up, endless::core::unique_fd listener)
      : ioc_(ioc),
        up_(up),
        acceptor_(ioc),
        backoff_(ioc),
        pid_(std::to_string(::getpid())),
        protocol_(family(listener.get()) == AF_INET6 ? tcp::v6() : tcp::v4()),
        address_(endless::core::local_address(listener.get())) {
    acceptor_.assign(protocol_, listener.get());
    (void)listener.release();  // the acceptor owns it now; until assign() succeeded, we did
    // O_NONBLOCK lives on the open file description, shared with the other process: either
    // may find the queue empty after a wake-up.
    acceptor_.non_blocking(true);
  }

  const std::string& local_address() const { return address_; }

  // After ready(): a new process that is rolled back must not take connections with it.
  void start() {
    asio::post(ioc_, [this] { accept_all(); });
  }

  void begin_drain(std::function<void()> done) override {
    asio::post(ioc_, [this, done = std::move(done)]() mutable {
      draining_ = true;
      done_ = std::move(done);
      // Drain step 1: close this process's copy; never shutdown(), the new process accepts
      // on the same socket.
      boost::system::error_code ignored;
      acceptor_.close(ignored);
      backoff_.cancel();
      drain_sessions();
      maybe_done();
    });
  }

  void hammer() noexcept override {
    try {
      if (ioc_.get_executor().running_in_this_thread()) return close_all();
      auto closed = std::make_shared<std::promise<void>>();
      std::future<void> f = closed->get_future();
      asio::post(ioc_, [this, closed] {
        close_all();
        closed->set_value();
      });
      // Bounded: nothing on the io thread blocks, but a stuck loop must not hang the upgrader.
      f.wait_for(5s);
    } catch (const std::exception& e) {
      up_.log(std::string("hammer: ") + e.what());
    }
  }

  // The io thread's side; session calls these.
  bool draining() const { return draining_; }
  const std::string& pid() const { return pid_; }
  void on_closed(session* s);

 private:
  void accept_all();
  void drain_sessions();
  void close_all() noexcept;

  // assign() must be told the family; the registry's socket may be either (or dual-stack).
  static int family(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return ss.ss_family;
  }

  void maybe_done() {
    if (draining_ && sessions_.empty() && done_) std::exchange(done_, nullptr)();
  }

  asio::io_context& ioc_;
  endless::core::upgrader& up_;
  tcp::acceptor acceptor_;
  asio::steady_timer backoff_;
  const std::string pid_;
  const tcp protocol_;
  const std::string address_;
  // Everything below: io thread only.
  std::map<session*, std::shared_ptr<session>> sessions_;
  std::function<void()> done_;
  bool draining_ = false;
};

// One connection. Every pending operation holds a shared_ptr to it; the server's map holds
// one more until the connection closes, so that the hammer can reach it.
class session : public std::enable_shared_from_this<session> {
 public:
  session(server& srv, tcp::socket socket)
      : srv_(srv),
        socket_(std::move(socket)),
        wait_(socket_.get_executor()),
        grace_(socket_.get_executor()) {}

  void start() { do_read(); }

  // Drain step 2: a connection busy with a request ends with its response (Connection:
  // close); one waiting for its next request is closed after the grace period.
  void drain() {
    if (reading_) arm_grace();
  }

  void close() noexcept {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    socket_.close(ignored);  // the pending read or write completes with operation_aborted
    wait_.cancel();
    grace_.cancel();
    srv_.on_closed(this);
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(kBodyLimit);
    reading_ = true;
    ++reads_;
    if (srv_.draining()) arm_grace();
    http::async_read(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    reading_ = false;
    grace_.cancel();
    if (ec) return close();  // EOF, a reset, a malformed request, or close() itself
    const http::request<http::string_body>& req = parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    if (req.method() != http::verb::get) return respond(http::status::method_not_allowed, "");
    std::string_view target(req.target().data(), req.target().size());
    std::size_t q = target.find('?');
    std::string_view path = target.substr(0, q);
    std::string_view query = q == std::string_view::npos ? "" : target.substr(q + 1);
    if (path == "/") return respond(http::status::ok, "Hello Zero-Downtime!\n");
    if (path == "/pid") return respond(http::status::ok, srv_.pid());
    if (path == "/ping") {
      std::string_view seq = query_value(query, "seq");
      std::string body = "pong-" + std::string(seq.empty() ? "0" : seq);
      std::string_view ms_text = query_value(query, "ms");
      long ms = 0;
      std::from_chars(ms_text.data(), ms_text.data() + ms_text.size(), ms);
      ms = std::clamp(ms, 0L, kMaxPingMs);
      if (ms == 0) return respond(http::status::ok, std::move(body));
      // A timer, not a sleep: this one thread serves every other connection meanwhile.
      wait_.expires_after(std::chrono::milliseconds(ms));
      wait_.async_wait(
          [self = shared_from_this(), body = std::move(body)](beast::error_code wait_ec) mutable {
            if (!wait_ec) self->respond(http::status::ok, std::move(body));
          });
      return;
    }
    respond(http::status::not_found, "not found\n");
  }

  void respond(http::status status, std::string body) {
    // Drain step 2 for a busy connection: once draining, this response is its last.
    keep_alive_ = keep_alive_ && !srv_.draining();
    res_ = {};
    res_.version(version_);
    res_.result(status);
    res_.set(http::field::content_type, "text/plain");
    res_.set("X-Pid", srv_.pid());
    if (status == http::status::method_not_allowed) res_.set(http::field::allow, "GET");
    res_.keep_alive(keep_alive_);
    res_.body() = std::move(body);
    res_.prepare_payload();
    http::async_write(
        socket_, res_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    if (ec) return close();
    if (keep_alive_) return do_read();
    // The FIN goes after the whole response, so the client reads all of it.
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    close();
  }

  void arm_grace() {
    grace_.expires_after(kIdleGrace);
    grace_.async_wait([self = shared_from_this(), read = reads_](beast::error_code ec) {
      if (!ec && self->reading_ && self->reads_ == read) self->on_grace();
    });
  }

  void on_grace() {
    // The first bytes of a request already here (parsed, buffered, or still in the socket):
    // serve it, and its response closes the connection.
    boost::system::error_code ignored;
    if (parser_->got_some() || buffer_.size() > 0 || socket_.available(ignored) > 0) return;
    close();
  }

  server& srv_;
  tcp::socket socket_;
  asio::steady_timer wait_;   // /ping
  asio::steady_timer grace_;  // the idle grace period of a drain
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  unsigned version_ = 11;
  bool keep_alive_ = false;
  bool reading_ = false;  // waiting for a request (the grace period applies)
  std::uint64_t reads_ = 0;
  bool closed_ = false;
};

void server::accept_all() {
  if (!acceptor_.is_open()) return;  // the drain came first
  for (int i = 0; i < kAcceptBatch; ++i) {
    int fd = ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // Empty (or the other process took it). Asio waits edge-triggered and never tries
        // first: a wait started while connections are queued may never fire, so it is
        // started only once accept4() found the queue empty.
        acceptor_.async_wait(tcp::acceptor::wait_read, [this](beast::error_code ec) {
          if (!ec) accept_all();
        });
        return;
      }
      // EMFILE, ENOBUFS: the connection stays queued; try again in a moment, not in a spin.
      up_.log(pid_ + " accept: " + std::strerror(errno));
      backoff_.expires_after(100ms);
      backoff_.async_wait([this](beast::error_code ec) {
        if (!ec) accept_all();
      });
      return;
    }
    tcp::socket socket(ioc_);
    boost::system::error_code ec;
    socket.assign(protocol_, fd, ec);
    if (ec) {
      ::close(fd);
      continue;
    }
    auto s = std::make_shared<session>(*this, std::move(socket));
    sessions_.emplace(s.get(), s);
    up_.add_connections(1);
    s->start();
  }
  // A full batch: more may be queued, and no new edge will say so. Let the others run first.
  asio::post(ioc_, [this] { accept_all(); });
}

void server::drain_sessions() {
  for (auto& [p, s] : sessions_)
    s->drain();
}

void server::on_closed(session* s) {
  if (sessions_.erase(s)) up_.add_connections(-1);
  maybe_done();
}

void server::close_all() noexcept {
  done_ = nullptr;  // the upgrader no longer waits for it
  draining_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  backoff_.cancel();
  // Their handlers still hold them; they run later, with operation_aborted, and find them closed.
  auto sessions = std::exchange(sessions_, {});
  for (auto& [p, s] : sessions)
    s->close();
  up_.add_connections(-static_cast<std::int64_t>(sessions.size()));
}

// attach() for a scope: the upgrader must never call a server that is gone.
class attachment {
 public:
  attachment(endless::core::upgrader& up, endless::core::drainable& d) : up_(up), d_(d) {
    up_.attach(d_);
  }
  ~attachment() { up_.detach(d_); }
  attachment(const attachment&) = delete;
  attachment& operator=(const attachment&) = delete;

 private:
  endless::core::upgrader& up_;
  endless::core::drainable& d_;
};

// Runs the io_context on a thread of its own until destroyed, while the main thread waits on
// the upgrader. A handler that throws is logged and the loop goes on.
class io_thread {
 public:
  io_thread(asio::io_context& ioc, endless::core::upgrader& up)
      : ioc_(ioc), work_(asio::make_work_guard(ioc)), thread_([&ioc, &up] {
          for (;;) {
            try {
              ioc.run();
              return;
            } catch (const std::exception& e) {
              up.log(std::string("asio_beast: handler threw: ") + e.what());
            }
          }
        }) {}
  ~io_thread() {
    work_.reset();
    ioc_.stop();
    thread_.join();
  }
  io_thread(const io_thread&) = delete;
  io_thread& operator=(const io_thread&) = delete;

 private:
  asio::io_context& ioc_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string addr = "127.0.0.1:8080";
  endless::core::options opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--addr") {
      addr = argv[i + 1];
    } else if (flag == "--pidfile") {
      opts.pid_file = argv[i + 1];
    } else if (flag == "--hammer-time") {
      try {
        opts.hammer_time =
            std::chrono::milliseconds(static_cast<long long>(std::stod(argv[i + 1]) * 1000));
      } catch (const std::exception&) {
        std::fprintf(stderr, "asio_beast: bad value '%s' for --hammer-time\n", argv[i + 1]);
        return 2;
      }
    } else {
      std::fprintf(stderr, "asio_beast: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "asio_beast: missing value for %s\n", argv[argc - 1]);
    return 2;
  }
  try {
    // Destroyed in reverse: detach, stop the loop, then the server, the upgrader, the loop.
    asio::io_context ioc(1);
    endless::core::upgrader up(opts);
    server srv(ioc, up, up.listen("tcp", addr));
    io_thread io(ioc, up);
    attachment attached(up, srv);
    up.log(std::to_string(::getpid()) + " " + srv.local_address());
    up.ready();
    srv.start();
    up.wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "asio_beast: %s\n", e.what());
    return 1;
  }
  return 0;
}
