#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install Bitcoin Knots, make a regtest chain through
# it, bulk-index the node's blk files with the progress bar, and print what the index holds.
#
# Environment: DEMO_DIR (default ~/.cache/blkindex/demo), DEMO_CHAIN_MB (default 200).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
DEMO_DIR=${DEMO_DIR:-$HOME/.cache/blkindex/demo}
MB=${DEMO_CHAIN_MB:-200}

"$here/install-deps.sh"
echo "== installing the node" >&2
"$here/install-node.sh" >/dev/null
echo "== building blkindex (the first build compiles RocksDB: ~10 minutes on 2 cores)" >&2
(cd "$root" && cargo build --release -q -p blkindex-indexer -p blkindex-benches)
bin=$CARGO_TARGET_DIR/release

chain=$DEMO_DIR/node
if [ ! -f "$chain/complete" ]; then
    echo "== making a ${MB} MB regtest chain through the node" >&2
    rm -rf "$chain"
    "$here/regtest.sh" start "$chain" >/dev/null
    # shellcheck disable=SC1091
    . "$chain/node.env"
    "$bin/gen-chain" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" --target-mb "$MB" >"$chain/complete"
    "$here/regtest.sh" stop "$chain"
fi
"$here/regtest.sh" start "$chain" >/dev/null
trap '"$here/regtest.sh" stop "$chain"' EXIT
# shellcheck disable=SC1091
. "$chain/node.env"

echo "== bulk indexing $(du -sh "$chain/regtest/blocks" | cut -f1) of blocks into $DEMO_DIR/db" >&2
rm -rf "$DEMO_DIR/db"
"$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$DEMO_DIR/db" \
    --daemon-rpc-addr "$RPC_ADDR" --no-follow
echo
echo "== what the index holds"
"$bin/index-stats" "$DEMO_DIR/db" "$(cat "$chain"/regtest/blocks/blk*.dat | wc -c)"
