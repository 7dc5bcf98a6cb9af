//! The bulk load: the best chain, cut into batches of consecutive heights, each turned into rows in
//! parallel (rayon), sorted, and handed to `ingest`. A producer thread builds batch k+1 while the
//! writer ingests batch k (crossbeam channel of depth 1). A load of one batch goes straight into
//! the index; a load of several stages its bucket rows (`stage`) and merges them at the end, key
//! range by key range.
//!
//! Crash safety (the WAL is not used for rows): before a one-batch load is ingested,
//! `meta/pending` names it (synced); after every family is ingested, `meta/tip` moves to its last
//! block and `pending` goes, in one synced write. Rows are key-only or keyed by height, so
//! ingesting a batch twice changes nothing; `recovery` redoes a `pending` batch on the same chain,
//! and on a chain that changed meanwhile deletes the rows its blocks would have added first. A
//! staged load records each staged batch in `meta/staged` and moves the tip only when its merge is
//! done (see `stage`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use rayon::prelude::*;
use tracing::{debug, info, warn};

use blkindex_shared::blkfile::FileKind;
use blkindex_shared::schema::{self, cf, meta, BlockLoc, Height, Staged, TxNum};
use blkindex_shared::undo::BlockUndo;

use crate::bestchain::ChainBlock;
use crate::ingest::{self, Batch, Lists, LongSets};
use crate::progress::Progress;
use crate::recovery;
use crate::revmatch::UndoIndex;
use crate::rows::{block_rows, verify, BlockRows, SpRow};
use crate::rowsort;
use crate::scan::BlockMap;
use crate::source::{self, BlockSource};
use crate::stage::{self, Stage, FAMILIES};

pub struct Bulk<'a> {
    pub source: &'a BlockSource<'a>,
    pub progress: &'a Progress,
    /// Blocks are cut into batches of about this many bytes.
    pub batch_bytes: u64,
    /// Bytes of memory the pass may use (`--mem-budget-mb`): also bounds a merged key range.
    pub mem_budget: u64,
    /// Deepest stale branch undone at start (`--max-reorg`).
    pub max_reorg: Height,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub blocks: u64,
    pub txs: u64,
    pub bytes: u64,
    pub index_secs: f64,
    /// Of the batches' making, summed over batches (they overlap the writing): undo records
    /// matched, rows made (parse, merkle check, rows), rows sorted.
    pub make_secs: [f64; 3],
    /// Writing batches: SST files ingested, rows staged.
    pub write_secs: f64,
    /// Merging the staged rows into the index (0 for a one-batch load).
    pub merge_secs: f64,
    /// Batches, and staged key ranges merged.
    pub batches: u64,
    pub ranges: u64,
    pub tip: Option<(Height, BlockHash)>,
}

/// A block fetched over RPC because the blk files did not have it.
struct RpcBlock {
    bytes: Vec<u8>,
    undo: Option<BlockUndo>,
}

/// Rows per byte of blocks that a key range's size is planned with: more than any chain has
/// (the bench chain has one row per 96 bytes, mainnet about one per 95), so ranges come out small
/// enough.
const PLANNED_BYTES_PER_ROW: u64 = 48;
/// Memory a staged row takes while its range is merged: read back (9 bytes), sorted into a copy
/// (9), and the file bytes, with slack.
const MERGE_BYTES_PER_ROW: u64 = 24;
/// How often a staged load records how far it got (what a kill can cost it).
const STAGE_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(5);

impl Bulk<'_> {
    pub fn run(&self, map: &BlockMap, chain: &[ChainBlock]) -> Result<Summary> {
        let store = self.source.store;
        let mut summary = Summary::default();
        // A load killed while it merged its staged rows finishes first: its rows are partly in
        // the index already. (Its blocks may have left the chain since: then the recovery below
        // unwinds them like any stale tip.)
        if let Some(staged) = store.staged()?.filter(|s| s.merged > 0) {
            info!(
                ranges_left = staged.ranges - staged.merged,
                "finishing the merge an earlier run did not finish"
            );
            let stage = Stage::new(store.path(), store.bucket_width()?, staged.ranges as usize);
            let t0 = Instant::now();
            self.merge_stage(&stage, staged)?;
            summary.merge_secs += t0.elapsed().as_secs_f64();
        }
        let (start, resume) = recovery::recover(self.source, map, chain, self.max_reorg)?;
        let tip = chain.len() as Height - 1;
        if start <= tip || resume.is_some() {
            store.put_meta(&[(meta::COMPACTED, None)])?;
            let fetched = self.fetch_missing(chain, start)?;
            let first_txnums = first_txnums(chain, &fetched)?;
            if start > 0 && (start as usize) < first_txnums.len() {
                let row = store.header_row(start - 1)?.context("tip header row missing")?;
                if row.first_txnum + row.tx_count != first_txnums[start as usize] {
                    bail!("stored txnums disagree with the blk files at height {start}; re-index");
                }
            }
            let t0 = Instant::now();
            self.load(chain, start, &first_txnums, &fetched, resume, &mut summary)?;
            summary.index_secs = t0.elapsed().as_secs_f64();
            // Nothing is left to compact: a fresh load wrote plain values (sorted, one per key);
            // a load on top of an index added one merge operand per bucket, which automatic
            // compactions fold.
            store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
        } else {
            info!(height = tip, "index is already at the best block");
            store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
        }
        store.enable_auto_compactions()?;
        summary.tip = store.tip()?;
        Ok(summary)
    }

    /// Blocks of the chain that are not in the blk files, fetched from the node and kept in the
    /// `rawblock` family so that their transactions stay servable.
    fn fetch_missing(&self, chain: &[ChainBlock], start: Height) -> Result<HashMap<BlockHash, RpcBlock>> {
        let mut out = HashMap::new();
        for b in chain[start as usize..].iter().filter(|b| b.entry.is_none()) {
            let rpc = self.source.rpc("a block missing from the blk files")?;
            let bytes = rpc.block_bytes(&b.hash)?;
            let undo = Some(source::undo_from_rpc(rpc, &b.hash)?);
            let store = self.source.store;
            store.db().put_cf(store.cf(cf::RAWBLOCK), b.hash.as_byte_array(), &bytes)?;
            out.insert(b.hash, RpcBlock { bytes, undo });
        }
        if !out.is_empty() {
            self.source.store.flush()?;
        }
        Ok(out)
    }

    /// Key ranges a staged load of `bytes` of blocks gets: each range's rows, merged by every
    /// worker at once, fit in half the memory budget; at least four per worker (so the merge is
    /// spread, and its progress moves).
    fn plan_ranges(&self, bytes: u64, width: usize) -> usize {
        let workers = rayon::current_num_threads().max(1) as u64;
        let rows = bytes / PLANNED_BYTES_PER_ROW + 1;
        let by_memory = (rows * MERGE_BYTES_PER_ROW * workers).div_ceil((self.mem_budget / 2).max(1));
        (by_memory.max(4 * workers) as usize).min(stage::max_ranges(width))
    }

    /// Indexes `chain` from `start` in batches: one batch straight into the index; several
    /// staged, then merged (`stage`). `resume`: a staged load an earlier run left, continued.
    fn load(
        &self,
        chain: &[ChainBlock],
        start: Height,
        first_txnums: &[TxNum],
        fetched: &HashMap<BlockHash, RpcBlock>,
        resume: Option<Staged>,
        summary: &mut Summary,
    ) -> Result<()> {
        let todo = &chain[(start as usize).min(chain.len())..];
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
        let store = self.source.store;
        let width = store.bucket_width()?;
        let staged = match resume {
            Some(s) => Some(s),
            None if ranges.len() > 1 => {
                let s = Staged {
                    first: start,
                    last: start.wrapping_sub(1),
                    last_hash: BlockHash::all_zeros(),
                    ranges: self.plan_ranges(total, width) as u32,
                    merged: 0,
                    lengths: Vec::new(),
                };
                Stage::new(store.path(), width, s.ranges as usize).create()?;
                Some(s)
            }
            None => None,
        };
        let stage = staged.as_ref().map(|s| Stage::new(store.path(), width, s.ranges as usize));
        let lists = match (&staged, start) {
            (Some(_), _) => Lists::Staged,
            // Plain values are only right when no earlier batch stored lists to add to. (An
            // unfinished earlier run's rows are of this same chain: a value written now replaces
            // them whole.)
            (None, 0) => Lists::Plain,
            (None, _) => Lists::Merge,
        };
        info!(
            blocks = todo.len(),
            bytes = total,
            batches = ranges.len(),
            staged_ranges = stage.as_ref().map_or(0, |s| s.ranges()),
            "indexing"
        );
        self.progress.start("indexing", total, todo.len() as u64, "blocks");
        let tmp = store.path().join("bulk-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut staged = staged;
        // Operands onto an index send the rows of its long lists there (a fresh index has none).
        let long = if lists == Lists::Merge { LongSets::load(store)? } else { LongSets::default() };
        let (tx, rx) = crossbeam_channel::bounded::<Result<Batch>>(1);
        std::thread::scope(|s| -> Result<()> {
            s.spawn(move || {
                let mut undo_index = UndoIndex::default();
                for (i, &(a, b)) in ranges.iter().enumerate() {
                    let t = Instant::now();
                    let batch = self.make_batch(chain, a, b, first_txnums, fetched, &mut undo_index);
                    debug!(first = a, last = b, secs = t.elapsed().as_secs_f64(), "batch built");
                    let failed = batch.is_err();
                    let sent = tx.send(batch).is_ok();
                    // While the writer ingests: the pages of this batch's maps (if the files are
                    // mapped) can leave the RSS, but for the files the next batch reads too.
                    let next = ranges.get(i + 1).map_or(&[][..], |&(a, b)| &chain[a as usize..=b as usize]);
                    let keep: Vec<u32> = next.iter().filter_map(|b| b.entry.map(|e| e.file)).collect();
                    self.source.files.unmap_except(&keep);
                    if !sent || failed {
                        break;
                    }
                }
            });
            let mut last_checkpoint = Instant::now();
            // A staged load's header and txpos rows, held until its next checkpoint.
            let mut held = Batch {
                first: 0,
                last: 0,
                last_hash: BlockHash::all_zeros(),
                headers: vec![],
                txpos: vec![],
                tweak: vec![],
                tweak_inputs: vec![],
                txid: vec![],
                script: vec![],
                bytes: 0,
                txs: 0,
                secs: [0.0; 3],
            };
            for batch in rx {
                let batch = batch?;
                summary.blocks += (batch.last - batch.first + 1) as u64;
                summary.txs += batch.txs;
                summary.bytes += batch.bytes;
                summary.batches += 1;
                for (sum, secs) in summary.make_secs.iter_mut().zip(batch.secs) {
                    *sum += secs;
                }
                let (t, first) = (Instant::now(), batch.first);
                match (&stage, &mut staged) {
                    (Some(stage), Some(staged)) => {
                        let base = first_txnums[batch.first as usize];
                        stage.append(0, &batch.txid, base)?;
                        stage.append(1, &batch.script, base)?;
                        (staged.last, staged.last_hash) = (batch.last, batch.last_hash);
                        held.headers.extend(batch.headers);
                        held.txpos.extend(batch.txpos);
                        held.tweak.extend(batch.tweak);
                        held.tweak_inputs.extend(batch.tweak_inputs);
                        // A checkpoint (the held header and txpos rows ingested, the files synced,
                        // then `meta/staged`) costs a few syncs per file: taken every few seconds,
                        // not after every batch. A kill loses at most that much work.
                        let first_or_last =
                            staged.lengths.is_empty() || batch.last == chain.len() as Height - 1;
                        if first_or_last || last_checkpoint.elapsed() >= STAGE_CHECKPOINT {
                            held.first = held.headers.first().map_or(batch.first, |h| h.0);
                            ingest::ingest(store, &held, &tmp, Lists::Staged, &long)?;
                            (held.headers, held.txpos, held.tweak, held.tweak_inputs) = Default::default();
                            staged.lengths = stage.sync()?;
                            store.put_meta(&[(meta::STAGED, Some(&staged.encode()))])?;
                            last_checkpoint = Instant::now();
                            failpoint("staged");
                        }
                    }
                    _ => ingest::ingest(store, &batch, &tmp, lists, &long)?,
                }
                summary.write_secs += t.elapsed().as_secs_f64();
                debug!(first, secs = t.elapsed().as_secs_f64(), "batch written");
            }
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&tmp);
        self.progress.finish();
        if let (Some(stage), Some(staged)) = (stage, staged) {
            let t0 = Instant::now();
            summary.ranges += staged.ranges as u64;
            self.merge_stage(&stage, staged)?;
            summary.merge_secs += t0.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Merges a staged load's key ranges into the index, from the first not yet merged, a few at a
    /// time (one per worker, each read whole, sorted, written as one SST file of final buckets),
    /// then sets the tip to its last block. A range's staging file goes once its rows are in.
    fn merge_stage(&self, stage: &Stage, mut staged: Staged) -> Result<()> {
        let store = self.source.store;
        let fresh = staged.first == 0;
        let long = if fresh { LongSets::default() } else { LongSets::load(store)? };
        let todo = staged.merged as usize..stage.ranges();
        let bytes: u64 = todo
            .clone()
            .flat_map(|r| (0..FAMILIES.len()).map(move |f| (f, r)))
            .map(|(f, r)| stage.range_bytes(f, r))
            .sum();
        info!(ranges = todo.len(), staged = %indicatif::HumanBytes(bytes), plain = fresh, "merging the staged rows");
        self.progress.start("merging", bytes, todo.len() as u64, "ranges");
        let tmp = store.path().join("merge-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let step = rayon::current_num_threads().max(1);
        for first in todo.clone().step_by(step) {
            let chunk = first..(first + step).min(todo.end);
            let jobs: Vec<(usize, usize)> =
                chunk.clone().flat_map(|r| (0..FAMILIES.len()).map(move |f| (f, r))).collect();
            let written: Vec<Vec<(&str, std::path::PathBuf)>> = jobs
                .into_par_iter()
                .map(|(f, r)| -> Result<Vec<(&str, std::path::PathBuf)>> {
                    let staged_bytes = stage.range_bytes(f, r);
                    let rows = rowsort::sort_dedup(stage.read_range(f, r)?);
                    let path = tmp.join(format!("{}-{r}.sst", FAMILIES[f]));
                    let long_path = tmp.join(format!("{}-long-{r}.sst", FAMILIES[f]));
                    let files =
                        ingest::write_lists(store, FAMILIES[f], &path, &long_path, &rows, !fresh, &long)?;
                    self.progress.inc(staged_bytes, 0);
                    Ok(files)
                })
                .collect::<Result<_>>()?;
            for name in FAMILIES.iter().chain([&cf::LONG]) {
                let files: Vec<_> =
                    written.iter().flatten().filter(|(g, _)| g == name).map(|(_, p)| p.clone()).collect();
                if !files.is_empty() {
                    ingest::ingest_files(store, name, files)
                        .with_context(|| format!("ingesting merged {name} ranges {chunk:?}"))?;
                }
            }
            staged.merged = chunk.end as u32;
            store.put_meta(&[(meta::STAGED, Some(&staged.encode()))])?;
            failpoint("merged");
            for r in chunk.clone() {
                for f in 0..FAMILIES.len() {
                    stage.remove_range(f, r)?;
                }
            }
            self.progress.inc(0, chunk.len() as u64);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        let tip = schema::encode_tip(staged.last, &staged.last_hash);
        store.put_meta(&[(meta::TIP, Some(&tip)), (meta::STAGED, None)])?;
        stage.remove()?;
        self.progress.finish();
        Ok(())
    }

    fn make_batch(
        &self,
        chain: &[ChainBlock],
        first: Height,
        last: Height,
        first_txnums: &[TxNum],
        fetched: &HashMap<BlockHash, RpcBlock>,
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
        undo_index.match_files(self.source.files, self.source.net, chain, &nums)?;
        let rev_secs = t.elapsed().as_secs_f64();
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
                        let bytes = self.source.files.read(FileKind::Blk, e.file, e.offset as u64, e.len as usize)?;
                        let loc = BlockLoc::File { file: e.file, offset: e.offset, len: e.len };
                        let checked = verify(&bytes).with_context(|| {
                            format!("corrupt block at height {height} in blk{:05}.dat at offset {}", e.file, e.offset)
                        });
                        match (checked, self.source.rpc) {
                            (Ok(checked), _) => {
                                // Txnums were handed out with the count the scan read; a block
                                // that was still being written then would shift every later one.
                                if checked.txids.len() != e.ntx as usize {
                                    bail!(
                                        "block {} at height {height} changed since the scan ({} transactions, {} scanned); run the indexer again",
                                        b.hash,
                                        checked.txids.len(),
                                        e.ntx
                                    );
                                }
                                let undo = self.source.undo_from(undo_index.get(&b.hash), b, height, &checked)?;
                                block_rows(height, &bytes, &checked, txnum, loc, undo.as_ref(), self.source.sp)?
                            }
                            // A record still being written, or damaged: the node has the block.
                            (Err(err), Some(_)) => {
                                warn!("{err:#}; fetching it from the node");
                                let (rows, bytes) = self.source.rows_from_node(&b.hash, height, txnum)?;
                                let rawblock = self.source.store.cf(cf::RAWBLOCK);
                                self.source.store.db().put_cf(rawblock, b.hash.as_byte_array(), &bytes)?;
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
                        let checked = verify(&f.bytes).with_context(|| format!("block {} from the node", b.hash))?;
                        block_rows(height, &f.bytes, &checked, txnum, loc, f.undo.as_ref(), self.source.sp)?
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
        let (mut tweak, mut tweak_inputs) = (Vec::new(), Vec::new());
        let (mut txid, mut script) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        let (mut bytes, mut txs) = (0, 0);
        for r in rows {
            bytes += r.header.loc.size() as u64;
            txs += r.header.tx_count as u64;
            headers.push((r.height, r.header.encode()));
            txpos.push((r.height, r.txpos));
            match r.tweak {
                Some(SpRow::Done(t)) => tweak.push((r.height, t)),
                Some(SpRow::Pending(t)) => tweak_inputs.push((r.height, t)),
                None => {}
            }
            txid.push(r.txid);
            script.push(r.script);
        }
        let rows_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut batch = Batch {
            first,
            last,
            last_hash: chain[last as usize].hash,
            headers,
            txpos,
            tweak,
            tweak_inputs,
            txid: rowsort::sort_dedup(txid),
            script: rowsort::sort_dedup(script),
            bytes,
            txs,
            secs: [0.0; 3],
        };
        batch.secs = [rev_secs, rows_secs, t.elapsed().as_secs_f64()];
        debug!(first, last, secs = ?batch.secs, "batch made (undo matched, rows, sorted)");
        Ok(batch)
    }
}

/// A kill at an exact point, for the crash tests: `BLKINDEX_FAILPOINT=<name>:<n>` aborts the
/// process the n-th time point `name` is passed ("staged": a staged load's checkpoint; "merged":
/// a chunk of staged ranges merged).
pub(crate) fn failpoint(name: &str) {
    static PASSED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(v) = std::env::var("BLKINDEX_FAILPOINT") else { return };
    let Some((point, n)) = v.split_once(':') else { return };
    if point == name
        && PASSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == n.parse().unwrap_or(0)
    {
        eprintln!("failpoint {name}:{n}: aborting");
        std::process::abort();
    }
}

/// A test hook, like `failpoint`: with `BLKINDEX_PAUSEPOINT=<name>:<file>`, creates
/// `<file>.reached` at `name` and waits there until `file` exists, so that a test can act while a
/// phase is midway. A test that never lets it go aborts the process after ten minutes.
pub(crate) fn pausepoint(name: &str) {
    let Ok(v) = std::env::var("BLKINDEX_PAUSEPOINT") else { return };
    let Some((point, file)) = v.split_once(':') else { return };
    if point != name {
        return;
    }
    let file = std::path::Path::new(file);
    let _ = std::fs::write(file.with_extension("reached"), b"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !file.exists() {
        if std::time::Instant::now() > deadline {
            eprintln!("pausepoint {name}: {} never appeared: aborting", file.display());
            std::process::abort();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// First txnum of every height of the chain.
fn first_txnums(chain: &[ChainBlock], fetched: &HashMap<BlockHash, RpcBlock>) -> Result<Vec<TxNum>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::block::{Header, Version};
    use bitcoin::{CompactTarget, TxMerkleNode};

    fn block(n: u8, ntx: Option<u32>) -> ChainBlock {
        let header = Header {
            version: Version::ONE,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: n as u32,
            bits: CompactTarget::from_consensus(0x207fffff),
            nonce: 0,
        };
        let hash = header.block_hash();
        let entry = ntx.map(|ntx| crate::scan::BlockEntry { header, hash, file: 0, offset: 0, len: 0, ntx });
        ChainBlock { hash, header, entry }
    }

    #[test]
    fn first_txnums_count_blocks_from_files_and_from_the_node() {
        // A block of three transactions from the node.
        let fetched_block = block(2, None);
        let coinbase =
            bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest).txdata[0].clone();
        let whole = bitcoin::Block { header: fetched_block.header, txdata: vec![coinbase; 3] };
        let bytes = bitcoin::consensus::serialize(&whole);
        let chain = [block(0, Some(1)), block(1, Some(5)), fetched_block, block(3, Some(2))];
        let fetched = HashMap::from([(chain[2].hash, RpcBlock { bytes, undo: None })]);
        assert_eq!(first_txnums(&chain, &fetched).unwrap(), vec![0, 1, 6, 9]);
    }

    #[test]
    fn first_txnums_refuse_to_wrap() {
        let chain = [block(0, Some(u32::MAX)), block(1, Some(1)), block(2, Some(1))];
        let err = first_txnums(&chain, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("2^32"), "{err}");
    }
}
