#!/usr/bin/env bash
# The client's DNS stub under dnsperf (issue 7): queries/s at full load and
# p50/p99 latency at a fixed rate, for resource names (answered by the stub
# with proxy addresses) and for forwarded names (asked of the lab's public
# resolver). Goal: over 50k queries/s for resource names, p99 under 1 ms.
# Needs root (network namespaces).
#
#   bench/dns.sh                       # 10 s at full load, latency at 50k q/s
#   SECONDS_EACH=20 RATE=20000 bench/dns.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/dns.sh: run as root (network namespaces)" >&2; exit 1; }
if ! command -v dnsperf >/dev/null; then
  echo "== installing dnsperf"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsperf >/dev/null
fi
echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-lab --example dnsperf
target/release/examples/dnsperf --postern target/release/postern \
  --seconds "${SECONDS_EACH:-10}" --rate "${RATE:-50000}"
