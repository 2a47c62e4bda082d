#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for ${1:-30} seconds
# on the committed corpus (new finds go to build/fuzz/corpus, not into the repository).
# A crash, a leak or a failed invariant fails the script and leaves the input in build/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
scripts/deps.sh clang libclang-rt-14-dev
mkdir -p build/fuzz/corpus/http1
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iinclude -Isrc/http tests/fuzz/http1_parser_fuzz.cpp src/http/http1_parser.cpp \
  src/http/message.cpp -o build/fuzz/http1_parser_fuzz
cd build/fuzz
./http1_parser_fuzz -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 \
  corpus/http1 ../../tests/fuzz/corpus/http1 2>&1 | tail -12
