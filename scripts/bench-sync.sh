#!/usr/bin/env bash
# Initial-sync benchmark: blkindex's bulk index against electrs 0.10.10, from empty to synced, in
# one run on the same node and the same >= 1 GB regtest chain (scripts/bench-chain.sh).
#
# Reports wall time and its ratio, blk MB/s, peak RSS, and index size / blk bytes; writes the
# table to $BENCH_DIR/sync-<date>.md and prints it. electrs is installed once into $BENCH_DIR
# with `cargo install --locked electrs --version 0.10.10`.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_CHAIN_MB (default 1100),
# BENCH_SKIP_ELECTRS=1 to time blkindex alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
mkdir -p "$BENCH_DIR"

chain=$("$here/bench-chain.sh" | tail -n1)
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release

electrs=$BENCH_DIR/electrs/bin/electrs
if [ -z "${BENCH_SKIP_ELECTRS:-}" ] && [ ! -x "$electrs" ]; then
    echo "bench-sync: installing electrs 0.10.10 (compiles RocksDB; takes a while once)" >&2
    CARGO_TARGET_DIR=$BENCH_DIR/electrs-target cargo install --locked electrs --version 0.10.10 \
        --root "$BENCH_DIR/electrs" >&2
fi

"$here/regtest.sh" start "$chain" >/dev/null
trap '"$here/regtest.sh" stop "$chain"' EXIT
# shellcheck disable=SC1091
. "$chain/node.env"
blk_bytes=$(cat "$chain"/regtest/blocks/blk*.dat | wc -c)
height=$("$here/regtest.sh" cli "$chain" getblockcount)
txs=$(sed -n 's/.*"txs": \([0-9]*\).*/\1/p' "$chain/complete")
echo "bench-sync: chain $chain: height $height, $txs txs, $blk_bytes bytes of blk files" >&2

json() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" <<<"$1"; }

# blkindex: the bulk pass from an empty DB.
db=$BENCH_DIR/db-blkindex
rm -rf "$db"
echo "bench-sync: blkindex..." >&2
r_b=$("$bin/measure" --log "$BENCH_DIR/blkindex.log" -- "$bin/blkindex-indexer" --network regtest \
    --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" --no-follow --progress log)
[ "$(json "$r_b" exit)" = 0 ] || { cat "$BENCH_DIR/blkindex.log" >&2; exit 1; }
size_b=$(du -sb "$db" | cut -f1)
"$bin/index-stats" "$db" "$blk_bytes" >"$BENCH_DIR/blkindex-stats.txt"

# electrs 0.10.10: from an empty DB to its "finished full compaction" line.
if [ -z "${BENCH_SKIP_ELECTRS:-}" ]; then
    edb=$BENCH_DIR/db-electrs
    rm -rf "$edb"
    port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    echo "bench-sync: electrs 0.10.10..." >&2
    r_e=$("$bin/measure" --log "$BENCH_DIR/electrs.log" --until "finished full compaction" --timeout 7200 -- \
        "$electrs" --network regtest --daemon-dir "$chain" --db-dir "$edb" \
        --daemon-rpc-addr "$RPC_ADDR" --daemon-p2p-addr "127.0.0.1:$P2P_PORT" \
        --electrum-rpc-addr "127.0.0.1:$(port)" --monitoring-addr "127.0.0.1:$(port)" --log-filters INFO)
    [ "$(json "$r_e" until_reached)" = true ] || { tail -20 "$BENCH_DIR/electrs.log" >&2; exit 1; }
    size_e=$(du -sb "$edb" | cut -f1)
fi

report=$BENCH_DIR/sync-$(date -u +%Y%m%dT%H%M%SZ).md
python3 - "$blk_bytes" "$height" "$txs" "$r_b" "$size_b" "${r_e:-}" "${size_e:-0}" >"$report" <<'PY'
import json, sys
blk, height, txs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
b = json.loads(sys.argv[4]); size_b = int(sys.argv[5])
e = json.loads(sys.argv[6]) if sys.argv[6] else None; size_e = int(sys.argv[7])
mb = blk / 1e6
print(f"Chain: regtest, height {height}, {txs} transactions, {mb:.0f} MB of blk files.\n")
print("| indexer | wall time | blk MB/s | peak RSS | index size | index / blk |")
print("|---|---|---|---|---|---|")
def row(name, r, size):
    print(f"| {name} | {r['wall_secs']:.1f} s | {mb / r['wall_secs']:.1f} | {r['peak_rss_mb']:.0f} MiB "
          f"| {size / 1e6:.1f} MB | {100 * size / blk:.2f} % |")
row("blkindex", b, size_b)
if e:
    row("electrs 0.10.10", e, size_e)
    print(f"\nblkindex / electrs: wall time {b['wall_secs'] / e['wall_secs']:.3f}×, "
          f"peak RSS {b['peak_rss_mb'] / e['peak_rss_mb']:.2f}×, index size {size_b / size_e:.2f}×")
PY
cat "$report"
echo
cat "$BENCH_DIR/blkindex-stats.txt"
echo "bench-sync: report in $report" >&2
