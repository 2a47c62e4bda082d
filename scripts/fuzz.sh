#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan; LeakSanitizer checks every input)
# and runs each on its committed corpus, tests/fuzz/corpus/<target> (new finds go to
# build/fuzz/corpus/<target>, not into the repository).
#   scripts/fuzz.sh [seconds per target] [target...]     default: 30 s, every target
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0 http2           a number of executions instead
# Targets (corpus directory: fuzz target): http1 (http1_parser_fuzz), chunked
# (chunked_decoder_fuzz), router (router_fuzz), startup_env (startup_env_fuzz), http2
# (http2_fuzz), all in tests/fuzz.
# A crash, a hang (-timeout), a leak or a failed invariant fails the script; the input is
# left in build/fuzz/<target>-crash-* (or -leak-, -timeout-) and the log in
# build/fuzz/<target>.log. Reproduce: build/fuzz/<fuzz target> <that file>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
all=(http1 chunked router startup_env http2)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || {
    echo "fuzz.sh: no target '$t' (${all[*]})" >&2
    exit 2
  }
done
scripts/deps.sh clang libclang-rt-14-dev libssl-dev libnghttp2-dev pkg-config

out=build/fuzz
mkdir -p "$out/obj"
# shellcheck disable=SC2054
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
  -fno-sanitize-recover=undefined -Iinclude -Isrc/http -Isrc/core)

binary_of() {
  case "$1" in
    http1) echo http1_parser_fuzz ;;
    chunked) echo chunked_decoder_fuzz ;;
    *) echo "$1_fuzz" ;;
  esac
}
# The sources each target links (compiled once, with coverage for the fuzzer).
sources_of() {
  case "$1" in
    http1 | chunked) echo src/http/http1_parser.cpp src/http/message.cpp ;;
    router) echo src/http/router.cpp src/http/message.cpp src/http/http1_parser.cpp \
      src/core/startup.cpp src/core/reuseport.cpp src/core/address.cpp src/core/error.cpp ;;
    startup_env) echo src/core/startup.cpp src/core/reuseport.cpp src/core/address.cpp \
      src/core/error.cpp ;;
    http2) echo src/core/*.cpp src/io/*.cpp src/http/*.cpp ;;
  esac
}
libs_of() {
  case "$1" in
    http2) echo -lssl -lcrypto "$(pkg-config --libs libnghttp2)" -pthread ;;
  esac
}

objects=()
for t in "${targets[@]}"; do
  for s in $(sources_of "$t"); do objects+=("$s"); done
done
mapfile -t objects < <(printf '%s\n' "${objects[@]}" | sort -u)
obj() {
  local o="${1//\//_}"
  echo "$out/obj/${o%.cpp}.o"
}
for s in "${objects[@]}"; do obj "$s"; done >"$out/obj/list"
# In parallel: source and object side by side, two lines each.
# shellcheck disable=SC2016
paste -d '\n' <(printf '%s\n' "${objects[@]}") "$out/obj/list" |
  FLAGS="${flags[*]}" xargs -P "$(nproc)" -n 2 bash -c \
    'exec clang++ $FLAGS -fsanitize=fuzzer-no-link -c "$1" -o "$2"' _

for t in "${targets[@]}"; do
  objs=()
  for s in $(sources_of "$t"); do objs+=("$(obj "$s")"); done
  b=$(binary_of "$t")
  # shellcheck disable=SC2046
  clang++ "${flags[@]}" -fsanitize=fuzzer "tests/fuzz/$b.cpp" "${objs[@]}" $(libs_of "$t") \
    -o "$out/$b"
done

for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t"
  limit=(-max_total_time="$seconds")
  [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
  extra=()
  # The server logs a handler's exception to stderr: keep it out of the way (libFuzzer and
  # the sanitizers keep their own copy of stderr for their reports).
  [ "$t" = http2 ] && extra=(-close_fd_mask=2 -max_len=16384)
  echo "== $t" >&2
  if ! "$out/$(binary_of "$t")" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/$t-" "${extra[@]}" "$out/corpus/$t" "tests/fuzz/corpus/$t" \
    >"$out/$t.log" 2>&1; then
    tail -60 "$out/$t.log" >&2
    echo "fuzz.sh: $t failed (log: $out/$t.log)" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|#[0-9]+.*DONE)' \
    "$out/$t.log" >&2 || true
done
