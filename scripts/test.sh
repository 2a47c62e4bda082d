#!/usr/bin/env bash
# Builds endless with warnings as errors and runs every test (unit and multi-process).
#   ENDLESS_SANITIZE=address scripts/test.sh   # ASan + UBSan
#   ENDLESS_SANITIZE=thread  scripts/test.sh   # TSan
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh g++ make cmake pkg-config libgtest-dev libgmock-dev systemd clang-format curl \
  libssl-dev libnghttp2-dev openssl nghttp2-client libboost-dev
# Formatting is part of the build: .clang-format is the rule.
find include src tests examples \( -name '*.cpp' -o -name '*.hpp' \) -print0 2>/dev/null |
  xargs -0 -r clang-format --dry-run --Werror
sanitize="${ENDLESS_SANITIZE:-}"
build="build/test${sanitize:+-$sanitize}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENDLESS_WERROR=ON \
  -DENDLESS_SANITIZE="$sanitize"
cmake --build "$build" -j "$(nproc)"
ctest_log="$build/ctest-output.log"
set +e
ctest --test-dir "$build" --output-on-failure -j 2 --timeout 300 2>&1 | tee "$ctest_log"
status=${PIPESTATUS[0]}
set -e
if ((status != 0)); then
  # The failed tests' output once more, at the end, where a shortened log still shows it.
  echo "== scripts/test.sh: the failed tests' output again (${sanitize:-plain} build)"
  awk '/\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception/ { p = 1; print; next }
       /^ *Start +[0-9]+:|^ *[0-9]+\/[0-9]+ Test +#/ { p = 0 }
       p' "$ctest_log" | tail -n 300
  exit "$status"
fi
# The installed package, used the ways a user would: CMake (static, shared), pkg-config,
# FetchContent (plain build only: the consumers are built without sanitizers).
if [ -z "$sanitize" ]; then tests/package/run.sh "$build"; fi
# The API reference: Doxygen, no warning allowed.
if [ -z "$sanitize" ]; then scripts/docs.sh; fi
# Every example under valgrind's memcheck (plain build only: not beside a sanitizer).
if [ -z "$sanitize" ]; then scripts/valgrind.sh "$build"; fi
# The fuzz targets, 10 s each (five: about a minute and a half with the build; scripts/fuzz.sh N
# runs each for N seconds).
if [ -z "$sanitize" ]; then scripts/fuzz.sh "${FUZZ_SECONDS:-10}"; fi
# The benchmarks, for seconds, so that they keep working (bench/run.sh for real figures).
if [ -z "$sanitize" ]; then
  scripts/deps.sh nginx wrk python3
  bench/smoke.sh
fi
