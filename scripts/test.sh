#!/usr/bin/env bash
# The test command: installs what the build and the tests need (a real bitcoind among them), checks
# formatting and lints, and runs every test in release mode (RocksDB is compiled once, for one
# profile). CARGO_TARGET_DIR defaults to ~/.cache/blkindex/target so reruns are quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
scripts/install-deps.sh
scripts/install-node.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -q -- -D warnings
cargo test --release --workspace
