#!/usr/bin/env bash
# Time to first byte for a never-used resource (issue 6): from the first SYN
# to the first HTTP byte, p50 and p99 over 30 resources, direct (cone NATs)
# and relayed (symmetric NATs), in the demo's lab without added delay.
# Goals: p50 under 50 ms direct, under 100 ms relayed. Needs root.
#
#   bench/ttfb.sh            # 30 runs each
#   RUNS=100 bench/ttfb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/ttfb.sh: run as root (network namespaces)" >&2; exit 1; }
echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-lab --example ttfb
target/release/examples/ttfb --postern target/release/postern --runs "${RUNS:-30}"
