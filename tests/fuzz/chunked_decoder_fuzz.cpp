// libFuzzer target for the chunked body decoder (h1::chunked_decoder), fed the same bytes in
// one piece, byte by byte, and in pieces chosen by the input. The decoder keeps its state
// between feeds, so the split must not matter: the same result, the same decoded body and
// the same end of the body every time; `consumed` never exceeds what was fed (and is all of
// it unless the body ended or was refused); the body never exceeds the limit.
//
// Input: [limit][n][n piece lengths][body bytes...]. `limit` picks max_body; the piece
// lengths (0 included: an empty feed) are used in turn, the rest of the body goes at once.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "http1_parser.hpp"

using namespace endless::http::h1;

namespace {

[[noreturn]] void failed(const char* what, int line) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
  std::abort();
}
// A failed invariant names itself before the abort that libFuzzer reports.
#define CHECK(cond) ((cond) ? void() : failed(#cond, __LINE__))

struct outcome {
  result r = result::incomplete;
  std::string body;
  std::size_t consumed = 0;  // bytes of the input that belong to the chunked body
  int status = 0;
};

// Feeds `in` in pieces of the given lengths (cycled; empty: all at once).
outcome decode(chunked_decoder& d, std::string_view in, const std::vector<std::size_t>& pieces,
               std::size_t max_body) {
  outcome o;
  error err;
  // (The lengths cycle and one of them is not 0, so every round of them makes progress.)
  for (std::size_t k = 0;; ++k) {
    std::size_t left = in.size() - o.consumed;
    std::size_t n = pieces.empty() ? left : std::min(pieces[k % pieces.size()], left);
    std::size_t used = ~std::size_t{0};
    o.r = d.feed(in.substr(o.consumed, n), used, o.body, max_body, err);
    CHECK(used <= n);
    if (o.r == result::incomplete) CHECK(used == n);
    o.consumed += used;
    CHECK(o.body.size() <= max_body);
    if (o.r != result::incomplete || o.consumed == in.size()) break;
  }
  if (o.r == result::bad) {
    CHECK(err.status == 400 || err.status == 413);
    o.status = err.status;
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static constexpr std::size_t kLimits[] = {0, 1, 5, 16, 100, 1024, 65536, 1 << 20};
  if (size < 2) return 0;
  std::size_t max_body = kLimits[data[0] % 8];
  std::size_t n = data[1] % 16;
  if (size < 2 + n) return 0;
  std::vector<std::size_t> pieces;
  bool all_empty = true;
  for (std::size_t i = 0; i < n; ++i) {
    pieces.push_back(data[2 + i] % 64);
    all_empty = all_empty && pieces.back() == 0;
  }
  if (all_empty) pieces.push_back(1);  // a split that makes progress
  std::string_view in(reinterpret_cast<const char*>(data) + 2 + n, size - 2 - n);

  chunked_decoder d;
  outcome whole = decode(d, in, {}, max_body);
  if (whole.r == result::incomplete) CHECK(whole.consumed == in.size());

  // Reset gives a fresh decoder.
  d.reset();
  outcome again = decode(d, in, {}, max_body);
  CHECK(again.r == whole.r && again.body == whole.body && again.consumed == whole.consumed);

  chunked_decoder d1, d2;
  for (const outcome& o : {decode(d1, in, {1}, max_body), decode(d2, in, pieces, max_body)}) {
    CHECK(o.r == whole.r);
    if (o.r == result::bad) {
      // Refused: the same reason; a body limit is noticed before the data is appended when
      // it arrives at once, after the part that fits when it arrives in pieces.
      CHECK(o.status == whole.status);
      std::size_t common = std::min(o.body.size(), whole.body.size());
      CHECK(o.body.compare(0, common, whole.body, 0, common) == 0);
    } else {
      CHECK(o.body == whole.body);
      CHECK(o.consumed == whole.consumed);
    }
  }
  return 0;
}
