//! A misbehaving node under the indexer: HTTP 503 "Work queue depth exceeded", slow answers,
//! connections reset or replies cut short (injected by a proxy in front of the real node, since a
//! real node cannot be made to do these on cue), a node reindexing, and blocks replaced at the
//! node while the bulk pass runs. The indexer never exits, and ends equal to a fresh index.
//! (The node stopped and restarted, and `invalidateblock` 200 blocks down, are in `follow`.)

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::proxy::{Fault, Proxy};
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

use crate::follow::{assert_matches_node, bin, following, wait_for_log};

/// Fails when the indexer has exited.
fn alive(f: &mut Indexer) -> Result<()> {
    if let Some(status) = f.child.try_wait()? {
        bail!("the indexer exited ({status}): {}", std::fs::read_to_string(&f.log)?);
    }
    Ok(())
}

fn log(f: &Indexer) -> String {
    std::fs::read_to_string(&f.log).unwrap_or_default()
}

#[test]
fn the_follower_rides_out_503s_resets_cut_replies_and_delays() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let proxy = Proxy::start(&node.rpc_addr())?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut f = Indexer::follow(&bin(), &node, &db, &["--daemon-rpc-addr", proxy.addr()])?;
    f.wait_synced(&node, &db)?;
    let b = ChainBuilder::new(&node)?;

    // Each fault alone, for every call, while blocks arrive: the follower waits, then follows.
    let faults = [
        (Fault::Busy, "Work queue depth exceeded"),
        (Fault::Reset, "cannot reach bitcoind"),
        (Fault::CutShort, "the reply was cut short"),
    ];
    for (i, (fault, logged)) in faults.into_iter().enumerate() {
        proxy.always(fault);
        b.mine(2)?;
        wait_for_log(&f, logged, 30)?;
        std::thread::sleep(Duration::from_secs(2));
        alive(&mut f)?;
        proxy.heal();
        f.wait_synced(&node, &db)?;
        let text = log(&f);
        assert_eq!(text.matches("node unavailable").count(), i + 1, "logged once per outage:\n{text}");
        assert_eq!(text.matches("the node is back").count(), i + 1, "{text}");
    }

    // Slow answers are answers: followed without an error.
    proxy.always(Fault::Delay(Duration::from_millis(300)));
    b.mine(2)?;
    f.wait_synced(&node, &db)?;
    assert_eq!(log(&f).matches("node unavailable").count(), faults.len());

    // Everything mixed with real answers, through wallet traffic and a reorg.
    let delay = Fault::Delay(Duration::from_millis(1500));
    let pass = Fault::Pass;
    proxy.set(&[delay, Fault::Busy, pass, Fault::Reset, pass, Fault::CutShort, pass, pass, pass]);
    b.wallet_traffic(2)?;
    b.reorg_with_conflict(2)?;
    // Until every kind has been met at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let injected = loop {
        let i = proxy.injected();
        if i.busy > 0 && i.delayed > 0 && i.reset > 0 && i.cut_short > 0 {
            break i;
        }
        anyhow::ensure!(Instant::now() < deadline, "not every fault met in 60 s: {i:?}");
        alive(&mut f)?;
        std::thread::sleep(Duration::from_millis(100));
    };
    alive(&mut f)?;
    proxy.heal();
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    assert!(f.stop()?.success());
    eprintln!("injected {injected:?}");
    Ok(())
}

/// At start, before and during the bulk pass: an overloaded node is waited for (the pass resumes
/// where it was), not a reason to exit.
#[test]
fn the_bulk_pass_waits_for_an_overloaded_or_resetting_node() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let proxy = Proxy::start(&node.rpc_addr())?;
    proxy.always(Fault::Busy);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut f = Indexer::follow(&bin(), &node, &db, &["--daemon-rpc-addr", proxy.addr()])?;
    wait_for_log(&f, "node unavailable during checking the node", 30)?;
    std::thread::sleep(Duration::from_secs(2));
    alive(&mut f)?;
    // Through the checks to the scan; a block mined after it makes the pass ask the node for its
    // header, and from then on every call is reset.
    proxy.heal();
    proxy.hold("getbestblockhash");
    proxy.wait_held(Duration::from_secs(30)).map_err(|e| e.context(log(&f)))?;
    ChainBuilder::new(&node)?.mine(1)?;
    proxy.always(Fault::Reset);
    proxy.release();
    wait_for_log(&f, "node unavailable during the bulk pass", 30)?;
    std::thread::sleep(Duration::from_secs(2));
    alive(&mut f)?;
    proxy.heal();
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    wait_for_log(&f, "the node is back; the bulk pass goes on", 5)?;
    Ok(())
}

/// Blocks replaced at the node while the bulk pass runs: between the scan of the files and the
/// question for the best block (the new branch is not in the scan: its blocks come over RPC), and
/// after the chain was chosen (the pass indexes a branch that is already stale, and the follower
/// undoes it). Either way the index ends equal to a fresh one.
#[test]
fn a_reorg_during_the_bulk_pass_ends_equal_to_a_fresh_index() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let b = ChainBuilder::new(&node)?;
    let proxy = Proxy::start(&node.rpc_addr())?;
    let dir = tempfile::tempdir()?;

    // After the scan, before the best block is asked.
    proxy.hold("getbestblockhash");
    let db = dir.path().join("db-a");
    let mut f = Indexer::follow(&bin(), &node, &db, &["--daemon-rpc-addr", proxy.addr()])?;
    proxy.wait_held(Duration::from_secs(60)).map_err(|e| e.context(log(&f)))?;
    let stale = b.reorg_with_conflict(3)?;
    proxy.release();
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    let text = log(&f);
    assert!(!text.contains("reorg: undoing"), "the new branch was indexed at once:\n{text}");
    assert!(f.stop()?.success());
    eprintln!("replaced {} blocks between the scan and the chain", stale.len());

    // After the chain is chosen: a block mined after the scan is fetched from the node (held
    // there), and meanwhile the node replaces it and its parent.
    proxy.hold("getbestblockhash");
    let db = dir.path().join("db-b");
    let mut f = Indexer::follow(&bin(), &node, &db, &["--daemon-rpc-addr", proxy.addr()])?;
    proxy.wait_held(Duration::from_secs(60)).map_err(|e| e.context(log(&f)))?;
    let tip = b.mine(1)?[0];
    proxy.hold("getblock");
    proxy.wait_held(Duration::from_secs(30)).map_err(|e| e.context(log(&f)))?;
    let parent = node.call("getblockheader", json!([tip.to_string()]))?["previousblockhash"].clone();
    node.call("invalidateblock", json!([parent]))?;
    // To another address: the same coinbase in the same second would remake an invalidated block.
    node.mine(3, &node.new_address("legacy")?)?;
    proxy.release();
    wait_for_log(&f, "reorg: undoing 2 block(s)", 60)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    Ok(())
}

/// The node restarted with `-reindex` under the follower: while it rebuilds its chain from its
/// files its best chain has less work than the index's, so the follower waits (and says so),
/// never undoes a block, and follows again once the node is back at its tip.
#[test]
fn the_node_reindexing_under_the_follower() -> Result<()> {
    let (mut node, dir, db, mut f) = following(&["--poll-secs", "0.05"])?;
    // Enough blocks that the reindex (about 2,000 a second here) outlasts the follower's first
    // retry after the restart (1 s of back-off) about three times over, so it sees it midway.
    for _ in 0..5 {
        ChainBuilder::new(&node)?.mine(700)?;
    }
    f.wait_synced(&node, &db)?;
    let tip = node.height()?;
    node.opts.extra_args.push("-reindex".into());
    let t0 = Instant::now();
    node.restart()?;
    node.opts.extra_args.pop();
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.height()? < tip {
        anyhow::ensure!(Instant::now() < deadline, "the node did not reindex to {tip} in 120 s");
        alive(&mut f)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("reindexed {tip} blocks in {:?}", t0.elapsed());
    ChainBuilder::new(&node)?.mine(2)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    let text = log(&f);
    assert!(!text.contains("reorg: undoing"), "{text}");
    assert!(text.contains("node unavailable"), "the restart itself: {text}");
    assert!(text.contains("less work than the index's"), "the reindex was not seen midway:\n{text}");
    assert!(text.contains("following again"), "{text}");
    Ok(())
}
