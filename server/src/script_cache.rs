//! Scripts' confirmed states, kept between requests and brought forward block by block.
//!
//! Computing a script's history reads and checks every one of its transactions (the index's
//! rows hold hash prefixes), so a script with tens of thousands of them costs milliseconds each
//! time. Here the result is kept, weighed by its size, in a bounded cache shared by both index
//! instances. An entry is used as is while its tip is the index's tip; after new blocks only
//! their transactions are read; after a reorg below its tip it is computed again. Each entry
//! also holds the status hash's state after the confirmed part, so a status needs only the
//! mempool's entries hashed on top.

use std::sync::Arc;

use anyhow::Result;
use bitcoin::hashes::{sha256, Hash, HashEngine};
use quick_cache::sync::{Cache, GuardResult};

use blkindex_shared::query::{HistoryItem, IndexReader, ScriptScan, TooManyRows};
use blkindex_shared::ScriptHash;

use crate::metrics::Metrics;

/// A script's confirmed side at some tip.
pub struct Confirmed {
    pub scan: ScriptScan,
    /// Sum of the unspent outputs' values.
    pub balance: u64,
    /// sha256 fed with "txid:height:" for every confirmed entry, in order.
    status: sha256::HashEngine,
}

impl Confirmed {
    pub(crate) fn new(scan: ScriptScan, earlier: Option<&Confirmed>) -> Self {
        // Histories only grow while the tip moves forward: hash what the earlier entry did not.
        let (mut status, done) = match earlier {
            Some(e) if scan.state.history.starts_with(&e.scan.state.history) => {
                (e.status.clone(), e.scan.state.history.len())
            }
            _ => (sha256::Hash::engine(), 0),
        };
        let mut text = String::new();
        for item in &scan.state.history[done..] {
            status_entry(&mut text, &item.txid, item.height as i64);
        }
        status.input(text.as_bytes());
        Confirmed { balance: scan.state.balance(), scan, status }
    }

    pub fn history(&self) -> &[HistoryItem] {
        &self.scan.state.history
    }

    /// The Electrum status of this confirmed side followed by `unconfirmed` entries (txid,
    /// height), or None when both are empty.
    pub fn status(&self, unconfirmed: &[(bitcoin::Txid, i32, u64)]) -> Option<String> {
        if self.history().is_empty() && unconfirmed.is_empty() {
            return None;
        }
        let mut engine = self.status.clone();
        let mut text = String::new();
        for (txid, height, _) in unconfirmed {
            status_entry(&mut text, txid, *height as i64);
        }
        engine.input(text.as_bytes());
        Some(hex::encode(sha256::Hash::from_engine(engine).to_byte_array()))
    }

    /// Roughly the bytes the entry holds.
    fn weight(&self) -> u64 {
        let s = &self.scan.state;
        Self::weight_of(s.history.len(), s.utxos.len())
    }

    fn weight_of(history: usize, utxos: usize) -> u64 {
        256 + (history * std::mem::size_of::<HistoryItem>()) as u64
            + (utxos * std::mem::size_of::<blkindex_shared::query::Utxo>()) as u64
    }

    /// The weight of the largest entry a script of at most `max_rows` rows can have.
    fn max_weight(max_rows: usize) -> u64 {
        Self::weight_of(max_rows, max_rows)
    }
}

/// Appends "txid:height:" as the status hash takes it (txid as displayed).
pub fn status_entry(text: &mut String, txid: &bitcoin::Txid, height: i64) {
    crate::protocol::push_txid(text, txid);
    text.push(':');
    text.push_str(itoa::Buffer::new().format(height));
    text.push(':');
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<ScriptHash, Arc<Confirmed>> for Weigh {
    fn weight(&self, _: &ScriptHash, c: &Arc<Confirmed>) -> u64 {
        c.weight()
    }
}

pub struct ScriptCache {
    cache: Cache<ScriptHash, Arc<Confirmed>, Weigh>,
    /// Scripts found to have more rows than `max_rows`, and how many: refused at once when
    /// asked again, without decoding their row lists (millions of entries for the hottest).
    /// Histories only grow but for a reorg's few blocks, so a refusal stays right.
    too_many: Cache<ScriptHash, usize>,
    max_rows: usize,
    metrics: Arc<Metrics>,
}

impl ScriptCache {
    /// A cache holding up to about `bytes` of script states, of scripts with at most
    /// `max_rows` index rows (others are `TooManyRows`).
    pub fn new(bytes: u64, max_rows: usize, metrics: Arc<Metrics>) -> Self {
        let bytes = bytes.max(1);
        // The cache is split into shards, each with an equal part of the capacity, and an entry
        // heavier than one shard is never kept: so there are only as many shards as leave room
        // for the heaviest entry allowed (a script of `max_rows` rows, every one of them unspent).
        let fit = (bytes / Confirmed::max_weight(max_rows)).max(1);
        let shards = (1u64 << (63 - fit.leading_zeros())).min(64);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity((bytes / 4096).max(16) as usize)
            .weight_capacity(bytes)
            .shards(shards as usize)
            .build()
            .expect("cache options are valid");
        let cache = Cache::with_options(options, Weigh, Default::default(), Default::default());
        ScriptCache { cache, too_many: Cache::new(10_000), max_rows, metrics }
    }

    /// The scan of `sh`, remembering a refusal.
    fn scan(&self, index: &IndexReader, sh: &ScriptHash, earlier: Option<&ScriptScan>) -> Result<ScriptScan> {
        if let Some(rows) = self.too_many.get(sh) {
            self.metrics.script_cache.with_label_values(&["too_many"]).inc();
            return Err(TooManyRows { rows, max: self.max_rows }.into());
        }
        index.script_scan(sh, earlier, self.max_rows).inspect_err(|e| {
            if let Some(t) = e.downcast_ref::<TooManyRows>() {
                self.too_many.insert(*sh, t.rows);
            }
        })
    }

    /// Entries held, their approximate bytes, and the most bytes kept.
    pub fn usage(&self) -> (usize, u64, u64) {
        (self.cache.len(), self.cache.weight(), self.cache.capacity())
    }

    fn counted(&self, outcome: &str) {
        self.metrics.script_cache.with_label_values(&[outcome]).inc();
        self.metrics.script_cache_bytes.set(self.cache.weight() as i64);
    }

    /// The confirmed side of `sh` at `index`'s tip. Requests for a script nobody has computed
    /// yet wait for the first one instead of all computing it.
    pub fn confirmed(&self, index: &IndexReader, sh: &ScriptHash) -> Result<Arc<Confirmed>> {
        match self.cache.get_value_or_guard(sh, None) {
            GuardResult::Value(c) if index.is_current(&c.scan) => {
                self.metrics.script_cache.with_label_values(&["hit"]).inc();
                Ok(c)
            }
            GuardResult::Value(c) => {
                let fresh = Arc::new(Confirmed::new(self.scan(index, sh, Some(&c.scan))?, Some(&c)));
                // A request on the instance that is being replaced may be behind the entry.
                if fresh.scan.tip.map(|t| t.0) >= c.scan.tip.map(|t| t.0) {
                    self.cache.insert(*sh, fresh.clone());
                }
                self.counted("extended");
                Ok(fresh)
            }
            GuardResult::Guard(g) => {
                let fresh = Arc::new(Confirmed::new(self.scan(index, sh, None)?, None));
                let _ = g.insert(fresh.clone());
                self.counted("computed");
                Ok(fresh)
            }
            GuardResult::Timeout => unreachable!("no timeout given"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::Txid;
    use blkindex_shared::query::ScriptState;

    fn item(n: u8, height: u32) -> HistoryItem {
        HistoryItem { txid: Txid::from_byte_array([n; 32]), height, txnum: n as u32 }
    }

    fn confirmed(history: Vec<HistoryItem>, earlier: Option<&Confirmed>) -> Confirmed {
        Confirmed::new(ScriptState { history, utxos: vec![] }.into(), earlier)
    }

    #[test]
    fn the_heaviest_allowed_entry_is_kept() {
        // 16 MiB with the default 80,000-row limit: quick_cache's default shard count (4 per
        // core, 8 here) would leave 2 MiB shards, smaller than such an entry, never kept then.
        let (bytes, max_rows) = (16 << 20, 80_000);
        let cache = ScriptCache::new(bytes, max_rows, Arc::new(Metrics::new()));
        let big = confirmed((0..max_rows).map(|n| item(n as u8, n as u32)).collect(), None);
        let weight = big.weight();
        assert!(weight > bytes / 8, "the test entry ({weight} bytes) is too light to test anything");
        let sh = ScriptHash([7; 32]);
        cache.cache.insert(sh, Arc::new(big));
        assert!(cache.cache.get(&sh).is_some(), "an entry of {weight} bytes was refused");
    }

    #[test]
    fn a_status_resumed_from_an_earlier_entry_equals_one_hashed_at_once() {
        let early = confirmed(vec![item(1, 10), item(2, 11)], None);
        let later = vec![item(1, 10), item(2, 11), item(3, 12)];
        let resumed = confirmed(later.clone(), Some(&early));
        let fresh = confirmed(later.clone(), None);
        let unconfirmed = [(Txid::from_byte_array([9; 32]), 0, 100)];
        assert_eq!(resumed.status(&unconfirmed), fresh.status(&unconfirmed));
        assert_eq!(resumed.status(&[]), fresh.status(&[]));
        // And it is the protocol's hash of "txid:height:" entries.
        let text: String = later.iter().map(|h| format!("{}:{}:", h.txid, h.height)).collect();
        let want = hex::encode(sha256::Hash::hash(text.as_bytes()).to_byte_array());
        assert_eq!(fresh.status(&[]), Some(want));
        // A history that does not extend the earlier one (a reorg) is hashed from the start.
        let reorged = vec![item(1, 10), item(4, 11)];
        assert_eq!(
            confirmed(reorged.clone(), Some(&fresh)).status(&[]),
            confirmed(reorged, None).status(&[])
        );
        assert_eq!(confirmed(vec![], None).status(&[]), None);
    }

    /// The `bitcoin-test-data` crate's Electrum status vectors (made with electrs): confirmed
    /// entries from the index side, height-0 ones from the mempool side.
    #[test]
    fn statuses_match_the_bitcoin_test_data_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(bitcoin_test_data::electrum::script_status()).unwrap();
        let vectors = vectors.as_array().unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            let mut history = Vec::new();
            let mut unconfirmed = Vec::new();
            for (n, tx) in v["input"].as_array().unwrap().iter().enumerate() {
                let txid: Txid = tx["txid"].as_str().unwrap().parse().unwrap();
                match tx["height"].as_i64().unwrap() {
                    h if h > 0 => history.push(HistoryItem { txid, height: h as u32, txnum: n as u32 }),
                    h => unconfirmed.push((txid, h as i32, 0)),
                }
            }
            assert_eq!(
                confirmed(history, None).status(&unconfirmed).as_deref(),
                v["expected"].as_str(),
                "{v}"
            );
        }
    }
}
