//! One block (plus the outputs its inputs spent) → the index rows it adds. The same function serves
//! the bulk load, the follower, and undoing a block: a block's rows are always recomputed, never
//! remembered, so deleting exactly what a block added needs nothing stored.

use anyhow::{bail, Context, Result};

use blkindex_shared::parse::{self, is_unspendable};
use blkindex_shared::schema::{self, BlockLoc, HeaderRow, Height, RowKey, TxNum, TxPos};
use blkindex_shared::undo::BlockUndo;
use blkindex_shared::ScriptHash;

pub struct BlockRows {
    pub height: Height,
    pub header: HeaderRow,
    pub txpos: Vec<u8>,
    pub txid: Vec<RowKey>,
    pub script: Vec<RowKey>,
}

/// Does this undo data have the shape of this block (one entry per input of every non-coinbase
/// transaction)? Tells a block's own undo record from a stale sibling's.
pub fn undo_fits(block: &[u8], undo: &BlockUndo) -> bool {
    let mut counts = Vec::new();
    let ok = parse::for_each_tx::<anyhow::Error>(block, |i, tx| {
        if i > 0 {
            counts.push(tx.inputs.len() as u32);
        }
        Ok(())
    });
    ok.is_ok() && counts == undo.tx_inputs
}

/// The rows of the block at `height`, whose first transaction is `first_txnum`. `undo` is required
/// for every block but genesis, whose coinbase is unspendable and not indexed.
pub fn block_rows(
    height: Height,
    block: &[u8],
    first_txnum: TxNum,
    loc: BlockLoc,
    undo: Option<&BlockUndo>,
) -> Result<BlockRows> {
    let (header_bytes, _, txs_at) = parse::block_prefix(block)?;
    let header: bitcoin::block::Header = bitcoin::consensus::deserialize(header_bytes)?;
    let mut txid = Vec::new();
    let mut script = Vec::new();
    let mut sizes = Vec::new();
    let mut coins = undo.map(|u| u.coins.iter());
    let mut tx_scripts: Vec<[u8; 8]> = Vec::new();
    let ntx = parse::for_each_tx::<anyhow::Error>(block, |i, tx| {
        sizes.push(tx.raw.len() as u32);
        if height == 0 {
            return Ok(());
        }
        let txnum = first_txnum + i as u32;
        txid.push(schema::txid_key(&tx.txid, txnum));
        tx_scripts.clear();
        for out in &tx.outputs {
            if !is_unspendable(out.script) {
                tx_scripts.push(ScriptHash::of(out.script).prefix());
            }
        }
        if i > 0 {
            let (undo, coins) = (undo.context("undo data needed")?, coins.as_mut().unwrap());
            if undo.tx_inputs.get(i - 1) != Some(&(tx.inputs.len() as u32)) {
                bail!("undo data does not fit transaction {i} of block {height}");
            }
            for _ in &tx.inputs {
                let coin = coins.next().context("undo data too short")?;
                tx_scripts.push(ScriptHash::of(undo.script(coin)).prefix());
            }
        }
        tx_scripts.sort_unstable();
        tx_scripts.dedup();
        script.extend(tx_scripts.iter().map(|p| schema::row_key(*p, txnum)));
        Ok(())
    })
    .with_context(|| format!("block {} at height {height}", header.block_hash()))?;
    if let Some(u) = undo {
        if u.tx_inputs.len() != ntx - 1 {
            bail!(
                "undo data of block {height} has {} transactions, the block {}",
                u.tx_inputs.len(),
                ntx - 1
            );
        }
    }
    let header = HeaderRow {
        header,
        first_txnum,
        tx_count: ntx as u32,
        loc,
    };
    Ok(BlockRows {
        height,
        header,
        txpos: TxPos::encode(txs_at as u32, sizes),
        txid,
        script,
    })
}
