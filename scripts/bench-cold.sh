#!/usr/bin/env bash
# Serving a chain bigger than memory (issue 13, part 3): blkindex-server --no-node on the largest
# gen-blocks chain bench-scale.sh kept (~/.cache/blkindex/scale/gen-40gb and its index), with its
# memory, page cache included, held to BENCH_COLD_MEM (2G) and the blk files and the index
# dropped from the page cache (benches' `evict`: posix_fadvise DONTNEED) before each phase.
#
# The limit: a memory cgroup, a child of this shell's own (cgroup v2 memory.max, or v1
# memory.limit_in_bytes; page cache is charged to it), the server started in it. Without a
# writable one, `evict --every-ms 100` runs through every phase instead. The report says which.
#
# Phases, each on a freshly started server (its script cache empty), files evicted once it is up:
#   1. the disk itself: O_DIRECT random 4 KiB reads, one at a time and 8 at once (`cold disk`)
#   2. get_history of scripts of ~10, 100, 1,000 and 10,000 transactions, each asked once, one
#      request at a time, with what the server read and the disk did per request (`cold history`)
#   3. the small scripts sharing a bucket with the three 10^6-transaction scripts, each followed by
#      a small script of the same length from elsewhere; one neighbour per hot bucket a round (so
#      that none finds its bucket read by the one before), as many rounds as a bucket has
#   4. the wallet mix (benches/src/wallet_mix.rs) over script hashes and txids of 2,000 random
#      blocks: 64 connections saturating for 20 s, then (server restarted, files evicted) paced
#      at 200 requests/s for 10 s
#   threads (not in the default set): the reads in flight, side by side in one run: the ~1,000 and
#      ~10,000 histories and the paced mix with `--read-threads 1` (a scan's reads one after
#      another, as before) and the default 32
#   5. the follower at the tip: `gen-blocks --extend` builds the chain again in memory and writes
#      the BENCH_COLD_BLOCKS (60) blocks after its tip; `fake-node` (a stand-in node: no real one
#      can validate generated blocks) appends them one every 2 s to a copy of the blocks
#      directory (hard links but for the last blk/rev files) and announces them over ZMQ; a
#      blkindex-indexer follows them into a copy of the index (SST files hard-linked), in a
#      cgroup of its own with the same limit
# Writes $BENCH_DIR/cold-<date>.md and prints it.
#
# Environment: BENCH_DIR (~/.cache/blkindex/bench), BENCH_COLD_CHAIN (a gen-blocks data dir with
# its index in db/; default the largest gen-* under ~/.cache/blkindex/scale), BENCH_COLD_MEM (2G),
# BENCH_COLD_BLOCKS (60), BENCH_COLD_SERVER_BIN and BENCH_COLD_INDEXER_BIN (the binaries to run, for
# comparing builds), BENCH_COLD_PHASES ("disk history neighbours mix follow"; a run of some
# of them replaces only their figures in the results the report is made from).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
scale=$HOME/.cache/blkindex/scale
chain=${BENCH_COLD_CHAIN:-$(ls -d "$scale"/gen-*gb 2>/dev/null | sort -t- -k2 -g | tail -n1)}
mem=${BENCH_COLD_MEM:-2G}
extra_blocks=${BENCH_COLD_BLOCKS:-60}
all_phases="disk history neighbours mix follow"
phases=${BENCH_COLD_PHASES:-$all_phases}
[ -f "$chain/gen-blocks.json" ] && [ -d "$chain/db" ] || {
    echo "bench-cold: no generated chain with an index (run scripts/bench-scale.sh)" >&2
    exit 1
}
db=$chain/db
blocks=$chain/regtest/blocks
work=$BENCH_DIR/cold/$(basename "$chain")
mkdir -p "$work"
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
results=$work/results.jsonl
if [ "$phases" = "$all_phases" ] || [ ! -f "$results" ]; then
    : >"$results"
    : >"$work/history-detail.jsonl"
fi
note() { python3 -c 'import json,sys; print(json.dumps({"phase": sys.argv[1], "result": json.loads(sys.argv[2])}))' "$1" "$2" >>"$results"; }
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
bytes() { numfmt --from=iec "$1"; }

# The memory limit: a child of our own memory cgroup.
limit=""
cg_dirs=()
make_cgroup() { # $1 = name; prints the group's directory, or nothing
    local own dir
    if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
        own=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
        dir=/sys/fs/cgroup$own/bench-cold-$1
        mkdir -p "$dir" 2>/dev/null && echo "$(bytes "$mem")" >"$dir/memory.max" 2>/dev/null && echo "$dir"
    elif [ -d /sys/fs/cgroup/memory ]; then
        own=$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)
        dir=/sys/fs/cgroup/memory$own/bench-cold-$1
        mkdir -p "$dir" 2>/dev/null && echo "$(bytes "$mem")" >"$dir/memory.limit_in_bytes" 2>/dev/null && echo "$dir"
    fi
}
cg_peak() { # $1 = group: peak bytes since the last reset, and how often the limit was hit
    if [ -f "$1/memory.peak" ]; then
        echo "{\"peak\": $(cat "$1/memory.peak"), \"limit_hits\": $(awk '$1 == "max" {print $2}' "$1/memory.events")}"
    else
        echo "{\"peak\": $(cat "$1/memory.max_usage_in_bytes"), \"limit_hits\": $(cat "$1/memory.failcnt")}"
    fi
}
cg_reset() {
    [ -f "$1/memory.max_usage_in_bytes" ] && echo 0 >"$1/memory.max_usage_in_bytes" && echo 0 >"$1/memory.failcnt"
    [ -f "$1/memory.peak" ] && echo 0 >"$1/memory.peak" 2>/dev/null
    true
}
server_cg=$(make_cgroup server || true)
if [ -n "$server_cg" ]; then
    cg_dirs+=("$server_cg")
    limit="memory cgroup $(sed 's|/sys/fs/cgroup||' <<<"$server_cg") ($( [ -f "$server_cg/memory.max" ] && echo v2 memory.max || echo v1 memory.limit_in_bytes) = $mem, page cache charged to it)"
else
    limit="no writable memory cgroup: evict --every-ms 100 over the blk files and the index throughout"
fi
echo "bench-cold: chain $chain; memory: $limit" >&2

pids=()
server_pid=""
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work/secondary" "$work/follow" "$work/extension.bin"
    for d in "${cg_dirs[@]}"; do rmdir "$d" 2>/dev/null || true; done
}
trap cleanup EXIT

evict_now() { "$bin/evict" "$blocks" "$db" "$@"; }
if [ -z "$server_cg" ]; then
    "$bin/evict" --every-ms 100 "$blocks" "$db" &
    pids+=($!)
fi

tip=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["best_height"])' "$chain/gen-blocks.json")
eport=$(port)
read_threads=""
# BENCH_COLD_SERVER_BIN: another build of the server (an earlier commit's, for a before/after
# pair of runs); the default is this tree's.
server_bin=${BENCH_COLD_SERVER_BIN:-$bin/blkindex-server}
# Starts a server (in the memory cgroup) and waits until it serves the tip.
start_server() {
    stop_server
    (
        [ -n "$server_cg" ] && echo "$BASHPID" >"$server_cg/cgroup.procs"
        exec "$server_bin" --network regtest --no-node --datadir "$chain" --db "$db" \
            --secondary-dir "$work/secondary" --electrum-addr "127.0.0.1:$eport" \
            --max-connections-per-ip 100000 --log-stats-secs 0 ${read_threads:+--read-threads "$read_threads"}
    ) 2>>"$work/server.log" &
    server_pid=$!
    pids+=("$server_pid")
    wait_ready "127.0.0.1:$eport" "$tip" "$work/server.log" "$server_pid" 600
}
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
# Before a phase: the server up, the files out of the page cache, the group's peak reset.
cold_start() {
    start_server
    evict_now >/dev/null
    [ -z "$server_cg" ] || cg_reset "$server_cg"
}
after_phase() { # $1 = phase, $2 = its JSON line; with the CPU pressure of the last 60 s (shared cores)
    local j
    j=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a["cpu_some_avg60"]=float(open("/proc/pressure/cpu").read().split()[2].split("=")[1]); print(json.dumps(a))' "$2")
    [ -z "$server_cg" ] || j=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a["cgroup"]=json.loads(sys.argv[2]); print(json.dumps(a))' "$j" "$(cg_peak "$server_cg")")
    note "$1" "$j"
}

scripts=$work/scripts.json
if [ ! -s "$scripts" ] || [ "$scripts" -ot "$db/CURRENT" ]; then
    echo "bench-cold: reading the script family for scripts by size (once per index)" >&2
    picked=$("$bin/cold" pick --datadir "$chain" --db "$db" --secondary "$work/secondary-pick" \
        --report "$chain/gen-blocks.json" --out "$scripts")
    rm -rf "$work/secondary-pick"
    echo "$picked" >"$work/pick.json"
fi
note pick "$(cat "$work/pick.json")"
note setup "$(python3 -c 'import json,sys; print(json.dumps({"chain": sys.argv[1], "limit": sys.argv[2], "mem": sys.argv[3], "server": sys.argv[4]}))' "$chain" "$limit" "$mem" "$server_bin")"
note evict "$(evict_now)"
rounds=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rounds"])' "$work/pick.json")

for phase in $phases; do
    case $phase in
    disk)
        echo "bench-cold: the disk" >&2
        evict_now >/dev/null
        note disk "$("$bin/cold" disk --dir "$blocks")"
        ;;
    history)
        for class in 10 100 1000 10000; do
            echo "bench-cold: get_history, scripts of ~$class transactions" >&2
            cold_start
            after_phase "history-$class" "$("$bin/cold" history --server "127.0.0.1:$eport" --pid "$server_pid" \
                --scripts "$scripts" --disk-of "$blocks" --class "$class" --detail "$work/history-detail.jsonl")"
        done
        ;;
    neighbours)
        for ((r = 0; r < rounds; r++)); do
            echo "bench-cold: hot scripts' neighbours, round $r" >&2
            cold_start
            after_phase "neighbours-$r" "$("$bin/cold" history --server "127.0.0.1:$eport" --pid "$server_pid" \
                --scripts "$scripts" --disk-of "$blocks" --neighbours --round "$r" --detail "$work/history-detail.jsonl")"
        done
        ;;
    mix)
        for p in saturated paced; do
            echo "bench-cold: wallet mix, $p" >&2
            cold_start
            after_phase "mix-$p" "$("$bin/cold" mix --server "127.0.0.1:$eport" --pid "$server_pid" \
                --scripts "$scripts" --disk-of "$blocks" --phase "$p")"
        done
        ;;
    threads)
        for t in 1 32; do
            read_threads=$t
            for class in 1000 10000; do
                echo "bench-cold: get_history, scripts of ~$class transactions, $t read threads" >&2
                cold_start
                after_phase "threads-$t-history-$class" "$("$bin/cold" history --server "127.0.0.1:$eport" \
                    --pid "$server_pid" --scripts "$scripts" --disk-of "$blocks" --class "$class")"
            done
            echo "bench-cold: wallet mix, paced, $t read threads" >&2
            cold_start
            after_phase "threads-$t-mix-paced" "$("$bin/cold" mix --server "127.0.0.1:$eport" --pid "$server_pid" \
                --scripts "$scripts" --disk-of "$blocks" --phase paced)"
        done
        read_threads=""
        ;;
    follow)
        stop_server
        f=$work/follow
        rm -rf "$f"
        mkdir -p "$f/regtest/blocks" "$f/db"
        # The last blk and rev files are copied (blocks are appended to them); the rest, and
        # the index's SST files (never written once made), are hard links: no second copy.
        last=$(ls "$blocks" | sed -n 's/^blk\([0-9]*\)\.dat$/\1/p' | sort | tail -n1)
        for x in "$blocks"/*; do
            case $(basename "$x") in
            "blk$last.dat" | "rev$last.dat" | xor.dat) cp "$x" "$f/regtest/blocks/" ;;
            *) ln "$x" "$f/regtest/blocks/" ;;
            esac
        done
        for x in "$db"/*; do
            case $x in
            *.sst) ln "$x" "$f/db/" ;;
            *) cp -r "$x" "$f/db/" ;;
            esac
        done
        echo "__cookie__:fake" >"$f/regtest/.cookie"
        echo "bench-cold: building the chain again for the $extra_blocks blocks after its tip" >&2
        note extension "$("$bin/gen-blocks" --datadir "$chain" --extend "$extra_blocks" --extend-out "$work/extension.bin")"
        rport=$(port)
        zport=$(port)
        "$bin/fake-node" --blocks-dir "$f/regtest/blocks" --report "$chain/gen-blocks.json" \
            --extension "$work/extension.bin" --rpc-addr "127.0.0.1:$rport" --zmq-addr "tcp://127.0.0.1:$zport" \
            --every-ms 2000 --log "$work/follow-appended.jsonl" 2>"$work/fake-node.log" &
        pids+=($!)
        follow_cg=$(make_cgroup follower || true)
        [ -z "$follow_cg" ] || cg_dirs+=("$follow_cg")
        "$bin/evict" "$f" >/dev/null
        [ -z "$follow_cg" ] || cg_reset "$follow_cg"
        (
            [ -n "$follow_cg" ] && echo "$BASHPID" >"$follow_cg/cgroup.procs"
            # The tail's debug line says when the follower found each block in the files.
            BLKINDEX_LOG=info,blkindex_indexer::tail=debug exec "${BENCH_COLD_INDEXER_BIN:-$bin/blkindex-indexer}" --network regtest \
                --datadir "$f" --db "$f/db" \
                --daemon-rpc-addr "127.0.0.1:$rport" --cookie "$f/regtest/.cookie" --progress none
        ) 2>"$work/follow-indexer.log" &
        indexer_pid=$!
        pids+=("$indexer_pid")
        echo "bench-cold: following $extra_blocks blocks, one every 2 s" >&2
        deadline=$((SECONDS + extra_blocks * 2 + 300))
        until [ "$(grep -c 'block committed' "$work/follow-indexer.log")" -ge "$extra_blocks" ]; do
            kill -0 "$indexer_pid" 2>/dev/null || { tail -20 "$work/follow-indexer.log" >&2; exit 1; }
            [ $SECONDS -lt $deadline ] || { echo "bench-cold: the follower fell behind" >&2; break; }
            sleep 1
        done
        kill "$indexer_pid"
        wait "$indexer_pid" 2>/dev/null || true
        j=$(python3 - "$work/follow-appended.jsonl" "$work/follow-indexer.log" "$f/db" <<'PY'
import json, os, re, sys
from datetime import datetime
appended = {j["height"]: j for j in map(json.loads, open(sys.argv[1]))}
found, blocks, promoted = {}, [], 0
for line in open(sys.argv[2]):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    kv = dict(re.findall(r"(\w+)=([^ ]+)", line))
    # The long-list check logs each list it moves, after the commit of the block that grew it.
    promoted += "a list moved to the long family" in line
    if "found block in blk file" in line:
        at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
        found.setdefault(kv["hash"], int(at.timestamp() * 1e6))
    if "block committed" not in line:
        continue
    h, a, f = int(kv["height"]), appended.get(int(kv["height"])), found.get(kv["hash"])
    ms, logged = float(kv["ms"]), int(kv["committed_at_us"])
    blocks.append({"height": h, "txs": int(kv["txs"]), "ms": ms,
                   "bytes": a and a["bytes"],
                   # appended → found in the files (ZMQ, RPC, the tail's read), and the commit's end
                   "found_ms": a and f and (f - a["appended_at_us"]) / 1000,
                   "visible_ms": a and f and (f - a["appended_at_us"]) / 1000 + ms,
                   # after the commit, before the log line: the check of the buckets for long lists
                   "check_ms": f and (logged - f) / 1000 - ms})
# What the follower added to the disk: files of the copy that are not links to the original's.
new = sum(st.st_size for st in (os.stat(os.path.join(d, n)) for d, _, ns in os.walk(sys.argv[3]) for n in ns)
          if st.st_nlink == 1)
print(json.dumps({"blocks": blocks, "promoted": promoted, "new_db_bytes": new}))
PY
)
        [ -z "$follow_cg" ] || j=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a["cgroup"]=json.loads(sys.argv[2]); print(json.dumps(a))' "$j" "$(cg_peak "$follow_cg")")
        note follow "$j"
        ;;
    esac
done
stop_server

report=$BENCH_DIR/cold-$(date -u +%Y%m%dT%H%M%SZ).md
python3 "$here/bench-cold-report.py" "$results" >"$report"
cat "$report"
echo "bench-cold: report in $report" >&2
