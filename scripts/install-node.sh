#!/usr/bin/env bash
# Installs Bitcoin Knots (bitcoind, bitcoin-cli) for blkindex's tests and demos, without touching the
# system's apt configuration: Debian sid's packages are downloaded with private apt directories and
# unpacked under a cache directory, then run through sid's own dynamic loader.
#
# Prints the path of a directory holding `bitcoind` and `bitcoin-cli` wrappers on its last line.
# An existing node wins: $BITCOIND (with $BITCOIN_CLI beside it), or `bitcoind` on PATH.
#
# Environment: BLKINDEX_NODE_DIR (default ~/.cache/blkindex/node).
set -euo pipefail

log() { echo "install-node: $*" >&2; }

wrapper_dir_for() { # $1 = path of an existing bitcoind
    local bitcoind=$1 dir cli
    dir=$(cd "$(dirname "$bitcoind")" && pwd)
    cli=${BITCOIN_CLI:-$dir/bitcoin-cli}
    local out="${BLKINDEX_NODE_DIR:-$HOME/.cache/blkindex/node}/external-bin"
    mkdir -p "$out"
    ln -sf "$bitcoind" "$out/bitcoind"
    [ -x "$cli" ] && ln -sf "$cli" "$out/bitcoin-cli"
    echo "$out"
}

if [ -n "${BITCOIND:-}" ]; then
    log "using BITCOIND=$BITCOIND"
    wrapper_dir_for "$BITCOIND"
    exit 0
fi
if command -v bitcoind >/dev/null 2>&1; then
    log "using bitcoind on PATH: $(command -v bitcoind)"
    wrapper_dir_for "$(command -v bitcoind)"
    exit 0
fi

DIR="${BLKINDEX_NODE_DIR:-$HOME/.cache/blkindex/node}"
BIN="$DIR/bin"
if [ -x "$BIN/bitcoind" ] && "$BIN/bitcoind" --version >/dev/null 2>&1; then
    log "cached: $("$BIN/bitcoind" --version | head -n1)"
    echo "$BIN"
    exit 0
fi

need_root() { [ "$(id -u)" = 0 ] || { log "run as root (or install the listed packages yourself)"; exit 1; }; }

# System libraries bitcoind links against, from the machine's own suite.
SYSLIBS=(libevent-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7 libzmq5 libsqlite3-0)
missing=()
for p in "${SYSLIBS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root
    log "installing system libraries: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# Private apt state pointing at sid, with the same mirror as the system's Debian source.
mkdir -p "$DIR/apt/parts" "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/debs"
uris=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
uris=${uris:-http://deb.debian.org/debian}
cat >"$DIR/apt/parts/sid.sources" <<EOF
Types: deb
URIs: $uris
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$DIR/apt/parts"
    -o "Dir::State::Lists=$DIR/apt/lists" -o "Dir::Cache=$DIR/apt/cache"
    -o Debug::NoLocking=1)
log "fetching sid package lists from $uris"
apt-get "${APT_OPTS[@]}" update -qq >&2
(cd "$DIR/debs" && rm -f ./*.deb && apt-get "${APT_OPTS[@]}" download bitcoin-knots libc6 libstdc++6 libgcc-s1 >&2)

rm -rf "$DIR/root"
mkdir -p "$DIR/root"
for deb in "$DIR"/debs/*.deb; do
    dpkg -x "$deb" "$DIR/root"
done

LOADER="$DIR/root/usr/lib64/ld-linux-x86-64.so.2"
[ -x "$LOADER" ] || LOADER=$(find "$DIR/root" -name 'ld-linux-x86-64.so.2' | head -n1)
LIBPATH="$DIR/root/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
mkdir -p "$BIN"
for tool in bitcoind bitcoin-cli; do
    cat >"$BIN/$tool" <<EOF
#!/bin/sh
exec "$LOADER" --library-path "$LIBPATH" "$DIR/root/usr/bin/$tool" "\$@"
EOF
    chmod +x "$BIN/$tool"
done
log "installed: $("$BIN/bitcoind" --version | head -n1)"
echo "$BIN"
