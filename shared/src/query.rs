//! What the index answers: a script's confirmed history, unspent outputs and balance; transactions
//! by txid or txnum; the spender of an outpoint; block bytes and txids. Everything comes
//! from the index and the blk files alone; no node round-trip.
//!
//! Rows carry 5-byte hash prefixes, so every candidate a prefix scan yields is checked against the
//! transaction itself: a funding output must hash to the script hash exactly, and a spending input
//! must spend an output already found to fund it. Prefix collisions therefore cost a read, never a
//! wrong answer.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::{BlockHash, OutPoint, Txid};

use crate::blkfile::{BlockFiles, FileKind};
use crate::chain::Chain;
use crate::hashes::ScriptHash;
use crate::parse::{self, is_unspendable, Tx};
use crate::schema::{self, cf, BlockLoc, HeaderRow, Height, Prefix, TxNum, TxPos};
use crate::store::Store;
use crate::varint::Reader;

/// A confirmed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxInfo {
    pub txid: Txid,
    pub txnum: TxNum,
    pub height: Height,
    /// Position in its block.
    pub pos: u32,
    pub raw: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    pub txid: Txid,
    pub height: Height,
    pub txnum: TxNum,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utxo {
    pub outpoint: OutPoint,
    pub value: u64,
    pub height: Height,
    pub txnum: TxNum,
}

/// A script's confirmed history and what of it is unspent, from one pass over its transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptState {
    pub history: Vec<HistoryItem>,
    pub utxos: Vec<Utxo>,
}

impl ScriptState {
    pub fn balance(&self) -> u64 {
        self.utxos.iter().map(|u| u.value).sum()
    }
}

impl From<ScriptState> for ScriptScan {
    /// A state with no tip (as of an empty chain), as tests build them.
    fn from(state: ScriptState) -> Self {
        ScriptScan { state, ..Default::default() }
    }
}

/// A script's state as of a chain tip, with what it takes to bring it forward to a later tip
/// without reading its older transactions again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptScan {
    pub state: ScriptState,
    /// The tip the state is complete up to (None: an empty chain).
    pub tip: Option<(Height, BlockHash)>,
    /// The first txnum after that tip.
    end_txnum: TxNum,
    /// The script's bytes, once an output paying it has been found.
    script: Option<Vec<u8>>,
}

pub use crate::bucket::TooManyRows;

/// A transaction read by number: (txnum, bytes, height, position in its block).
type NumberedTx = (TxNum, Vec<u8>, Height, u32);

/// A reader of the index: a store (the server's secondary instance, or a test's), the node's blk
/// files for transaction bytes, and the indexed chain in memory, up to the tip the reader has
/// caught up to.
pub struct IndexReader {
    pub store: Store,
    pub blocks: BlockFiles,
    pub chain: Chain,
}

impl IndexReader {
    pub fn new(store: Store, blocks: BlockFiles) -> Result<Self> {
        let chain = Chain::load(&store)?;
        Ok(IndexReader { store, blocks, chain })
    }

    /// Catches a secondary up with the indexer, to a tip all of whose rows it sees; true when the
    /// chain changed. A bulk batch's SST files are ingested (recorded in the MANIFEST) before its
    /// tip is written (to the WAL), but a catch-up reads the MANIFEST first and the WAL after: one
    /// catch-up can show a tip whose files it has not seen. So the tip read after one catch-up is
    /// used only after a second, which sees every file ingested before that tip was written.
    pub fn catch_up(&mut self) -> Result<bool> {
        self.catch_up_store()?;
        let tip = self.store.tip()?;
        self.catch_up_store()?;
        self.chain.sync_to(&self.store, tip)
    }

    fn catch_up_store(&mut self) -> Result<()> {
        if let Err(e) = self.store.catch_up() {
            // The primary deleted a file (after a compaction) this instance had not caught up to.
            tracing::debug!("catch-up failed ({e:#}); reopening the secondary");
            self.store = self.store.reopen()?;
        }
        Ok(())
    }

    fn row(&self, height: Height) -> Result<&HeaderRow> {
        self.chain.row(height).ok_or_else(|| anyhow!("no block at height {height}"))
    }

    /// Bytes `offset..offset+len` of the block at `height`.
    fn block_range(&self, height: Height, offset: u32, len: u32) -> Result<Vec<u8>> {
        let row = self.row(height)?;
        if offset as u64 + len as u64 > row.loc.size() as u64 {
            bail!("range {offset}+{len} is outside block {height}");
        }
        match row.loc {
            BlockLoc::File { file, offset: at, .. } => {
                self.blocks.read(FileKind::Blk, file, at as u64 + offset as u64, len as usize)
            }
            BlockLoc::Db { .. } => {
                let raw = self
                    .store
                    .db()
                    .get_cf(self.store.cf(cf::RAWBLOCK), row.hash())?
                    .ok_or_else(|| anyhow!("block {height} missing from the rawblock family"))?;
                Ok(raw[offset as usize..(offset + len) as usize].to_vec())
            }
        }
    }

    pub fn block_bytes(&self, height: Height) -> Result<Vec<u8>> {
        let len = self.row(height)?.loc.size();
        self.block_range(height, 0, len)
    }

    /// The height of the block holding `txnum`.
    fn height_of(&self, txnum: TxNum) -> Result<Height> {
        self.chain.height_of_txnum(txnum).ok_or_else(|| anyhow!("txnum {txnum} is beyond the indexed chain"))
    }

    /// The `txpos` row (where each transaction sits) of the block at `height`.
    fn txpos_row(&self, height: Height) -> Result<Vec<u8>> {
        self.store
            .db()
            .get_cf(self.store.cf(cf::TXPOS), schema::height_key(height))?
            .ok_or_else(|| anyhow!("no txpos row at height {height}"))
    }

    /// The raw transaction with number `txnum`, with its height and position.
    pub fn tx_by_num(&self, txnum: TxNum) -> Result<(Vec<u8>, Height, u32)> {
        let height = self.height_of(txnum)?;
        let pos = txnum - self.row(height)?.first_txnum;
        let (offset, size) = TxPos::locate(&self.txpos_row(height)?, pos)?;
        let raw = self.block_range(height, offset, size)?;
        Ok((raw, height, pos))
    }

    /// Transactions by number (ascending), read lazily, each block's `txpos` row once, which
    /// matters for long histories: (txnum, bytes, height, position).
    fn txs_by_nums<'a>(&'a self, txnums: &'a [TxNum]) -> impl Iterator<Item = Result<NumberedTx>> + 'a {
        let mut block: Option<(Height, TxNum, Vec<u32>)> = None;
        txnums.iter().map(move |&txnum| {
            let height = self.height_of(txnum)?;
            if block.as_ref().map(|b| b.0) != Some(height) {
                let offsets = TxPos::offsets(&self.txpos_row(height)?)?;
                block = Some((height, self.row(height)?.first_txnum, offsets));
            }
            let (height, first, offsets) = block.as_ref().unwrap();
            let pos = (txnum - first) as usize;
            if pos + 1 >= offsets.len() {
                bail!("txnum {txnum} is past the {} transactions of block {height}", offsets.len() - 1);
            }
            let raw = self.block_range(*height, offsets[pos], offsets[pos + 1] - offsets[pos])?;
            Ok((txnum, raw, *height, pos as u32))
        })
    }

    /// The txnums stored under this prefix, ascending, up to the indexed tip.
    fn scan(&self, family: &str, prefix: Prefix) -> Result<Vec<TxNum>> {
        self.scan_at_most(family, prefix, usize::MAX)
    }

    /// As `scan`, refusing a list of more than `max_rows` rows from its length alone.
    fn scan_at_most(&self, family: &str, prefix: Prefix, max_rows: usize) -> Result<Vec<TxNum>> {
        let mut out = match self.store.txnums_at_most(family, &prefix, max_rows)? {
            Ok(txnums) => txnums,
            Err(rows) => return Err(TooManyRows { rows, max: max_rows }.into()),
        };
        // Txnums past the indexed tip belong to a batch not yet committed: not visible.
        let end = self.chain.next_txnum();
        out.truncate(out.partition_point(|&n| n < end));
        Ok(out)
    }

    /// Every confirmed transaction with this txid (two for BIP30's duplicate coinbases), oldest first.
    pub fn txs_by_txid(&self, txid: &Txid) -> Result<Vec<TxInfo>> {
        let mut out = Vec::new();
        for txnum in self.scan(cf::TXID, schema::txid_prefix(txid))? {
            let (raw, height, pos) = self.tx_by_num(txnum)?;
            if compute_txid(&raw)? == *txid {
                out.push(TxInfo { txid: *txid, txnum, height, pos, raw });
            }
        }
        Ok(out)
    }

    /// History and unspent outputs of a script, in chain order.
    pub fn script_state(&self, sh: &ScriptHash) -> Result<ScriptState> {
        Ok(self.script_scan(sh, None, usize::MAX)?.state)
    }

    /// A script's state at this index's tip. Given an earlier scan whose tip block is still in
    /// the chain, only the transactions after it are read (a reorg below it means a full scan).
    /// A script with more than `max_rows` rows is `TooManyRows`, known from its buckets alone.
    pub fn script_scan(
        &self,
        sh: &ScriptHash,
        earlier: Option<&ScriptScan>,
        max_rows: usize,
    ) -> Result<ScriptScan> {
        let txnums = self.scan_at_most(cf::SCRIPT, schema::script_prefix(sh), max_rows)?;
        if txnums.len() > max_rows {
            return Err(TooManyRows { rows: txnums.len(), max: max_rows }.into());
        }
        let tip = self.chain.tip();
        let mut scan = match earlier.filter(|e| self.extends(e)) {
            Some(e) => ScriptScan { tip, ..e.clone() },
            None => ScriptScan { tip, ..ScriptScan::default() },
        };
        let new = &txnums[txnums.partition_point(|&n| n < scan.end_txnum)..];
        scan.end_txnum = self.chain.next_txnum();
        if new.is_empty() {
            return Ok(scan);
        }
        let state = &mut scan.state;
        let mut unspent: Vec<Option<Utxo>> = std::mem::take(&mut state.utxos).into_iter().map(Some).collect();
        let mut funded: HashMap<OutPoint, usize> =
            unspent.iter().enumerate().map(|(i, u)| (u.as_ref().unwrap().outpoint, i)).collect();
        for numbered in self.txs_by_nums(new) {
            let (txnum, raw, height, _) = numbered?;
            let mut tx = Tx::default();
            parse::parse_tx(&mut Reader::new(&raw), &raw, &mut tx)
                .with_context(|| format!("corrupt transaction {txnum} at height {height}"))?;
            let mut touches = false;
            for input in &tx.inputs {
                let op = OutPoint { txid: input.prev_txid(), vout: input.prev_vout };
                if let Some(i) = funded.remove(&op) {
                    unspent[i] = None;
                    touches = true;
                }
            }
            for (vout, out) in tx.outputs.iter().enumerate() {
                // Once one output is known to pay the script, others are compared by bytes, not hashed.
                let pays = match &scan.script {
                    Some(known) => known.as_slice() == out.script,
                    None => ScriptHash::of(out.script) == *sh,
                };
                if !pays || is_unspendable(out.script) {
                    continue;
                }
                scan.script.get_or_insert_with(|| out.script.to_vec());
                let outpoint = OutPoint { txid: tx.txid, vout: vout as u32 };
                // A BIP30 duplicate replaces the earlier, now unspendable, output.
                if let Some(i) = funded.insert(outpoint, unspent.len()) {
                    unspent[i] = None;
                }
                unspent.push(Some(Utxo { outpoint, value: out.value, height, txnum }));
                touches = true;
            }
            if touches {
                state.history.push(HistoryItem { txid: tx.txid, height, txnum });
            }
        }
        state.utxos = unspent.into_iter().flatten().collect();
        Ok(scan)
    }

    /// Whether `scan` is this index's state of its script: its tip is this chain's tip.
    pub fn is_current(&self, scan: &ScriptScan) -> bool {
        scan.tip == self.chain.tip() && scan.end_txnum == self.chain.next_txnum()
    }

    /// Whether `scan` can be brought up to this index's tip by reading only later transactions:
    /// its tip block is in this chain (no reorg below it since).
    fn extends(&self, scan: &ScriptScan) -> bool {
        match scan.tip {
            Some((height, hash)) => {
                self.chain.hash(height) == Some(hash) && scan.end_txnum <= self.chain.next_txnum()
            }
            None => scan.end_txnum == 0,
        }
    }

    /// The confirmed transaction spending `outpoint`, found through the spent output's script.
    pub fn spender(&self, outpoint: &OutPoint) -> Result<Option<TxInfo>> {
        let Some(funding) = self.txs_by_txid(&outpoint.txid)?.pop() else {
            return Ok(None);
        };
        let mut tx = Tx::default();
        parse::parse_tx(&mut Reader::new(&funding.raw), &funding.raw, &mut tx)?;
        let Some(out) = tx.outputs.get(outpoint.vout as usize) else {
            return Ok(None);
        };
        self.spender_after(outpoint, funding.txnum, &ScriptHash::of(out.script), usize::MAX)
    }

    /// As [`IndexReader::spender`], for a caller that already has the funding transaction's number and
    /// the script hash of the output.
    pub fn spender_after(
        &self,
        outpoint: &OutPoint,
        funding: TxNum,
        sh: &ScriptHash,
        max_rows: usize,
    ) -> Result<Option<TxInfo>> {
        let txnums = self.scan_at_most(cf::SCRIPT, schema::script_prefix(sh), max_rows)?;
        if txnums.len() > max_rows {
            return Err(TooManyRows { rows: txnums.len(), max: max_rows }.into());
        }
        // Only transactions after the funding one can spend its output.
        let later = &txnums[txnums.partition_point(|&n| n <= funding)..];
        for numbered in self.txs_by_nums(later) {
            let (txnum, raw, height, pos) = numbered?;
            let mut tx = Tx::default();
            parse::parse_tx(&mut Reader::new(&raw), &raw, &mut tx)?;
            if tx.inputs.iter().any(|i| i.prev_txid() == outpoint.txid && i.prev_vout == outpoint.vout) {
                return Ok(Some(TxInfo { txid: tx.txid, txnum, height, pos, raw }));
            }
        }
        Ok(None)
    }

    /// The txids of a block, in order.
    pub fn block_txids(&self, height: Height) -> Result<Vec<Txid>> {
        let block = self.block_bytes(height)?;
        let mut txids = Vec::new();
        parse::for_each_tx::<anyhow::Error>(&block, |_, tx| {
            txids.push(tx.txid);
            Ok(())
        })?;
        Ok(txids)
    }
}

/// The silent-payment index (BIP352 tweaks, `cf::TWEAK`), read through an [`IndexReader`]: like
/// every other answer, only blocks of the reader's chain (at or below its tip) are seen.
impl IndexReader {
    /// Heights from which the index holds tweaks (None: the silent-payment index is off).
    pub fn tweak_start(&self) -> Result<Option<Height>> {
        Ok(self.store.tweak_start()?.0)
    }

    /// The eligible transactions of each block in `heights` that has any, in height order.
    /// Caller bounds the range; blocks with none are omitted, and so are heights above the
    /// reader's tip (rows of a block not yet committed, or of one being undone, are not seen).
    pub fn tweaks(
        &self,
        heights: std::ops::RangeInclusive<Height>,
    ) -> Result<Vec<(Height, Vec<crate::silent::TweakedTx>)>> {
        let Some((tip, _)) = self.chain.tip() else { return Ok(Vec::new()) };
        let (from, to) = (*heights.start(), (*heights.end()).min(tip));
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mut ro = rocksdb::ReadOptions::default();
        // Keys are 4 bytes: `to ‖ 0` sorts after `to` and before `to + 1`.
        let mut upper = schema::height_key(to).to_vec();
        upper.push(0);
        ro.set_iterate_upper_bound(upper);
        let from_key = schema::height_key(from);
        let it = self.store.db().iterator_cf_opt(
            self.store.cf(cf::TWEAK),
            ro,
            rocksdb::IteratorMode::From(&from_key, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let h = Height::from_be_bytes(k.as_ref().try_into().context("bad tweak key")?);
            let txs = schema::TweakRow::decode(&v).with_context(|| format!("tweak row of block {h}"))?;
            out.push((h, txs));
        }
        Ok(out)
    }
}

pub fn compute_txid(raw: &[u8]) -> Result<Txid> {
    let mut tx = Tx::default();
    let mut r = Reader::new(raw);
    parse::parse_tx(&mut r, raw, &mut tx)?;
    Ok(tx.txid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::consensus::deserialize;

    #[test]
    fn compute_txid_matches_bitcoin_crate() {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Bitcoin);
        let raw = bitcoin::consensus::serialize(&genesis.txdata[0]);
        let tx: bitcoin::Transaction = deserialize(&raw).unwrap();
        assert_eq!(compute_txid(&raw).unwrap(), tx.compute_txid());
        assert!(compute_txid(&raw[..raw.len() - 1]).is_err());
    }
}
