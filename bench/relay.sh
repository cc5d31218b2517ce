#!/usr/bin/env bash
# Relay throughput and CPU per packet: postern relay against coturn's
# turnserver, same load, same settings, same run. Needs root (socket buffer
# limits) and coturn.
#
#   bench/relay.sh                      # 8 allocations, 8 s per case
#   ALLOCATIONS=32 SECONDS_EACH=20 THREADS=4 bench/relay.sh
#   BASELINE=178059c bench/relay.sh     # also the relay of that revision
#   BASELINE=/path/to/postern bench/relay.sh   # ... or of that binary
#
# The load generator (crates/relay/examples/turn-load.rs) opens N TURN
# allocations, binds a channel from each to one UDP sink, blasts 1200-byte
# ChannelData from THREADS sender threads for the measured time and counts
# what reaches the sink; it reads the relay's CPU time (utime + stime, all
# threads) over the same window. Three cases, one after the other:
#
#   gso    every client sends 16-datagram GSO batches
#   plain  every client sends one datagram per system call (browsers,
#          phones, most TURN clients); the clients' datagrams interleave
#   mixed  half the allocations GSO, half one datagram per call, at once
#
# Everything runs on loopback; both relays get WORKERS worker threads.
# CPU per relayed packet is the figure that counts: on a small machine the
# generator, the sink and the relay share the cores, so packets/s also
# depends on what else runs. It also depends on load: a relay that is woken
# for every packet or two pays a wakeup (epoll, context switch) per packet,
# one that finds its socket full pays it per batch. THREADS=2 offers enough
# one-datagram load to fill a relay on a 2-core machine; on more cores, give
# the generator more threads (postern's "delivered" below 100% shows the
# relay is the limit). For postern the script also prints packets relayed
# per send system call (its postern_relay_send_calls_total counter). With
# many allocations at a low rate each (ALLOCATIONS=256), few of a client's
# datagrams share a turn of the relay's loop, and client-to-peer sends
# approach one system call per datagram: each allocation has a socket of
# its own, and no system call but io_uring's sends from several sockets.
#
# Before the per-flow outbox (crates/relay/src/outbox.rs), with the
# one-thread generator of that time, this printed postern/coturn 8.9x
# packets/s for GSO clients and 1.1x packets/s, 1.16x CPU per packet for
# clients sending one datagram per call. BASELINE=<revision> builds that
# revision's relay (or takes that binary) and runs it in the same run, as
# "before", for a like-for-like figure (building takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

ALLOCATIONS=${ALLOCATIONS:-8}
SECONDS_EACH=${SECONDS_EACH:-8}
SIZE=${SIZE:-1200}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-2}
BASELINE=${BASELINE:-}
TARGET=${CARGO_TARGET_DIR:-target}
SECRET=bench-secret-$RANDOM

command -v turnserver >/dev/null || { echo "bench/relay.sh: install coturn (apt-get install coturn)" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/relay.sh: install curl (the relay's counters)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/relay.sh: run as root (it raises net.core.[rw]mem_max for both relays)" >&2; exit 1; }

work=$(mktemp -d /tmp/postern-bench-relay.XXXXXX)
pids=()
old_rmem=$(sysctl -n net.core.rmem_max); old_wmem=$(sysctl -n net.core.wmem_max)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sysctl -qw net.core.rmem_max="$old_rmem" net.core.wmem_max="$old_wmem"
  rm -rf "$work"
}
trap cleanup EXIT

if [ -f "$BASELINE" ] && [ -x "$BASELINE" ]; then
  cp "$BASELINE" "$work/postern-baseline"
elif [ -n "$BASELINE" ]; then
  rev=$(git rev-parse --short "$BASELINE^{commit}")
  echo "== building the relay of $BASELINE ($rev, release)"
  # A fixed place per revision, so a second run builds nothing; the same
  # target directory, so the dependencies are built once for both.
  target=$(realpath "$TARGET")
  src=$target/relay-baseline/$rev
  if [ ! -f "$src/Cargo.toml" ]; then
    mkdir -p "$src" && git archive --format=tar "$rev" | tar -x -C "$src"
  fi
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release --locked -q -p postern --bin postern)
  cp "$TARGET/release/postern" "$work/postern-baseline"
fi
echo "== building (release)"
cargo build --release --locked -q -p postern --bin postern -p postern-relay --example turn-load
postern=$TARGET/release/postern
load=$TARGET/release/examples/turn-load
hz=$(getconf CLK_TCK)

# Both relays ask for large socket buffers; let the kernel grant 8 MiB.
sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608

wait_udp() { # port pid: wait until the server started as pid answers STUN
  for _ in $(seq 1 50); do
    kill -0 "$2" 2>/dev/null || { echo "the relay on port $1 exited at start" >&2; exit 1; }
    timeout 1 turnutils_stunclient -p "$1" 127.0.0.1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2; exit 1
}

field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<" $2"; }

measure() { # name port segments relay-pid: the load result plus the relay's CPU time per packet
  local out
  out=$("$load" --server "127.0.0.1:$2" --secret "$SECRET" --allocations "$ALLOCATIONS" \
    --seconds "$SECONDS_EACH" --size "$SIZE" --segments "$3" --threads "$THREADS" --pid "$4")
  out="$out $(awk -v t="$(field relay_cpu_ticks "$out")" -v hz="$hz" -v p="$(field packets "$out")" \
    'BEGIN { printf "cpu_us_per_packet=%.3f", (p > 0 ? t / hz * 1e6 / p : 0) }')"
  echo "$1 (segments $3): $out" >&2
  echo "$out"
}

cases=(gso:16 plain:1 mixed:16,1)
declare -A result

metric() { # port name: a counter of the relay's /metrics
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}
sent_packets='postern_relay_packets_total{direction="to_peer"}'

run_postern() { # label binary port ports
  echo "== $1 ($WORKERS workers, $ALLOCATIONS allocations, ${SIZE}-byte ChannelData, ${SECONDS_EACH}s per case, $THREADS sender threads)"
  "$2" relay --auth-secret "$SECRET" --listen "127.0.0.1:$3" --public-ip 127.0.0.1 \
    --ports "$4" --workers "$WORKERS" --max-allocations-per-user 1000 --allow-loopback-peers \
    --metrics "127.0.0.1:$(($3 + 1))" 2>"/tmp/postern-bench-$1.log" &
  pids+=($!)
  wait_udp "$3" "${pids[-1]}"
  local c calls packets out
  for c in "${cases[@]}"; do
    calls=$(metric $(($3 + 1)) postern_relay_send_calls_total)
    packets=$(metric $(($3 + 1)) "$sent_packets")
    out=$(measure "$1" "$3" "${c#*:}" "${pids[-1]}")
    # Packets relayed per send system call (relays that count their calls).
    out="$out $(awk -v c0="$calls" -v c1="$(metric $(($3 + 1)) postern_relay_send_calls_total)" \
      -v p0="$packets" -v p1="$(metric $(($3 + 1)) "$sent_packets")" \
      'BEGIN { if (c1 > c0) printf "packets_per_call=%.1f", (p1 - p0) / (c1 - c0) }')"
    result[$1:${c%%:*}]=$out
  done
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

run_postern postern "$postern" 34780 41000-41999
if [ -n "$BASELINE" ]; then
  run_postern before "$work/postern-baseline" 34785 43000-43999
fi

echo "== coturn turnserver ($(turnserver --version 2>/dev/null | head -1 || echo coturn), $WORKERS relay threads)"
turnserver -n --no-cli --no-tls --no-dtls --use-auth-secret --static-auth-secret "$SECRET" \
  --realm postern --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 34790 \
  --min-port 42000 --max-port 42999 --relay-threads "$WORKERS" --user-quota 1000 \
  --allow-loopback-peers --pidfile "$work/turnserver.pid" --log-file stdout >/dev/null 2>&1 &
pids+=($!)
wait_udp 34790 "${pids[-1]}"
for c in "${cases[@]}"; do result[coturn:${c%%:*}]=$(measure coturn 34790 "${c#*:}" "${pids[-1]}"); done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

report() { # label result
  local extra=""
  [ -n "$(field packets_per_call "$2")" ] && extra="  $(field packets_per_call "$2") packets/send call"
  [ -n "$(field s16_pps "$2")" ] && extra="$extra  (GSO clients $(field s16_pps "$2") pps, one-datagram clients $(field s1_pps "$2") pps)"
  printf '  %-16s %9s pps %7s Gbit/s %7s us CPU/packet  delivered %5s%%%s\n' "$1" \
    "$(field pps "$2")" "$(field gbps "$2")" "$(field cpu_us_per_packet "$2")" "$(field delivered "$2")" "$extra"
}
ratios() { # label ours theirs: packets/s and CPU per packet, postern over coturn
  awk -v l="$1" -v a="$(field pps "$2")" -v b="$(field pps "$3")" \
    -v ca="$(field cpu_us_per_packet "$2")" -v cb="$(field cpu_us_per_packet "$3")" \
    'BEGIN { printf "  %-16s %s packets/s, %s CPU per packet (coturn us / postern us)\n", l,
      (b > 0 ? sprintf("%.2fx", a / b) : "n/a"), (ca > 0 ? sprintf("%.2fx", cb / ca) : "n/a") }'
}

echo
declare -A titles=(
  [gso]="clients sending 16-datagram GSO batches"
  [plain]="clients sending one datagram per system call"
  [mixed]="mixed: half the allocations GSO batches, half one datagram per call, at once"
)
declare -A before=(
  [gso]="8.9x packets/s (one-thread generator)"
  [plain]="1.1x packets/s, 1.16x CPU per packet (one-thread generator, the generator the limit)"
  [mixed]="not measured"
)
for c in "${cases[@]}"; do
  name=${c%%:*}
  echo "${titles[$name]}:"
  report postern "${result[postern:$name]}"
  [ -n "$BASELINE" ] && report "postern before" "${result[before:$name]}"
  report coturn "${result[coturn:$name]}"
  ratios "postern/coturn:" "${result[postern:$name]}" "${result[coturn:$name]}"
  if [ -n "$BASELINE" ]; then
    ratios "before/coturn:" "${result[before:$name]}" "${result[coturn:$name]}"
  else
    echo "  before the outbox: ${before[$name]}"
  fi
  awk -v d="$(field delivered "${result[postern:$name]}")" 'BEGIN { if (d >= 99)
    print "  (postern took all it was offered: the generator was the limit; with cores to spare, raise THREADS)" }'
done
