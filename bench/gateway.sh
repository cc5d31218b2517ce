#!/usr/bin/env bash
# Gateway scale (issue 23): one gateway with 5,000 authorized clients, with
# peer lookup, timers and memory that do not grow per packet with the number
# of peers. Builds crates/tunnel/examples/gateway-peers.rs in release and
# runs it: for 10, 1,000 and 5,000 clients (each authorized by the portal,
# ICE checked and WireGuard-handshaken like a real one, in a simulation on
# a virtual clock), steady UDP traffic from random clients and the
# resource's answers, timing only the gateway core's own calls. Prints per
# peer count
#   - ns of CPU per packet client -> resource (decapsulate) and resource ->
#     client (encapsulate), heap allocations per packet;
#   - poll_timeout, which the device loop calls once per turn;
#   - handle_timeout: calls and CPU per virtual second, per call, per peer;
#   - heap bytes per peer (what dropping the gateway frees);
# and the 5,000 vs 10 ratios of the per-packet figures. Pure CPU, one core:
# run it on a quiet machine (it reports medians of 1 ms batches).
#
#   bench/gateway.sh                 # 10, 1000 and 5000 peers
#   bench/gateway.sh 10 5000 10000   # other counts
#   POSTERN_BENCH_RATE=50000 POSTERN_BENCH_SECONDS=10 bench/gateway.sh
#   POSTERN_BENCH_WARMUP=40 bench/gateway.sh 5000   # heap steady state
#
# Builds go to $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p postern-tunnel --example gateway-peers
exec "$TARGET/release/examples/gateway-peers" "$@"
