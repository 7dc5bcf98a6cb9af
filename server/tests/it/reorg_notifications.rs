//! Protocol 1.7's outpoint and scriptpubkey subscriptions through reorgs deeper than one block,
//! with an indexer following the node: the last notification of each subscription carries the
//! status the node's chain implies (heights read from the node's wallet and mempool, script
//! statuses hashed from them), and a fresh session reads the same. A funding transaction f and
//! its spender s move to other heights (3 blocks undone), come back (4), drop to the mempool (5),
//! and f is mined again with s left in the mempool (6).

use std::time::Duration;

use anyhow::{Context, Result};
use bitcoin::{Address, Amount, BlockHash, OutPoint, Transaction, Txid};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;
use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, status_of, Conn, Server};

/// How long a notification may take: the indexer's poll (2 s, ZMQ sooner), the server's catch-up
/// and mempool read, with room for a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// Where the node has `txid` now, as Electrum says it: its height, 0 or -1 in the mempool
/// (-1 with an unconfirmed parent), None if neither.
fn electrum_height(node: &Node, txid: &Txid) -> Result<Option<i64>> {
    let t = node.wallet_call("gettransaction", json!([txid.to_string()]))?;
    if t["confirmations"].as_i64().context("confirmations")? > 0 {
        return Ok(Some(t["blockheight"].as_i64().context("blockheight")?));
    }
    Ok(match node.call("getmempoolentry", json!([txid.to_string()])) {
        Ok(e) => Some(if e["depends"].as_array().unwrap().is_empty() { 0 } else { -1 }),
        Err(_) => None,
    })
}

/// The two transactions followed: `f` pays `x`, `s` spends that output to `y`.
struct Story<'a> {
    node: &'a Node,
    f: Transaction,
    s: Transaction,
    funded: OutPoint,
    paid: OutPoint,
    x: Address,
    y: Address,
}

/// What the node says every subscription's status is.
#[derive(Debug, PartialEq)]
struct Statuses {
    funded: Value,
    paid: Value,
    x: Option<String>,
    y: Option<String>,
}

impl Story<'_> {
    fn heights(&self) -> Result<(i64, Option<i64>)> {
        let f = electrum_height(self.node, &self.f.compute_txid())?.context("the funding tx is gone")?;
        Ok((f, electrum_height(self.node, &self.s.compute_txid())?))
    }

    fn statuses(&self) -> Result<Statuses> {
        let (f, s) = self.heights()?;
        let (ftx, stx) = (self.f.compute_txid(), self.s.compute_txid());
        let funded = match s {
            Some(s) => json!({"funder_height": f, "spender_txhash": stx.to_string(), "spender_height": s}),
            None => json!({"funder_height": f}),
        };
        let paid = match s {
            Some(s) => json!({"funder_height": s}),
            None => json!({}),
        };
        let mut x = vec![(ftx, f)];
        x.extend(s.map(|s| (stx, s)));
        let y: Vec<_> = s.map(|s| (stx, s)).into_iter().collect();
        Ok(Statuses { funded, paid, x: status_of(&x), y: status_of(&y) })
    }
}

fn sh(a: &Address) -> String {
    ScriptHash::of(a.script_pubkey().as_bytes()).to_string()
}

fn spk(a: &Address) -> String {
    hex::encode(a.script_pubkey().as_bytes())
}

fn outpoint_args(op: &OutPoint) -> Value {
    json!([op.txid.to_string(), op.vout])
}

/// The last notification of each subscription among `ns`: the tip, the two outpoints' statuses,
/// the two scripts' statuses (None: not notified).
fn last_notified(ns: &[Value], story: &Story) -> [Option<Value>; 5] {
    let last = |method: &str, subject: &[Value], at: usize| {
        ns.iter()
            .rev()
            .find(|n| n["method"] == method && subject.iter().enumerate().all(|(i, v)| n["params"][i] == *v))
            .map(|n| n["params"][at].clone())
    };
    let op = |op: &OutPoint| [json!(op.txid.to_string()), json!(op.vout)];
    [
        last("blockchain.headers.subscribe", &[], 0),
        last("blockchain.outpoint.subscribe", &op(&story.funded), 2),
        last("blockchain.outpoint.subscribe", &op(&story.paid), 2),
        last("blockchain.scriptpubkey.subscribe", &[json!(sh(&story.x))], 1),
        last("blockchain.scriptpubkey.subscribe", &[json!(sh(&story.y))], 1),
    ]
}

/// Waits until the last notification of each of `c`'s subscriptions says what the node says
/// (its tip, `want`), checks that nothing later contradicts them, and that a fresh session reads
/// the same.
fn expect_notified(what: &str, c: &mut Conn, server: &Server, story: &Story, want: &Statuses) -> Result<()> {
    let node = story.node;
    let tip = node.height()?;
    let header = node.call("getblockheader", json!([node.best_hash()?.to_string(), false]))?;
    let expected = [
        Some(json!({"height": tip, "hex": header})),
        Some(want.funded.clone()),
        Some(want.paid.clone()),
        Some(json!(want.x)),
        Some(json!(want.y)),
    ];
    c.notifications.clear();
    let arrived = c.wait_until(WAIT, |ns| last_notified(ns, story) == expected);
    assert!(
        arrived,
        "{what}: after {WAIT:?} the last notifications are {:#?}, not {expected:#?}",
        last_notified(&c.notifications, story)
    );
    // Nothing later says otherwise, and a fresh session reads the same.
    std::thread::sleep(Duration::from_millis(500));
    c.call("server.ping", json!([]));
    assert_eq!(last_notified(&c.notifications, story), expected, "{what}: {:#?}", c.notifications);
    // Each phase's branch is one block longer than the last: no tip below the one served before
    // was shown while the reorg was applied block by block.
    for n in c.notifications.iter().filter(|n| n["method"] == "blockchain.headers.subscribe") {
        let h = n["params"][0]["height"].as_u64().unwrap();
        assert!(h + 1 >= tip, "{what}: the tip fell back to {h} on the way to {tip}");
    }
    let mut fresh = Conn::open(&server.addr);
    fresh.result("server.version", json!(["t", "1.7"]));
    assert_eq!(
        fresh.result("blockchain.outpoint.get_status", outpoint_args(&story.funded)),
        want.funded,
        "{what}"
    );
    assert_eq!(
        fresh.result("blockchain.outpoint.get_status", outpoint_args(&story.paid)),
        want.paid,
        "{what}"
    );
    assert_eq!(
        fresh.result("blockchain.scriptpubkey.subscribe", json!([spk(&story.x)])),
        json!(want.x),
        "{what}"
    );
    assert_eq!(
        fresh.result("blockchain.scriptpubkey.subscribe", json!([spk(&story.y)])),
        json!(want.y),
        "{what}"
    );
    Ok(())
}

/// Mines one block per entry, each holding exactly those transactions; returns their hashes.
/// Each block pays a new address: an empty block on a parent already built on, in the same
/// second, would otherwise be the very block invalidated before.
fn branch(node: &Node, blocks: &[&[&Transaction]]) -> Result<Vec<BlockHash>> {
    let hashes = blocks
        .iter()
        .map(|txs| {
            let hexes: Vec<String> =
                txs.iter().map(|t| bitcoin::consensus::encode::serialize_hex(*t)).collect();
            let to = node.new_address("bech32")?.to_string();
            let v = node.call("generateblock", json!([to, hexes]))?;
            Ok(v["hash"].as_str().context("generateblock")?.parse()?)
        })
        .collect::<Result<Vec<BlockHash>>>()?;
    assert_eq!(node.best_hash()?, *hashes.last().unwrap(), "the new branch is the node's");
    Ok(hashes)
}

/// Pays a new wallet address `x` (f, sent) and spends that output to another, `y` (s, signed,
/// not sent).
fn make_story(node: &Node) -> Result<Story<'_>> {
    let (x, y) = (node.new_address("bech32")?, node.new_address("bech32m")?);
    let ftxid = node.send(&x, Amount::from_btc(1.0)?)?;
    let fhex = node.call("getrawtransaction", json!([ftxid.to_string()]))?;
    let f: Transaction = bitcoin::consensus::encode::deserialize_hex(fhex.as_str().unwrap())?;
    let vx = f.output.iter().position(|o| o.script_pubkey == x.script_pubkey()).unwrap() as u32;
    let unsigned = node.call(
        "createrawtransaction",
        json!([[{"txid": ftxid.to_string(), "vout": vx}], {y.to_string(): 0.999}]),
    )?;
    let prev = json!([{"txid": ftxid.to_string(), "vout": vx, "scriptPubKey": spk(&x), "amount": 1.0}]);
    let signed = node.wallet_call("signrawtransactionwithwallet", json!([unsigned, prev]))?;
    let s: Transaction = bitcoin::consensus::encode::deserialize_hex(signed["hex"].as_str().unwrap())?;
    let paid = OutPoint { txid: s.compute_txid(), vout: 0 };
    Ok(Story { node, f, s, funded: OutPoint { txid: ftxid, vout: vx }, paid, x, y })
}

/// A 1.7 session subscribed to the tip, both outpoints and both scripts, whose first statuses
/// must be `want`.
fn subscribe(c: &mut Conn, story: &Story, want: &Statuses) {
    assert_eq!(
        c.result("server.version", json!(["t", "1.7"])),
        json!([format!("blkindex {}", env!("CARGO_PKG_VERSION")), "1.7"])
    );
    c.result("blockchain.headers.subscribe", json!([]));
    assert_eq!(c.result("blockchain.outpoint.subscribe", outpoint_args(&story.funded)), want.funded);
    assert_eq!(c.result("blockchain.outpoint.subscribe", outpoint_args(&story.paid)), want.paid);
    assert_eq!(c.result("blockchain.scriptpubkey.subscribe", json!([spk(&story.x)])), json!(want.x));
    assert_eq!(c.result("blockchain.scriptpubkey.subscribe", json!([spk(&story.y)])), json!(want.y));
}

/// The reorgs of the module's comment, one after another, on one subscribed session.
#[test]
fn reorgs_of_several_blocks_notify_1_7_outpoints_and_scriptpubkeys() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    let b = ChainBuilder::new(&node)?;
    b.mine(101)?;
    let base = node.height()? as i64;

    // B1 holds f (pays x), B2 holds s (spends it, pays y), B3 is empty.
    let story = make_story(&node)?;
    let (f, s, funded, paid) = (story.f.clone(), story.s.clone(), story.funded, story.paid);
    let (ftxid, x) = (funded.txid, story.x.clone());
    let first = branch(&node, &[&[&f], &[&s], &[]])?;
    assert_eq!(story.heights()?, (base + 1, Some(base + 2)), "f and s where the test mined them");
    let original = story.statuses()?;

    let (dir, _indexer) = indexed(&node)?;
    let server = Server::start(&node, &dir.path().join("db"))?;
    let mut c = Conn::open(&server.addr);
    subscribe(&mut c, &story, &original);

    // 1. Three blocks undone; a branch of four mines f one block later and s two blocks later.
    node.call("invalidateblock", json!([first[0].to_string()]))?;
    let second = branch(&node, &[&[], &[&f], &[], &[&s]])?;
    assert_eq!(story.heights()?, (base + 2, Some(base + 4)), "f and s moved");
    let moved = story.statuses()?;
    assert_ne!(moved, original);
    expect_notified("1. f and s moved", &mut c, &server, &story, &moved)?;

    // 2. And back: four blocks undone, the first branch again, two blocks longer than before.
    node.call("invalidateblock", json!([second[0].to_string()]))?;
    node.call("reconsiderblock", json!([first[0].to_string()]))?;
    assert_eq!(node.best_hash()?, first[2], "the first branch is back");
    branch(&node, &[&[], &[]])?;
    assert_eq!(story.heights()?, (base + 1, Some(base + 2)), "f and s where they were first");
    assert_eq!(story.statuses()?, original);
    expect_notified("2. back", &mut c, &server, &story, &original)?;

    // 3. Five blocks undone for six empty ones: both back in the mempool, s after its parent.
    node.call("invalidateblock", json!([first[0].to_string()]))?;
    let third = branch(&node, &[&[] as &[&Transaction]; 6])?;
    assert_eq!(story.heights()?, (0, Some(-1)), "f and s unconfirmed");
    let unconfirmed = story.statuses()?;
    expect_notified("3. both in the mempool", &mut c, &server, &story, &unconfirmed)?;

    // 4. Six blocks undone for seven: f mined again, s left in the mempool, now spending a
    // confirmed output (height 0).
    node.call("invalidateblock", json!([third[0].to_string()]))?;
    branch(&node, &[&[], &[&f], &[], &[], &[], &[], &[]])?;
    assert_eq!(story.heights()?, (base + 2, Some(0)), "f confirmed, s unconfirmed");
    let half = story.statuses()?;
    expect_notified("4. f mined again, s in the mempool", &mut c, &server, &story, &half)?;
    let fee = node.call("getmempoolentry", json!([paid.txid.to_string()]))?["fees"]["base"].as_f64().unwrap();
    assert_eq!(
        c.result("blockchain.scriptpubkey.get_history", json!([spk(&x)])),
        json!({"history": [{"tx_hash": ftxid.to_string(), "height": base + 2},
            {"tx_hash": paid.txid.to_string(), "height": 0, "fee": (fee * 1e8).round() as u64}]})
    );
    Ok(())
}

/// No reorg: a block mines a parent and leaves its child in the mempool, where it now spends a
/// confirmed output: Electrum height 0, as the node says (its entry `depends` on nothing).
#[test]
fn a_child_left_in_the_mempool_by_its_parents_block_is_at_height_0() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(101)?;
    let story = make_story(&node)?;
    node.call("sendrawtransaction", json!([bitcoin::consensus::encode::serialize_hex(&story.s)]))?;
    assert_eq!(story.heights()?, (0, Some(-1)), "both unconfirmed, s after its parent");
    let pending = story.statuses()?;
    let (dir, _indexer) = indexed(&node)?;
    let server = Server::start(&node, &dir.path().join("db"))?;
    // The server's first read of the mempool may come after it listens.
    let mut probe = Conn::open(&server.addr);
    probe.result("server.version", json!(["t", "1.7"]));
    let deadline = std::time::Instant::now() + WAIT;
    while probe.result("blockchain.outpoint.get_status", outpoint_args(&story.paid)) != pending.paid {
        assert!(std::time::Instant::now() < deadline, "the server never saw s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Conn::open(&server.addr);
    subscribe(&mut c, &story, &pending);

    branch(&node, &[&[&story.f]])?;
    assert_eq!(story.heights()?, (node.height()? as i64, Some(0)), "f mined, s unconfirmed");
    expect_notified("the parent mined", &mut c, &server, &story, &story.statuses()?)?;
    Ok(())
}
