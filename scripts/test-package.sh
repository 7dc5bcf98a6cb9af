#!/usr/bin/env bash
# Builds the Debian package from the release binaries `cargo test --release` built, installs it,
# checks its units, starts both binaries with the units' command lines (their ExecStart lines and
# the installed default configs; regtest settings given through BLKINDEX_* variables, which win
# over the config files; the server with the index mounted read-only, as ReadOnlyPaths= has it)
# against a real regtest node, waits for each one's sd_notify READY=1, asks the server something,
# stops both with SIGTERM within the units' stated times, and purges the package. There is no
# systemd here to run the units themselves (their users and sandboxing): `systemd-analyze verify`
# checks them. Needs root (dpkg, mount). Prints "package: N passed, N failed".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
[ "$(id -u)" = 0 ] || { echo "test-package: needs root (dpkg -i)" >&2; exit 1; }

passed=0 failed=0
ok() { echo "package: ok   $*"; passed=$((passed + 1)); }
bad() { echo "package: FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

work=$(mktemp -d)
cleanup() {
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
    [ -n "${indexer_pid:-}" ] && kill "$indexer_pid" 2>/dev/null
    [ -n "${notify_pid:-}" ] && kill "$notify_pid" 2>/dev/null
    "$here/regtest.sh" stop "$work/node" 2>/dev/null || true
    dpkg --purge blkindex >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo deb -p blkindex-server --no-build --quiet --output "$work/" >/dev/null)
deb=$(ls "$work"/blkindex_*.deb)
echo "package: built $(basename "$deb")"
dpkg -i "$deb" >"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out"; exit 1; }

unitdir=/usr/lib/systemd/system
[ -f "$unitdir/blkindex-server.service" ] || unitdir=/lib/systemd/system
for f in /usr/bin/blkindex-indexer /usr/bin/blkindex-server /usr/bin/blkindex-admin; do check "installed $f" test -x "$f"; done
for f in /etc/blkindex/indexer.toml /etc/blkindex/server.toml "$unitdir/blkindex-indexer.service" \
    "$unitdir/blkindex-server.service"; do
    check "installed $f" test -f "$f"
done
check "config files are conffiles" grep -q /etc/blkindex/server.toml /var/lib/dpkg/info/blkindex.conffiles
# Unknown keys and bad values are only warnings to systemd: any output at all fails the check.
verify=$(systemd-analyze verify "$unitdir/blkindex-indexer.service" "$unitdir/blkindex-server.service" 2>&1) || true
check "units pass systemd-analyze verify without a warning${verify:+: $verify}" test -z "$verify"
version=$(dpkg-query -W -f='${Version}' blkindex)
version=${version%-*} # the upstream part, without the Debian revision
check "--version of both binaries is the package's $version" \
    test "$(/usr/bin/blkindex-server --version) $(/usr/bin/blkindex-indexer --version)" = \
    "blkindex-server $version blkindex-indexer $version"

check "--help groups the flags" bash -c "/usr/bin/blkindex-server --help | grep -qx 'Listeners:' &&
    /usr/bin/blkindex-server --help | grep -qx 'Administration:' && /usr/bin/blkindex-indexer --help | grep -qx 'Bulk pass:'"

# A regtest node with a short chain.
"$here/regtest.sh" start "$work/node" >/dev/null
# shellcheck disable=SC1091
. "$work/node/node.env"
"$here/regtest.sh" cli "$work/node" generatetoaddress 110 bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080 >/dev/null

# sd_notify's socket: a datagram listener that appends each message to a file.
python3 - "$work/notify.sock" "$work/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        out.write(s.recv(4096).decode().replace("\n", " ") + "\n")
PY
notify_pid=$!
for _ in $(seq 50); do [ -S "$work/notify.sock" ] && break; sleep 0.1; done

exec_start() { sed -n 's/^ExecStart=//p' "$unitdir/$1.service"; }
# Waits up to $3 seconds for a notification matching $2 from pid $1; says whether it came.
wait_notice() {
    for _ in $(seq $(($3 * 10))); do
        grep -q "$2" "$work/notify.log" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# Sends SIGTERM to $1 and says whether it exited 0 within $2 seconds.
stops_within() {
    local pid=$1 limit=$2 start rc
    start=$(date +%s)
    kill -TERM "$pid"
    rc=0
    timeout "$limit" tail --pid="$pid" -f /dev/null || return 1
    wait "$pid" || rc=$?
    echo "package: pid $pid stopped in $(($(date +%s) - start)) s, exit $rc"
    [ "$rc" = 0 ]
}

export BLKINDEX_NETWORK=regtest BLKINDEX_DATADIR="$work/node" BLKINDEX_DB="$work/db" \
    BLKINDEX_DAEMON_RPC_ADDR="$RPC_ADDR" BLKINDEX_LOG=info
# shellcheck disable=SC2046
NOTIFY_SOCKET="$work/notify.sock" $(exec_start blkindex-indexer) >"$work/indexer.log" 2>&1 &
indexer_pid=$!
check "indexer (as its unit starts it) notifies READY=1" wait_notice "$indexer_pid" READY=1 60
# READY=1 comes once its index is open; the bulk pass follows, then its status says "following".
check "indexer's status goes from its bulk pass to following" \
    wait_notice "$indexer_pid" "STATUS=following the node from height 110" 120
check "indexer's status showed the bulk pass" grep -q "STATUS=bulk pass: indexing" "$work/notify.log"
: >"$work/notify.log"

# The server sees the index read-only, as its unit's ReadOnlyPaths= makes it: in a mount namespace
# of its own, the DB directory bind-mounted read-only (a write there is checked to fail first).
readonly_db() {
    local db=$1
    shift
    exec unshare -m --propagation private sh -c '
        db=$1; shift
        mount --bind "$db" "$db" && mount -o remount,bind,ro "$db" || exit 97
        if touch "$db/write-test" 2>/dev/null; then echo "the index is writable" >&2; exit 98; fi
        exec "$@"' sh "$db" "$@"
}
# shellcheck disable=SC2046
NOTIFY_SOCKET="$work/notify.sock" BLKINDEX_SECONDARY_DIR="$work/secondary" BLKINDEX_ELECTRUM_ADDR=127.0.0.1:0 \
    readonly_db "$work/db" $(exec_start blkindex-server) 2>"$work/server.log" &
server_pid=$!
check "server (as its unit starts it, the index read-only) notifies READY=1" wait_notice "$server_pid" READY=1 60
addr=$(sed -n 's/.*serving Electrum over TCP.*addr=\([0-9.:]*\).*/\1/p' "$work/server.log" | head -n1)
height=$(python3 - "$addr" <<'PY' || true
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
f = socket.create_connection((host, int(port)), timeout=10).makefile("rw")
f.write(json.dumps({"id": 1, "method": "blockchain.headers.subscribe", "params": []}) + "\n"); f.flush()
print(json.loads(f.readline())["result"]["height"])
PY
)
check "the installed server answers with the node's tip (110, got ${height:-nothing})" test "${height:-}" = 110

stop_limit() { sed -n 's/^TimeoutStopSec=//p' "$unitdir/$1.service"; }
check "server exits 0 on SIGTERM within its TimeoutStopSec ($(stop_limit blkindex-server) s)" \
    stops_within "$server_pid" "$(stop_limit blkindex-server)"
server_pid=
check "indexer exits 0 on SIGTERM within its TimeoutStopSec ($(stop_limit blkindex-indexer) s)" \
    stops_within "$indexer_pid" "$(stop_limit blkindex-indexer)"
indexer_pid=

dpkg --purge blkindex >/dev/null
check "purged: no binaries or configs left" bash -c '! test -e /usr/bin/blkindex-server && ! test -e /etc/blkindex/server.toml'

if [ "$failed" -gt 0 ]; then
    echo "--- indexer log"; tail -n 20 "$work/indexer.log" 2>/dev/null || true
    echo "--- server log"; tail -n 20 "$work/server.log" 2>/dev/null || true
fi
echo "package: $passed passed, $failed failed"
[ "$failed" = 0 ]
