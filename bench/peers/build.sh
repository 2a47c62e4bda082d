#!/usr/bin/env bash
# Builds the Go restart peers (bench/peers/*/main.go) into build/bench/peers/, offline.
#
#   bench/peers/build.sh            # installs Go and the two libraries if missing, builds both
#
# No module proxy is reachable here, so nothing is downloaded: the Go toolchain and the
# libraries come from Debian (golang-go, golang-github-cloudflare-tableflip-dev,
# golang-github-facebookgo-grace-dev; the latter pulls in facebookgo/httpdown, clock and
# stats), which install their sources under /usr/share/gocode/src. Go's GOPATH mode
# (GO111MODULE=off, GOPATH=/usr/share/gocode) resolves imports from there directly: no
# go.mod, no go.sum, no vendor directory. GOPROXY=off makes any attempt to fetch fail loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh golang-go golang-github-cloudflare-tableflip-dev golang-github-facebookgo-grace-dev
# Go wants a build cache; without HOME (some CI shells) it has no default.
if [[ -z ${GOCACHE:-} && -z ${HOME:-} && -z ${XDG_CACHE_HOME:-} ]]; then
  export GOCACHE=$PWD/build/bench/go-cache
fi

out=build/bench/peers
mkdir -p "$out"
for peer in tableflip grace; do
  echo "peers: building $out/$peer" >&2
  (
    cd "bench/peers/$peer"
    GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS='' \
      go build -o "../../../$out/$peer" .
  )
done
