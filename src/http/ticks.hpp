// How long a handler ran, for the request-duration histogram (internal), at less than the
// cost of two clock_gettime() calls per request (about 1% of a keep-alive request's CPU).
// Where the kernel keeps CLOCK_MONOTONIC on the TSC itself (clocksource "tsc": invariant,
// synchronised across CPUs), a reading is one rdtsc, turned into nanoseconds with a rate
// measured against CLOCK_MONOTONIC. The rate is measured once per process, over at least
// 100 ms, by calibrate_step(), which each server's monitor thread calls on its 10 ms tick;
// until then, and on any other clocksource or CPU, readings are CLOCK_MONOTONIC itself.
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define ENDLESS_HAVE_TSC 1
#endif

namespace endless::http::ticks {

__extension__ typedef unsigned __int128 u128;

// Nanoseconds per tick in 32.32 fixed point; 0 until the rate is known (or never).
extern std::atomic<std::uint64_t> g_ns_per_tick;

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

// The time from `start` to now, in nanoseconds (0 if the clock seemed to go back).
inline std::uint64_t ns_since(reading start) noexcept {
#if defined(ENDLESS_HAVE_TSC)
  if (start.tsc) {
    std::uint64_t end = __rdtsc();
    if (end <= start.value) return 0;
    auto ns =
        (static_cast<u128>(end - start.value) * g_ns_per_tick.load(std::memory_order_relaxed)) >>
        32;
    return static_cast<std::uint64_t>(ns);
  }
#endif
  std::uint64_t end = monotonic_ns();
  return end > start.value ? end - start.value : 0;
}

// Measures the rate, a step at a time (cheap, thread-safe; nothing more once it is known).
void calibrate_step() noexcept;

}  // namespace endless::http::ticks
