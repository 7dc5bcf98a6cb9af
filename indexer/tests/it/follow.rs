//! The follower against real regtest nodes: after blocks one by one and in bursts, reorgs of
//! several depths with conflicting transactions, a node restart and SIGKILLs at random moments,
//! the index equals a fresh bulk index of the node's chain and answers as the node does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::expect::expected;
use blkindex_testkit::verify::{
    check, digest, first_header_difference, indexer_command, open_index, Digest, Indexer,
};
use blkindex_testkit::{Node, NodeOptions};

pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_blkindex-indexer"))
}

pub(crate) fn fresh_db(node: &Node, dir: &Path) -> PathBuf {
    dir.join(format!("fresh-{}", node.height().unwrap()))
}

/// A fresh bulk index of the node's chain as it is now, to compare with.
pub(crate) fn fresh_digest(node: &Node, dir: &Path) -> Digest {
    let db = fresh_db(node, dir);
    let out =
        indexer_command(&bin(), node, &db).args(["--no-follow", "--progress", "none"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    digest(&db)
}

/// The follower's index equals a fresh one and answers every query as the node does.
pub(crate) fn assert_matches_node(f: &mut Indexer, node: &Node, db: &Path, dir: &Path) -> Result<()> {
    f.wait_synced(node, db)?;
    // A tweak pass runs beside the follower: the digest covers its rows, so wait for it too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while open_index(node, db).tweaks_pending()?.is_some() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the tweak pass did not finish");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let fresh = fresh_digest(node, dir);
    if digest(db) != fresh {
        let diff = first_header_difference(db, &fresh_db(node, dir));
        let log = std::fs::read_to_string(&f.log).unwrap_or_default();
        let keep = std::env::temp_dir().join(format!("blkindex-mismatch-{}", std::process::id()));
        let _ = Command::new("cp").arg("-r").arg(dir).arg(&keep).status();
        let _ = Command::new("cp").arg("-r").arg(&node.datadir).arg(keep.join("node")).status();
        panic!("followed index differs from a fresh bulk index: {diff:?}; kept in {}\n{log}", keep.display());
    }
    check(node, &open_index(node, db), &expected(node)?)
}

/// A node with the rich test chain and an indexer following it, synced.
pub(crate) fn following(extra: &[&str]) -> Result<(Node, tempfile::TempDir, PathBuf, Indexer)> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut f = Indexer::follow(&bin(), &node, &db, extra)?;
    f.wait_synced(&node, &db)?;
    Ok((node, dir, db, f))
}

#[test]
fn follows_blocks_one_by_one_and_in_bursts() -> Result<()> {
    let (node, dir, db, mut f) = following(&[])?;
    let b = ChainBuilder::new(&node)?;
    b.wallet_traffic(5)?; // five blocks, one at a time, with transactions
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    b.mine(100)?; // a burst
    b.wallet_traffic(1)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    assert!(f.stop()?.success());
    Ok(())
}

#[test]
fn follows_reorgs_of_depth_1_6_and_30_with_conflicting_transactions() -> Result<()> {
    let (node, dir, db, mut f) = following(&[])?;
    let b = ChainBuilder::new(&node)?;
    for depth in [1, 6, 30] {
        b.reorg_with_conflict(depth)?;
        assert_matches_node(&mut f, &node, &db, dir.path())?;
    }
    Ok(())
}

#[test]
fn follows_over_rpc_and_serves_those_blocks_from_the_index() -> Result<()> {
    let (node, dir, db, mut f) = following(&["--follow-source", "rpc"])?;
    let b = ChainBuilder::new(&node)?;
    b.wallet_traffic(3)?;
    b.reorg_with_conflict(2)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    Ok(())
}

#[test]
fn node_restarted_under_the_follower() -> Result<()> {
    let (mut node, dir, db, mut f) = following(&[])?;
    node.stop()?;
    std::thread::sleep(Duration::from_secs(2)); // the follower meets a dead node and waits
    node.restart()?;
    let b = ChainBuilder::new(&node)?;
    b.wallet_traffic(3)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    let log = std::fs::read_to_string(&f.log)?;
    assert!(log.contains("node unavailable"), "{log}");
    assert!(log.contains("the node is back"), "{log}");
    Ok(())
}

#[test]
fn killed_at_random_moments_while_blocks_and_reorgs_arrive() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let b = ChainBuilder::new(&node)?;
    let mut seed = match std::env::var("BLKINDEX_TEST_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64,
    };
    eprintln!("kill seed {seed} (BLKINDEX_TEST_SEED={seed} repeats the choices, not the timing)");
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    for round in 0..20 {
        let mut f = Indexer::follow(&bin(), &node, &db, &["--follow-gap", "100000"])?;
        // Change the chain while the follower works: blocks, bursts, or a reorg.
        match next() % 4 {
            0 => drop(b.mine(1 + next() % 5)?),
            1 => b.wallet_traffic(1)?,
            2 => drop(b.reorg_with_conflict(1 + next() % 4)?),
            _ => drop(b.mine(20)?),
        }
        std::thread::sleep(Duration::from_millis(next() % 400));
        f.kill9()?;
        eprintln!("round {round}: killed at height {}", node.height()?);
    }
    let mut f = Indexer::follow(&bin(), &node, &db, &[])?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    Ok(())
}

/// Waits until the follower's log holds `what`; returns the log.
pub(crate) fn wait_for_log(f: &Indexer, what: &str, secs: u64) -> Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let log = std::fs::read_to_string(&f.log)?;
        if log.contains(what) {
            return Ok(log);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no {what:?} in the log within {secs} s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn waits_while_the_node_has_less_work_and_follows_when_it_is_back() -> Result<()> {
    let (node, dir, db, mut f) = following(&[])?;
    let b = ChainBuilder::new(&node)?;
    b.mine(100)?;
    f.wait_synced(&node, &db)?;
    let tip = node.height()?;
    // The node loses its last 200 blocks, as after an invalidateblock or while it reindexes: its
    // best chain has less work than the index, which must wait, not undo 200 blocks.
    let victim = node.call("getblockhash", json!([tip - 199]))?;
    node.call("invalidateblock", json!([victim]))?;
    assert_eq!(node.height()?, tip - 200);
    wait_for_log(&f, "less work than the index's", 30)?;
    std::thread::sleep(Duration::from_secs(2)); // four more polls
    let log = std::fs::read_to_string(&f.log)?;
    assert!(!log.contains("reorg: undoing"), "{log}");
    assert_eq!(log.matches("less work than").count(), 1, "logged once, not at every poll:\n{log}");
    node.call("reconsiderblock", json!([victim]))?;
    b.mine(2)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    assert!(std::fs::read_to_string(&f.log)?.contains("following again"));
    Ok(())
}

#[test]
fn a_reorg_deeper_than_max_reorg_waits_for_the_operator() -> Result<()> {
    let (node, dir, db, mut f) = following(&["--max-reorg", "5"])?;
    let b = ChainBuilder::new(&node)?;
    let tip = node.height()?;
    // Ten of the index's blocks leave the node's chain for a branch with more work.
    let victim = node.call("getblockhash", json!([tip - 9]))?;
    node.call("invalidateblock", json!([victim]))?;
    b.mine(12)?;
    let log = wait_for_log(&f, "reorganized 10 blocks deep, more than --max-reorg 5", 30)?;
    assert!(!log.contains("reorg: undoing"), "{log}");
    assert!(f.stop()?.success());

    // At start the bulk path refuses the same reorg, and changes nothing.
    let before = digest(&db);
    let out = indexer_command(&bin(), &node, &db)
        .args(["--no-follow", "--progress", "none", "--max-reorg", "5"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("more than --max-reorg 5"), "{stderr}");
    assert!(digest(&db) == before, "a refused reorg changed the index");

    // Allowed by the operator: undone block by block, and followed.
    let mut f = Indexer::follow(&bin(), &node, &db, &["--max-reorg", "10"])?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    Ok(())
}

/// With polling as good as off (an hour), new blocks are followed within moments: the follower
/// wakes on the node's ZMQ notification. Without ZMQ the same blocks would wait for the hour.
#[test]
fn the_follower_wakes_on_zmq() -> Result<()> {
    let (node, _dir, db, mut f) = following(&["--poll-secs", "3600"])?;
    // The subscriber logs its line from its own thread, once connected: after the follower's.
    let log = wait_for_log(&f, "listening to ZMQ notifications", 30)?;
    assert!(log.contains("following: ZMQ notifications"), "{log}");
    let b = ChainBuilder::new(&node)?;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        b.mine(1)?;
        f.wait_synced(&node, &db)?;
        // Generous against a busy machine, and still far from the poll interval.
        assert!(t0.elapsed() < Duration::from_secs(20), "followed after {:?}", t0.elapsed());
    }
    Ok(())
}
