#!/usr/bin/env bash
# HTTP/1.1 benchmark: our server (examples/hello) beside a do-nothing epoll server (the
# ceiling) and nginx (the reference), in one run, on one machine. See bench/README.md.
#
#   bench/run.sh                                  # DURATION=10 s per run, ROUNDS=3
#   DURATION=2 ROUNDS=1 bench/run.sh              # smoke run
#   SERVERS="noop nginx" bench/run.sh             # a subset (default: all six)
#   OUT=/tmp/x.md bench/run.sh                    # write the table elsewhere
#
# Each measurement starts a fresh server pinned to core 1, waits until it answers, records
# its idle RSS, runs wrk pinned to core 0 over 127.0.0.1, and reads the server's user+system
# CPU time from /proc before and after. Rounds visit every scenario and, within it, every
# server in turn, so a slow minute on the machine hurts all servers alike; the table shows
# medians over rounds.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."
root=$PWD

duration=${DURATION:-10}
rounds=${ROUNDS:-3}
read -r -a servers <<<"${SERVERS:-noop nginx endless h2o tableflip grace}"
connections=64
depth=16
server_cpu=1
client_cpu=0
build=build/bench
declare -A port=([noop]=18080 [nginx]=18081 [endless]=18082 [h2o]=18083 [tableflip]=18084
  [grace]=18085)
declare -A label=([noop]="noop (ceiling)" [nginx]="nginx" [endless]="endless (hello)"
  [h2o]="h2o (mruby /)" [tableflip]="Go tableflip" [grace]="Go grace")
scenarios=(keep-alive close "pipelined-$depth")

die() {
  echo "bench: $*" >&2
  exit 1
}
say() { echo "bench: $*" >&2; }

[[ $duration =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive whole number"
for s in "${servers[@]}"; do
  [[ -n ${port[$s]:-} ]] || die "unknown server '$s' in SERVERS (known: ${!port[*]})"
done
(($(nproc) >= 2)) || die "needs 2 cores: the server runs on core $server_cpu, wrk on core $client_cpu"

# ---- processes we start, and their clean-up ------------------------------------------------
started=() # pids of servers (their children are found when stopping) and of wrk
tmp=""

# The pid and every descendant of it (nginx: master and worker). Threads are counted by
# their process's /proc/<pid>/stat, so they need no listing.
pid_tree() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    { pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); kids[f[2]] = kids[f[2]] " " pid }
    END {
      queue = root; out = ""
      while (queue != "") {
        n = split(queue, q, " "); queue = ""
        for (i = 1; i <= n; i++) { out = out " " q[i]; if (q[i] in kids) queue = queue kids[q[i]] }
      }
      print substr(out, 2)
    }'
}

alive() { # pid: running and not a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

stop_tree() { # pid: TERM it and its descendants, KILL what is left after 5 s, reap it
  local pids i p
  pids=$(pid_tree "$1")
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    local any=0
    for p in $pids; do
      if alive "$p"; then any=1; fi
    done
    ((any)) || break
    sleep 0.1
  done
  for p in $pids; do
    if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  wait "$1" 2>/dev/null || true
}

forget() { # pid: no longer ours to clean up
  local kept=() p
  for p in "${started[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  started=("${kept[@]}")
}

cleanup() {
  local p
  for p in "${started[@]}"; do stop_tree "$p"; done
  if [[ -n $tmp ]]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools and binaries --------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then scripts/deps.sh "${missing[@]}"; fi
# The peers: h2o from Debian, our Go servers on Debian's tableflip and grace packages.
if [[ " ${servers[*]} " == *" h2o "* ]]; then scripts/deps.sh h2o; fi
if [[ " ${servers[*]} " == *" tableflip "* || " ${servers[*]} " == *" grace "* ]]; then
  bench/peers/build.sh >&2
fi

mkdir -p "$build"
build_log="$build/bench-build.log"
noop_bin=""
hello_bin=""
endless_note=""
if [[ " ${servers[*]} " == *" endless "* ]]; then
  say "building Release binaries in $build (log: $build_log)"
  if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF \
    >"$build_log" 2>&1; then
    tail -30 "$build_log" >&2
    die "cmake configure failed (full log: $build_log)"
  fi
  targets=()
  target_list=$(cmake --build "$build" --target help 2>/dev/null || true)
  for t in hello noop_server; do
    grep -qE "^(\.\.\. )?$t(:| |$)" <<<"$target_list" && targets+=("$t")
  done
  if ((${#targets[@]})); then
    if ! cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}" \
      >>"$build_log" 2>&1; then
      tail -30 "$build_log" >&2
      die "build of ${targets[*]} failed (full log: $build_log)"
    fi
  fi
  for f in "$build/bench/noop_server" "$build/noop_server"; do
    [[ " ${targets[*]} " == *" noop_server "* && -x $f ]] && noop_bin=$f && break
  done
  if [[ -x $build/examples/hello ]]; then
    hello_bin=$build/examples/hello
  else
    endless_note="endless (examples/hello): not built yet ($build/examples/hello missing), skipped"
  fi
fi
if [[ -z $noop_bin ]]; then
  # No CMake target for it yet: the same warnings as the library, as errors.
  noop_bin=$build/noop_server
  if [[ ! -x $noop_bin || bench/noop_server.cpp -nt $noop_bin ]]; then
    say "compiling $noop_bin"
    g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Werror \
      bench/noop_server.cpp -o "$noop_bin"
  fi
fi
if [[ -n $endless_note ]]; then
  say "$endless_note"
  kept=()
  for s in "${servers[@]}"; do [[ $s == endless ]] || kept+=("$s"); done
  servers=("${kept[@]}")
fi
((${#servers[@]})) || die "no server left to measure"

# ---- ports, temp dir, nginx configuration -------------------------------------------------
port_in_use() { # port: something listens on it (or holds it bound), any address, v4 or v6
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v h="$hex" '($4 == "0A" || $4 == "07") && substr($2, length($2) - 4) == h { f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
for s in "${servers[@]}"; do
  if port_in_use "${port[$s]}"; then
    die "port ${port[$s]} (for $s) is in use; stop what holds it and run again"
  fi
done

tmp=$(mktemp -d /tmp/endless-bench.XXXXXX)
chmod 755 "$tmp" # nginx workers run as nobody and must reach their temp dirs
mkdir -p "$tmp/nginx"
nginx_conf=$tmp/nginx/nginx.conf
sed -e "s|@PORT@|${port[nginx]}|g" -e "s|@DIR@|$tmp/nginx|g" bench/nginx.conf >"$nginx_conf"
nginx_built=$(nginx -V 2>&1 || true)
for m in http_proxy http_fastcgi http_uwsgi http_scgi; do
  if [[ $nginx_built == *"--without-${m}_module"* ]]; then
    sed -i "/needs:$m\$/d" "$nginx_conf"
  fi
done

server_argv() { # name -> argv array
  local p=${port[$1]}
  case $1 in
    noop) argv=(taskset -c "$server_cpu" "$noop_bin" --addr "127.0.0.1:$p") ;;
    nginx) argv=(taskset -c "$server_cpu" nginx -p "$tmp/nginx/" -c "$nginx_conf"
      -e "$tmp/nginx/error.log") ;;
    endless) argv=(taskset -c "$server_cpu" "$hello_bin" --addr "127.0.0.1:$p" --threads 1) ;;
    h2o)
      mkdir -p "$tmp/h2o"
      # As root, h2o drops to nobody before it writes its pid file and log.
      chmod 755 "$tmp" && chmod 777 "$tmp/h2o"
      sed -e "s|@PORT@|$p|g" -e "s|@DIR@|$tmp/h2o|g" bench/h2o.conf >"$tmp/h2o/h2o.conf"
      [[ $(id -u) -eq 0 ]] || sed -i '/# root-only/d' "$tmp/h2o/h2o.conf"
      argv=(taskset -c "$server_cpu" h2o -c "$tmp/h2o/h2o.conf")
      ;;
    tableflip | grace)
      argv=(taskset -c "$server_cpu" "$build/peers/$1" --addr "127.0.0.1:$p" --pidfile "$tmp/$1.pid")
      ;;
  esac
}

wrk_argv() { # scenario url -> argv array
  argv=(taskset -c "$client_cpu" wrk -t1 "-c$connections" "-d${duration}s" --latency)
  case $1 in
    keep-alive) argv+=("$2") ;;
    close) argv+=(-H "Connection: close" "$2") ;;
    pipelined-*) argv+=(-s "$root/bench/pipeline.lua" "$2" -- "$depth") ;;
  esac
}

# ---- measuring -----------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)

cpu_ticks() { # pids... -> utime+stime summed (fields 14 and 15 of /proc/<pid>/stat)
  local p s total=0 f
  for p in "$@"; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
    read -r -a f <<<"${s##*) }" # f[0] is field 3
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

rss_kb() { # pids... -> VmRSS summed
  local p total=0 kb
  for p in "$@"; do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

probe() { # port -> the response to one GET / with Connection: close (empty if none)
  # shellcheck disable=SC2016 # $1 expands in the inner shell
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$1" >&3
    timeout 1 cat <&3' _ "$1" 2>/dev/null || true
}

start_server() { # name -> server_pid, server_pids
  local name=$1 log=$tmp/$1.log resp i
  server_argv "$name"
  "${argv[@]}" >>"$log" 2>&1 &
  server_pid=$!
  started+=("$server_pid")
  for ((i = 0; i < 100; i++)); do
    if ! alive "$server_pid"; then break; fi
    resp=$(probe "${port[$name]}")
    if [[ $resp == "HTTP/1.1 200"* && $resp == *"Hello Zero-Downtime!"* ]]; then
      server_pids=$(pid_tree "$server_pid")
      return 0
    fi
    sleep 0.1
  done
  echo "--- $log" >&2
  cat "$log" >&2 || true
  if [[ $name == nginx ]]; then cat "$tmp/nginx/error.log" >&2 || true; fi
  die "$name did not answer GET / on 127.0.0.1:${port[$name]}"
}

stop_server() {
  stop_tree "$server_pid"
  forget "$server_pid"
}

results=$tmp/results.tsv
: >"$results"
log_dir=$build/wrk-logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$log_dir"

measure() { # round scenario server
  local round=$1 scenario=$2 name=$3 url rss before after out wrk_pid rc=0
  url="http://127.0.0.1:${port[$name]}/"
  start_server "$name"
  # shellcheck disable=SC2086
  rss=$(rss_kb $server_pids)
  wrk_argv "$scenario" "$url"
  out=$log_dir/$name-$scenario-$round.txt
  # shellcheck disable=SC2086
  before=$(cpu_ticks $server_pids) || die "$name exited before the load"
  "${argv[@]}" >"$out" 2>&1 &
  wrk_pid=$!
  started+=("$wrk_pid")
  wait "$wrk_pid" || rc=$?
  forget "$wrk_pid"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $server_pids) || die "$name died during the load (wrk output: $out)"
  stop_server
  ((rc == 0)) || die "wrk failed for $name/$scenario: $(cat "$out")"
  awk -v server="$name" -v scenario="$scenario" -v round="$round" -v rss="$rss" \
    -v ticks=$((after - before)) -v hz="$clk_tck" -v duration="$duration" '
    function us(v, n) {
      n = v + 0
      if (v ~ /us$/) return n
      if (v ~ /ms$/) return n * 1000
      if (v ~ /m$/) return n * 60e6
      if (v ~ /s$/) return n * 1e6
      return n
    }
    /^ *50% / { p50 = us($2) }
    /^ *99% / { p99 = us($2) }
    / requests in / { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) errors += $i + 0 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    END {
      if (requests == 0) { print "no requests parsed" > "/dev/stderr"; exit 1 }
      cpu = ticks / hz
      # wrk prints a percentile of 0 when its coordinated-omission correction has moved
      # samples below the recorded minimum (it happens with pipelining): no figure, then.
      printf "%s\t%s\t%d\t%.0f\t%d\t%s\t%s\t%.3f\t%.0f\t%d\t%d\t%d\n", server, scenario,
        round, rps, requests, (p50 > 0 ? sprintf("%.1f", p50) : "-"),
        (p99 > 0 ? sprintf("%.1f", p99) : "-"), cpu * 1e6 / requests, 100 * cpu / duration, rss,
        errors, non2xx
    }' "$out" >>"$results" || die "could not read wrk output $out"
  tail -1 "$results" | awk -F'\t' '{ printf "bench: round %s  %-13s %-9s %9.0f req/s  p99 %8s us  %6.2f CPU us/req  (server core %3.0f%%)\n", $3, $2, $1, $4, $7, $8, $9 }' >&2
}

# ---- the run -------------------------------------------------------------------------------
started_at=$(date -Is)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "servers: ${servers[*]}; scenarios: ${scenarios[*]}; ${duration}s x $rounds round(s)"
for ((r = 1; r <= rounds; r++)); do
  for scenario in "${scenarios[@]}"; do
    for name in "${servers[@]}"; do
      measure "$r" "$scenario" "$name"
    done
  done
done
load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ----------------------------------------------------------------------------
mkdir -p bench/results
out_file=${OUT:-bench/results/http1-$(date +%F).md}
if [[ -z ${OUT:-} && -e $out_file ]]; then out_file=bench/results/http1-$(date +%F-%H%M%S).md; fi

table() {
  awk -F'\t' -v servers="${servers[*]}" -v scenarios="${scenarios[*]}" \
    -v labels="$(for s in "${!label[@]}"; do printf '%s=%s;' "$s" "${label[$s]}"; done)" '
    function median(key,   n, i, j, t, v) {
      n = split(vals[key], v, " ")
      for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function add(k, x) { if (x != "-") vals[k] = (k in vals) ? vals[k] " " x : x }
    function lat(k,   x) {
      if (!(k in vals)) return "—"
      x = median(k)
      return x >= 1000 ? sprintf("%.2f ms", x / 1000) : sprintf("%.0f µs", x)
    }
    {
      k = $1 SUBSEP $2
      add(k SUBSEP "rps", $4); add(k SUBSEP "p50", $6); add(k SUBSEP "p99", $7)
      add(k SUBSEP "cpu", $8); add(k SUBSEP "busy", $9); add(k SUBSEP "rss", $10)
      errors[k] += $11; non2xx[k] += $12
    }
    END {
      nl = split(labels, lv, ";")
      for (i = 1; i <= nl; i++) if (lv[i] != "") { eq = index(lv[i], "="); name[substr(lv[i], 1, eq - 1)] = substr(lv[i], eq + 1) }
      print "| server | scenario | req/s | vs nginx | p50 | p99 | server CPU µs/req | vs noop | server core busy | idle RSS |"
      print "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
      ns = split(servers, sv, " "); nc = split(scenarios, sc, " ")
      for (c = 1; c <= nc; c++) {
        for (s = 1; s <= ns; s++) {
          k = sv[s] SUBSEP sc[c]
          rps = median(k SUBSEP "rps"); cpu = median(k SUBSEP "cpu")
          kn = "nginx" SUBSEP sc[c]; ko = "noop" SUBSEP sc[c]
          vs_nginx = ((kn SUBSEP "rps") in vals) ? sprintf("%.2f×", rps / median(kn SUBSEP "rps")) : "n/a"
          vs_noop = ((ko SUBSEP "cpu") in vals) && median(ko SUBSEP "cpu") > 0 ? sprintf("%.2f×", cpu / median(ko SUBSEP "cpu")) : "n/a"
          printf "| %s | %s | %.0f | %s | %s | %s | %.2f | %s | %.0f%% | %.1f MiB |\n", name[sv[s]], sc[c],
            rps, vs_nginx, lat(k SUBSEP "p50"), lat(k SUBSEP "p99"), cpu, vs_noop,
            median(k SUBSEP "busy"), median(k SUBSEP "rss") / 1024
          if (errors[k] + non2xx[k] > 0) notes = notes sprintf("- %s / %s: %d socket errors, %d non-2xx responses over all rounds\n", name[sv[s]], sc[c], errors[k], non2xx[k])
        }
      }
      if (notes != "") printf "\nErrors reported by wrk:\n%s", notes
    }' "$results"
}

show() { # argv -> one shell-quoted line, temp dir and repository path shortened
  printf '%q ' "$@" | sed -e "s|$tmp|\$TMP|g" -e "s|$root/||g" -e 's/ $//'
  echo
}

{
  echo "# HTTP/1.1 benchmark, $(date +%F)"
  echo
  echo "- started: $started_at; load average at start: $load_at_start, at end: $load_at_end"
  echo "- kernel: $(uname -r)"
  echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), nproc $(nproc)"
  echo "- wrk: $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//' || true)"
  echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "- endless: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)'), Release build in $build"
  echo "- $duration s per run, $rounds round(s), medians shown; server pinned to core $server_cpu, wrk to core $client_cpu, 127.0.0.1 only"
  if [[ -n $endless_note ]]; then echo "- $endless_note"; fi
  echo
  table
  echo
  cat <<EOF
req/s, p50 and p99 are wrk's. Pipelined latencies are per batch of $depth and distorted by
wrk's coordinated-omission correction (it assumes one request per batch); — marks a
percentile wrk printed as 0. Server CPU µs/req is user+system time of the server's
processes (from /proc/<pid>/stat) over the wrk run ÷ requests; vs noop divides it by the
do-nothing server's. Server core busy is that CPU time ÷ the run's length: near 100% means
the server, not wrk, set the pace. Idle RSS is VmRSS summed over the server's processes
after start-up, before load. See bench/README.md.
EOF
  echo
  echo "Commands (\$TMP is a fresh temp dir; nginx.conf is bench/nginx.conf with @PORT@ and @DIR@ filled in):"
  echo
  echo '```'
  if [[ " ${servers[*]} " == *" endless "* ]]; then
    echo "cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF"
    if ((${#targets[@]})); then
      echo "cmake --build $build --parallel $(nproc) --target ${targets[*]}"
    else
      echo "# no target hello or noop_server defined yet: nothing built by cmake"
    fi
  fi
  if [[ $noop_bin == "$build/noop_server" ]]; then
    echo "g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Werror bench/noop_server.cpp -o $noop_bin"
  fi
  for name in "${servers[@]}"; do
    server_argv "$name"
    show "${argv[@]}"
  done
  for scenario in "${scenarios[@]}"; do
    wrk_argv "$scenario" "http://127.0.0.1:PORT/"
    show "${argv[@]}"
  done
  echo '```'
} >"$out_file"
cat "$out_file"
say "written to $out_file (raw wrk output in $log_dir)"
