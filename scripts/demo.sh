#!/usr/bin/env bash
# The live demo: builds examples/hello_core, serves it on 127.0.0.1:${PORT:-8080}, keeps
# clients hitting it, replaces the server three times with SIGHUP, and counts what failed.
# On a terminal it keeps serving afterwards so you can try it yourself; Ctrl-C stops it
# gracefully. DEMO_ONCE=1 exits after the scripted part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh g++ make cmake curl
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >/dev/null
cmake --build build/demo -j "$(nproc)" --target hello_core >/dev/null

port="${PORT:-8080}"
work="$(mktemp -d)"
pidfile="$work/hello.pid"
url="http://127.0.0.1:$port"
cleanup() {
  [ -n "${client:-}" ] && kill "$client" 2>/dev/null || true
  if [ -s "$pidfile" ]; then kill -TERM "$(cat "$pidfile")" 2>/dev/null || true; fi
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "== starting build/demo/examples/hello_core on $url (log lines are the server's)"
build/demo/examples/hello_core --addr "127.0.0.1:$port" --pidfile "$pidfile" &
for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
[ -s "$pidfile" ] || { echo "the server did not start (port $port busy? try PORT=8081)"; exit 1; }

# Clients that never retry: each request is a new curl, failures are counted.
(
  ok=0; failed=0
  while :; do
    if curl -fsS --max-time 5 "$url/pid" >/dev/null 2>>"$work/errors"; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
    echo "$ok $failed" >"$work/counts"
  done
) &
client=$!

sleep 1
for i in 1 2 3; do
  old=$(cat "$pidfile")
  echo "== restart $i: kill -HUP $old"
  kill -HUP "$old"
  for _ in $(seq 200); do [ "$(cat "$pidfile")" != "$old" ] && break; sleep 0.05; done
  echo "== now served by $(curl -fsS "$url/pid")"
  sleep 1.5
done
kill "$client"; wait "$client" 2>/dev/null || true; client=""
read -r ok failed <"$work/counts"
echo "== $ok requests during 3 restarts, $failed failed"
[ "$failed" -eq 0 ] || { echo "errors:"; cat "$work/errors"; }

if [ -t 0 ] && [ -z "${DEMO_ONCE:-}" ]; then
  echo "== still serving: curl $url/   kill -HUP \$(cat $pidfile)   Ctrl-C to stop"
  while [ -s "$pidfile" ]; do sleep 1; done
fi
[ "$failed" -eq 0 ]
