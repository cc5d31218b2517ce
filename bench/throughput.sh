#!/usr/bin/env bash
# The throughput race (issue 6): iperf3 from a client to a resource behind a
# gateway, single stream and 4 streams, in one lab and one run, through
# Postern, boringtun-cli (one thread), wireguard-go (Debian) and the bare
# routed path. Prints Gbit/s and `ratio postern/boringtun` and
# `ratio postern/wireguard-go`. Needs root (network namespaces).
#
#   bench/throughput.sh              # 10 s per measurement
#   SECONDS_EACH=20 bench/throughput.sh
#
# The lab (crates/lab/examples/throughput.rs) routes without NAT, gives every
# tunnel MTU 1280 and masquerade at the gateway, and sends each tunnel to its
# own address of the resource host.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-10}
CACHE=bench/.cache

[ "$(id -u)" = 0 ] || { echo "bench/throughput.sh: run as root (network namespaces)" >&2; exit 1; }

missing=()
for tool in iperf3 wireguard-go wg nft; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing iperf3 wireguard-go wireguard-tools nftables (missing: ${missing[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iperf3 wireguard-go wireguard-tools nftables >/dev/null
fi
if [ ! -x "$CACHE/boringtun/bin/boringtun-cli" ]; then
  echo "== cargo install boringtun-cli into $CACHE (once)"
  cargo install -q --locked boringtun-cli --root "$CACHE/boringtun"
fi

echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-lab --example throughput

target/release/examples/throughput \
  --postern target/release/postern \
  --boringtun "$CACHE/boringtun/bin/boringtun-cli" \
  --wireguard-go "$(command -v wireguard-go)" \
  --seconds "$SECONDS_EACH"
