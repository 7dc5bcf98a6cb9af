//! Replicas: `blkindex-indexer checkpoint` of a running (or stopped) indexer, the checkpoint
//! copied to a second data directory, and a second indexer on it following a second node that
//! has the first node's chain (its own blk files, in its own order, its own `xor.dat`) and mined
//! further. It must end equal to a fresh bulk index of the second node's chain and answer from the
//! second node's files. And the refusals: mid bulk load, another network or genesis, a copy whose
//! tip left the node's chain deeper than `--max-reorg`, or whose undone blocks the node lacks.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bitcoin::Amount;
use serde_json::json;

use blkindex_shared::schema::meta;
use blkindex_shared::store::{Mode, Store};
use blkindex_testkit::chain::{build_rich_chain, hash_of, ChainBuilder};
use blkindex_testkit::expect::expected;
use blkindex_testkit::verify::{check, digest, indexer_command, open_index, Indexer};
use blkindex_testkit::{Node, NodeOptions};

use crate::follow::{assert_matches_node, bin};

/// `blkindex-indexer --db <db> checkpoint <dir>`.
fn checkpoint(node: &Node, db: &Path, dir: &Path) -> Output {
    indexer_command(&bin(), node, db).arg("checkpoint").arg(dir).output().unwrap()
}

fn checkpoint_ok(node: &Node, db: &Path, dir: &Path) -> (u32, String) {
    let out = checkpoint(node, db, dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "checkpoint failed: {}", String::from_utf8_lossy(&out.stderr));
    // "checkpoint DIR taken at height H, block HASH"
    let rest = text.split("taken at height ").nth(1).expect(&text);
    let (h, hash) = rest.trim().split_once(", block ").expect(&text);
    (h.parse().unwrap(), hash.to_string())
}

/// A copy of a checkpoint, as to another host (`cp -a`; across hosts, `rsync -a` or `scp -rp`).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(status.unwrap().success(), "copying {}", from.display());
}

/// `to` connects to `from` over P2P (loopback) and takes its chain, then they part.
fn sync_over_p2p(from: &Node, to: &Node) -> Result<()> {
    let peer = format!("127.0.0.1:{}", from.p2p_port);
    to.call("addnode", json!([peer, "onetry"]))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while to.best_hash()? != from.best_hash()? {
        ensure!(Instant::now() < deadline, "no P2P sync in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    to.call("disconnectnode", json!([peer]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while to.call("getconnectioncount", json!([]))?.as_u64() != Some(0) {
        ensure!(Instant::now() < deadline, "still connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `to` gets `from`'s blocks `first..=last` by submitblock.
fn submit_blocks(from: &Node, to: &Node, first: u64, last: u64) -> Result<()> {
    for h in first..=last {
        let raw = from.call("getblock", json!([hash_of(from, h)?.to_string(), 0]))?;
        let r = to.call("submitblock", json!([raw]))?;
        ensure!(r.is_null(), "submitblock {h}: {r}");
    }
    Ok(())
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The indexer on a copy, expected to stop with `msg`.
fn refused(node: &Node, db: &Path, extra: &[&str], msg: &str) {
    let out = indexer_command(&bin(), node, db)
        .args(["--progress", "none", "--no-follow"])
        .args(extra)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains(msg), "wanted a refusal with {msg:?}: {err}");
}

#[test]
fn a_checkpoint_of_a_running_indexer_starts_a_replica_that_follows_another_node() -> Result<()> {
    let node1 = Node::start(NodeOptions::default())?;
    // A reorg leaves a stale block in node 1's files that node 2 never gets: node 2's files hold
    // the same blocks at other places.
    build_rich_chain(&node1)?;
    let dir = tempfile::tempdir()?;
    let db1 = dir.path().join("host1-db");
    let mut f1 = Indexer::follow(&bin(), &node1, &db1, &[])?;
    f1.wait_synced(&node1, &db1)?;

    // Taken by the running indexer (it holds the primary) over its socket, which it opens once
    // it follows (the bulk pass before that can reach the node's tip).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db1.join("checkpoint.sock").exists() {
        ensure!(Instant::now() < deadline, "the indexer never listened for checkpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cp = dir.path().join("checkpoint");
    let (height, hash) = checkpoint_ok(&node1, &db1, &cp);
    assert_eq!((height as u64, hash.clone()), (node1.height()?, node1.best_hash()?.to_string()));
    let log1 = std::fs::read_to_string(&f1.log)?;
    assert!(log1.contains("checkpoint taken"), "the running indexer did not take it: {log1}");
    // A second one into the same directory is refused (RocksDB would fail half-way).
    let again = checkpoint(&node1, &db1, &cp);
    assert!(!again.status.success() && stderr_of(&again).contains("exists"), "{}", stderr_of(&again));

    // Host 2: its own node with node 1's chain, then blocks of its own with transactions that
    // spend coins of the copied history (signed by node 1's wallet, mined by node 2).
    let node2 = Node::start(NodeOptions::default())?;
    sync_over_p2p(&node1, &node2)?;
    let b2 = ChainBuilder::new(&node2)?;
    let mine_one_of_node1s = || -> Result<()> {
        let txid = node1.send(&b2.miner, Amount::from_sat(1_000_000))?;
        let raw = node1.call("getrawtransaction", json!([txid.to_string()]))?;
        node2.call("sendrawtransaction", json!([raw]))?;
        b2.mine(1)?;
        Ok(())
    };
    for _ in 0..3 {
        mine_one_of_node1s()?;
    }
    let host2 = dir.path().join("host2");
    std::fs::create_dir_all(&host2)?;
    let db2 = host2.join("db");
    copy_dir(&cp, &db2);
    drop(f1);

    // A copy brought up by the bulk path instead (as when the node is more than --follow-gap
    // ahead): the same places rewritten, then a load on top of the copy.
    let bulk_copy = host2.join("bulk-copy");
    copy_dir(&cp, &bulk_copy);
    let out =
        indexer_command(&bin(), &node2, &bulk_copy).args(["--no-follow", "--progress", "none"]).output()?;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("block places now this node's"), "{}", stderr_of(&out));
    assert_eq!(
        digest(&bulk_copy),
        crate::follow::fresh_digest(&node2, dir.path()),
        "a bulk pass on the copy"
    );
    check(&node2, &open_index(&node2, &bulk_copy), &expected(&node2)?)?;

    let mut f2 = Indexer::follow(&bin(), &node2, &db2, &[])?;
    assert_matches_node(&mut f2, &node2, &db2, dir.path())?;
    let log2 = std::fs::read_to_string(&f2.log)?;
    assert!(log2.contains("this index is a checkpoint"), "{log2}");
    assert!(!log2.contains(" 0 row(s) rewritten"), "node 2's files put no block elsewhere: {log2}");
    assert!(log2.contains("following without a bulk pass"), "{log2}");
    {
        let s = Store::open(&db2, Mode::Secondary(dir.path().join("probe")))?;
        assert!(s.get_meta(meta::CHECKPOINT)?.is_none(), "the checkpoint mark stayed");
    }
    // And it follows on: a block mined after.
    mine_one_of_node1s()?;
    assert_matches_node(&mut f2, &node2, &db2, dir.path())?;
    assert!(f2.stop()?.success());
    Ok(())
}

#[test]
fn replicas_are_refused_for_another_chain_a_deep_fork_or_missing_blocks_and_unwind_within_the_bound(
) -> Result<()> {
    let node1 = Node::start(NodeOptions::default())?;
    let b1 = ChainBuilder::new(&node1)?;
    b1.mine(105)?;
    b1.wallet_traffic(3)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();

    // Mid bulk load (a staged load aborted at its second checkpoint): refused, no directory made.
    let loading = d.join("loading");
    let out = indexer_command(&bin(), &node1, &loading)
        .args(["--no-follow", "--progress", "none", "--batch-kb", "1", "--threads", "1"])
        .env("BLKINDEX_FAILPOINT", "staged:2")
        .output()?;
    assert!(stderr_of(&out).contains("aborting"), "{}", stderr_of(&out));
    let out = checkpoint(&node1, &loading, &d.join("cp-loading"));
    assert!(!out.status.success(), "a checkpoint mid bulk load");
    assert!(
        stderr_of(&out).contains("mid bulk load: a staged bulk load is under way"),
        "{}",
        stderr_of(&out)
    );
    assert!(!d.join("cp-loading").exists());
    // An indexer in its bulk pass holds the index and does not take requests yet: said so.
    let mut running =
        crate::bulk::staging_started(&node1, &d.join("running"), &["--batch-kb", "1", "--threads", "1"])?;
    let out = checkpoint(&node1, &d.join("running"), &d.join("cp-running"));
    let _ = running.kill();
    let _ = running.wait();
    assert!(
        !out.status.success()
            && stderr_of(&out).contains("takes checkpoint requests only once it follows the node"),
        "{}",
        stderr_of(&out)
    );

    // No indexer running: the command opens the index itself.
    let db1 = d.join("db1");
    let out = indexer_command(&bin(), &node1, &db1).args(["--no-follow", "--progress", "none"]).output()?;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let cp = d.join("cp");
    let (tip, _) = checkpoint_ok(&node1, &db1, &cp);
    assert_eq!(tip as u64, node1.height()?);

    // Another network's or another genesis's index (the stamps a copy carries) is refused.
    for (key, value, msg) in [
        (meta::NETWORK, &b"signet"[..], "index was built for signet, not regtest"),
        (meta::GENESIS, &[7u8; 32][..], "index was built for a regtest chain with another genesis block"),
    ] {
        let copy = d.join(format!("copy-{}", String::from_utf8_lossy(key)));
        copy_dir(&cp, &copy);
        Store::open(&copy, Mode::Bulk)?.put_meta(&[(key, Some(value))])?;
        refused(&node1, &copy, &[], msg);
    }

    // Node 2 had node 1's chain, then a block three below the copy's tip was invalidated and a
    // longer branch mined: the copy's last three blocks are stale there, and node 2 has them
    // (it connected them once, so their undo data too).
    let node2 = Node::start(NodeOptions::default())?;
    sync_over_p2p(&node1, &node2)?;
    node2.call("invalidateblock", json!([hash_of(&node2, tip as u64 - 2)?.to_string()]))?;
    let b2 = ChainBuilder::new(&node2)?;
    b2.mine(5)?;
    let deep = d.join("copy-deep");
    copy_dir(&cp, &deep);
    refused(&node2, &deep, &["--max-reorg", "2"], "they part more than --max-reorg 2 blocks below it");

    // Node 3 never saw the copy's last three blocks: they cannot be undone there.
    let node3 = Node::start(NodeOptions::default())?;
    submit_blocks(&node1, &node3, 1, tip as u64 - 3)?;
    ChainBuilder::new(&node3)?.mine(5)?;
    let missing = d.join("copy-missing");
    copy_dir(&cp, &missing);
    refused(&node3, &missing, &[], "whose bytes and undo data undoing it needs");

    // Within the bound on node 2: the three blocks undone, node 2's branch followed, and the
    // index equals a fresh one of node 2's chain.
    let within = d.join("copy-within");
    copy_dir(&cp, &within);
    let mut f = Indexer::follow(&bin(), &node2, &within, &["--max-reorg", "3"])?;
    assert_matches_node(&mut f, &node2, &within, d)?;
    let log = std::fs::read_to_string(&f.log).context("log")?;
    assert!(log.contains("the follower undoes them") && log.contains("reorg: undoing 3 block(s)"), "{log}");
    assert!(f.stop()?.success());
    Ok(())
}
