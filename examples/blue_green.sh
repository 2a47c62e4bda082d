#!/usr/bin/env bash
# Blue/green by takeover: hello processes started independently of each other (not by the
# serving one) take the listening socket over through its control socket (ENDLESS_TAKEOVER,
# docs/core.md "Takeover"), five times, while keep-alive and Connection: close
# clients that never retry run. Prints each swap and both loads' counts; exits 1 on a
# failed request.
#   [CONNECTIONS=N] examples/blue_green.sh [BUILD_DIR]   (default 200 each, build/test)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/test}"
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" --target hello loadgen >/dev/null
hello="$build/examples/hello"
loadgen="$build/tools/loadgen"
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
pidfile="$dir/hello.pid"

wait_pidfile() {  # until the pid file names $1
  for _ in $(seq 200); do
    [ "$(cat "$pidfile" 2>/dev/null)" = "$1" ] && return 0
    sleep 0.05
  done
  echo "blue_green: pid $1 never took over" >&2
  cat "$dir"/*.log >&2
  exit 1
}

"$hello" --addr 127.0.0.1:0 --pidfile "$pidfile" 2>"$dir/blue-0.log" &
pid=$!
wait_pidfile "$pid"
port=$(grep -o "127.0.0.1:[0-9]*" "$dir/blue-0.log" | head -1 | cut -d: -f2)
echo "blue pid $pid serves 127.0.0.1:$port"
"$loadgen" --url "http://127.0.0.1:$port/" --connections "${CONNECTIONS:-200}" --duration 12 --mode keepalive \
  >"$dir/keepalive.txt" 2>&1 &
keepalive=$!
"$loadgen" --url "http://127.0.0.1:$port/" --connections "${CONNECTIONS:-200}" --duration 12 --mode close \
  >"$dir/close.txt" 2>&1 &
closing=$!
colours=(green blue green blue green)
for i in 0 1 2 3 4; do
  sleep 2
  ENDLESS_TAKEOVER="$pidfile.ctl" "$hello" --addr 127.0.0.1:0 --pidfile "$pidfile" \
    2>"$dir/${colours[$i]}-$((i + 1)).log" &
  next=$!
  wait_pidfile "$next"
  echo "swap $((i + 1)): ${colours[$i]} pid $next took over from pid $pid"
  pid=$next
done
status=0
wait "$keepalive" || status=1
wait "$closing" || status=1
echo "keep-alive: $(head -1 "$dir/keepalive.txt")"
echo "close:      $(head -1 "$dir/close.txt")"
kill -TERM "$pid"
exit $status
