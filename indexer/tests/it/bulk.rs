//! The bulk indexer against real regtest nodes: every answer the index gives equals the node's.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::Result;
use serde_json::json;

use blkindex_shared::blkfile::{list_files, BlockFiles, FileKind};
use blkindex_shared::query::IndexReader;
use blkindex_shared::store::{Mode, Store};
use blkindex_testkit::chain::{build_rich_chain, copy_blocks_reversed, ChainBuilder};
use blkindex_testkit::expect::{expected, Expected};
use blkindex_testkit::verify::{check, digest, indexer_command, open_index};
use blkindex_testkit::{Node, NodeOptions};

fn indexer(node: &Node, db: &Path, extra: &[&str]) -> Output {
    let out = indexer_command(Path::new(env!("CARGO_BIN_EXE_blkindex-indexer")), node, db)
        .args(["--no-follow", "--progress", "log"])
        .args(extra)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn index_ok(node: &Node, db: &Path, extra: &[&str]) -> String {
    let out = indexer(node, db, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "indexer failed: {stderr}");
    stderr
}

const MAPPED: &str = "node stopped: blk files memory-mapped";
const POSITIONAL: &str = "node running: blk files read with positional reads";
const RELEASED: &str = "blk files unmapped; the node's data-dir lock released";

fn open(node: &Node, db: &Path) -> IndexReader {
    open_index(node, db)
}

#[test]
fn rich_chain_with_xor_matches_the_node() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let key = std::fs::read(node.blocks_dir().join("xor.dat"))?;
    assert_ne!(key, vec![0u8; 8], "the node should obfuscate its files");
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // The node runs: its lock cannot be taken, so nothing is mapped.
    let log = index_ok(&node, &db, &[]);
    assert!(log.contains(POSITIONAL) && !log.contains(MAPPED), "{log}");
    let index = open(&node, &db);
    check(&node, &index, &want)?;
    // The reorg left stale blocks in the files; their transactions are not indexed.
    let stale = node.call("getchaintips", json!([]))?;
    let stale_tip =
        stale.as_array().unwrap().iter().find(|t| t["status"] != "active").expect("a stale branch");
    let stale_block = node.call("getblock", json!([stale_tip["hash"], 1]))?;
    for txid in stale_block["tx"].as_array().unwrap() {
        let txid: bitcoin::Txid = txid.as_str().unwrap().parse()?;
        if !want.txs.iter().any(|t| t.0 == txid) {
            assert!(index.txs_by_txid(&txid)?.is_empty(), "stale tx {txid} is indexed");
        }
    }
    // Re-running on an up-to-date index changes nothing.
    let before = digest(&db);
    index_ok(&node, &db, &[]);
    assert_eq!(digest(&db), before);
    Ok(())
}

#[test]
fn many_blk_files_without_xor_match_the_node() -> Result<()> {
    let node = Node::start(NodeOptions { fastprune: true, no_xor: true, ..Default::default() })?;
    build_rich_chain(&node)?;
    // Enough blocks to fill several 64 KiB files, and traffic spread across them.
    let b = ChainBuilder::new(&node)?;
    b.mine(400)?;
    b.wallet_traffic(6)?;
    b.mine(400)?;
    b.wallet_traffic(6)?;
    assert!(
        !node.blocks_dir().join("xor.dat").exists()
            || std::fs::read(node.blocks_dir().join("xor.dat"))? == vec![0u8; 8]
    );
    let files = list_files(&node.blocks_dir(), FileKind::Blk)?;
    assert!(files.len() >= 5, "expected many blk files, found {}", files.len());
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // A small memory budget makes many batches.
    index_ok(&node, &db, &["--mem-budget-mb", "1"]);
    check(&node, &open(&node, &db), &want)?;
    Ok(())
}

#[test]
fn blocks_stored_out_of_height_order() -> Result<()> {
    let a = Node::start(NodeOptions::default())?;
    let b = ChainBuilder::new(&a)?;
    b.mine(105)?;
    b.wallet_traffic(3)?;
    let c = Node::start(NodeOptions::default())?;
    copy_blocks_reversed(&a, &c, 1)?;
    // c's first blk file holds the tip before the blocks below it.
    let files = BlockFiles::open(&c.blocks_dir())?;
    let recs = blk_records(&files, 0);
    let header_at = |i: usize| {
        let h = files.read(FileKind::Blk, 0, recs[i].offset, 80).unwrap();
        bitcoin::consensus::deserialize::<bitcoin::block::Header>(&h).unwrap().block_hash()
    };
    assert_eq!(header_at(1), c.best_hash()?, "the tip should be stored right after genesis");
    let want = expected(&c)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    index_ok(&c, &db, &[]);
    check(&c, &open(&c, &db), &want)?;
    Ok(())
}

#[test]
fn offline_index_of_a_stopped_node() -> Result<()> {
    let mut node = Node::start(NodeOptions { fastprune: true, ..Default::default() })?;
    let b = ChainBuilder::new(&node)?;
    b.mine(110)?;
    b.wallet_traffic(3)?;
    let made = b.special_outputs()?;
    b.spend_specials(&made)?;
    let want = expected(&node)?;
    node.stop()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // The node is stopped: the pass takes its lock, maps the blk files, and releases the lock
    // when it ends (the node then starts again).
    let log = index_ok(&node, &db, &["--offline"]);
    assert!(log.contains(MAPPED) && log.contains("until the bulk pass ends"), "{log}");
    assert!(log.find(RELEASED) > log.find(MAPPED), "{log}");
    // Many small batches: the maps are dropped between them and made again.
    let small = dir.path().join("small");
    let log = index_ok(&node, &small, &["--offline", "--batch-kb", "8"]);
    assert!(log.contains(MAPPED) && log.contains(RELEASED), "{log}");
    node.restart()?;
    check(&node, &open(&node, &db), &want)?;
    check(&node, &open(&node, &small), &want)?;
    Ok(())
}

/// The proof behind mapping: while the bulk pass holds the node's data-dir lock (taken as the
/// pass takes it), a real bitcoind started on that data dir refuses to start, so none can change
/// a mapped file; released, the node starts.
#[test]
fn a_node_cannot_start_while_the_bulk_pass_holds_its_lock() -> Result<()> {
    let mut node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(3)?;
    let config = blkindex_shared::config::NodeConfig::derive(
        "regtest".parse::<blkindex_shared::Net>().unwrap(),
        &node.datadir,
        None,
        None,
        None,
    )?;
    let err = blkindex_indexer::take_node_lock(&config).unwrap_err();
    assert!(err.held && err.reason.contains("cannot lock"), "{err}");
    let height = node.height()?;
    node.stop()?;
    let lock = blkindex_indexer::take_node_lock(&config)?;
    let stderr = node.start_refused(std::time::Duration::from_secs(60))?;
    let debug_log = std::fs::read_to_string(node.datadir.join("regtest/debug.log")).unwrap_or_default();
    assert!(
        stderr.contains("Cannot obtain a lock on") || debug_log.contains("Cannot obtain a lock on"),
        "{stderr}"
    );
    drop(lock);
    node.restart()?;
    assert_eq!(node.height()?, height);
    Ok(())
}

#[test]
fn sibling_undo_records_are_told_apart_by_the_node() -> Result<()> {
    // The reorg's new branch starts with a block shaped like the stale one it replaced (same
    // parent, one transaction of one input) but spending another coin, so two different rev
    // records fit it. Offline that must be a clear error, not a guess; with the node it is
    // resolved exactly.
    let mut node = Node::start(NodeOptions::default())?;
    let b = ChainBuilder::new(&node)?;
    b.mine(110)?;
    b.wallet_traffic(2)?;
    b.reorg_with_lookalike(2)?;
    b.wallet_traffic(1)?;
    let want = expected(&node)?;
    node.stop()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let out = indexer(&node, &db, &["--offline"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("several undo records fit"), "{stderr}");
    node.restart()?;
    index_ok(&node, &db, &[]);
    check(&node, &open(&node, &db), &want)?;
    Ok(())
}

#[test]
fn identical_sibling_undo_records_need_no_node() -> Result<()> {
    // The rich chain's reorg replaces its first stale block by one spending the same coin: the
    // two siblings' undo records are byte for byte the same, so either gives the block's rows,
    // offline too.
    let mut node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let want = expected(&node)?;
    node.stop()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    index_ok(&node, &db, &["--offline"]);
    node.restart()?;
    check(&node, &open(&node, &db), &want)?;
    Ok(())
}

#[test]
fn wrong_network_and_foreign_db_are_refused() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(5)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    index_ok(&node, &db, &[]);
    // The same regtest data dir read as signet: the signet folder does not exist.
    let out = Command::new(env!("CARGO_BIN_EXE_blkindex-indexer"))
        .args(["--network", "signet", "--no-follow", "--offline", "--blocksdir"])
        .arg(node.blocks_dir())
        .arg("--datadir")
        .arg(&node.datadir)
        .arg("--db")
        .arg(dir.path().join("other"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("holds regtest blocks, not signet"), "{err}");
    // A regtest node's RPC given to a testnet4 indexer.
    let out = Command::new(env!("CARGO_BIN_EXE_blkindex-indexer"))
        .args(["--network", "testnet4", "--no-follow", "--blocksdir"])
        .arg(node.blocks_dir())
        .arg("--datadir")
        .arg(&node.datadir)
        .arg("--db")
        .arg(dir.path().join("third"))
        .args(["--daemon-rpc-addr", &node.rpc_addr()])
        .arg("--cookie")
        .arg(node.cookie())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is on regtest, not testnet4"), "{err}");
    // A regtest DB opened for testnet4.
    let out = Command::new(env!("CARGO_BIN_EXE_blkindex-indexer"))
        .args(["--network", "testnet4", "--no-follow", "--offline", "--blocksdir"])
        .arg(node.blocks_dir())
        .arg("--datadir")
        .arg(&node.datadir)
        .arg("--db")
        .arg(&db)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("built for regtest, not testnet4"), "{err}");
    // An index of the format before this build's (4: tweaks computed by the bulk pass, no
    // `tweakinputs` family) is refused, with what to do.
    let (old, now) = (blkindex_shared::schema::FORMAT_VERSION - 1, blkindex_shared::schema::FORMAT_VERSION);
    {
        let store = Store::open(&db, Mode::Bulk)?;
        store.put_meta(&[(blkindex_shared::schema::meta::FORMAT, Some(&old.to_be_bytes()))])?;
    }
    let out = indexer(&node, &db, &["--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let want = format!("index format {old}, this build reads format {now}; delete it and re-index");
    assert!(err.contains(&want), "{err}");
    Ok(())
}

/// An indexer run (no following) on index `db`, returned once its staging directory exists (or it
/// has exited, or 10 s have passed).
pub(crate) fn staging_started(node: &Node, db: &Path, args: &[&str]) -> Result<std::process::Child> {
    let mut child = indexer_command(Path::new(env!("CARGO_BIN_EXE_blkindex-indexer")), node, db)
        .args(["--no-follow", "--progress", "none"])
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = std::time::Instant::now();
    while !db.join("bulk-stage").exists()
        && child.try_wait()?.is_none()
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(child)
}

/// Sixteen times: the indexer killed with SIGKILL at a pseudo-random moment of its load, then run to
/// completion; each time the index equals a clean one.
#[test]
fn killed_at_random_moments_resumes_to_the_same_index() -> Result<()> {
    let node = Node::start(NodeOptions { fastprune: true, ..Default::default() })?;
    build_rich_chain(&node)?;
    let b = ChainBuilder::new(&node)?;
    b.mine(300)?;
    b.wallet_traffic(8)?;
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let args = ["--batch-kb", "1"];
    let clean = dir.path().join("clean");
    // How long a clean run stages and merges: from its staging directory's creation to its exit.
    let mut probe = staging_started(&node, &clean, &args)?;
    let t0 = std::time::Instant::now();
    assert!(probe.wait()?.success());
    let clean_ms = t0.elapsed().as_millis().max(20) as u64;

    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    eprintln!("kill seed {seed}, clean run's load {clean_ms} ms");
    // Episodes: a fresh index, a run killed at a random moment of its load (counted from when
    // staging has started: the process's start-up and scan vary with the machine's load), and
    // a rerun to the end, which must equal the clean index. (One index killed over and over would
    // be finished by the first rerun that got through its merge.)
    let (mut killed, mut mid_load) = (0, 0);
    let db = dir.path().join("killed");
    for _ in 0..16 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = (seed >> 33) % clean_ms;
        let _ = std::fs::remove_dir_all(&db);
        let mut child = staging_started(&node, &db, &args)?;
        std::thread::sleep(std::time::Duration::from_millis(wait));
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL
            killed += 1;
            child.wait()?;
            // Did the kill land mid-load, with rows staged (`meta/staged`) but the tip not moved?
            let secondary = tempfile::tempdir()?;
            if let Ok(store) = Store::open(&db, Mode::Secondary(secondary.path().to_path_buf())) {
                mid_load += store.staged().ok().flatten().is_some() as u32;
            }
        }
        child.wait()?;
        index_ok(&node, &db, &args);
        assert_eq!(digest(&db), digest(&clean), "a killed and resumed index differs from a clean one");
    }
    eprintln!("{killed} kills, {mid_load} of them mid-load");
    assert!(killed >= 6, "only {killed} of 16 runs were killed before finishing");
    assert!(mid_load >= 1, "no kill landed mid-load (with staged rows): recovery went untested");
    check(&node, &open(&node, &db), &want)?;
    // One batch (plain values straight in) holds the same as many (staged, then merged).
    let single = dir.path().join("single");
    let out = indexer(&node, &single, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batches=1"), "expected a single batch");
    assert_eq!(digest(&single), digest(&clean), "a one-batch index differs from a many-batch one");
    Ok(())
}

/// The records of blk file `num` in `files`.
fn blk_records(files: &BlockFiles, num: u32) -> Vec<blkindex_shared::blkfile::Record> {
    let raw = files.file_bytes(FileKind::Blk, num).unwrap();
    let magic = [0xfa, 0xbf, 0xb5, 0xda];
    blkindex_shared::blkfile::scan_records(raw.bytes(), &files.xor_key(), magic, FileKind::Blk).0
}

/// An index read with the blocks of `blocks` (a damaged copy) instead of the node's.
fn open_with_blocks(db: &Path, blocks: &Path) -> IndexReader {
    let store = Store::open(db, Mode::Secondary(tempfile::tempdir().unwrap().keep())).unwrap();
    IndexReader::new(store, BlockFiles::open(blocks).unwrap()).unwrap()
}

/// Copies the node's blocks directory (with the node stopped, so the files are complete) so it can
/// be damaged while the node keeps a good copy.
fn copy_blocks(node: &mut Node, to: &Path) -> Result<()> {
    node.stop()?;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(node.blocks_dir())? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    node.restart()
}

/// A node whose chain spans many blk and rev files, what it holds, and a copy of its blocks
/// directory (in the returned temporary directory) to damage.
fn a_copy_to_damage() -> Result<(Node, Expected, tempfile::TempDir, std::path::PathBuf)> {
    let mut node = Node::start(NodeOptions { fastprune: true, ..Default::default() })?;
    build_rich_chain(&node)?;
    let b = ChainBuilder::new(&node)?;
    b.mine(300)?;
    b.wallet_traffic(4)?;
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let blocks = dir.path().join("blocks");
    copy_blocks(&mut node, &blocks)?;
    Ok((node, want, dir, blocks))
}

#[test]
fn corrupt_blk_file_is_a_clear_error_offline_and_fetched_from_the_node_online() -> Result<()> {
    let (node, want, dir, blocks) = a_copy_to_damage()?;
    // Damage the body of a block with transactions in a finalized blk file.
    let files = BlockFiles::open(&blocks)?;
    let nums = list_files(&blocks, FileKind::Blk)?;
    let (num, rec) = nums[..nums.len() - 1]
        .iter()
        .find_map(|&n| blk_records(&files, n).into_iter().find(|r| r.len > 400).map(|r| (n, r)))
        .expect("a block with transactions in a finalized file");
    let name = FileKind::Blk.file_name(num);
    let path = blocks.join(&name);
    let mut bytes = std::fs::read(&path)?;
    for b in &mut bytes[rec.offset as usize + 150..rec.offset as usize + 170] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes)?;

    let db = dir.path().join("db");
    let blocksdir = blocks.to_str().unwrap();
    let out = indexer(&node, &db, &["--offline", "--blocksdir", blocksdir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("corrupt block at height") && err.contains(&name), "{err}");
    // What was committed stops at a block boundary below the damage.
    {
        let store = Store::open(&db, Mode::Secondary(dir.path().join("sec1")))?;
        if let Some((tip, _)) = store.tip()? {
            assert!(store.header_rows(tip).is_ok());
        }
    }
    // With the node reachable, the damaged block comes from the node and the index is complete.
    index_ok(&node, &db, &["--blocksdir", blocksdir]);
    check(&node, &open_with_blocks(&db, &blocks), &want)?;
    Ok(())
}

#[test]
fn truncated_last_blk_file_takes_the_rest_from_the_node() -> Result<()> {
    let mut node = Node::start(NodeOptions { fastprune: true, ..Default::default() })?;
    build_rich_chain(&node)?;
    ChainBuilder::new(&node)?.mine(200)?;
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let blocks = dir.path().join("blocks");
    copy_blocks(&mut node, &blocks)?;
    let last = *list_files(&blocks, FileKind::Blk)?.last().unwrap();
    let path = blocks.join(FileKind::Blk.file_name(last));
    let len = std::fs::metadata(&path)?.len();
    // Cut the file in the middle of its written part, as if the node had not written the rest.
    let recs = blk_records(&BlockFiles::open(&blocks)?, last);
    assert!(recs.len() >= 4, "{} records in the last file ({len} bytes)", recs.len());
    let cut = recs[recs.len() / 2].offset + 10;
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(cut)?;

    let db = dir.path().join("db");
    index_ok(&node, &db, &["--blocksdir", blocks.to_str().unwrap()]);
    check(&node, &open_with_blocks(&db, &blocks), &want)?;
    Ok(())
}

#[test]
fn reorg_while_stopped_is_undone_and_equals_a_fresh_index() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let b = ChainBuilder::new(&node)?;
    b.wallet_traffic(3)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // Small batches: script entries of the stale blocks share entries with blocks below the fork.
    index_ok(&node, &db, &["--batch-kb", "8"]);
    let stale = b.reorg_with_conflict(6)?;
    b.wallet_traffic(1)?;
    let want = expected(&node)?;
    index_ok(&node, &db, &["--batch-kb", "8"]);
    let index = open(&node, &db);
    check(&node, &index, &want)?;
    for hash in stale {
        assert!(index.chain.height_of(&hash).is_none());
    }
    drop(index);
    let fresh = dir.path().join("fresh");
    index_ok(&node, &fresh, &["--batch-kb", "8"]);
    assert_eq!(digest(&db), digest(&fresh));
    Ok(())
}

#[test]
fn a_pruned_node_is_refused_with_a_clear_message() -> Result<()> {
    // Regtest's manual pruning mode (-prune=1): pruned as far as the node reports, no block gone.
    let node = Node::start(NodeOptions { extra_args: vec!["-prune=1".into()], ..NodeOptions::default() })?;
    ChainBuilder::new(&node)?.mine(5)?;
    let dir = tempfile::tempdir()?;
    let out = indexer(&node, &dir.path().join("db"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is pruned") && stderr.contains("unpruned node"), "{stderr}");
    Ok(())
}

/// A reader (the server's secondary) catching up in a tight loop while a bulk pass of many
/// batches lands never sees a tip before every row of its blocks: a staged load shows no tip
/// until its merge is done, then the last one, whose coinbase is found by txid and in its
/// script's history (the families merged last).
#[test]
fn a_secondary_catching_up_while_batches_land_never_sees_a_tip_before_its_rows() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let tip = node.height()?;
    let mut coinbases = Vec::new();
    for h in 0..=tip {
        let hash = node.call("getblockhash", json!([h]))?;
        let block = node.call("getblock", json!([hash, 2]))?;
        let cb = &block["tx"][0];
        let txid: bitcoin::Txid = cb["txid"].as_str().unwrap().parse()?;
        let script = hex::decode(cb["vout"][0]["scriptPubKey"]["hex"].as_str().unwrap())?;
        coinbases.push((txid, blkindex_shared::ScriptHash::of(&script)));
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // About one block per batch: a hundred and more batches staged, then merged range by range.
    let mut child = indexer_command(Path::new(env!("CARGO_BIN_EXE_blkindex-indexer")), &node, &db)
        .args(["--no-follow", "--progress", "none", "--batch-kb", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut reader: Option<IndexReader> = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut done = false;
    while !done {
        done = child.try_wait()?.is_some(); // one more round after the indexer exits
        if reader.is_none() && db.join("CURRENT").exists() {
            let secondary = dir.path().join("secondary");
            std::fs::create_dir_all(&secondary)?;
            reader = Store::open(&db, Mode::Secondary(secondary))
                .ok()
                .and_then(|s| IndexReader::new(s, BlockFiles::open(&node.blocks_dir()).ok()?).ok());
        }
        let Some(index) = reader.as_mut() else { continue };
        index.catch_up()?;
        let Some((h, _)) = index.chain.tip() else { continue };
        if h == 0 || !seen.insert(h) {
            continue; // genesis's coinbase is not indexed
        }
        let (txid, sh) = coinbases[h as usize];
        let found = index.txs_by_txid(&txid)?;
        assert!(found.iter().any(|t| t.height == h), "tip {h} visible before its txid rows");
        let history = index.script_state(&sh)?.history;
        assert!(history.iter().any(|i| i.txid == txid), "tip {h} visible before its script rows");
    }
    assert!(child.wait()?.success());
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![tip as u32], "a tip showed before the merge");
    Ok(())
}

/// An indexer run with a failpoint (`BLKINDEX_FAILPOINT`), which aborts it there.
fn aborted_at(node: &Node, db: &Path, point: &str, extra: &[&str]) {
    let out = indexer_command(Path::new(env!("CARGO_BIN_EXE_blkindex-indexer")), node, db)
        .args(["--no-follow", "--progress", "none"])
        .args(extra)
        .env("BLKINDEX_FAILPOINT", point)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("aborting"),
        "the failpoint {point} was not reached: {err}"
    );
}

fn staged(db: &Path) -> Option<blkindex_shared::schema::Staged> {
    let secondary = tempfile::tempdir().unwrap();
    Store::open(db, Mode::Secondary(secondary.path().to_path_buf())).unwrap().staged().unwrap()
}

/// A staged load killed halfway through its merge finishes the merge on the next run; one killed
/// while staging, on a chain whose staged tip the node then abandons, drops its staged rows and
/// starts again. Both end equal to a clean index.
#[test]
fn a_staged_load_killed_in_its_merge_or_before_a_reorg_ends_as_a_clean_one() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let dir = tempfile::tempdir()?;
    let args = ["--batch-kb", "1", "--threads", "1"];
    let clean = dir.path().join("clean");
    index_ok(&node, &clean, &args);

    let merging = dir.path().join("merging");
    aborted_at(&node, &merging, "merged:2", &args);
    let s = staged(&merging).expect("a staged load left behind");
    assert!(s.merged > 0 && s.merged < s.ranges, "killed mid-merge: {s:?}");
    let log = index_ok(&node, &merging, &args);
    assert!(log.contains("finishing the merge"), "{log}");
    assert!(staged(&merging).is_none());
    assert_eq!(digest(&merging), digest(&clean), "a merge finished by a rerun differs from a clean one");

    // Killed at its second checkpoint (the first is after the first batch; with one-block
    // batches the second comes once a few seconds of them are staged).
    let reorged = dir.path().join("reorged");
    aborted_at(&node, &reorged, "staged:2", &args);
    let s = staged(&reorged).expect("a staged load left behind");
    assert_eq!(s.merged, 0);
    let stale = node.call("getblockhash", json!([s.last]))?;
    node.call("invalidateblock", json!([stale]))?;
    let b = ChainBuilder::new(&node)?;
    b.mine(3)?; // from the block below the abandoned one: a longer branch
    let log = index_ok(&node, &reorged, &args);
    assert!(log.contains("the chain changed since an unfinished load staged its rows"), "{log}");
    let fresh = dir.path().join("fresh");
    index_ok(&node, &fresh, &args);
    assert_eq!(
        digest(&reorged),
        digest(&fresh),
        "a load started again after a reorg differs from a clean one"
    );
    check(&node, &open(&node, &reorged), &expected(&node)?)?;
    Ok(())
}

#[test]
fn damaged_and_truncated_rev_files_are_a_clear_error_offline_and_fetched_from_the_node_online() -> Result<()>
{
    let (node, want, dir, blocks) = a_copy_to_damage()?;
    let files = BlockFiles::open(&blocks)?;
    let nums = list_files(&blocks, FileKind::Rev)?;
    let magic = [0xfa, 0xbf, 0xb5, 0xda];
    let rev_records = |num| {
        let raw = files.file_bytes(FileKind::Rev, num).unwrap();
        blkindex_shared::blkfile::scan_records(raw.bytes(), &files.xor_key(), magic, FileKind::Rev).0
    };
    // Damage the middle of a sizeable undo record in an earlier rev file (its checksum then fails) ...
    let (num, rec) = nums[..nums.len() - 1]
        .iter()
        .find_map(|&n| rev_records(n).into_iter().find(|r| r.len > 200).map(|r| (n, r)))
        .expect("an undo record with spent outputs in an earlier rev file");
    let path = blocks.join(FileKind::Rev.file_name(num));
    let mut bytes = std::fs::read(&path)?;
    for b in &mut bytes[rec.offset as usize + rec.len as usize / 2..][..16] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, bytes)?;
    // ... and cut the last rev file in the middle of its records.
    let last = *nums.last().unwrap();
    let recs = rev_records(last);
    assert!(recs.len() >= 2, "{} records in the last rev file", recs.len());
    let path = blocks.join(FileKind::Rev.file_name(last));
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(recs[recs.len() / 2].offset + 5)?;

    let db = dir.path().join("db");
    let blocksdir = blocks.to_str().unwrap();
    let out = indexer(&node, &db, &["--offline", "--blocksdir", blocksdir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no usable undo record in the rev files"), "{err}");
    assert!(err.contains("the node's RPC is not available"), "{err}");
    // With the node reachable, the missing undo data comes from getblock 3: the index is complete.
    index_ok(&node, &db, &["--blocksdir", blocksdir]);
    check(&node, &open_with_blocks(&db, &blocks), &want)?;
    Ok(())
}

#[test]
fn bucket_width_is_chosen_at_creation() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let want = expected(&node)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    // Mainnet's width on a regtest chain: every answer still equals the node's.
    index_ok(&node, &db, &["--bucket-width", "3"]);
    {
        let index = open(&node, &db);
        assert_eq!(index.store.bucket_width()?, 3);
        check(&node, &index, &want)?;
    }
    // The width is the index's from then on: another one is refused, none asked is fine.
    let out = indexer(&node, &db, &["--bucket-width", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("created with bucket width 3"), "{err}");
    index_ok(&node, &db, &[]);
    let out = indexer(&node, &dir.path().join("other"), &["--bucket-width", "9"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("must be one of"));
    Ok(())
}

/// The bulk pass run in-process through `blkindex_indexer::run`, where a subprocess adds
/// nothing: the same index as the binary's.
#[test]
fn runs_in_process_to_the_same_index_as_the_binary() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let dir = tempfile::tempdir()?;
    let (binary, in_process) = (dir.path().join("binary"), dir.path().join("in-process"));
    index_ok(&node, &binary, &[]);
    let args = blkindex_indexer::Args::from_args([
        "blkindex-indexer".into(),
        "--network".into(),
        "regtest".into(),
        "--datadir".into(),
        node.datadir.clone().into_os_string(),
        "--db".into(),
        in_process.clone().into_os_string(),
        "--daemon-rpc-addr".into(),
        node.rpc_addr().into(),
        "--no-follow".into(),
        "--progress".into(),
        "none".into(),
    ])?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    blkindex_indexer::run(args, blkindex_indexer::Shutdown::Flag(stop))?;
    assert!(digest(&in_process) == digest(&binary), "the in-process index differs from the binary's");
    Ok(())
}
