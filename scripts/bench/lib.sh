# Helpers the bench scripts share; sourced (`. "$here/bench/lib.sh"`), not run.

bench_scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Starts a regtest node in data directory $1 (more arguments go to bitcoind), loads its node.env
# (RPC_ADDR, COOKIE, ...) and sets the EXIT trap that kills the processes the script puts in
# `pids`, then stops the node.
start_node() {
    bench_node=$1
    "$bench_scripts/regtest.sh" start "$@" >/dev/null
    pids=()
    trap stop_node EXIT
    # shellcheck disable=SC1091
    . "$bench_node/node.env"
}

stop_node() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$bench_scripts/regtest.sh" stop "$bench_node"
}

# A free TCP port on 127.0.0.1, picked by the OS.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until the Electrum server at $1 (host:port) answers with tip height $2 (it may be
# syncing first), for at most $5 seconds. $3 is its log, shown if its process $4 exits first.
wait_ready() {
    local addr=$1 tip=$2 log=$3 pid=$4 deadline=$((SECONDS + $5)) who
    who=$(basename "$0" .sh)
    until python3 - "$addr" "$tip" <<'PY' 2>/dev/null; do
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
f = s.makefile("rw")
f.write(json.dumps({"id": 0, "method": "server.version", "params": ["bench", "1.4"]}) + "\n")
f.write(json.dumps({"id": 1, "method": "blockchain.headers.subscribe", "params": []}) + "\n"); f.flush()
f.readline()
sys.exit(0 if json.loads(f.readline())["result"]["height"] == int(sys.argv[2]) else 1)
PY
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; echo "$who: $addr exited" >&2; exit 1; }
        [ $SECONDS -lt $deadline ] || { echo "$who: $addr not ready in $5 s" >&2; exit 1; }
        sleep 1
    done
}
