#!/usr/bin/env bash
# Hostile-client benchmark: runs the attack tests (server/tests/it/attacks.rs: a real node, a real
# server, real sockets) and collects their figures: the server's RSS growth under each attack and
# the control client's p99 meanwhile. The tests assert the bounds (16 MiB per attacking
# connection, p99 <= 100 ms); this prints what was measured, RUNS times over.
# Writes $BENCH_DIR/attacks-<date>.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export BENCH_DIR=${BENCH_DIR:-$HOME/.cache/blkindex/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
RUNS=${BENCH_ATTACK_RUNS:-3}
mkdir -p "$BENCH_DIR"
"$here/install-node.sh" >/dev/null
out=$BENCH_DIR/attacks-$(date +%Y%m%d-%H%M).md
{
    echo "# Attack figures, $(date -u +%FT%TZ), $RUNS runs"
    for run in $(seq "$RUNS"); do
        echo
        echo "## run $run"
        (cd "$root" && cargo test --release -q -p blkindex-server --test it -- attacks --nocapture --test-threads 1 2>&1) |
            grep '^figures:' | sed 's/^figures: /- /'
    done
} | tee "$out"
echo "written: $out" >&2
