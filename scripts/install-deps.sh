#!/usr/bin/env bash
# System packages blkindex builds and tests with: libclang for RocksDB's bindgen, a C++ compiler,
# python3, and Debian's Electrum wallet (a real client the server's tests sync). Installs only
# what is missing (needs root for that).
set -euo pipefail
need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v electrum >/dev/null 2>&1 || need+=(electrum)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}" >&2
    [ "$(id -u)" = 0 ] || { echo "install-deps: run as root, or install: ${need[*]}" >&2; exit 1; }
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
