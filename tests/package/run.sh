#!/usr/bin/env bash
# Builds tiny programs against endless the four ways a user would and runs each: the installed
# package with CMake (static and shared libraries), with pkg-config (endless, endless-core),
# and the source tree through FetchContent. Each serving program must answer a request and
# drain on SIGTERM.
#   tests/package/run.sh BUILD_DIR     (a configured and built plain build, e.g. build/test)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "$1" && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"

# Starts "$@" with ADDR and PIDFILE, waits until the pid file names it, asks for /, SIGTERMs
# it and waits for it to exit (drained: the pid file is gone).
serve_and_check() {
  local name="$1"
  shift
  local pidfile="$work/$name.pid" log="$work/$name.log"
  "$@" 127.0.0.1:0 "$pidfile" >"$log" 2>&1 &
  local pid=$! ready=0
  for _ in $(seq 200); do
    if [ "$(cat "$pidfile" 2>/dev/null)" = "$pid" ]; then ready=1 && break; fi
    sleep 0.05
  done
  if [ "$ready" != 1 ]; then
    echo "package: $name never became ready" >&2
    cat "$log" >&2
    exit 1
  fi
  local port
  port=$(grep -o "127.0.0.1:[0-9]*" "$log" | head -1 | cut -d: -f2 || true)
  local body
  body=$(curl -s --max-time 5 "http://127.0.0.1:$port/")
  [ "$body" = "Hello Zero-Downtime!" ] || {
    echo "package: $name answered '$body'" >&2
    cat "$log" >&2
    exit 1
  }
  kill -TERM "$pid"
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "package: $name did not exit 10 s after SIGTERM" >&2
    exit 1
  fi
  wait "$pid" || { echo "package: $name exited $?" >&2; exit 1; }
  [ ! -e "$pidfile" ] || { echo "package: $name left its pid file" >&2; exit 1; }
  echo "package: $name ok"
}

cmake -S "$root/tests/package" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/cmake.log"
cmake --build "$work/cmake" -j "$(nproc)" >>"$work/cmake.log" || { cat "$work/cmake.log" >&2; exit 1; }
serve_and_check cmake-static "$work/cmake/consumer"
serve_and_check cmake-shared "$work/cmake/consumer_shared"
# (ldd's output captured first: `ldd | grep -q` can die of SIGPIPE under pipefail.)
deps=$(ldd "$work/cmake/consumer_shared")
grep -q "$prefix/.*libendless_http.so" <<<"$deps" ||
  { echo "package: consumer_shared does not use the installed shared library" >&2; exit 1; }
for core in core_consumer_cmake core_consumer_cmake_shared; do
  [ "$("$work/cmake/$core" 2>/dev/null)" = "core ok" ] || { echo "package: $core failed" >&2; exit 1; }
  echo "package: $core ok"
done

export PKG_CONFIG_PATH="$prefix/${LIBDIR:-lib}/pkgconfig"
[ -d "$PKG_CONFIG_PATH" ] || PKG_CONFIG_PATH="$(dirname "$(find "$prefix" -name endless.pc | head -1)")"
# shellcheck disable=SC2046
g++ -std=c++20 "$root/tests/package/consumer.cpp" $(pkg-config --cflags --libs endless) \
  -Wl,-rpath,"$(pkg-config --variable=libdir endless)" -o "$work/consumer_pc"
serve_and_check pkg-config "$work/consumer_pc"
# Static: the archives only, with their private requirements (nghttp2, OpenSSL).
libdir=$(pkg-config --variable=libdir endless)
# shellcheck disable=SC2046
g++ -std=c++20 "$root/tests/package/consumer.cpp" $(pkg-config --cflags endless) \
  "$libdir/libendless_http.a" "$libdir/libendless_core.a" \
  $(pkg-config --static --libs-only-l --libs-only-other openssl libnghttp2) -pthread \
  -o "$work/consumer_pc_static"
deps=$(ldd "$work/consumer_pc_static")
if grep -q libendless <<<"$deps"; then
  echo "package: the static consumer links a shared endless" >&2
  exit 1
fi
serve_and_check pkg-config-static "$work/consumer_pc_static"
# shellcheck disable=SC2046
g++ -std=c++20 "$root/tests/package/core_consumer.cpp" $(pkg-config --cflags --libs endless-core) \
  -Wl,-rpath,"$(pkg-config --variable=libdir endless-core)" -o "$work/core_consumer"
deps=$(ldd "$work/core_consumer")
if grep -q libssl <<<"$deps"; then
  echo "package: endless-core pulls in OpenSSL" >&2
  exit 1
fi
[ "$("$work/core_consumer" 2>/dev/null)" = "core ok" ] || { echo "package: core_consumer failed" >&2; exit 1; }
echo "package: pkg-config endless-core ok"

cmake -S "$root/tests/package" -B "$work/fetch" -DENDLESS_SOURCE_DIR="$root" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/fetch.log" 2>&1 || { cat "$work/fetch.log" >&2; exit 1; }
cmake --build "$work/fetch" -j "$(nproc)" --target consumer >>"$work/fetch.log" 2>&1 ||
  { cat "$work/fetch.log" >&2; exit 1; }
serve_and_check fetchcontent "$work/fetch/consumer"
echo "package: all consumers ok"
