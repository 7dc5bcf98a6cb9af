#!/usr/bin/env bash
# Mempool benchmark: a regtest node with a mempool of mainnet's size (BENCH_MEMPOOL_TXS, default
# 100,000 independent transactions, signed by `fill-mempool` and sent in batches), and what
# blkindex-server does with it:
#   1. a server started on the empty mempool follows the node's ZMQ events while the
#      transactions arrive: how long until its view has them all, and its RSS before and after
#      (per transaction, less the transactions' bytes);
#   2. a server restarted into the full mempool: how long until its view is complete (its log's
#      "mempool view complete"), with the wallet mix's latency meanwhile;
#   3. a block mining BENCH_MEMPOOL_BLOCK (4,000) of them: how long until the server's view has
#      let them go and the subscribed scripts are notified, and the wallet mix's latency.
# The wallet mix (benches/src/wallet_mix.rs) runs at BENCH_MEMPOOL_RATE (200) requests/s over 16
# connections, on scripts and transactions of the mempool. Writes $BENCH_DIR/mempool-<date>.md
# and prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
TXS=${BENCH_MEMPOOL_TXS:-100000}
BLOCK=${BENCH_MEMPOOL_BLOCK:-4000}
RATE=${BENCH_MEMPOOL_RATE:-200}
mkdir -p "$BENCH_DIR"
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
dir=$BENCH_DIR/mempool
rm -rf "$dir"
mkdir -p "$dir"

# -checkmempool=0: regtest checks the whole mempool's consistency after every transaction by
# default, which makes filling it quadratic (45 transactions/s at 7,000, against 5,000/s without).
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
start_node "$dir/node" -maxmempool=1000 -checkmempool=0
fm() { "$bin/fill-mempool" "$1" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" --dir "$dir" "${@:2}"; }
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }

echo "bench-mempool: funding $TXS outputs" >&2
prepared=$(fm prepare --txs "$TXS")
"$bin/blkindex-indexer" --network regtest --datadir "$dir/node" --db "$dir/db" --daemon-rpc-addr "$RPC_ADDR" \
    --progress none 2>"$dir/indexer.log" &
pids+=($!)
until grep -q "following" "$dir/indexer.log" 2>/dev/null; do sleep 0.2; done

eport=$(port)
mport=$(port)
server() { # $1 = log file; starts a server in the background, its pid in $server_pid
    "$bin/blkindex-server" --network regtest --datadir "$dir/node" --db "$dir/db" --daemon-rpc-addr "$RPC_ADDR" \
        --electrum-addr "127.0.0.1:$eport" --metrics-addr "127.0.0.1:$mport" --max-connections-per-ip 100000 \
        2>"$1" &
    server_pid=$!
    pids+=("$server_pid")
}
wait_log() { # $1 = log, $2 = text
    local deadline=$((SECONDS + 600))
    until grep -q "$2" "$1"; do
        [ $SECONDS -lt $deadline ] || { tail -20 "$1" >&2; echo "bench-mempool: no '$2' in $1" >&2; exit 1; }
        sleep 0.05
    done
}

echo "bench-mempool: a server on the empty mempool, then $TXS transactions sent" >&2
server "$dir/server1.log"
wait_log "$dir/server1.log" "mempool view complete"
sleep 1
rss_empty=$(anon_kb "$server_pid")
filled=$(fm fill --txs "$TXS" --metrics "127.0.0.1:$mport")
sleep 2
rss_full=$(anon_kb "$server_pid")
kill -TERM "$server_pid"
wait "$server_pid" || true

echo "bench-mempool: a server restarted into the full mempool" >&2
server "$dir/server2.log"
started=$(fm startup --server "127.0.0.1:$eport" --pid "$server_pid" --log "$dir/server2.log" \
    --metrics "127.0.0.1:$mport" --rate "$RATE")
echo "bench-mempool: a block of $BLOCK of them" >&2
mined=$(fm mine --server "127.0.0.1:$eport" --pid "$server_pid" --metrics "127.0.0.1:$mport" --count "$BLOCK" \
    --rate "$RATE")
sleep 1
removal=$(grep "mined transactions left the mempool" "$dir/server2.log" | tail -n1 || true)

report=$BENCH_DIR/mempool-$(date -u +%Y%m%dT%H%M%SZ).md
python3 - "$prepared" "$filled" "$started" "$mined" "$rss_empty" "$rss_full" "$removal" "$RATE" >"$report" <<'PY'
import json, sys
prep, fill, start, mine = (json.loads(a) for a in sys.argv[1:5])
rss_empty, rss_full, removal, rate = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
n = fill["txs"]
per_tx = (rss_full - rss_empty) * 1024 / n
tx_bytes = fill["bytes"] / n
beyond = per_tx - tx_bytes
# The restarted server, against the first one's empty figure (it also served the wallet mix).
restarted = (start["anon_mb"] * 1024 - rss_empty) * 1024 / n - tx_bytes
def ms(v):
    return "–" if v is None else f"{v:.1f} ms"
def ok(good):
    return "met" if good else "**missed**"
print(f"{n:,} independent transactions (1 input, 2 outputs, P2WPKH, {tx_bytes:.0f} bytes each) in the "
      f"node's mempool ({fill['node_mempool_usage'] / 2**20:.0f} MiB of node memory); funded by "
      f"{prep['fan_outs']} fan-out transactions; signed in {fill['sign_secs']:.1f} s, sent in "
      f"{fill['send_secs']:.1f} s (batches of 1,000 `sendrawtransaction`). Wallet mix: {rate} requests/s "
      f"over 16 connections on the mempool's scripts and transactions.\n")
print("| measure | figure | target | |")
print("|---|---|---|---|")
print(f"| start-up into the full mempool, until the view is complete | {start['complete_secs_seen']:.1f} s "
      f"(listening after {start['listening_secs']:.2f} s) | ≤ 30 s | {ok(start['complete_secs_seen'] <= 30)} |")
print(f"| server memory per mempool transaction, beyond its bytes: following the node / restarted | "
      f"{beyond:.0f} B / {restarted:.0f} B (RssAnon {rss_empty / 1024:.0f} → {rss_full / 1024:.0f} / "
      f"{start['anon_mb']:.0f} MiB) | ≤ 1024 B | {ok(max(beyond, restarted) <= 1024)} |")
print(f"| block of {mine['mined']:,}: server's view updated after the block | {ms(mine['view_updated_ms'])} | "
      f"≤ 200 ms | {ok((mine['view_updated_ms'] or 1e9) <= 200)} |")
print(f"| block: {mine['notified']} of {mine['subscribed']} subscribed scripts notified, p50 / p99 / max | "
      f"{ms(mine['notify_p50_ms'])} / {ms(mine['notify_p99_ms'])} / {ms(mine['notify_max_ms'])} | | "
      f"{mine['control_notified']} unmined scripts notified |")
worst = max(start["during"]["p99_ms"] or 0, mine["mix_around_block"]["p99_ms"] or 0, mine["mix_all"]["p99_ms"] or 0)
print(f"| wallet mix p99 during start-up / around the block / the whole block run | "
      f"{ms(start['during']['p99_ms'])} / {ms(mine['mix_around_block']['p99_ms'])} / {ms(mine['mix_all']['p99_ms'])} | "
      f"≤ 50 ms | {ok(worst <= 50)} |")
sub = start["subscribed_at_start"]
print(f"| start-up: {sub['scripts']} scripts subscribed {sub['subscribed_after_ms']:.0f} ms after the server "
      f"listened, at their final status after p50 / max | {ms(sub['final_status_p50_ms'])} / "
      f"{ms(sub['final_status_max_ms'])} ({sub['notified']} notified, {sub['behind']} behind) | | |")
print(f"| following the node while the {n:,} arrive (ZMQ events) | view complete {fill['server_followed_secs']:.1f} s "
      f"after the first was sent | | |")
print()
print(f"- start-up log: `{start['log'].split('  ')[-1].strip()}`")
if removal:
    print(f"- block log: `{removal.split('  ')[-1].strip()}`")
print(f"- generateblock took {mine['generateblock_ms']:.0f} ms; latencies count from its return.")
print(f"- wallet mix errors: {start['during']['errors']} during start-up, {mine['mix_all']['errors']} in the block run; "
      f"max latency {ms(start['during']['max_ms'])} / {ms(mine['mix_all']['max_ms'])}.")
PY
{
    echo
    echo "Raw figures (JSON), one line per step: prepare, fill, startup, mine."
    echo
    printf '    %s\n' "$prepared" "$filled" "$started" "$mined"
} >>"$report"
cat "$report"
echo "bench-mempool: report in $report" >&2
