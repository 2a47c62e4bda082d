#!/usr/bin/env bash
# Blue/green by takeover: hello processes started independently of each other (not by the
# serving one) take the service over through its control socket (ENDLESS_TAKEOVER,
# docs/core.md "Takeover"), five times, while keep-alive and Connection: close
# clients that never retry run. Prints each swap and both loads' counts; exits 1 on a
# failed request.
#   [CONNECTIONS=N] [MODE=M] examples/blue_green.sh [BUILD_DIR]   (200 each, build/test)
# MODE:
#   fds        (default) the listening socket is passed over the control socket
#   reuseport  each process binds its own socket with SO_REUSEPORT; new connections are
#              steered to the new one (SO_ATTACH_REUSEPORT_CBPF) when it is ready, and the old
#              one passes on what is left in its queue
#   migrate    the same without steering (ENDLESS_TAKEOVER_MODE=reuseport-migrate), in a
#              network namespace of its own with net.ipv4.tcp_migrate_req=1: the kernel moves
#              the old socket's queue when it closes (needs root)
#   naive      the contrast, what reuseport servers without either do: start the new process
#              on the same port with SO_REUSEPORT, wait until it serves, SIGTERM the old one.
#              Its close resets what is in its queue; failures are expected, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${MODE:-fds}"
case "$mode" in
  fds | reuseport | naive) ;;
  migrate)
    if [ -z "${BLUE_GREEN_NETNS:-}" ]; then
      # Built outside the namespace; run inside one with the sysctl set and loopback up.
      build="${1:-build/test}"
      [ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
      cmake --build "$build" -j "$(nproc)" --target hello loadgen >/dev/null
      exec unshare -n -- env BLUE_GREEN_NETNS=1 bash -c \
        'ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1 && exec "$0" "$@"' "$0" "$@"
    fi
    ;;
  *)
    echo "blue_green: MODE must be fds, reuseport, migrate or naive" >&2
    exit 2
    ;;
esac
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

flags=()
env=(ENDLESS_TAKEOVER="$pidfile.ctl")
case "$mode" in
  reuseport) flags=(--reuseport) env+=(ENDLESS_TAKEOVER_MODE=reuseport) ;;
  migrate) env+=(ENDLESS_TAKEOVER_MODE=reuseport-migrate) ;;
  naive) flags=(--reuseport) env=() ;;
esac
wait_gone() {  # until our child $1 has exited (a zombie counts: it is ours to reap)
  for _ in $(seq 400); do
    st=$(ps -o stat= -p "$1" 2>/dev/null || true)
    if [ -z "$st" ] || [[ "$st" == Z* ]]; then
      wait "$1" 2>/dev/null || true
      return 0
    fi
    sleep 0.05
  done
  echo "blue_green: pid $1 did not exit within 20 s" >&2
  exit 1
}

"$hello" --addr 127.0.0.1:0 --pidfile "$pidfile" "${flags[@]}" 2>"$dir/blue-0.log" &
pid=$!
wait_pidfile "$pid"
port=$(grep -o "127.0.0.1:[0-9]*" "$dir/blue-0.log" | head -1 | cut -d: -f2)
echo "blue pid $pid serves 127.0.0.1:$port (mode $mode)"
# Each swap waits for the old process to exit (after its 5 s probation), so that the next one
# is not refused as busy: about 6 s a swap.
duration=$((5 * 7 + 4))
"$loadgen" --url "http://127.0.0.1:$port/" --connections "${CONNECTIONS:-200}" --duration "$duration" \
  --mode keepalive >"$dir/keepalive.txt" 2>&1 &
keepalive=$!
"$loadgen" --url "http://127.0.0.1:$port/" --connections "${CONNECTIONS:-200}" --duration "$duration" \
  --mode close >"$dir/close.txt" 2>&1 &
closing=$!
colours=(green blue green blue green)
for i in 0 1 2 3 4; do
  sleep 2
  log="$dir/${colours[$i]}-$((i + 1)).log"
  # The real port, not 0: a process that failed to take over must fail to bind, not serve
  # somewhere else.
  if [ "$mode" = naive ]; then
    # A pid file of its own (the old one still holds its control socket): started, serving
    # beside the old one, then the old one is stopped.
    "$hello" --addr "127.0.0.1:$port" --pidfile "$dir/next.pid" "${flags[@]}" 2>"$log" &
    next=$!
    pidfile_was="$pidfile"
    pidfile="$dir/next.pid"
    wait_pidfile "$next"
    pidfile="$pidfile_was"
    kill -TERM "$pid"
    wait_gone "$pid"
    mv "$dir/next.pid" "$pidfile"
    echo "swap $((i + 1)): ${colours[$i]} pid $next started beside pid $pid, which was then stopped"
  else
    env "${env[@]}" "$hello" --addr "127.0.0.1:$port" --pidfile "$pidfile" "${flags[@]}" 2>"$log" &
    next=$!
    wait_pidfile "$next"
    if ! grep -q "$next took over from pid $pid" "$log"; then
      echo "blue_green: pid $next did not take over from pid $pid" >&2
      cat "$dir"/*.log >&2
      exit 1
    fi
    wait_gone "$pid"
    echo "swap $((i + 1)): ${colours[$i]} pid $next took over from pid $pid, which exited"
  fi
  pid=$next
done
for load in "$keepalive" "$closing"; do  # every swap happened under load
  st=$(ps -o stat= -p "$load" 2>/dev/null || true)
  if [ -z "$st" ] || [[ "$st" == Z* ]]; then
    echo "blue_green: the load ended before the last swap" >&2
    exit 1
  fi
done
status=0
wait "$keepalive" || status=1
wait "$closing" || status=1
echo "keep-alive: $(grep '^requests' "$dir/keepalive.txt")"
echo "close:      $(grep '^requests' "$dir/close.txt")"
grep -h "SO_REUSEPORT\|tcp_migrate_req" "$dir"/*.log | sed 's/^/  /' | head -4 || true
kill -TERM "$pid"
[ "$mode" = naive ] && exit 0
exit $status
