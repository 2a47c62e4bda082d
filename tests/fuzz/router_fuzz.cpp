// libFuzzer target for the router's pattern matcher: a router built from fixed patterns plus
// fuzzed ones (bad patterns and duplicates must throw std::invalid_argument, nothing else),
// then fuzzed requests. Checks: every parameter is a view into the request's path (a
// segment parameter non-empty and without '/', a wildcard the rest of the path); 404, 405
// (with Allow) or the handler; the same request twice gives the same answer; a literal
// pattern requested with its own path and method reaches its own handler; middleware runs
// exactly for routed requests.
//
// Input: lines. The first one holds flags ('m' anywhere: with middleware). "+METHOD PATTERN"
// adds a route; any other line is a request "METHOD PATH" (no space: GET).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "detail.hpp"
#include "endless/http/router.hpp"

using namespace endless::http;

namespace {

[[noreturn]] void failed(const char* what, int line) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
  std::abort();
}
// A failed invariant names itself before the abort that libFuzzer reports.
#define CHECK(cond) ((cond) ? void() : failed(#cond, __LINE__))

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

struct route {
  std::string method, pattern;
};

constexpr std::pair<std::string_view, std::string_view> kFixed[] = {
    {"GET", "/"},
    {"GET", "/items/{id}"},
    {"POST", "/items/{id}"},
    {"GET", "/items/new"},
    {"PUT", "/items/{id}/edit"},
    {"GET", "/static/{path...}"},
    {"GET", "/users/{user}/posts/{post}"},
    {"DELETE", "/users/{user}"},
    {"GET", "/a/b/c"},
    {"GET", "/a/{name}/d"},
    {"*", "/any/{rest...}"},
    {"GET", "/trailing/"},
    {"PATCH", "/x/{p}/y/{q...}"},
};

struct seen {
  int route = -1;  // the handler that ran
  int middleware = 0;
};

bool with_middleware = false;
bool cr_in_method = false;

struct answer {
  int status = 0;
  int route = -1;
  std::string body, allow;
  bool has_allow = false;
  std::vector<std::pair<std::string, std::string>> params;
};

answer call(const router& r, seen& s, std::string_view method, std::string_view path) {
  request req;
  detail::access::set(req, method, path, path, {}, nullptr, 0, 1, {}, "127.0.0.1:1");
  response res;
  detail::access::reset(res, method == "HEAD", false, "today", nullptr);
  s = seen{};
  r(req, res);
  answer a;
  a.status = res.status();
  a.route = s.route;
  a.body = detail::access::body(res);
  const std::string& h = detail::access::headers(res);
  if (auto at = h.find("Allow: "); at != std::string::npos) {
    a.has_allow = true;
    a.allow = h.substr(at + 7, h.find("\r\n", at) - at - 7);
  }
  const auto& params = detail::access::params(req);
  for (std::size_t i = 0; i < params.size(); ++i) {
    std::string_view v = params[i].second;
    CHECK(inside(v, path));
    // Only the last parameter may be a wildcard: the others are one non-empty segment.
    if (i + 1 < params.size()) CHECK(!v.empty() && v.find('/') == std::string_view::npos);
    a.params.emplace_back(params[i].first, v);
  }
  if (a.route >= 0) {
    CHECK(a.status == 200 && s.middleware == (with_middleware ? 1 : 0));
    if (!params.empty() && params.back().second.find('/') != std::string_view::npos) {
      CHECK(params.back().second.data() + params.back().second.size() ==
            path.data() + path.size());  // a wildcard: the rest of the path
    }
  } else {
    CHECK(s.middleware == 0);
    CHECK(a.status == 404 || a.status == 405);
    // (Allow is empty when the one method there is "", which handle() accepts, and dropped
    // when a method holds a CR, which response::header() refuses.)
    if (a.status == 405) CHECK(a.has_allow || cr_in_method);
  }
  return a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> lines;
  while (!in.empty() && lines.size() < 256) {
    std::size_t eol = in.find('\n');
    lines.push_back(in.substr(0, eol));
    in.remove_prefix(eol == std::string_view::npos ? in.size() : eol + 1);
  }
  if (lines.empty()) return 0;
  with_middleware = lines[0].find('m') != std::string_view::npos;
  cr_in_method = false;

  seen s;
  router r;
  std::vector<route> routes;
  auto add = [&](std::string_view method, std::string_view pattern) {
    int id = static_cast<int>(routes.size());
    try {
      r.handle(method, pattern, [&s, id](const request& req, response& res) {
        s.route = id;
        res.text(std::string(req.path()));
      });
    } catch (const std::invalid_argument&) {
      return;
    }
    routes.push_back({std::string(method), std::string(pattern)});
    cr_in_method = cr_in_method || method.find('\r') != std::string_view::npos;
  };
  for (const auto& [method, pattern] : kFixed)
    add(method, pattern);
  CHECK(routes.size() == std::size(kFixed));
  if (with_middleware) {
    r.use([&s](const request& req, response& res, const handler& next) {
      ++s.middleware;
      next(req, res);
    });
  }

  std::vector<std::pair<std::string, std::string>> requests;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    bool is_route = !line.empty() && line[0] == '+';
    if (is_route) line.remove_prefix(1);
    std::size_t sp = line.find(' ');
    std::string_view method = sp == std::string_view::npos ? "GET" : line.substr(0, sp);
    std::string_view rest = sp == std::string_view::npos ? line : line.substr(sp + 1);
    if (is_route) {
      if (routes.size() < 64) add(method, rest);
    } else {
      requests.emplace_back(method, rest);
    }
  }

  for (const auto& [method, path] : requests) {
    // Copies that own their bytes, so that ASan sees any read past the path.
    std::string m = method, p = path;
    answer a = call(r, s, m, p);
    answer b = call(r, s, m, p);
    CHECK(a.status == b.status && a.route == b.route && a.body == b.body && a.allow == b.allow &&
          a.params == b.params);
    if (a.route >= 0) CHECK(a.body == p);
  }

  // A pattern without parameters is its own path: it reaches its own handler.
  for (std::size_t id = 0; id < routes.size(); ++id) {
    const route& rt = routes[id];
    if (rt.pattern.find('{') != std::string::npos) continue;
    answer a = call(r, s, rt.method, rt.pattern);
    CHECK(a.route == static_cast<int>(id) && a.params.empty());
  }
  return 0;
}
