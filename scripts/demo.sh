#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install Bitcoin Knots, make a regtest chain through
# it, bulk-index the node's blk files with the progress bar, print what the index holds, then
# start the Electrum server on it and ask it something.
#
# Environment: DEMO_DIR (default ~/.cache/blkindex/demo), DEMO_CHAIN_MB (default 200), DEMO_ADDR
# (the server's listen address; default 127.0.0.1:0, a free port).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blkindex/target}
DEMO_DIR=${DEMO_DIR:-$HOME/.cache/blkindex/demo}
MB=${DEMO_CHAIN_MB:-200}

"$here/install-deps.sh"
echo "== installing the node" >&2
"$here/install-node.sh" >/dev/null
echo "== building blkindex (the first build compiles RocksDB: ~10 minutes on 2 cores)" >&2
(cd "$root" && cargo build --release -q --workspace --bins)
bin=$CARGO_TARGET_DIR/release

chain=$DEMO_DIR/node
# A node left running by an earlier, interrupted demo (bitcoind in the background of a script
# does not get the terminal's Ctrl-C) is stopped before its data directory is touched.
"$here/regtest.sh" stop "$chain"
trap '"$here/regtest.sh" stop "$chain"' EXIT
if [ ! -f "$chain/complete" ] || [ "$(sed -n 's/^target-mb //p' "$chain/complete")" != "$MB" ]; then
    echo "== making a ${MB} MB regtest chain through the node" >&2
    rm -rf "$chain"
    "$here/regtest.sh" start "$chain" >/dev/null
    # shellcheck disable=SC1091
    . "$chain/node.env"
    "$bin/gen-chain" --rpc-addr "$RPC_ADDR" --cookie "$COOKIE" --target-mb "$MB" >"$chain/gen-chain.out"
    "$here/regtest.sh" stop "$chain"
    # Written only now that the chain is whole: an interrupted run leaves no marker and starts
    # over; the size asked for is in it, so asking for another size makes a new chain.
    echo "target-mb $MB" >>"$chain/gen-chain.out"
    mv "$chain/gen-chain.out" "$chain/complete"
fi
# The node is stopped here: the bulk pass takes its data-directory lock and memory-maps the blk
# files (beside a running node it would read them with positional reads).
echo "== bulk indexing $(du -sh "$chain/regtest/blocks" | cut -f1) of blocks into $DEMO_DIR/db (node stopped)" >&2
rm -rf "$DEMO_DIR/db"
"$bin/blkindex-indexer" --network regtest --datadir "$chain" --db "$DEMO_DIR/db" --offline --no-follow
"$here/regtest.sh" start "$chain" >/dev/null
# shellcheck disable=SC1091
. "$chain/node.env"
echo
echo "== what the index holds"
"$bin/index-stats" "$DEMO_DIR/db" "$(cat "$chain"/regtest/blocks/blk*.dat | wc -c)"

echo
echo "== serving Electrum and asking it something"
# Port 0: the system picks a free port, and the server logs the one it bound.
"$bin/blkindex-server" --network regtest --datadir "$chain" --db "$DEMO_DIR/db" --daemon-rpc-addr "$RPC_ADDR" \
    --electrum-addr "${DEMO_ADDR:-127.0.0.1:0}" 2>"$DEMO_DIR/server.log" &
server=$!
trap 'kill $server 2>/dev/null; "$here/regtest.sh" stop "$chain"' EXIT
addr=
for _ in $(seq 1 300); do
    addr=$(sed -n 's/.*serving Electrum over TCP.*addr=\([0-9.:]*\).*/\1/p' "$DEMO_DIR/server.log" | head -n1)
    [ -n "$addr" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "demo: the server exited before listening; its log ($DEMO_DIR/server.log) ends:" >&2
        tail -n 20 "$DEMO_DIR/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$addr" ] || { echo "demo: the server did not listen within 30 s; see $DEMO_DIR/server.log" >&2; exit 1; }
echo "(the server listens on $addr)"
python3 - "$addr" <<'PY'
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=30)
f = s.makefile("rw")
def ask(method, *params):
    f.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) + "\n"); f.flush()
    reply = json.loads(f.readline())
    print(f"> {method} {list(params)}\n< {json.dumps(reply.get('result', reply.get('error')))[:300]}")
    return reply.get("result")
ask("server.version", "demo", ["1.4", "1.6"])
tip = ask("blockchain.headers.subscribe")
txid = ask("blockchain.transaction.id_from_pos", tip["height"], 1)
raw = ask("blockchain.transaction.get", txid)
# The first output's script → its script hash → balance and history.
import hashlib
tx = bytes.fromhex(raw)
# Parse just enough of the transaction to find its first output script.
def varint(b, i):
    x = b[i]
    if x < 0xfd: return x, i + 1
    n = {0xfd: 2, 0xfe: 4, 0xff: 8}[x]
    return int.from_bytes(b[i + 1:i + 1 + n], "little"), i + 1 + n
i = 4 + (2 if tx[4] == 0 else 0)
n, i = varint(tx, i)
for _ in range(n):
    i += 36; l, i = varint(tx, i); i += l + 4
n, i = varint(tx, i)
i += 8; l, i = varint(tx, i)
script = tx[i:i + l]
sh = hashlib.sha256(script).digest()[::-1].hex()
ask("blockchain.scripthash.get_balance", sh)
history = ask("blockchain.scripthash.get_history", sh)
print(f"script {script.hex()} has {len(history)} confirmed transactions")
PY