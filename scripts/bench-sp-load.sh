#!/usr/bin/env bash
# Do silent-payment scans keep the wallet mix's latency? (issue 15: scans run on their own bounded
# threads beside the request path.) On the benchmark chain (bench-chain.sh) indexed with its
# tweaks, one blkindex-server (`--sp-scan-threads 1`) answers the wallet mix of bench-query.sh
# (`load`: 64 connections saturating, then paced at 200 req/s), in turns: with no scan running,
# and while BENCH_SP_SCANS (4) subscriptions of random keys scan every block from 0 (each a full
# historical scan of the chain's eligible transactions; the subscribers drop what they are sent).
# Three rounds, the two setups alternating; writes $BENCH_DIR/sp-load-<date>.md and prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
scans=${BENCH_SP_SCANS:-4}
chain=$("$here/bench-chain.sh" | tail -n1)
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
start_node "$chain" -txindex=1
db=$BENCH_DIR/db-sp-load
# An index of another format is refused: this benchmark's own index is made again.
"$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
    --no-follow --progress none 2>"$BENCH_DIR/sp-load-indexer.log" || {
    rm -rf "$db" "$db.server"
    "$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
        --no-follow --progress none 2>"$BENCH_DIR/sp-load-indexer.log"
}
port=$(port)
"$bin/blkindex-server" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
    --electrum-addr "127.0.0.1:$port" --max-connections-per-ip 100000 --sp-scan-threads 1 \
    --sp-scan-cpu-secs 100000 2>"$BENCH_DIR/sp-load-server.log" &
server=$!
pids+=("$server")
until python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)' "$port" 2>/dev/null; do
    kill -0 "$server" || { tail "$BENCH_DIR/sp-load-server.log" >&2; exit 1; }
    sleep 0.5
done

# Subscribers: each opens a connection, subscribes random keys from height 0, reads and drops
# notifications until killed; prints the pages it got on exit.
subscribe() {
    python3 - "$port" <<'PY' &
import json, os, signal, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rw")
scan = os.urandom(32).hex()
spend = "02" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"  # G: a valid key
f.write(json.dumps({"id": 0, "method": "server.version", "params": ["sp-load", "1.4"]}) + "\n")
f.write(json.dumps({"id": 1, "method": "blockchain.silentpayments.subscribe", "params": [scan, spend, 0]}) + "\n")
f.flush()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
for line in f:
    pass
PY
    pids+=($!)
}

load() {
    "$bin/load" --server "127.0.0.1:$port" --pid "$server" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" \
        --connections 64 --seconds 15 --idle 0 --paced-rate 200
}
results=()
for round in 1 2 3; do
    for setup in none scans; do
        sub_pids=()
        if [ "$setup" = scans ]; then
            before=${#pids[@]}
            for ((i = 0; i < scans; i++)); do subscribe; done
            sub_pids=("${pids[@]:$before}")
            sleep 2
        fi
        echo "bench-sp-load: round $round, $setup" >&2
        r=$(load)
        for p in "${sub_pids[@]}"; do kill "$p" 2>/dev/null || true; done
        results+=("$setup" "$r")
        sleep 1
    done
done

report=$BENCH_DIR/sp-load-$(date -u +%Y%m%dT%H%M%SZ).md
python3 - "$scans" "${results[@]}" >"$report" <<'PY'
import json, sys
from statistics import median
scans, rs = sys.argv[1], sys.argv[2:]
runs = {"none": [], "scans": []}
for i in range(0, len(rs), 2):
    runs[rs[i]].append(json.loads(rs[i + 1]))
print(f"The wallet mix of bench-query.sh (64 connections, 15 s saturated, then 200 req/s paced) against one "
      f"blkindex-server (`--sp-scan-threads 1`) on the benchmark chain with its tweaks, with no scan running and "
      f"while {scans} silent-payment subscriptions scan every block from 0; three rounds, alternating.\n")
print("| setup | req/s per round | median | p99 saturated (median) | p50 at 200 req/s | p99 at 200 req/s |")
print("|---|---|---|---|---|---|")
med = {}
for k, v in runs.items():
    m = lambda f: median(r[f] for r in v)
    med[k] = {f: m(f) for f in ("rps", "p99_ms", "paced_p50_ms", "paced_p99_ms")}
    name = "no scan" if k == "none" else scans + " scans"
    per_round = ", ".join(f"{r['rps']:,.0f}" for r in v)
    print(f"| {name} | {per_round} | "
          f"{med[k]['rps']:,.0f} | {med[k]['p99_ms']:.2f} ms | {med[k]['paced_p50_ms']:.2f} ms | {med[k]['paced_p99_ms']:.2f} ms |")
a, b = med["scans"], med["none"]
print(f"\nWith scans against without: req/s {a['rps'] / b['rps']:.2f}×, saturated p99 {a['p99_ms'] / b['p99_ms']:.2f}×, "
      f"p99 at 200 req/s {a['paced_p99_ms'] / b['paced_p99_ms']:.2f}×.")
PY
cat "$report"
echo "bench-sp-load: report in $report" >&2
