// How long a handler ran, for the request-duration histogram (internal), at less than the
// cost of two clock_gettime() calls per request (about 1% of a keep-alive request's CPU).
// Where the kernel keeps CLOCK_MONOTONIC on the TSC itself (clocksource "tsc": invariant,
// synchronised across CPUs), a reading is one rdtsc, turned into nanoseconds with a rate
// measured against CLOCK_MONOTONIC. calibrate_step(), which each server's monitor thread
// calls on its 10 ms tick, measures the rate once per process over at least 100 ms, then
// looks at the clocksource every 10 s and drops the TSC if the kernel did. Until the rate is
// known, and on any other clocksource or CPU, readings are CLOCK_MONOTONIC itself.
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) && defined(__SIZEOF_INT128__)
#include <x86intrin.h>
#define ENDLESS_HAVE_TSC 1
#endif

namespace endless::http::ticks {

// Nanoseconds per tick in 32.32 fixed point; 0 while the TSC is not used.
extern std::atomic<std::uint64_t> g_ns_per_tick;

// The rate from `ns` nanoseconds against `tsc` ticks (0: unusable). Exact for ns < 2^31.
constexpr std::uint64_t rate_of(std::uint64_t ns, std::uint64_t tsc) noexcept {
  if (tsc == 0 || ns >= (std::uint64_t{1} << 31)) return 0;
  const std::uint64_t rate = (ns << 32) / tsc;
  // Over 2^40: a TSC below 4 MHz, no such thing.
  return rate > (std::uint64_t{1} << 40) ? 0 : rate;
}

#if defined(ENDLESS_HAVE_TSC)
__extension__ typedef unsigned __int128 u128;

// `ticks` in nanoseconds at `rate` (rate_of's; ticks below 2^64, the result too).
constexpr std::uint64_t scale(std::uint64_t ticks, std::uint64_t rate) noexcept {
  return static_cast<std::uint64_t>((static_cast<u128>(ticks) * rate) >> 32);
}
#endif

struct reading {
  std::uint64_t value;  // ticks, or CLOCK_MONOTONIC ns
  bool tsc;
};

inline std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

inline reading now() noexcept {
#if defined(ENDLESS_HAVE_TSC)
  if (g_ns_per_tick.load(std::memory_order_relaxed) != 0) return {__rdtsc(), true};
#endif
  return {monotonic_ns(), false};
}

// The time from `start` to now, in nanoseconds (0 if the clock seemed to go back, or if
// the TSC was dropped meanwhile).
inline std::uint64_t ns_since(reading start) noexcept {
#if defined(ENDLESS_HAVE_TSC)
  if (start.tsc) {
    const std::uint64_t end = __rdtsc();
    return end > start.value
               ? scale(end - start.value, g_ns_per_tick.load(std::memory_order_relaxed))
               : 0;
  }
#endif
  const std::uint64_t end = monotonic_ns();
  return end > start.value ? end - start.value : 0;
}

// Measures the rate, a step at a time (cheap, thread-safe), then watches the clocksource.
void calibrate_step() noexcept;

}  // namespace endless::http::ticks
