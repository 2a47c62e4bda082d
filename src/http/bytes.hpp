// Eight bytes at a time (internal): the scans of the request parser and of response fields.
// Header names, values and targets are a few dozen bytes; a byte loop with a table costs
// 4-6 instructions a byte, these about one. Exact: a word is flagged only if one of its
// bytes matches, and the lowest flagged byte is the first match (little-endian); otherwise
// the callers finish the word byte by byte.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace endless::http::bytes {

constexpr std::uint64_t kOnes = 0x0101010101010101ull;
constexpr std::uint64_t kHighs = 0x8080808080808080ull;

inline std::uint64_t load8(const char* p) noexcept {
  std::uint64_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// The high bit of each byte of `x` equal to `b` (and maybe of bytes above such a byte).
constexpr std::uint64_t equal_to(std::uint64_t x, unsigned char b) noexcept {
  std::uint64_t y = x ^ (kOnes * b);
  return (y - kOnes) & ~y & kHighs;
}

// The high bit of each byte of `x` below `n` (n <= 128), and maybe of bytes above one.
constexpr std::uint64_t less_than(std::uint64_t x, unsigned char n) noexcept {
  return (x - kOnes * n) & ~x & kHighs;
}

// The high bit of each byte of `x` at or above 0x7f, and maybe of the byte above one.
constexpr std::uint64_t at_least_del(std::uint64_t x) noexcept {
  return ((x + kOnes) | x) & kHighs;
}

// Offset of the first flagged byte of a non-zero mask from the functions above.
inline std::size_t first(std::uint64_t mask) noexcept {
  return static_cast<std::size_t>(std::countr_zero(mask)) / 8;
}

constexpr bool kLittle = std::endian::native == std::endian::little;

// How many bytes from `p` (at most `n`) are visible ASCII: 0x21..0x7e (request targets).
inline std::size_t visible_run(const char* p, std::size_t n) noexcept {
  std::size_t i = 0;
  if constexpr (kLittle) {
    for (; i + 8 <= n; i += 8) {
      std::uint64_t x = load8(p + i);
      std::uint64_t m = less_than(x, 0x21) | at_least_del(x);
      if (m) return i + first(m);
    }
  }
  for (; i < n; ++i) {
    auto c = static_cast<unsigned char>(p[i]);
    if (c <= 0x20 || c >= 0x7f) break;
  }
  return i;
}

// How many bytes from `p` (at most `n`) are field-value characters (RFC 9110 §5.5):
// VCHAR, obs-text, SP and HTAB; no other CTL, no DEL.
inline std::size_t field_run(const char* p, std::size_t n) noexcept {
  auto ok = [](unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); };
  std::size_t i = 0;
  if constexpr (kLittle) {
    while (i + 8 <= n) {
      std::uint64_t x = load8(p + i);
      if ((less_than(x, 0x20) | equal_to(x, 0x7f)) == 0) {
        i += 8;
        continue;
      }
      for (std::size_t end = i + 8; i < end; ++i) {  // a tab, or the end of the value
        if (!ok(static_cast<unsigned char>(p[i]))) return i;
      }
    }
  }
  for (; i < n; ++i) {
    if (!ok(static_cast<unsigned char>(p[i]))) break;
  }
  return i;
}

inline std::uint32_t load4(const char* p) noexcept {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

inline bool has_cr_or_lf(std::string_view s) noexcept {
  const char* p = s.data();
  const std::size_t n = s.size();
  auto any = [](std::uint64_t x) { return (equal_to(x, '\r') | equal_to(x, '\n')) != 0; };
  if (n >= 8) {
    for (std::size_t i = 0; i + 8 < n; i += 8) {
      if (any(load8(p + i))) return true;
    }
    return any(load8(p + n - 8));  // the last eight, overlapping the word before
  }
  if (n >= 4) {  // two overlapping halves
    return any(load4(p) | (std::uint64_t{load4(p + n - 4)} << 32));
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (p[i] == '\r' || p[i] == '\n') return true;
  }
  return false;
}

// Whether every byte of `s` is in `table`: eight lookups at a time, one branch for them.
inline bool all_in(const std::array<bool, 256>& table, std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  auto eight = [&table](const unsigned char* q) {
    return table[q[0]] & table[q[1]] & table[q[2]] & table[q[3]] & table[q[4]] & table[q[5]] &
           table[q[6]] & table[q[7]];
  };
  if (n >= 8) {
    for (std::size_t i = 0; i + 8 < n; i += 8) {
      if (!eight(p + i)) return false;
    }
    return eight(p + n - 8);  // the last eight, overlapping the group before
  }
  bool ok = true;
  for (std::size_t i = 0; i < n; ++i)
    ok &= table[p[i]];
  return ok;
}

// `s`, a token (RFC 9110 §5.6.2: no CTL), equals `lower`, a literal of lowercase letters and
// '-', ignoring ASCII case. OR-ing 0x20 lowercases a letter and leaves '-' alone; of the
// other bytes only CR would become '-', and no token holds one.
inline bool iequals_lower(std::string_view s, std::string_view lower) noexcept {
  if (s.size() != lower.size()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) | 0x20) != static_cast<unsigned char>(lower[i])) {
      return false;
    }
  }
  return true;
}

}  // namespace endless::http::bytes
