#include "ticks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

namespace endless::http::ticks {

std::atomic<std::uint64_t> g_ns_per_tick{0};

namespace {

// The kernel's own verdict on the TSC: it keeps CLOCK_MONOTONIC on it only when the TSC is
// invariant and in step across CPUs (and it falls back when it finds otherwise).
bool kernel_uses_tsc() noexcept {
  int fd = ::open("/sys/devices/system/clocksource/clocksource0/current_clocksource",
                  O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[32] = {};
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  return n >= 3 && std::strncmp(buf, "tsc", 3) == 0 && (n == 3 || buf[3] == '\n');
}

}  // namespace

void calibrate_step() noexcept {
#if defined(ENDLESS_HAVE_TSC)
  if (g_ns_per_tick.load(std::memory_order_relaxed) != 0) return;
  static std::mutex mu;
  static enum class phase { start, measuring, never } at = phase::start;
  static std::uint64_t tsc0 = 0, ns0 = 0;
  std::lock_guard lock(mu);
  if (at == phase::never || g_ns_per_tick.load(std::memory_order_relaxed) != 0) return;
  // A reading of both clocks, the TSC taken on either side of clock_gettime.
  auto pair = [](std::uint64_t& tsc, std::uint64_t& ns) {
    std::uint64_t before = __rdtsc();
    ns = monotonic_ns();
    tsc = before + (__rdtsc() - before) / 2;
  };
  if (at == phase::start) {
    if (!kernel_uses_tsc()) {
      at = phase::never;
      return;
    }
    pair(tsc0, ns0);
    at = phase::measuring;
    return;
  }
  std::uint64_t tsc = 0, ns = 0;
  pair(tsc, ns);
  if (ns - ns0 < 100'000'000 || tsc <= tsc0) return;
  if (ns - ns0 >= (std::uint64_t{1} << 31)) {  // late (a stalled monitor): start over
    pair(tsc0, ns0);
    return;
  }
  const std::uint64_t rate = ((ns - ns0) << 32) / (tsc - tsc0);
  if (rate == 0 || rate > (std::uint64_t{1} << 40)) {  // a TSC below 4 MHz, or one too fast
    at = phase::never;
    return;
  }
  g_ns_per_tick.store(rate, std::memory_order_relaxed);
#endif
}

}  // namespace endless::http::ticks
