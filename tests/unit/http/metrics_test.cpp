// The Prometheus page's number formats (render_prometheus): seconds to the nanosecond
// without trailing zeros, histogram bounds as Prometheus clients write them.
#include "metrics.hpp"

#include <gtest/gtest.h>

#include <string>

namespace endless::http {
namespace {

bool has_line(const std::string& page, const std::string& line) {
  return page.find("\n" + line + "\n") != std::string::npos || page.starts_with(line + "\n");
}

TEST(MetricsPage, SecondsHaveNoTrailingZerosAndKeepNanoseconds) {
  metrics_snapshot m;
  m.duration_seconds_sum = 0.00025;
  m.drain_seconds_sum = 12.5;
  m.last_drain_seconds = 3;
  std::string page = render_prometheus(m);
  EXPECT_TRUE(has_line(page, "endless_http_request_duration_seconds_sum 0.00025")) << page;
  EXPECT_TRUE(has_line(page, "endless_drain_seconds_total 12.5")) << page;
  EXPECT_TRUE(has_line(page, "endless_last_drain_seconds 3")) << page;

  m.duration_seconds_sum = 1234.000000001;  // 1234 s and 1 ns
  m.drain_seconds_sum = 0;
  m.last_drain_seconds = 0.1 + 0.2;  // 0.30000000000000004 in binary: no noise printed
  page = render_prometheus(m);
  EXPECT_TRUE(has_line(page, "endless_http_request_duration_seconds_sum 1234.000000001")) << page;
  EXPECT_TRUE(has_line(page, "endless_drain_seconds_total 0")) << page;
  EXPECT_TRUE(has_line(page, "endless_last_drain_seconds 0.3")) << page;
}

TEST(MetricsPage, SecondsAtTheEdges) {
  metrics_snapshot m;
  m.duration_seconds_sum = 1e-12;  // below a nanosecond
  m.drain_seconds_sum = 2e19;      // beyond any count of ours
  m.last_drain_seconds = 86400.5;
  std::string page = render_prometheus(m);
  EXPECT_TRUE(has_line(page, "endless_http_request_duration_seconds_sum 0")) << page;
  EXPECT_TRUE(has_line(page, "endless_drain_seconds_total +Inf")) << page;
  EXPECT_TRUE(has_line(page, "endless_last_drain_seconds 86400.5")) << page;
}

TEST(MetricsPage, HistogramBoundsAndInf) {
  metrics_snapshot m;
  m.duration_buckets[0] = 2;
  m.duration_buckets[16] = 1;
  std::string page = render_prometheus(m);
  EXPECT_TRUE(has_line(page, R"(endless_http_request_duration_seconds_bucket{le="0.0001"} 2)"))
      << page;
  EXPECT_TRUE(has_line(page, R"(endless_http_request_duration_seconds_bucket{le="0.00025"} 2)"))
      << page;
  EXPECT_TRUE(has_line(page, R"(endless_http_request_duration_seconds_bucket{le="+Inf"} 3)"))
      << page;
  EXPECT_TRUE(has_line(page, "endless_http_request_duration_seconds_count 3")) << page;
}

}  // namespace
}  // namespace endless::http
