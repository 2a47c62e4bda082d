#include "ticks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

namespace endless::http::ticks {

std::atomic<std::uint64_t> g_ns_per_tick{0};

#if defined(ENDLESS_HAVE_TSC)

namespace {

// The kernel's own verdict on the TSC: it keeps CLOCK_MONOTONIC on it only when the TSC is
// invariant and in step across CPUs, and moves off it when it finds otherwise.
bool kernel_uses_tsc() noexcept {
  int fd = ::open("/sys/devices/system/clocksource/clocksource0/current_clocksource",
                  O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[32] = {};
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  return n >= 3 && std::strncmp(buf, "tsc", 3) == 0 && (n == 3 || buf[3] == '\n');
}

// Both clocks at one moment: the TSC read on either side of clock_gettime, the tightest of
// a few tries (a preemption in between would shift the midpoint).
void read_both(std::uint64_t& tsc, std::uint64_t& ns) noexcept {
  std::uint64_t best = ~std::uint64_t{0};
  for (int i = 0; i < 5; ++i) {
    const std::uint64_t before = __rdtsc();
    const std::uint64_t t = monotonic_ns();
    const std::uint64_t span = __rdtsc() - before;
    if (span < best) {
      best = span;
      tsc = before + span / 2;
      ns = t;
    }
  }
}

}  // namespace

void calibrate_step() noexcept {
  static std::mutex mu;
  static enum class phase { start, measuring, watching, never } at = phase::start;
  static std::uint64_t tsc0 = 0, ns0 = 0, next_look = 0;
  std::lock_guard lock(mu);
  switch (at) {
    case phase::never:
      return;
    case phase::start:
      if (!kernel_uses_tsc()) {
        at = phase::never;
        return;
      }
      read_both(tsc0, ns0);
      at = phase::measuring;
      return;
    case phase::measuring: {
      std::uint64_t tsc = 0, ns = 0;
      read_both(tsc, ns);
      if (ns - ns0 < 100'000'000) return;
      const std::uint64_t rate = tsc > tsc0 ? rate_of(ns - ns0, tsc - tsc0) : 0;
      if (rate == 0) {  // late (a stalled monitor) or odd: start over
        read_both(tsc0, ns0);
        return;
      }
      g_ns_per_tick.store(rate, std::memory_order_relaxed);
      next_look = ns + 10'000'000'000;
      at = phase::watching;
      return;
    }
    case phase::watching: {
      const std::uint64_t ns = monotonic_ns();
      if (ns < next_look) return;
      next_look = ns + 10'000'000'000;
      if (!kernel_uses_tsc()) {
        g_ns_per_tick.store(0, std::memory_order_relaxed);
        at = phase::never;
      }
      return;
    }
  }
}

#else

void calibrate_step() noexcept {}

#endif

}  // namespace endless::http::ticks
