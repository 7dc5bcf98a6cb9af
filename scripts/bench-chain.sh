#!/usr/bin/env bash
# Makes (once) the benchmark chain: a regtest data dir with at least $BENCH_CHAIN_MB MB of blocks,
# built by benches' gen-chain through a real node. Prints the data dir on its last line.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_CHAIN_MB (default 1100),
# CARGO_TARGET_DIR (default ~/.cache/blkindex/target).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
MB=${BENCH_CHAIN_MB:-1100}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
chain="$BENCH_DIR/chain-${MB}mb"
if [ -f "$chain/complete" ]; then
    echo "bench-chain: cached $chain ($(cat "$chain/complete"))" >&2
    echo "$chain"
    exit 0
fi
(cd "$root" && cargo build --release -q --workspace --bins >&2)
rm -rf "$chain"
mkdir -p "$chain"
"$here/regtest.sh" start "$chain" -blocksxor=1 >/dev/null
trap '"$here/regtest.sh" stop "$chain"' EXIT
# shellcheck disable=SC1091
. "$chain/node.env"
report=$("$CARGO_TARGET_DIR/release/gen-chain" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" --target-mb "$MB")
"$here/regtest.sh" stop "$chain"
trap - EXIT
echo "$report" >"$chain/complete"
echo "bench-chain: made $chain: $report" >&2
echo "$chain"
