#!/usr/bin/env bash
# Relay throughput: postern relay against coturn's turnserver, same load,
# same settings, same run. Needs root (socket buffer limits) and coturn.
#
#   bench/relay.sh                      # 8 allocations, 10 s each
#   ALLOCATIONS=32 SECONDS_EACH=20 bench/relay.sh
#
# The load generator (crates/relay/examples/turn-load.rs) opens N TURN
# allocations, binds a channel from each to one UDP sink, blasts 1200-byte
# ChannelData for the measured time and counts what reaches the sink.
# Everything runs on loopback; both relays get 2 worker threads.
set -euo pipefail
cd "$(dirname "$0")/.."

ALLOCATIONS=${ALLOCATIONS:-8}
SECONDS_EACH=${SECONDS_EACH:-10}
SIZE=${SIZE:-1200}
WORKERS=${WORKERS:-2}
SECRET=bench-secret-$RANDOM

command -v turnserver >/dev/null || { echo "bench/relay.sh: install coturn (apt-get install coturn)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/relay.sh: run as root (it raises net.core.[rw]mem_max for both relays)" >&2; exit 1; }

echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern
cargo build --release --locked -q -p postern-relay --example turn-load
postern=target/release/postern
load=target/release/examples/turn-load

# Both relays ask for large socket buffers; let the kernel grant 8 MiB.
old_rmem=$(sysctl -n net.core.rmem_max); old_wmem=$(sysctl -n net.core.wmem_max)
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sysctl -qw net.core.rmem_max="$old_rmem" net.core.wmem_max="$old_wmem"
}
trap cleanup EXIT

wait_udp() { # port pid: wait until the server started as pid answers STUN
  for _ in $(seq 1 50); do
    kill -0 "$2" 2>/dev/null || { echo "the relay on port $1 exited at start" >&2; exit 1; }
    timeout 1 turnutils_stunclient -p "$1" 127.0.0.1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2; exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

measure() { # name port segments relay-pid: the load result plus the relay's CPU time per packet
  local out before after
  before=$(cpu_ticks "$4")
  out=$("$load" --server "127.0.0.1:$2" --secret "$SECRET" --allocations "$ALLOCATIONS" \
    --seconds "$SECONDS_EACH" --size "$SIZE" --segments "$3")
  after=$(cpu_ticks "$4")
  out="$out $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v p="$(field packets "$out")" \
    'BEGIN { printf "cpu_us_per_packet=%.2f", (p > 0 ? t / hz * 1e6 / p : 0) }')"
  echo "$1 (segments $3): $out" >&2
  echo "$out"
}

field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<" $2"; }

echo "== postern relay ($WORKERS workers, $ALLOCATIONS allocations, ${SIZE}-byte ChannelData, ${SECONDS_EACH}s)"
"$postern" relay --auth-secret "$SECRET" --listen 127.0.0.1:34780 --public-ip 127.0.0.1 \
  --ports 41000-41999 --workers "$WORKERS" --max-allocations-per-user 1000 --allow-loopback-peers \
  2>/tmp/postern-bench-relay.log &
pids+=($!)
wait_udp 34780 "${pids[-1]}"
ours=$(measure postern 34780 16 "${pids[-1]}")
ours_plain=$(measure postern 34780 1 "${pids[-1]}")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== coturn turnserver ($(turnserver --version 2>/dev/null | head -1 || echo coturn), $WORKERS relay threads)"
turnserver -n --no-cli --no-tls --no-dtls --use-auth-secret --static-auth-secret "$SECRET" \
  --realm postern --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 34790 \
  --min-port 42000 --max-port 42999 --relay-threads "$WORKERS" --user-quota 1000 \
  --allow-loopback-peers --pidfile /tmp/postern-bench-turnserver.pid --log-file stdout >/dev/null 2>&1 &
pids+=($!)
wait_udp 34790 "${pids[-1]}"
theirs=$(measure coturn 34790 16 "${pids[-1]}")
theirs_plain=$(measure coturn 34790 1 "${pids[-1]}")

report() { # label result
  printf '%-10s %10s pps %7s Gbit/s  %6s us CPU/packet  (delivered %s%% of offered)\n' "$1" \
    "$(field pps "$2")" "$(field gbps "$2")" "$(field cpu_us_per_packet "$2")" "$(field delivered "$2")"
}
ratio() { # label ours theirs
  awk -v a="$(field pps "$2")" -v b="$(field pps "$3")" -v l="$1" \
    'BEGIN { if (b > 0) printf "%s %.2f\n", l, a / b; else printf "%s n/a (coturn delivered nothing)\n", l }'
}
echo
echo "clients sending 16-datagram GSO batches:"
report "  postern" "$ours"
report "  coturn" "$theirs"
echo "clients sending one datagram per system call (the one-thread generator is the"
echo "limit here, not the relays: compare CPU per packet):"
report "  postern" "$ours_plain"
report "  coturn" "$theirs_plain"
ratio "ratio postern/coturn:" "$ours" "$theirs"
ratio "ratio postern/coturn (clients without GSO):" "$ours_plain" "$theirs_plain"
awk -v a="$(field cpu_us_per_packet "$ours_plain")" -v b="$(field cpu_us_per_packet "$theirs_plain")" \
  'BEGIN { if (a > 0) printf "CPU per packet coturn/postern (clients without GSO): %.2f\n", b / a }' 
