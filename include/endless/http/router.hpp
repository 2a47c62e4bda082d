// router: method + path patterns to handlers, with middleware.
//
// Patterns are paths whose segments may be "{name}" (one segment) or, last, "{name...}"
// (the rest of the path, slashes included): "/items/{id}", "/static/{path...}". A literal
// segment wins over a parameter, a parameter over a wildcard. A path that matches a pattern
// but not the method gets 405 with Allow; no pattern at all, 404. GET routes answer HEAD.
// Middleware (use()) wraps every routed handler, first added outermost.
// Thread safety: build it before serving; after that it is only read, from any thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "endless/http/message.hpp"

namespace endless::http {

using handler = std::function<void(const request&, response&)>;
using middleware = std::function<void(const request&, response&, const handler& next)>;

class router {
 public:
  router();
  ~router();
  router(router&&) noexcept;
  router& operator=(router&&) noexcept;

  router& get(std::string_view pattern, handler h) { return handle("GET", pattern, std::move(h)); }
  router& post(std::string_view pattern, handler h) {
    return handle("POST", pattern, std::move(h));
  }
  router& put(std::string_view pattern, handler h) { return handle("PUT", pattern, std::move(h)); }
  router& patch(std::string_view pattern, handler h) {
    return handle("PATCH", pattern, std::move(h));
  }
  router& del(std::string_view pattern, handler h) {
    return handle("DELETE", pattern, std::move(h));
  }
  /// Any method name; "*" matches every method. Throws std::invalid_argument on a bad
  /// pattern or a route registered twice.
  router& handle(std::string_view method, std::string_view pattern, handler h);
  router& use(middleware m);

  /// Dispatches: the router is itself a handler.
  void operator()(const request& req, response& res) const;

 private:
  struct node;
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// Middleware: one access-log line per request, off unless mounted (router::use), to `sink`
/// (stderr when empty, one write per line). NCSA combined log format, then the process:
///   127.0.0.1 - - [21/Nov/2026:20:17:25 +0000] "GET /a?b=1 HTTP/1.1" 200 21 "-" "curl/7.88.1"
///   pid=7266 gen=2 us=57
/// (one line): client address (no port; "-" on a unix socket), the request line, status,
/// body bytes, Referer, User-Agent, the serving pid, its generation (upgrades that led to it)
/// and the handler's duration in microseconds. Quotes, backslashes and bytes outside
/// printable ASCII in the quoted fields are escaped as `\"`, `\\` and `\xHH`.
middleware access_log(std::function<void(std::string_view)> sink = {});
/// Middleware: an exception from the handler becomes a 500 and a log line (the server does
/// this anyway; use it to log through your own sink).
middleware recovery(std::function<void(std::string_view)> sink = {});

}  // namespace endless::http
