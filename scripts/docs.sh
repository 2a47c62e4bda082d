#!/usr/bin/env bash
# The API reference with Doxygen (docs/Doxyfile): build/docs/html/index.html. Fails on any
# Doxygen warning.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh doxygen
mkdir -p build/docs
(cd docs && doxygen Doxyfile)
echo "docs: build/docs/html/index.html"
