// The eight-bytes-at-a-time scans against their byte-by-byte definitions: every special
// byte at every position of every length up to 40, so that each word boundary is crossed.
#include "bytes.hpp"

#include <gtest/gtest.h>

#include <string>

namespace endless::http::bytes {
namespace {

std::size_t visible_run_ref(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size() && static_cast<unsigned char>(s[i]) > 0x20 &&
         static_cast<unsigned char>(s[i]) < 0x7f)
    ++i;
  return i;
}

std::size_t field_run_ref(std::string_view s) {
  std::size_t i = 0;
  for (; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (!(c == '\t' || (c >= 0x20 && c != 0x7f))) break;
  }
  return i;
}

bool cr_or_lf_ref(std::string_view s) {
  return s.find_first_of("\r\n") != std::string_view::npos;
}

TEST(bytes, scans_match_their_definitions) {
  const unsigned char specials[] = {0x00, 0x01, '\t', '\n', '\r', 0x1f, ' ', '!',
                                    '~',  0x7f, 0x80, 0xa0, 0xfe, 0xff, 'a', ':'};
  const unsigned char fills[] = {'a', '\t', 0xc3};
  int checked = 0;
  for (std::size_t len = 0; len <= 40; ++len) {
    for (std::size_t at = 0; at < len; ++at) {
      for (unsigned char sp : specials) {
        for (unsigned char fill : fills) {
          std::string s(len, static_cast<char>(fill));
          s[at] = static_cast<char>(sp);
          if (at + 2 < len) s[at + 2] = '\xff';  // a carry or borrow above the byte
          EXPECT_EQ(visible_run(s.data(), s.size()), visible_run_ref(s)) << len << " " << at;
          EXPECT_EQ(field_run(s.data(), s.size()), field_run_ref(s)) << len << " " << at;
          EXPECT_EQ(has_cr_or_lf(s), cr_or_lf_ref(s)) << len << " " << at;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

TEST(bytes, all_in_a_table) {
  std::array<bool, 256> digits{};
  for (int c = '0'; c <= '9'; ++c)
    digits[c] = true;
  for (std::size_t len = 0; len <= 20; ++len) {
    std::string s(len, '7');
    EXPECT_TRUE(all_in(digits, s)) << len;
    for (std::size_t at = 0; at < len; ++at) {
      std::string t = s;
      t[at] = 'x';
      EXPECT_FALSE(all_in(digits, t)) << len << " " << at;
    }
  }
}

TEST(bytes, iequals_lower_ignores_ascii_case_only) {
  EXPECT_TRUE(iequals_lower("Content-Length", "content-length"));
  EXPECT_TRUE(iequals_lower("HOST", "host"));
  EXPECT_FALSE(iequals_lower("Hosts", "host"));
  EXPECT_FALSE(iequals_lower("Ho5t", "host"));
  EXPECT_FALSE(iequals_lower("Content_Length", "content-length"));
}

}  // namespace
}  // namespace endless::http::bytes
