//! One block (plus the outputs its inputs spent) → the index rows it adds. The same function serves
//! the bulk load, the follower, and undoing a block: a block's rows are always recomputed, never
//! remembered, so deleting exactly what a block added needs nothing stored.

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use bitcoin::{Script, Txid};

use blkindex_shared::merkle;
use blkindex_shared::parse::{self, is_unspendable};
use blkindex_shared::schema::{
    self, cf, BlockLoc, HeaderRow, Height, PendingTweak, RowKey, TweakInputsRow, TweakRow, TweakStart, TxNum,
    TxPos,
};
use blkindex_shared::silent::{self, TweakInputs, TweakedTx};
use blkindex_shared::undo::BlockUndo;
use blkindex_shared::ScriptHash;

pub struct BlockRows {
    pub height: Height,
    pub header: HeaderRow,
    pub txpos: Vec<u8>,
    pub txid: Vec<RowKey>,
    pub script: Vec<RowKey>,
    /// The block's silent-payment row: None when it has no candidate transaction or the
    /// silent-payment index does not cover it.
    pub tweak: Option<SpRow>,
}

/// Which blocks get silent-payment rows, and whether their tweaks are computed with the rest of
/// the block's rows (`tweak` rows: the follower) or left to the tweak pass (`tweakinputs` rows:
/// the bulk pass, whose other rows then take a tenth of the time).
#[derive(Clone, Copy, Debug)]
pub struct SpRows {
    pub start: TweakStart,
    pub deferred: bool,
}

impl SpRows {
    pub const NONE: SpRows = SpRows { start: TweakStart(None), deferred: false };
}

/// A block's silent-payment row.
pub enum SpRow {
    /// A [`TweakRow`]: its eligible transactions, tweaks computed.
    Done(Vec<u8>),
    /// A [`TweakInputsRow`]: its candidate transactions, for the tweak pass.
    Pending(Vec<u8>),
}

impl SpRow {
    /// The family the row goes to, and its value.
    pub fn family_and_value(&self) -> (&'static str, &[u8]) {
        match self {
            SpRow::Done(v) => (cf::TWEAK, v),
            SpRow::Pending(v) => (cf::TWEAK_INPUTS, v),
        }
    }
}

/// A block checked against its header (every byte parses and the txids hash to the merkle root),
/// with what its rows need from its bytes, gathered in the same single walk over them.
pub struct CheckedBlock {
    pub header: Header,
    pub txids: Vec<Txid>,
    /// Number of inputs of each transaction.
    pub inputs: Vec<u32>,
    /// Offset of the first transaction in the block, and each transaction's size.
    first_offset: u32,
    sizes: Vec<u32>,
    /// Prefixes of the scripts of each transaction's spendable outputs: those of transaction i
    /// end at `output_ends[i]`.
    outputs: Vec<schema::Prefix>,
    output_ends: Vec<u32>,
    /// Transactions with a P2TR output (by position), the only ones that can be silent-payment
    /// eligible: found in the same walk by the script's shape, at no cost to the others.
    p2tr: Vec<u32>,
}

/// Parses a block and checks its merkle root, so that a damaged block is an error here, never
/// rows. (Witness bytes are not covered by the merkle root; the index does not read them.)
pub fn verify(block: &[u8]) -> Result<CheckedBlock> {
    let (header_bytes, ntx, txs_at) = parse::block_prefix(block)?;
    let header: Header = bitcoin::consensus::deserialize(header_bytes)?;
    let mut v = CheckedBlock {
        header,
        txids: Vec::with_capacity(ntx),
        inputs: Vec::with_capacity(ntx),
        first_offset: txs_at as u32,
        sizes: Vec::with_capacity(ntx),
        outputs: Vec::with_capacity(ntx * 2),
        output_ends: Vec::with_capacity(ntx),
        p2tr: Vec::new(),
    };
    parse::for_each_tx::<anyhow::Error>(block, |_, tx| {
        v.txids.push(tx.txid);
        v.inputs.push(tx.inputs.len() as u32);
        v.sizes.push(tx.raw.len() as u32);
        // OP_RETURN and oversize scripts are provably unspendable: not indexed.
        let spendable = tx.outputs.iter().filter(|o| !is_unspendable(o.script));
        v.outputs.extend(spendable.map(|o| schema::script_prefix(&ScriptHash::of(o.script))));
        v.output_ends.push(v.outputs.len() as u32);
        if tx.outputs.iter().any(|o| Script::from_bytes(o.script).is_p2tr()) {
            v.p2tr.push(v.txids.len() as u32 - 1);
        }
        Ok(())
    })?;
    if merkle::tx_root(&v.txids) != header.merkle_root {
        bail!("merkle root mismatch");
    }
    Ok(v)
}

/// Does this undo data have the shape of this block (one entry per input of every non-coinbase
/// transaction)? Tells a block's own undo record from a stale sibling's.
pub fn undo_fits(block: &CheckedBlock, undo: &BlockUndo) -> bool {
    block.inputs.get(1..) == Some(undo.tx_inputs.as_slice())
}

/// The rows of the verified block at `height` (`bytes`), whose first transaction is
/// `first_txnum`. `undo` is required for every block but genesis, whose coinbase is unspendable
/// and not indexed. `sp` says whether the block gets a silent-payment row, and which.
pub fn block_rows(
    height: Height,
    bytes: &[u8],
    block: &CheckedBlock,
    first_txnum: TxNum,
    loc: BlockLoc,
    undo: Option<&BlockUndo>,
    sp: SpRows,
) -> Result<BlockRows> {
    let ntx = block.txids.len();
    let header = HeaderRow { header: block.header, first_txnum, tx_count: ntx as u32, loc };
    let txpos = TxPos::encode(block.first_offset, block.sizes.iter().copied());
    if height == 0 {
        return Ok(BlockRows { height, header, txpos, txid: Vec::new(), script: Vec::new(), tweak: None });
    }
    let undo = undo.context("undo data needed")?;
    if !undo_fits(block, undo) {
        bail!("undo data does not fit block {height}");
    }
    let mut txid = Vec::with_capacity(ntx);
    let mut script = Vec::with_capacity(block.outputs.len() * 2);
    let mut coins = undo.coins.iter();
    let mut tx_scripts: Vec<schema::Prefix> = Vec::new();
    let mut outputs_from = 0;
    let covered = sp.start.covers(height);
    let mut p2tr = block.p2tr.iter().peekable();
    let mut candidates = Vec::new();
    let mut spends = parse::Spends::default();
    let mut at = block.first_offset as usize;
    for (i, (id, &output_end)) in block.txids.iter().zip(&block.output_ends).enumerate() {
        let tx_at = at;
        at += block.sizes[i] as usize;
        let txnum = first_txnum + i as u32;
        txid.push(schema::txid_key(id, txnum));
        tx_scripts.clear();
        tx_scripts.extend_from_slice(&block.outputs[outputs_from..output_end as usize]);
        outputs_from = output_end as usize;
        let spent_from = coins.as_slice();
        if i > 0 {
            for _ in 0..block.inputs[i] {
                let coin = coins.next().context("undo data too short")?;
                tx_scripts.push(schema::script_prefix(&ScriptHash::of(undo.script(coin))));
            }
        }
        let has_p2tr = p2tr.next_if_eq(&&(i as u32)).is_some();
        if covered && i > 0 && has_p2tr {
            let spent: Vec<&[u8]> =
                spent_from[..block.inputs[i] as usize].iter().map(|c| undo.script(c)).collect();
            if let Some(t) = candidate(&bytes[tx_at..at], &spent, txnum, &mut spends)? {
                candidates.push(t);
            }
        }
        tx_scripts.sort_unstable();
        tx_scripts.dedup();
        script.extend(tx_scripts.iter().map(|p| schema::row_key(*p, txnum)));
    }
    let tweak = match sp.deferred {
        _ if candidates.is_empty() => None,
        true => Some(SpRow::Pending(TweakInputsRow::encode(&candidates))),
        false => {
            let done = computed_on_every_core(candidates);
            (!done.is_empty()).then(|| SpRow::Done(TweakRow::encode(&done)))
        }
    };
    Ok(BlockRows { height, header, txpos, txid, script, tweak })
}

/// The candidates' tweaks, in order, computed on a thread per core: a followed block's commit
/// waits for them (about 40 µs each; a mainnet block has over a thousand), and these are threads
/// of its own, not rayon's pool, which a tweak pass beside the follower keeps busy.
fn computed_on_every_core(candidates: Vec<PendingTweak>) -> Vec<TweakedTx> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || candidates.len() < 64 {
        return candidates.into_iter().filter_map(PendingTweak::computed).collect();
    }
    let per = candidates.len().div_ceil(cores);
    let mut parts = Vec::with_capacity(cores);
    let mut rest = candidates;
    while rest.len() > per {
        let tail = rest.split_off(per);
        parts.push(std::mem::replace(&mut rest, tail));
    }
    parts.push(rest);
    std::thread::scope(|s| {
        let threads: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || part.into_iter().filter_map(PendingTweak::computed).collect::<Vec<_>>())
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a tweak thread panicked")).collect()
    })
}

/// A transaction with a P2TR output, as the index keeps it if it may be eligible (its keys are
/// checked to be points when its tweak is computed). Only such transactions are read further,
/// in place (`tx`, reused), and only when an input could carry a key.
fn candidate<'a>(
    raw: &'a [u8],
    spent: &[&[u8]],
    txnum: TxNum,
    tx: &mut parse::Spends<'a>,
) -> Result<Option<PendingTweak>> {
    let spent: Vec<&Script> = spent.iter().map(|s| Script::from_bytes(s)).collect();
    if !spent.iter().any(|s| silent::may_give_key(s)) {
        return Ok(None);
    }
    parse::spends(raw, tx)?;
    Ok(TweakInputs::of(tx, &spent).map(|inputs| PendingTweak {
        txnum,
        inputs,
        outputs: silent::output_prefixes(tx),
    }))
}

/// Input keys for the tests of tweaks computed here and in the tweak pass.
#[cfg(test)]
pub(crate) mod test_keys {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    /// `(n + 1)·G`, compressed.
    pub fn key(n: u64) -> [u8; 33] {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&(n + 1).to_be_bytes());
        SecretKey::from_slice(&b).unwrap().public_key(&Secp256k1::new()).serialize()
    }

    /// Bytes that are no point (x = 5: 5³ + 7 is no square mod p).
    pub const NO_POINT: [u8; 33] = {
        let mut k = [0u8; 33];
        k[0] = 2;
        k[32] = 5;
        k
    };
}

#[cfg(test)]
mod tests {
    use super::test_keys::{key, NO_POINT};
    use super::*;

    /// A block's tweaks computed on every core come in the candidates' order, each as computed
    /// alone, those not eligible left out, for counts around the split (below the threshold, one
    /// over a multiple of the cores, and many).
    #[test]
    fn tweaks_on_every_core_are_those_of_one_in_order() {
        for n in [10u32, 65, 129, 300] {
            let candidates: Vec<PendingTweak> = (0..n)
                .map(|i| PendingTweak {
                    txnum: 1000 + i,
                    inputs: TweakInputs {
                        outpoint: [i as u8; 36],
                        keys: if i % 9 == 4 {
                            vec![NO_POINT]
                        } else {
                            vec![key(i as u64), key(i as u64 + 5000)]
                        },
                    },
                    outputs: vec![[i as u8; 8]],
                })
                .collect();
            let one: Vec<TweakedTx> =
                candidates.clone().into_iter().filter_map(PendingTweak::computed).collect();
            assert_eq!(one.len(), (0..n).filter(|i| i % 9 != 4).count());
            assert_eq!(computed_on_every_core(candidates), one, "{n} candidates");
        }
    }
}
