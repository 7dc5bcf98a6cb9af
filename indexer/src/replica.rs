//! An index copied from another node's indexer (a checkpoint, or a stopped index's files) made
//! this node's, before anything else runs on it.
//!
//! The copy's rows are the chain's and hold for any node with that chain, except where each block
//! is: `headers` rows name a blk file, offset and length of the source node's files, and another
//! node wrote its files in its own order (blocks as they arrived, stale ones among them, another
//! `xor.dat`). So every row's place is checked against a scan of this node's blk files and
//! rewritten where it differs; a block this node's files lack is fetched over RPC into
//! `rawblock`. That runs when `meta/checkpoint` is present (a checkpoint's first start; the key
//! is deleted in the same write as the last rows, and a kill midway runs it again), or when the
//! tip block is not where its row says (a copy of the files).
//!
//! Before that, the copy's tip is placed on the node's chain: a tip the node's chain does not
//! hold is undone by the follower if the fork is within `--max-reorg` and the node has the undone
//! blocks (their bytes and undo data are needed to find their rows); beyond the bound, or when
//! it has not got them, this stops with what to do (a full pass, or a checkpoint of this chain).

use anyhow::{bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use rocksdb::WriteBatch;
use serde_json::json;
use tracing::{info, warn};

use blkindex_shared::blkfile::FileKind;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::{self, cf, meta, BlockLoc, HeaderRow, Height};
use blkindex_shared::store::Store;

use crate::progress::Progress;
use crate::scan::scan_blk_files;
use crate::source::BlockSource;

/// Rows rewritten per synced write.
const BATCH_ROWS: usize = 10_000;

/// Makes a copied index this node's (see the module's comment). Does nothing for an index built
/// on this node.
pub fn prepare(source: &BlockSource, progress: &Progress, max_reorg: Height) -> Result<()> {
    let store = source.store;
    let Some((tip, tip_hash)) = store.tip()? else { return Ok(()) };
    let marked = store.get_meta(meta::CHECKPOINT)?.is_some();
    if marked {
        info!(tip, %tip_hash, "this index is a checkpoint: checking where its blocks are in this node's files");
    } else {
        let row = store.header_row(tip)?.context("no header row at the tip")?;
        if in_place(source, &row) {
            return Ok(());
        }
        warn!(
            tip,
            %tip_hash,
            "the tip block is not where the index says in this node's blk files: the index was copied from \
             another node; checking where every block is"
        );
    }
    let (fork, behind) = match source.rpc {
        Some(rpc) => fork_with_node(store, rpc, tip, max_reorg)?,
        None => (tip, false),
    };
    let map = scan_blk_files(source.files, source.net, progress)?;
    let rows = store.header_rows(tip)?;
    let (mut batch, mut moved, mut fetched) = (WriteBatch::default(), 0usize, 0usize);
    for (h, row) in rows.iter().enumerate() {
        let h = h as Height;
        let hash = row.hash();
        let loc = match (map.get(&hash), row.loc) {
            (Some(e), _) => BlockLoc::File { file: e.file, offset: e.offset, len: e.len },
            (None, BlockLoc::Db { len }) => BlockLoc::Db { len },
            (None, BlockLoc::File { .. }) => {
                let bytes = fetch(source, &hash, h, (fork, behind), tip)?;
                batch.put_cf(store.cf(cf::RAWBLOCK), hash.as_byte_array(), &bytes);
                fetched += 1;
                BlockLoc::Db { len: bytes.len() as u32 }
            }
        };
        if loc != row.loc {
            batch.put_cf(store.cf(cf::HEADERS), schema::height_key(h), HeaderRow { loc, ..*row }.encode());
            moved += 1;
        }
        if batch.len() >= BATCH_ROWS {
            store.write_sync(std::mem::take(&mut batch))?;
        }
    }
    batch.delete_cf(store.cf(cf::META), meta::CHECKPOINT);
    store.write_sync(batch)?;
    info!(
        blocks = rows.len(),
        moved,
        fetched,
        "block places now this node's: {moved} row(s) rewritten, {fetched} block(s) fetched from the node"
    );
    Ok(())
}

/// Whether the row's block is where the row says (its header read back from the file).
fn in_place(source: &BlockSource, row: &HeaderRow) -> bool {
    match row.loc {
        BlockLoc::File { file, offset, len } => {
            len >= 80
                && source.files.read(FileKind::Blk, file, offset as u64, 80).is_ok_and(|b| {
                    bitcoin::consensus::deserialize::<bitcoin::block::Header>(&b)
                        .is_ok_and(|hd| hd.block_hash() == row.hash())
                })
        }
        BlockLoc::Db { .. } => source
            .store
            .db()
            .get_cf(source.store.cf(cf::RAWBLOCK), row.hash().as_byte_array())
            .is_ok_and(|v| v.is_some()),
    }
}

/// The highest height where the copy and the node's active chain hold the same block, and whether
/// that is the node's tip below the copy's (the node behind, on the same chain). Refuses a fork
/// deeper than `max_reorg`.
fn fork_with_node(store: &Store, rpc: &Rpc, tip: Height, max_reorg: Height) -> Result<(Height, bool)> {
    let node_height = rpc.call("getblockcount", json!([]))?.as_u64().context("getblockcount")? as Height;
    let mut h = tip.min(node_height);
    loop {
        let ours = store.header_row(h)?.context("missing header row")?.hash();
        let theirs: BlockHash =
            rpc.call("getblockhash", json!([h]))?.as_str().context("getblockhash")?.parse()?;
        if ours == theirs {
            break;
        }
        if tip - h >= max_reorg || h == 0 {
            bail!(
                "{}: the copy's tip (height {tip}, {}) is not on the node's chain, and they part more than \
                 --max-reorg {max_reorg} blocks below it: this index cannot follow this node. Index the node's \
                 chain with a full pass (an empty --db), or start from a checkpoint of an index of this chain",
                store.path().display(),
                store.tip()?.map(|t| t.1.to_string()).unwrap_or_default()
            );
        }
        h -= 1;
    }
    let behind = h < tip && h == node_height;
    if h < tip {
        match behind {
            true => info!(tip, node_height, "the node is behind the copy's tip, on the same chain"),
            false => warn!(
                tip,
                fork = h,
                "the copy's {} block(s) above height {h} are not on the node's chain: the follower undoes them",
                tip - h
            ),
        }
    }
    Ok((h, behind))
}

/// A block of the copy this node's files lack, from the node; or why it cannot be had.
fn fetch(
    source: &BlockSource,
    hash: &BlockHash,
    h: Height,
    (fork, behind): (Height, bool),
    tip: Height,
) -> Result<Vec<u8>> {
    let rpc = source.rpc("a block of the copy missing from this node's files")?;
    match rpc.block_bytes(hash) {
        Ok(b) => Ok(b),
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) if h > fork && behind => bail!(
            "{}: the node is behind the copy (its tip at height {fork}, the copy's at {tip}) and does not have \
             block {hash} at height {h} ({e}): start this indexer once the node has synced past height {tip}",
            source.store.path().display()
        ),
        Err(e) if h > fork => bail!(
            "{}: the copy's blocks above height {fork} (up to its tip {tip}) are not on this node's chain, and \
             the node does not have block {hash} at height {h} ({e}), whose bytes and undo data undoing it \
             needs: start from a checkpoint taken at a height this node's chain holds, or index its chain with \
             a full pass (an empty --db)",
            source.store.path().display()
        ),
        Err(e) => bail!(
            "{}: block {hash} at height {h} of the copy is neither in this node's blk files nor given by it \
             ({e})",
            source.store.path().display()
        ),
    }
}
