//! The indexed best chain held in memory: header rows by height, heights by hash, and the txnum →
//! height map (a binary search over each block's first txnum).

use std::collections::HashMap;

use anyhow::Result;
use bitcoin::BlockHash;

use crate::schema::{HeaderRow, Height, TxNum};
use crate::store::Store;

#[derive(Default)]
pub struct Chain {
    rows: Vec<HeaderRow>,
    hashes: Vec<BlockHash>,
    by_hash: HashMap<BlockHash, Height>,
}

impl Chain {
    /// The chain as the store's tip says it is.
    pub fn load(store: &Store) -> Result<Self> {
        let mut chain = Chain::default();
        if let Some((tip, _)) = store.tip()? {
            for row in store.header_rows(tip)? {
                chain.push(row);
            }
        }
        Ok(chain)
    }

    /// Brings the chain to the store's tip: drops blocks the store no longer has at their
    /// height, then reads the new ones. Returns whether anything changed.
    pub fn sync(&mut self, store: &Store) -> Result<bool> {
        self.sync_to(store, store.tip()?)
    }

    /// As `sync`, to `tip` (a tip the store had, read earlier) rather than the store's latest.
    pub fn sync_to(&mut self, store: &Store, tip: Option<(Height, BlockHash)>) -> Result<bool> {
        let Some((tip, tip_hash)) = tip else {
            let changed = !self.is_empty();
            *self = Chain::default();
            return Ok(changed);
        };
        if self.tip() == Some((tip, tip_hash)) {
            return Ok(false);
        }
        while let Some((h, hash)) = self.tip() {
            if h <= tip && store.header_row(h)?.map(|r| r.hash()) == Some(hash) {
                break;
            }
            self.pop();
        }
        for h in self.len() as Height..=tip {
            let row = store.header_row(h)?.ok_or_else(|| anyhow::anyhow!("no header row at height {h}"))?;
            self.push(row);
        }
        Ok(true)
    }

    pub fn push(&mut self, row: HeaderRow) {
        let hash = row.hash();
        self.by_hash.insert(hash, self.rows.len() as Height);
        self.hashes.push(hash);
        self.rows.push(row);
    }

    pub fn pop(&mut self) -> Option<HeaderRow> {
        let row = self.rows.pop()?;
        let hash = self.hashes.pop().unwrap();
        self.by_hash.remove(&hash);
        Some(row)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn tip(&self) -> Option<(Height, BlockHash)> {
        self.hashes.last().map(|h| (self.hashes.len() as Height - 1, *h))
    }

    pub fn row(&self, height: Height) -> Option<&HeaderRow> {
        self.rows.get(height as usize)
    }

    pub fn hash(&self, height: Height) -> Option<BlockHash> {
        self.hashes.get(height as usize).copied()
    }

    pub fn height_of(&self, hash: &BlockHash) -> Option<Height> {
        self.by_hash.get(hash).copied()
    }

    /// The next txnum to hand out.
    pub fn next_txnum(&self) -> TxNum {
        self.rows.last().map_or(0, |r| r.first_txnum + r.tx_count)
    }

    /// The height of the block holding `txnum`.
    pub fn height_of_txnum(&self, txnum: TxNum) -> Option<Height> {
        let i = self.rows.partition_point(|r| r.first_txnum <= txnum);
        let h = i.checked_sub(1)?;
        self.rows[h].contains(txnum).then_some(h as Height)
    }
}
