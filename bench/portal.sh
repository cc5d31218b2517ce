#!/usr/bin/env bash
# Portal benchmarks (issues 4 and 23):
#   1. policy decisions per second on 10k policies / 1k resources / 10k actors
#      (crates/policy/examples/decisions.rs, in memory, one core);
#   2. a real `postern portal` (SQLite, HTTPS/WSS with a self-signed
#      certificate) with N simulated clients and one gateway on loopback
#      (crates/portal/examples/fanout.rs): first connects per second, memory
#      per client, one policy change's fan-out, a burst of API changes
#      applied and fanned out, a reconnect storm (every client at once:
#      connects per second, connects shed with Retry-After, portal CPU per
#      connect, access-request waits meanwhile), the TLS handshake's share.
#
#   bench/portal.sh                          # 10,000 clients
#   CLIENTS=100000 bench/portal.sh           # issue 23's goal
#   BASELINE=178059c bench/portal.sh         # also measure that revision's portal
#   BASELINE_BIN=/path/postern bench/portal.sh   # ... or a portal binary already built
#   TLS=0 bench/portal.sh                    # plain HTTP/WS
#
# Goals (issue 23): 100,000 clients on one node under 2 GiB; one change
# reaches all of them in under 1 s; a reconnect storm served at 10,000
# connects/s or more with TLS; access requests during it answered.
# Figures they replace (issue 23, 10,000 clients, before it): 137 MiB,
# 191 ms fan-out, 1,027 connects/s. With BASELINE set, the same load runs
# against that revision's portal (built once into target/bench-baseline)
# and both are printed side by side.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}
CHANGES=${CHANGES:-1000}
TLS=${TLS:-1}
BASELINE=${BASELINE:-}
BASELINE_BIN=${BASELINE_BIN:-}

echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-policy --example decisions
cargo build --release --locked -q -p postern-portal --example fanout

echo "== policy decisions"
target/release/examples/decisions

# One descriptor per client in each process (the portal and the simulator;
# a storming client closes its old socket before it connects again).
needed=$((CLIENTS + 2048))
if [ "$(ulimit -n)" -lt "$needed" ]; then
  ulimit -n "$needed" 2>/dev/null || { echo "bench/portal.sh: cannot raise the open-file limit to $needed (run as root or lower CLIENTS)" >&2; exit 1; }
fi
work=$(mktemp -d)
portal_pid=
cleanup() {
  [ -n "$portal_pid" ] && kill "$portal_pid" 2>/dev/null && wait "$portal_pid" 2>/dev/null || true
  [ -d "$work/baseline-src" ] && git worktree remove --force "$work/baseline-src" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

postern_old=
if [ -n "$BASELINE_BIN" ]; then
  [ -x "$BASELINE_BIN" ] || { echo "bench/portal.sh: BASELINE_BIN=$BASELINE_BIN is not an executable" >&2; exit 1; }
  postern_old=$BASELINE_BIN
elif [ -n "$BASELINE" ]; then
  echo "== building the baseline portal ($BASELINE, release, target/bench-baseline)"
  git worktree add -q --detach "$work/baseline-src" "$BASELINE"
  cargo build --release --locked -q -p postern --bin postern \
    --manifest-path "$work/baseline-src/Cargo.toml" --target-dir "$PWD/target/bench-baseline"
  postern_old=target/bench-baseline/release/postern
fi

tls_args=()
fanout_tls=()
if [ "$TLS" = 1 ]; then
  target/release/examples/fanout make-cert "$work"
  tls_args=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
  fanout_tls=(--tls-ca "$work/cert.pem")
fi

# run LABEL BINARY: a fresh portal on a fresh database, the load, its figures.
run() {
  local label=$1 postern=$2 db token port
  rm -f "$work"/portal.db*
  db="sqlite://$work/portal.db"
  token=$("$postern" portal init --database "$db" --account bench --admin-email admin@bench.test 2>/dev/null)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  RUST_LOG=warn "$postern" portal --database "$db" --listen "127.0.0.1:$port" "${tls_args[@]}" \
    --max-devices-per-actor $((CLIENTS + 1000)) --max-devices-per-token $((CLIENTS + 1000)) \
    2>"$work/portal-$label.log" &
  portal_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "== $label: $CLIENTS clients$([ "$TLS" = 1 ] && echo ", TLS")"
  if ! target/release/examples/fanout --portal "127.0.0.1:$port" --token "$token" --pid "$portal_pid" \
    --clients "$CLIENTS" --changes "$CHANGES" "${fanout_tls[@]}" | tee "$work/$label.out"; then
    # The old portal failing the load is part of its result; ours is not.
    [ "$label" = baseline ] || exit 1
    echo "baseline: the load failed (above); its figures are what it reached"
  fi
  kill "$portal_pid"; wait "$portal_pid" 2>/dev/null || true
  portal_pid=
  if grep -E 'WARN|ERROR' "$work/portal-$label.log" >/dev/null; then
    if [ "$label" = baseline ]; then
      # What the old portal said under the load is part of its result.
      echo "baseline portal log: $(grep -cE 'WARN|ERROR' "$work/portal-$label.log") warnings or errors, the first:"
      grep -m1 -E 'WARN|ERROR' "$work/portal-$label.log"
    else
      echo "$label portal log had warnings or errors:"; cat "$work/portal-$label.log"; exit 1
    fi
  fi
}

run postern target/release/postern
[ -n "$postern_old" ] && run baseline "$postern_old"

field() { sed -n "s/.*[ (]$1=\([0-9.]*\).*/\1/p" "$2" | head -1; }
echo
echo "== summary ($CLIENTS clients$([ "$TLS" = 1 ] && echo ", TLS"))"
for label in postern baseline; do
  [ -f "$work/$label.out" ] || continue
  printf '%-9s memory %6s MiB  fan-out %7s ms (%5s us CPU/client)  burst %6s changes/s  storm %6s connects/s  %5s us CPU/connect\n' \
    "$label" "$(field rss_mib "$work/$label.out")" "$(field fanout_ms "$work/$label.out")" \
    "$(field fanout_cpu_us_per_client "$work/$label.out")" \
    "$(field burst_changes_per_s "$work/$label.out")" "$(field storm_connects_per_s "$work/$label.out")" \
    "$(field cpu_us_per_connect "$work/$label.out")"
done
if [ -f "$work/baseline.out" ]; then
  awk -v a="$(field storm_connects_per_s "$work/postern.out")" -v b="$(field storm_connects_per_s "$work/baseline.out")" \
    -v c="$(field cpu_us_per_connect "$work/postern.out")" -v d="$(field cpu_us_per_connect "$work/baseline.out")" \
    'BEGIN { if (b > 0 && c > 0) printf "ratio postern/baseline: storm connects/s %.1fx, CPU per connect %.1fx less\n", a / b, d / c }'
else
  echo "before issue 23 (10,000 clients, plain WS): 137 MiB, fan-out 191 ms, 1,027 connects/s (BASELINE=178059c measures it here)"
fi
