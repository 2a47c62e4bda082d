#!/usr/bin/env bash
# The whole benchmark suite in one run, every server side by side: speed (bench/run.sh),
# restarts under load for every peer at every client count and mode (bench/peer_restart.sh),
# restart metrics for every peer (bench/restart_metrics.py), memory (bench/memory.sh), then
# the plots and summary tables. Every file it writes in bench/results/ carries one stamp
# (DATE-HHMMSS), and an index, bench/results/all-STAMP.md, links them with the machine
# description. See bench/README.md.
#
#   bench/all.sh                  # everything (about 25 minutes)
#   bench/all.sh --smoke          # bench/smoke.sh: every part for seconds (what CI runs)
#   STEPS="restarts metrics plots" PEERS="endless nginx" CONNECTIONS=1000 MODES=keepalive \
#     bench/all.sh                # a part of it
#
# Environment (defaults in brackets):
#   STEPS        which steps, in this order [speed restarts metrics memory plots]
#   PEERS        restart peers [endless tableflip grace nginx h2o]
#   CONNECTIONS  client counts for peer_restart.sh [100 1000 10000]
#   MODES        peer_restart.sh modes [keepalive close]
#   CLOSE_MAX    skip close-mode runs above this many clients [no limit]
#   RESTARTS, INTERVAL, TIMELINE_MS   passed to peer_restart.sh [5, 2 s, 50 ms]
#   METRICS_RESTARTS, FD_RESTARTS     restart_metrics.py --restarts, --fd-restarts [5, 100]
#   SERVERS, SCENARIOS, DURATION, ROUNDS   passed to run.sh (its defaults: seven servers, six
#                scenarios (HTTP/1.1, HTTPS, TLS handshakes, HTTP/2), 10 s, 3)
#   CONNS        memory.sh's idle connections [10000]
#   STAMP        the files' stamp [$(date +%F-%H%M%S)]
#   RESULTS      where the files go [bench/results]
#
# The steps build what they need (Release, in build/bench) and install missing Debian
# packages. A failed step is recorded in the index and the others still run; the exit status
# is then 1. Nothing else heavy should run meanwhile: on a shared machine, run it under the
# machine's lock (e.g. flock /tmp/endless-heavy.lock bench/all.sh); the steps take none.
# shellcheck disable=SC2317 # the step functions are called through step()
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."

if [[ ${1:-} == --smoke ]]; then exec bench/smoke.sh; fi
(($# == 0)) || {
  sed -n '/^#   bench\/all.sh  /,/^#   STAMP/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

read -r -a steps <<<"${STEPS:-speed restarts metrics memory plots}"
read -r -a peers <<<"${PEERS:-endless tableflip grace nginx h2o}"
read -r -a sizes <<<"${CONNECTIONS:-100 1000 10000}"
read -r -a modes <<<"${MODES:-keepalive close}"
close_max=${CLOSE_MAX:-}
metrics_restarts=${METRICS_RESTARTS:-5}
fd_restarts=${FD_RESTARTS:-100}
stamp=${STAMP:-$(date +%F-%H%M%S)}
results=${RESULTS:-bench/results}
build=build/bench

die() {
  echo "all: $*" >&2
  exit 2
}
say() { echo "all: $*" >&2; }

for s in "${steps[@]}"; do
  [[ $s =~ ^(speed|restarts|metrics|memory|plots)$ ]] || die "unknown step '$s' in STEPS"
done
for p in "${peers[@]}"; do
  [[ $p =~ ^(endless|tableflip|grace|nginx|h2o)$ ]] || die "unknown peer '$p' in PEERS"
done
for c in "${sizes[@]}"; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad CONNECTIONS '$c'"; done
for m in "${modes[@]}"; do [[ $m == keepalive || $m == close ]] || die "bad MODES '$m'"; done
[[ -z $close_max || $close_max =~ ^[0-9]+$ ]] || die "CLOSE_MAX must be a whole number"
[[ $metrics_restarts =~ ^[1-9][0-9]*$ && $fd_restarts =~ ^[1-9][0-9]*$ ]] ||
  die "METRICS_RESTARTS and FD_RESTARTS must be positive whole numbers"
((fd_restarts >= metrics_restarts)) || die "FD_RESTARTS must be at least METRICS_RESTARTS"
[[ $stamp =~ ^[0-9A-Za-z._-]+$ ]] || die "STAMP may hold letters, digits, '.', '_' and '-' only"
has() { [[ " ${steps[*]} " == *" $1 "* ]]; }

mkdir -p "$results"
index=$results/all-$stamp.md
[[ ! -e $index ]] || die "$index exists; pick another STAMP"
speed_md=$results/speed-$stamp.md
peers_md=$results/peers-restart-$stamp.md
metrics_md=$results/restart-metrics-$stamp.md
memory_md=$results/memory-$stamp.md
rows=() # the index's step table
status=0

step() { # name description command...: runs it, records how it went and how long it took
  local name=$1 what=$2 t0 rc=0
  shift 2
  say "== $name: $what"
  t0=$SECONDS
  "$@" || rc=$?
  if ((rc)); then status=1; fi
  rows+=("| $name | $what | $( ((rc)) && echo "**failed** (exit $rc)" || echo ok) | $((SECONDS - t0)) s |")
  return 0
}

started=$(date -Is)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- speed ---------------------------------------------------------------------------------
if has speed; then
  step speed "bench/run.sh (${SERVERS:-its seven servers}, ${SCENARIOS:-its six scenarios}, ${DURATION:-10} s x ${ROUNDS:-3})" \
    env OUT="$speed_md" bench/run.sh
fi

# ---- restarts under load -------------------------------------------------------------------
skipped=()
if has restarts; then
  for c in "${sizes[@]}"; do
    for m in "${modes[@]}"; do
      if [[ $m == close && -n $close_max ]] && ((c > close_max)); then
        skipped+=("$c $m")
        continue
      fi
      for p in "${peers[@]}"; do # interleaved: every peer at one size before the next size
        step restarts "peer_restart.sh $p $c $m" env OUT="$peers_md" bench/peer_restart.sh "$p" "$c" "$m"
      done
    done
  done
fi

# ---- restart metrics -----------------------------------------------------------------------
metrics_one() { # peer
  local p=$1 server sig=HUP json=$results/restart-metrics-$stamp-$1.json
  case $p in
    endless)
      server=$build/examples/hello
      if [[ ! -x $server ]]; then
        cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF >/dev/null &&
          cmake --build "$build" --parallel "$(nproc)" --target hello >/dev/null || return 1
      fi
      ;;
    tableflip | grace)
      server=$build/peers/$p
      if [[ ! -x $server || bench/peers/$p/main.go -nt $server ]]; then bench/peers/build.sh || return 1; fi
      if [[ $p == grace ]]; then sig=USR2; fi # gracehttp restarts on SIGUSR2; SIGHUP kills it
      ;;
    nginx)
      server=nginx
      command -v nginx >/dev/null || scripts/deps.sh nginx-light || return 1
      ;;
    h2o)
      server=h2o
      command -v h2o >/dev/null || scripts/deps.sh h2o || return 1
      ;;
  esac
  local section
  section=$(python3 bench/restart_metrics.py "$server" --name "$p" --signal "$sig" \
    --restarts "$metrics_restarts" --fd-restarts "$fd_restarts" --json "$json") || return 1
  {
    echo
    echo "## $p"
    echo
    echo "$section"
    echo
    echo "Command: \`python3 bench/restart_metrics.py $server --name $p --signal $sig --restarts $metrics_restarts --fd-restarts $fd_restarts --json $(basename "$json")\`"
  } >>"$metrics_md"
}

if has metrics; then
  if [[ ! -e $metrics_md ]]; then
    cat >"$metrics_md" <<EOF
# Restart metrics, $(date +%F)

Each server started alone on 127.0.0.1, no load but a probe (a request every 2 ms on a new
connection; Python, so a gap includes its own scheduling), $metrics_restarts restarts 0.5 s
apart, then $fd_restarts restarts in all for the fd count; unpinned, $(nproc) cores. RSS of
every process of the server sampled every 2 ms (old + new for the contract servers; master
and all its descendants for nginx and h2o); CPU from /proc in 10 ms ticks. For nginx and h2o
the pid file names the master, which a restart keeps: the hand-over is the first answer
carrying a new X-Pid (a new worker / server process) and "old process(es) gone" is when every
process that served before the signal has exited. See bench/restart_metrics.py.
EOF
  fi
  for p in "${peers[@]}"; do
    step metrics "restart_metrics.py $p" metrics_one "$p"
  done
fi

# ---- memory --------------------------------------------------------------------------------
if has memory; then
  step memory "memory.sh (endless, ${CONNS:-10000} idle connections)" env OUT="$memory_md" bench/memory.sh
fi

# ---- plots and summaries -------------------------------------------------------------------
plots_speed() { python3 bench/plot.py "$speed_md"; }
plots_failures() {
  local jsons=() f md
  for f in "${peers_md%.md}"-*-*-[0-9]*-[0-9]*.json; do [[ -e $f ]] && jsons+=("$f"); done
  ((${#jsons[@]})) || return 1
  md=$(python3 bench/plot_restarts.py failures --out "${peers_md%.md}" "${jsons[@]}") || return 1
  printf '\n%s\n' "$md" >>"$peers_md"
}
plots_rss() {
  local jsons=() f md png=${metrics_md%.md}-rss.png
  for f in "${metrics_md%.md}"-*.json; do [[ -e $f ]] && jsons+=("$f"); done
  ((${#jsons[@]})) || return 1
  md=$(python3 bench/plot_restarts.py rss --out "$png" "${jsons[@]}") || return 1
  printf '\n## Summary\n\n%s\n' "$md" >>"$metrics_md"
}
if has plots; then
  command -v gnuplot >/dev/null || scripts/deps.sh gnuplot-nox
  if [[ -s $speed_md ]]; then step plots "plot.py: req/s and CPU per request" plots_speed; fi
  if [[ -s $peers_md ]]; then step plots "plot_restarts.py failures: per restart, per peer" plots_failures; fi
  if [[ -s $metrics_md ]]; then step plots "plot_restarts.py rss: RSS through restarts" plots_rss; fi
fi

# ---- the index -----------------------------------------------------------------------------
files=()
for f in "$results"/*"$stamp"*; do [[ $f == "$index" || ! -e $f ]] || files+=("$(basename "$f")"); done
os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
{
  echo "# Benchmarks side by side, $(date +%F) (bench/all.sh, stamp $stamp)"
  echo
  echo "- started $started, finished $(date -Is); load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- machine: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)${os:+, $os}"
  echo "- endless: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes in the tree)')"
  echo "- STEPS=\"${steps[*]}\" PEERS=\"${peers[*]}\" CONNECTIONS=\"${sizes[*]}\" MODES=\"${modes[*]}\"${close_max:+ CLOSE_MAX=$close_max} RESTARTS=${RESTARTS:-5} INTERVAL=${INTERVAL:-2} METRICS_RESTARTS=$metrics_restarts FD_RESTARTS=$fd_restarts"
  if ((${#skipped[@]})); then echo "- skipped by CLOSE_MAX: ${skipped[*]}"; fi
  echo
  echo "| step | what | result | time |"
  echo "|---|---|---|--:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Files:"
  echo
  for f in "${files[@]}"; do echo "- [\`$f\`]($f)"; done
} >"$index"
cat "$index"
say "index: $index"
exit "$status"
