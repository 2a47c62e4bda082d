#!/usr/bin/env bash
# A seconds-long version of the benchmarks (bench/all.sh --smoke), run by the test command so
# they never rot: every speed scenario once for 1 s (no-op ceiling, nginx, hello; HTTPS,
# full TLS handshakes and HTTP/2 for nginx and hello, noop having no TLS); one
# restart under load of hello with 2 clients and loadgen's timeline; the restart metrics
# with 2 restarts for hello and 1 for nginx (master mode); and the plots from all of it.
# Figures from a smoke run mean nothing; it only checks that the suite works. Everything goes
# to build/bench/smoke*.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/bench
rm -f build/bench/smoke*
command -v gnuplot >/dev/null || scripts/deps.sh gnuplot-nox
DURATION=1 ROUNDS=1 SERVERS="noop nginx endless" OUT=build/bench/smoke.md bench/run.sh >/dev/null
for row in "endless (hello) | pipelined-16" "endless (hello) | https-keep-alive" \
  "nginx | tls-handshakes" "endless (hello) | tls-handshakes" "endless (hello) | h2 "; do
  grep -qF "| $row" build/bench/smoke.md || { echo "bench smoke: no '$row' row" >&2; exit 1; }
done
python3 bench/plot.py build/bench/smoke.md >/dev/null
python3 bench/restart_metrics.py build/bench/examples/hello --restarts 2 --fd-restarts 4 \
  --port 18099 --name endless --json build/bench/smoke-restart-endless.json \
  >build/bench/smoke-restart.md
grep -q "after 4 restarts" build/bench/smoke-restart.md
python3 bench/restart_metrics.py nginx --restarts 1 --fd-restarts 2 --port 18099 \
  --json build/bench/smoke-restart-nginx.json >>build/bench/smoke-restart.md
grep -q "names the master" build/bench/smoke-restart.md
python3 bench/plot_restarts.py rss --out build/bench/smoke-rss.png \
  build/bench/smoke-restart-{endless,nginx}.json >>build/bench/smoke-restart.md
RESTARTS=1 INTERVAL=1 LOADGEN_ARGS="--pause-max-ms 50" OUT=build/bench/smoke-peers.md \
  bench/peer_restart.sh endless 2 >build/bench/smoke-peers.log 2>&1 ||
  { tail -20 build/bench/smoke-peers.log >&2; exit 1; }
python3 bench/plot_restarts.py failures build/bench/smoke-peers-endless-keepalive-2-*.json \
  >>build/bench/smoke-peers.md
grep -q "^| endless | [0-9]* + [0-9]* |" build/bench/smoke-peers.md
for png in smoke-rps smoke-cpu smoke-rss smoke-peers-failures-keepalive-2 smoke-peers-timeline-keepalive-2; do
  [[ -s build/bench/$png.png ]] || { echo "bench smoke: no build/bench/$png.png" >&2; exit 1; }
done
echo "bench smoke: ok (build/bench/smoke.md, smoke-restart.md, smoke-peers.md and their PNGs)"
