//! Every protocol version from 1.0 to 1.7 against a real node and indexer: the methods each
//! version has (and not the ones it lacks), their shapes, their answers compared with the node's
//! own data, and the notifications of the old (numblocks, address) and new (outpoint) kinds.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use bitcoin::hashes::Hash;
use bitcoin::{Address, Network, OutPoint};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;
use blkindex_testkit::expect::{expected, Expected};
use blkindex_testkit::Node;

use crate::common::{header_dict, req, rich_setup};

/// A connection that keeps reading: replies by id, and notifications as they come.
struct Conn {
    write: TcpStream,
    read: BufReader<TcpStream>,
    next_id: u32,
    notifications: Vec<Value>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { write: s.try_clone().unwrap(), read: BufReader::new(s), next_id: 0, notifications: vec![] }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.read.read_line(&mut line).unwrap() > 0, "the server closed the connection");
        serde_json::from_str(&line).unwrap()
    }

    /// The whole reply (result or error) to one request.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        writeln!(self.write, "{}", req(id, method, params)).unwrap();
        loop {
            let msg = self.line();
            if msg["id"] == json!(id) {
                return msg;
            }
            assert!(msg.get("method").is_some(), "unexpected {msg}");
            self.notifications.push(msg);
        }
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params.clone());
        assert!(r.get("error").is_none_or(Value::is_null), "{method}{params}: {r}");
        r["result"].clone()
    }

    fn error_code(&mut self, method: &str, params: Value) -> i64 {
        let r = self.call(method, params.clone());
        r["error"]["code"].as_i64().unwrap_or_else(|| panic!("{method}{params} should fail: {r}"))
    }

    /// Waits for a notification of `method` that `pred` accepts.
    fn notification(&mut self, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) =
                self.notifications.iter().position(|n| n["method"] == method && pred(&n["params"]))
            {
                return self.notifications.remove(i)["params"].clone();
            }
            assert!(Instant::now() < deadline, "no {method} notification; got {:?}", self.notifications);
            let msg = self.line();
            self.notifications.push(msg);
        }
    }
}

fn raw_header(node: &Node, height: u64) -> Result<String> {
    let hash = node.call("getblockhash", json!([height]))?;
    Ok(node.call("getblockheader", json!([hash, false]))?.as_str().unwrap().to_string())
}

/// Scripts with an address form and some history, with their expected history as JSON.
fn addressed_scripts(want: &Expected) -> Vec<(Address, ScriptHash, Value)> {
    let mut out: Vec<_> = want
        .history
        .iter()
        .filter_map(|(sh, history)| {
            let script = bitcoin::Script::from_bytes(&want.scripts[sh]);
            let address = Address::from_script(script, Network::Regtest).ok()?;
            let h: Vec<Value> = history
                .iter()
                .map(|(t, height)| json!({"tx_hash": t.to_string(), "height": height}))
                .collect();
            Some((address, *sh, json!(h)))
        })
        .collect();
    out.sort_by_key(|(a, ..)| a.to_string());
    out.truncate(12);
    out
}

fn unspent_json(want: &Expected, sh: &ScriptHash) -> Vec<Value> {
    let mut u: Vec<Value> = want
        .utxos
        .get(sh)
        .into_iter()
        .flatten()
        .map(|(op, (value, height))| {
            json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": height, "value": value})
        })
        .collect();
    u.sort_by_key(|v| v.to_string());
    u
}

fn sorted(v: &Value) -> Vec<Value> {
    let mut v = v.as_array().unwrap().clone();
    v.sort_by_key(|v| v.to_string());
    v
}

#[test]
fn protocol_1_0_to_1_3_serve_the_old_methods() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;
    let tip = node.height()?;
    let scripts = addressed_scripts(&want);
    assert!(scripts.len() >= 5, "the chain has addressed scripts");

    // 1.0: a bare version string, numblocks, deserialized headers, chunks, addresses.
    let mut c = Conn::open(&server.addr);
    let version = c.result("server.version", json!(["old", "1.0"]));
    assert!(version.as_str().unwrap().starts_with("blkindex"), "1.0 answers a bare string: {version}");
    assert_eq!(c.result("blockchain.numblocks.subscribe", json!([])), json!(tip));
    assert_eq!(c.result("blockchain.headers.subscribe", json!([])), header_dict(&node, tip)?);
    assert_eq!(c.result("blockchain.block.get_header", json!([5])), header_dict(&node, 5)?);
    let chunk = c.result("blockchain.block.get_chunk", json!([0]));
    let want_chunk: String = (0..=tip.min(2015)).map(|h| raw_header(&node, h).unwrap()).collect();
    assert_eq!(chunk, json!(want_chunk));
    assert_eq!(c.result("blockchain.block.get_chunk", json!([1])), json!(""), "past the tip");
    for (address, sh, history) in &scripts {
        let a = address.to_string();
        assert_eq!(c.result("blockchain.address.get_history", json!([a])), *history, "history of {a}");
        let unspent = unspent_json(&want, sh);
        assert_eq!(sorted(&c.result("blockchain.address.listunspent", json!([a]))), unspent, "utxos of {a}");
        let confirmed: u64 = unspent.iter().map(|u| u["value"].as_u64().unwrap()).sum();
        assert_eq!(
            c.result("blockchain.address.get_balance", json!([a])),
            json!({"confirmed": confirmed, "unconfirmed": 0})
        );
        assert_eq!(c.result("blockchain.address.get_mempool", json!([a])), json!([]));
    }
    // utxo.get_address names the address an output pays, spent or not.
    let (txid, height, ..) = want.txs[want.txs.len() / 2];
    let tx = node.call("getblock", json!([node.call("getblockhash", json!([height]))?, 2]))?["tx"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["txid"] == json!(txid.to_string()))
        .unwrap()
        .clone();
    for (vout, out) in tx["vout"].as_array().unwrap().iter().enumerate() {
        let got = c.result("blockchain.utxo.get_address", json!([txid.to_string(), vout]));
        assert_eq!(got, out["scriptPubKey"].get("address").cloned().unwrap_or(Value::Null));
    }
    // 1.0's transaction.get has an unused height; broadcast errors come back as the result.
    assert_eq!(c.result("blockchain.transaction.get", json!([txid.to_string(), height])), tx["hex"]);
    let rejected = c.result("blockchain.transaction.broadcast", json!(["00"]));
    assert!(rejected.as_str().is_some_and(|s| s.contains("decode")), "{rejected}");
    assert_eq!(c.error_code("blockchain.scripthash.get_history", json!([scripts[0].1.to_string()])), -32601);
    assert_eq!(c.error_code("server.features", json!([])), -32601);
    assert_eq!(c.error_code("blockchain.block.header", json!([1])), -32601);
    // Silent payments come with 1.4 (the oldest version Frigate serves them in that clients use).
    let r = c.call("blockchain.silentpayments.tweaks", json!([0, 1]));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("not in protocol version 1.0"), "{r}");

    // 1.0 notifications: numblocks, deserialized headers, addresses.
    let (address, ..) = &scripts[0];
    let status = c.result("blockchain.address.subscribe", json!([address.to_string()]));
    assert!(status.is_string());
    node.send(address, bitcoin::Amount::from_sat(1_000_000))?;
    let n = c.notification("blockchain.address.subscribe", |p| p[0] == json!(address.to_string()));
    assert_ne!(n[1], status, "a mempool payment changes the status");
    node.mine(1, address)?;
    assert_eq!(c.notification("blockchain.numblocks.subscribe", |_| true), json!([tip + 1]));
    assert_eq!(
        c.notification("blockchain.headers.subscribe", |_| true),
        json!([header_dict(&node, tip + 1)?])
    );
    let tip = tip + 1;

    // 1.1: script hashes and features arrive; numblocks and the height argument are gone.
    let mut c = Conn::open(&server.addr);
    assert_eq!(c.result("server.version", json!(["old", "1.1"]))[1], "1.1");
    let (address, sh, _) = &scripts[1];
    assert_eq!(
        c.result("blockchain.scripthash.get_history", json!([sh.to_string()])),
        c.result("blockchain.address.get_history", json!([address.to_string()]))
    );
    assert_eq!(c.result("server.features", json!([]))["hash_function"], "sha256");
    assert_eq!(c.error_code("blockchain.numblocks.subscribe", json!([])), -32601);
    assert_eq!(c.error_code("blockchain.transaction.get", json!([txid.to_string(), true])), -32602);
    assert_eq!(c.error_code("server.ping", json!([])), -32601);

    // 1.2: `raw` (default false), headers by range, ping; addresses still served.
    let mut c = Conn::open(&server.addr);
    assert_eq!(c.result("server.version", json!(["old", "1.2"]))[1], "1.2");
    assert_eq!(c.result("blockchain.headers.subscribe", json!([])), header_dict(&node, tip)?);
    assert_eq!(c.result("server.ping", json!([])), Value::Null);
    let headers = c.result("blockchain.block.headers", json!([2, 3]));
    let want_hex: String = (2..5).map(|h| raw_header(&node, h).unwrap()).collect();
    assert_eq!(headers, json!({"count": 3, "hex": want_hex, "max": 2016}));
    assert!(c.result("blockchain.address.get_balance", json!([address.to_string()]))["confirmed"].is_u64());
    assert!(c.result("blockchain.transaction.get", json!([txid.to_string(), false])).is_string());
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["old", "1.2"]));
    assert_eq!(
        c.result("blockchain.headers.subscribe", json!([true])),
        json!({"hex": raw_header(&node, tip)?, "height": tip})
    );

    // 1.3: `raw` defaults to true, block.header arrives, addresses are gone.
    let mut c = Conn::open(&server.addr);
    assert_eq!(c.result("server.version", json!(["old", "1.3"]))[1], "1.3");
    assert_eq!(
        c.result("blockchain.headers.subscribe", json!([])),
        json!({"hex": raw_header(&node, tip)?, "height": tip})
    );
    assert_eq!(c.result("blockchain.block.header", json!([3])), json!(raw_header(&node, 3)?));
    assert_eq!(c.result("blockchain.block.get_header", json!([3])), header_dict(&node, 3)?);
    assert_eq!(c.error_code("blockchain.address.get_balance", json!([address.to_string()])), -32601);
    assert_eq!(c.error_code("blockchain.transaction.id_from_pos", json!([1, 0])), -32601);

    // 1.4: the deserialized forms are gone; headers come with checkpoint proofs.
    let mut c = Conn::open(&server.addr);
    assert_eq!(c.result("server.version", json!(["new", "1.4"]))[1], "1.4");
    assert_eq!(c.error_code("blockchain.block.get_header", json!([3])), -32601);
    assert_eq!(c.error_code("blockchain.block.get_chunk", json!([0])), -32601);
    assert_eq!(c.error_code("blockchain.scripthash.unsubscribe", json!([sh.to_string()])), -32601);
    let proof = c.result("blockchain.block.header", json!([3, tip]));
    assert_eq!(proof["header"], json!(raw_header(&node, 3)?));
    check_header_proof(&node, 3, tip, &proof)?;
    let proof = c.result("blockchain.block.headers", json!([tip - 2, 10, tip]));
    assert_eq!(proof["count"], 3);
    check_header_proof(&node, tip, tip, &proof)?;
    Ok(())
}

/// The branch leads from the block hash at `height` to a root over the hashes 0..=cp_height.
fn check_header_proof(node: &Node, height: u64, cp_height: u64, proof: &Value) -> Result<()> {
    let hashes: Vec<[u8; 32]> = (0..=cp_height)
        .map(|h| {
            let hash: bitcoin::BlockHash =
                node.call("getblockhash", json!([h])).unwrap().as_str().unwrap().parse().unwrap();
            hash.to_byte_array()
        })
        .collect();
    let shown = |b: &Value| {
        let mut v = hex::decode(b.as_str().unwrap()).unwrap();
        v.reverse();
        <[u8; 32]>::try_from(v).unwrap()
    };
    let (mut acc, mut pos) = (hashes[height as usize], height as usize);
    for sibling in proof["branch"].as_array().unwrap() {
        let sibling = shown(sibling);
        let mut e = bitcoin::hashes::sha256d::Hash::engine();
        use bitcoin::hashes::HashEngine;
        match pos & 1 {
            0 => (e.input(&acc), e.input(&sibling)),
            _ => (e.input(&sibling), e.input(&acc)),
        };
        acc = bitcoin::hashes::sha256d::Hash::from_engine(e).to_byte_array();
        pos >>= 1;
    }
    assert_eq!(acc, shown(&proof["root"]), "proof of {height} under {cp_height}");
    // And the root is the one over all the hashes (computed independently, level by level).
    let mut level = hashes;
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().unwrap());
        }
        level = level
            .chunks(2)
            .map(|p| bitcoin::hashes::sha256d::Hash::hash(&[p[0], p[1]].concat()).to_byte_array())
            .collect();
    }
    assert_eq!(acc, level[0]);
    Ok(())
}

#[test]
fn verbose_transactions_equal_the_nodes() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;
    // A mempool transaction too.
    let to = node.new_address("bech32m")?;
    let unconfirmed = node.send(&to, bitcoin::Amount::from_sat(50_000))?;
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["t", "1.6"]));
    let mut checked = 0;
    let mut kinds = std::collections::BTreeMap::new(); // output type → descriptor form seen
    for (txid, _, block, _) in &want.txs {
        let mut theirs = node.call("getrawtransaction", json!([txid.to_string(), 1, block.to_string()]))?;
        theirs.as_object_mut().unwrap().remove("in_active_chain");
        let ours = c.result("blockchain.transaction.get", json!([txid.to_string(), true]));
        assert_eq!(ours, theirs, "verbose {txid}");
        checked += 1;
        for out in theirs["vout"].as_array().unwrap() {
            let kind = out["scriptPubKey"]["type"].as_str().unwrap().to_string();
            let desc = out["scriptPubKey"]["desc"].as_str().unwrap();
            kinds.insert(kind, desc[..desc.find('(').unwrap()].to_string());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let r = c.call("blockchain.transaction.get", json!([unconfirmed.to_string(), true]));
        if r["result"].is_object() {
            break r["result"].clone();
        }
        assert!(Instant::now() < deadline, "the server never saw {unconfirmed}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let theirs = node.call("getrawtransaction", json!([unconfirmed.to_string(), 1]))?;
    assert_eq!(ours, theirs, "verbose mempool tx");
    eprintln!("{checked} verbose transactions equal the node's; output types and descriptors: {kinds:?}");
    // Every form of descriptor Core infers was compared.
    for (kind, form) in [
        ("pubkey", "pk"),
        ("multisig", "multi"),
        ("witness_v1_taproot", "rawtr"),
        ("nulldata", "raw"),
        ("nonstandard", "raw"),
    ] {
        assert_eq!(kinds.get(kind).map(String::as_str), Some(form), "{kinds:?}");
    }
    Ok(())
}

#[test]
fn protocol_1_7_serves_scripts_by_scriptpubkey_and_outpoints() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;
    let mut c = Conn::open(&server.addr);
    assert_eq!(c.result("server.version", json!(["t", ["1.4", "1.7"]]))[1], "1.7");
    let features = c.result("server.features", json!([]));
    assert!(features.get("hash_function").is_none(), "1.7 drops hash_function: {features}");
    assert_eq!(features["protocol_max"], "1.7");
    assert_eq!(c.result("server.ping", json!([3, "abcd"])), json!({"data": "000"}));
    assert_eq!(c.error_code("blockchain.relayfee", json!([])), -32601);

    let mut shown = 0;
    for (sh, history) in want.history.iter().take(30) {
        let spk = hex::encode(&want.scripts[sh]);
        assert_eq!(c.error_code("blockchain.scripthash.get_history", json!([sh.to_string()])), -32601);
        let h: Vec<Value> =
            history.iter().map(|(t, height)| json!({"tx_hash": t.to_string(), "height": height})).collect();
        assert_eq!(c.result("blockchain.scriptpubkey.get_history", json!([spk])), json!({ "history": h }));
        let utxos = c.result("blockchain.scriptpubkey.listunspent", json!([spk]));
        assert_eq!(sorted(&utxos["utxos"]), unspent_json(&want, sh));
        assert_eq!(c.result("blockchain.scriptpubkey.get_mempool", json!([spk])), json!({"history": []}));
        shown += 1;
    }
    assert!(shown > 10);

    // Outpoint status: spent, unspent, never existed.
    let (op, (spender, spender_height)) = want.spenders.iter().next().unwrap();
    let funder_height = want.txs.iter().find(|t| t.0 == op.txid).unwrap().1;
    assert_eq!(
        c.result("blockchain.outpoint.get_status", json!([op.txid.to_string(), op.vout, "51"])),
        json!({"funder_height": funder_height, "spender_txhash": spender.to_string(), "spender_height": spender_height})
    );
    let (unspent, (_, height)) = want.utxos.values().flatten().next().unwrap();
    assert_eq!(
        c.result("blockchain.outpoint.get_status", json!([unspent.txid.to_string(), unspent.vout])),
        json!({ "funder_height": height })
    );
    assert_eq!(
        c.result("blockchain.outpoint.get_status", json!([unspent.txid.to_string(), 9999])),
        json!({})
    );
    assert_eq!(
        c.error_code("blockchain.outpoint.get_status", json!([unspent.txid.to_string(), 0, "zz"])),
        -32602
    );

    // Subscribe to one of the wallet's outputs, spend it, mine the spend.
    let coins = node.wallet_call("listunspent", json!([1]))?;
    // One that covers the 0.1 sent and the fee (the wallet also holds small change outputs).
    let coin = coins
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["amount"].as_f64().unwrap() >= 1.0)
        .expect("a coin of at least 1 BTC");
    let op = OutPoint {
        txid: coin["txid"].as_str().unwrap().parse()?,
        vout: coin["vout"].as_u64().unwrap() as u32,
    };
    let funded_at = node.height()? + 1 - coin["confirmations"].as_u64().unwrap();
    let args = json!([op.txid.to_string(), op.vout, coin["scriptPubKey"]]);
    assert_eq!(c.result("blockchain.outpoint.subscribe", args), json!({ "funder_height": funded_at }));
    let to = node.new_address("bech32")?;
    let spend = node.wallet_call(
        "send",
        json!([{to.to_string(): 0.1}, null, "unset", null, {"inputs": [{"txid": op.txid.to_string(), "vout": op.vout}]}]),
    )?;
    let spender = spend["txid"].as_str().unwrap().to_string();
    let n = c.notification("blockchain.outpoint.subscribe", |p| p[2].get("spender_txhash").is_some());
    assert_eq!(
        n,
        json!([op.txid.to_string(), op.vout, {"funder_height": funded_at, "spender_txhash": spender, "spender_height": 0}])
    );
    // mempool.recent lists it with the node's fee and vsize.
    let entry = node.call("getmempoolentry", json!([spender]))?;
    let recent = c.result("mempool.recent", json!([]));
    let mine =
        recent.as_array().unwrap().iter().find(|r| r["txid"] == json!(spender)).expect("in mempool.recent");
    assert_eq!(mine["vsize"], entry["vsize"]);
    assert_eq!(mine["fee"], json!((entry["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64));
    node.mine(1, &to)?;
    let tip = node.height()?;
    let n = c.notification("blockchain.outpoint.subscribe", |p| p[2]["spender_height"] == json!(tip));
    assert_eq!(n[2]["spender_txhash"], json!(spender));
    assert_eq!(
        c.result("blockchain.outpoint.unsubscribe", json!([op.txid.to_string(), op.vout])),
        json!(true)
    );
    assert_eq!(
        c.result("blockchain.outpoint.unsubscribe", json!([op.txid.to_string(), op.vout])),
        json!(false)
    );

    // testmempoolaccept: a signed transaction that was not sent, and a double spend of it.
    let to = node.new_address("bech32")?;
    let unsent = node
        .wallet_call("send", json!([{to.to_string(): 0.2}, null, "unset", null, {"add_to_wallet": false}]))?;
    let hex_tx = unsent["hex"].as_str().unwrap();
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(hex_tx)?;
    let r = c.result("blockchain.transaction.testmempoolaccept", json!([[hex_tx]]));
    assert_eq!(
        r,
        json!([{"txid": tx.compute_txid().to_string(), "wtxid": tx.compute_wtxid().to_string(), "allowed": true}])
    );
    assert_eq!(c.error_code("blockchain.transaction.testmempoolaccept", json!([["0g"]])), -32602);
    let mempool = node.call("getrawmempool", json!([]))?;
    assert!(!mempool.as_array().unwrap().contains(&json!(tx.compute_txid().to_string())), "only tested");

    // A 1.7 script subscription notifies under the scriptpubkey method.
    let spk = hex::encode(to.script_pubkey().as_bytes());
    assert_eq!(c.result("blockchain.scriptpubkey.subscribe", json!([spk])), Value::Null);
    node.call("sendrawtransaction", json!([hex_tx]))?;
    let sh = ScriptHash::of(to.script_pubkey().as_bytes());
    let n = c.notification("blockchain.scriptpubkey.subscribe", |p| p[0] == json!(sh.to_string()));
    assert!(n[1].is_string());
    assert_eq!(c.result("blockchain.scriptpubkey.unsubscribe", json!([spk])), json!(true));
    Ok(())
}
