//! blkindex-server against a real node and indexer, asked by a real Electrum client (BDK's
//! `electrum-client` crate): every answer equals the node's, notifications arrive, and bad input
//! gets errors while the server keeps serving.

use std::time::{Duration, Instant};

use anyhow::Result;
use bitcoin::hashes::Hash;
use bitcoin::ScriptBuf;
use electrum_client::ElectrumApi;
use serde_json::{json, Value};

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::expect::expected;

use crate::common::{http_get, indexed, raw, rich_setup, session, Server};

#[test]
fn electrum_client_sees_what_the_node_sees() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;
    let client = server.client();
    let features = client.server_features()?;
    // electrum-client keeps the hash's hex in display order.
    let genesis = node.call("getblockhash", json!([0]))?;
    assert_eq!(hex::encode(features.genesis_hash), genesis.as_str().unwrap());
    for (sh, history) in &want.history {
        let script = ScriptBuf::from_bytes(want.scripts[sh].clone());
        let got: Vec<_> =
            client.script_get_history(&script)?.iter().map(|h| (h.tx_hash, h.height as u32)).collect();
        assert_eq!(&got, history, "history of {sh}");
        let mut utxos: Vec<_> = client
            .script_list_unspent(&script)?
            .iter()
            .map(|u| (u.tx_hash, u.tx_pos as u32, u.value, u.height as u32))
            .collect();
        utxos.sort();
        let mut want_utxos: Vec<_> = want
            .utxos
            .get(sh)
            .map(|m| m.iter().map(|(op, (v, h))| (op.txid, op.vout, *v, *h)).collect())
            .unwrap_or_default();
        want_utxos.sort();
        assert_eq!(utxos, want_utxos, "unspent outputs of {sh}");
        let balance = client.script_get_balance(&script)?;
        assert_eq!(balance.confirmed, want_utxos.iter().map(|u| u.2).sum::<u64>(), "balance of {sh}");
    }
    for (txid, height, block, pos) in want.txs.iter().step_by(7) {
        let raw = node.call("getrawtransaction", json!([txid.to_string(), false, block.to_string()]))?;
        assert_eq!(hex::encode(client.transaction_get_raw(txid)?), raw.as_str().unwrap());
        let proof = client.transaction_get_merkle(txid, *height as usize)?;
        assert_eq!(proof.pos, *pos as usize);
        let header = client.block_header(*height as usize)?;
        assert_eq!(header.block_hash(), *block);
        // The branch (hashes in display order, as ElectrumX sends them) leads from the txid to the
        // header's merkle root.
        let mut acc = txid.to_byte_array();
        for (level, shown) in proof.merkle.iter().enumerate() {
            let mut node_hash = *shown;
            node_hash.reverse();
            let mut e = bitcoin::hashes::sha256d::Hash::engine();
            use bitcoin::hashes::HashEngine;
            if (proof.pos >> level) & 1 == 0 {
                e.input(&acc);
                e.input(&node_hash);
            } else {
                e.input(&node_hash);
                e.input(&acc);
            }
            acc = bitcoin::hashes::sha256d::Hash::from_engine(e).to_byte_array();
        }
        assert_eq!(acc, header.merkle_root.to_byte_array(), "merkle proof of {txid}");
    }
    eprintln!(
        "checked {} scripts and {} transactions through electrum-client",
        want.history.len(),
        want.txs.len() / 7
    );
    Ok(())
}

#[test]
fn notifications_for_new_blocks_and_changed_scripts() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let client = server.client();
    let tip = client.block_headers_subscribe()?;
    assert_eq!(tip.height as u64, node.height()?);
    let b = ChainBuilder::new(&node)?;
    let addr = node.new_address("bech32")?;
    assert!(client.script_subscribe(&addr.script_pubkey())?.is_none(), "a fresh address has no status");
    node.send(&addr, bitcoin::Amount::from_btc(0.5)?)?;
    b.mine(1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut header, mut status) = (None, None);
    while (header.is_none() || status.is_none()) && Instant::now() < deadline {
        client.ping()?; // reading a reply also collects queued notifications
        header = header.or(client.block_headers_pop()?);
        status = status.or(client.script_pop(&addr.script_pubkey())?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let header = header.expect("a header notification");
    assert_eq!(header.height as u64, node.height()?);
    assert_eq!(header.header.block_hash(), node.best_hash()?);
    assert!(status.is_some(), "a status notification for the funded address");
    Ok(())
}

#[test]
fn bad_input_gets_errors_and_the_server_keeps_serving() -> Result<()> {
    let (_node, _dir, _indexer, server) = rich_setup()?;
    let parse = |l: &str| serde_json::from_str::<Value>(l).unwrap();
    // Invalid JSON, an unknown method, wrong parameter types, a batch too big.
    let batch: Vec<Value> =
        (0..10_000).map(|i| json!({"id": i, "method": "server.ping", "params": []})).collect();
    let batch = serde_json::to_string(&batch)?;
    let replies = raw(
        &server.addr,
        &[
            "this is not json",
            r#"{"id":1,"method":"no.such.method","params":[]}"#,
            r#"{"id":2,"method":"blockchain.block.header","params":["tall"]}"#,
            r#"{"id":3,"method":"blockchain.scripthash.get_history","params":["zz"]}"#,
            &batch,
            r#"{"id":4,"method":"server.ping","params":[]}"#,
            &format!(r#"{{"id":5,"method":"blockchain.transaction.get","params":["{}"]}}"#, "ab".repeat(32)),
            r#"{"id":6,"method":"blockchain.block.header","params":[]}"#,
        ],
        8,
    );
    assert_eq!(replies.len(), 8, "{replies:?}");
    assert_eq!(parse(&replies[0])["error"]["code"], -32700);
    assert_eq!(parse(&replies[1])["error"]["code"], -32601);
    // Codes clients may branch on are ElectrumX's: a malformed argument is 1 (BAD_REQUEST), an
    // unknown txid 2 (the node's error), a missing argument -32602.
    assert_eq!(parse(&replies[2])["error"]["code"], 1, "a height that is no integer");
    assert_eq!(parse(&replies[3])["error"]["code"], 1, "an invalid script hash");
    assert_eq!(parse(&replies[4])["error"]["code"], -32600);
    assert_eq!(parse(&replies[5])["result"], Value::Null);
    let unknown = parse(&replies[6]);
    assert_eq!(unknown["error"]["code"], 2, "an unknown txid: {unknown}");
    assert_eq!(unknown["error"]["message"], format!("no transaction {}", "ab".repeat(32)));
    assert_eq!(parse(&replies[7])["error"]["code"], -32602, "a missing height");
    // A line longer than the limit ends that session, not the server.
    let long = format!(r#"{{"id":5,"method":"server.ping","params":["{}"]}}"#, "a".repeat(5 << 20));
    let replies = raw(&server.addr, &[&long], 2);
    assert_eq!(replies.len(), 1, "one error, then the connection closes");
    assert_eq!(parse(&replies[0])["error"]["code"], -32600);
    // Version negotiation: no common version closes the connection after the error.
    let replies = raw(
        &server.addr,
        &[
            r#"{"id":6,"method":"server.version","params":["x",["1.8","2.0"]]}"#,
            r#"{"id":7,"method":"server.ping"}"#,
        ],
        2,
    );
    assert_eq!(replies.len(), 1);
    assert_eq!(parse(&replies[0])["error"]["code"], 1);
    // And the server still answers a well-behaved client.
    assert!(server.client().ping().is_ok());
    Ok(())
}

#[test]
fn unconfirmed_transactions_count_and_notify() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let client = server.client();
    let a = node.new_address("bech32")?;
    let c = node.new_address("bech32m")?;
    assert!(client.script_subscribe(&a.script_pubkey())?.is_none());
    // A pays `a` from confirmed coins; B spends that unconfirmed output to `c`.
    let txid_a = node.send(&a, bitcoin::Amount::from_btc(0.7)?)?;
    let tx_a = node.call("getrawtransaction", json!([txid_a.to_string(), true]))?;
    let vout = tx_a["vout"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["scriptPubKey"]["address"] == a.to_string())
        .unwrap();
    let unsigned = node.call(
        "createrawtransaction",
        json!([[{"txid": txid_a.to_string(), "vout": vout}], {c.to_string(): 0.69}]),
    )?;
    let signed = node.wallet_call("signrawtransactionwithwallet", json!([unsigned]))?;
    let txid_b: bitcoin::Txid =
        node.call("sendrawtransaction", json!([signed["hex"]]))?.as_str().unwrap().parse()?;
    let fee = |t: &bitcoin::Txid| -> u64 {
        let e = node.call("getmempoolentry", json!([t.to_string()])).unwrap();
        (e["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64
    };
    // The status notification comes from the mempool alone, no block mined.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        client.ping()?;
        status = client.script_pop(&a.script_pubkey())?;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status.is_some(), "no status notification for an unconfirmed payment");
    // Let the server's mempool see B too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.script_get_history(&c.script_pubkey())?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // `a`: funded by A (parent confirmed: height 0), spent by B (unconfirmed parent: -1), in that order.
    let hist: Vec<_> =
        client.script_get_history(&a.script_pubkey())?.iter().map(|h| (h.tx_hash, h.height)).collect();
    assert_eq!(hist, vec![(txid_a, 0), (txid_b, -1)]);
    let mempool = client.script_get_history(&c.script_pubkey())?;
    assert_eq!(mempool.len(), 1);
    assert_eq!((mempool[0].tx_hash, mempool[0].height, mempool[0].fee), (txid_b, -1, Some(fee(&txid_b))));
    let bal = client.script_get_balance(&a.script_pubkey())?;
    assert_eq!((bal.confirmed, bal.unconfirmed), (0, 0), "funded and spent in the mempool");
    let bal = client.script_get_balance(&c.script_pubkey())?;
    assert_eq!((bal.confirmed, bal.unconfirmed), (0, 69_000_000));
    let utxos = client.script_list_unspent(&c.script_pubkey())?;
    assert_eq!(
        utxos.iter().map(|u| (u.tx_hash, u.height, u.value)).collect::<Vec<_>>(),
        vec![(txid_b, 0, 69_000_000)]
    );
    assert!(client.script_list_unspent(&a.script_pubkey())?.is_empty(), "spent in the mempool");
    let want_status = {
        use bitcoin::hashes::{sha256, Hash};
        hex::encode(sha256::Hash::hash(format!("{txid_a}:0:{txid_b}:-1:").as_bytes()).to_byte_array())
    };
    let raw_status = raw(
        &server.addr,
        &[&format!(
            r#"{{"id":1,"method":"blockchain.scripthash.subscribe","params":["{}"]}}"#,
            blkindex_shared::ScriptHash::of(a.script_pubkey().as_bytes())
        )],
        1,
    );
    assert_eq!(serde_json::from_str::<Value>(&raw_status[0])?["result"], want_status);
    // Mined: both move to the confirmed side.
    ChainBuilder::new(&node)?.mine(1)?;
    let height = node.height()? as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hist: Vec<_> = client.script_get_history(&a.script_pubkey())?.iter().map(|h| h.height).collect();
        if hist == vec![height, height] {
            break;
        }
        assert!(Instant::now() < deadline, "not confirmed in the server's view: {hist:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bal = client.script_get_balance(&c.script_pubkey())?;
    assert_eq!((bal.confirmed, bal.unconfirmed), (69_000_000, 0));
    Ok(())
}

#[test]
fn shapes_follow_the_negotiated_version() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let req = crate::common::req;
    let v14 = session(
        &server.addr,
        &[
            req(0, "server.version", json!(["t", "1.4"])),
            req(1, "blockchain.block.headers", json!([0, 3])),
            req(2, "blockchain.relayfee", json!([])),
            req(3, "mempool.get_info", json!([])),
        ],
    );
    assert_eq!(v14[0]["result"][1], "1.4");
    assert_eq!(v14[1]["result"]["hex"].as_str().unwrap().len(), 3 * 160);
    assert!(v14[2]["result"].is_number(), "{}", v14[2]);
    assert_eq!(v14[3]["error"]["code"], -32601, "mempool.get_info is 1.6");
    let v16 = session(
        &server.addr,
        &[
            req(0, "server.version", json!(["t", ["1.4", "1.6"], "extra", 1])),
            req(1, "blockchain.block.headers", json!([0, 3])),
            req(2, "blockchain.relayfee", json!([])),
            req(3, "mempool.get_info", json!([])),
            req(4, "blockchain.estimatefee", json!([2, "ECONOMICAL"])),
            req(5, "blockchain.estimatefee", json!([2, "FAST"])),
        ],
    );
    assert_eq!(v16[0]["result"][1], "1.6");
    let headers = v16[1]["result"]["headers"].as_array().unwrap();
    assert_eq!(headers.len(), 3);
    let genesis = node.call("getblockheader", json!([node.call("getblockhash", json!([0]))?, false]))?;
    assert_eq!(headers[0], genesis);
    assert_eq!(v16[2]["error"]["code"], -32601, "relayfee is gone in 1.6");
    let info = &v16[3]["result"];
    let node_info = node.call("getmempoolinfo", json!([]))?;
    assert_eq!(info["minrelaytxfee"], node_info["minrelaytxfee"]);
    assert!(info["mempoolminfee"].is_number() && info["incrementalrelayfee"].is_number());
    assert!(v16[4]["result"].is_number());
    assert_eq!(v16[5]["error"]["code"], 1, "an unknown mode, as ElectrumX");

    // A parent and its child, neither sent before, as one package.
    let to = node.new_address("bech32")?;
    let parent = node
        .wallet_call("send", json!([{to.to_string(): 1.0}, null, "unset", null, {"add_to_wallet": false}]))?;
    let parent_hex = parent["hex"].as_str().unwrap().to_string();
    let parent_tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(&parent_hex)?;
    let vout = parent_tx.output.iter().position(|o| o.script_pubkey == to.script_pubkey()).unwrap();
    let child_to = node.new_address("bech32")?;
    let unsigned = node.call(
        "createrawtransaction",
        json!([[{"txid": parent_tx.compute_txid().to_string(), "vout": vout}], {child_to.to_string(): 0.999}]),
    )?;
    let prev = json!([{"txid": parent_tx.compute_txid().to_string(), "vout": vout,
        "scriptPubKey": hex::encode(to.script_pubkey().as_bytes()), "amount": 1.0}]);
    let child = node.wallet_call("signrawtransactionwithwallet", json!([unsigned, prev]))?;
    let r = session(
        &server.addr,
        &[
            req(0, "server.version", json!(["t", "1.6"])),
            req(1, "blockchain.transaction.broadcast_package", json!([[parent_hex, child["hex"]]])),
        ],
    );
    assert_eq!(r[1]["result"], json!({"success": true}), "{}", r[1]);
    let mempool = node.call("getrawmempool", json!([]))?;
    assert!(mempool.as_array().unwrap().iter().any(|t| t == &json!(parent_tx.compute_txid().to_string())));
    Ok(())
}

/// Polls `f` every 50 ms until it gives a value, for up to 30 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reorg_moves_histories_back_and_forth_and_notifies() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let client = server.client();
    // Every script's history at this tip first, so the server holds them computed.
    let want = expected(&node)?;
    for sh in want.history.keys() {
        if let Err(e) = client.script_get_history(&ScriptBuf::from_bytes(want.scripts[sh].clone())) {
            eprintln!("DEBUG warm error {e:?}");
        }
    }
    eprintln!("DEBUG warmed");
    let a = node.new_address("bech32")?;
    let coinbase_to = node.new_address("bech32")?;
    let history = |script: &ScriptBuf| -> Result<Vec<(bitcoin::Txid, i32)>> {
        let r = client.script_get_history(script);
        if let Err(e) = &r {
            eprintln!("DEBUG history error: {e:?}");
        }
        Ok(r?.iter().map(|h| (h.tx_hash, h.height)).collect())
    };
    assert!(client.script_subscribe(&a.script_pubkey())?.is_none());
    client.block_headers_subscribe()?;
    let txid = node.send(&a, bitcoin::Amount::from_btc(0.3)?)?;
    let mined_at = node.height()? as i32 + 1;
    let block = node.mine(1, &coinbase_to)?[0];
    wait_for("the payment confirmed", || {
        Ok((history(&a.script_pubkey())? == vec![(txid, mined_at)]).then_some(()))
    })?;
    assert_eq!(history(&coinbase_to.script_pubkey())?.len(), 1);
    while client.script_pop(&a.script_pubkey())?.is_some() {}
    while client.block_headers_pop()?.is_some() {}

    // Undo that block: the payment goes back to the mempool, and two empty blocks take its place.
    node.call("invalidateblock", json!([block.to_string()]))?;
    let miner = node.new_address("bech32")?.to_string();
    node.call("generateblock", json!([miner, []]))?;
    node.call("generateblock", json!([miner, []]))?;
    let best = node.best_hash()?;
    let header = wait_for("a header notification for the new branch", || {
        client.ping()?;
        Ok(std::iter::from_fn(|| client.block_headers_pop().ok().flatten()).last())
    })?;
    assert_eq!((header.height as i32, header.header.block_hash()), (mined_at + 1, best));
    wait_for("the payment back in the mempool", || {
        Ok((history(&a.script_pubkey())? == vec![(txid, 0)]).then_some(()))
    })?;
    assert!(client.script_pop(&a.script_pubkey())?.is_some(), "a status notification for the reorg");
    assert!(history(&coinbase_to.script_pubkey())?.is_empty(), "the stale block's coinbase is gone");
    // Every other script as the node now sees it (computed again or brought forward).
    let want = expected(&node)?;
    for (sh, want_history) in &want.history {
        let got: Vec<_> = history(&ScriptBuf::from_bytes(want.scripts[sh].clone()))?
            .into_iter()
            .filter(|h| h.1 > 0)
            .map(|(t, h)| (t, h as u32))
            .collect();
        assert_eq!(&got, want_history, "history of {sh} after the reorg");
    }

    // Mined again, two blocks higher.
    node.mine(1, &coinbase_to)?;
    wait_for("the payment confirmed again", || {
        Ok((history(&a.script_pubkey())? == vec![(txid, mined_at + 2)]).then_some(()))
    })?;
    Ok(())
}

/// A fresh address's history as the server tells it: (txid, height) pairs.
fn history_of(client: &electrum_client::Client, a: &bitcoin::Address) -> Result<Vec<(bitcoin::Txid, i32)>> {
    Ok(client.script_get_history(&a.script_pubkey())?.iter().map(|h| (h.tx_hash, h.height)).collect())
}

#[test]
fn the_mempool_follows_zmq_events_including_replacements() -> Result<()> {
    let node = blkindex_testkit::Node::start(blkindex_testkit::NodeOptions::default())?;
    blkindex_testkit::chain::build_rich_chain(&node)?;
    let (dir, _indexer) = indexed(&node)?;
    // The whole mempool is read at start, and no poll comes for an hour: the rest must come from
    // events.
    let server = Server::start_with(
        &node,
        &dir.path().join("db"),
        &["--mempool-ms", "3600000", "--mempool-resync-secs", "3600", "--metrics-addr", "127.0.0.1:0"],
    )?;
    let client = server.client();
    wait_for("the ZMQ listener", || {
        Ok(server.log().contains("listening to ZMQ notifications").then_some(()))
    })?;
    let a = node.new_address("bech32")?;
    // (Connecting asked for one more whole read, which this first event may trigger.)
    let first = node.send(&a, bitcoin::Amount::from_btc(0.4)?)?;
    wait_for("the payment", || Ok((history_of(&client, &a)? == [(first, 0)]).then_some(())))?;
    // Replaced by a higher fee: one event removes it, another adds the replacement.
    let bumped = node.wallet_call("bumpfee", json!([first.to_string()]))?;
    let second: bitcoin::Txid = bumped["txid"].as_str().unwrap().parse()?;
    wait_for("the replacement", || Ok((history_of(&client, &a)? == [(second, 0)]).then_some(())))?;
    let metrics = http_get(&server.addr_of("serving metrics"))?;
    let count = |kind: &str| -> u64 {
        let line = format!("blkindex_mempool_updates_total{{kind=\"{kind}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
    };
    assert!(count("event") >= 2, "the replacement's removal and addition: {metrics}");
    assert!(count("resync") <= 2, "the start and the one asked for on connecting, no more: {metrics}");
    // Mined: it leaves the tracked mempool when the index has the block, without a whole read.
    let height = node.height()? as i32 + 1;
    node.mine(1, &node.new_address("bech32")?)?;
    wait_for("the replacement confirmed", || {
        Ok((history_of(&client, &a)? == [(second, height)]).then_some(()))
    })?;
    wait_for("an empty tracked mempool", || {
        Ok(http_get(&server.addr_of("serving metrics"))?.contains("\nblkindex_mempool_txs 0\n").then_some(()))
    })?;
    let after = http_get(&server.addr_of("serving metrics"))?;
    let resyncs = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("blkindex_mempool_updates_total{kind=\"resync\"}"))
            .map(str::to_string)
    };
    assert_eq!(resyncs(&after), resyncs(&metrics), "no whole read for the block: {after}");
    Ok(())
}

#[test]
fn without_zmq_the_mempool_is_polled() -> Result<()> {
    let node =
        blkindex_testkit::Node::start(blkindex_testkit::NodeOptions { no_zmq: true, ..Default::default() })?;
    blkindex_testkit::chain::build_rich_chain(&node)?;
    let (dir, _indexer) = indexed(&node)?;
    let server = Server::start_with(&node, &dir.path().join("db"), &["--mempool-ms", "200"])?;
    let client = server.client();
    let a = node.new_address("bech32")?;
    let txid = node.send(&a, bitcoin::Amount::from_btc(0.4)?)?;
    wait_for("the payment by polling", || Ok((history_of(&client, &a)? == [(txid, 0)]).then_some(())))?;
    // A second one, found by a later poll (txids listed, the new entry asked for), with its fee.
    let second = node.send(&a, bitcoin::Amount::from_btc(0.2)?)?;
    let mut both = vec![(txid, 0), (second, 0)];
    both.sort_by_key(|(t, _)| t.to_string());
    wait_for("the second payment", || Ok((history_of(&client, &a)? == both).then_some(())))?;
    let entry = node.call("getmempoolentry", json!([second.to_string()]))?;
    let fee = (entry["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64;
    let listed = client.script_get_history(&a.script_pubkey())?;
    assert_eq!(listed.iter().find(|h| h.tx_hash == second).unwrap().fee, Some(fee));
    let height = node.height()? as i32 + 1;
    node.mine(1, &node.new_address("bech32")?)?;
    both.iter_mut().for_each(|h| h.1 = height);
    // Confirmed entries come in block order, which the test does not know: compare as sets.
    wait_for("the payments confirmed", || {
        let mut got = history_of(&client, &a)?;
        got.sort_by_key(|(t, _)| t.to_string());
        Ok((got == both).then_some(()))
    })?;
    Ok(())
}
