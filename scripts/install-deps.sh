#!/usr/bin/env bash
# The system packages blkindex's build, tests and demo use, each checked by the file the build or a
# test actually uses (not by a similar one: clang-sys links only the unversioned libclang.so from
# libclang-dev, which the runtime's libclang.so.1 does not satisfy). Installs only what is missing,
# with --no-install-recommends, waiting for the dpkg lock (a first boot runs unattended upgrades).
#
#   scripts/install-deps.sh [--tests]           install what is missing (root needed for that),
#                                               then check; --tests adds what only the tests use
#   scripts/install-deps.sh [--tests] --check   list every need and whether it is present; exit 1
#                                               on a gap
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

have_glob() { compgen -G "$1" >/dev/null; }
have_cmd() { command -v "$1" >/dev/null 2>&1; }

# One line per need: "scope|package|what it is for|shell test that passes when it is present".
# Scope "build": the build and the demo; "test": the tests only. A package "cargo:NAME" is a tool
# installed from crates.io.
NEEDS=(
    "build|libclang-dev|libclang.so for RocksDB's bindgen (clang-sys)|have_glob '/usr/lib/llvm-*/lib/libclang.so' || have_glob '/usr/lib/x86_64-linux-gnu/libclang.so'"
    "build|g++|C and C++ compilers for RocksDB, zstd and lz4|have_cmd g++ && have_cmd cc"
    "build|python3|the scripts' free-port picker and the demo's client|have_cmd python3"
    "test|electrum|Debian's Electrum wallet, a real client in the tests|have_cmd electrum"
    "test|systemd|systemd-analyze, which checks the package's units|have_cmd systemd-analyze"
    "test|haproxy|Debian's HAProxy, the balancer in front of two servers in the tests|have_cmd haproxy || [ -x /usr/sbin/haproxy ]"
    "test|iproute2|ip netns and veth pairs: the two-host test's network namespaces (run as root)|have_cmd ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]"
    "test|coreutils|cp -a, which copies a checkpoint to a replica's directory in the tests|have_cmd cp"
    "test|cargo:cargo-deb@3.8.0|builds the Debian package the package test installs (crates.io)|have_cmd cargo-deb"
)

# The needs in scope: build, plus test with --tests.
in_scope() { [ "$1" = build ] || [ "$tests" = 1 ]; }

check() {
    local gaps=0 line scope pkg why test
    for line in "${NEEDS[@]}"; do
        IFS='|' read -r scope pkg why test <<<"$line"
        in_scope "$scope" || continue
        if eval "$test"; then
            printf 'install-deps: present  %-14s %s\n' "$pkg" "$why" >&2
        else
            printf 'install-deps: MISSING  %-14s %s\n' "$pkg" "$why" >&2
            gaps=$((gaps + 1))
        fi
    done
    # The Rust toolchain the project declares (rust-toolchain.toml) and its components.
    local channel
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$root/rust-toolchain.toml")
    for tool in rustc cargo rustfmt cargo-clippy; do
        if (cd "$root" && rustup which "$tool" >/dev/null 2>&1); then
            printf 'install-deps: present  %-14s toolchain %s\n' "$tool" "$channel" >&2
        else
            printf 'install-deps: MISSING  %-14s toolchain %s (rustup component add)\n' "$tool" "$channel" >&2
            gaps=$((gaps + 1))
        fi
    done
    [ "$gaps" = 0 ] || { echo "install-deps: $gaps missing" >&2; return 1; }
}

# apt and dpkg each take a lock; on a first boot unattended-upgrades holds them for minutes.
apt_retry() {
    local i
    for i in $(seq 1 90); do
        if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=20 "$@" >&2; then return 0; fi
        echo "install-deps: apt-get $1 failed (a lock held by another apt?), retrying in 10 s ($i/90)" >&2
        sleep 10
    done
    return 1
}

check_only=0 tests=0
for a in "$@"; do
    case "$a" in
    --check) check_only=1 ;;
    --tests) tests=1 ;;
    *) echo "usage: install-deps.sh [--tests] [--check]" >&2; exit 2 ;;
    esac
done
if [ "$check_only" = 1 ]; then
    check
    exit
fi

missing=() crates=()
for line in "${NEEDS[@]}"; do
    IFS='|' read -r scope pkg _ test <<<"$line"
    in_scope "$scope" || continue
    eval "$test" && continue
    case "$pkg" in
    cargo:*) crates+=("${pkg#cargo:}") ;;
    *) missing+=("$pkg") ;;
    esac
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    [ "$(id -u)" = 0 ] || { echo "install-deps: run as root, or install: ${missing[*]}" >&2; exit 1; }
    apt_retry update -qq
    apt_retry install -y -qq --no-install-recommends "${missing[@]}"
fi
for crate in "${crates[@]}"; do
    echo "install-deps: installing $crate from crates.io" >&2
    cargo install --locked --quiet "${crate%@*}" --version "${crate#*@}" >&2
done
# What was installed must now pass the same checks the build relies on.
check 2>/dev/null || { check; exit 1; }
