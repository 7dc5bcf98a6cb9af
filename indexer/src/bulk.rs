//! The bulk load: the best chain, cut into batches of consecutive heights, each turned into rows in
//! parallel (rayon), sorted, written as one SST file per column family and ingested. A producer
//! thread builds batch k+1 while the writer ingests batch k (crossbeam channel of depth 1).
//!
//! Crash safety (the WAL is not used for rows): before a batch is ingested, `meta/pending` names it
//! (synced); after every family is ingested, `meta/tip` moves to its last block and `pending` goes,
//! in one synced write. Rows are key-only or keyed by height, so ingesting a batch twice changes
//! nothing; a rerun that finds `pending` on the same chain simply redoes it, and one that finds it on
//! a chain that changed meanwhile deletes the rows its blocks would have added first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use rayon::prelude::*;
use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteBatch};
use serde_json::json;
use tracing::{debug, info, warn};

use blkindex_shared::blkfile::{BlockFiles, FileKind};
use blkindex_shared::bucket;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::{self, cf, meta, BlockLoc, Height, Pending, RowKey, TxNum};
use blkindex_shared::store::{cf_options, Store};
use blkindex_shared::undo::BlockUndo;
use blkindex_shared::Net;

use crate::bestchain::ChainBlock;
use crate::progress::Progress;
use crate::revmatch::{UndoIndex, UndoLoc};
use crate::rows::{block_rows, undo_fits, verify, BlockRows, Verified};
use crate::rowsort;
use crate::scan::BlockMap;

pub struct Bulk<'a> {
    pub store: &'a Store,
    pub files: &'a BlockFiles,
    pub net: Net,
    pub rpc: Option<&'a Rpc>,
    pub progress: &'a Progress,
    /// Blocks are cut into batches of about this many bytes.
    pub batch_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub blocks: u64,
    pub txs: u64,
    pub bytes: u64,
    pub index_secs: f64,
    pub compact_secs: f64,
    pub tip: Option<(Height, BlockHash)>,
}

/// A block fetched over RPC because the blk files did not have it.
struct Fetched {
    bytes: Vec<u8>,
    undo: Option<BlockUndo>,
}

struct Batch {
    first: Height,
    last: Height,
    last_hash: BlockHash,
    headers: Vec<(Height, [u8; schema::HEADER_ROW_LEN])>,
    txpos: Vec<(Height, Vec<u8>)>,
    txid: Vec<RowKey>,
    script: Vec<RowKey>,
    bytes: u64,
    txs: u64,
}

impl Bulk<'_> {
    pub fn run(&self, map: &BlockMap, chain: &[ChainBlock]) -> Result<Summary> {
        let start = self.recover(map, chain)?;
        let mut summary = Summary::default();
        let tip = chain.len() as Height - 1;
        if start <= tip {
            self.store.put_meta(&[(meta::COMPACTED, None)])?;
            let fetched = self.fetch_missing(chain, start)?;
            let first_txnums = first_txnums(chain, &fetched)?;
            if start > 0 {
                let row = self.store.header_row(start - 1)?.context("tip header row missing")?;
                if row.first_txnum + row.tx_count != first_txnums[start as usize] {
                    bail!("stored txnums disagree with the blk files at height {start}; re-index");
                }
            }
            let t0 = Instant::now();
            let final_files = self.load(chain, start, &first_txnums, &fetched, &mut summary)?;
            summary.index_secs = t0.elapsed().as_secs_f64();
            if final_files {
                // One batch into an empty index: the ingested files already are what a full
                // compaction would write (bottom level, sorted, one value per key, zstd), so
                // running one would only copy them (on the 1.1 GB bench chain: 3 s of 7).
                self.store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
            }
        } else {
            info!(height = tip, "index is already at the best block");
        }
        if self.store.get_meta(meta::COMPACTED)?.is_none() {
            let t0 = Instant::now();
            self.progress.spinner("compacting");
            self.store.flush()?;
            self.store.compact_all()?;
            self.store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
            self.progress.finish();
            summary.compact_secs = t0.elapsed().as_secs_f64();
        }
        self.store.enable_auto_compactions()?;
        summary.tip = self.store.tip()?;
        Ok(summary)
    }

    /// Brings the store back to a block boundary on `chain` and returns the next height to index.
    fn recover(&self, map: &BlockMap, chain: &[ChainBlock]) -> Result<Height> {
        if let Some(p) = self.store.pending()? {
            let same = chain.get(p.last as usize).is_some_and(|b| b.hash == p.last_hash);
            if same {
                info!(first = p.first, last = p.last, "redoing the batch an earlier run did not finish");
            } else {
                warn!(
                    first = p.first,
                    last = p.last,
                    "the chain changed since an unfinished batch; removing its rows"
                );
                let first_txnum = match p.first {
                    0 => 0,
                    h => self
                        .store
                        .header_row(h - 1)?
                        .map(|r| r.first_txnum + r.tx_count)
                        .context("no header row below pending")?,
                };
                let mut branch = Vec::new();
                let mut cur = p.last_hash;
                for _ in p.first..=p.last {
                    let e = map.get(&cur);
                    let header = match e {
                        Some(e) => e.header,
                        None => self
                            .block_bytes(map, &cur, None)
                            .and_then(|b| Ok(bitcoin::consensus::deserialize(&b[..80])?))?,
                    };
                    branch.push(ChainBlock { hash: cur, header, entry: e.copied() });
                    cur = header.prev_blockhash;
                }
                branch.reverse();
                self.delete_branch(map, &branch, p.first, first_txnum)?;
                self.store.put_meta(&[(meta::PENDING, None)])?;
            }
        }
        let Some((tip, tip_hash)) = self.store.tip()? else {
            return Ok(0);
        };
        if chain.get(tip as usize).is_some_and(|b| b.hash == tip_hash) {
            return Ok(tip + 1);
        }
        // The node reorganized while the indexer was stopped: undo down to the fork.
        let rows = self.store.header_rows(tip)?;
        let fork = (0..=tip)
            .rev()
            .find(|&h| chain.get(h as usize).is_some_and(|b| b.hash == rows[h as usize].hash()))
            .context("the index shares no block with the node's chain (another chain?)")?;
        warn!(from = tip, to = fork, "the index is on a stale branch; undoing its blocks");
        let branch: Vec<ChainBlock> = rows[fork as usize + 1..].iter().map(ChainBlock::from_row).collect();
        let first_txnum = rows[fork as usize + 1].first_txnum;
        self.delete_branch(map, &branch, fork + 1, first_txnum)?;
        Ok(fork + 1)
    }

    /// Deletes every row the blocks of `branch` (heights from `first`) added, and sets the tip
    /// just below them.
    pub(crate) fn delete_branch(
        &self,
        map: &BlockMap,
        branch: &[ChainBlock],
        first: Height,
        mut txnum: TxNum,
    ) -> Result<()> {
        let mut undo_index = UndoIndex::default();
        let nums: Vec<u32> = branch
            .iter()
            .filter_map(|b| b.entry.map(|e| e.file))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // The matcher needs the branch's predecessor in slot 0 (it skips genesis there).
        let mut wanted = vec![branch[0]];
        wanted.extend_from_slice(branch);
        undo_index.match_files(self.files, self.net, &wanted, &nums)?;
        let mut batch = WriteBatch::default();
        let from_txnum = txnum;
        let (mut txid_prefixes, mut script_prefixes) = (BTreeSet::new(), BTreeSet::new());
        for (i, b) in branch.iter().enumerate() {
            let height = first + i as Height;
            let bytes = self.block_bytes(map, &b.hash, b.entry.as_ref())?;
            let verified =
                verify(&bytes).with_context(|| format!("stale block {} at height {height}", b.hash))?;
            let undo = self.undo_for(&undo_index, b, height, &verified)?;
            let loc = BlockLoc::Db { len: bytes.len() as u32 };
            let rows = block_rows(height, &verified, txnum, loc, undo.as_ref())?;
            txnum += rows.header.tx_count;
            txid_prefixes.extend(rows.txid.iter().map(schema::key_prefix));
            script_prefixes.extend(rows.script.iter().map(schema::key_prefix));
            batch.delete_cf(self.store.cf(cf::HEADERS), schema::height_key(height));
            batch.delete_cf(self.store.cf(cf::TXPOS), schema::height_key(height));
        }
        // The lists also hold txnums of blocks below the branch: cut them at its start.
        self.store.truncate_txnums(cf::TXID, &txid_prefixes, from_txnum, &mut batch)?;
        self.store.truncate_txnums(cf::SCRIPT, &script_prefixes, from_txnum, &mut batch)?;
        match first.checked_sub(1) {
            Some(below) => {
                let row = self.store.header_row(below)?.context("no header row below the branch")?;
                batch.put_cf(self.store.cf(cf::META), meta::TIP, schema::encode_tip(below, &row.hash()));
            }
            None => batch.delete_cf(self.store.cf(cf::META), meta::TIP),
        }
        self.store.write_sync(batch)
    }

    /// A block's bytes wherever they are: blk files, the rawblock family, or the node.
    pub(crate) fn block_bytes(
        &self,
        map: &BlockMap,
        hash: &BlockHash,
        entry: Option<&crate::scan::BlockEntry>,
    ) -> Result<Vec<u8>> {
        if let Some(e) = entry.or_else(|| map.get(hash)) {
            return Ok(self.files.read(FileKind::Blk, e.file, e.offset as u64, e.len as usize)?.into_owned());
        }
        if let Some(raw) = self.store.db().get_cf(self.store.cf(cf::RAWBLOCK), hash.as_byte_array())? {
            return Ok(raw);
        }
        let rpc = self.rpc.ok_or_else(|| anyhow!("block {hash} is in no blk file and there is no RPC"))?;
        Ok(rpc.block_bytes(hash)?)
    }

    /// Blocks of the chain that are not in the blk files, fetched from the node and kept in the
    /// `rawblock` family so that their transactions stay servable.
    fn fetch_missing(&self, chain: &[ChainBlock], start: Height) -> Result<HashMap<BlockHash, Fetched>> {
        let mut out = HashMap::new();
        for b in chain[start as usize..].iter().filter(|b| b.entry.is_none()) {
            let rpc = self.rpc.context("blocks missing from the blk files need the node's RPC")?;
            let bytes = rpc.block_bytes(&b.hash)?;
            let undo = Some(undo_from_rpc(rpc, &b.hash)?);
            self.store.db().put_cf(self.store.cf(cf::RAWBLOCK), b.hash.as_byte_array(), &bytes)?;
            out.insert(b.hash, Fetched { bytes, undo });
        }
        if !out.is_empty() {
            self.store.flush()?;
        }
        Ok(out)
    }

    /// The undo data of a chain block: its rev record, told apart from a stale sibling's by shape,
    /// or the node's when the files cannot say.
    fn undo_for(
        &self,
        index: &UndoIndex,
        b: &ChainBlock,
        height: Height,
        block: &Verified,
    ) -> Result<Option<BlockUndo>> {
        self.undo_from(index.get(&b.hash), b, height, block)
    }

    /// The undo data among these rev records that fits the block, or the node's.
    pub(crate) fn undo_from(
        &self,
        locs: &[UndoLoc],
        b: &ChainBlock,
        height: Height,
        block: &Verified,
    ) -> Result<Option<BlockUndo>> {
        if height == 0 {
            return Ok(None);
        }
        let mut fitting = Vec::new();
        for loc in locs {
            let payload = self.files.read(FileKind::Rev, loc.file, loc.offset as u64, loc.len as usize)?;
            match BlockUndo::decode(&payload) {
                Ok(u) if undo_fits(block, &u) => fitting.push(u),
                Ok(_) => {}
                Err(e) => warn!(height, file = loc.file, "corrupt rev record: {e}"),
            }
        }
        if fitting.len() == 1 {
            return Ok(fitting.pop());
        }
        let why = if fitting.is_empty() { "no usable undo record" } else { "several undo records fit" };
        let rpc = self.rpc.ok_or_else(|| {
            anyhow!(
                "block {} at height {height}: {why} in the rev files, and the node's RPC is not available",
                b.hash
            )
        })?;
        Ok(Some(
            undo_from_rpc(rpc, &b.hash)
                .with_context(|| format!("block {} at height {height}: {why}", b.hash))?,
        ))
    }

    /// Rows of a block fetched from the node, which is then kept in the `rawblock` family.
    pub(crate) fn rows_from_node(
        &self,
        rpc: &Rpc,
        b: &ChainBlock,
        height: Height,
        txnum: TxNum,
    ) -> Result<BlockRows> {
        let bytes = rpc.block_bytes(&b.hash)?;
        let verified = verify(&bytes).with_context(|| format!("block {} from the node", b.hash))?;
        let undo = if height == 0 { None } else { Some(undo_from_rpc(rpc, &b.hash)?) };
        self.store.db().put_cf(self.store.cf(cf::RAWBLOCK), b.hash.as_byte_array(), &bytes)?;
        let loc = BlockLoc::Db { len: bytes.len() as u32 };
        block_rows(height, &verified, txnum, loc, undo.as_ref())
    }

    /// Indexes `chain` from `start` in batches. True when it was one batch into an empty index,
    /// written as plain values rather than merge operands: files needing no compaction.
    fn load(
        &self,
        chain: &[ChainBlock],
        start: Height,
        first_txnums: &[TxNum],
        fetched: &HashMap<BlockHash, Fetched>,
        summary: &mut Summary,
    ) -> Result<bool> {
        let todo = &chain[start as usize..];
        let len =
            |b: &ChainBlock| b.entry.map_or_else(|| fetched[&b.hash].bytes.len() as u64, |e| e.len as u64);
        let total: u64 = todo.iter().map(len).sum();
        let mut ranges = Vec::new();
        let (mut from, mut acc) = (start, 0u64);
        for (i, b) in todo.iter().enumerate() {
            acc += len(b);
            let h = start + i as Height;
            if acc >= self.batch_bytes || i + 1 == todo.len() {
                ranges.push((from, h));
                from = h + 1;
                acc = 0;
            }
        }
        info!(blocks = todo.len(), bytes = total, batches = ranges.len(), "indexing");
        // Plain values are only right when no earlier batch stored lists to add to. (An unfinished
        // earlier run's rows are of this same chain: a value written now replaces them whole.)
        let single = start == 0 && ranges.len() == 1;
        self.progress.start("indexing", total, todo.len() as u64, "blocks");
        let tmp = self.store.path().join("bulk-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let (tx, rx) = crossbeam_channel::bounded::<Result<Batch>>(1);
        std::thread::scope(|s| -> Result<()> {
            s.spawn(move || {
                let mut undo_index = UndoIndex::default();
                for (a, b) in ranges {
                    let t = Instant::now();
                    let batch = self.make_batch(chain, a, b, first_txnums, fetched, &mut undo_index);
                    debug!(first = a, last = b, secs = t.elapsed().as_secs_f64(), "batch built");
                    let failed = batch.is_err();
                    let sent = tx.send(batch).is_ok();
                    // While the writer ingests: the next batch's blocks are in other files.
                    self.files.unmap_all();
                    if !sent || failed {
                        break;
                    }
                }
            });
            for batch in rx {
                let batch = batch?;
                summary.blocks += (batch.last - batch.first + 1) as u64;
                summary.txs += batch.txs;
                summary.bytes += batch.bytes;
                let (t, first) = (Instant::now(), batch.first);
                self.write_batch(batch, &tmp, !single)?;
                debug!(first, secs = t.elapsed().as_secs_f64(), "batch written");
            }
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&tmp);
        self.progress.finish();
        Ok(single)
    }

    fn make_batch(
        &self,
        chain: &[ChainBlock],
        first: Height,
        last: Height,
        first_txnums: &[TxNum],
        fetched: &HashMap<BlockHash, Fetched>,
        undo_index: &mut UndoIndex,
    ) -> Result<Batch> {
        let blocks = &chain[first as usize..=last as usize];
        let nums: Vec<u32> = blocks
            .iter()
            .filter_map(|b| b.entry.map(|e| e.file))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let t = Instant::now();
        undo_index.match_files(self.files, self.net, chain, &nums)?;
        debug!(first, last, secs = t.elapsed().as_secs_f64(), "rev records matched");
        let t = Instant::now();
        let undo_index = &*undo_index;
        let rows: Vec<BlockRows> = blocks
            .par_iter()
            .enumerate()
            .map(|(i, b)| -> Result<BlockRows> {
                let height = first + i as Height;
                let txnum = first_txnums[height as usize];
                let rows = match (b.entry, fetched.get(&b.hash)) {
                    (Some(e), _) => {
                        let bytes = self.files.read(FileKind::Blk, e.file, e.offset as u64, e.len as usize)?;
                        let loc = BlockLoc::File { file: e.file, offset: e.offset, len: e.len };
                        let checked = verify(&bytes).with_context(|| {
                            format!("corrupt block at height {height} in blk{:05}.dat at offset {}", e.file, e.offset)
                        });
                        match (checked, self.rpc) {
                            (Ok(verified), _) => {
                                // Txnums were handed out with the count the scan read; a block
                                // that was still being written then would shift every later one.
                                if verified.txids.len() != e.ntx as usize {
                                    bail!(
                                        "block {} at height {height} changed since the scan ({} transactions, {} scanned); run the indexer again",
                                        b.hash,
                                        verified.txids.len(),
                                        e.ntx
                                    );
                                }
                                let undo = self.undo_for(undo_index, b, height, &verified)?;
                                block_rows(height, &verified, txnum, loc, undo.as_ref())?
                            }
                            // A record still being written, or damaged: the node has the block.
                            (Err(err), Some(rpc)) => {
                                warn!("{err:#}; fetching it from the node");
                                let rows = self.rows_from_node(rpc, b, height, txnum)?;
                                if rows.header.tx_count != e.ntx {
                                    bail!("{err:#}: its transaction count was misread from the file; run the indexer again");
                                }
                                rows
                            }
                            (Err(err), None) => {
                                return Err(err.context("the node's RPC is not available to fetch it (drop --offline)"))
                            }
                        }
                    }
                    (None, Some(f)) => {
                        let loc = BlockLoc::Db { len: f.bytes.len() as u32 };
                        let verified = verify(&f.bytes).with_context(|| format!("block {} from the node", b.hash))?;
                        block_rows(height, &verified, txnum, loc, f.undo.as_ref())?
                    }
                    (None, None) => unreachable!("missing blocks were fetched"),
                };
                if rows.header.hash() != b.hash {
                    bail!("block at height {height} is not {}", b.hash);
                }
                self.progress.inc(rows.header.loc.size() as u64, 1);
                Ok(rows)
            })
            .collect::<Result<_>>()?;
        let (mut headers, mut txpos) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        let (mut txid, mut script) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        let (mut bytes, mut txs) = (0, 0);
        for r in rows {
            bytes += r.header.loc.size() as u64;
            txs += r.header.tx_count as u64;
            headers.push((r.height, r.header.encode()));
            txpos.push((r.height, r.txpos));
            txid.push(r.txid);
            script.push(r.script);
        }
        debug!(first, last, secs = t.elapsed().as_secs_f64(), "rows made");
        let t = Instant::now();
        let batch = Batch {
            first,
            last,
            last_hash: chain[last as usize].hash,
            headers,
            txpos,
            txid: rowsort::sort_dedup(txid),
            script: rowsort::sort_dedup(script),
            bytes,
            txs,
        };
        debug!(first, last, secs = t.elapsed().as_secs_f64(), "rows sorted");
        Ok(batch)
    }

    /// Writes a batch's rows as SST files and ingests them; the bucket values as merge operands
    /// when `merge` (other batches add to the same buckets), else as plain values. The files are
    /// written in parallel: each family on its own, and the bucket families cut into parts at
    /// bucket boundaries (parts do not overlap, so they are ingested together).
    fn write_batch(&self, batch: Batch, tmp: &std::path::Path, merge: bool) -> Result<()> {
        let path = |name: &str, part: usize| tmp.join(format!("{}-{name}-{part}.sst", batch.first));
        let parts = rayon::current_num_threads().max(1);
        let width = self.store.bucket_width()?;
        let mut jobs: Vec<(&str, usize, Job)> =
            vec![(cf::HEADERS, 0, Job::Headers), (cf::TXPOS, 0, Job::Txpos)];
        for (name, rows) in [(cf::TXID, &batch.txid), (cf::SCRIPT, &batch.script)] {
            for (part, rows) in split_at_buckets(rows, parts, width).into_iter().enumerate() {
                jobs.push((name, part, Job::Lists(rows)));
            }
        }
        let written: Vec<Option<(&str, PathBuf)>> = jobs
            .into_par_iter()
            .map(|(name, part, job)| -> Result<Option<(&str, PathBuf)>> {
                let file = path(name, part);
                let any = match job {
                    Job::Headers => {
                        let rows = batch.headers.iter().map(|(h, v)| (schema::height_key(*h), v));
                        write_sst(name, &file, rows)?
                    }
                    Job::Txpos => {
                        let rows = batch.txpos.iter().map(|(h, v)| (schema::height_key(*h), v));
                        write_sst(name, &file, rows)?
                    }
                    Job::Lists(rows) => write_bucket_sst(name, &file, rows, width, merge)?,
                };
                Ok(any.then_some((name, file)))
            })
            .collect::<Result<_>>()?;
        let mut ssts: Vec<(&str, Vec<PathBuf>)> = Vec::new();
        for (name, file) in written.into_iter().flatten() {
            match ssts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, files)) => files.push(file),
                None => ssts.push((name, vec![file])),
            }
        }

        let pending = Pending { first: batch.first, last: batch.last, last_hash: batch.last_hash };
        self.store.put_meta(&[(meta::PENDING, Some(&pending.encode()))])?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        for (name, files) in ssts {
            self.store.db().ingest_external_file_cf_opts(self.store.cf(name), &ingest, files).with_context(
                || format!("ingesting {name} rows of heights {}..={}", batch.first, batch.last),
            )?;
        }
        let tip = schema::encode_tip(batch.last, &batch.last_hash);
        self.store.put_meta(&[(meta::TIP, Some(&tip)), (meta::PENDING, None)])?;
        Ok(())
    }
}

/// One SST file to write.
enum Job<'a> {
    Headers,
    Txpos,
    Lists(&'a [RowKey]),
}

/// Cuts sorted rows into about `parts` pieces, never inside one bucket's rows.
fn split_at_buckets(rows: &[RowKey], parts: usize, width: usize) -> Vec<&[RowKey]> {
    let mut out = Vec::new();
    let mut rest = rows;
    for left in (1..=parts).rev() {
        if rest.is_empty() {
            break;
        }
        let mut cut = if left == 1 { rest.len() } else { rest.len() / left };
        while cut > 0 && cut < rest.len() && rest[cut][..width] == rest[cut - 1][..width] {
            cut += 1;
        }
        let (piece, tail) = rest.split_at(cut.max(1).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Writes sorted, deduplicated rows of a bucket family as one bucket value per key (merge
/// operands when `merge`); false when there were no rows.
fn write_bucket_sst(
    name: &str,
    path: &std::path::Path,
    rows: &[RowKey],
    width: usize,
    merge: bool,
) -> Result<bool> {
    if rows.is_empty() {
        return Ok(false);
    }
    let opts = cf_options(name);
    let mut w = SstFileWriter::create(&opts);
    w.open(path)?;
    bucket::for_each_bucket(rows, width, |key, value| match merge {
        true => w.merge(key, value),
        false => w.put(key, value),
    })?;
    w.finish()?;
    Ok(true)
}

/// Writes sorted rows into an SST file for family `name` (`headers`, `txpos`: plain values);
/// false when there were no rows.
fn write_sst<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    name: &str,
    path: &std::path::Path,
    rows: impl Iterator<Item = (K, V)>,
) -> Result<bool> {
    let opts = cf_options(name);
    let mut w = SstFileWriter::create(&opts);
    w.open(path)?;
    let mut any = false;
    for (k, v) in rows {
        w.put(k, v)?;
        any = true;
    }
    if any {
        w.finish()?;
    }
    Ok(any)
}

/// First txnum of every height of the chain.
fn first_txnums(chain: &[ChainBlock], fetched: &HashMap<BlockHash, Fetched>) -> Result<Vec<TxNum>> {
    let mut out = Vec::with_capacity(chain.len());
    let mut next: u64 = 0;
    for b in chain {
        out.push(u32::try_from(next).map_err(|_| anyhow!("more than 2^32 transactions"))?);
        next += match b.entry {
            Some(e) => e.ntx as u64,
            None => blkindex_shared::parse::block_prefix(&fetched[&b.hash].bytes)?.1 as u64,
        };
    }
    Ok(out)
}

/// The spent outputs of a block as the node reports them (`getblock <hash> 3`), shaped like undo data.
pub fn undo_from_rpc(rpc: &Rpc, hash: &BlockHash) -> Result<BlockUndo> {
    let v = rpc.call("getblock", json!([hash.to_string(), 3]))?;
    let txs = v["tx"].as_array().context("getblock 3: no tx array")?;
    let mut undo = BlockUndo::default();
    for tx in txs.iter().skip(1) {
        let vin = tx["vin"].as_array().context("getblock 3: no vin")?;
        undo.tx_inputs.push(vin.len() as u32);
        for input in vin {
            let prevout = &input["prevout"];
            let script = hex::decode(
                prevout["scriptPubKey"]["hex"].as_str().context("getblock 3: no prevout script")?,
            )?;
            let sats =
                (prevout["value"].as_f64().context("getblock 3: no prevout value")? * 1e8).round() as u64;
            let start = undo.scripts.len() as u32;
            undo.scripts.extend_from_slice(&script);
            undo.coins.push(blkindex_shared::undo::Coin {
                height: prevout["height"].as_u64().unwrap_or(0) as u32,
                coinbase: prevout["generated"].as_bool().unwrap_or(false),
                value: sats,
                script: start..undo.scripts.len() as u32,
            });
        }
    }
    Ok(undo)
}
