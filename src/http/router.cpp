#include "endless/http/router.hpp"

#include <unistd.h>
#include <chrono>
#include <ctime>
#include <stdexcept>

#include "detail.hpp"
#include "endless/core/upgrader.hpp"

namespace endless::http {

// One node per path segment. Literal children are few per node in real route tables, so a
// vector scanned in order beats a map.
struct router::node {
  std::vector<std::pair<std::string, std::unique_ptr<node>>> literals;
  std::unique_ptr<node> param;  // "{name}"
  std::string param_name;
  std::unique_ptr<node> wildcard;  // "{name...}": matches the rest
  std::string wildcard_name;
  std::vector<std::pair<std::string, handler>> handlers;  // by method; "*" for any
};

struct router::impl {
  node root;
  std::vector<middleware> chain;
};

router::router() : impl_(std::make_unique<impl>()) {}
router::~router() = default;
router::router(router&&) noexcept = default;
router& router::operator=(router&&) noexcept = default;

namespace {

bool is_param(std::string_view seg) {
  return seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
}

// Splits "/a/b/" into {"a", "b", ""}: a trailing slash is a segment of its own.
template <class Fn>
bool for_each_segment(std::string_view path, Fn&& fn) {
  if (path.empty() || path[0] != '/') return false;
  path.remove_prefix(1);
  for (;;) {
    std::size_t slash = path.find('/');
    if (!fn(path.substr(0, slash),
            slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1),
            slash == std::string_view::npos)) {
      return false;
    }
    if (slash == std::string_view::npos) return true;
    path.remove_prefix(slash + 1);
  }
}

}  // namespace

router& router::handle(std::string_view method, std::string_view pattern, handler h) {
  if (!h) throw std::invalid_argument("endless: empty handler for " + std::string(pattern));
  node* at = &impl_->root;
  std::string bad;
  bool ok = for_each_segment(pattern, [&](std::string_view seg, std::string_view, bool last) {
    if (is_param(seg)) {
      std::string_view name = seg.substr(1, seg.size() - 2);
      if (name.ends_with("...")) {
        if (!last) {
          bad = "a {name...} wildcard must be the last segment";
          return false;
        }
        name.remove_suffix(3);
        if (!at->wildcard) at->wildcard = std::make_unique<node>();
        at->wildcard_name = name;
        at = at->wildcard.get();
        return true;
      }
      if (at->param && at->param_name != name) {
        bad =
            "conflicting parameter names {" + at->param_name + "} and {" + std::string(name) + "}";
        return false;
      }
      if (!at->param) at->param = std::make_unique<node>();
      at->param_name = name;
      at = at->param.get();
      return true;
    }
    if (seg.find_first_of("{}") != std::string_view::npos) {
      bad = "a segment is either literal or a whole {parameter}";
      return false;
    }
    for (auto& [lit, child] : at->literals) {
      if (lit == seg) {
        at = child.get();
        return true;
      }
    }
    at->literals.emplace_back(std::string(seg), std::make_unique<node>());
    at = at->literals.back().second.get();
    return true;
  });
  if (!ok) {
    throw std::invalid_argument("endless: bad route pattern '" + std::string(pattern) + "'" +
                                (bad.empty() ? ": it must start with '/'" : ": " + bad));
  }
  for (const auto& [m, existing] : at->handlers) {
    if (m == method) {
      throw std::invalid_argument("endless: route " + std::string(method) + " " +
                                  std::string(pattern) + " registered twice");
    }
  }
  at->handlers.emplace_back(std::string(method), std::move(h));
  return *this;
}

router& router::use(middleware m) {
  impl_->chain.push_back(std::move(m));
  return *this;
}

namespace {

using params_t = std::vector<std::pair<std::string_view, std::string_view>>;

// Depth-first with backtracking: literal, then parameter, then wildcard.
template <class Node>
const Node* match(const Node* at, std::string_view rest, bool end, params_t& params) {
  if (end) return at->handlers.empty() && !at->wildcard ? nullptr : at;
  std::size_t slash = rest.find('/');
  std::string_view seg = rest.substr(0, slash);
  bool last = slash == std::string_view::npos;
  std::string_view next = last ? std::string_view() : rest.substr(slash + 1);
  for (const auto& [lit, child] : at->literals) {
    if (lit == seg) {
      if (const Node* n = match<Node>(child.get(), next, last, params)) return n;
    }
  }
  if (at->param && !seg.empty()) {
    params.emplace_back(at->param_name, seg);
    if (const Node* n = match<Node>(at->param.get(), next, last, params)) return n;
    params.pop_back();
  }
  if (at->wildcard) {
    params.emplace_back(at->wildcard_name, rest);
    return at->wildcard.get();
  }
  return nullptr;
}

}  // namespace

void router::operator()(const request& req, response& res) const {
  std::string_view path = req.path();
  params_t& params = detail::access::params(req);
  params.clear();
  const node* n = nullptr;
  if (!path.empty() && path[0] == '/') n = match<node>(&impl_->root, path.substr(1), false, params);
  // "/static/{path...}" also matches "/static" itself with an empty rest.
  if (n && n->handlers.empty() && n->wildcard) {
    params.emplace_back(n->wildcard_name, std::string_view());
    n = n->wildcard.get();
  }
  if (!n) {
    res.status(404).text("404 page not found\n");
    return;
  }
  const handler* h = nullptr;
  std::string_view method = req.method();
  for (const auto& [m, fn] : n->handlers) {
    if (m == method || m == "*" || (method == "HEAD" && m == "GET" && !h)) h = &fn;
    if (m == method) break;
  }
  if (!h) {
    std::string allow;
    for (const auto& [m, fn] : n->handlers) {
      allow += (allow.empty() ? "" : ", ") + m;
      if (m == "GET") allow += ", HEAD";
    }
    res.status(405).header("Allow", allow).text("405 method not allowed\n");
    return;
  }
  if (impl_->chain.empty()) {
    (*h)(req, res);
    return;
  }
  // Middleware: chain[0] outermost.
  std::function<void(std::size_t)> step;
  handler next_fn;
  std::size_t index = 0;
  next_fn = [&](const request& rq, response& rs) {
    if (index == impl_->chain.size()) {
      (*h)(rq, rs);
      return;
    }
    const middleware& m = impl_->chain[index++];
    m(rq, rs, next_fn);
  };
  next_fn(req, res);
}

namespace {
void to_stderr(std::string_view line) {
  std::string out(line);
  out += '\n';
  (void)!::write(2, out.data(), out.size());
}
}  // namespace

namespace {

// A quoted field of the access log: '"' and '\\' escaped, bytes outside printable ASCII
// as \xHH (nginx's escaping), so that a request can't forge a line or a field.
void append_escaped(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
}

// "[21/Nov/2026:20:17:25 +0000]", formatted once a second per thread.
std::string_view log_time(std::time_t now) {
  thread_local std::time_t cached_at = -1;
  thread_local char cached[40];
  thread_local std::size_t cached_len = 0;
  if (now != cached_at) {
    std::tm tm{};
    ::localtime_r(&now, &tm);
    cached_len = std::strftime(cached, sizeof cached, "[%d/%b/%Y:%H:%M:%S %z]", &tm);
    cached_at = now;
  }
  return {cached, cached_len};
}

}  // namespace

namespace {

void write_access_line(const std::function<void(std::string_view)>& sink,
                       const std::string& process, const request& req, int status,
                       std::uint64_t bytes, std::chrono::steady_clock::time_point start) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                  start)
                .count();
  std::string line;
  line.reserve(256);
  // The client's address without its port: "127.0.0.1:5341" and "[::1]:5341".
  std::string_view host = req.remote_address();
  if (auto colon = host.rfind(':'); colon != std::string_view::npos) host = host.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  line += host.empty() ? std::string_view("-") : host;
  line += " - - ";
  line += log_time(std::time(nullptr));
  line += " \"";
  append_escaped(line, req.method());
  line += ' ';
  append_escaped(line, req.target());
  line += req.version_major() == 2   ? " HTTP/2.0\" "
          : req.version_minor() == 0 ? " HTTP/1.0\" "
                                     : " HTTP/1.1\" ";
  line += std::to_string(status);
  line += ' ';
  line += std::to_string(bytes);
  for (const char* name : {"Referer", "User-Agent"}) {
    line += " \"";
    auto v = req.header(name);
    if (v) {
      append_escaped(line, *v);
    } else {
      line += '-';
    }
    line += '"';
  }
  line += process;
  line += std::to_string(us);
  sink(line);
}

}  // namespace

middleware access_log(std::function<void(std::string_view)> sink) {
  if (!sink) sink = to_stderr;
  const std::string process = " pid=" + std::to_string(::getpid()) +
                              " gen=" + std::to_string(core::this_process_generation()) + " us=";
  return [sink, process](const request& req, response& res, const handler& next) {
    auto start = std::chrono::steady_clock::now();
    try {
      next(req, res);
    } catch (...) {
      // The server answers 500 (or ends a stream it had begun); the line says so.
      write_access_line(sink, process, req, 500, 0, start);
      throw;
    }
    // Bytes of body on the wire: none for HEAD, 204 and 304 whatever the handler set.
    const int status = res.status();
    const bool bodiless = req.method() == "HEAD" || status == 204 || status == 304;
    write_access_line(sink, process, req, status, bodiless ? 0 : res.body_bytes(), start);
  };
}

middleware recovery(std::function<void(std::string_view)> sink) {
  if (!sink) sink = to_stderr;
  return [sink](const request& req, response& res, const handler& next) {
    try {
      next(req, res);
    } catch (const std::exception& e) {
      sink("handler for " + std::string(req.method()) + " " + std::string(req.target()) +
           " threw: " + e.what());
      if (!res.streaming()) res.status(500).text("500 internal server error\n");
    }
  };
}

}  // namespace endless::http
