//! Undoing blocks: every row a branch of blocks added is found again by recomputing the blocks'
//! rows (from their bytes and undo data, wherever those are), then deleted with the new tip in one
//! synced write, so a reader sees the branch either whole or gone. Reorgs are undone one block per
//! write (`unwind_blocks`), so memory stays that of one block however deep they go, and a kill
//! midway leaves a valid tip.
//!
//! Before anything is undone, `check_reorg` makes sure the node's branch is worth it: a branch with
//! less work than ours means the node is behind (reindexing, still syncing, an `invalidateblock`),
//! not that our blocks left the best chain; and a reorg deeper than `--max-reorg` waits for the
//! operator.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};
use bitcoin::block::Header;
use bitcoin::Work;
use rocksdb::WriteBatch;

use blkindex_shared::schema::{self, cf, meta, BlockLoc, HeaderRow, Height, TxNum};

use crate::bestchain::ChainBlock;
use crate::revmatch::UndoIndex;
use crate::rows::{block_rows, verify, SpRows};
use crate::scan::BlockMap;
use crate::source::BlockSource;

/// Deletes every row the blocks of `branch` (heights from `first`) added, and sets the tip
/// just below them.
pub fn delete_branch(
    source: &BlockSource,
    map: &BlockMap,
    branch: &[ChainBlock],
    first: Height,
    txnum: TxNum,
) -> Result<()> {
    let undo_index = match_undo(source, branch)?;
    delete_blocks(source, map, &undo_index, branch, first, txnum)
}

/// Undoes the blocks of `rows` (consecutive header rows, the tip last) from the tip down, one
/// synced write each. Their undo records are matched once, for all of them.
pub fn unwind_blocks(source: &BlockSource, map: &BlockMap, rows: &[HeaderRow], first: Height) -> Result<()> {
    let branch: Vec<ChainBlock> = rows.iter().map(ChainBlock::from_row).collect();
    let undo_index = match_undo(source, &branch)?;
    for (i, row) in rows.iter().enumerate().rev() {
        delete_blocks(source, map, &undo_index, &branch[i..=i], first + i as Height, row.first_txnum)?;
    }
    Ok(())
}

/// Which rev records undo the blocks of `branch` (a scan of the rev files they are in).
fn match_undo(source: &BlockSource, branch: &[ChainBlock]) -> Result<UndoIndex> {
    let mut undo_index = UndoIndex::default();
    let nums: Vec<u32> =
        branch.iter().filter_map(|b| b.entry.map(|e| e.file)).collect::<HashSet<_>>().into_iter().collect();
    // The matcher needs the branch's predecessor in slot 0 (it skips genesis there).
    let mut wanted = vec![branch[0]];
    wanted.extend_from_slice(branch);
    undo_index.match_files(source.files, source.net, &wanted, &nums)?;
    Ok(undo_index)
}

/// Deletes the rows of `branch` (heights from `first`, first txnum `txnum`) and sets the tip just
/// below it, in one synced write.
fn delete_blocks(
    source: &BlockSource,
    map: &BlockMap,
    undo_index: &UndoIndex,
    branch: &[ChainBlock],
    first: Height,
    mut txnum: TxNum,
) -> Result<()> {
    let mut batch = WriteBatch::default();
    let from_txnum = txnum;
    let (mut txid_prefixes, mut script_prefixes) = (BTreeSet::new(), BTreeSet::new());
    for (i, b) in branch.iter().enumerate() {
        let height = first + i as Height;
        let bytes = source.block_bytes(map, &b.hash, b.entry.as_ref())?;
        let checked = verify(&bytes).with_context(|| format!("stale block {} at height {height}", b.hash))?;
        let undo = source.undo_from(undo_index.get(&b.hash), b, height, &checked)?;
        let loc = BlockLoc::Db { len: bytes.len() as u32 };
        // Silent-payment rows are keyed by height and deleted below like header rows: not made.
        let rows = block_rows(height, &bytes, &checked, txnum, loc, undo.as_ref(), SpRows::NONE)?;
        txnum += rows.header.tx_count;
        txid_prefixes.extend(rows.txid.iter().map(schema::key_prefix));
        script_prefixes.extend(rows.script.iter().map(schema::key_prefix));
        batch.delete_cf(source.store.cf(cf::HEADERS), schema::height_key(height));
        batch.delete_cf(source.store.cf(cf::TXPOS), schema::height_key(height));
        batch.delete_cf(source.store.cf(cf::TWEAK), schema::height_key(height));
        batch.delete_cf(source.store.cf(cf::TWEAK_INPUTS), schema::height_key(height));
    }
    // The lists also hold txnums of blocks below the branch: cut them at its start.
    source.store.truncate_txnums(cf::TXID, &txid_prefixes, from_txnum, &mut batch)?;
    source.store.truncate_txnums(cf::SCRIPT, &script_prefixes, from_txnum, &mut batch)?;
    match first.checked_sub(1) {
        Some(below) => {
            let row = source.store.header_row(below)?.context("no header row below the branch")?;
            batch.put_cf(source.store.cf(cf::META), meta::TIP, schema::encode_tip(below, &row.hash()));
        }
        None => batch.delete_cf(source.store.cf(cf::META), meta::TIP),
    }
    // The tweak pass may be turning these heights' `tweakinputs` rows into tweaks meanwhile.
    let _pending = crate::tweak_pass::PENDING.lock().unwrap_or_else(|e| e.into_inner());
    source.store.write_sync(batch)
}

/// Why a reorg is not undone (yet).
#[derive(Debug, PartialEq, Eq)]
pub enum ReorgRefusal {
    /// The node's branch from the fork has less work than ours: the node is behind.
    LessWork { depth: Height },
    /// Deeper than the bound the operator set.
    TooDeep { depth: Height, max: Height },
}

impl std::fmt::Display for ReorgRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReorgRefusal::LessWork { depth } => write!(
                f,
                "the node's best chain has less work than the index's {depth} block(s) above their fork \
                 (is it reindexing, still syncing, or was a block invalidated?)"
            ),
            ReorgRefusal::TooDeep { depth, max } => write!(
                f,
                "the node reorganized {depth} blocks deep, more than --max-reorg {max}: restart the \
                 indexer with --max-reorg {depth} (or more) to undo them"
            ),
        }
    }
}

/// Whether to undo `ours` (our blocks above the fork) for `theirs` (the node's headers above it).
/// Equal work is followed: the node chose that branch, and ours cannot win it back.
pub fn check_reorg(ours: &[Header], theirs: &[Header], max: Height) -> Result<(), ReorgRefusal> {
    let depth = ours.len() as Height;
    let work = |hs: &[Header]| hs.iter().fold(Work::from_be_bytes([0; 32]), |w, h| w + h.work());
    if work(theirs) < work(ours) {
        return Err(ReorgRefusal::LessWork { depth });
    }
    if depth > max {
        return Err(ReorgRefusal::TooDeep { depth, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::block::Version;
    use bitcoin::hashes::Hash;
    use bitcoin::{BlockHash, CompactTarget, TxMerkleNode};

    fn headers(n: usize, bits: u32) -> Vec<Header> {
        (0..n)
            .map(|i| Header {
                version: Version::ONE,
                prev_blockhash: BlockHash::all_zeros(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: i as u32,
                bits: CompactTarget::from_consensus(bits),
                nonce: 0,
            })
            .collect()
    }

    #[test]
    fn reorgs_are_undone_only_for_more_work_and_within_the_bound() {
        let easy = 0x207fffff; // regtest's target
        let hard = 0x1d00ffff; // mainnet's first: far more work per block
                               // A longer branch of the same difficulty wins; a shorter one is the node being behind.
        assert_eq!(check_reorg(&headers(3, easy), &headers(4, easy), 100), Ok(()));
        assert_eq!(check_reorg(&headers(3, easy), &headers(3, easy), 100), Ok(()), "equal work");
        assert_eq!(
            check_reorg(&headers(3, easy), &headers(2, easy), 100),
            Err(ReorgRefusal::LessWork { depth: 3 })
        );
        assert_eq!(check_reorg(&headers(200, easy), &[], 100), Err(ReorgRefusal::LessWork { depth: 200 }));
        // Work, not length: one hard block outweighs many easy ones.
        assert_eq!(check_reorg(&headers(5, easy), &headers(1, hard), 100), Ok(()));
        assert_eq!(
            check_reorg(&headers(1, hard), &headers(5, easy), 100),
            Err(ReorgRefusal::LessWork { depth: 1 })
        );
        // The bound.
        assert_eq!(check_reorg(&headers(100, easy), &headers(101, easy), 100), Ok(()));
        assert_eq!(
            check_reorg(&headers(101, easy), &headers(102, easy), 100),
            Err(ReorgRefusal::TooDeep { depth: 101, max: 100 })
        );
    }
}
