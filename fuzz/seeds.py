#!/usr/bin/env python3
"""Seed inputs for the fuzz targets, written to fuzz/corpus/<target>/seed-*: small valid examples
of each format, so the fuzzer starts from real structure (it mutates them; `cargo fuzz cmin` keeps
the ones that still add coverage). Run once before a first fuzz run: python3 fuzz/seeds.py [BLOCK]
where BLOCK is an optional raw mainnet block to take transactions from (bitcoin-test-data ships one)."""
import hashlib, json, os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def cs(n):  # CompactSize
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def read_cs(b, i):
    c = b[i]
    if c < 0xFD:
        return c, i + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[c]
    return int.from_bytes(b[i + 1 : i + 1 + size], "little"), i + 1 + size


def tx_end(b, i):
    """Offset past the transaction at i."""
    start = i
    i += 4
    n_in, j = read_cs(b, i)
    segwit = n_in == 0
    if segwit:
        i = j + 1
        n_in, j = read_cs(b, i)
    i = j
    for _ in range(n_in):
        i += 36
        l, i = read_cs(b, i)
        i += l + 4
    n_out, i = read_cs(b, i)
    for _ in range(n_out):
        i += 8
        l, i = read_cs(b, i)
        i += l
    if segwit:
        for _ in range(n_in):
            items, i = read_cs(b, i)
            for _ in range(items):
                l, i = read_cs(b, i)
                i += l
    return i + 4


def leb(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def core_varint(n):
    tmp = []
    while True:
        tmp.append((n & 0x7F) | (0x80 if tmp else 0))
        if n <= 0x7F:
            break
        n = (n >> 7) - 1
    return bytes(reversed(tmp))


def txnum_list(nums):
    out, last = b"", None
    for n in nums:
        out += leb(n if last is None else n - last)
        last = n
    return out


def bucket(entries):
    out = b""
    for rest, nums in entries:
        lst = txnum_list(nums)
        out += rest + leb(len(lst)) + lst
    return out


GENESIS = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e"
    "67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c01010000000100000000000000000000"
    "00000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f"
    "4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f75742066"
    "6f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a6"
    "7962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)
REGTEST_MAGIC = bytes.fromhex("fabfb5da")

# block: the genesis block, its coinbase alone, and blocks of a real block's first transactions.
put("block", "genesis", GENESIS)
put("block", "genesis-coinbase", GENESIS[81:])
txs = []
if len(sys.argv) > 1:
    raw = open(sys.argv[1], "rb").read()
    n, i = read_cs(raw, 80)
    for _ in range(min(n, 40)):
        j = tx_end(raw, i)
        txs.append(raw[i:j])
        i = j
    small = [t for t in txs if len(t) < 2000]
    for k, t in enumerate(small[:8]):
        put("block", f"tx-{k}", t)
    for k in (1, 2, 5):
        put("block", f"block-{k}tx", raw[:80] + cs(k) + b"".join(small[:k]))

# blk_framing: records of a blk and a rev file, plain and obfuscated (mode byte, key, file).
rec = REGTEST_MAGIC + struct.pack("<I", len(GENESIS)) + GENESIS
put("blk_framing", "blk", b"\x00" + rec + b"\x00" * 16 + rec)
undo_payload = cs(1) + cs(1) + core_varint(2 * 5) + core_varint(0) + core_varint(9) + core_varint(0) + bytes(20)
rev = REGTEST_MAGIC + struct.pack("<I", len(undo_payload)) + undo_payload + bytes(32)
put("blk_framing", "rev", b"\x01" + rev + rev)
key = bytes.fromhex("0123456789abcdef")
put("blk_framing", "blk-xor", b"\x02" + key + bytes(b ^ key[i % 8] for i, b in enumerate(rec + rec)))
put("blk_framing", "garbage-then-record", b"\x00" + b"\x17" * 13 + REGTEST_MAGIC + rec + rec[:50])

# undo: every script compression (P2PKH, P2SH, P2PK even/odd, uncompressed P2PK both parities,
# raw), coinbase and not, over two transactions.
G = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def coin(height, coinbase, amount_c, script):
    c = core_varint(height * 2 + coinbase)
    if height > 0:
        c += core_varint(0)
    return c + core_varint(amount_c) + script


coins = [
    coin(5, 1, 9, core_varint(0) + bytes(range(20))),
    coin(7, 0, 50, core_varint(1) + bytes(range(20, 40))),
    coin(0, 0, 1, core_varint(2) + G),
    coin(9, 0, 2, core_varint(3) + G),
    coin(11, 0, 3, core_varint(4) + G),
    coin(12, 0, 4, core_varint(5) + G),
    coin(13, 0, 0, core_varint(6 + 3) + b"\x51\x52\x93"),
]
put("undo", "all-types", cs(2) + cs(3) + b"".join(coins[:3]) + cs(4) + b"".join(coins[3:]))
put("undo", "one", cs(1) + cs(1) + coins[0])
put("undo", "empty", cs(0))

# bucket: width byte, truncate-from txnum, a bucket value.
for w in range(5):
    rest_len = 4 - w
    entries = [(bytes([i] * rest_len), [i * 7 + 1, i * 7 + 5, 1000 + i]) for i in range(3)]
    put("bucket", f"w{5 - rest_len}", bytes([w]) + struct.pack(">I", 6) + bucket(entries))

# merge: width byte, split byte, operands as length byte ‖ bytes.
for w, rest_len in ((3, 1), (4, 0)):
    ops = [
        bucket([(bytes([1] * rest_len), [1, 2]), (bytes([3] * rest_len), [4])]),
        bucket([(bytes([1] * rest_len), [3, 9])]),
        bucket([(bytes([2] * rest_len), [5]), (bytes([3] * rest_len), [2, 4, 6])]),
    ]
    put("merge", f"rest{rest_len}", bytes([w, 1]) + b"".join(bytes([len(o)]) + o for o in ops))

# rpc_line: every method with arguments of its shape, single and batched.
txid = "4a5e1e4baab89f3a32518a88c31bb86f4f2ad5e7ad2af8e3ec1e1ee4d3b0b2b1"
sh = hashlib.sha256(b"\x51").digest()[::-1].hex()
reqs = {
    "server.version": [["electrum 4.5", "1.4"], ["x", ["1.2", "1.7"]]],
    "server.banner": [[]],
    "server.donation_address": [[]],
    "server.peers.subscribe": [[]],
    "server.features": [[]],
    "server.add_peer": [[{"hosts": {}}]],
    "server.ping": [[], [16, "00ff"]],
    "blockchain.numblocks.subscribe": [[]],
    "blockchain.headers.subscribe": [[], [True]],
    "blockchain.block.get_header": [[1]],
    "blockchain.block.get_chunk": [[0]],
    "blockchain.block.header": [[1], [1, 5]],
    "blockchain.block.headers": [[0, 10], [0, 10, 12]],
    "blockchain.estimatefee": [[6], [2, "ECONOMICAL"]],
    "blockchain.relayfee": [[]],
    "blockchain.address.get_history": [["bcrt1qn7d2x7272lznt5hhk9s07q3cqnrqljnwladrd3"], ["1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"]],
    "blockchain.scripthash.get_history": [[sh]],
    "blockchain.scripthash.get_balance": [[sh]],
    "blockchain.scripthash.listunspent": [[sh]],
    "blockchain.scripthash.subscribe": [[sh]],
    "blockchain.scripthash.unsubscribe": [[sh]],
    "blockchain.scriptpubkey.get_history": [["0014" + "00" * 20]],
    "blockchain.transaction.get": [[txid], [txid, True]],
    "blockchain.transaction.get_merkle": [[txid, 1]],
    "blockchain.transaction.id_from_pos": [[1, 0], [1, 0, True]],
    "blockchain.transaction.broadcast": [["0100"]],
    "blockchain.transaction.broadcast_package": [[["00", "01"]]],
    "blockchain.outpoint.subscribe": [[txid, 0], [txid, 1, "51"]],
    "blockchain.outpoint.unsubscribe": [[txid, 0]],
    "mempool.get_fee_histogram": [[]],
    "mempool.get_info": [[]],
    "mempool.recent": [[]],
    "blockchain.address.get_balance": [["mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"]],
    "blockchain.utxo.get_address": [[txid, 0]],
    "blockchain.outpoint.get_status": [[txid, 0]],
    "blockchain.transaction.testmempoolaccept": [[["00"]], [["00"], 0.1]],
}
k = 0
for method, params_list in reqs.items():
    for params in params_list:
        put("rpc_line", f"{k:02}", json.dumps({"jsonrpc": "2.0", "id": k, "method": method, "params": params}))
        k += 1
put("rpc_line", "batch", json.dumps([{"id": 1, "method": "server.version", "params": {"client_name": "x", "protocol_version": "1.4"}}, {"id": 2, "method": "blockchain.block.header", "params": {"height": 3, "cp_height": 9}}]))


# websocket: masked client frames after the handshake: text, binary, ping, fragments, close.
def frame(op, payload, fin=True, mask=b"\x11\x22\x33\x44"):
    head = bytes([(0x80 if fin else 0) | op])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


line = json.dumps({"id": 1, "method": "server.ping", "params": []}).encode()
put("websocket", "text", frame(1, line))
put("websocket", "binary-ping-close", frame(2, line) + frame(9, b"hi") + frame(8, b"\x03\xe8"))
put("websocket", "fragments", frame(1, line[:5], fin=False) + frame(0, line[5:]))
put("websocket", "long", frame(1, b"a" * 300) + frame(1, b"b" * 5000))
