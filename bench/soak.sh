#!/usr/bin/env bash
# Soak: ${RESTARTS:-100} SIGHUP restarts of examples/hello under ${CONNECTIONS:-1000} keep-alive
# clients that never retry (tools/loadgen), one restart every ${INTERVAL:-1} s once the
# previous new process is ready. Checks, and writes to bench/results/soak-<stamp>.{md,json}:
#   - 0 failed requests of any class over the whole run;
#   - every old process gone within 20 s of the end (each stays for its probation), one left;
#   - the last process idle after the run has the first one's idle fd count, and its idle RSS
#     within 25% + 1 MiB of the first one's (no growth carried across generations);
#   - per restart: hand-over time (SIGHUP -> new pid file), the new process's fds and RSS
#     under load one interval later.
# Exit status 0 only if every check passed.
#   bench/soak.sh                           # the full run (about 2.5 minutes)
#   RESTARTS=5 CONNECTIONS=100 bench/soak.sh  # a short one
# On a shared machine run it under the machine's lock: flock /tmp/endless-heavy.lock bench/soak.sh
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
restarts=${RESTARTS:-100}
conns=${CONNECTIONS:-1000}
interval=${INTERVAL:-1}
port=${PORT:-18097}
build=build/bench
stamp=$(date +%F-%H%M%S)
out_md=${OUT:-bench/results/soak-$stamp.md}
out_json=${out_md%.md}.json

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target hello loadgen >/dev/null
hello=$build/examples/hello
loadgen=$build/tools/loadgen

tmp=$(mktemp -d)
server=""
load=""
cleanup() {
  [[ -n $load ]] && kill "$load" 2>/dev/null || true
  if [[ -f $tmp/pid ]]; then kill -TERM "$(cat "$tmp/pid")" 2>/dev/null || true; fi
  [[ -n $server ]] && kill -TERM "$server" 2>/dev/null || true
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }

# Started without the fds this script inherited (a lock held by flock, say): later
# generations never have them, and the fd counts compare the first process with the last.
without_inherited_fds() {
  local fd
  for fd in $(ls "/proc/$BASHPID/fd"); do
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  exec "$@"
}
(without_inherited_fds "$hello" --addr "127.0.0.1:$port" --pidfile "$tmp/pid" --hammer-time 10 \
  >"$tmp/hello.log" 2>&1) &
server=$!
for _ in $(seq 100); do [[ -s $tmp/pid ]] && break; sleep 0.1; done
first=$(cat "$tmp/pid")
sleep 0.5
fds0=$(fds "$first")
rss0=$(rss_kib "$first")

duration=$((restarts * (interval + 1) + 15))
"$loadgen" --url "http://127.0.0.1:$port/" --connections "$conns" --duration "$duration" \
  --mode keepalive --json "$tmp/load.json" >"$tmp/load.txt" 2>&1 &
load=$!
sleep 3

: >"$tmp/restarts.tsv"
pids=("$first")
for i in $(seq "$restarts"); do
  old=$(cat "$tmp/pid")
  t0=$(now_ms)
  kill -HUP "$old"
  new=$old
  for _ in $(seq 300); do
    new=$(cat "$tmp/pid" 2>/dev/null || echo "$old")
    [[ $new != "$old" ]] && break
    sleep 0.01
  done
  t1=$(now_ms)
  if [[ $new == "$old" ]]; then
    echo "soak: restart $i: no new process within 3 s" >&2
    break
  fi
  pids+=("$new")
  sleep "$interval"
  printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$new" "$((t1 - t0))" "$(fds "$new")" "$(rss_kib "$new")" \
    >>"$tmp/restarts.tsv"
done
done_restarts=$(wc -l <"$tmp/restarts.tsv")
# Stop the load now rather than at the end of its duration: SIGINT ends loadgen's run and
# it reports as usual.
kill -INT "$load" 2>/dev/null || true
wait "$load" || true
load=""
last=$(cat "$tmp/pid")
sleep 2
# Old processes stay for their probation (5 s by default) after their drain: give them 20 s.
alive=0
for _ in $(seq 200); do
  alive=0
  for p in "${pids[@]}"; do [[ -d /proc/$p && $p != "$last" ]] && alive=$((alive + 1)); done
  ((alive == 0)) && break
  sleep 0.1
done

fds_end=$(fds "$last")
rss_end=$(rss_kib "$last")

python3 - "$tmp" "$out_md" "$out_json" "$restarts" "$done_restarts" "$conns" "$interval" \
  "$fds0" "$rss0" "$fds_end" "$rss_end" "$alive" "$(git rev-parse --short HEAD)" <<'EOF'
import json, statistics, sys
(tmp, out_md, out_json, restarts, done, conns, interval, fds0, rss0, fds_end, rss_end, alive,
 commit) = sys.argv[1:]
restarts, done, conns = int(restarts), int(done), int(conns)
fds0, rss0, fds_end, rss_end, alive = map(int, (fds0, rss0, fds_end, rss_end, alive))
load = json.load(open(f"{tmp}/load.json"))
rows = [l.split("\t") for l in open(f"{tmp}/restarts.tsv").read().splitlines()]
hand = [int(r[2]) for r in rows]
fds_load = [int(r[3]) for r in rows]
rss_load = [int(r[4]) for r in rows]
checks = {
    "restarts done": done == restarts,
    "0 failed requests": load["failed"] == 0,
    "old processes all gone": alive == 0,
    "idle fds equal at the end": fds_end == fds0,
    "idle RSS within 25% + 1 MiB": rss_end <= rss0 * 1.25 + 1024,
}
result = {
    "commit": commit, "restarts": restarts, "restarts_done": done, "connections": conns,
    "interval_s": float(interval), "requests": load["requests"], "ok": load["ok"],
    "failed": load["failed"], "failures": load["failures"], "rps": load["rps"],
    "processes": len(load.get("pids", [])),
    "idle_fds_first": fds0, "idle_fds_last": fds_end,
    "idle_rss_kib_first": rss0, "idle_rss_kib_last": rss_end,
    "old_processes_alive": alive,
    "handover_ms": hand, "fds_under_load": fds_load, "rss_kib_under_load": rss_load,
    "checks": checks, "passed": all(checks.values()),
}
json.dump(result, open(out_json, "w"), indent=1)
def spread(xs):
    return f"min {min(xs)}, median {statistics.median(xs):g}, max {max(xs)}" if xs else "-"
with open(out_md, "w") as f:
    f.write(f"# Soak: {done} restarts under {conns} keep-alive clients ({commit})\n\n")
    f.write(f"bench/soak.sh: examples/hello (Release), tools/loadgen {conns} keep-alive "
            f"connections that never retry, a SIGHUP every {interval} s after the previous "
            "new process was ready; unpinned, 2 cores.\n\n")
    f.write("| check | result |\n|---|---|\n")
    for k, v in checks.items():
        f.write(f"| {k} | {'ok' if v else 'FAILED'} |\n")
    f.write("\n| figure | value |\n|---|--:|\n")
    f.write(f"| requests | {load['requests']:,} |\n| failed | {load['failed']} |\n")
    f.write(f"| failures by class | {load['failures']} |\n")
    f.write(f"| req/s over the run | {load['rps']:,.0f} |\n")
    f.write(f"| processes that answered | {len(load.get('pids', []))} |\n")
    f.write(f"| idle fds, first process / last | {fds0} / {fds_end} |\n")
    f.write(f"| idle RSS, first process / last | {rss0} KiB / {rss_end} KiB |\n")
    f.write(f"| hand-over (SIGHUP -> new pid file), ms | {spread(hand)} |\n")
    f.write(f"| fds of each new process under load | {spread(fds_load)} |\n")
    f.write(f"| RSS of each new process under load, KiB | {spread(rss_load)} |\n")
print(open(out_md).read())
sys.exit(0 if result["passed"] else 1)
EOF
