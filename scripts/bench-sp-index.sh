#!/usr/bin/env bash
# What the silent-payment index costs the bulk pass: the bench chain (scripts/bench-chain.sh)
# indexed from empty with --no-sp-index and with the tweak index on (from height 0), alternating,
# BENCH_RUNS times each (default 3), offline (the node stopped, blk files mapped). Reports each
# wall time, the medians and their ratio, and the tweak family's size; with the index on, also
# the tweak pass's share (its own line, "silent-payment tweaks of N blocks ... computed in S s"):
# the indexer's run less it is when the rest of the index is served. Writes the table to
# $BENCH_DIR/sp-index-<date>.md.
#
# Environment: BENCH_DIR (default ~/.cache/blkindex/bench), BENCH_CHAIN_MB (default 1100),
# BENCH_CHAIN (a regtest data dir to use instead, e.g. one gen-blocks made), BENCH_RUNS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
runs=${BENCH_RUNS:-3}
chain=${BENCH_CHAIN:-$("$here/bench-chain.sh" | tail -n1)}
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release
blk_bytes=$(cat "$chain"/regtest/blocks/blk*.dat | wc -c)
json() { sed -n "s/.*\"$2\": \([^,}]*\).*/\1/p" <<<"$1"; }
declare -A walls=([off]="" [on]="")
passes="" readies=""
for i in $(seq "$runs"); do
    for mode in off on; do
        db=$BENCH_DIR/db-sp-$mode
        rm -rf "$db"
        flag=(--sp-start 0)
        [ "$mode" = off ] && flag=(--no-sp-index)
        r=$("$bin/measure" --log "$BENCH_DIR/sp-index-$mode.log" -- "$bin/blkindex-indexer" --network regtest \
            --datadir "$chain" --db "$db" --offline --no-follow --progress log "${flag[@]}")
        [ "$(json "$r" exit)" = 0 ] || { cat "$BENCH_DIR/sp-index-$mode.log" >&2; exit 1; }
        w=$(json "$r" wall_secs)
        walls[$mode]="${walls[$mode]} $w"
        echo "bench-sp-index: run $i $mode: $w s" >&2
        if [ "$mode" = on ]; then
            p=$(sed -n 's/^silent-payment tweaks of .* computed in \([0-9.]*\)s;.*/\1/p' "$BENCH_DIR/sp-index-on.log")
            [ -n "$p" ] || { echo "bench-sp-index: no tweak pass line in the log" >&2; exit 1; }
            passes="$passes $p"
            readies="$readies $(awk "BEGIN {printf \"%.2f\", $w - $p}")"
        fi
    done
done
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m_off=$(median "${walls[off]}")
m_on=$(median "${walls[on]}")
m_pass=$(median "$passes")
m_ready=$(median "$readies")
stats=$("$bin/index-stats" "$BENCH_DIR/db-sp-on" "$blk_bytes" | grep -E '^(tweak|total)')
out=$BENCH_DIR/sp-index-$(date -u +%Y%m%dT%H%M%SZ).md
{
    echo "chain: $chain ($blk_bytes blk bytes); $runs runs each, alternating"
    echo
    echo "| tweak index | wall (each run) | median |"
    echo "|---|---|---|"
    echo "| off | ${walls[off]} | $m_off s |"
    echo "| on (from 0) | ${walls[on]} | $m_on s |"
    echo "| on: of which the tweak pass | $passes | $m_pass s |"
    echo "| on: the rest (all but the tweaks served) | $readies | $m_ready s |"
    echo
    echo "on / off: $(awk "BEGIN {printf \"%.3f\", $m_on / $m_off}") for the whole run," \
        "$(awk "BEGIN {printf \"%.3f\", $m_ready / $m_off}") until all but the tweaks is served"
    echo
    echo '```'
    echo "$stats"
    echo '```'
} | tee "$out"
