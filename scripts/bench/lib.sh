# Helpers the bench scripts share; sourced (`. "$here/bench/lib.sh"`), not run.

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
