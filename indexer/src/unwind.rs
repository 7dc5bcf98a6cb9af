//! Undoing blocks: every row a branch of blocks added is found again by recomputing the blocks'
//! rows (from their bytes and undo data, wherever those are), then deleted with the new tip in one
//! synced write, so a reader sees the branch either whole or gone.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};
use rocksdb::WriteBatch;

use blkindex_shared::schema::{self, cf, meta, BlockLoc, Height, TxNum};

use crate::bestchain::ChainBlock;
use crate::revmatch::UndoIndex;
use crate::rows::{block_rows, verify};
use crate::scan::BlockMap;
use crate::source::BlockSource;

/// Deletes every row the blocks of `branch` (heights from `first`) added, and sets the tip
/// just below them.
pub fn delete_branch(
    source: &BlockSource,
    map: &BlockMap,
    branch: &[ChainBlock],
    first: Height,
    mut txnum: TxNum,
) -> Result<()> {
    let mut undo_index = UndoIndex::default();
    let nums: Vec<u32> =
        branch.iter().filter_map(|b| b.entry.map(|e| e.file)).collect::<HashSet<_>>().into_iter().collect();
    // The matcher needs the branch's predecessor in slot 0 (it skips genesis there).
    let mut wanted = vec![branch[0]];
    wanted.extend_from_slice(branch);
    undo_index.match_files(source.files, source.net, &wanted, &nums)?;
    let mut batch = WriteBatch::default();
    let from_txnum = txnum;
    let (mut txid_prefixes, mut script_prefixes) = (BTreeSet::new(), BTreeSet::new());
    for (i, b) in branch.iter().enumerate() {
        let height = first + i as Height;
        let bytes = source.block_bytes(map, &b.hash, b.entry.as_ref())?;
        let checked = verify(&bytes).with_context(|| format!("stale block {} at height {height}", b.hash))?;
        let undo = source.undo_from(undo_index.get(&b.hash), b, height, &checked)?;
        let loc = BlockLoc::Db { len: bytes.len() as u32 };
        let rows = block_rows(height, &checked, txnum, loc, undo.as_ref())?;
        txnum += rows.header.tx_count;
        txid_prefixes.extend(rows.txid.iter().map(schema::key_prefix));
        script_prefixes.extend(rows.script.iter().map(schema::key_prefix));
        batch.delete_cf(source.store.cf(cf::HEADERS), schema::height_key(height));
        batch.delete_cf(source.store.cf(cf::TXPOS), schema::height_key(height));
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
    source.store.write_sync(batch)
}
