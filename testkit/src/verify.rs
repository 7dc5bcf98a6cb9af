//! Comparing an index with the node: every answer checked against RPC, and a digest of an index's
//! logical content to compare two indexes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use serde_json::json;

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::bucket;
use blkindex_shared::query::IndexReader;
use blkindex_shared::schema::{self, cf, HeaderRow, TxnumList};
use blkindex_shared::store::{Mode, Store};

use crate::expect::Expected;
use crate::node::Node;

/// Opens an index read-only (a secondary instance in a fresh directory).
pub fn open_index(node: &Node, db: &Path) -> IndexReader {
    let secondary = tempfile::tempdir().unwrap().keep();
    let store = Store::open(db, Mode::Secondary(secondary)).unwrap();
    IndexReader::new(store, BlockFiles::open(&node.blocks_dir()).unwrap()).unwrap()
}

/// Every script's history, unspent outputs and balance, every transaction by txid (bytes,
/// height, position) and spenders, against what the node says.
pub fn check(node: &Node, index: &IndexReader, want: &Expected) -> Result<()> {
    let tip = node.height()? as u32;
    assert_eq!(index.chain.tip().unwrap(), (tip, node.best_hash()?));
    for (sh, history) in &want.history {
        let state = index.script_state(sh)?;
        let got: Vec<_> = state.history.iter().map(|h| (h.txid, h.height)).collect();
        assert_eq!(&got, history, "history of {sh}");
        let mut utxos: Vec<_> = state.utxos.iter().map(|u| (u.outpoint, (u.value, u.height))).collect();
        utxos.sort();
        let want_utxos: Vec<_> =
            want.utxos.get(sh).map(|m| m.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default();
        assert_eq!(utxos, want_utxos, "unspent outputs of {sh}");
        for (op, (value, _)) in &want_utxos {
            let txout = node.call("gettxout", json!([op.txid.to_string(), op.vout, false]))?;
            assert_eq!((txout["value"].as_f64().unwrap() * 1e8).round() as u64, *value, "gettxout {op}");
        }
    }
    for (txid, height, block, pos) in &want.txs {
        let found = index.txs_by_txid(txid)?;
        assert_eq!(found.len(), 1, "tx {txid}");
        assert_eq!((found[0].height, found[0].pos), (*height, *pos), "tx {txid}");
        let raw = node.call("getrawtransaction", json!([txid.to_string(), false, block.to_string()]))?;
        assert_eq!(hex::encode(&found[0].raw), raw.as_str().unwrap(), "bytes of {txid}");
    }
    for (op, (txid, height)) in want.spenders.iter().take(200) {
        let s = index.spender(op)?.expect("spender");
        assert_eq!((s.txid, s.height), (*txid, *height), "spender of {op}");
    }
    eprintln!(
        "checked {} scripts, {} transactions, {} unspent outputs against the node",
        want.history.len(),
        want.txs.len(),
        want.utxos.values().map(|u| u.len()).sum::<usize>()
    );
    Ok(())
}

/// A digest of what an index answers: headers with their txnums (not where the block bytes are),
/// tx positions, every (prefix, txnum) of the txid and script lists, and the silent-payment
/// rows up to the tip (`tweak`, and `tweakinputs`, which a finished indexer run leaves none of).
pub fn digest(db: &Path) -> Digest {
    let secondary = tempfile::tempdir().unwrap();
    let store = Store::open(db, Mode::Secondary(secondary.path().to_path_buf())).unwrap();
    let tip = store.tip().unwrap().map(|t| t.0);
    let mut out = Digest::default();
    for name in [cf::HEADERS, cf::TXPOS, cf::TXID, cf::SCRIPT, cf::TWEAK, cf::TWEAK_INPUTS] {
        let mut e = sha256::Hash::engine();
        for item in store.db().iterator_cf(store.cf(name), rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            match name {
                cf::TWEAK | cf::TWEAK_INPUTS => {
                    if Some(u32::from_be_bytes(k[..4].try_into().unwrap())) > tip {
                        continue;
                    }
                    e.input(&k);
                    e.input(&v);
                }
                cf::HEADERS => {
                    if Some(u32::from_be_bytes(k[..4].try_into().unwrap())) > tip {
                        continue;
                    }
                    let row = HeaderRow::decode(&v).unwrap();
                    e.input(&k);
                    e.input(&bitcoin::consensus::serialize(&row.header));
                    e.input(&row.first_txnum.to_be_bytes());
                    e.input(&row.tx_count.to_be_bytes());
                }
                cf::TXID | cf::SCRIPT => {
                    for entry in bucket::entries(&v, bucket::rest_len(&k).unwrap()) {
                        let (rest, list) = entry.unwrap();
                        // Where a list lives (inline or in `long`) is not part of what it holds.
                        let long;
                        let list = match list {
                            [] => {
                                let prefix = bucket::prefix(&k, rest);
                                long = store.db().get_cf(store.cf(cf::LONG), schema::long_key(name, &prefix));
                                long.as_ref().unwrap().as_deref().expect("a marker without its long list")
                            }
                            list => list,
                        };
                        for n in TxnumList::decode(list).unwrap() {
                            e.input(&k);
                            e.input(rest);
                            e.input(&n.to_be_bytes());
                        }
                    }
                }
                _ => {
                    e.input(&k);
                    e.input(&v);
                }
            }
        }
        out.0.push((name, hex::encode(sha256::Hash::from_engine(e).to_byte_array())));
    }
    out
}

/// Per-family digests, so that a mismatch says where.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Digest(pub Vec<(&'static str, String)>);

/// `blkindex-indexer` (the binary `bin`) on the node's regtest data dir and RPC, with index `db`.
pub fn indexer_command(bin: &Path, node: &Node, db: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["--network", "regtest", "--datadir"])
        .arg(&node.datadir)
        .arg("--db")
        .arg(db)
        .args(["--daemon-rpc-addr", &node.rpc_addr()]);
    c
}

/// A test's hold on a phase of the indexer (`BLKINDEX_PAUSEPOINT`, `pausepoint` in
/// `indexer/src/bulk.rs`): the indexer stops at the named point until the test releases it.
pub struct PausePoint {
    go: std::path::PathBuf,
    value: String,
}

impl PausePoint {
    /// A hold at `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let go = dir.join(format!("{name}.go"));
        let value = format!("{name}:{}", go.display());
        PausePoint { go, value }
    }

    /// The environment variable that sets it, for [`Indexer::follow_with_env`].
    pub fn env(&self) -> (&'static str, &str) {
        ("BLKINDEX_PAUSEPOINT", &self.value)
    }

    /// Waits until the indexer is held there, at most `within`.
    pub fn wait_reached(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.go.with_extension("reached").exists() {
            if Instant::now() > deadline {
                bail!("the indexer never reached its pause point");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn release(&self) -> Result<()> {
        Ok(std::fs::write(&self.go, b"")?)
    }

    pub fn released(&self) -> bool {
        self.go.exists()
    }
}

/// A running `blkindex-indexer`, stopped (SIGTERM) on drop.
pub struct Indexer {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Indexer {
    /// Starts `bin` (the indexer binary) on the node's data dir, following.
    pub fn follow(bin: &Path, node: &Node, db: &Path, extra: &[&str]) -> Result<Self> {
        Self::follow_with_env(bin, node, db, extra, &[])
    }

    /// As `follow`, with more environment variables (a test hook such as `BLKINDEX_PAUSEPOINT`).
    pub fn follow_with_env(
        bin: &Path,
        node: &Node,
        db: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = db.with_extension("log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = indexer_command(bin, node, db)
            .args(["--progress", "none", "--poll-secs", "0.5"])
            .args(extra)
            .envs(env.iter().copied())
            .env("BLKINDEX_LOG", "info,zeromq=error")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()?;
        Ok(Indexer { child, log })
    }

    /// Waits until the index (read through a secondary) is at the node's best block.
    pub fn wait_synced(&mut self, node: &Node, db: &Path) -> Result<()> {
        let best = node.best_hash()?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let secondary = tempfile::tempdir()?;
        let mut store: Option<Store> = None;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the indexer exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if store.is_none() && db.join("CURRENT").exists() {
                store = Store::open(db, Mode::Secondary(secondary.path().to_path_buf())).ok();
            }
            if let Some(s) = &store {
                // A failed catch-up (the indexer deleted a file mid-way) needs a fresh instance.
                if s.catch_up().is_err() {
                    store = None;
                    continue;
                }
                if s.tip()?.map(|t| t.1) == Some(best) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not synced to {best} in 90 s: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the indexer's log has `needle` (it exits or 60 s pass: an error with the log).
    pub fn wait_logged(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(needle) {
                return Ok(());
            }
            if self.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("no {needle:?} in the indexer's log: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("the indexer did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

/// The first height where two indexes' header rows (hash, first txnum, tx count) differ.
pub fn first_header_difference(a: &Path, b: &Path) -> Option<String> {
    let open = |db: &Path| {
        let s = Store::open(db, Mode::Secondary(tempfile::tempdir().unwrap().keep())).unwrap();
        let tip = s.tip().unwrap().unwrap().0;
        (s.header_rows(tip).unwrap(), s)
    };
    let ((ra, _sa), (rb, _sb)) = (open(a), open(b));
    for h in 0..ra.len().max(rb.len()) {
        let (x, y) = (ra.get(h), rb.get(h));
        let key = |r: Option<&HeaderRow>| r.map(|r| (r.hash(), r.first_txnum, r.tx_count));
        if key(x) != key(y) {
            return Some(format!("height {h}: {:?} vs {:?}", key(x), key(y)));
        }
    }
    None
}
