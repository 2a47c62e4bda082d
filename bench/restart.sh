#!/usr/bin/env bash
# Restarts under load: for each mode (keep-alive, Connection: close), ${CONNECTIONS:-1000}
# clients that never retry (tools/loadgen) hit examples/hello while it is replaced
# ${RESTARTS:-5} times with SIGHUP. Writes bench/results/restart-<date>.md with every
# failure class, req/s, latency and the hand-over time of each restart.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/restart-$(date +%F).md}"
conns="${CONNECTIONS:-1000}"
restarts="${RESTARTS:-5}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
  echo "# Restarts under load, $(date +%F)"
  echo
  echo "examples/hello (Release, $(git rev-parse --short HEAD)), $conns connections from tools/loadgen"
  echo "(never retries; every failure counted by class), $restarts SIGHUPs 2 s apart, on $(nproc) cores,"
  echo "unpinned. Hand-over: SIGHUP sent -> first response from the new pid, as the client saw it."
} >"$out"
status=0
for mode in keepalive close; do
  PORT=18096 CONNECTIONS="$conns" RESTARTS="$restarts" MODE="$mode" DEMO_ONCE=1 \
    scripts/demo.sh >"$tmp/$mode.txt" 2>"$tmp/$mode.err" || status=1
  {
    echo
    echo "## $mode"
    echo
    echo '```'
    sed -n '/^requests /,/^req\/s/p' "$tmp/$mode.txt"
    echo
    sed -n '/^restart /,/^$/p' "$tmp/$mode.txt" | sed '/^$/d'
    echo '```'
  } >>"$out"
done
cat "$out"
exit "$status"
