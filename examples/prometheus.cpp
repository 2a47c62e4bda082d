// Prometheus metrics and health checks: /metrics in the text exposition format (counters
// carry over restarts, so a dashboard sees one series per service), /healthz (alive) and
// /readyz (503 once this process drains, so a load balancer stops sending it traffic).
//   prometheus [ADDR]   (default :8080)
//   curl localhost:8080/metrics
//   scrape_configs: [{job_name: app, static_configs: [{targets: ["localhost:8080"]}]}]
#include "endless/endless.hpp"

int main(int argc, char** argv) {
  using namespace endless::http;
  router r;
  r.get("/", [](const request&, response& res) { res.text("WORLD!\n"); });
  server srv(r);
  srv.addr(argc > 1 ? argv[1] : ":8080");
  r.get("/metrics", srv.metrics_handler());
  r.get("/healthz", srv.healthz_handler());
  r.get("/readyz", srv.readyz_handler());
  return srv.listen_and_serve();
}
