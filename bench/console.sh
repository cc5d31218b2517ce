#!/usr/bin/env bash
# The admin console's render times at scale (issue 17): every page as a
# signed-in admin, with 10,000 clients (of 1,000 users), 1,000 resources and
# policies, 100 groups and 2,000 audit entries in the account, on SQLite,
# over loopback (crates/portal/examples/console.rs).
#
#   bench/console.sh
#   CLIENTS=20000 RESOURCES=2000 RUNS=50 bench/console.sh
#
# Goal: every page's median under 50 ms on the server.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (release)"
cargo build --release --locked -q -p postern-portal --example console

echo "== console pages"
target/release/examples/console \
  --clients "${CLIENTS:-10000}" --resources "${RESOURCES:-1000}" --runs "${RUNS:-20}"
