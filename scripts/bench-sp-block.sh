#!/usr/bin/env bash
# A new block's silent-payment scan for many live subscriptions, through the server, end to end
# (issue 15: "a new block's scan for 1,000 subscribed sessions within 1 s"). A fresh regtest node
# with a following blkindex-indexer and three blkindex-servers on its index, which differ only in
# how they scan a new block:
#   default   --sp-scan-threads 1, tweak tables from 128 subscriptions (the shipped flags)
#   tables-2  --sp-scan-threads 2, tweak tables from 128
#   alone-2   --sp-scan-threads 2, no tables (--sp-table-from above the sessions: each
#             subscription multiplies every tweak on its own, as one scan of past blocks does)
# `sp-block` opens BENCH_SP_SESSIONS (1000) sessions to one server, each its own live
# subscription, mines a block of BENCH_SP_ELIGIBLE (1000) eligible transactions plus one paying
# every session, and times each session's notification; the servers in turn, BENCH_ROUNDS (3)
# rounds, the order alternating (BENCH_SP_MEMPOOL=1: the block's transactions in the mempool first,
# checked there by every session, and one new one, timed, paying every session again: mainnet's
# usual block); each round also makes the same block's checks in its own process
# on 2 threads with the server's functions (the arithmetic alone). Writes
# $BENCH_DIR/sp-block-<date>.md and prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
sessions=${BENCH_SP_SESSIONS:-1000}
eligible=${BENCH_SP_ELIGIBLE:-1000}
rounds=${BENCH_ROUNDS:-3}
mempool_first=${BENCH_SP_MEMPOOL:+1}
[ "${BENCH_SP_MEMPOOL:-0}" = 0 ] && mempool_first=
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
dir=$BENCH_DIR/sp-block
rm -rf "$dir"
mkdir -p "$dir"
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
start_node "$dir/node"
cli() { "$here/regtest.sh" cli "$dir/node" "$@"; }
cli createwallet bench >/dev/null
cli generatetoaddress 150 "$(cli getnewaddress)" >/dev/null

"$bin/blkindex-indexer" --network regtest --datadir "$dir/node" --db "$dir/db" --daemon-rpc-addr "$RPC_ADDR" \
    --progress none >"$dir/indexer.out" 2>"$dir/indexer.log" &
pids+=($!)
until grep -q "following" "$dir/indexer.log" 2>/dev/null; do
    kill -0 "${pids[0]}" 2>/dev/null || { tail "$dir/indexer.log" >&2; exit 1; }
    sleep 0.2
done

servers=()
start_server() { # NAME FLAGS...
    local name=$1 port
    shift
    port=$(port)
    "$bin/blkindex-server" --network regtest --datadir "$dir/node" --db "$dir/db" --daemon-rpc-addr "$RPC_ADDR" \
        --secondary-dir "$dir/secondary-$name" --electrum-addr "127.0.0.1:$port" \
        --sp-max-live 1000000 --sp-max-scans 1000000 --sp-scan-cpu-secs 100000 \
        --cost-soft-limit 1e9 --cost-hard-limit 1e9 "$@" 2>"$dir/server-$name.log" &
    pids+=($!)
    wait_ready "127.0.0.1:$port" "$(cli getblockcount)" "$dir/server-$name.log" $! 120
    servers+=(--server "$name=127.0.0.1:$port")
}
start_server default
start_server tables-2 --sp-scan-threads 2
start_server alone-2 --sp-scan-threads 2 --sp-table-from 1000000000

report=$BENCH_DIR/sp-block${mempool_first:+-mempool}-$(date -u +%Y%m%dT%H%M%SZ).md
{
    echo "bench-sp-block.sh on $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ): three blkindex-servers on one regtest"
    echo "node and index (default: 1 scan thread, tables from 128; tables-2: 2 threads, tables; alone-2:"
    echo "2 threads, no tables). Each row is one block mined with generateblock; 'in process' is the first"
    echo "block of the round checked in sp-block itself, on 2 threads, as a batch with tables checks it."
    echo
    "$bin/sp-block" "${servers[@]}" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" \
        --sessions "$sessions" --eligible "$eligible" --rounds "$rounds" ${mempool_first:+--mempool-first}
    echo
    echo "Each server's batches of the measured blocks, as its log has them (late: members that joined"
    echo "after the first turn; ms: from the first member's call to the last answer):"
    echo
    for name in default tables-2 alone-2; do
        grep -E "scanned for the live subscriptions.*transactions=[0-9]{3,}" "$dir/server-$name.log" |
            sed -E 's/^.*(height=.*)$/\1/; s/^/    '"$name"': /' || true
    done
} >"$report"
cat "$report"
echo "bench-sp-block: report in $report" >&2
