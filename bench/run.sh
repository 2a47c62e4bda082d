#!/usr/bin/env bash
# Speed benchmark: our server (examples/hello) beside a do-nothing epoll server (the ceiling),
# nginx (the reference), h2o and Go peers, in one run, on one machine: HTTP/1.1 keep-alive,
# Connection: close and pipelined; HTTPS keep-alive, new TLS handshakes and HTTP/2 over TLS.
# See bench/README.md.
#
#   bench/run.sh                                  # DURATION=10 s per run, ROUNDS=3
#   DURATION=2 ROUNDS=1 bench/run.sh              # smoke run
#   SERVERS="noop nginx" bench/run.sh             # a subset (default: all seven)
#   SCENARIOS="https-keep-alive tls-handshakes h2" bench/run.sh   # a subset (default: all six)
#   OUT=/tmp/x.md bench/run.sh                    # write the table elsewhere
#
# Each measurement starts a fresh server pinned to core 1, waits until it answers, records
# its idle RSS, runs the client (wrk; bench/handshake_client for new TLS handshakes; h2load
# for HTTP/2) pinned to core 0 over 127.0.0.1, and reads the server's user+system CPU time
# from /proc before and after. Rounds visit every scenario and, within it, every server in
# turn, so a slow minute on the machine hurts all servers alike; the table shows medians over
# rounds. The TLS scenarios use one ECDSA P-256 self-signed certificate made for the run and
# leave out the servers without TLS (noop, the Go peers).
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."
root=$PWD

duration=${DURATION:-10}
rounds=${ROUNDS:-3}
read -r -a servers <<<"${SERVERS:-noop nginx endless endless-static h2o tableflip grace}"
connections=64
depth=16
server_cpu=1
client_cpu=0
build=build/bench
declare -A port=([noop]=18080 [nginx]=18081 [endless]=18082 [h2o]=18083 [tableflip]=18084
  [grace]=18085 [endless-static]=18086)
declare -A label=([noop]="noop (ceiling)" [nginx]="nginx" [endless]="endless (hello)" [endless-static]="endless (hello, static runtime)"
  [h2o]="h2o (mruby /)" [tableflip]="Go tableflip" [grace]="Go grace")
all_scenarios=(keep-alive close "pipelined-$depth" https-keep-alive tls-handshakes h2)
read -r -a scenarios <<<"${SCENARIOS:-${all_scenarios[*]}}"
h2_streams=10        # h2load -m: concurrent streams per connection
handshake_tls=1.3    # handshake_client --tls: the only TLS version it offers
# Which scenarios run over TLS, and which servers can serve them.
declare -A tls_scenario=([https-keep-alive]=1 [tls-handshakes]=1 [h2]=1)
declare -A tls_capable=([nginx]=1 [endless]=1 [h2o]=1 [endless-static]=1)

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
for c in "${scenarios[@]}"; do
  [[ " ${all_scenarios[*]} " == *" $c "* ]] || die "unknown scenario '$c' in SCENARIOS (known: ${all_scenarios[*]})"
done
((${#scenarios[@]})) || die "SCENARIOS is empty"
any_tls=0
for c in "${scenarios[@]}"; do if [[ -n ${tls_scenario[$c]:-} ]]; then any_tls=1; fi; done
runs_in() { # scenario server: whether that pair is measured
  [[ -z ${tls_scenario[$1]:-} || -n ${tls_capable[$2]:-} ]]
}
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
if ((any_tls)); then
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  [[ -e /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
fi
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
# endless-static: the same hello built with ENDLESS_STATIC_RUNTIME=ON (libstdc++, libgcc,
# OpenSSL and nghttp2 linked in; glibc shared), in its own build directory.
static_build=build/bench-static
static_bin=""
if [[ " ${servers[*]} " == *" endless-static "* ]]; then
  say "building the static-runtime hello in $static_build"
  if cmake -S . -B "$static_build" -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF \
    -DENDLESS_STATIC_RUNTIME=ON >>"$build_log" 2>&1 &&
    cmake --build "$static_build" --parallel "$(nproc)" --target hello >>"$build_log" 2>&1; then
    static_bin=$static_build/examples/hello
  else
    tail -30 "$build_log" >&2
    die "static-runtime build failed (full log: $build_log)"
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
handshake_bin=$build/handshake_client
if ((any_tls)) && [[ ! -x $handshake_bin || bench/handshake_client.cpp -nt $handshake_bin ]]; then
  say "compiling $handshake_bin"
  g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Werror \
    bench/handshake_client.cpp -o "$handshake_bin" -lssl -lcrypto
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

# The TLS scenarios: one ECDSA P-256 self-signed certificate for every server, made for this
# run; nginx and h2o get their templates' "#tls:" lines (listen with ssl and http2).
tls_dir=$tmp/tls
cert=$tls_dir/cert.pem
key=$tls_dir/key.pem
nginx_tls_conf=$tmp/nginx/nginx-tls.conf
if ((any_tls)); then
  mkdir -p "$tls_dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$key" -out "$cert" 2>"$tls_dir/openssl.log" ||
    die "openssl could not make a certificate: $(cat "$tls_dir/openssl.log")"
  if [[ " ${servers[*]} " == *" nginx "* ]]; then
    for m in http_ssl http_v2; do
      [[ $nginx_built == *"--with-${m}_module"* ]] ||
        die "this nginx lacks ${m}_module (nginx -V); the TLS scenarios need it"
    done
  fi
  sed -e '/# plain-only$/d' -e 's|^\( *\)#tls: |\1|' -e "s|@CERT@|$cert|g" -e "s|@KEY@|$key|g" \
    "$nginx_conf" >"$nginx_tls_conf"
  grep -q "listen .* ssl http2" "$nginx_tls_conf" || die "bench/nginx.conf has no '#tls: listen' line"
fi

server_argv() { # name [tls] -> argv array (tls: 1 for the TLS scenarios)
  local p=${port[$1]} tls=${2:-0}
  case $1 in
    noop) argv=(taskset -c "$server_cpu" "$noop_bin" --addr "127.0.0.1:$p") ;;
    nginx)
      local conf=$nginx_conf
      if ((tls)); then conf=$nginx_tls_conf; fi
      argv=(taskset -c "$server_cpu" nginx -p "$tmp/nginx/" -c "$conf" -e "$tmp/nginx/error.log")
      ;;
    endless | endless-static)
      local bin=$hello_bin
      [[ $1 == endless-static ]] && bin=$static_bin
      argv=(taskset -c "$server_cpu" "$bin" --addr "127.0.0.1:$p" --threads 1)
      if ((tls)); then argv+=(--tls-cert "$cert" --tls-key "$key"); fi
      ;;
    h2o)
      mkdir -p "$tmp/h2o"
      # As root, h2o drops to nobody before it writes its pid file and log (it reads its
      # certificate and key before that).
      chmod 755 "$tmp" && chmod 777 "$tmp/h2o"
      local conf=$tmp/h2o/h2o.conf
      if ((tls)); then conf=$tmp/h2o/h2o-tls.conf; fi
      sed -e "s|@PORT@|$p|g" -e "s|@DIR@|$tmp/h2o|g" bench/h2o.conf >"$conf"
      [[ $(id -u) -eq 0 ]] || sed -i '/# root-only/d' "$conf"
      if ((tls)); then
        sed -i -e 's|^#tls:||' -e "s|@CERT@|$cert|g" -e "s|@KEY@|$key|g" "$conf"
        grep -q '^  ssl:' "$conf" || die "bench/h2o.conf has no '#tls:' ssl lines"
      fi
      argv=(taskset -c "$server_cpu" h2o -c "$conf")
      ;;
    tableflip | grace)
      argv=(taskset -c "$server_cpu" "$build/peers/$1" --addr "127.0.0.1:$p" --pidfile "$tmp/$1.pid")
      ;;
  esac
}

client_argv() { # scenario port -> argv array (the load, pinned to the client's core)
  local wrk=(taskset -c "$client_cpu" wrk -t1 "-c$connections" "-d${duration}s" --latency)
  case $1 in
    keep-alive) argv=("${wrk[@]}" "http://127.0.0.1:$2/") ;;
    close) argv=("${wrk[@]}" -H "Connection: close" "http://127.0.0.1:$2/") ;;
    pipelined-*) argv=("${wrk[@]}" -s "$root/bench/pipeline.lua" "http://127.0.0.1:$2/" -- "$depth") ;;
    https-keep-alive) argv=("${wrk[@]}" "https://127.0.0.1:$2/") ;;
    tls-handshakes)
      argv=(taskset -c "$client_cpu" "$handshake_bin" --addr "127.0.0.1:$2" -c "$connections"
        -d "$duration" --tls "$handshake_tls")
      ;;
    h2)
      argv=(taskset -c "$client_cpu" h2load -t1 -c "$connections" -m "$h2_streams" -D "$duration"
        --log-file="$tmp/h2load.log" "https://127.0.0.1:$2/")
      ;;
  esac
}

client_name() { # scenario -> the client's name, for messages
  case $1 in
    tls-handshakes) echo handshake_client ;;
    h2) echo h2load ;;
    *) echo wrk ;;
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

probe() { # port [tls] -> the response to one GET / with Connection: close (empty if none)
  if ((${2:-0})); then
    curl -sk --http1.1 -i --max-time 2 -H "Connection: close" "https://127.0.0.1:$1/" 2>/dev/null || true
    return
  fi
  # shellcheck disable=SC2016 # $1 expands in the inner shell
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$1" >&3
    timeout 1 cat <&3' _ "$1" 2>/dev/null || true
}

tls_params() { # port -> what an OpenSSL client with default settings and no ALPN (wrk) gets
  # shellcheck disable=SC2016
  timeout 5 openssl s_client -connect "127.0.0.1:$1" </dev/null 2>/dev/null | awk '
    /^New, / { sub(/,$/, "", $2); v = $2; c = $NF }
    /^Server Temp Key:/ { g = $4; sub(/,$/, "", g) }
    END { if (v != "") printf "%s %s %s (no ALPN: http/1.1)", v, c, g }'
}

start_server() { # name [tls] -> server_pid, server_pids
  local name=$1 tls=${2:-0} log=$tmp/$1.log resp i
  server_argv "$name" "$tls"
  "${argv[@]}" >>"$log" 2>&1 &
  server_pid=$!
  started+=("$server_pid")
  for ((i = 0; i < 100; i++)); do
    if ! alive "$server_pid"; then break; fi
    resp=$(probe "${port[$name]}" "$tls")
    if [[ $resp == "HTTP/1.1 200"* && $resp == *"Hello Zero-Downtime!"* ]]; then
      server_pids=$(pid_tree "$server_pid")
      return 0
    fi
    sleep 0.1
  done
  echo "--- $log" >&2
  cat "$log" >&2 || true
  if [[ $name == nginx ]]; then cat "$tmp/nginx/error.log" >&2 || true; fi
  die "$name did not answer GET / on $( ((tls)) && echo https || echo http)://127.0.0.1:${port[$name]}"
}

stop_server() {
  stop_tree "$server_pid"
  forget "$server_pid"
}

results=$tmp/results.tsv
: >"$results"
log_dir=$build/wrk-logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$log_dir"

h2_percentiles() { # h2load --log-file -> "p50 p99" in µs (its third column: µs per request)
  awk -F'\t' '{ n[$3]++; total++ } END { for (v in n) print v, n[v], total }' "$1" | sort -n |
    awk '{ seen += $2; if (!p50 && seen >= 0.50 * $3) p50 = $1; if (!p99 && seen >= 0.99 * $3) p99 = $1 }
      END { printf "%s %s\n", (p50 ? p50 : "-"), (p99 ? p99 : "-") }'
}

measure() { # round scenario server
  local round=$1 scenario=$2 name=$3 tls=0 rss before after out client_pid rc=0 params=""
  local p50=- p99=-
  if [[ -n ${tls_scenario[$scenario]:-} ]]; then tls=1; fi
  start_server "$name" "$tls"
  # shellcheck disable=SC2086
  rss=$(rss_kb $server_pids)
  # What wrk negotiates (h2load and handshake_client print their own), before the load.
  if [[ $scenario == https-keep-alive ]]; then params=$(tls_params "${port[$name]}"); fi
  client_argv "$scenario" "${port[$name]}"
  out=$log_dir/$name-$scenario-$round.txt
  rm -f "$tmp/h2load.log"
  # shellcheck disable=SC2086
  before=$(cpu_ticks $server_pids) || die "$name exited before the load"
  "${argv[@]}" >"$out" 2>&1 &
  client_pid=$!
  started+=("$client_pid")
  wait "$client_pid" || rc=$?
  forget "$client_pid"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $server_pids) || die "$name died during the load ($(client_name "$scenario") output: $out)"
  stop_server
  ((rc == 0)) || die "$(client_name "$scenario") failed for $name/$scenario: $(cat "$out")"
  if [[ $scenario == h2 ]]; then
    [[ -s $tmp/h2load.log ]] || die "h2load wrote no --log-file for $name/$scenario"
    read -r p50 p99 < <(h2_percentiles "$tmp/h2load.log")
    rm -f "$tmp/h2load.log"
  fi
  awk -v server="$name" -v scenario="$scenario" -v round="$round" -v rss="$rss" \
    -v ticks=$((after - before)) -v hz="$clk_tck" -v duration="$duration" \
    -v params="$params" -v h2_p50="$p50" -v h2_p99="$p99" '
    function us(v, n) {
      n = v + 0
      if (v ~ /us$/) return n
      if (v ~ /ms$/) return n * 1000
      if (v ~ /m$/) return n * 60e6
      if (v ~ /s$/) return n * 1e6
      return n
    }
    # wrk
    /^ *50% / { p50 = us($2) }
    /^ *99% / { p99 = us($2) }
    / requests in / { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) errors += $i + 0 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    # h2load
    /^finished in / { rps = $4 }
    /^requests: .* succeeded/ { requests = $8; errors += $10 + $12 + $14 }
    /^status codes: / { non2xx = $7 + $9 }
    /^TLS Protocol: / { h2v = $3 }
    /^Cipher: / { h2c = $2 }
    /^Server Temp Key: / { h2g = $4 }
    /^Application protocol: / { alpn = $3 }
    # handshake_client
    /^tls: / { params = substr($0, 6) }
    /^completed: / { requests = $2 }
    /^handshakes\/s: / { rps = $2 }
    /^latency p50: / { p50 = $3 }
    /^latency p99: / { p99 = $3 }
    /^errors: / { errors += $2 }
    /^resumed: / { resumed = $2 }
    /^tickets per handshake: / { params = params ", " $4 " session tickets per handshake" }
    END {
      if (scenario == "h2") {
        if (alpn != "h2") { printf "h2load negotiated \"%s\", not h2\n", alpn > "/dev/stderr"; exit 1 }
        params = sprintf("%s %s %s (ALPN h2)", h2v, h2c, h2g)
        p50 = h2_p50; p99 = h2_p99
      }
      if (resumed > 0) { printf "%d resumed TLS sessions: not full handshakes\n", resumed > "/dev/stderr"; exit 1 }
      if (requests == 0) { print "no requests parsed" > "/dev/stderr"; exit 1 }
      cpu = ticks / hz
      # wrk prints a percentile of 0 when its coordinated-omission correction has moved
      # samples below the recorded minimum (it happens with pipelining): no figure, then.
      printf "%s\t%s\t%d\t%.0f\t%d\t%s\t%s\t%.3f\t%.0f\t%d\t%d\t%d\t%s\n", server, scenario,
        round, rps, requests, (p50 > 0 ? sprintf("%.1f", p50) : "-"),
        (p99 > 0 ? sprintf("%.1f", p99) : "-"), cpu * 1e6 / requests, 100 * cpu / duration, rss,
        errors, non2xx, (params == "" ? "-" : params)
    }' "$out" >>"$results" || die "could not read the output of $(client_name "$scenario"): $out"
  tail -1 "$results" | awk -F'\t' '{ printf "bench: round %s  %-16s %-9s %9.0f req/s  p99 %8s us  %7.2f CPU us/req  (server core %3.0f%%)\n", $3, $2, $1, $4, $7, $8, $9 }' >&2
}

# ---- the run -------------------------------------------------------------------------------
started_at=$(date -Is)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
pairs=0
skipped_tls=()
for name in "${servers[@]}"; do
  for scenario in "${scenarios[@]}"; do
    if runs_in "$scenario" "$name"; then pairs=$((pairs + 1)); fi
  done
  if ((any_tls)) && [[ -z ${tls_capable[$name]:-} ]]; then skipped_tls+=("$name"); fi
done
((pairs)) || die "none of SERVERS (${servers[*]}) serves the TLS scenarios (${scenarios[*]}): TLS needs nginx, endless or h2o"
say "servers: ${servers[*]}; scenarios: ${scenarios[*]}; ${duration}s x $rounds round(s)"
if ((${#skipped_tls[@]})); then say "no TLS, so not in the TLS scenarios: ${skipped_tls[*]}"; fi
for ((r = 1; r <= rounds; r++)); do
  for scenario in "${scenarios[@]}"; do
    for name in "${servers[@]}"; do
      if runs_in "$scenario" "$name"; then measure "$r" "$scenario" "$name"; fi
    done
  done
done
load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ----------------------------------------------------------------------------
mkdir -p bench/results
# Named after what it holds: http1- (cleartext HTTP/1.1 only, as before), tls- (TLS
# scenarios only) or speed- (both).
n_tls=0
for c in "${scenarios[@]}"; do if [[ -n ${tls_scenario[$c]:-} ]]; then n_tls=$((n_tls + 1)); fi; done
kind=speed
if ((n_tls == 0)); then kind=http1; fi
if ((n_tls == ${#scenarios[@]})); then kind=tls; fi
out_file=${OUT:-bench/results/$kind-$(date +%F).md}
if [[ -z ${OUT:-} && -e $out_file ]]; then out_file=bench/results/$kind-$(date +%F-%H%M%S).md; fi

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
      print "| server | scenario | req/s | vs nginx | p50 | p99 | server CPU µs/req | CPU vs nginx | CPU vs noop | server core busy | idle RSS |"
      print "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
      ns = split(servers, sv, " "); nc = split(scenarios, sc, " ")
      for (c = 1; c <= nc; c++) {
        for (s = 1; s <= ns; s++) {
          k = sv[s] SUBSEP sc[c]
          if (!((k SUBSEP "rps") in vals)) continue  # not measured (no TLS)
          rps = median(k SUBSEP "rps"); cpu = median(k SUBSEP "cpu")
          kn = "nginx" SUBSEP sc[c]; ko = "noop" SUBSEP sc[c]
          vs_nginx = ((kn SUBSEP "rps") in vals) ? sprintf("%.2f×", rps / median(kn SUBSEP "rps")) : "n/a"
          cpu_nginx = ((kn SUBSEP "cpu") in vals) && median(kn SUBSEP "cpu") > 0 ? sprintf("%.2f×", cpu / median(kn SUBSEP "cpu")) : "n/a"
          vs_noop = ((ko SUBSEP "cpu") in vals) && median(ko SUBSEP "cpu") > 0 ? sprintf("%.2f×", cpu / median(ko SUBSEP "cpu")) : "n/a"
          printf "| %s | %s | %.0f | %s | %s | %s | %.2f | %s | %s | %.0f%% | %.1f MiB |\n", name[sv[s]], sc[c],
            rps, vs_nginx, lat(k SUBSEP "p50"), lat(k SUBSEP "p99"), cpu, cpu_nginx, vs_noop,
            median(k SUBSEP "busy"), median(k SUBSEP "rss") / 1024
          if (errors[k] + non2xx[k] > 0) notes = notes sprintf("- %s / %s: %d socket errors, %d non-2xx responses over all rounds\n", name[sv[s]], sc[c], errors[k], non2xx[k])
        }
      }
      if (notes != "") printf "\nErrors reported by the clients:\n%s", notes
    }' "$results"
}

tls_table() { # what each server negotiated in each TLS scenario (round 1)
  awk -F'\t' -v labels="$(for s in "${!label[@]}"; do printf '%s=%s;' "$s" "${label[$s]}"; done)" '
    BEGIN {
      nl = split(labels, lv, ";")
      for (i = 1; i <= nl; i++) if (lv[i] != "") { eq = index(lv[i], "="); name[substr(lv[i], 1, eq - 1)] = substr(lv[i], eq + 1) }
    }
    $3 == 1 && $13 != "-" {
      if (!header++) { print "| server | scenario | TLS as negotiated by the client |"; print "|---|---|---|" }
      printf "| %s | %s | %s |\n", name[$1], $2, $13
    }' "$results"
}

show() { # argv -> one shell-quoted line, temp dir and repository path shortened
  printf '%q ' "$@" | sed -e "s|$tmp|\$TMP|g" -e "s|$root/||g" -e 's/ $//'
  echo
}

has_scenario() { [[ " ${scenarios[*]} " == *" $1 "* ]]; }
{
  echo "# Speed benchmark (bench/run.sh), $(date +%F): ${scenarios[*]}"
  echo
  echo "- started: $started_at; load average at start: $load_at_start, at end: $load_at_end"
  echo "- kernel: $(uname -r)"
  echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), nproc $(nproc)"
  echo "- wrk: $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//' || true)"
  if has_scenario h2; then echo "- h2load: $(h2load --version 2>&1 | head -1)"; fi
  if ((any_tls)); then echo "- OpenSSL (clients, endless, h2o): $(openssl version)"; fi
  echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')$( ((any_tls)) && nginx -V 2>&1 | grep -o 'running with OpenSSL [^)]*' | sed 's/^/, /')"
  if [[ " ${servers[*]} " == *" h2o "* ]]; then echo "- h2o: $(h2o --version 2>&1 | head -1 | sed 's/^h2o version //')"; fi
  echo "- endless: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)'), Release build in $build"
  echo "- $duration s per run, $rounds round(s), medians shown; server pinned to core $server_cpu, the client to core $client_cpu, 127.0.0.1 only"
  if ((any_tls)); then
    echo "- TLS: one self-signed ECDSA P-256 certificate made for the run, the same for every server; versions and ciphers as negotiated (table below); nginx with \`ssl_protocols TLSv1.2 TLSv1.3\` (its 1.22 default has no TLS 1.3), every server otherwise at its TLS defaults (session tickets included: a full handshake pays for issuing them)"
    if ((${#skipped_tls[@]})); then echo "- not in the TLS rows (they have no TLS): ${skipped_tls[*]}"; fi
  fi
  if [[ -n $endless_note ]]; then echo "- $endless_note"; fi
  echo
  table
  echo
  {
    echo "req/s, p50 and p99 are the client's: wrk's$(
      ((n_tls)) && printf '%s' ", except in tls-handshakes (bench/handshake_client: new connections per second, each a full TLS handshake and one request; latency from connect() to the end of the response) and h2 (h2load -m $h2_streams: req/s; percentiles from its --log-file)")."
    if has_scenario "pipelined-$depth"; then
      echo "Pipelined latencies are per batch of $depth and distorted by wrk's coordinated-omission correction (it assumes one request per batch); — marks a percentile wrk printed as 0."
    fi
    echo "Server CPU µs/req is user+system time of the server's processes (from /proc/<pid>/stat) over the client's run ÷ requests$( ((n_tls)) && printf '%s' " (in tls-handshakes: per connection, handshake included)")."
    echo "CPU vs nginx and CPU vs noop divide it by nginx's and by the do-nothing server's$( ((n_tls)) && printf '%s' " (noop has no TLS: n/a in TLS rows)")."
    echo "Server core busy is that CPU time ÷ the run's length: near 100% means the server, not the client, set the pace."
    echo "Idle RSS is VmRSS summed over the server's processes after start-up, before load. See bench/README.md."
  } | fmt -w 92
  if ((any_tls)); then
    echo
    tls_table
  fi
  echo
  echo "Commands (\$TMP is a fresh temp dir; nginx.conf is bench/nginx.conf with @PORT@ and @DIR@ filled in, nginx-tls.conf the same with its #tls: lines; h2o-tls.conf likewise from bench/h2o.conf):"
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
  if [[ -n $static_bin ]]; then
    echo "cmake -S . -B $static_build -DCMAKE_BUILD_TYPE=Release -DENDLESS_BUILD_TESTS=OFF -DENDLESS_STATIC_RUNTIME=ON"
    echo "cmake --build $static_build --parallel $(nproc) --target hello"
  fi
  if [[ $noop_bin == "$build/noop_server" ]]; then
    echo "g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Werror bench/noop_server.cpp -o $noop_bin"
  fi
  if ((any_tls)); then
    echo "g++ -std=c++20 -O2 -Wall -Wextra -Wpedantic -Wshadow -Wold-style-cast -Werror bench/handshake_client.cpp -o $handshake_bin -lssl -lcrypto"
    echo "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout \$TMP/tls/key.pem -out \$TMP/tls/cert.pem"
  fi
  n_plain=$((${#scenarios[@]} - n_tls))
  for name in "${servers[@]}"; do
    if ((n_plain)); then
      server_argv "$name" 0
      show "${argv[@]}"
    fi
    if ((n_tls)) && runs_in h2 "$name"; then
      server_argv "$name" 1
      show "${argv[@]}"
    fi
  done
  for scenario in "${scenarios[@]}"; do
    client_argv "$scenario" PORT
    show "${argv[@]}"
  done
  echo '```'
} >"$out_file"
cat "$out_file"
say "written to $out_file (raw client output in $log_dir)"
