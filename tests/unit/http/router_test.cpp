#include "endless/http/router.hpp"

#include <gtest/gtest.h>

#include "detail.hpp"

namespace endless::http {
namespace {

// Dispatches `method path` through `r`; returns status and body.
std::pair<int, std::string> call(const router& r, std::string_view method, std::string_view target,
                                 std::string* allow = nullptr) {
  request req;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query = target.find('?') == std::string_view::npos
                               ? std::string_view()
                               : target.substr(target.find('?') + 1);
  detail::access::set(req, method, target, path, query, nullptr, 0, 1, {}, "127.0.0.1:1");
  response res;
  r(req, res);
  if (allow) {
    const std::string& h = detail::access::headers(res);
    auto at = h.find("Allow: ");
    *allow = at == std::string::npos ? "" : h.substr(at + 7, h.find("\r\n", at) - at - 7);
  }
  return {res.status(), detail::access::body(res)};
}

handler echo(std::string tag) {
  return [tag](const request& req, response& res) {
    std::string out = tag;
    for (const char* p : {"id", "path", "name"}) {
      if (!req.param(p).empty()) out += std::string(" ") + p + "=" + std::string(req.param(p));
    }
    res.text(out);
  };
}

TEST(router, literal_param_wildcard_priority) {
  router r;
  r.get("/items/new", echo("new"));
  r.get("/items/{id}", echo("item"));
  r.get("/static/{path...}", echo("static"));
  r.get("/", echo("root"));
  EXPECT_EQ(call(r, "GET", "/items/new").second, "new");
  EXPECT_EQ(call(r, "GET", "/items/42").second, "item id=42");
  EXPECT_EQ(call(r, "GET", "/static/css/a.css").second, "static path=css/a.css");
  EXPECT_EQ(call(r, "GET", "/static").second, "static");
  EXPECT_EQ(call(r, "GET", "/").second, "root");
  EXPECT_EQ(call(r, "GET", "/items/42?x=1").second, "item id=42");
  EXPECT_EQ(call(r, "GET", "/items").first, 404);
  EXPECT_EQ(call(r, "GET", "/items/").first, 404) << "an empty segment is no {id}";
  EXPECT_EQ(call(r, "GET", "/nope").first, 404);
}

TEST(router, backtracks_from_a_literal_dead_end) {
  router r;
  r.get("/a/b/c", echo("abc"));
  r.get("/a/{name}/d", echo("and"));
  EXPECT_EQ(call(r, "GET", "/a/b/d").second, "and name=b");
  EXPECT_EQ(call(r, "GET", "/a/b/c").second, "abc");
}

TEST(router, method_not_allowed_lists_allow) {
  router r;
  r.get("/x", echo("get"));
  r.post("/x", echo("post"));
  std::string allow;
  EXPECT_EQ(call(r, "DELETE", "/x", &allow).first, 405);
  EXPECT_EQ(allow, "GET, HEAD, POST");
  EXPECT_EQ(call(r, "HEAD", "/x").second, "get") << "GET answers HEAD";
  EXPECT_EQ(call(r, "POST", "/x").second, "post");
}

TEST(router, any_method_and_bad_patterns) {
  router r;
  r.handle("*", "/any", echo("any"));
  EXPECT_EQ(call(r, "PURGE", "/any").second, "any");
  EXPECT_THROW(r.get("no-slash", echo("x")), std::invalid_argument);
  EXPECT_THROW(r.get("/a/{rest...}/b", echo("x")), std::invalid_argument);
  EXPECT_THROW(r.get("/a{b}", echo("x")), std::invalid_argument);
  r.get("/dup", echo("x"));
  EXPECT_THROW(r.get("/dup", echo("y")), std::invalid_argument);
  r.get("/p/{id}", echo("x"));
  EXPECT_THROW(r.get("/p/{other}/q", echo("y")), std::invalid_argument);
}

TEST(router, middleware_wraps_in_order) {
  router r;
  std::string trace;
  r.use([&](const request& q, response& s, const handler& next) {
    trace += "a<";
    next(q, s);
    trace += ">a";
  });
  r.use([&](const request& q, response& s, const handler& next) {
    trace += "b<";
    next(q, s);
    trace += ">b";
  });
  r.get("/", [&](const request&, response& s) {
    trace += "h";
    s.text("ok");
  });
  EXPECT_EQ(call(r, "GET", "/").second, "ok");
  EXPECT_EQ(trace, "a<b<h>b>a");
}

TEST(router, recovery_turns_an_exception_into_500) {
  router r;
  std::string logged;
  r.use(recovery([&](std::string_view l) { logged = l; }));
  r.get("/boom", [](const request&, response&) { throw std::runtime_error("kaput"); });
  EXPECT_EQ(call(r, "GET", "/boom").first, 500);
  EXPECT_NE(logged.find("kaput"), std::string::npos);
}

TEST(request, query_values_are_decoded) {
  request req;
  detail::access::set(req, "GET", "/", "/", "a=1&b=hello+world&c=%41%42&d&e=", nullptr, 0, 1, {},
                      "");
  EXPECT_EQ(req.query_value("a"), "1");
  EXPECT_EQ(req.query_value("b"), "hello world");
  EXPECT_EQ(req.query_value("c"), "AB");
  EXPECT_EQ(req.query_value("d"), "");
  EXPECT_EQ(req.query_value("e"), "");
  EXPECT_FALSE(req.query_value("z"));
}

TEST(response, refuses_framing_headers_and_header_injection) {
  response res;
  res.header("Content-Length", "5").header("X-A", "1").header("X-B", "a\r\nX-Evil: 1");
  EXPECT_EQ(detail::access::headers(res), "X-A: 1\r\n");
}

}  // namespace
}  // namespace endless::http
