//! The node misbehaving under a running server: its RPC through a proxy that answers HTTP 503
//! "Work queue depth exceeded", resets connections, cuts replies short or answers slowly (what a
//! real node cannot be made to do on cue). The methods that ask the node get a clear JSON-RPC
//! error while it is faulted (not a hang), work again after, and the server stays up throughout.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use blkindex_shared::blkfile::{scan_records, BlockFiles, FileKind};
use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::proxy::{Fault, Proxy};
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, session, Server};

/// A signed transaction the node would accept, not yet sent.
fn unsent_tx(node: &Node) -> Result<(String, String)> {
    let to = node.new_address("bech32")?;
    let v = node
        .wallet_call("send", json!([{to.to_string(): 0.1}, null, "unset", null, {"add_to_wallet": false}]))?;
    Ok((v["hex"].as_str().unwrap().to_string(), v["txid"].as_str().unwrap().to_string()))
}

/// The three methods that ask the node, and `server.ping` (which does not), on one connection.
fn ask_node(addr: &str, tx: &str) -> Vec<Value> {
    session(
        addr,
        &[
            req(1, "server.version", json!(["test", "1.4"])),
            req(2, "blockchain.estimatefee", json!([2])),
            req(3, "blockchain.relayfee", json!([])),
            req(4, "blockchain.transaction.broadcast", json!([tx])),
            req(5, "server.ping", json!([])),
        ],
    )
}

#[test]
fn node_calls_fail_clearly_while_the_node_is_faulted_and_work_after() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(110)?;
    let (dir, _indexer) = indexed(&node)?;
    let proxy = Proxy::start(&node.rpc_addr())?;
    let server = Server::start_with(&node, &dir.path().join("db"), &["--daemon-rpc-addr", proxy.addr()])?;
    let (tx, txid) = unsent_tx(&node)?;

    for (fault, says) in [
        (Fault::Busy, "Work queue depth exceeded"),
        (Fault::Reset, "cannot reach bitcoind"),
        (Fault::CutShort, "cut short"),
    ] {
        proxy.always(fault);
        let t0 = Instant::now();
        let replies = ask_node(&server.addr, &tx);
        assert!(t0.elapsed() < Duration::from_secs(10), "{fault:?}: answered after {:?}", t0.elapsed());
        assert_eq!(replies.len(), 5, "{fault:?}: {replies:?}");
        for r in &replies[1..4] {
            let err = &r["error"];
            assert!(r.get("result").is_none() && err.is_object(), "{fault:?}: {r}");
            let message = err["message"].as_str().unwrap_or("");
            assert!(message.contains(says), "{fault:?}: {r}");
        }
        // The node's error, with ElectrumX's code for it.
        for r in &replies[1..3] {
            assert_eq!(r["error"]["code"], 2, "{fault:?}: {r}");
        }
        assert_eq!(replies[4]["result"], Value::Null, "{fault:?}: the server itself still answers");
    }

    // Slow answers are waited for.
    proxy.always(Fault::Delay(Duration::from_millis(1500)));
    let replies = session(&server.addr, &[req(1, "blockchain.relayfee", json!([]))]);
    assert!(replies[0]["result"].as_f64().is_some(), "{replies:?}");

    proxy.heal();
    let replies = ask_node(&server.addr, &tx);
    assert!(replies[1]["result"].is_number(), "{replies:?}");
    assert!(replies[2]["result"].as_f64().is_some_and(|f| f > 0.0), "{replies:?}");
    assert_eq!(replies[3]["result"], json!(txid), "{replies:?}");
    let injected = proxy.injected();
    assert!(injected.busy > 0 && injected.reset > 0 && injected.cut_short > 0 && injected.delayed > 0);
    assert!(!server.log().contains("ERROR"), "{}", server.log());
    Ok(())
}

/// A blk file truncated under the running server (bitcoind may cut a file back after an unclean
/// shutdown, also one below the highest-numbered): a transaction past the new end is an error for
/// that request, never SIGBUS; those before it are still served, and so is everything else.
#[test]
fn a_blk_file_truncated_under_the_server_is_an_error_for_that_request() -> Result<()> {
    // 64 KiB blk files: blk00000.dat is full and has successors, so it was once mapped.
    let mut node = Node::start(NodeOptions { fastprune: true, ..Default::default() })?;
    ChainBuilder::new(&node)?.mine(600)?;
    let (dir, mut indexer) = indexed(&node)?;
    let server = Server::start(&node, &dir.path().join("db"))?;
    let files = BlockFiles::open(&node.blocks_dir())?;
    assert!(files.path(FileKind::Blk, 1).exists(), "the chain spans one blk file only");
    let bytes = files.file_bytes(FileKind::Blk, 0)?;
    let (records, _) = scan_records(bytes.bytes(), &files.xor_key(), [0xfa, 0xbf, 0xb5, 0xda], FileKind::Blk);
    let coinbase = |i: usize| -> Result<String> {
        let at = records[i].offset;
        let head = files.xor_key().copy(&bytes.bytes()[at as usize..at as usize + 80], at);
        let header: bitcoin::block::Header = bitcoin::consensus::deserialize(&head)?;
        let block = node.call("getblock", json!([header.block_hash().to_string()]))?;
        Ok(block["tx"][0].as_str().unwrap().to_string())
    };
    let n = records.len();
    let (early, before, late) = (coinbase(n / 4)?, coinbase(n * 3 / 4)?, coinbase(n * 3 / 4 + 1)?);
    let get = |txid: &str| {
        session(
            &server.addr,
            &[req(1, "blockchain.transaction.get", json!([txid])), req(2, "server.ping", json!([]))],
        )
    };
    // Read once, so that a server mapping the file has it mapped.
    assert!(get(&before)[0]["result"].is_string());
    indexer.stop()?;
    node.stop()?;
    let blk = files.path(FileKind::Blk, 0);
    std::fs::OpenOptions::new().write(true).open(&blk)?.set_len(records[n / 2].offset)?;
    let replies = get(&late);
    assert_eq!(replies.len(), 2, "no answer: the server died (SIGBUS from a mapped file?)");
    assert_eq!(replies[0]["error"]["code"], -32603, "{replies:?}");
    assert_eq!(replies[1]["result"], Value::Null, "{replies:?}");
    let replies = get(&early);
    assert!(replies[0]["result"].is_string(), "{replies:?}");
    assert!(server.log().contains("cannot read"), "the log names the short read: {}", server.log());
    Ok(())
}

/// The confirmed answers a wallet needs, checked: the tip, a script's history, a transaction.
fn confirmed_served(addr: &str, tip: u64, script_hash: &str, paid: &str, raw: &Value) {
    let replies = session(
        addr,
        &[
            req(1, "server.version", json!(["test", "1.4"])),
            req(2, "blockchain.headers.subscribe", json!([])),
            req(3, "blockchain.scripthash.get_balance", json!([script_hash])),
            req(4, "blockchain.transaction.get", json!([paid])),
        ],
    );
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(replies[1]["result"]["height"], json!(tip), "{replies:?}");
    assert_eq!(replies[2]["result"]["confirmed"], json!(10_000_000), "{replies:?}");
    assert_eq!(&replies[3]["result"], raw, "{replies:?}");
}

/// Each node call answers the node's absence, clearly and soon.
fn node_calls_fail(addr: &str, tx: &str) {
    let t0 = Instant::now();
    let replies = ask_node(addr, tx);
    assert!(t0.elapsed() < Duration::from_secs(10), "answered after {:?}", t0.elapsed());
    for r in &replies[1..4] {
        assert_eq!(r["error"]["code"], 2, "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("cannot reach bitcoind"), "{r}");
    }
}

/// A node down when the server starts (its cookie gone), back later, then stopped under the
/// running server: the server starts and serves confirmed data throughout; the calls that need
/// the node say it cannot be reached while it is away and work once it is back, when ZMQ is
/// found too; the status line says whether the node is up.
#[test]
fn a_node_away_at_start_or_stopped_under_the_server_leaves_confirmed_data_served() -> Result<()> {
    let mut node = Node::start(NodeOptions::default())?;
    let b = ChainBuilder::new(&node)?;
    b.mine(110)?;
    let address = node.new_address("bech32")?;
    let paid = node.send(&address, bitcoin::Amount::from_btc(0.1)?)?.to_string();
    let block = b.mine(1)?[0];
    let raw = node.call("getrawtransaction", json!([paid, false, block.to_string()]))?;
    let (tx, _) = unsent_tx(&node)?;
    let tip = node.height()?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    node.stop()?;
    let script_hash = blkindex_shared::ScriptHash::of(address.script_pubkey().as_bytes()).to_string();

    let flags = ["--log-stats-secs", "1", "--fee-cache-secs", "0"];
    let server = Server::start_with(&node, &db, &flags)?;
    confirmed_served(&server.addr, tip, &script_hash, &paid, &raw);
    node_calls_fail(&server.addr, &tx);
    let wait_log = |what: &str, after: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = server.log();
            if let Some(at) = log[after.min(log.len())..].find(what) {
                return after + at;
            }
            assert!(Instant::now() < deadline, "no {what:?} in the log: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let at = wait_log(r#"node="down""#, 0);

    node.restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let replies = loop {
        let replies = ask_node(&server.addr, &tx);
        if replies[2]["result"].is_number() || Instant::now() > deadline {
            break replies;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(replies[1]["result"].is_number() && replies[2]["result"].is_number(), "{replies:?}");
    assert!(replies[3]["result"].is_string(), "broadcast once the node is back: {replies:?}");
    // ZMQ was asked for again until the node answered, and is listened to.
    wait_log("listening to ZMQ notifications", 0);
    let at = wait_log(r#"node="up""#, at);
    confirmed_served(&server.addr, tip, &script_hash, &paid, &raw);

    // Stopped under the running server: confirmed data still served, node calls refused.
    node.stop()?;
    confirmed_served(&server.addr, tip, &script_hash, &paid, &raw);
    node_calls_fail(&server.addr, &tx);
    wait_log(r#"node="down""#, at);
    confirmed_served(&server.addr, tip, &script_hash, &paid, &raw);
    assert!(!server.log().contains("ERROR"), "{}", server.log());
    Ok(())
}
