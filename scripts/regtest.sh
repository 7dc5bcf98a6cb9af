#!/usr/bin/env bash
# Starts and stops regtest bitcoind nodes on 127.0.0.1 with free ports, cookie auth and ZMQ.
#
#   scripts/regtest.sh start DATADIR [bitcoind args...]   # writes DATADIR/node.env, prints it
#   scripts/regtest.sh stop DATADIR
#   scripts/regtest.sh cli DATADIR RPC [args...]
#
# node.env holds RPC_PORT, P2P_PORT, ZMQ_PORT, RPC_ADDR, COOKIE, BIN for other scripts to source.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cmd=${1:?usage: regtest.sh start|stop|cli DATADIR ...}
dir=${2:?usage: regtest.sh start|stop|cli DATADIR ...}
shift 2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case "$cmd" in
start)
    if [ -f "$dir/bitcoind.pid" ] && kill -0 "$(cat "$dir/bitcoind.pid")" 2>/dev/null; then
        echo "a node is already running on $dir (pid $(cat "$dir/bitcoind.pid")): stop it first" >&2
        exit 1
    fi
    bin=$("$here/install-node.sh" | tail -n1)
    rpc=$(free_port); p2p=$(free_port); zmq=$(free_port)
    cat >"$dir/node.env" <<ENV
BIN=$bin
RPC_PORT=$rpc
P2P_PORT=$p2p
ZMQ_PORT=$zmq
RPC_ADDR=127.0.0.1:$rpc
COOKIE=$dir/regtest/.cookie
DATADIR=$dir
ENV
    "$bin/bitcoind" -regtest -datadir="$dir" -daemon=0 -server=1 -rest=1 -txindex=0 \
        -rpcport="$rpc" -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 \
        -port="$p2p" -bind="127.0.0.1:$p2p" -listen=1 -listenonion=0 -dnsseed=0 -fixedseeds=0 \
        -zmqpubhashblock="tcp://127.0.0.1:$zmq" -zmqpubsequence="tcp://127.0.0.1:$zmq" \
        -fallbackfee=0.0002 -acceptnonstdtxn=1 -printtoconsole=0 "$@" \
        >"$dir/bitcoind.out" 2>&1 &
    echo $! >"$dir/bitcoind.pid"
    for _ in $(seq 1 300); do
        if "$bin/bitcoin-cli" -regtest -datadir="$dir" -rpcport="$rpc" getblockchaininfo >/dev/null 2>&1; then
            cat "$dir/node.env"
            exit 0
        fi
        kill -0 "$(cat "$dir/bitcoind.pid")" 2>/dev/null || { cat "$dir/bitcoind.out" >&2; echo "bitcoind exited" >&2; exit 1; }
        sleep 0.2
    done
    echo "bitcoind did not answer in 60 s" >&2
    exit 1
    ;;
stop)
    [ -f "$dir/node.env" ] || exit 0
    # shellcheck disable=SC1091
    . "$dir/node.env"
    "$BIN/bitcoin-cli" -regtest -datadir="$dir" -rpcport="$RPC_PORT" stop >/dev/null 2>&1 || true
    pid=$(cat "$dir/bitcoind.pid" 2>/dev/null || echo)
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true # in case the RPC stop did not reach it
        for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/bitcoind.pid"
    ;;
cli)
    # shellcheck disable=SC1091
    . "$dir/node.env"
    exec "$BIN/bitcoin-cli" -regtest -datadir="$dir" -rpcport="$RPC_PORT" "$@"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
