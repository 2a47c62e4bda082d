#!/usr/bin/env bash
# Memory: hello's idle RSS, and its RSS while holding ${CONNS:-10000} idle keep-alive
# connections (each made one request), for both build flavours: the default (shared
# libstdc++, OpenSSL, nghttp2) and ENDLESS_STATIC_RUNTIME=ON (those linked in; glibc shared).
# Also the idle process's PSS and private memory (smaps_rollup), which count shared library
# pages once per machine rather than once per process. Writes bench/results/memory-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh g++ make cmake python3 curl pkg-config libssl-dev libnghttp2-dev
conns="${CONNS:-10000}"
port=18095
out="${OUT:-bench/results/memory-$(date +%F-%H%M%S).md}"
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
rollup() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/smaps_rollup"; }
rows=()
measure() {  # flavour, build dir, extra cmake flags...
  local flavour="$1" build="$2"
  shift 2
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF "$@" >/dev/null
  cmake --build "$build" --target hello -j "$(nproc)" >/dev/null
  "$build/examples/hello" --addr "127.0.0.1:$port" --threads 1 2>/dev/null &
  server=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05; done
  sleep 0.5
  local idle pss private held per
  idle=$(rss "$server")
  pss=$(rollup "$server" Pss)
  private=$(($(rollup "$server" Private_Clean) + $(rollup "$server" Private_Dirty)))
  fifo="$(mktemp -u)"
  mkfifo "$fifo"
  python3 bench/idle_conns.py 127.0.0.1 "$port" "$conns" <"$fifo" >"$fifo.out" &
  client=$!
  exec 3>"$fifo"  # keeps the client's stdin open until we close it
  for _ in $(seq 600); do grep -q ready "$fifo.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$fifo.out" || { echo "client did not get $conns connections up"; exit 1; }
  sleep 1
  held=$(rss "$server")
  per=$(awk -v a="$held" -v b="$idle" -v n="$conns" 'BEGIN { printf "%.2f", (a - b) / n }')
  exec 3>&-
  wait "$client" 2>/dev/null || true
  kill "$server"
  wait "$server" 2>/dev/null || true
  rm -f "$fifo" "$fifo.out"
  rows+=("| $flavour | $idle KiB | $pss KiB | $private KiB | $held KiB | $per KiB |")
}
cleanup() { kill $(jobs -p) 2>/dev/null || true; }
trap cleanup EXIT
measure "default (shared libstdc++, OpenSSL, nghttp2)" build/bench
measure "ENDLESS_STATIC_RUNTIME=ON" build/bench-static -DENDLESS_STATIC_RUNTIME=ON
{
  echo "# Memory, $(date +%F)"
  echo
  echo "examples/hello --threads 1, Release builds ($(git rev-parse --short HEAD)); from /proc/<pid>/status and smaps_rollup."
  echo
  echo "| build | idle RSS | idle PSS | idle private | RSS holding $conns idle keep-alive connections | per connection, beyond idle |"
  echo "|---|--:|--:|--:|--:|--:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Command: \`CONNS=$conns bench/memory.sh\` (client: bench/idle_conns.py, one request per connection, then idle)."
} | tee "$out"
