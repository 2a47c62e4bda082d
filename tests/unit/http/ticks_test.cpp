// The TSC's arithmetic: the rate measured over 100 ms and durations scaled by it.
#include "ticks.hpp"

#include <gtest/gtest.h>

#include <cstdint>

namespace endless::http::ticks {
namespace {

TEST(ticks, rate_and_scale) {
  // 3 GHz and 2.1 GHz TSCs, measured over 100 ms.
  for (std::uint64_t hz : {3'000'000'000ull, 2'100'000'000ull}) {
    const std::uint64_t rate = rate_of(100'000'000, hz / 10);
    ASSERT_NE(rate, 0u) << hz;
#if defined(ENDLESS_HAVE_TSC)
    EXPECT_NEAR(static_cast<double>(scale(hz, rate)), 1e9, 2) << "one second, " << hz;
    EXPECT_NEAR(static_cast<double>(scale(hz / 1'000'000 * 3, rate)), 3000, 1) << "3 µs, " << hz;
    EXPECT_NEAR(static_cast<double>(scale(hz * 3600, rate)), 3600e9, 3600 * 2)
        << "an hour (a handler that blocks): no overflow, " << hz;
#endif
  }
}

TEST(ticks, unusable_measurements_give_no_rate) {
  EXPECT_EQ(rate_of(100'000'000, 0), 0u) << "no ticks";
  EXPECT_EQ(rate_of(std::uint64_t{1} << 31, 300'000'000), 0u) << "over 2 s: would overflow";
  EXPECT_EQ(rate_of(100'000'000, 100'000), 0u) << "a 1 MHz TSC";
  EXPECT_NE(rate_of((std::uint64_t{1} << 31) - 1, 10'000'000'000), 0u);
}

}  // namespace
}  // namespace endless::http::ticks
