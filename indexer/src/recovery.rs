//! Crash recovery before a bulk pass: the store is brought back to a block boundary of the chain
//! about to be indexed. A batch an earlier run left `pending` is redone if its blocks are still
//! on the chain, or its rows are deleted first if the chain changed; an index left on a branch the
//! node has since abandoned is unwound to the fork, block by block, if the node's branch has more
//! work and the reorg is within `--max-reorg` (else it stops and says why, changing nothing).

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use tracing::{info, warn};

use blkindex_shared::schema::{meta, Height};

use crate::bestchain::ChainBlock;
use crate::scan::BlockMap;
use crate::source::BlockSource;
use crate::unwind::{check_reorg, delete_branch, unwind_blocks};

/// Brings the store back to a block boundary on `chain` and returns the next height to index.
pub fn recover(
    source: &BlockSource,
    map: &BlockMap,
    chain: &[ChainBlock],
    max_reorg: Height,
) -> Result<Height> {
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
    let Some((tip, tip_hash)) = source.store.tip()? else {
        return Ok(0);
    };
    if chain.get(tip as usize).is_some_and(|b| b.hash == tip_hash) {
        return Ok(tip + 1);
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
    Ok(fork + 1)
}
