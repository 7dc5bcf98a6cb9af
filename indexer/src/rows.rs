//! One block (plus the outputs its inputs spent) → the index rows it adds. The same function serves
//! the bulk load, the follower, and undoing a block: a block's rows are always recomputed, never
//! remembered, so deleting exactly what a block added needs nothing stored.

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use bitcoin::Txid;

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

/// A block checked against its header: every byte parses and the txids hash to the merkle root.
pub struct Verified {
    pub header: Header,
    pub txids: Vec<Txid>,
    /// Number of inputs of each transaction.
    pub inputs: Vec<u32>,
}

/// Parses a block and checks its merkle root, so that a damaged block is an error here, never
/// rows. (Witness bytes are not covered by the merkle root; the index does not read them.)
pub fn verify(block: &[u8]) -> Result<Verified> {
    let (header_bytes, ntx, _) = parse::block_prefix(block)?;
    let header: Header = bitcoin::consensus::deserialize(header_bytes)?;
    let mut v = Verified { header, txids: Vec::with_capacity(ntx), inputs: Vec::with_capacity(ntx) };
    parse::for_each_tx::<anyhow::Error>(block, |_, tx| {
        v.txids.push(tx.txid);
        v.inputs.push(tx.inputs.len() as u32);
        Ok(())
    })?;
    if parse::merkle_root(&v.txids) != header.merkle_root {
        bail!("merkle root mismatch");
    }
    Ok(v)
}

/// Does this undo data have the shape of this block (one entry per input of every non-coinbase
/// transaction)? Tells a block's own undo record from a stale sibling's.
pub fn undo_fits(block: &Verified, undo: &BlockUndo) -> bool {
    block.inputs.get(1..) == Some(undo.tx_inputs.as_slice())
}

/// The rows of the verified block at `height`, whose first transaction is `first_txnum`. `undo`
/// is required for every block but genesis, whose coinbase is unspendable and not indexed.
pub fn block_rows(
    height: Height,
    block: &[u8],
    verified: &Verified,
    first_txnum: TxNum,
    loc: BlockLoc,
    undo: Option<&BlockUndo>,
) -> Result<BlockRows> {
    let (_, ntx, txs_at) = parse::block_prefix(block)?;
    let mut txid = Vec::with_capacity(ntx);
    let mut script = Vec::with_capacity(ntx * 4);
    let mut sizes = Vec::with_capacity(ntx);
    if height > 0 {
        let undo = undo.context("undo data needed")?;
        if !undo_fits(verified, undo) {
            bail!("undo data does not fit block {height}");
        }
    }
    let mut coins = undo.map(|u| u.coins.iter());
    let mut tx_scripts: Vec<[u8; schema::PREFIX_LEN]> = Vec::new();
    parse::for_each_tx_unhashed::<anyhow::Error>(block, |i, tx| {
        sizes.push(tx.raw.len() as u32);
        if height == 0 {
            return Ok(());
        }
        let txnum = first_txnum + i as u32;
        txid.push(schema::txid_key(&verified.txids[i], txnum));
        tx_scripts.clear();
        for out in &tx.outputs {
            if !is_unspendable(out.script) {
                tx_scripts.push(schema::script_prefix(&ScriptHash::of(out.script)));
            }
        }
        if i > 0 {
            let (undo, coins) = (undo.unwrap(), coins.as_mut().unwrap());
            for _ in &tx.inputs {
                let coin = coins.next().context("undo data too short")?;
                tx_scripts.push(schema::script_prefix(&ScriptHash::of(undo.script(coin))));
            }
        }
        tx_scripts.sort_unstable();
        tx_scripts.dedup();
        script.extend(tx_scripts.iter().map(|p| schema::row_key(*p, txnum)));
        Ok(())
    })?;
    let header = HeaderRow { header: verified.header, first_txnum, tx_count: ntx as u32, loc };
    Ok(BlockRows { height, header, txpos: TxPos::encode(txs_at as u32, sizes), txid, script })
}
