#!/usr/bin/env bash
# A seconds-long version of the benchmarks, run by the test command so they never rot: every
# scenario once for 1 s (no-op ceiling, nginx, hello), and the restart metrics with 2
# restarts. Figures from a smoke run mean nothing; it only checks that the suite works.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/bench
DURATION=1 ROUNDS=1 SERVERS="noop nginx endless" OUT=build/bench/smoke.md bench/run.sh >/dev/null
grep -q "endless (hello) | pipelined-16" build/bench/smoke.md
python3 bench/restart_metrics.py build/bench/examples/hello --restarts 2 --fd-restarts 4 \
  --port 18099 >build/bench/smoke-restart.md
grep -q "after 4 restarts" build/bench/smoke-restart.md
echo "bench smoke: ok (build/bench/smoke.md, build/bench/smoke-restart.md)"
