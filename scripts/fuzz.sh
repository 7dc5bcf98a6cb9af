#!/usr/bin/env bash
# Fuzzing (a benchmark, not part of the test command): `scripts/fuzz.sh TARGET [SECONDS]` runs one
# target of fuzz/ for SECONDS (default 600) with one job, `scripts/fuzz.sh all SECONDS` runs each
# in turn, `scripts/fuzz.sh list` names them, `scripts/fuzz.sh cmin TARGET` minimizes a corpus.
# Needs the nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz, pinned, if
# missing. New inputs are added to fuzz/corpus/TARGET, crashes written to fuzz/artifacts/TARGET.
# The committed corpus is replayed on stable by `cargo test --release --workspace` (the same target
# functions: blkindex_shared::fuzzing and the server's fuzzing module).
set -euo pipefail
# All in one function, read whole before it runs: a run takes minutes, and the file may change meanwhile.
main() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    cd "$root"
    CARGO_FUZZ_VERSION=0.13.2
    # Its own target dir: nightly and instrumented, never mixed with the stable builds.
    target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/blkindex/target-fuzz-nightly}
    if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
    fi
    rustup run nightly rustc --version >/dev/null || {
        echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
        exit 1
    }
    # One target: -a keeps overflow checks and debug assertions on (a wrapped integer is a finding),
    # -malloc_limit_mb makes any single allocation above it a crash: the parsers must bound what a
    # corrupt length may reserve (64 MB), and the WebSocket stream must not reserve by a frame's claimed
    # length beyond its 4 KiB cap (1 MB, the least libFuzzer takes). One process (no -jobs): the
    # machine's cores are shared.
    run() {
        local target=$1 secs=$2 malloc=64
        [[ $target == websocket ]] && malloc=1
        mkdir -p "fuzz/corpus/$target"
        cargo +nightly fuzz run -O -a --target-dir "$target_dir" "$target" "fuzz/corpus/$target" -- \
            -max_total_time="$secs" -print_final_stats=1 \
            -malloc_limit_mb=$malloc -rss_limit_mb=2048 -max_len=65536 -timeout=10
    }
    targets() { cargo +nightly fuzz list; }
    case "${1:-}" in
        list) targets ;;
        all)
            secs=${2:?"usage: fuzz.sh all SECONDS"}
            for t in $(targets); do run "$t" "$secs"; done
            ;;
        cmin)
            t=${2:?"usage: fuzz.sh cmin TARGET"}
            cargo +nightly fuzz cmin -O -a --target-dir "$target_dir" "$t" "fuzz/corpus/$t"
            ;;
        "" | -h | --help)
            sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
            exit 2
            ;;
        *) run "$1" "${2:-600}" ;;
    esac
}
main "$@"
