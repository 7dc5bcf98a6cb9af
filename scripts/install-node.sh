#!/usr/bin/env bash
# Installs Bitcoin Knots (bitcoind, bitcoin-cli) for blkindex's tests and demos, without touching the
# system's apt configuration: Debian sid's packages are downloaded with private apt directories and
# unpacked under a cache directory, then run through sid's own dynamic loader.
#
# Prints the path of a directory holding `bitcoind` and `bitcoin-cli` wrappers on its last line.
# An existing node wins if it is new enough and has bitcoin-cli beside it: $BITCOIND (with
# $BITCOIN_CLI), or `bitcoind` on PATH; one that is not is ignored with a message. The installed
# version is recorded in $BLKINDEX_NODE_DIR/VERSION.
#
# Environment: BLKINDEX_NODE_DIR (default ~/.cache/blkindex/node).
set -euo pipefail

log() { echo "install-node: $*" >&2; }

# The oldest node the indexer and the tests work with: 28.0 obfuscates blk files with xor.dat and
# gives submitpackage the shape the tests use.
MIN_MAJOR=28

# "Bitcoin Knots daemon version v29.4.3.knots20260508" or "Bitcoin Core version v28.1.0" -> 29 / 28.
major_of() { "$1" --version 2>/dev/null | head -n1 | sed -n 's/.* v\{0,1\}\([0-9][0-9]*\)\.[0-9].*/\1/p'; }

# Is $1 (a bitcoind) usable: it runs, is new enough, and has a bitcoin-cli ($2)? Says why not.
usable() {
    local bitcoind=$1 cli=$2 major
    major=$(major_of "$bitcoind")
    if [ -z "$major" ]; then log "ignoring $bitcoind: \`--version\` printed no version"; return 1; fi
    if [ "$major" -lt "$MIN_MAJOR" ]; then
        log "ignoring $bitcoind: version $major is older than the $MIN_MAJOR.0 blkindex needs"
        return 1
    fi
    if [ ! -x "$cli" ]; then log "ignoring $bitcoind: no bitcoin-cli beside it ($cli)"; return 1; fi
    return 0
}

wrapper_dir_for() { # $1 = path of an existing bitcoind, $2 = its bitcoin-cli
    local out="${BLKINDEX_NODE_DIR:-$HOME/.cache/blkindex/node}/external-bin"
    mkdir -p "$out"
    ln -sf "$1" "$out/bitcoind"
    ln -sf "$2" "$out/bitcoin-cli"
    echo "$out"
}

if [ -n "${BITCOIND:-}" ]; then
    cli=${BITCOIN_CLI:-$(dirname "$BITCOIND")/bitcoin-cli}
    usable "$BITCOIND" "$cli" || { log "BITCOIND=$BITCOIND cannot be used"; exit 1; }
    log "using BITCOIND=$BITCOIND: $("$BITCOIND" --version | head -n1)"
    wrapper_dir_for "$BITCOIND" "$cli"
    exit 0
fi
if command -v bitcoind >/dev/null 2>&1; then
    found=$(command -v bitcoind)
    cli=${BITCOIN_CLI:-$(dirname "$found")/bitcoin-cli}
    if usable "$found" "$cli"; then
        log "using bitcoind on PATH: $found: $("$found" --version | head -n1)"
        wrapper_dir_for "$found" "$cli"
        exit 0
    fi
    log "installing Bitcoin Knots instead"
fi

DIR="${BLKINDEX_NODE_DIR:-$HOME/.cache/blkindex/node}"
BIN="$DIR/bin"
if [ -f "$DIR/VERSION" ] && [ -x "$BIN/bitcoind" ] && usable "$BIN/bitcoind" "$BIN/bitcoin-cli"; then
    log "cached: $(head -n1 "$DIR/VERSION")"
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
    # The dpkg lock may be held by unattended upgrades on a first boot: wait for it.
    for i in $(seq 1 90); do
        apt-get -o DPkg::Lock::Timeout=20 update -qq >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=20 install -y -qq \
                --no-install-recommends "${missing[@]}" >&2 && break
        [ "$i" = 90 ] && { log "apt-get failed 90 times"; exit 1; }
        log "apt-get failed (a lock held by another apt?), retrying in 10 s"
        sleep 10
    done
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

rm -rf "$DIR/root" "$DIR/VERSION"
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
usable "$BIN/bitcoind" "$BIN/bitcoin-cli" || { log "the unpacked node does not run"; exit 1; }
# Written last: its presence means the node above is complete and runs.
{
    "$BIN/bitcoind" --version | head -n1
    echo "package: bitcoin-knots $(dpkg-deb -f "$DIR"/debs/bitcoin-knots_*.deb Version) (Debian sid)"
} >"$DIR/VERSION.tmp"
mv "$DIR/VERSION.tmp" "$DIR/VERSION"
log "installed: $(tr '\n' ' ' <"$DIR/VERSION")"
echo "$BIN"
