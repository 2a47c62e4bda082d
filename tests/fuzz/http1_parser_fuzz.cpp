// libFuzzer target for the HTTP/1.1 parser: the head scanner, the head parser and the
// chunked decoder, fed the input whole and in pieces. Checks invariants beyond "no crash":
// views point into the input, a parsed head never claims more bytes than it was given,
// feeding byte by byte finds the same head end as feeding at once, the one-pass way agrees
// with the exact one wherever it takes a head, decoded bodies respect the limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http1_parser.hpp"

using namespace endless::http::h1;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  limits lim;
  lim.max_header_bytes = 4096;
  lim.max_target = 1024;
  lim.max_headers = 32;

  std::size_t scan = 0, head_len = 0;
  error err;
  result whole = find_head_end(in, scan, head_len, lim, err);

  // Byte by byte must agree with all at once.
  std::size_t scan2 = 0, head_len2 = 0;
  error err2;
  result pieces = result::incomplete;
  for (std::size_t n = 1; n <= size && pieces == result::incomplete; ++n) {
    pieces = find_head_end(in.substr(0, n), scan2, head_len2, lim, err2);
  }
  check(pieces == whole);
  if (whole == result::done) check(head_len2 == head_len && head_len <= size);
  if (whole == result::bad) check(err.status == 400 || err.status == 431);

  if (whole == result::done) {
    request_head head;
    error perr;
    result r = parse_head(in.substr(0, head_len), head, lim, perr);
    if (r == result::done) {
      check(inside(head.method, in) && inside(head.target, in));
      for (const auto& h : head.headers)
        check(inside(h.name, in) && inside(h.value, in));
      check(head.version_minor >= 0 && head.version_minor <= 9);
      check(head.headers.size() <= lim.max_headers);
    } else {
      check(r == result::bad && perr.status >= 400 && perr.status <= 505);
    }
  }

  // The one-pass way: where it takes a head whole, the exact way takes the same head.
  {
    request_head quick;
    if (parse_whole_head(in, quick, lim) == result::done) {
      check(whole == result::done && quick.length == head_len);
      request_head exact;
      error perr;
      check(parse_head(in.substr(0, head_len), exact, lim, perr) == result::done);
      check(quick.method == exact.method && quick.target == exact.target &&
            quick.version_minor == exact.version_minor && quick.body == exact.body &&
            quick.content_length == exact.content_length && quick.keep_alive == exact.keep_alive &&
            quick.expect_continue == exact.expect_continue &&
            quick.headers.size() == exact.headers.size());
      for (std::size_t i = 0; i < quick.headers.size(); ++i) {
        check(quick.headers[i].name.data() == exact.headers[i].name.data() &&
              quick.headers[i].name.size() == exact.headers[i].name.size() &&
              quick.headers[i].value.data() == exact.headers[i].value.data() &&
              quick.headers[i].value.size() == exact.headers[i].value.size());
      }
    }
  }

  // The chunked decoder on whatever follows, in two splits.
  std::string_view body_in = whole == result::done ? in.substr(head_len) : in;
  for (std::size_t step : {std::size_t{1}, std::size_t{7}, size + 1}) {
    chunked_decoder d;
    std::string body;
    error cerr;
    result r = result::incomplete;
    std::size_t pos = 0;
    while (pos < body_in.size() && r == result::incomplete) {
      std::size_t used = 0;
      std::size_t n = std::min(step, body_in.size() - pos);
      r = d.feed(body_in.substr(pos, n), used, body, 1024, cerr);
      check(used <= n);
      pos += used;
      if (r == result::incomplete && used < n) break;
    }
    check(body.size() <= 1024);
    if (r == result::bad) check(cerr.status == 400 || cerr.status == 413);
  }
  return 0;
}
