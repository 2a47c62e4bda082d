#!/usr/bin/env bash
# Restarts under load, for one server among its peers: tools/loadgen's clients (never retry,
# every failure counted by class) hit PEER while it is restarted ${RESTARTS:-5} times,
# ${INTERVAL:-2} s apart, each with the signal that peer restarts on. Appends a Markdown
# section to $OUT (default bench/results/peers-restart-<date>.md) and keeps loadgen's JSON
# beside it. See bench/README.md.
#
#   bench/peer_restart.sh PEER [CONNECTIONS] [MODE]
#     PEER         endless | tableflip | grace | nginx | h2o
#     CONNECTIONS  concurrent client connections (default 1000)
#     MODE         keepalive (default) | close
#
#   peer       what runs                                      restart signal, sent to
#   endless    build/bench/examples/hello (ours)              SIGHUP, the pid in its pid file
#   tableflip  build/bench/peers/tableflip (tableflip)        SIGHUP, the pid in its pid file
#   grace      build/bench/peers/grace (facebookgo/grace)     SIGUSR2, the pid in its pid file
#   nginx      nginx, bench/nginx.conf (master + 1 worker)    SIGHUP, the master (a reload)
#   h2o        h2o -m master, bench/h2o.conf (1 thread)       SIGHUP, the master (start_server)
#
# Environment: RESTARTS (5), INTERVAL (2 s), OUT (the report), LOADGEN (another loadgen
# binary, e.g. build/demo/tools/loadgen; default build/bench/tools/loadgen, built when
# missing or older than tools/loadgen.cpp), LOADGEN_ARGS (added to loadgen's arguments; a
# smoke check of the script itself: RESTARTS=1 INTERVAL=1 LOADGEN_ARGS="--pause-max-ms 50"
# OUT=/tmp/x.md bench/peer_restart.sh grace 2), TIMELINE_MS (50: loadgen counts outcomes per
# 50 ms bucket, so bench/plot_restarts.py can attribute failures to each restart; 0: none).
#
# The JSON is loadgen's, plus "run" (this run's parameters) and "restarts": per restart the
# signal's time on loadgen's clock (sent_ms), the pids and the hand-over. Loadgen's JSON
# gives its start as wall-clock time (start_unix_us), so signal times are converted onto its
# clock exactly; an older loadgen without it leaves them a few ms late (this script's clock
# starts just before loadgen's).
#
# Hand-over of a restart: signal sent -> first response carrying an X-Pid not seen before
# the signal, as the client saw it. Every peer sets X-Pid: ours and the Go peers by contract;
# nginx through `add_header X-Pid $pid` (its worker's pid; this script adds that line to its
# copy of bench/nginx.conf); h2o through the mruby handler in bench/h2o.conf.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."
root=$PWD

usage() {
  sed -n '/^#   bench/,/^#     MODE/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "peer_restart: $*" >&2
  exit 1
}
say() { echo "peer_restart: $*" >&2; }

(($# >= 1 && $# <= 3)) || usage
peer=$1
conns=${2:-1000}
mode=${3:-keepalive}
restarts=${RESTARTS:-5}
interval=${INTERVAL:-2}
timeline_ms=${TIMELINE_MS:-50}
build=build/bench
declare -A port=([endless]=18100 [tableflip]=18101 [grace]=18102 [nginx]=18103 [h2o]=18104)
declare -A sig=([endless]=HUP [tableflip]=HUP [grace]=USR2 [nginx]=HUP [h2o]=HUP)
[[ -n ${port[$peer]:-} ]] || die "unknown peer '$peer' (known: endless tableflip grace nginx h2o)"
[[ $conns =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive whole number"
[[ $mode == keepalive || $mode == close ]] || die "MODE must be keepalive or close"
[[ $restarts =~ ^[0-9]+$ ]] || die "RESTARTS must be a whole number"
[[ $interval =~ ^[1-9][0-9]*$ ]] || die "INTERVAL must be a whole number of seconds"
[[ $timeline_ms =~ ^[0-9]+$ ]] || die "TIMELINE_MS must be a whole number of milliseconds"
duration=$((restarts * interval + 2)) # 1 s of load before the first signal, >= 1 s after the last
p=${port[$peer]}
signal=${sig[$peer]}

# ---- tools and binaries --------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
command -v python3 >/dev/null || missing+=(python3)
case $peer in
  nginx) command -v nginx >/dev/null || missing+=(nginx-light) ;;
  h2o) command -v h2o >/dev/null || missing+=(h2o) ;;
esac
if ((${#missing[@]})); then scripts/deps.sh "${missing[@]}"; fi

loadgen=${LOADGEN:-$build/tools/loadgen}
hello=$build/examples/hello
targets=()
if [[ -z ${LOADGEN:-} ]]; then
  [[ -x $loadgen && ! tools/loadgen.cpp -nt $loadgen ]] || targets+=(loadgen)
else
  [[ -x $loadgen ]] || die "LOADGEN=$loadgen is not an executable"
fi
[[ $peer != endless || -x $hello ]] || targets+=(hello)
if ((${#targets[@]})); then
  build_log=$build/peer-restart-build.log
  mkdir -p "$build"
  say "building ${targets[*]} in $build (log: $build_log)"
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >"$build_log" 2>&1 ||
      { tail -30 "$build_log" >&2; die "cmake configure failed (log: $build_log)"; }
  fi
  cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}" >>"$build_log" 2>&1 ||
    { tail -30 "$build_log" >&2; die "build of ${targets[*]} failed (log: $build_log)"; }
fi
if [[ $peer == tableflip || $peer == grace ]]; then
  bin=$build/peers/$peer
  if [[ ! -x $bin || bench/peers/$peer/main.go -nt $bin ]]; then bench/peers/build.sh; fi
fi

# ---- processes we start, and their clean-up ------------------------------------------------
tmp=""
server_pid="" # the process we started (for nginx and h2o: the master, which stays)
loadgen_pid=""
seen_pids=() # every serving pid the pid file named (they outlive their parent)
binary=""    # what a pid must be running to be ours when stopping

alive() { # pid: running and not a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

ours() { # pid: alive and running our peer's binary (guards against a reused pid)
  alive "$1" && [[ $(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) == *"$binary"* ]]
}

stop_peer() { # TERM every process of the peer we know of, KILL what is left after 10 s
  local pids=() q i any
  for q in "$server_pid" "${seen_pids[@]}"; do
    [[ -n $q ]] && ours "$q" && pids+=("$q")
  done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    any=0
    for q in "${pids[@]}"; do if alive "$q"; then any=1; fi; done
    ((any)) || break
    sleep 0.1
  done
  for q in "${pids[@]}"; do
    if alive "$q"; then
      say "killing $q (still running 10 s after SIGTERM)"
      kill -KILL "$q" 2>/dev/null || true
    fi
  done
  if [[ -n $server_pid ]]; then wait "$server_pid" 2>/dev/null || true; fi
}

cleanup() {
  if [[ -n $loadgen_pid ]]; then kill -TERM "$loadgen_pid" 2>/dev/null || true; fi
  stop_peer
  if [[ -n $tmp ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- port, temp dir, configuration ---------------------------------------------------------
port_in_use() { # port: something listens on it (or holds it bound), any address, v4 or v6
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v h="$hex" '($4 == "0A" || $4 == "07") && substr($2, length($2) - 4) == h { f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
port_in_use "$p" && die "port $p (for $peer) is in use; stop what holds it and run again"

tmp=$(mktemp -d /tmp/endless-peer.XXXXXX)
chmod 755 "$tmp" # nginx and h2o workers run as nobody when started as root
pidfile=$tmp/$peer.pid
log=$tmp/$peer.log

case $peer in
  endless)
    binary=$root/$hello
    argv=("$binary" --addr "127.0.0.1:$p" --pidfile "$pidfile")
    ;;
  tableflip | grace)
    binary=$root/$build/peers/$peer
    argv=("$binary" --addr "127.0.0.1:$p" --pidfile "$pidfile")
    ;;
  nginx)
    binary=nginx
    mkdir -p "$tmp/nginx"
    conf=$tmp/nginx/nginx.conf
    # X-Pid: nginx's $pid is the worker's pid, which a reload replaces.
    # shellcheck disable=SC2016 # $pid is nginx's variable
    sed -e "s|@PORT@|$p|g" -e "s|@DIR@|$tmp/nginx|g" \
      -e 's|^\( *\)return 200 |\1add_header X-Pid $pid;\n\1return 200 |' bench/nginx.conf >"$conf"
    grep -q 'add_header X-Pid' "$conf" || die "bench/nginx.conf has no 'return 200' line to add X-Pid to"
    # Room for CONNECTIONS clients: the template's 4096 connections and the inherited fd limit
    # suit bench/run.sh's 64, not 10,000.
    sed -i "s|^\( *\)worker_connections [0-9]*;|\1worker_connections $((conns > 4000 ? conns + 96 : 4096));|" "$conf"
    hard=$(ulimit -Hn)
    if [[ $hard =~ ^[0-9]+$ ]]; then
      sed -i "s|^worker_processes .*|&\nworker_rlimit_nofile $hard;|" "$conf"
    fi
    nginx_built=$(nginx -V 2>&1 || true)
    for m in http_proxy http_fastcgi http_uwsgi http_scgi; do
      if [[ $nginx_built == *"--without-${m}_module"* ]]; then sed -i "/needs:$m\$/d" "$conf"; fi
    done
    pidfile=$tmp/nginx/nginx.pid
    argv=(nginx -p "$tmp/nginx/" -c "$conf" -e "$tmp/nginx/error.log")
    ;;
  h2o)
    binary=h2o
    mkdir -p "$tmp/h2o"
    conf=$tmp/h2o/h2o.conf
    sed -e "s|@PORT@|$p|g" -e "s|@DIR@|$tmp/h2o|g" bench/h2o.conf >"$conf"
    if (($(id -u) != 0)); then sed -i '/# root-only/d' "$conf"; fi
    pidfile=$tmp/h2o/h2o.pid
    argv=(h2o -m master -c "$conf")
    ;;
esac

probe() { # the response to one GET / with Connection: close (empty if none)
  # shellcheck disable=SC2016 # $1 expands in the inner shell
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$1" >&3
    timeout 1 cat <&3' _ "$1" 2>/dev/null || true
}

show_logs() {
  local f
  for f in "$log" "$tmp/nginx/error.log" "$tmp/h2o/error.log"; do
    if [[ -s $f ]]; then
      echo "--- $f" >&2
      tail -20 "$f" >&2
    fi
  done
}

# ---- start -------------------------------------------------------------------------------
say "starting $peer on 127.0.0.1:$p"
"${argv[@]}" >>"$log" 2>&1 &
server_pid=$!
ready=0
for ((i = 0; i < 100; i++)); do
  alive "$server_pid" || break
  resp=$(probe "$p")
  if [[ $resp == "HTTP/1.1 200"* && $resp == *"Hello Zero-Downtime!"* && -s $pidfile ]]; then
    ready=1
    break
  fi
  sleep 0.1
done
((ready)) || {
  show_logs
  die "$peer did not answer GET / on 127.0.0.1:$p (or wrote no pid file $pidfile)"
}
[[ $resp == *$'\n'[Xx]-[Pp]id:* ]] || say "warning: $peer sends no X-Pid header; hand-over will show as 'none'"

read_pid() { # the pid in the pid file (empty if none)
  local v
  v=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
  echo "$v"
}

now_us() { echo "${EPOCHREALTIME/./}"; } # bash 5: no fork, microseconds

# ---- load and restarts -------------------------------------------------------------------
mkdir -p bench/results
out=${OUT:-bench/results/peers-restart-$(date +%F).md}
mkdir -p "$(dirname "$out")"
json=${out%.md}-$peer-$mode-$conns-$(date +%H%M%S).json
load_out=$tmp/loadgen.txt
load_err=$tmp/loadgen.err
url="http://127.0.0.1:$p/"
read -r -a extra <<<"${LOADGEN_ARGS:-}"
load_argv=("$loadgen" --url "$url" --connections "$conns" --duration "$duration" --mode "$mode"
  --pids --json "$json")
if ((timeline_ms > 0)); then
  if "$loadgen" --help 2>/dev/null | grep -q -- --timeline-ms; then
    load_argv+=(--timeline-ms "$timeline_ms")
  else
    say "warning: $loadgen has no --timeline-ms; no failures per restart for this run"
    timeline_ms=0
  fi
fi
load_argv+=("${extra[@]}")

say "load: $conns connections, $mode, ${duration}s; $restarts x SIG$signal, ${interval}s apart"
declare -a sent_us sent_ms target_pid new_file_pid new_xpid handover_ms
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(now_us)
"${load_argv[@]}" >"$load_out" 2>"$load_err" &
loadgen_pid=$!
seen_pids+=("$(read_pid)")
for ((i = 1; i <= restarts; i++)); do
  # signal i at 1 s + (i-1) x interval after the start, whatever the previous one took
  due=$((start + 1000000 + (i - 1) * interval * 1000000))
  wait_us=$((due - $(now_us)))
  if ((wait_us > 0)); then sleep "$(printf '%d.%06d' $((wait_us / 1000000)) $((wait_us % 1000000)))"; fi
  target=$(read_pid)
  target_pid[i]=$target
  if [[ -z $target ]] || ! alive "$target"; then
    sent_ms[i]=""
    say "restart $i: no live process in $pidfile; signal not sent"
    continue
  fi
  t=$(now_us)
  kill "-$signal" "$target"
  sent_us[i]=$t
  new_file_pid[i]=""
  case $peer in
    endless | tableflip | grace) # the pid file names the new process once it is ready
      for ((k = 0; k < 200; k++)); do
        v=$(read_pid)
        if [[ -n $v && $v != "$target" ]]; then
          new_file_pid[i]=$v
          seen_pids+=("$v")
          break
        fi
        sleep 0.02
      done
      ;;
  esac
done
load_rc=0
wait "$loadgen_pid" || load_rc=$?
loadgen_pid=""
((load_rc <= 1)) || {
  cat "$load_err" >&2
  die "loadgen could not run (exit $load_rc)"
}
[[ -s $json ]] || die "loadgen wrote no JSON to $json"
# Signal times on loadgen's clock: its JSON says when (wall clock) that clock started.
clock_origin=$(grep -o '"start_unix_us":[0-9]*' "$json" | head -1 | cut -d: -f2 || true)
clock=loadgen
if [[ -z $clock_origin ]]; then
  clock_origin=$start
  clock="script (a few ms late on loadgen's clock)"
fi
for ((i = 1; i <= restarts; i++)); do
  sent_ms[i]=""
  [[ -n ${sent_us[i]:-} ]] || continue
  d=$((sent_us[i] - clock_origin))
  if ((d < 0)); then
    sent_ms[i]=-$((-d / 1000)).$(printf '%03d' $((-d % 1000)))
  else
    sent_ms[i]=$((d / 1000)).$(printf '%03d' $((d % 1000)))
  fi
done
still=$(probe "$p")
[[ $still == *"Hello Zero-Downtime!"* ]] && still_serving=yes || still_serving=NO

# ---- the report ----------------------------------------------------------------------------
num() { # key in the JSON -> its number (first occurrence)
  grep -o "\"$1\":[0-9.]*" "$json" | head -1 | cut -d: -f2
}
requests=$(num requests)
ok=$(num ok)
failed=$(num failed)
race=$(num reset_reused)
hard=$((failed - race))
classes=$(grep -o '"failures":{[^}]*}' "$json" | sed -e 's/"failures":{//' -e 's/}//' -e 's/"//g' -e 's/:/ /g' -e 's/,/, /g')
rps=$(num rps)
p50=$(num p50)
p99=$(num p99)
lmax=$(num max)
# "pid first_ms" per X-Pid value seen, in order of first appearance
firsts=$(grep -o '{"pid":[^}]*}' "$json" |
  sed -e 's/.*"pid":"\{0,1\}\([^",]*\)"\{0,1\},.*"first_ms":\([0-9.]*\).*/\1 \2/' || true)

for ((i = 1; i <= restarts; i++)); do
  new_xpid[i]=""
  handover_ms[i]=""
  [[ -n ${sent_ms[i]} ]] || continue
  next=""
  if ((i < restarts)); then next=${sent_ms[i + 1]}; fi
  # the earliest pid first seen after this signal (and before the next one)
  new=$(awk -v t="${sent_ms[i]}" -v n="$next" '
    $2 + 0 >= t + 0 && (n == "" || $2 + 0 < n + 0) && (best == "" || $2 + 0 < bt) { best = $1; bt = $2 + 0 }
    END { if (best != "") printf "%s %.1f", best, bt - t }' <<<"$firsts")
  if [[ -n $new ]]; then
    new_xpid[i]=${new%% *}
    handover_ms[i]=${new#* }
  fi
done

restart_rows() {
  local i
  for ((i = 1; i <= restarts; i++)); do
    if [[ -z ${sent_ms[i]} ]]; then
      printf '| %d | not sent | | | |\n' "$i"
      continue
    fi
    printf '| %d | %s | %s | %s | %s |\n' "$i" "${target_pid[i]}" "${new_file_pid[i]:-—}" \
      "${new_xpid[i]}" "$([[ -n ${handover_ms[i]} ]] && echo "${handover_ms[i]} ms" || echo "none seen")"
  done
}

# This run's parameters and the restarts, added to loadgen's JSON for bench/plot_restarts.py.
restarts_tsv=$(for ((i = 1; i <= restarts; i++)); do
  printf '%d\t%s\t%s\t%s\t%s\t%s\n' "$i" "${sent_ms[i]}" "${target_pid[i]:-}" \
    "${new_file_pid[i]:-}" "${new_xpid[i]}" "${handover_ms[i]}"
done)
python3 - "$json" "$peer" "$conns" "$mode" "$restarts" "$interval" "SIG$signal" "$timeline_ms" \
  "$clock" "$(date -Is)" "$restarts_tsv" <<'PY' || die "could not add the restarts to $json"
import json, sys
path, peer, conns, mode, restarts, interval, sig, timeline_ms, clock, when, tsv = sys.argv[1:]
num = lambda s, f=float: f(s) if s else None
with open(path) as f:
    d = json.load(f)
d["run"] = {"peer": peer, "connections": int(conns), "mode": mode, "restarts": int(restarts),
            "interval_s": int(interval), "signal": sig, "timeline_ms": int(timeline_ms),
            "signal_clock": clock, "finished": when}
d["restarts"] = []
for line in tsv.splitlines():
    i, sent, target, file_pid, xpid, hand = (line.split("\t") + [""] * 6)[:6]
    d["restarts"].append({"restart": int(i), "sent_ms": num(sent), "signalled_pid": num(target, int),
                          "pid_file_pid": num(file_pid, int),
                          "first_new_xpid": int(xpid) if xpid.isdigit() else (xpid or None),
                          "handover_ms": num(hand)})
with open(path + ".tmp", "w") as f:
    json.dump(d, f, separators=(",", ":"))
    f.write("\n")
import os
os.replace(path + ".tmp", path)
PY

case $peer in
  endless) what="examples/hello (ours, Release, $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes'); binary built $(date -r "$hello" '+%F %T' 2>/dev/null || echo '?')), default threads (one per CPU)" ;;
  tableflip) what="bench/peers/tableflip: Go $(go env GOVERSION 2>/dev/null || echo '?') net/http + cloudflare/tableflip $(dpkg-query -W -f='${Version}' golang-github-cloudflare-tableflip-dev 2>/dev/null || echo '?') (Debian), GOMAXPROCS = CPUs" ;;
  grace) what="bench/peers/grace: Go $(go env GOVERSION 2>/dev/null || echo '?') net/http + facebookgo/grace/gracehttp $(dpkg-query -W -f='${Version}' golang-github-facebookgo-grace-dev 2>/dev/null || echo '?') (Debian), GOMAXPROCS = CPUs" ;;
  nginx) what="$(nginx -v 2>&1 | sed 's/^nginx version: //') with bench/nginx.conf (master + 1 worker) plus add_header X-Pid \$pid; restart = reload" ;;
  h2o) what="h2o $(h2o -v 2>/dev/null | head -1 | sed 's/^h2o version //') -m master (start_server) with bench/h2o.conf (1 thread, mruby handler)" ;;
esac

show() { # argv -> one shell-quoted line, temp dir and repository path shortened
  printf '%q ' "$@" | sed -e "s|$tmp|\$TMP|g" -e "s|$root/||g" -e 's/ $//'
  echo
}

section=$tmp/section.md
if [[ ! -s $out ]]; then
  {
    echo "# Restarts under load: endless and its peers, $(date +%F)"
    echo
    echo "Each section: one run of \`bench/peer_restart.sh PEER CONNECTIONS MODE\` on $(nproc) cores,"
    echo "unpinned, 127.0.0.1. tools/loadgen never retries; failures are split into **hard** (every"
    echo "class but reset_reused) and the **keep-alive race** (reset_reused: the server closed an idle"
    echo "kept-alive connection just as the client sent on it; a client retrying idempotent requests"
    echo "would not see it). Hand-over: signal sent -> first response carrying a new X-Pid, as the"
    echo "client saw it, on loadgen's clock."
  } >>"$out"
fi
{
  echo
  echo "## $peer, $conns connections, $mode ($(date '+%F %T'))"
  echo
  echo "- server: $what"
  echo "- $restarts x SIG$signal, one every $interval s from 1 s into $duration s of load; load average before: $load_before"
  if ((timeline_ms > 0)); then
    echo "- outcomes per ${timeline_ms} ms in the JSON (timeline); signal times on the $clock clock"
  fi
  echo "- still serving after the run: $still_serving; loadgen JSON: \`$(basename "$json")\`"
  echo
  echo "| requests | ok | hard failures | keep-alive race (reset_reused) | req/s | p50 | p99 | max |"
  echo "|--:|--:|--:|--:|--:|--:|--:|--:|"
  echo "| $requests | $ok | $hard | $race | $rps | $p50 ms | $p99 ms | $lmax ms |"
  echo
  echo "Failure classes: $classes."
  echo
  echo "| restart | signal sent to | pid file then names | first new X-Pid | hand-over |"
  echo "|--:|--:|--:|--:|--:|"
  restart_rows
  if [[ $peer == nginx || $peer == h2o ]]; then
    echo
    echo "The signal goes to the master, whose pid stays; the X-Pid values are the serving"
    echo "processes' (nginx's worker, h2o's server process under start_server), which each restart replaces."
  fi
  if [[ -s $load_err ]]; then
    echo
    echo "First failures as loadgen described them:"
    echo
    echo '```'
    head -5 "$load_err"
    echo '```'
  fi
  echo
  echo '```'
  show "${argv[@]}"
  show "${load_argv[@]}" | sed "s|$(dirname "$json")/||"
  echo '```'
} >"$section"
cat "$section" >>"$out"
cat "$section"
say "appended to $out (loadgen JSON: $json)"
