#!/usr/bin/env bash
# The test command: installs what the build and the tests need (a real bitcoind among them) and
# checks that nothing is missing, checks formatting and lints, runs every test in release mode
# (RocksDB is compiled once, for one profile), then tests the Debian package. CARGO_TARGET_DIR
# defaults to ~/.cache/blkindex/target so reruns are quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
scripts/install-deps.sh --tests
# Fails on any gap between what the build and tests use and what is installed.
scripts/install-deps.sh --tests --check
scripts/install-node.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -q -- -D warnings
cargo test --release --workspace
# The Debian package, from the binaries just built: installed, started as its units start it.
scripts/test-package.sh
