#!/usr/bin/env bash
# Query benchmark: blkindex-server, electrs 0.10.10 and ElectrumX 1.20.0 on the same node and the
# same >= 1 GB regtest chain (scripts/bench-chain.sh), one after the other in one run, each under
# the same load from `load` (benches/src/bin/load.rs): a wallet's mix of requests over many
# connections, then 10,000 idle subscribed connections.
#
# Reports requests/s and its ratio to the best other server, p50/p99 latency, RSS under load and
# with the idle crowd; writes the table to $BENCH_DIR/query-<date>.md and prints it.
#
# Fairness: every server reads the same node (started with -txindex=1, which ElectrumX needs for
# transaction.get); only the server under test runs during its load. ElectrumX runs with cost
# throttling off (COST_SOFT_LIMIT=0, COST_HARD_LIMIT=0), MAX_SESSIONS=20000, and unpadded TCP
# responses (scripts/bench/electrumx-unpadded.py); electrs with its defaults.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_CONNECTIONS (64),
# BENCH_SECONDS (20), BENCH_IDLE (10000), BENCH_PACED_RATE (200 requests/s for the latency
# phase: the same mix, sent on a schedule for 10 s, latency counted from the scheduled time), BENCH_SERVERS (default "blkindex electrs electrumx"), BENCH_SERVER_BIN (another build of blkindex-server, e.g. an
# earlier commit's, for before/after pairs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
connections=${BENCH_CONNECTIONS:-64}
seconds=${BENCH_SECONDS:-20}
idle=${BENCH_IDLE:-10000}
paced_rate=${BENCH_PACED_RATE:-200}
servers=${BENCH_SERVERS:-blkindex electrs electrumx}
mkdir -p "$BENCH_DIR"
ulimit -n "$(ulimit -Hn)"

chain=$("$here/bench-chain.sh" | tail -n1)
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release

electrs=$BENCH_DIR/electrs/bin/electrs
if [[ $servers == *electrs* ]] && [ ! -x "$electrs" ]; then
    echo "bench-query: installing electrs 0.10.10 (compiles RocksDB; takes a while once)" >&2
    CARGO_TARGET_DIR=$BENCH_DIR/electrs-target cargo install --locked electrs --version 0.10.10 \
        --root "$BENCH_DIR/electrs" >&2
fi
venv=$BENCH_DIR/exvenv
if [[ $servers == *electrumx* ]] && [ ! -x "$venv/bin/electrumx_server" ]; then
    echo "bench-query: installing ElectrumX 1.20.0 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "e-x==1.20.0" plyvel >&2
fi

"$here/regtest.sh" start "$chain" -txindex=1 >/dev/null
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$here/regtest.sh" stop "$chain"
}
trap cleanup EXIT
# shellcheck disable=SC1091
. "$chain/node.env"
cli() { "$here/regtest.sh" cli "$chain" "$@"; }
tip=$(cli getblockcount)
echo "bench-query: chain $chain at height $tip; waiting for the node's txindex" >&2
until cli getindexinfo txindex | grep -q '"synced": true'; do sleep 2; done

# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
load() {
    "$bin/load" --server "$1" --pid "$2" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" \
        --connections "$connections" --seconds "$seconds" --idle "$idle" --paced-rate "$paced_rate"
}

results=()
for s in $servers; do
    p=$(port)
    log=$BENCH_DIR/query-$s.log
    case $s in
    blkindex)
        db=$BENCH_DIR/db-blkindex
        "$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
            --no-follow --progress log 2>"$BENCH_DIR/query-indexer.log"
        "${BENCH_SERVER_BIN:-$bin/blkindex-server}" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
            --electrum-addr "127.0.0.1:$p" --max-connections-per-ip 100000 2>"$log" &
        ;;
    electrs)
        "$electrs" --network regtest --daemon-dir "$chain" --db-dir "$BENCH_DIR/db-electrs" \
            --daemon-rpc-addr "$RPC_ADDR" --daemon-p2p-addr "127.0.0.1:$P2P_PORT" \
            --electrum-rpc-addr "127.0.0.1:$p" --monitoring-addr "127.0.0.1:$(port)" --log-filters INFO 2>"$log" &
        ;;
    electrumx)
        env ALLOW_ROOT=1 COIN=Bitcoin NET=regtest DB_DIRECTORY="$BENCH_DIR/db-electrumx" \
            DAEMON_URL="http://$(cat "$COOKIE")@$RPC_ADDR/" SERVICES="tcp://127.0.0.1:$p" \
            COST_SOFT_LIMIT=0 COST_HARD_LIMIT=0 MAX_SESSIONS=20000 PEER_DISCOVERY=off PEER_ANNOUNCE= \
            CACHE_MB=2000 "$venv/bin/python" "$here/bench/electrumx-unpadded.py" >"$log" 2>&1 &
        ;;
    esac
    pid=$!
    pids+=("$pid")
    mkdir -p "$BENCH_DIR/db-electrumx"
    echo "bench-query: $s on 127.0.0.1:$p; waiting until it serves height $tip" >&2
    wait_ready "127.0.0.1:$p" "$tip" "$log" "$pid" 7200
    echo "bench-query: $s: $connections connections for ${seconds}s, then $idle idle ones" >&2
    results+=("$s" "$(load "127.0.0.1:$p" "$pid")")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done

report=$BENCH_DIR/query-$(date -u +%Y%m%dT%H%M%SZ).md
python3 - "$tip" "$connections" "$seconds" "$idle" "$paced_rate" "${results[@]}" >"$report" <<'PY'
import json, sys
tip, conns, secs, idle, rate = sys.argv[1:6]
rs = sys.argv[6:]
res = {rs[i]: json.loads(rs[i + 1]) for i in range(0, len(rs), 2)}
names = {"blkindex": "blkindex", "electrs": "electrs 0.10.10", "electrumx": "ElectrumX 1.20.0"}
w = next(iter(res.values()))["workload"]
print(f"Chain: regtest, height {tip}. Load: {conns} connections, one request in flight each, {secs} s "
      f"measured; mix 30% get_history, 20% get_balance, 20% listunspent, 10% subscribe, "
      f"15% transaction.get, 5% block.header over {w['scripthashes']} script hashes and {w['txids']} txids; "
      f"then the same mix paced at {rate} req/s for 10 s (latency from each request's scheduled time); "
      f"then {idle} idle connections subscribed to headers and one script each.\n")
print(f"| server | req/s (saturated) | p50 | p99 | p50 at {rate} req/s | p99 at {rate} req/s | errors "
      "| RSS (anon) under load | idle conns open | RSS (anon) with idle conns |")
print("|---|---|---|---|---|---|---|---|---|---|")
ms = lambda v: "n/a" if v is None else f"{v:.2f} ms"
for k, r in res.items():
    print(f"| {names[k]} | {r['rps']:.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
          f"| {ms(r.get('paced_p50_ms'))} | {ms(r.get('paced_p99_ms'))} | {r['errors']} "
          f"| {r['rss_loaded_mb']:.0f} ({r['anon_loaded_mb']:.0f}) MiB | {r['idle_open']} "
          f"| {r['rss_idle_mb']:.0f} ({r['anon_idle_mb']:.0f}) MiB |")
if "blkindex" in res and len(res) > 1:
    others = {k: r for k, r in res.items() if k != "blkindex"}
    best = max(others, key=lambda k: others[k]["rps"])
    b = res["blkindex"]
    print(f"\nblkindex / best other ({names[best]}): req/s {b['rps'] / others[best]['rps']:.2f}×; "
          + ", ".join(f"{names[k]} {b['rps'] / r['rps']:.2f}×" for k, r in others.items()))
PY
cat "$report"
echo "bench-query: report in $report" >&2
