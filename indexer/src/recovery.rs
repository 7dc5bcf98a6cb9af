//! Crash recovery before a bulk pass: the store is brought back to a block boundary of the chain
//! about to be indexed. A batch an earlier run left `pending` is redone if its blocks are still
//! on the chain, or its rows are deleted first if the chain changed; an index left on a branch the
//! node has since abandoned is unwound to the fork, block by block, if the node's branch has more
//! work and the reorg is within `--max-reorg` (else it stops and says why, changing nothing). A
//! staged load (`stage`) whose last staged block is still on the chain is continued; on a changed
//! chain its staged rows are dropped (the load starts again from the tip).

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use tracing::{info, warn};

use blkindex_shared::schema::{self, cf, meta, Height, Staged};

use crate::bestchain::ChainBlock;
use crate::scan::BlockMap;
use crate::source::BlockSource;
use crate::stage::Stage;
use crate::unwind::{check_reorg, delete_branch, unwind_blocks};

/// Brings the store back to a block boundary on `chain` and returns the next height to index,
/// with the staged load to continue, if any. (A staged load that was merging is finished before.)
pub fn recover(
    source: &BlockSource,
    map: &BlockMap,
    chain: &[ChainBlock],
    max_reorg: Height,
) -> Result<(Height, Option<Staged>)> {
    if let Some(p) = source.store.pending()? {
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
                h => source
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
                    None => source
                        .block_bytes(map, &cur, None)
                        .and_then(|b| Ok(bitcoin::consensus::deserialize(&b[..80])?))?,
                };
                branch.push(ChainBlock { hash: cur, header, entry: e.copied() });
                cur = header.prev_blockhash;
            }
            branch.reverse();
            delete_branch(source, map, &branch, p.first, first_txnum)?;
            source.store.put_meta(&[(meta::PENDING, None)])?;
        }
    }
    if let Some(staged) = source.store.staged()? {
        let stage = Stage::new(source.store.path(), source.store.bucket_width()?, staged.ranges as usize);
        if chain.get(staged.last as usize).is_some_and(|b| b.hash == staged.last_hash) {
            info!(
                first = staged.first,
                last = staged.last,
                "continuing the staged load an earlier run did not finish"
            );
            stage.truncate(&staged.lengths)?;
            return Ok((staged.last + 1, Some(staged)));
        }
        warn!(
            first = staged.first,
            last = staged.last,
            "the chain changed since an unfinished load staged its rows; starting it again"
        );
        // Its header, txpos and silent-payment rows are above the tip: they go with the staged
        // rows.
        let store = source.store;
        let mut b = rocksdb::WriteBatch::default();
        for name in [cf::HEADERS, cf::TXPOS, cf::TWEAK, cf::TWEAK_INPUTS] {
            b.delete_range_cf(
                store.cf(name),
                schema::height_key(staged.first),
                schema::height_key(Height::MAX),
            );
            b.delete_cf(store.cf(name), schema::height_key(Height::MAX));
        }
        b.delete_cf(store.cf(cf::META), meta::STAGED);
        store.write_sync(b)?;
        stage.remove()?;
    }
    let Some((tip, tip_hash)) = source.store.tip()? else {
        return Ok((0, None));
    };
    if chain.get(tip as usize).is_some_and(|b| b.hash == tip_hash) {
        return Ok((tip + 1, None));
    }
    // The node reorganized while the indexer was stopped: undo down to the fork.
    let rows = source.store.header_rows(tip)?;
    let fork = (0..=tip)
        .rev()
        .find(|&h| chain.get(h as usize).is_some_and(|b| b.hash == rows[h as usize].hash()))
        .context("the index shares no block with the node's chain (another chain?)")?;
    let ours: Vec<Header> = rows[fork as usize + 1..].iter().map(|r| r.header).collect();
    let theirs: Vec<Header> = chain[fork as usize + 1..].iter().map(|b| b.header).collect();
    if let Err(refusal) = check_reorg(&ours, &theirs, max_reorg) {
        bail!("{refusal}; nothing was changed: run the indexer again once that is resolved");
    }
    warn!(from = tip, to = fork, "the index is on a stale branch; undoing its blocks");
    unwind_blocks(source, map, &rows[fork as usize + 1..], fork + 1)?;
    Ok((fork + 1, None))
}
