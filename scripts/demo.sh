#!/usr/bin/env bash
# The live demo: builds examples/hello and tools/loadgen, serves hello on 127.0.0.1:${PORT:-8080},
# drives it with clients that never retry (keep-alive, ${CONNECTIONS:-200} connections), replaces
# the server ${RESTARTS:-5} times with SIGHUP, and prints what happened to every request.
# On a terminal it keeps serving afterwards so you can try it yourself; Ctrl-C stops it
# gracefully. DEMO_ONCE=1 exits after the scripted part; MODE=close uses Connection: close;
# MODE=h2 serves HTTPS (a self-signed certificate made here) and drives it with HTTP/2
# (tools/h2gen: ${CONNECTIONS:-100} connections x 10 streams).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh g++ make cmake pkg-config curl openssl libssl-dev libnghttp2-dev
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >/dev/null
cmake --build build/demo -j "$(nproc)" --target hello loadgen h2gen >/dev/null

port="${PORT:-8080}"
restarts="${RESTARTS:-5}"
mode="${MODE:-keepalive}"
work="$(mktemp -d)"
pidfile="$work/hello.pid"
url="http://127.0.0.1:$port"
tls=()
if [ "$mode" = h2 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
  tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
  url="https://127.0.0.1:$port"
fi
now_ms() { date +%s%3N; }
cleanup() {
  [ -n "${load:-}" ] && kill "$load" 2>/dev/null || true
  if [ -s "$pidfile" ]; then kill -TERM "$(cat "$pidfile")" 2>/dev/null || true; fi
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "== starting examples/hello on $url (the indented lines are the server's log)"
build/demo/examples/hello --addr "127.0.0.1:$port" --pidfile "$pidfile" "${tls[@]}" 2> >(sed 's/^/   /' >&2) &
for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
[ -s "$pidfile" ] || { echo "hello did not start (port $port busy? try PORT=8081)"; exit 1; }

duration=$((restarts * 2 + 2))
start=$(now_ms)
if [ "$mode" = h2 ]; then
  echo "== load: tools/h2gen, HTTP/2 over TLS, ${CONNECTIONS:-100} connections x 10 streams, ${duration}s, no retries"
  build/demo/tools/h2gen --url "$url/" --cacert "$work/cert.pem" --connections "${CONNECTIONS:-100}" \
    --streams 10 --duration "$duration" --pids >"$work/load.txt" 2>"$work/load.err" &
else
  echo "== load: tools/loadgen, $mode, ${CONNECTIONS:-200} connections, ${duration}s, no retries"
  build/demo/tools/loadgen --url "$url/" --connections "${CONNECTIONS:-200}" --duration "$duration" \
    --mode "$mode" --pids >"$work/load.txt" 2>"$work/load.err" &
fi
load=$!

declare -a sent olds
sleep 1
for i in $(seq "$restarts"); do
  old=$(cat "$pidfile")
  olds[$i]=$old
  sent[$i]=$(( $(now_ms) - start ))
  kill -HUP "$old"
  for _ in $(seq 200); do [ "$(cat "$pidfile")" != "$old" ] && break; sleep 0.02; done
  sleep 1.9
done
wait "$load" && status=0 || status=$?
load=""

echo
echo "== result"
head -2 "$work/load.txt"
echo
printf '%-8s %-10s %-10s %s\n' restart old-pid new-pid "handover (SIGHUP -> first answer from the new pid)"
for i in $(seq "$restarts"); do
  # the pid that first answered after this restart's signal
  read -r new first < <(awk -v t="${sent[$i]}" -v o="${olds[$i]}" \
    '$1=="pid" && $2!=o && $6+0 >= t { print $2, $6; exit }' "$work/load.txt")
  printf '%-8s %-10s %-10s %s ms\n' "$i" "${olds[$i]}" "${new:-?}" \
    "$(awk -v a="${first:-0}" -v b="${sent[$i]}" 'BEGIN { printf "%.1f", a - b }')"
done
[ "$status" -eq 0 ] || { echo; echo "failures (first ones):"; head -5 "$work/load.err"; }

if [ -t 0 ] && [ -z "${DEMO_ONCE:-}" ]; then
  echo
  echo "== still serving: curl -k $url/   kill -HUP \$(cat $pidfile)   Ctrl-C to stop"
  while [ -s "$pidfile" ]; do sleep 1; done
fi
exit "$status"
