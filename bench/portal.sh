#!/usr/bin/env bash
# Portal benchmarks (issue 4):
#   1. policy decisions per second on 10k policies / 1k resources / 10k actors
#      (crates/policy/examples/decisions.rs, in memory, one core);
#   2. a real `postern portal` (SQLite) with N simulated clients connected over
#      WebSockets on loopback: the portal's memory per client, and the time
#      one policy change takes to reach all of them
#      (crates/portal/examples/fanout.rs).
#
#   bench/portal.sh                 # 10,000 clients
#   CLIENTS=2000 bench/portal.sh
#
# Goals: 10k clients on one node under 1 GiB; change fan-out under 1 s.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}

echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-policy --example decisions
cargo build --release --locked -q -p postern-portal --example fanout

echo "== policy decisions"
target/release/examples/decisions

echo "== fan-out to $CLIENTS connected clients"
# One descriptor per client in each process (the portal and the simulator).
needed=$((CLIENTS + 1024))
if [ "$(ulimit -n)" -lt "$needed" ]; then
  ulimit -n "$needed" 2>/dev/null || { echo "bench/portal.sh: cannot raise the open-file limit to $needed (run as root or lower CLIENTS)" >&2; exit 1; }
fi
work=$(mktemp -d)
portal_pid=
cleanup() {
  [ -n "$portal_pid" ] && kill "$portal_pid" 2>/dev/null && wait "$portal_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
db="sqlite://$work/portal.db"
token=$(target/release/postern portal init --database "$db" --account bench --admin-email admin@bench.test 2>/dev/null)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn target/release/postern portal --database "$db" --listen "127.0.0.1:$port" 2>"$work/portal.log" &
portal_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
target/release/examples/fanout --portal "127.0.0.1:$port" --token "$token" --pid "$portal_pid" --clients "$CLIENTS"
if grep -E 'WARN|ERROR' "$work/portal.log" >/dev/null; then
  echo "portal log had warnings or errors:"; cat "$work/portal.log"; exit 1
fi
