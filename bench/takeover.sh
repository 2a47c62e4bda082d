#!/usr/bin/env bash
# Takeover between independently started processes under load: examples/blue_green.sh in each
# mode — fds (listeners passed over the control socket), reuseport (SO_REUSEPORT, steering),
# migrate (SO_REUSEPORT, net.ipv4.tcp_migrate_req=1 in a network namespace of its own) and
# naive (the contrast: a second SO_REUSEPORT server, then SIGTERM to the first) — one after
# the other, 5 swaps each under CONNECTIONS keep-alive and as many Connection: close clients
# that never retry. Writes bench/results/takeover-<stamp>.md. Needs root for migrate.
#   [CONNECTIONS=1000] [MODES="fds reuseport migrate naive"] bench/takeover.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/bench}"
connections="${CONNECTIONS:-1000}"
modes="${MODES:-fds reuseport migrate naive}"
stamp="${STAMP:-$(date +%F-%H%M%S)}"
out="${RESULTS:-bench/results}/takeover-$stamp.md"
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target hello loadgen >/dev/null
{
  echo "# Takeover under load (bench/takeover.sh), $(date -u '+%F %H:%M') UTC"
  echo
  echo "- What: 5 blue/green swaps per mode, each new \`hello\` started on its own (not by the"
  echo "  serving one), while tools/loadgen runs $connections keep-alive and $connections"
  echo "  \`Connection: close\` clients that never retry, at the same time. Each swap waits for the"
  echo "  old process to exit (its 5 s probation) before the next."
  echo "- Build: $build ($(grep -o 'CMAKE_BUILD_TYPE:STRING=.*' "$build/CMakeCache.txt" | cut -d= -f2)), commit $(git rev-parse --short HEAD)."
  echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, kernel $(uname -r); server and clients unpinned on the same cores."
  echo
  echo "| mode | keep-alive requests | failed | close requests | failed | how the old queue was kept |"
  echo "|---|--:|--:|--:|--:|---|"
} >"$out.tmp"
status=0
for mode in $modes; do
  log="$(mktemp)"
  if ! MODE="$mode" CONNECTIONS="$connections" examples/blue_green.sh "$build" >"$log" 2>&1; then
    status=1
  fi
  ka=$(grep -m1 '^keep-alive:' "$log" || echo "keep-alive: ?")
  cl=$(grep -m1 '^close:' "$log" || echo "close: ?")
  num() { sed -n "s/.*$2 \([0-9]*\).*/\1/p" <<<"$1"; }
  how=$(grep -o 'new connections steered by SO_ATTACH_REUSEPORT_CBPF\|net.ipv4.tcp_migrate_req=1 moves our queue' "$log" | head -1 || true)
  [ "$mode" = fds ] && how="the same socket, passed by SCM_RIGHTS"
  [ "$mode" = naive ] && how="none: the old socket closes with its queue"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$mode" "$(num "$ka" requests)" "$(num "$ka" failed)" \
    "$(num "$cl" requests)" "$(num "$cl" failed)" "$how" >>"$out.tmp"
  { echo; echo "<details><summary>$mode</summary>"; echo; echo '```'; cat "$log"; echo '```'; echo "</details>"; } >>"$out.details"
  rm -f "$log"
done
cat "$out.tmp" "$out.details" >"$out"
rm -f "$out.tmp" "$out.details"
echo "$out"
cat "$out" | sed -n '/^| mode/,/^$/p'
exit $status
