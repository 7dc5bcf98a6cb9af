#!/usr/bin/env bash
# Silent-payment scan throughput over the bench chain's tweak index (benches/src/bin/sp-scan.rs):
# a historical scan for one receiver, one block for BENCH_RECEIVERS receivers (default 1,000),
# and where one check's time goes. Indexes the chain first (offline, tweaks from 0) unless
# $BENCH_DIR/db-sp-on exists (scripts/bench-sp-index.sh leaves it). Writes
# $BENCH_DIR/sp-scan-<date>.txt.
#
# Environment: BENCH_DIR, BENCH_CHAIN_MB, BENCH_CHAIN (as bench-sp-index.sh), BENCH_RECEIVERS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
chain=${BENCH_CHAIN:-$("$here/bench-chain.sh" | tail -n1)}
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
db=$BENCH_DIR/db-sp-on
if [ ! -d "$db" ]; then
    "$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$db" --offline --no-follow \
        --progress none --sp-start 0
fi
"$bin/sp-scan" "$db" "$chain/regtest/blocks" "${BENCH_RECEIVERS:-1000}" | tee "$BENCH_DIR/sp-scan-$(date -u +%Y%m%dT%H%M%SZ).txt"
