#!/usr/bin/env bash
# Follow-latency benchmark: time from submitblock to the block being committed by a following
# blkindex-indexer, p50/p99 over 200 blocks of >= 1,000 transactions, for each way of fetching
# new blocks (the node's files, or RPC getblock), in one run. Writes $BENCH_DIR/follow-<date>.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
BLOCKS=${BENCH_FOLLOW_BLOCKS:-200}
mkdir -p "$BENCH_DIR"
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release

run() { # $1 = follow source
    local dir=$BENCH_DIR/follow-$1
    rm -rf "$dir"
    "$here/regtest.sh" start "$dir/node" >/dev/null
    # shellcheck disable=SC1091
    . "$dir/node/node.env"
    "$bin/blkindex-indexer" --network regtest --datadir "$dir/node" --db "$dir/db" --daemon-rpc-addr "$RPC_ADDR" \
        --progress none --follow-source "$1" >"$dir/indexer.out" 2>"$dir/indexer.log" &
    local pid=$!
    while ! grep -q "following" "$dir/indexer.log" 2>/dev/null; do sleep 0.1; done
    local r
    r=$("$bin/follow-latency" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" --indexer-log "$dir/indexer.log" --blocks "$BLOCKS")
    kill -TERM $pid; wait $pid || true
    "$here/regtest.sh" stop "$dir/node"
    echo "$r"
}

echo "bench-follow: files..." >&2
files=$(run files)
echo "bench-follow: rpc..." >&2
rpc=$(run rpc)
report=$BENCH_DIR/follow-$(date -u +%Y%m%dT%H%M%SZ).md
python3 - "$files" "$rpc" >"$report" <<'PY'
import json, sys
f, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{f['blocks']} blocks of {f['txs_per_block_min']:.0f}+ transactions (median {f['txs_per_block_p50']:.0f}).\n")
print("| follow source | p50 after submit returns | p99 | max | p50 after submit starts | p99 |")
print("|---|---|---|---|---|---|")
for name, x in [("blk/rev files (default)", f), ("RPC getblock 0 + 3", r)]:
    a, s = x["ms_after_submit_return"], x["ms_after_submit_start"]
    print(f"| {name} | {a['p50']:.1f} ms | {a['p99']:.1f} ms | {a['max']:.1f} ms | {s['p50']:.1f} ms | {s['p99']:.1f} ms |")
PY
cat "$report"
echo "bench-follow: report in $report" >&2
