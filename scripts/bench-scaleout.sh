#!/usr/bin/env bash
# Scale-out benchmark: the wallet mix of `load` (benches/src/bin/load.rs) through HAProxy with 1,
# 2 and 4 blkindex-server processes behind it, and straight to one process (what HAProxy itself
# costs), side by side in one run on the >= 1 GB regtest chain (scripts/bench-chain.sh).
#
# Every server reads the same index and node (each its own secondary directory). Behind HAProxy
# they run --proxy-protocol tcp and HAProxy sends PROXY v2 (TCP mode, leastconn, /health checks:
# contrib/haproxy/haproxy.cfg's setup); the direct one runs without. One HAProxy process, one
# frontend per setup, all started before the first measurement; the setups are measured in
# turns, round after round, each round in another order, so that noise on a shared machine (the
# load generator shares its cores too) falls on every setup alike. Reported: each setup's median
# over the rounds, its ratios to the direct one, and each round's ratios (their spread is the
# noise); RSS and anonymous memory of every process of a setup sampled halfway through its load
# (in its last round). Before the rounds, a warm-up turn per setup, not counted.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_CONNECTIONS (64), BENCH_SECONDS
# (15), BENCH_ROUNDS (3), BENCH_PACED_RATE (200 requests/s, 10 s: latency below saturation).
# Needs haproxy (scripts/install-deps.sh --tests) and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
connections=${BENCH_CONNECTIONS:-64}
seconds=${BENCH_SECONDS:-15}
rounds=${BENCH_ROUNDS:-3}
paced_rate=${BENCH_PACED_RATE:-200}
warmup=3
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || { echo "bench-scaleout: no haproxy (scripts/install-deps.sh --tests)" >&2; exit 1; }
work=$BENCH_DIR/scaleout
mkdir -p "$work"
ulimit -n "$(ulimit -Hn)"

chain=$("$here/bench-chain.sh" | tail -n1)
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release

pids=()
started_node=0
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$started_node" = 0 ] || "$here/regtest.sh" stop "$chain"
}
trap cleanup EXIT
# A node another run already started on the chain is used as it is (and left running).
if [ -f "$chain/bitcoind.pid" ] && kill -0 "$(cat "$chain/bitcoind.pid")" 2>/dev/null; then
    echo "bench-scaleout: using the node already running on $chain" >&2
else
    "$here/regtest.sh" start "$chain" >/dev/null
    started_node=1
fi
# shellcheck disable=SC1091
. "$chain/node.env"
tip=$("$here/regtest.sh" cli "$chain" getblockcount)

# Its own index (another benchmark's indexer may hold $BENCH_DIR/db-blkindex): made once, brought
# to the tip at each run.
db=$work/db
echo "bench-scaleout: indexing $chain into $db (once; later runs only catch up)" >&2
"$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
    --no-follow --progress log 2>"$work/indexer.log"

# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"

# Server 0: direct, no PROXY protocol. Servers 1-4: behind HAProxy.
declare -a spid saddr smetrics
for i in 0 1 2 3 4; do
    p=$(port) m=$(port)
    extra=()
    [ "$i" = 0 ] || extra=(--proxy-protocol tcp)
    "$bin/blkindex-server" --network regtest --datadir "$chain" --db "$db" --daemon-rpc-addr "$RPC_ADDR" \
        --electrum-addr "127.0.0.1:$p" --metrics-addr "127.0.0.1:$m" --secondary-dir "$work/secondary-$i" \
        --max-connections-per-ip 100000 --log-stats-secs 0 "${extra[@]}" 2>"$work/server-$i.log" &
    spid[i]=$! saddr[i]=127.0.0.1:$p smetrics[i]=$m
    pids+=("${spid[i]}")
done
wait_ready "${saddr[0]}" "$tip" "$work/server-0.log" "${spid[0]}" 300

declare -A front
cfg=$work/haproxy.cfg
{
    printf 'global\n    maxconn 4000\n    nbthread 2\n'
    printf 'defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 15m\n    timeout server 15m\n    timeout check 2s\n'
    for n in 1 2 4; do
        front[$n]=$(port)
        printf 'frontend f%s\n    bind 127.0.0.1:%s\n    default_backend b%s\n' "$n" "${front[$n]}" "$n"
        printf 'backend b%s\n    balance leastconn\n    option httpchk GET /health\n    http-check expect status 200\n' "$n"
        printf '    default-server inter 2s fall 2 rise 2 send-proxy-v2\n'
        for i in $(seq 1 "$n"); do
            printf '    server s%s %s check port %s\n' "$i" "${saddr[i]}" "${smetrics[i]}"
        done
    done
} >"$cfg"
"$haproxy" -db -f "$cfg" 2>"$work/haproxy.log" &
hpid=$!
pids+=("$hpid")
for n in 1 2 4; do wait_ready "127.0.0.1:${front[$n]}" "$tip" "$work/haproxy.log" "$hpid" 300; done
# Every server behind answers /health with 200 before HAProxy is relied on.
for i in 1 2 3 4; do
    until python3 -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:${smetrics[i]}/health', timeout=2).status != 200)" 2>/dev/null; do
        sleep 1
    done
done
sleep 5 # HAProxy's checks (rise 2, every 2 s) see them up

# One measurement: setup name, address, the pids whose memory counts.
measure() {
    local name=$1 addr=$2
    shift 2
    local mem=$work/mem-$name.txt
    (
        sleep $((warmup + seconds / 2))
        for p in "$@"; do
            printf '%s %s %s\n' "$p" "$(awk '/^VmRSS:/{print $2}' "/proc/$p/status")" \
                "$(awk '/^RssAnon:/{print $2}' "/proc/$p/status")"
        done >"$mem"
    ) &
    local sampler=$!
    local out
    out=$("$bin/load" --server "$addr" --pid "$1" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" \
        --connections "$connections" --seconds "$seconds" --warmup "$warmup" --idle 0 \
        --paced-rate "$paced_rate")
    wait "$sampler"
    printf '{"setup":"%s","load":%s,"mem":"%s"}\n' "$name" "$out" "$(tr '\n' ';' <"$mem")"
}

# A warm-up turn per setup, not counted: every process's caches (its script cache, RocksDB's block
# cache) start cold, and servers 3 and 4 get load only in the 4-process setup, so without it the
# first round measured their warming.
for addr in "${saddr[0]}" "127.0.0.1:${front[1]}" "127.0.0.1:${front[2]}" "127.0.0.1:${front[4]}"; do
    echo "bench-scaleout: warming up through $addr" >&2
    "$bin/load" --server "$addr" --pid "${spid[0]}" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" \
        --connections "$connections" --seconds 10 --warmup 0 --idle 0 --paced-rate 0 >/dev/null
done

results=$work/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$results"
setups=(direct h1 h2 h4)
for r in $(seq 1 "$rounds"); do
    # Each round starts at another setup.
    order=("${setups[@]:$(((r - 1) % 4))}" "${setups[@]:0:$(((r - 1) % 4))}")
    for s in "${order[@]}"; do
        echo "bench-scaleout: round $r/$rounds: $s ($connections connections, ${seconds}s)" >&2
        case $s in
        direct) line=$(measure direct "${saddr[0]}" "${spid[0]}") ;;
        h1) line=$(measure h1 "127.0.0.1:${front[1]}" "${spid[1]}" "$hpid") ;;
        h2) line=$(measure h2 "127.0.0.1:${front[2]}" "${spid[1]}" "${spid[2]}" "$hpid") ;;
        h4) line=$(measure h4 "127.0.0.1:${front[4]}" "${spid[1]}" "${spid[2]}" "${spid[3]}" "${spid[4]}" "$hpid") ;;
        esac
        printf '{"round":%s,%s\n' "$r" "${line#\{}" >>"$results"
    done
done

report=${results%.jsonl}.md
python3 - "$results" "$tip" "$connections" "$seconds" "$paced_rate" "$(nproc)" "$hpid" >"$report" <<'PY'
import json, statistics, sys
path, tip, conns, secs, rate, cpus, hpid = sys.argv[1:8]
rows = [json.loads(l) for l in open(path)]
setups = ["direct", "h1", "h2", "h4"]
label = {"direct": "direct to 1 process", "h1": "HAProxy → 1 process", "h2": "HAProxy → 2 processes",
         "h4": "HAProxy → 4 processes"}
by = {s: [r for r in rows if r["setup"] == s] for s in setups}
med = lambda s, k: statistics.median(r["load"][k] for r in by[s])
print(f"Chain: regtest, height {tip}; {cpus} CPUs (shared with the load generator). Load: the wallet mix, "
      f"{conns} connections, one request in flight each, {secs} s measured per turn, {len(by['direct'])} rounds "
      f"(setups in turns, each round starting at another); then the mix paced at {rate} req/s for 10 s.\n")
print("| setup | req/s | × direct | p99 | × direct | p99 at " + rate + " req/s | errors | memory under load, RSS (anon) MiB |")
print("|---|---|---|---|---|---|---|---|")
d_rps, d_p99 = med("direct", "rps"), med("direct", "p99_ms")
for s in setups:
    rps, p99, paced = med(s, "rps"), med(s, "p99_ms"), med(s, "paced_p99_ms")
    errors = sum(r["load"]["errors"] for r in by[s])
    last = by[s][-1]["mem"].strip(";").split(";")
    mem = []
    for e in last:
        pid, rss, anon = e.split()
        who = "haproxy" if pid == hpid else "server"
        mem.append(f"{who} {int(rss) / 1024:.0f} ({int(anon) / 1024:.0f})")
    print(f"| {label[s]} | {rps:.0f} | {rps / d_rps:.2f} | {p99:.2f} ms | {p99 / d_p99:.2f} | {paced:.2f} ms "
          f"| {errors} | {', '.join(mem)} |")
print("\nPer round, req/s as a ratio to that round's direct run (the spread is the machine's noise):\n")
print("| round | " + " | ".join(label[s] for s in setups[1:]) + " |")
print("|---|" + "---|" * 3)
for r in sorted({r["round"] for r in rows}):
    d = next(x for x in rows if x["round"] == r and x["setup"] == "direct")["load"]["rps"]
    cells = [next(x for x in rows if x["round"] == r and x["setup"] == s)["load"]["rps"] / d for s in setups[1:]]
    print(f"| {r} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
PY
cat "$report"
echo "bench-scaleout: report in $report (raw: $results)" >&2
