#!/usr/bin/env bash
# Memory: hello's idle RSS, and its RSS while holding ${CONNS:-10000} idle keep-alive
# connections (each made one request). Writes bench/results/memory-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh g++ make cmake python3
cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >/dev/null
cmake --build build/bench --target hello -j "$(nproc)" >/dev/null
conns="${CONNS:-10000}"
port=18095
out="${OUT:-bench/results/memory-$(date +%F).md}"
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
build/bench/examples/hello --addr "127.0.0.1:$port" --threads 1 2>/dev/null &
server=$!
fifo="$(mktemp -u)"; mkfifo "$fifo"
cleanup() {
  kill "$server" 2>/dev/null || true
  if [ -n "${client:-}" ]; then kill "$client" 2>/dev/null || true; fi
  rm -f "$fifo"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05; done
sleep 0.5
idle=$(rss "$server")
python3 bench/idle_conns.py 127.0.0.1 "$port" "$conns" <"$fifo" >"$fifo.out" &
client=$!
exec 3>"$fifo"  # keeps the client's stdin open until we close it
for _ in $(seq 600); do grep -q ready "$fifo.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$fifo.out" || { echo "client did not get $conns connections up"; exit 1; }
sleep 1
held=$(rss "$server")
per=$(awk -v a="$held" -v b="$idle" -v n="$conns" 'BEGIN { printf "%.2f", (a - b) / n }')
exec 3>&-
rm -f "$fifo.out"
{
  echo "# Memory, $(date +%F)"
  echo
  echo "examples/hello --threads 1, Release build ($(git rev-parse --short HEAD)); VmRSS from /proc."
  echo
  echo "| measure | value |"
  echo "|---|--:|"
  echo "| idle RSS | $idle KiB |"
  echo "| RSS holding $conns idle keep-alive connections | $held KiB |"
  echo "| per connection, beyond idle | $per KiB |"
  echo
  echo "Command: \`CONNS=$conns bench/memory.sh\` (client: bench/idle_conns.py, one request per connection, then idle)."
} | tee "$out"
