//! Following the node's tip after the bulk pass: on a ZMQ notification or the poll timer, ask the
//! node for its best block, undo our blocks that left its chain, and apply the new ones, each in
//! one synced WriteBatch with the new tip, so that a kill at any moment leaves the index at a block
//! boundary and a reader (the server's secondary) never sees half a block.
//!
//! Blocks come from the blk files by default (bitcoind writes a block, and its undo data when it
//! connects it, before announcing it): they are then served from the files like bulk-indexed ones.
//! With `--follow-source rpc`, or when the files do not have a block, it comes from `getblock`
//! (raw bytes kept in `rawblock`, spent outputs from verbosity 3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use crossbeam_channel::Receiver;
use rocksdb::WriteBatch;
use tracing::{debug, info, warn};

use blkindex_shared::blkfile::{list_files, FileKind};
use blkindex_shared::bucket;
use blkindex_shared::chain::Chain;
use blkindex_shared::rpc::RpcError;
use blkindex_shared::schema::{self, cf, meta, BlockLoc, Height};

use crate::bestchain::ChainBlock;
use crate::ingest::LongSets;
use crate::rows::{block_rows, verify, BlockRows};
use crate::scan::{BlockEntry, BlockMap};
use crate::source::BlockSource;
use crate::tail::Tail;
use crate::unwind::{check_reorg, unwind_blocks, ReorgRefusal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FollowSource {
    /// Read new blocks and undo data from the node's files (RPC when they are not there).
    Files,
    /// Fetch every new block with getblock (raw) and getblock verbosity 3 (spent outputs).
    Rpc,
}

pub struct Follower<'a> {
    pub blocks: &'a BlockSource<'a>,
    pub source: FollowSource,
    pub poll: Duration,
    /// Deepest reorg undone without the operator (`--max-reorg`).
    pub max_reorg: Height,
    pub stop: Arc<AtomicBool>,
    /// Set when the node came back after being unreachable, so ZMQ reconnects.
    pub zmq_reconnect: Arc<AtomicBool>,
    chain: Chain,
    tail: Tail,
    /// Why the follower is waiting for the node (logged when it starts, changes kind and ends).
    waiting: Option<ReorgRefusal>,
    /// The prefixes whose lists are in the `long` family (their rows go there).
    long: LongSets,
    /// Bucket keys (family, key) that applied blocks touched, not yet checked for long lists.
    touched: std::collections::BTreeSet<(&'static str, Vec<u8>)>,
    /// Checkpoint requests (`blkindex-indexer checkpoint`), answered between syncs.
    pub checkpoints: Option<Receiver<crate::checkpoint::Request>>,
}

/// Bucket keys held for the long-list check before it runs anyway (a catch-up of many blocks).
const MAX_TOUCHED: usize = 1 << 20;

impl<'a> Follower<'a> {
    pub fn new(
        blocks: &'a BlockSource<'a>,
        source: FollowSource,
        poll: Duration,
        max_reorg: Height,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let chain = Chain::load(blocks.store)?;
        // Tail the blk files from the end of the tip block, or from the start of the newest file.
        let (file, offset) = match chain.tip().and_then(|(h, _)| chain.row(h)).map(|r| r.loc) {
            Some(BlockLoc::File { file, offset, len }) => (file, offset as u64 + len as u64),
            _ => (list_files(blocks.files.dir(), FileKind::Blk)?.last().copied().unwrap_or(0), 0),
        };
        Ok(Follower {
            blocks,
            source,
            poll,
            max_reorg,
            stop,
            zmq_reconnect: Arc::new(AtomicBool::new(false)),
            chain,
            tail: Tail::new(blocks.net, file, offset),
            waiting: None,
            long: LongSets::load(blocks.store)?,
            touched: Default::default(),
            checkpoints: None,
        })
    }

    /// Runs until `stop` is set. Node errors are retried with back-off; anything else ends it.
    pub fn run(&mut self, wake: &Receiver<()>) -> Result<()> {
        let mut backoff = Duration::from_secs(1);
        let mut node_down = false;
        while !self.stop.load(Ordering::Relaxed) {
            // Between syncs this thread, the only writer of blocks, has committed whole blocks
            // only (and the long-list moves of the last sync): a checkpoint now is at a block
            // boundary. (A tweak pass beside it writes whole batches of tweaks; a copy resumes it.)
            if let Some(requests) = &self.checkpoints {
                crate::checkpoint::answer(self.blocks.store, requests);
            }
            match self.sync() {
                Ok(_) => {
                    if node_down {
                        info!("the node is back; following again");
                        self.zmq_reconnect.store(true, Ordering::Relaxed);
                        node_down = false;
                    }
                    backoff = Duration::from_secs(1);
                }
                Err(e) if is_transient(&e) => {
                    if !node_down {
                        warn!("node unavailable ({e:#}); retrying with back-off");
                        node_down = true;
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Wait for a notification or the poll timer; coalesce a burst of notifications.
            let _ = wake.recv_timeout(self.poll);
            while wake.try_recv().is_ok() {}
        }
        info!("stopped following");
        Ok(())
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Brings the index to the node's best block. Returns the number of blocks applied.
    pub fn sync(&mut self) -> Result<usize> {
        let rpc = self.blocks.rpc("following")?;
        let best = rpc.best_block_hash()?;
        if self.chain.tip().map(|t| t.1) == Some(best) {
            return Ok(0);
        }
        // Walk back from the node's tip to a block we have.
        let mut new: Vec<(BlockHash, Header)> = Vec::new();
        let mut cur = best;
        let fork = loop {
            if let Some(h) = self.chain.height_of(&cur) {
                break h;
            }
            let header = rpc.header(&cur)?;
            if header.prev_blockhash == BlockHash::all_zeros() {
                bail!("the node's chain does not contain the index's genesis: another chain?");
            }
            new.push((cur, header));
            cur = header.prev_blockhash;
        };
        let (tip, _) = self.chain.tip().context("empty index")?;
        if fork < tip {
            let ours: Vec<Header> = (fork + 1..=tip).map(|h| self.chain.row(h).unwrap().header).collect();
            let theirs: Vec<Header> = new.iter().rev().map(|(_, h)| *h).collect();
            if let Err(refusal) = check_reorg(&ours, &theirs, self.max_reorg) {
                self.wait_for_node(refusal);
                return Ok(0);
            }
        }
        if let Some(why) = self.waiting.take() {
            info!("following again (was: {why})");
        }
        if fork < tip {
            self.unwind(fork)?;
        }
        self.tail.poll_blocks(self.blocks.files)?;
        let mut applied = 0;
        for (hash, header) in new.into_iter().rev() {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.apply(hash, header)?;
            applied += 1;
            if self.touched.len() >= MAX_TOUCHED {
                self.promote_long_lists()?;
            }
        }
        // Once caught up (not after every block of a long catch-up, whose blocks would wait
        // for it): the buckets the new blocks touched are checked for lists grown too long.
        self.promote_long_lists()?;
        Ok(applied)
    }

    /// Logs why the follower waits: once, not at every poll while the depth changes (a node that
    /// invalidates or reindexes moves its tip block by block).
    fn wait_for_node(&mut self, why: ReorgRefusal) {
        let kind = std::mem::discriminant(&why);
        if self.waiting.as_ref().map(std::mem::discriminant) != Some(kind) {
            warn!("{why}; waiting for the node");
        }
        self.waiting = Some(why);
    }

    /// Undoes every block above `fork`, one synced write per block (from the tip down).
    fn unwind(&mut self, fork: Height) -> Result<()> {
        let (tip, _) = self.chain.tip().unwrap();
        warn!(from = tip, to = fork, "reorg: undoing {} block(s)", tip - fork);
        let rows: Vec<_> = (fork + 1..=tip).map(|h| *self.chain.row(h).unwrap()).collect();
        unwind_blocks(self.blocks, &BlockMap::new(), &rows, fork + 1)?;
        while self.chain.len() as Height > fork + 1 {
            self.chain.pop();
        }
        // A long list the undone blocks emptied went, with its marker.
        self.long = LongSets::load(self.blocks.store)?;
        Ok(())
    }

    /// Indexes one block on top of the tip.
    fn apply(&mut self, hash: BlockHash, header: Header) -> Result<()> {
        let t0 = Instant::now();
        let height = self.chain.len() as Height;
        let txnum = self.chain.next_txnum();
        let b = ChainBlock { hash, header, entry: self.tail.block(&hash) };
        let from_files = match (self.source, b.entry) {
            (FollowSource::Files, Some(e)) => self.rows_from_files(&b, e, height, txnum).map_err(|err| {
                warn!("block {hash} from the files: {err:#}; fetching it from the node");
            }),
            _ => Err(()),
        };
        let (rows, raw) = match from_files {
            Ok(rows) => (rows, None),
            Err(()) => {
                let (rows, bytes) = self.blocks.rows_from_node(&hash, height, txnum)?;
                (rows, Some(bytes))
            }
        };
        if rows.header.hash() != hash {
            bail!("block at height {height} is not {hash}");
        }
        if txnum.checked_add(rows.header.tx_count).is_none() {
            bail!("block {hash} at height {height} takes the index past 2^32 transactions, which its format cannot number");
        }
        self.commit(&rows, raw.as_deref())?;
        let commit_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.note_touched(&rows)?;
        self.tail.forget(&hash);
        let ntx = rows.header.tx_count;
        self.chain.push(rows.header);
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        info!(
            height,
            %hash,
            txs = ntx,
            ms = %format!("{commit_ms:.1}"),
            committed_at_us = now_us as u64,
            "block committed"
        );
        Ok(())
    }

    fn rows_from_files(
        &mut self,
        b: &ChainBlock,
        e: BlockEntry,
        height: Height,
        txnum: u32,
    ) -> Result<BlockRows> {
        let bytes = self.blocks.files.read(FileKind::Blk, e.file, e.offset as u64, e.len as usize)?;
        let checked = verify(&bytes)?;
        let locs = if height == 0 {
            Vec::new()
        } else {
            self.tail.undo_candidates(self.blocks.files, e.file, &b.header.prev_blockhash, e.ntx)?
        };
        let undo = self.blocks.undo_from(&locs, b, height, &checked)?;
        let loc = BlockLoc::File { file: e.file, offset: e.offset, len: e.len };
        block_rows(height, &bytes, &checked, txnum, loc, undo.as_ref(), self.blocks.sp)
    }

    /// A block's rows and the new tip, in one synced WriteBatch (WAL on).
    fn commit(&self, rows: &BlockRows, raw: Option<&[u8]>) -> Result<()> {
        let store = self.blocks.store;
        let mut batch = WriteBatch::default();
        let width = store.bucket_width()?;
        for (name, keys) in [(cf::TXID, &rows.txid), (cf::SCRIPT, &rows.script)] {
            let mut keys = keys.clone();
            keys.sort_unstable();
            keys.dedup();
            let (buckets, long) = bucket::group(&keys, width, self.long.of(name));
            for (key, value) in buckets {
                batch.merge_cf(store.cf(name), key, value);
            }
            for (prefix, list) in long {
                batch.merge_cf(store.cf(cf::LONG), schema::long_key(name, &prefix), list);
            }
        }
        let h = schema::height_key(rows.height);
        batch.put_cf(store.cf(cf::HEADERS), h, rows.header.encode());
        batch.put_cf(store.cf(cf::TXPOS), h, &rows.txpos);
        if let Some(row) = &rows.tweak {
            let (family, value) = row.family_and_value();
            batch.put_cf(store.cf(family), h, value);
        }
        if let Some(raw) = raw {
            batch.put_cf(store.cf(cf::RAWBLOCK), rows.header.hash().as_byte_array(), raw);
        }
        batch.put_cf(store.cf(cf::META), meta::TIP, schema::encode_tip(rows.height, &rows.header.hash()));
        store.write_sync(batch)
    }
}

impl Follower<'_> {
    /// Remembers the buckets a committed block touched outside the known long lists.
    fn note_touched(&mut self, rows: &BlockRows) -> Result<()> {
        let width = self.blocks.store.bucket_width()?;
        for (name, keys) in [(cf::TXID, &rows.txid), (cf::SCRIPT, &rows.script)] {
            let known = self.long.of(name);
            for k in keys.iter().filter(|k| !known.contains(&schema::key_prefix(k))) {
                self.touched.insert((name, k[..width].to_vec()));
            }
        }
        Ok(())
    }

    /// The inline lists that applied blocks made longer than `meta/longlist` move to the `long`
    /// family (their bucket rewritten with a marker, the list put whole, one synced write). Run
    /// once the follower is caught up, off the blocks' commits, and safe to lose to a kill: the
    /// next block touching the bucket checks again. Returns how many moved.
    fn promote_long_lists(&mut self) -> Result<usize> {
        if self.touched.is_empty() {
            return Ok(0);
        }
        let t0 = Instant::now();
        let touched = std::mem::take(&mut self.touched);
        let store = self.blocks.store;
        let width = store.bucket_width()?;
        let rest_len = schema::PREFIX_LEN - width;
        let threshold = store.long_list_bytes()?;
        let mut batch = WriteBatch::default();
        let mut moved = Vec::new();
        for name in [cf::TXID, cf::SCRIPT] {
            let buckets: Vec<&[u8]> =
                touched.iter().filter(|(n, _)| *n == name).map(|(_, k)| &k[..]).collect();
            let values = store.db().batched_multi_get_cf(store.cf(name), &buckets, false);
            for (key, value) in buckets.iter().zip(values) {
                let Some(value) = value? else { continue };
                if value.len() <= threshold {
                    continue; // no list in it can be over the limit
                }
                let mut rewritten = Vec::with_capacity(value.len());
                let mut any = false;
                for entry in bucket::entries(&value, rest_len) {
                    let (rest, list) = entry?;
                    let prefix = bucket::prefix(key, rest);
                    if list.len() > threshold {
                        batch.put_cf(store.cf(cf::LONG), schema::long_key(name, &prefix), list);
                        bucket::put_entry(&mut rewritten, rest, &[]);
                        moved.push((name, prefix));
                        any = true;
                    } else {
                        bucket::put_entry(&mut rewritten, rest, list);
                    }
                }
                if any {
                    batch.put_cf(store.cf(name), key, rewritten);
                }
            }
        }
        let checked = touched.len();
        if moved.is_empty() {
            debug!(buckets = checked, ms = t0.elapsed().as_millis() as u64, "no list grew too long");
            return Ok(0);
        }
        store.write_sync(batch)?;
        for (name, prefix) in &moved {
            info!(family = name, prefix = %hex::encode(prefix), "a list moved to the long family");
        }
        info!(
            buckets = checked,
            moved = moved.len(),
            ms = t0.elapsed().as_millis() as u64,
            "long lists checked"
        );
        self.long = LongSets::load(store)?;
        Ok(moved.len())
    }
}

/// Errors worth waiting out: the node is down, restarting, overloaded or warming up.
pub(crate) fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<RpcError>().is_some_and(|r| r.is_transient()))
}
