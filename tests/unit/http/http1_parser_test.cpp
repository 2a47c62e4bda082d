#include "http1_parser.hpp"

#include <gtest/gtest.h>

namespace endless::http::h1 {
namespace {

using namespace std::string_view_literals;

struct outcome {
  result r;
  int status = 0;
  request_head head;
};

bool same_head(const request_head& a, const request_head& b) {
  if (a.headers.size() != b.headers.size()) return false;
  for (std::size_t i = 0; i < a.headers.size(); ++i) {
    if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value) {
      return false;
    }
  }
  return a.method == b.method && a.target == b.target && a.version_minor == b.version_minor &&
         a.length == b.length && a.body == b.body && a.content_length == b.content_length &&
         a.keep_alive == b.keep_alive && a.expect_continue == b.expect_continue;
}

// The one-pass way (parse_whole_head) on `in`, on `in` with a pipelined request after it,
// and on every prefix of `in`: where it says done, the exact way agrees on all of it.
void one_pass_agrees(std::string_view in, const limits& lim, const outcome& exact,
                     std::size_t head_len) {
  std::string more = std::string(in) + "GET /next HTTP/1.1\r\nHost: y\r\n\r\n";
  for (std::string_view data : {in, std::string_view(more)}) {
    request_head quick;
    if (parse_whole_head(data, quick, lim) != result::done) continue;
    ASSERT_EQ(exact.r, result::done) << "one pass took what the exact way refuses: " << in;
    EXPECT_EQ(quick.length, head_len) << in;
    EXPECT_TRUE(same_head(quick, exact.head)) << in;
  }
  for (std::size_t n = 0; n < in.size(); ++n) {
    request_head quick;
    if (parse_whole_head(in.substr(0, n), quick, lim) == result::done) {
      ASSERT_EQ(exact.r, result::done) << in;
      EXPECT_LE(head_len, n) << "a head cut short was taken whole: " << in.substr(0, n);
      EXPECT_EQ(quick.length, head_len) << in;
      EXPECT_TRUE(same_head(quick, exact.head)) << in;
    }
  }
}

// Runs find_head_end + parse_head over the whole input at once (and checks the one-pass
// way against it).
outcome parse(std::string_view in, const limits& lim = {}) {
  outcome o;
  std::size_t scan = 0, len = 0;
  error err;
  o.r = find_head_end(in, scan, len, lim, err);
  if (o.r == result::done) o.r = parse_head(in.substr(0, len), o.head, lim, err);
  o.status = err.status;
  one_pass_agrees(in, lim, o, len);
  return o;
}

struct bad_case {
  const char* name;
  std::string request;
  int status;
};

class rejects : public ::testing::TestWithParam<bad_case> {};

TEST_P(rejects, with_the_rfc_status) {
  auto o = parse(GetParam().request);
  EXPECT_EQ(o.r, result::bad) << GetParam().name;
  EXPECT_EQ(o.status, GetParam().status) << GetParam().name;
}

const std::string kHost = "Host: x\r\n";

INSTANTIATE_TEST_SUITE_P(
    table, rejects,
    ::testing::Values(
        bad_case{"bare_lf_request_line", "GET / HTTP/1.1\nHost: x\r\n\r\n", 400},
        bad_case{"bare_lf_header", "GET / HTTP/1.1\r\nHost: x\n\r\n", 400},
        bad_case{"bare_cr_in_header", "GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", 400},
        bad_case{"obs_fold", "GET / HTTP/1.1\r\n" + kHost + "X: a\r\n b\r\n\r\n", 400},
        bad_case{"space_before_colon", "GET / HTTP/1.1\r\n" + kHost + "X : a\r\n\r\n", 400},
        bad_case{"space_in_name", "GET / HTTP/1.1\r\n" + kHost + "X Y: a\r\n\r\n", 400},
        bad_case{"no_colon", "GET / HTTP/1.1\r\n" + kHost + "Xa\r\n\r\n", 400},
        bad_case{"empty_name", "GET / HTTP/1.1\r\n" + kHost + ": a\r\n\r\n", 400},
        bad_case{"nul_in_value", std::string("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n"sv),
                 400},
        bad_case{"ctl_in_value", "GET / HTTP/1.1\r\n" + kHost + "X: a\x01\r\n\r\n", 400},
        bad_case{"del_in_value", "GET / HTTP/1.1\r\n" + kHost + "X: a\x7f\r\n\r\n", 400},
        bad_case{"conflicting_lengths",
                 "POST / HTTP/1.1\r\n" + kHost + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
                 400},
        bad_case{"length_list_differs",
                 "POST / HTTP/1.1\r\n" + kHost + "Content-Length: 1, 2\r\n\r\n", 400},
        bad_case{"length_not_a_number",
                 "POST / HTTP/1.1\r\n" + kHost + "Content-Length: 1x\r\n\r\n", 400},
        bad_case{"length_plus", "POST / HTTP/1.1\r\n" + kHost + "Content-Length: +1\r\n\r\n", 400},
        bad_case{"length_negative", "POST / HTTP/1.1\r\n" + kHost + "Content-Length: -1\r\n\r\n",
                 400},
        bad_case{"length_overflow",
                 "POST / HTTP/1.1\r\n" + kHost + "Content-Length: 99999999999999999999999\r\n\r\n",
                 400},
        bad_case{"length_empty", "POST / HTTP/1.1\r\n" + kHost + "Content-Length: \r\n\r\n", 400},
        bad_case{"te_and_length",
                 "POST / HTTP/1.1\r\n" + kHost +
                     "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                 400},
        bad_case{"te_chunked_identity",
                 "POST / HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked, identity\r\n\r\n",
                 400},
        bad_case{"te_gzip_only", "POST / HTTP/1.1\r\n" + kHost + "Transfer-Encoding: gzip\r\n\r\n",
                 400},
        bad_case{"te_twice_chunked",
                 "POST / HTTP/1.1\r\n" + kHost + "Transfer-Encoding: chunked, chunked\r\n\r\n",
                 400},
        bad_case{"te_unknown_then_chunked",
                 "POST / HTTP/1.1\r\n" + kHost + "Transfer-Encoding: gzip, chunked\r\n\r\n", 501},
        bad_case{"te_in_http10", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        bad_case{"no_host_11", "GET / HTTP/1.1\r\n\r\n", 400},
        bad_case{"two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        bad_case{"version_20", "GET / HTTP/2.0\r\n" + kHost + "\r\n", 505},
        bad_case{"version_09", "GET / HTTP/0.9\r\n" + kHost + "\r\n", 505},
        bad_case{"version_lowercase", "GET / http/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"version_garbage", "GET / HTTP/1.x\r\n" + kHost + "\r\n", 400},
        bad_case{"version_missing", "GET /\r\n" + kHost + "\r\n", 400},
        bad_case{"double_space", "GET  / HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"method_with_slash", "GE/T / HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"target_not_origin", "GET foo HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"asterisk_not_options", "GET * HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"target_with_ctl", "GET /a\x01 HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"target_with_tab", "GET /a\tb HTTP/1.1\r\n" + kHost + "\r\n", 400},
        bad_case{"target_too_long",
                 "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n" + kHost + "\r\n", 414},
        bad_case{"leading_space_line", " GET / HTTP/1.1\r\n" + kHost + "\r\n", 400}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(parser, simple_get) {
  auto o = parse("GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-Thing:  padded value \t\r\n\r\n");
  ASSERT_EQ(o.r, result::done);
  EXPECT_EQ(o.head.method, "GET");
  EXPECT_EQ(o.head.target, "/a/b?x=1");
  EXPECT_EQ(o.head.version_minor, 1);
  ASSERT_EQ(o.head.headers.size(), 2u);
  ASSERT_NE(o.head.find("x-thing"), nullptr);
  EXPECT_EQ(o.head.find("X-THING")->value, "padded value");
  EXPECT_TRUE(o.head.keep_alive);
  EXPECT_EQ(o.head.body, body_kind::none);
}

TEST(parser, framing_and_connection) {
  auto cl = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
  ASSERT_EQ(cl.r, result::done) << "identical duplicates are allowed (RFC 9112 §6.3)";
  EXPECT_EQ(cl.head.body, body_kind::length);
  EXPECT_EQ(cl.head.content_length, 5u);
  auto te = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
  EXPECT_EQ(te.head.body, body_kind::chunked);
  auto close = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n");
  EXPECT_FALSE(close.head.keep_alive);
  auto v10 = parse("GET / HTTP/1.0\r\n\r\n");
  ASSERT_EQ(v10.r, result::done) << "HTTP/1.0 needs no Host";
  EXPECT_FALSE(v10.head.keep_alive);
  auto v10ka = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_TRUE(v10ka.head.keep_alive);
  auto expect =
      parse("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
  EXPECT_TRUE(expect.head.expect_continue);
  auto abs = parse("GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n");
  EXPECT_EQ(abs.r, result::done);
  auto options = parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(options.r, result::done);
  auto minor = parse("GET / HTTP/1.7\r\nHost: x\r\n\r\n");
  EXPECT_EQ(minor.r, result::done) << "a higher minor version is served as 1.1";
}

TEST(parser, head_limits) {
  limits lim;
  lim.max_header_bytes = 64;
  std::string big = "GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(100, 'a') + "\r\n\r\n";
  EXPECT_EQ(parse(big, lim).status, 431);
  std::string incomplete = "GET / HTTP/1.1\r\nX: " + std::string(100, 'a');
  EXPECT_EQ(parse(incomplete, lim).status, 431) << "an endless head is cut off too";
  std::string many = "GET / HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 101; ++i)
    many += "X" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(parse(many + "\r\n").status, 431);
}

// The one-pass way serves the common forms, and leaves the rest to the exact way.
TEST(parser, one_pass_takes_the_common_heads_whole) {
  const limits lim;
  for (std::string_view req :
       {"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"sv,
        "POST /items?id=7 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Tab:\ta\tb \r\n\r\n"sv,
        "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"sv}) {
    request_head quick;
    const std::string data = std::string(req) + "abc";  // the head's views point into it
    ASSERT_EQ(parse_whole_head(data, quick, lim), result::done) << req;
    EXPECT_EQ(quick.length, req.size());
    auto exact = parse(req);
    EXPECT_TRUE(same_head(quick, exact.head)) << req;
  }
  for (std::string_view other : {"GET / HTTP/1.1\r\nHost: x\r\n"sv,              // cut short
                                 "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"sv,  // absolute form
                                 "GET / HTTP/1.1\r\nHost: x\r\nX: a\x01\r\n\r\n"sv,  // a 400
                                 "GET / HTTP/2.0\r\nHost: x\r\n\r\n"sv}) {           // a 505
    request_head quick;
    EXPECT_EQ(parse_whole_head(other, quick, lim), result::incomplete) << other;
  }
}

TEST(parser, byte_by_byte_finds_the_same_end) {
  std::string req = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
  std::size_t scan = 0, len = 0;
  error err;
  result r = result::incomplete;
  std::size_t fed = 0;
  while (r == result::incomplete && fed < req.size()) {
    ++fed;
    r = find_head_end(std::string_view(req).substr(0, fed), scan, len, {}, err);
  }
  ASSERT_EQ(r, result::done);
  EXPECT_EQ(len, req.find("abc"));
  EXPECT_EQ(fed, len) << "found as soon as the last byte of the head arrived";
}

std::string decode_all(std::string_view in, result& r, int& status, std::size_t step,
                       std::size_t max = 1 << 20) {
  chunked_decoder d;
  std::string body;
  error err;
  r = result::incomplete;
  std::size_t pos = 0;
  while (pos < in.size() && r == result::incomplete) {
    std::size_t n = std::min(step, in.size() - pos);
    std::size_t used = 0;
    r = d.feed(in.substr(pos, n), used, body, max, err);
    pos += used;
    if (r == result::incomplete && used < n) break;
  }
  status = err.status;
  return body;
}

TEST(chunked, decodes_in_any_split) {
  std::string in = "5\r\nhello\r\n6 ;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
  for (std::size_t step : {1u, 2u, 3u, 7u, 1000u}) {
    result r;
    int status;
    EXPECT_EQ(decode_all(in, r, status, step), "hello world") << step;
    EXPECT_EQ(r, result::done) << step;
  }
}

TEST(chunked, rejects_bad_framing) {
  struct {
    const char* in;
    int status;
  } cases[] = {
      {"x\r\n", 400},                     // not hex
      {"5\nhello\r\n0\r\n\r\n", 400},     // bare LF after size
      {"5\r\nhelloX\r\n0\r\n\r\n", 400},  // data longer than size
      {"5\r\nhello\n0\r\n\r\n", 400},     // missing CR after data
      {"fffffffffffffffff\r\n", 400},     // 17 hex digits
      {"0\r\nX: y\n\r\n", 400},           // bare LF in trailer
      {"0\r\n folded\r\n\r\n", 400},      // obs-fold in trailer
      {"5;a\x01\r\nhello\r\n0\r\n\r\n", 400},
      {"5 6\r\nhello\r\n0\r\n\r\n", 400},  // BWS may only precede ';'
  };
  for (auto& c : cases) {
    result r;
    int status;
    decode_all(c.in, r, status, 1000);
    EXPECT_EQ(r, result::bad) << c.in;
    EXPECT_EQ(status, c.status) << c.in;
  }
}

TEST(chunked, body_limit_is_413) {
  result r;
  int status;
  decode_all("a\r\n0123456789\r\n0\r\n\r\n", r, status, 1000, 5);
  EXPECT_EQ(r, result::bad);
  EXPECT_EQ(status, 413);
}

}  // namespace
}  // namespace endless::http::h1
