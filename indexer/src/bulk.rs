//! The bulk load: the best chain, cut into batches of consecutive heights, each turned into rows in
//! parallel (rayon), sorted, and handed to `ingest`. A producer thread builds batch k+1 while the
//! writer ingests batch k (crossbeam channel of depth 1).
//!
//! Crash safety (the WAL is not used for rows): before a batch is ingested, `meta/pending` names it
//! (synced); after every family is ingested, `meta/tip` moves to its last block and `pending` goes,
//! in one synced write. Rows are key-only or keyed by height, so ingesting a batch twice changes
//! nothing; `recovery` redoes a `pending` batch on the same chain, and on a chain that changed
//! meanwhile deletes the rows its blocks would have added first.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use rayon::prelude::*;
use tracing::{debug, info, warn};

use blkindex_shared::blkfile::FileKind;
use blkindex_shared::schema::{cf, meta, BlockLoc, Height, TxNum};
use blkindex_shared::undo::BlockUndo;

use crate::bestchain::ChainBlock;
use crate::ingest::{self, Batch};
use crate::progress::Progress;
use crate::recovery;
use crate::revmatch::UndoIndex;
use crate::rows::{block_rows, verify, BlockRows};
use crate::rowsort;
use crate::scan::BlockMap;
use crate::source::{self, BlockSource};

pub struct Bulk<'a> {
    pub source: &'a BlockSource<'a>,
    pub progress: &'a Progress,
    /// Blocks are cut into batches of about this many bytes.
    pub batch_bytes: u64,
    /// Deepest stale branch undone at start (`--max-reorg`).
    pub max_reorg: Height,
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
struct RpcBlock {
    bytes: Vec<u8>,
    undo: Option<BlockUndo>,
}

impl Bulk<'_> {
    pub fn run(&self, map: &BlockMap, chain: &[ChainBlock]) -> Result<Summary> {
        let store = self.source.store;
        let start = recovery::recover(self.source, map, chain, self.max_reorg)?;
        let mut summary = Summary::default();
        let tip = chain.len() as Height - 1;
        if start <= tip {
            store.put_meta(&[(meta::COMPACTED, None)])?;
            let fetched = self.fetch_missing(chain, start)?;
            let first_txnums = first_txnums(chain, &fetched)?;
            if start > 0 {
                let row = store.header_row(start - 1)?.context("tip header row missing")?;
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
                store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
            }
        } else {
            info!(height = tip, "index is already at the best block");
        }
        if store.get_meta(meta::COMPACTED)?.is_none() {
            let t0 = Instant::now();
            self.progress.spinner("compacting");
            store.flush()?;
            store.compact_all()?;
            store.put_meta(&[(meta::COMPACTED, Some(&[1]))])?;
            self.progress.finish();
            summary.compact_secs = t0.elapsed().as_secs_f64();
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

    /// Indexes `chain` from `start` in batches. True when it was one batch into an empty index,
    /// written as plain values rather than merge operands: files needing no compaction.
    fn load(
        &self,
        chain: &[ChainBlock],
        start: Height,
        first_txnums: &[TxNum],
        fetched: &HashMap<BlockHash, RpcBlock>,
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
        let store = self.source.store;
        let tmp = store.path().join("bulk-tmp");
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
                    // While the writer ingests: the next batch's blocks are in other files, so
                    // the pages of this one's maps (if the files are mapped) can leave the RSS.
                    self.source.files.unmap_all();
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
                ingest::ingest(store, batch, &tmp, !single)?;
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
                                block_rows(height, &checked, txnum, loc, undo.as_ref())?
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
                        block_rows(height, &checked, txnum, loc, f.undo.as_ref())?
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
