//! Every method of every protocol version, 1.0 to 1.7: each one called over a real socket in each
//! version that has it, against a real node and indexer, and its answer compared with what the
//! node says (headers, transactions, merkle proofs, scripts, outpoints, fees, the mempool,
//! broadcasts) or with the server's own flags (banner, donation address, peers). The walk fails
//! if a method of the table has no check or was not called in one of its versions.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bitcoin::hashes::{sha256d, Hash, HashEngine};
use bitcoin::key::{CompressedPublicKey, PrivateKey};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};
use serde_json::{json, Value};

use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::expect::{expected, Expected};
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{header_dict, indexed, status_of, Conn, Server};

use blkindex_server::protocol::{available, version_string, Version, METHODS, VERSIONS};
use blkindex_shared::ScriptHash;

fn sats(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1e8).round() as u64
}

/// A hash as the protocol shows it (byte-reversed hex) back to its bytes.
fn shown(v: &Value) -> [u8; 32] {
    let mut b = hex::decode(v.as_str().unwrap()).unwrap();
    b.reverse();
    b.try_into().unwrap()
}

/// The root a merkle branch (hashes as shown) leads to from `leaf` at `pos`.
fn climb(leaf: [u8; 32], mut pos: usize, branch: &Value) -> [u8; 32] {
    let mut acc = leaf;
    for sibling in branch.as_array().expect("a branch") {
        let sibling = shown(sibling);
        let mut e = sha256d::Hash::engine();
        match pos & 1 {
            0 => (e.input(&acc), e.input(&sibling)),
            _ => (e.input(&sibling), e.input(&acc)),
        };
        acc = sha256d::Hash::from_engine(e).to_byte_array();
        pos >>= 1;
    }
    acc
}

/// A key the node's wallet does not hold: its outputs stay where the test put them.
fn outside_address(seed: u8) -> Address {
    let secp = Secp256k1::new();
    let key = PrivateKey::new(SecretKey::from_slice(&[seed; 32]).unwrap(), Network::Regtest);
    Address::p2wpkh(&CompressedPublicKey::from_private_key(&secp, &key).unwrap(), Network::Regtest)
}

/// What the node says a script's answers are.
struct ScriptWant {
    address: Address,
    sh: ScriptHash,
    /// (txid, Electrum height, fee if unconfirmed), confirmed in chain order, then unconfirmed.
    history: Vec<(Txid, i64, Option<u64>)>,
    /// Unspent outputs as the protocol shows them, sorted by their text.
    utxos: Vec<Value>,
    confirmed: u64,
    unconfirmed: i64,
}

impl ScriptWant {
    fn entries(&self, mempool_only: bool) -> Value {
        self.history
            .iter()
            .filter(|(_, h, _)| !mempool_only || *h <= 0)
            .map(|(t, h, fee)| match fee {
                Some(fee) => json!({"tx_hash": t.to_string(), "height": h, "fee": fee}),
                None => json!({"tx_hash": t.to_string(), "height": h}),
            })
            .collect()
    }

    fn status(&self) -> Option<String> {
        status_of(&self.history.iter().map(|(t, h, _)| (*t, *h)).collect::<Vec<_>>())
    }

    /// The script's argument as `family` names it.
    fn arg(&self, family: &str) -> Value {
        match family {
            "blockchain.address" => json!(self.address.to_string()),
            "blockchain.scripthash" => json!(self.sh.to_string()),
            "blockchain.scriptpubkey" => json!(hex::encode(self.address.script_pubkey().as_bytes())),
            other => panic!("no script family {other}"),
        }
    }
}

fn utxo_json(op: &OutPoint, height: i64, value: u64) -> Value {
    json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": height, "value": value})
}

fn sorted(v: &Value) -> Vec<Value> {
    let mut v = v.as_array().unwrap_or_else(|| panic!("a list: {v}")).clone();
    v.sort_by_key(|v| v.to_string());
    v
}

/// The Electrum height of a mempool transaction: 0, or -1 with an unconfirmed parent.
fn mempool_height(node: &Node, txid: &Txid) -> Result<i64> {
    let e = node.call("getmempoolentry", json!([txid.to_string()]))?;
    Ok(if e["depends"].as_array().unwrap().is_empty() { 0 } else { -1 })
}

fn mempool_fee(node: &Node, txid: &Txid) -> Result<u64> {
    Ok(sats(&node.call("getmempoolentry", json!([txid.to_string()]))?["fees"]["base"]))
}

/// A signed transaction the wallet made and did not send (its coins locked, so the next one
/// does not spend them again).
fn unsent(node: &Node, btc: f64) -> Result<(String, Transaction)> {
    let to = node.new_address("bech32")?;
    let r = node.wallet_call(
        "send",
        json!([{to.to_string(): btc}, null, "unset", null, {"add_to_wallet": false, "lock_unspents": true}]),
    )?;
    let hex_tx = r["hex"].as_str().context("send's hex")?.to_string();
    let tx = bitcoin::consensus::encode::deserialize_hex(&hex_tx)?;
    Ok((hex_tx, tx))
}

/// A parent and its child, neither sent, as a package.
fn package(node: &Node) -> Result<[(String, Txid); 2]> {
    let (parent_hex, parent) = unsent(node, 1.0)?;
    let (vout, out) =
        parent.output.iter().enumerate().find(|(_, o)| o.value == Amount::from_btc(1.0).unwrap()).unwrap();
    let parent_txid = parent.compute_txid();
    let child_to = node.new_address("bech32")?;
    let unsigned = node.call(
        "createrawtransaction",
        json!([[{"txid": parent_txid.to_string(), "vout": vout}], {child_to.to_string(): 0.999}]),
    )?;
    let prev = json!([{"txid": parent_txid.to_string(), "vout": vout,
        "scriptPubKey": hex::encode(out.script_pubkey.as_bytes()), "amount": 1.0}]);
    let child = node.wallet_call("signrawtransactionwithwallet", json!([unsigned, prev]))?;
    let child_hex = child["hex"].as_str().unwrap().to_string();
    let child_tx: Transaction = bitcoin::consensus::encode::deserialize_hex(&child_hex)?;
    Ok([(parent_hex, parent_txid), (child_hex, child_tx.compute_txid())])
}

/// A transaction of about 78,000 vB paying `fee_rate` sat/vB from one wallet coin to a script
/// the wallet does not hold: two of them are enough for a fee histogram with a bin in it.
fn big_tx(node: &Node, b: &ChainBuilder, fee_rate: u64, to: &Address) -> Result<Txid> {
    let coins = node.wallet_call("listunspent", json!([1]))?;
    let coin = coins
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["amount"].as_f64().unwrap() >= 1.0 && c["spendable"] == json!(true))
        .context("a wallet coin of 1 BTC")?;
    let op = OutPoint {
        txid: coin["txid"].as_str().unwrap().parse()?,
        vout: coin["vout"].as_u64().unwrap() as u32,
    };
    node.wallet_call("lockunspent", json!([false, [{"txid": op.txid.to_string(), "vout": op.vout}]]))?;
    let value = Amount::from_sat(sats(&coin["amount"]));
    let outputs: Vec<(ScriptBuf, Amount)> =
        (0..2500).map(|_| (to.script_pubkey(), Amount::from_sat(1000))).collect();
    // `raw_tx` adds the change output (to the wallet) and a 20,000 sat fee; the fee asked for
    // comes out of the change.
    let mut tx = b.raw_tx(&[(op, value)], &outputs, false)?;
    let vsize = tx.vsize() as u64 + 110; // and the signature
    let change = tx.output.last_mut().unwrap();
    change.value = value - Amount::from_sat(2500 * 1000 + fee_rate * vsize);
    change.script_pubkey = to.script_pubkey();
    let hex_tx = bitcoin::consensus::encode::serialize_hex(&tx);
    let signed = node.wallet_call("signrawtransactionwithwallet", json!([hex_tx]))?;
    anyhow::ensure!(signed["complete"] == json!(true), "could not sign: {signed}");
    let txid = node.call("sendrawtransaction", json!([signed["hex"]]))?;
    Ok(txid.as_str().unwrap().parse()?)
}

/// ElectrumX's compact fee histogram (`mempool.py`, `_compress_histogram`) of the node's mempool:
/// rates floored to 0.1 sat/vB, cumulative vsize in bins from 100,000 vB growing by a tenth.
fn node_histogram(node: &Node) -> Result<Vec<(f64, u64)>> {
    let pool = node.call("getrawmempool", json!([true]))?;
    let mut by_rate: std::collections::BTreeMap<u64, u64> = Default::default();
    for e in pool.as_object().unwrap().values() {
        let (fee, vsize) = (sats(&e["fees"]["base"]), e["vsize"].as_u64().unwrap());
        *by_rate.entry(fee * 10 / vsize).or_default() += vsize;
    }
    let (mut out, mut cum, mut bin, mut prev) = (vec![], 0u64, 100_000f64, None);
    for (&rate, &size) in by_rate.iter().rev() {
        if size as f64 > 2.0 * bin && cum > 0 {
            if let Some(p) = prev {
                out.push((p as f64 / 10.0, cum));
                cum = 0;
                bin *= 1.1;
            }
        }
        cum += size;
        if cum as f64 > bin {
            out.push((rate as f64 / 10.0, cum));
            cum = 0;
            bin *= 1.1;
        }
        prev = Some(rate);
    }
    Ok(out)
}

/// Everything the checks compare with, read from the node before the walk.
struct World<'a> {
    node: &'a Node,
    server_port: u16,
    tip: u64,
    /// Raw headers and block hashes, by height.
    headers: Vec<String>,
    hashes: Vec<[u8; 32]>,
    want: Expected,
    /// A confirmed script with spent and unspent outputs, and one the node's wallet does not
    /// hold, with a confirmed and an unconfirmed payment.
    scripts: [ScriptWant; 2],
    /// Confirmed transactions to ask for: (txid, height, block, position, raw hex).
    sample: Vec<(Txid, u32, BlockHash, u32, String)>,
    /// The unconfirmed payment to `scripts[1]`, and its output to it (which nothing spends).
    mempool_tx: Txid,
    mempool_out: OutPoint,
    /// A transaction with outputs of every kind, with and without an address.
    special_tx: (Txid, BlockHash),
    /// Transactions the walk has broadcast, the last ones last.
    broadcast: Vec<Txid>,
}

const BANNER: &str = "every method, checked";
const PEER: &str = "peer.example t50001 s50002";

/// One session at one version; every request that gets its result is counted as called.
struct Walk<'a> {
    c: Conn,
    v: Version,
    called: &'a mut BTreeSet<(String, Version)>,
}

impl Walk<'_> {
    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.c.result(method, params);
        self.called.insert((method.to_string(), self.v));
        r
    }

    /// Waits until the server's mempool has `txid` (the node's has it already).
    fn wait_seen(&mut self, txid: &Txid) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.c.call("blockchain.transaction.get", json!([txid.to_string()]))["result"].is_string() {
            assert!(Instant::now() < deadline, "the server never saw {txid}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn every_method_of_every_version_answers_as_the_node() -> Result<()> {
    let started = Instant::now();
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let b = ChainBuilder::new(&node)?;
    // A script outside the wallet, paid once in a block and once in the mempool.
    let outside = outside_address(0x11);
    let paid = node.send(&outside, Amount::from_btc(0.3)?)?;
    b.mine(1)?;
    let want = expected(&node)?;
    let tip = node.height()?;
    let place: HashMap<Txid, (u32, BlockHash, u32)> =
        want.txs.iter().map(|(t, h, b, p)| (*t, (*h, *b, *p))).collect();
    let tx_json = |txid: &Txid| -> Result<Value> {
        let (_, block, _) = place[txid];
        node.call("getrawtransaction", json!([txid.to_string(), 1, block.to_string()]))
    };

    // A script of the rich chain with an address, some outputs spent and some not; the wallet
    // is kept from spending the rest while the test runs.
    let mut candidates: Vec<_> = want.history.iter().filter(|(_, h)| h.len() >= 3).collect();
    candidates.sort_by_key(|(sh, _)| **sh);
    let (s1, s1_address) = candidates
        .into_iter()
        .find_map(|(sh, history)| {
            let script = bitcoin::Script::from_bytes(&want.scripts[sh]);
            let address = Address::from_script(script, Network::Regtest).ok()?;
            let unspent = want.utxos.get(sh).map_or(0, |u| u.len());
            let funded: usize = history
                .iter()
                .map(|(t, _)| {
                    let tx = tx_json(t).unwrap();
                    let outs = tx["vout"].as_array().unwrap().clone();
                    outs.iter().filter(|o| o["scriptPubKey"]["hex"] == json!(hex::encode(script))).count()
                })
                .sum();
            (unspent > 0 && funded > unspent).then_some((*sh, address))
        })
        .context("a script with spent and unspent outputs")?;
    let s1_coins = node.wallet_call("listunspent", json!([0, 9999, [s1_address.to_string()]]))?;
    let locks: Vec<Value> =
        s1_coins.as_array().unwrap().iter().map(|c| json!({"txid": c["txid"], "vout": c["vout"]})).collect();
    if !locks.is_empty() {
        node.wallet_call("lockunspent", json!([false, locks]))?;
    }
    let s1_utxos = &want.utxos[&s1];
    let s1_want = ScriptWant {
        address: s1_address,
        sh: s1,
        history: want.history[&s1].iter().map(|(t, h)| (*t, *h as i64, None)).collect(),
        utxos: sorted(&json!(s1_utxos
            .iter()
            .map(|(op, (v, h))| utxo_json(op, *h as i64, *v))
            .collect::<Vec<_>>())),
        confirmed: s1_utxos.values().map(|(v, _)| v).sum(),
        unconfirmed: 0,
    };

    // The outside script's unconfirmed payment, then a mempool big enough for a histogram bin.
    let unconfirmed = node.send(&outside, Amount::from_btc(0.2)?)?;
    let outside_sh = ScriptHash::of(outside.script_pubkey().as_bytes());
    let vout_to = |tx: &Value| -> u32 {
        let outs = tx["vout"].as_array().unwrap();
        outs.iter().position(|o| o["scriptPubKey"]["address"] == json!(outside.to_string())).unwrap() as u32
    };
    let paid_vout = vout_to(&tx_json(&paid)?);
    let unconfirmed_json = node.call("getrawtransaction", json!([unconfirmed.to_string(), 1]))?;
    let unconfirmed_vout = vout_to(&unconfirmed_json);
    let unconfirmed_height = mempool_height(&node, &unconfirmed)?;
    let s2_want = ScriptWant {
        address: outside.clone(),
        sh: outside_sh,
        history: vec![
            (paid, place[&paid].0 as i64, None),
            (unconfirmed, unconfirmed_height, Some(mempool_fee(&node, &unconfirmed)?)),
        ],
        utxos: sorted(&json!([
            utxo_json(&OutPoint { txid: paid, vout: paid_vout }, place[&paid].0 as i64, 30_000_000),
            utxo_json(&OutPoint { txid: unconfirmed, vout: unconfirmed_vout }, 0, 20_000_000),
        ])),
        confirmed: 30_000_000,
        unconfirmed: 20_000_000,
    };
    let sink = outside_address(0x12);
    let big = [big_tx(&node, &b, 3, &sink)?, big_tx(&node, &b, 8, &sink)?];

    // The special outputs' transaction: P2PK, bare multisig, P2WSH, OP_RETURN, non-standard.
    let special = want
        .txs
        .iter()
        .find(|(t, ..)| {
            let tx = tx_json(t).unwrap();
            tx["vout"].as_array().unwrap().iter().any(|o| o["scriptPubKey"]["type"] == "pubkey")
        })
        .map(|(t, _, block, _)| (*t, *block))
        .context("the special outputs")?;
    let mut sample: Vec<_> = want.txs.iter().step_by(41).chain(want.txs.last()).cloned().collect();
    sample.dedup();
    let sample = sample
        .into_iter()
        .map(|(t, h, block, pos)| {
            let raw = node.call("getrawtransaction", json!([t.to_string(), false, block.to_string()]))?;
            Ok((t, h, block, pos, raw.as_str().unwrap().to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut headers = vec![];
    let mut hashes = vec![];
    for h in 0..=tip {
        let hash = node.call("getblockhash", json!([h]))?;
        headers.push(node.call("getblockheader", json!([hash, false]))?.as_str().unwrap().to_string());
        hashes.push(shown(&hash));
    }

    let (dir, _indexer) = indexed(&node)?;
    let donation = outside.to_string();
    let server = Server::start_with(
        &node,
        &dir.path().join("db"),
        // Fee answers fresh each time: the walk changes the mempool between calls.
        &["--banner", BANNER, "--donation-address", &donation, "--peer", PEER, "--fee-cache-secs", "0"],
    )?;
    let mut world = World {
        node: &node,
        server_port: server.addr.rsplit(':').next().unwrap().parse()?,
        tip,
        headers,
        hashes,
        want,
        scripts: [s1_want, s2_want],
        sample,
        mempool_tx: unconfirmed,
        mempool_out: OutPoint { txid: unconfirmed, vout: unconfirmed_vout },
        special_tx: special,
        broadcast: vec![],
    };
    eprintln!("chain and mempool ready in {:?}", started.elapsed());

    let mut called = BTreeSet::new();
    for &v in VERSIONS {
        let mut walk = Walk { c: Conn::open(&server.addr), v, called: &mut called };
        for txid in [unconfirmed].iter().chain(&big) {
            walk.wait_seen(txid);
        }
        // server.version first: it fixes the session's version.
        let software = format!("blkindex {}", env!("CARGO_PKG_VERSION"));
        let answer = walk.result("server.version", json!(["every-method", version_string(v)]));
        match v {
            (1, 0, 0) => assert_eq!(answer, json!(software), "1.0 answers the server's version alone"),
            _ => assert_eq!(answer, json!([software, version_string(v)])),
        }
        for (method, ..) in METHODS.iter().filter(|(m, ..)| available(m, v) && *m != "server.version") {
            check(&mut world, &mut walk, method)?;
        }
        eprintln!("protocol {} checked", version_string(v));
    }

    // Every method in every version that has it was called, and nothing else.
    let mut missing = vec![];
    for (m, ..) in METHODS {
        for v in VERSIONS.iter().filter(|v| available(m, **v)) {
            if !called.contains(&(m.to_string(), *v)) {
                missing.push(format!("{m} at {}", version_string(*v)));
            }
        }
    }
    assert!(missing.is_empty(), "not called: {missing:?}");
    assert!(called.iter().all(|(m, v)| available(m, *v)));
    eprintln!("{} (method, version) pairs called and checked in {:?}", called.len(), started.elapsed());
    Ok(())
}

/// Calls `method` in the walk's session and checks its answer.
fn check(w: &mut World, walk: &mut Walk, method: &str) -> Result<()> {
    let node = w.node;
    let v = walk.v;
    match method {
        "server.banner" => assert_eq!(walk.result(method, json!([])), json!(BANNER)),
        "server.donation_address" => {
            assert_eq!(walk.result(method, json!([])), json!(w.scripts[1].address.to_string()))
        }
        "server.peers.subscribe" => {
            assert_eq!(
                walk.result(method, json!([])),
                json!([["peer.example", "peer.example", ["t50001", "s50002"]]])
            )
        }
        "server.features" => {
            let mut want = json!({
                "genesis_hash": node.call("getblockhash", json!([0]))?,
                "hosts": {"127.0.0.1": {"tcp_port": w.server_port}},
                "protocol_min": "1.0",
                "protocol_max": "1.7",
                "server_version": format!("blkindex {}", env!("CARGO_PKG_VERSION")),
                "pruning": null,
            });
            if v < (1, 7, 0) {
                want["hash_function"] = json!("sha256");
            }
            // The index has silent-payment tweaks (on by default).
            want["silent_payments"] = json!([0]);
            assert_eq!(walk.result(method, json!([])), want);
        }
        "server.add_peer" => {
            // Without --peer-discovery, announcements are refused and the list stays as configured.
            let features = json!({"genesis_hash": node.call("getblockhash", json!([0]))?,
                "hosts": {"127.0.0.2": {"tcp_port": 50001}}});
            assert_eq!(walk.result(method, json!([features])), json!(false));
        }
        "server.ping" if v >= (1, 7, 0) => {
            assert_eq!(walk.result(method, json!([3, "abcd"])), json!({"data": "000"}))
        }
        "server.ping" => assert_eq!(walk.result(method, json!([])), Value::Null),

        "blockchain.numblocks.subscribe" => assert_eq!(walk.result(method, json!([])), json!(node.height()?)),
        "blockchain.headers.subscribe" => {
            let got = walk.result(method, json!([]));
            // Deserialized before 1.3 (1.2's `raw` defaults to false), raw from 1.3.
            match v < (1, 3, 0) {
                true => assert_eq!(got, header_dict(node, w.tip)?),
                false => assert_eq!(got, json!({"hex": w.headers[w.tip as usize], "height": w.tip})),
            }
        }
        "blockchain.block.get_header" => {
            for h in [0, 7, w.tip] {
                assert_eq!(walk.result(method, json!([h])), header_dict(node, h)?, "header {h}");
            }
        }
        "blockchain.block.get_chunk" => {
            assert_eq!(walk.result(method, json!([0])), json!(w.headers.concat()), "chunk 0");
        }
        "blockchain.block.header" => {
            for h in [0, 9, w.tip] {
                assert_eq!(walk.result(method, json!([h])), json!(w.headers[h as usize]), "header {h}");
            }
            if v >= (1, 4, 0) {
                for (h, cp) in [(9, w.tip), (w.tip, w.tip), (0, 1)] {
                    let proof = walk.result(method, json!([h, cp]));
                    assert_eq!(proof["header"], json!(w.headers[h as usize]));
                    check_header_proof(w, h, cp, &proof);
                }
            }
        }
        "blockchain.block.headers" => {
            let start = w.tip - 5;
            let got = walk.result(method, json!([start, 10]));
            let want: Vec<&String> = w.headers[start as usize..].iter().collect();
            assert_eq!((&got["count"], &got["max"]), (&json!(6), &json!(2016)), "cut at the tip: {got}");
            match v >= (1, 6, 0) {
                true => assert_eq!(got["headers"], json!(want)),
                false => assert_eq!(got["hex"], json!(want.iter().map(|s| s.as_str()).collect::<String>())),
            }
            if v >= (1, 4, 0) {
                let got = walk.result(method, json!([3, 4, w.tip - 1]));
                assert_eq!(got["count"], json!(4));
                // The proof is for the last header returned.
                check_header_proof(w, 6, w.tip - 1, &got);
            }
        }

        "blockchain.utxo.get_address" => {
            let (txid, block) = w.special_tx;
            let tx = node.call("getrawtransaction", json!([txid.to_string(), 1, block.to_string()]))?;
            for (vout, out) in tx["vout"].as_array().unwrap().iter().enumerate() {
                let want = out["scriptPubKey"].get("address").cloned().unwrap_or(Value::Null);
                assert_eq!(walk.result(method, json!([txid.to_string(), vout])), want, "{txid}:{vout}");
            }
            let unconfirmed = w.mempool_tx.to_string();
            let tx = node.call("getrawtransaction", json!([unconfirmed, 1]))?;
            for (vout, out) in tx["vout"].as_array().unwrap().iter().enumerate() {
                assert_eq!(walk.result(method, json!([unconfirmed, vout])), out["scriptPubKey"]["address"]);
            }
            assert_eq!(walk.result(method, json!([txid.to_string(), 99])), Value::Null, "no such output");
        }
        m if m.starts_with("blockchain.address.")
            || m.starts_with("blockchain.scripthash.")
            || m.starts_with("blockchain.scriptpubkey.") =>
        {
            let (family, name) = m.rsplit_once('.').unwrap();
            let wrap = |key: &str, list: Value| if v >= (1, 7, 0) { json!({ key: list }) } else { list };
            for s in &w.scripts {
                let arg = s.arg(family);
                let what = format!("{m}({arg}) at {}", version_string(v));
                match name {
                    "get_history" => {
                        assert_eq!(walk.result(m, json!([arg])), wrap("history", s.entries(false)), "{what}")
                    }
                    "get_mempool" => {
                        assert_eq!(walk.result(m, json!([arg])), wrap("history", s.entries(true)), "{what}")
                    }
                    "get_balance" => assert_eq!(
                        walk.result(m, json!([arg])),
                        json!({"confirmed": s.confirmed, "unconfirmed": s.unconfirmed}),
                        "{what}"
                    ),
                    "listunspent" => {
                        let got = walk.result(m, json!([arg]));
                        let list = if v >= (1, 7, 0) { &got["utxos"] } else { &got };
                        assert_eq!(sorted(list), s.utxos, "{what}");
                    }
                    "subscribe" => assert_eq!(walk.result(m, json!([arg])), json!(s.status()), "{what}"),
                    "unsubscribe" => {
                        walk.result(&format!("{family}.subscribe"), json!([arg]));
                        assert_eq!(walk.result(m, json!([arg])), json!(true), "{what}");
                        assert_eq!(walk.result(m, json!([arg])), json!(false), "{what} again");
                    }
                    other => panic!("no check for {family}.{other}"),
                }
            }
        }

        "blockchain.outpoint.get_status" | "blockchain.outpoint.subscribe" => {
            let status = |op: &OutPoint| json!([op.txid.to_string(), op.vout]);
            // Spent in the chain: the node's spender and heights.
            let (spent, (spender, spender_height)) =
                w.want.spenders.iter().min_by_key(|(op, _)| **op).context("a spent outpoint")?;
            let funder_height = w.want.txs.iter().find(|t| t.0 == spent.txid).unwrap().1;
            assert_eq!(
                walk.result(method, status(spent)),
                json!({"funder_height": funder_height, "spender_txhash": spender.to_string(), "spender_height": spender_height})
            );
            // Unspent in the chain, funded in the mempool, spent in the mempool, never made.
            let (unspent, (_, height)) = w.want.utxos[&w.scripts[0].sh].iter().next().unwrap();
            assert_eq!(walk.result(method, status(unspent)), json!({"funder_height": height}));
            let m = node.call("getrawtransaction", json!([w.mempool_tx.to_string(), 1]))?;
            assert_eq!(
                walk.result(method, status(&w.mempool_out)),
                json!({"funder_height": mempool_height(node, &w.mempool_tx)?})
            );
            let input = &m["vin"][0];
            let input_op = OutPoint {
                txid: input["txid"].as_str().unwrap().parse()?,
                vout: input["vout"].as_u64().unwrap() as u32,
            };
            let parent = node.wallet_call("gettransaction", json!([input_op.txid.to_string()]))?;
            assert_eq!(
                walk.result(method, status(&input_op)),
                json!({"funder_height": parent["blockheight"], "spender_txhash": w.mempool_tx.to_string(),
                    "spender_height": mempool_height(node, &w.mempool_tx)?})
            );
            assert_eq!(walk.result(method, json!([unspent.txid.to_string(), 999])), json!({}));
            assert_eq!(walk.result(method, json!(["ab".repeat(32), 0])), json!({}));
        }
        "blockchain.outpoint.unsubscribe" => {
            let (op, (_, height)) = w.want.utxos[&w.scripts[0].sh].iter().next().unwrap();
            let args = json!([op.txid.to_string(), op.vout]);
            assert_eq!(
                walk.result("blockchain.outpoint.subscribe", args.clone()),
                json!({"funder_height": height})
            );
            assert_eq!(walk.result(method, args.clone()), json!(true));
            assert_eq!(walk.result(method, args), json!(false));
        }

        "blockchain.transaction.broadcast" => {
            let (hex_tx, tx) = unsent(node, 0.01)?;
            let txid = tx.compute_txid();
            assert_eq!(walk.result(method, json!([hex_tx])), json!(txid.to_string()));
            let entry = node.call("getmempoolentry", json!([txid.to_string()]))?;
            assert_eq!(entry["wtxid"], json!(tx.compute_wtxid().to_string()), "in the node's mempool");
            walk.wait_seen(&txid);
            w.broadcast.push(txid);
        }
        "blockchain.transaction.broadcast_package" => {
            let [(parent_hex, parent), (child_hex, child)] = package(node)?;
            let verbose = v >= (1, 7, 0);
            let got = walk.result(method, json!([[parent_hex, child_hex], verbose]));
            match verbose {
                // The node's own `submitpackage` answer.
                true => {
                    assert_eq!(got["package_msg"], json!("success"), "{got}");
                    let mut txids: Vec<_> =
                        got["tx-results"].as_object().unwrap().values().map(|r| r["txid"].clone()).collect();
                    txids.sort_by_key(|t| t.to_string());
                    let mut want = vec![json!(parent.to_string()), json!(child.to_string())];
                    want.sort_by_key(|t| t.to_string());
                    assert_eq!(txids, want, "{got}");
                }
                false => assert_eq!(got, json!({"success": true})),
            }
            let pool = node.call("getrawmempool", json!([]))?;
            for t in [parent, child] {
                assert!(
                    pool.as_array().unwrap().contains(&json!(t.to_string())),
                    "{t} in the node's mempool"
                );
                walk.wait_seen(&t);
                w.broadcast.push(t);
            }
        }
        "blockchain.transaction.testmempoolaccept" => {
            // A transaction not sent (allowed), and one in the mempool already (refused).
            let (hex_tx, _) = unsent(node, 0.02)?;
            let sent = node.call("getrawtransaction", json!([w.broadcast.last().unwrap().to_string()]))?;
            for list in [json!([hex_tx]), json!([sent])] {
                let theirs = node.call("testmempoolaccept", json!([list]))?;
                let want: Vec<Value> = theirs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        let mut out =
                            json!({"txid": r["txid"], "wtxid": r["wtxid"], "allowed": r["allowed"]});
                        let reason = ["package-error", "reject-details", "reject-reason"]
                            .iter()
                            .find_map(|k| r.get(*k));
                        if let Some(reason) = reason {
                            out["reason"] = reason.clone();
                        }
                        out
                    })
                    .collect();
                assert_eq!(walk.result(method, json!([list])), json!(want));
            }
            let pool = node.call("getrawmempool", json!([]))?;
            let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(&hex_tx)?;
            assert!(!pool.as_array().unwrap().contains(&json!(tx.compute_txid().to_string())), "only tested");
        }
        "blockchain.transaction.get" => {
            for (txid, height, block, _, raw) in &w.sample {
                let args = match v {
                    (1, 0, 0) => json!([txid.to_string(), height]),
                    (1, 1, 0) => json!([txid.to_string()]),
                    _ => json!([txid.to_string(), false]),
                };
                assert_eq!(walk.result(method, args), json!(raw), "{txid}");
                if v >= (1, 2, 0) && *txid == w.sample[1].0 {
                    let mut theirs =
                        node.call("getrawtransaction", json!([txid.to_string(), 1, block.to_string()]))?;
                    theirs.as_object_mut().unwrap().remove("in_active_chain");
                    assert_eq!(
                        walk.result(method, json!([txid.to_string(), true])),
                        theirs,
                        "verbose {txid}"
                    );
                }
            }
            let unconfirmed = w.mempool_tx.to_string();
            let raw = node.call("getrawtransaction", json!([unconfirmed]))?;
            assert_eq!(walk.result(method, json!([unconfirmed])), raw, "unconfirmed");
            if v >= (1, 2, 0) {
                let theirs = node.call("getrawtransaction", json!([unconfirmed, 1]))?;
                assert_eq!(walk.result(method, json!([unconfirmed, true])), theirs, "verbose unconfirmed");
            }
        }
        "blockchain.transaction.get_merkle" => {
            for (txid, height, block, pos, _) in &w.sample {
                let proof = walk.result(method, json!([txid.to_string(), height]));
                assert_eq!((&proof["block_height"], &proof["pos"]), (&json!(height), &json!(pos)), "{txid}");
                let root = node.call("getblockheader", json!([block.to_string()]))?["merkleroot"].clone();
                assert_eq!(
                    climb(txid.to_byte_array(), *pos as usize, &proof["merkle"]),
                    shown(&root),
                    "{txid}"
                );
            }
        }
        "blockchain.transaction.id_from_pos" => {
            for (txid, height, block, pos, _) in &w.sample {
                assert_eq!(walk.result(method, json!([height, pos])), json!(txid.to_string()));
                let got = walk.result(method, json!([height, pos, true]));
                assert_eq!(got["tx_hash"], json!(txid.to_string()));
                let root = node.call("getblockheader", json!([block.to_string()]))?["merkleroot"].clone();
                assert_eq!(
                    climb(txid.to_byte_array(), *pos as usize, &got["merkle"]),
                    shown(&root),
                    "{txid}"
                );
            }
        }

        "blockchain.estimatefee" => {
            // A regtest node has no estimate: the protocol's -1, as the node's missing feerate.
            let want = |params: Value| -> Result<Value> {
                Ok(node.call("estimatesmartfee", params)?.get("feerate").cloned().unwrap_or(json!(-1)))
            };
            assert_eq!(walk.result(method, json!([2])), want(json!([2]))?);
            if v >= (1, 6, 0) {
                assert_eq!(walk.result(method, json!([6, "ECONOMICAL"])), want(json!([6, "ECONOMICAL"]))?);
            }
        }
        "blockchain.relayfee" => {
            assert_eq!(walk.result(method, json!([])), node.call("getnetworkinfo", json!([]))?["relayfee"])
        }
        "mempool.get_fee_histogram" => {
            let want = node_histogram(node)?;
            assert!(!want.is_empty(), "the test's mempool fills a bin");
            let got: Vec<(f64, u64)> = walk
                .result(method, json!([]))
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
                .collect();
            assert_eq!(got, want);
        }
        "mempool.get_info" => {
            let theirs = node.call("getmempoolinfo", json!([]))?;
            assert_eq!(
                walk.result(method, json!([])),
                json!({"mempoolminfee": theirs["mempoolminfee"], "minrelaytxfee": theirs["minrelaytxfee"],
                    "incrementalrelayfee": theirs["incrementalrelayfee"]})
            );
        }
        "mempool.recent" => {
            let got = walk.result(method, json!([]));
            let got = got.as_array().unwrap();
            let pool = node.call("getrawmempool", json!([true]))?;
            let pool = pool.as_object().unwrap();
            assert_eq!(got.len(), pool.len().min(10), "{got:?}");
            for r in got {
                let e = &pool[r["txid"].as_str().unwrap()];
                assert_eq!((&r["fee"], &r["vsize"]), (&json!(sats(&e["fees"]["base"])), &e["vsize"]), "{r}");
            }
            // The latest arrivals are the walk's last broadcasts.
            let listed: Vec<&Value> = got.iter().map(|r| &r["txid"]).collect();
            for t in w.broadcast.iter().rev().take(3) {
                assert!(listed.contains(&&json!(t.to_string())), "{t} in {listed:?}");
            }
        }
        m if m.starts_with("blockchain.silentpayments.") => {
            // Served when the index has tweaks (features say so), refused as not found when not;
            // the silent-payments test checks the answers themselves.
            let served =
                walk.c.result("server.features", json!([])).get("silent_payments") == Some(&json!([0]));
            let (scan, spend) =
                ("11".repeat(32), "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
            let params = match m {
                "blockchain.silentpayments.tweaks" => json!([0, 1]),
                _ => json!([scan, spend]),
            };
            if !served {
                let r = walk.c.call(m, params);
                assert_eq!(r["error"]["code"], -32601, "{m}: {r}");
                assert!(r["error"]["message"].as_str().unwrap().contains("no tweaks"), "{r}");
                walk.called.insert((m.to_string(), v));
                return Ok(());
            }
            let r = walk.result(m, params);
            match m {
                "blockchain.silentpayments.subscribe" => {
                    assert_eq!((&r["labels"], &r["start_height"]), (&json!([0]), &json!(0)), "{r}");
                    assert!(r["address"].is_string(), "{r}");
                }
                "blockchain.silentpayments.unsubscribe" => assert!(r.is_string(), "{r}"),
                _ => assert!(r["blocks"].is_array() && r.get("next").is_some(), "{r}"),
            }
        }
        other => panic!("no check for {other}: add one"),
    }
    Ok(())
}

/// The branch leads from the block hash at `height` to the root over the hashes 0..=cp_height,
/// computed here level by level.
fn check_header_proof(w: &World, height: u64, cp_height: u64, proof: &Value) {
    let leaves = &w.hashes[..=cp_height as usize];
    let root = climb(leaves[height as usize], height as usize, &proof["branch"]);
    assert_eq!(root, shown(&proof["root"]), "proof of {height} under {cp_height}");
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().unwrap());
        }
        level =
            level.chunks(2).map(|p| sha256d::Hash::hash(&[p[0], p[1]].concat()).to_byte_array()).collect();
    }
    assert_eq!(root, level[0], "the root over the block hashes 0..={cp_height}");
}
