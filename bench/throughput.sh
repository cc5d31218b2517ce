#!/usr/bin/env bash
# The throughput race (issue 6): iperf3 from a client to a resource behind a
# gateway, single stream and 4 streams, in one lab and one run, through
# Postern, boringtun-cli (one thread), wireguard-go (Debian), gotatun-cli
# (Mullvad's userspace WireGuard in Rust, run with WG_SUDO=1) and the bare
# routed path; then Postern again in a second lab with both sites behind
# symmetric NATs (as `postern demo --symmetric`), once the client's path is
# relayed. Needs root (network namespaces). Prints
#   - Gbit/s of every path (table), and `ratio postern/boringtun`,
#     `ratio postern/wireguard-go`, `ratio postern/gotatun`;
#   - per tunnel, `NAME single stream: X Gbit/s  cpu s/GB: client A gateway B`
#     (and `4 streams`): CPU seconds (utime+stime from /proc/PID/stat, read
#     right before and after the iperf3 run) per GB (10^9 bytes) iperf3
#     delivered, for each daemon; none for the bare path (kernel work);
#   - `relayed postern: X.XX Gbit/s`, its 4-stream figure, and CPU s/GB of
#     client, gateway and relay;
#   - the userspace client (`postern client up --userspace --socks5`, no
#     TUN): curl downloads 1 GiB from the web host through its SOCKS5 proxy,
#     and the same downloads through the TUN client beside it (one, and four
#     at once): `postern userspace (curl)`, `postern TUN (curl)` and
#     `ratio postern userspace/TUN`, with CPU s/GB (iperf3 cannot use a
#     SOCKS5 proxy; curl is what such a user runs);
#   - a summary block with every figure.
#
#   bench/throughput.sh              # 10 s per measurement
#   SECONDS_EACH=20 bench/throughput.sh
#
# The lab (crates/lab/examples/throughput.rs) routes without NAT, gives every
# tunnel MTU 1280 and masquerade at the gateway, and sends each tunnel to its
# own address of the resource host. boringtun-cli and gotatun-cli are
# `cargo install`ed into bench/.cache once; if gotatun-cli cannot be
# installed, one line says so and the rest runs. Builds go to
# $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-10}
CACHE=bench/.cache
TARGET=${CARGO_TARGET_DIR:-target}

[ "$(id -u)" = 0 ] || { echo "bench/throughput.sh: run as root (network namespaces)" >&2; exit 1; }

missing=()
for tool in iperf3 wireguard-go wg nft curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing iperf3 wireguard-go wireguard-tools nftables curl (missing: ${missing[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iperf3 wireguard-go wireguard-tools nftables curl >/dev/null
fi
if [ ! -x "$CACHE/boringtun/bin/boringtun-cli" ]; then
  echo "== cargo install boringtun-cli into $CACHE (once)"
  cargo install -q --locked boringtun-cli --root "$CACHE/boringtun"
fi
gotatun=()
if [ ! -x "$CACHE/gotatun/bin/gotatun" ]; then
  echo "== cargo install gotatun-cli into $CACHE (once)"
  mkdir -p "$CACHE"
  cargo install -q --locked gotatun-cli --root "$CACHE/gotatun" >"$CACHE/gotatun-install.log" 2>&1 || true
fi
if [ -x "$CACHE/gotatun/bin/gotatun" ]; then
  gotatun=(--gotatun "$CACHE/gotatun/bin/gotatun")
else
  echo "gotatun-cli: cannot be installed here (cargo install gotatun-cli failed: $CACHE/gotatun-install.log); racing without it"
fi

echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-lab --example throughput

"$TARGET/release/examples/throughput" \
  --postern "$TARGET/release/postern" \
  --boringtun "$CACHE/boringtun/bin/boringtun-cli" \
  --wireguard-go "$(command -v wireguard-go)" \
  "${gotatun[@]}" \
  --seconds "$SECONDS_EACH"
