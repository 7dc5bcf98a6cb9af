#!/usr/bin/env bash
# The growth curve of the bulk pass (issue 13): the node-made bench chain (scripts/bench-chain.sh)
# as one batch and cut into mainnet's batch counts, then gen-blocks chains of growing size
# (mainnet-shaped, bucket width 3 as on mainnet), each indexed from empty with the default budget.
#
# Per run: wall time, blk MB/s, the phase split from the indexer's last line, index size / blk
# bytes, peak RSS and anonymous memory, peak disk use of the DB directory during the load. Writes
# $BENCH_DIR/scale-<date>.md (table, ratios against the targets) and scale-<date>.svg (the curve),
# and prints the table.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_SCALE_DIR (generated chains,
# default ~/.cache/blkindex/scale), BENCH_SCALE_GB (default "1 4 16 40"; a size the disk cannot
# hold is skipped and reported), BENCH_SCALE_KEEP (default: the largest size's chain and index are
# kept for bench-cold.sh, the others deleted), BENCH_SCALE_NODE_CHAIN=0 to skip the node-made runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
scale=${BENCH_SCALE_DIR:-$HOME/.cache/blkindex/scale}
sizes=${BENCH_SCALE_GB:-"1 4 16 40"}
largest=$(tr ' ' '\n' <<<"$sizes" | sort -g | tail -n1)
keep=${BENCH_SCALE_KEEP:-$largest}
mkdir -p "$BENCH_DIR" "$scale"
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=$BENCH_DIR/scale-$stamp.jsonl
: >"$results"

# Indexes the chain in data dir $2 into a fresh DB $3 and appends one JSON line named $1.
index_run() {
    local name=$1 datadir=$2 db=$3
    shift 3
    rm -rf "$db"
    local blk
    blk=$(cat "$datadir"/regtest/blocks/blk*.dat | wc -c)
    echo "bench-scale: $name: indexing $((blk / 1000000)) MB of blk files" >&2
    sync
    local r
    r=$("$bin/measure" --log "$BENCH_DIR/scale-$name.log" --watch-dir "$db" -- "$bin/blkindex-indexer" \
        --network regtest --datadir "$datadir" --db "$db" --offline --no-follow --progress log "$@")
    grep -q '"exit": 0' <<<"$r" || { tail -20 "$BENCH_DIR/scale-$name.log" >&2; exit 1; }
    local line size
    line=$(grep '^indexed ' "$BENCH_DIR/scale-$name.log" | tail -n1)
    size=$(du -sb "$db" | cut -f1)
    python3 - "$name" "$blk" "$size" "$r" "$line" "$*" >>"$results" <<'PY'
import json, re, sys
name, blk, size, r, line, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
num = lambda pat: float(re.search(pat, line).group(1))
print(json.dumps({
    "name": name, "args": args, "blk_bytes": blk, "index_bytes": size, **r,
    "scan": num(r"scan ([0-9.]+)s"), "indexing": num(r"indexing ([0-9.]+)s"),
    "batches": int(num(r"\(([0-9]+) batches")), "undo": num(r"undo matched ([0-9.]+)s"),
    "rows": num(r"rows ([0-9.]+)s"), "sorted": num(r"sorted ([0-9.]+)s"),
    "written": num(r"written ([0-9.]+)s"), "merge": num(r"merge ([0-9.]+)s"),
    "ranges": int(num(r"\(([0-9]+) staged ranges")), "txs": int(num(r"blocks \(([0-9]+) txs")),
}))
PY
}

if [ "${BENCH_SCALE_NODE_CHAIN:-1}" != 0 ]; then
    chain=$("$here/bench-chain.sh" | tail -n1)
    # Twice each, alternating, so that a noisy neighbour shows as a spread, not as a ratio.
    for round in 1 2; do
        index_run "node-1batch-$round" "$chain" "$BENCH_DIR/db-scale"
        index_run "node-4500kb-$round" "$chain" "$BENCH_DIR/db-scale" --batch-kb 4500
        index_run "node-1500kb-$round" "$chain" "$BENCH_DIR/db-scale" --batch-kb 1500
    done
    rm -rf "$BENCH_DIR/db-scale"
fi

skipped=""
for gb in $(tr ' ' '\n' <<<"$sizes" | sort -g); do
    dir=$scale/gen-${gb}gb
    if [ ! -f "$dir/gen-blocks.json" ]; then
        # Room for the blk and rev files (about 1.15 × N GB), the index and its staging (0.15 ×).
        need=$(python3 -c "print(int($gb * 1.35e9))")
        free=$(df --output=avail -B1 "$scale" | tail -n1)
        if [ "$free" -lt "$need" ]; then
            echo "bench-scale: skipping $gb GB: $((free / 1000000000)) GB free, $((need / 1000000000)) GB needed" >&2
            skipped="$skipped $gb"
            continue
        fi
        rm -rf "$dir"
        echo "bench-scale: generating $gb GB" >&2
        "$bin/gen-blocks" --datadir "$dir" --gb "$gb" --seed 7 >"$BENCH_DIR/scale-gen-${gb}gb.json"
    fi
    index_run "gen-${gb}gb" "$dir" "$dir/db" --bucket-width 3
    python3 - "$dir/gen-blocks.json" "gen-${gb}gb" >>"$results.gen" <<'PY'
import json, sys
g = json.load(open(sys.argv[1])); g["name"] = sys.argv[2]; print(json.dumps(g))
PY
    if [ "$gb" != "$keep" ]; then
        rm -rf "$dir"
    fi
done

python3 "$here/bench-scale-report.py" "$results" "$BENCH_DIR/scale-$stamp" "$skipped"
cat "$BENCH_DIR/scale-$stamp.md"
