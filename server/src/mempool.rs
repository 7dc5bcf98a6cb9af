//! The node's mempool as the server needs it: each unconfirmed transaction's fee, whether it
//! spends another unconfirmed one, and the scripts it funds and spends, indexed by script hash.
//! Kept in step by the node's ZMQ `sequence` events (a transaction added or removed), by dropping
//! a block's transactions once the index has the block, and by full resyncs against
//! `getrawmempool true` (at start, after a reorg, when a ZMQ message was missed, and
//! periodically; or on every poll when the node publishes no `sequence`). New transactions
//! come from `getrawtransaction` and the scripts they spend from their mempool parent or the index.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::RwLock;

use anyhow::{Context, Result};
use bitcoin::{OutPoint, Transaction, Txid};
use serde_json::{json, Value};

use blkindex_shared::query::Index;
use blkindex_shared::rpc::{btc_to_sat, Rpc};
use blkindex_shared::ScriptHash;

pub struct MempoolTx {
    pub tx: Transaction,
    pub fee: u64,
    pub vsize: u64,
    /// Spends an output of another mempool transaction (Electrum height -1, else 0).
    pub unconfirmed_parent: bool,
    /// (outpoint, value, script hash) of every output it spends.
    pub spent: Vec<(OutPoint, u64, ScriptHash)>,
    /// The script hash of each of its outputs, by output index (hashed once, on arrival).
    pub funded: Vec<ScriptHash>,
}

impl MempoolTx {
    /// Electrum's height of an unconfirmed transaction: -1 when it spends another one, else 0.
    pub fn height(&self) -> i32 {
        if self.unconfirmed_parent {
            -1
        } else {
            0
        }
    }
}

#[derive(Default)]
pub struct Mempool {
    pub txs: HashMap<Txid, MempoolTx>,
    by_script: HashMap<ScriptHash, HashSet<Txid>>,
    /// Which mempool transaction spends each outpoint.
    pub spenders: HashMap<OutPoint, Txid>,
    /// Arrivals, newest last (some may have left since).
    arrivals: VecDeque<Txid>,
}

/// Arrivals remembered for `mempool.recent`.
const ARRIVALS: usize = 1000;

/// A script's unconfirmed side.
#[derive(Default, Debug)]
pub struct ScriptMempool {
    /// (txid, height 0 or -1, fee), in Electrum 1.6's order: height 0 first, then txid as shown.
    pub history: Vec<(Txid, i32, u64)>,
    /// Outputs to the script that no mempool transaction spends: (outpoint, value).
    pub unspent: Vec<(OutPoint, u64)>,
    /// Outpoints of the script that mempool transactions spend.
    pub spent: HashSet<OutPoint>,
    /// Funded minus spent, in satoshis (can be negative).
    pub delta: i64,
}

/// A new mempool transaction, fetched from the node without holding the mempool's lock, with
/// the confirmed outputs it spends already looked up in the index.
struct Fetched {
    txid: Txid,
    tx: Transaction,
    fee: u64,
    vsize: u64,
    /// Spent outputs of confirmed parents: (value, script hash).
    confirmed: HashMap<OutPoint, (u64, ScriptHash)>,
}

/// Brings the mempool up to date; returns the script hashes whose mempool side changed. The node
/// and the index are asked without holding the lock; only applying the changes takes the write
/// lock, so requests never wait for RPC round trips.
pub fn sync(lock: &RwLock<Mempool>, rpc: &Rpc, index: &Index) -> Result<Synced> {
    let listed = list(lock, rpc)?;
    // Transactions that left the node's mempool because a block the index does not have yet
    // mined them must stay until it has: dropped now, a script would seem to lose them and get
    // them back a moment later (a status flicker a wallet would show). So removals wait until the
    // node's tip, read after its mempool, is the index's.
    let best: bitcoin::BlockHash = serde_json::from_value(rpc.call("getbestblockhash", json!([]))?)?;
    let removals = index.chain.tip().map(|t| t.1) == Some(best);
    let (gone, mut new) = {
        let m = lock.read().unwrap();
        let gone: Vec<Txid> = match removals {
            true => m.txs.keys().filter(|t| !listed.contains_key(&t.to_string())).copied().collect(),
            false => Vec::new(),
        };
        let new: Vec<(Txid, &Value)> = listed
            .iter()
            .filter_map(|(k, v)| k.parse::<Txid>().ok().map(|t| (t, v)))
            .filter(|(t, _)| !m.txs.contains_key(t))
            .collect();
        (gone, new)
    };
    // Parents before children, so that a child finds its parent's outputs when applied.
    new.sort_by_key(|(_, v)| v["ancestorcount"].as_u64().unwrap_or(1));
    let new_ids: HashSet<Txid> = new.iter().map(|(t, _)| *t).collect();
    let fetched: Vec<Fetched> = new
        .into_iter()
        .filter_map(|(txid, info)| match fetch(lock, rpc, index, &new_ids, txid, info) {
            Ok(f) => Some(f),
            // Mined or replaced since getrawmempool: the next sync settles it.
            Err(e) => {
                tracing::debug!(%txid, "mempool tx skipped: {e:#}");
                None
            }
        })
        .collect();
    let mut m = lock.write().unwrap();
    let mut changed = HashSet::new();
    for txid in gone {
        m.remove(&txid, &mut changed);
    }
    for f in fetched {
        let txid = f.txid;
        match m.add(f) {
            Ok(scripts) => changed.extend(scripts),
            Err(e) => tracing::debug!(%txid, "mempool tx skipped: {e:#}"),
        }
    }
    Ok(Synced { changed, complete: removals })
}

/// The node's mempool: txid → entry (fees, vsize, ancestor count). The first read takes every
/// entry in one call; later ones list txids only and ask for the entries of those not yet
/// tracked (Null for the others): events keep those few, and a verbose list of a mainnet
/// mempool is tens of megabytes.
fn list(lock: &RwLock<Mempool>, rpc: &Rpc) -> Result<serde_json::Map<String, Value>> {
    if lock.read().unwrap().txs.is_empty() {
        let listed = rpc.call("getrawmempool", json!([true]))?;
        return match listed {
            Value::Object(m) => Ok(m),
            _ => anyhow::bail!("getrawmempool: not an object"),
        };
    }
    let ids = rpc.call("getrawmempool", json!([false]))?;
    let ids: Vec<Txid> = serde_json::from_value(ids).context("getrawmempool: not a list of txids")?;
    let unknown: Vec<Txid> = {
        let m = lock.read().unwrap();
        ids.iter().filter(|t| !m.txs.contains_key(*t)).copied().collect()
    };
    let mut listed: serde_json::Map<String, Value> =
        ids.iter().map(|t| (t.to_string(), Value::Null)).collect();
    for txid in unknown {
        match rpc.call("getmempoolentry", json!([txid.to_string()])) {
            Ok(entry) => {
                listed.insert(txid.to_string(), entry);
            }
            // Gone since the list was read.
            Err(_) => {
                listed.remove(&txid.to_string());
            }
        }
    }
    Ok(listed)
}

/// What a full resync did.
pub struct Synced {
    /// Script hashes whose unconfirmed side changed.
    pub changed: HashSet<ScriptHash>,
    /// False when removals were held back (the node has a block the index does not yet).
    pub complete: bool,
}

/// A change the node announced on ZMQ `sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Added(Txid),
    /// Removed for a reason other than a block (replaced, expired, evicted, in conflict).
    Removed(Txid),
}

/// Applies `events` in order: an added transaction is fetched from the node (gone again by now:
/// skipped), a removed one dropped. Returns the changed script hashes, and false when an
/// addition could not be placed (its parent unknown: a resync settles it).
pub fn apply(
    lock: &RwLock<Mempool>,
    rpc: &Rpc,
    index: &Index,
    events: &[Event],
) -> (HashSet<ScriptHash>, bool) {
    let mut changed = HashSet::new();
    let mut placed = true;
    for event in events {
        match *event {
            Event::Removed(txid) => lock.write().unwrap().remove(&txid, &mut changed),
            Event::Added(txid) => {
                if lock.read().unwrap().txs.contains_key(&txid) {
                    continue;
                }
                // Fees and size as getrawmempool gives them; an error means it already left.
                let Ok(info) = rpc.call("getmempoolentry", json!([txid.to_string()])) else { continue };
                let added = fetch(lock, rpc, index, &HashSet::new(), txid, &info)
                    .and_then(|f| lock.write().unwrap().add(f));
                match added {
                    Ok(scripts) => changed.extend(scripts),
                    Err(e) => {
                        tracing::debug!(%txid, "mempool tx not placed: {e:#}");
                        placed = false;
                    }
                }
            }
        }
    }
    (changed, placed)
}

fn fetch(
    lock: &RwLock<Mempool>,
    rpc: &Rpc,
    index: &Index,
    new_ids: &HashSet<Txid>,
    txid: Txid,
    info: &Value,
) -> Result<Fetched> {
    let raw = rpc.call("getrawtransaction", json!([txid.to_string(), false]))?;
    let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(raw.as_str().context("hex")?)?;
    let fee = btc_to_sat(&info["fees"]["base"]).context("fees.base")?;
    let vsize = info["vsize"].as_u64().context("vsize")?.max(1);
    let mut confirmed = HashMap::new();
    for input in &tx.input {
        let op = input.previous_output;
        if new_ids.contains(&op.txid) || lock.read().unwrap().txs.contains_key(&op.txid) {
            continue; // a mempool parent: read when applied
        }
        let funding =
            index.txs_by_txid(&op.txid)?.pop().context("parent neither confirmed nor in the mempool")?;
        let parent: Transaction = bitcoin::consensus::deserialize(&funding.raw)?;
        let out = parent.output.get(op.vout as usize).context("no such output")?;
        confirmed.insert(op, (out.value.to_sat(), ScriptHash::of(out.script_pubkey.as_bytes())));
    }
    Ok(Fetched { txid, tx, fee, vsize, confirmed })
}

impl Mempool {
    fn add(&mut self, f: Fetched) -> Result<Vec<ScriptHash>> {
        let Fetched { txid, tx, fee, vsize, confirmed } = f;
        let mut spent = Vec::with_capacity(tx.input.len());
        let mut unconfirmed_parent = false;
        for input in &tx.input {
            let op = input.previous_output;
            let (value, sh) = match confirmed.get(&op) {
                Some(found) => *found,
                None => {
                    let parent = self.txs.get(&op.txid).context("the mempool parent has left")?;
                    unconfirmed_parent = true;
                    let out = parent.tx.output.get(op.vout as usize).context("no such parent output")?;
                    (out.value.to_sat(), parent.funded[op.vout as usize])
                }
            };
            spent.push((op, value, sh));
        }
        let funded: Vec<ScriptHash> =
            tx.output.iter().map(|o| ScriptHash::of(o.script_pubkey.as_bytes())).collect();
        let mut scripts: Vec<ScriptHash> = spent.iter().map(|s| s.2).collect();
        scripts.extend(
            tx.output.iter().zip(&funded).filter(|(o, _)| !o.script_pubkey.is_op_return()).map(|(_, sh)| *sh),
        );
        scripts.sort();
        scripts.dedup();
        for sh in &scripts {
            self.by_script.entry(*sh).or_default().insert(txid);
        }
        for (op, ..) in &spent {
            self.spenders.insert(*op, txid);
        }
        if self.arrivals.len() == ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(txid);
        self.txs.insert(txid, MempoolTx { tx, fee, vsize, unconfirmed_parent, spent, funded });
        Ok(scripts)
    }

    /// Drops those of `txids` it holds (a block's, once the index has the block).
    pub fn remove_all(&mut self, txids: &[Txid], changed: &mut HashSet<ScriptHash>) {
        for txid in txids {
            self.remove(txid, changed);
        }
    }

    fn remove(&mut self, txid: &Txid, changed: &mut HashSet<ScriptHash>) {
        let Some(entry) = self.txs.remove(txid) else { return };
        for (op, ..) in &entry.spent {
            if self.spenders.get(op) == Some(txid) {
                self.spenders.remove(op);
            }
        }
        for sh in entry.spent.iter().map(|s| s.2).chain(entry.funded.iter().copied()) {
            if let Some(set) = self.by_script.get_mut(&sh) {
                set.remove(txid);
                if set.is_empty() {
                    self.by_script.remove(&sh);
                }
            }
            changed.insert(sh);
        }
    }

    /// The last `n` transactions to arrive that are still here, newest first.
    pub fn recent(&self, n: usize) -> Vec<(Txid, &MempoolTx)> {
        let mut seen = HashSet::new();
        self.arrivals
            .iter()
            .rev()
            .filter(|t| seen.insert(**t))
            .filter_map(|t| self.txs.get(t).map(|e| (*t, e)))
            .take(n)
            .collect()
    }

    /// The Electrum height of mempool transaction `txid`.
    pub fn height(&self, txid: &Txid) -> Option<i32> {
        self.txs.get(txid).map(MempoolTx::height)
    }

    /// `mempool.get_fee_histogram`: (fee rate in sat/vB, vsize) pairs, rates descending, each
    /// the vsize of the transactions paying at least that rate and less than the previous one.
    /// Binned as ElectrumX does: rates floored to 0.1 sat/vB, bins of about 100,000 vB that
    /// grow by a tenth each, a big lump at one rate closing the bin before it.
    pub fn fee_histogram(&self) -> Vec<(f64, u64)> {
        let mut by_rate: std::collections::BTreeMap<u64, u64> = Default::default();
        for e in self.txs.values() {
            *by_rate.entry(e.fee * 10 / e.vsize).or_default() += e.vsize; // tenths of sat/vB
        }
        let mut out = Vec::new();
        let (mut bin, mut cum, mut prev) = (100_000f64, 0u64, None);
        for (&rate, &size) in by_rate.iter().rev() {
            if size as f64 > 2.0 * bin && cum > 0 {
                if let Some(p) = prev {
                    out.push((p as f64 / 10.0, cum));
                    cum = 0;
                    bin *= 1.1;
                }
            }
            cum += size;
            if cum as f64 > bin {
                out.push((rate as f64 / 10.0, cum));
                cum = 0;
                bin *= 1.1;
            }
            prev = Some(rate);
        }
        out
    }

    /// The unconfirmed side of a script, leaving out those `mined` says the index already has
    /// (mined since the mempool was last read).
    pub fn script(&self, sh: &ScriptHash, mined: impl Fn(&Txid) -> bool) -> ScriptMempool {
        let mut out = ScriptMempool::default();
        let Some(txids) = self.by_script.get(sh) else { return out };
        let mut funded: Vec<(OutPoint, u64)> = Vec::new();
        for txid in txids.iter().filter(|t| !mined(t)) {
            let e = &self.txs[txid];
            out.history.push((*txid, e.height(), e.fee));
            for (op, value, spent_sh) in &e.spent {
                if spent_sh == sh {
                    out.spent.insert(*op);
                    out.delta -= *value as i64;
                }
            }
            for (vout, (o, out_sh)) in e.tx.output.iter().zip(&e.funded).enumerate() {
                if out_sh == sh {
                    funded.push((OutPoint { txid: *txid, vout: vout as u32 }, o.value.to_sat()));
                    out.delta += o.value.to_sat() as i64;
                }
            }
        }
        out.unspent = funded.into_iter().filter(|(op, _)| !out.spent.contains(op)).collect();
        electrum_order(&mut out.history);
        out.unspent.sort();
        out
    }
}

/// Electrum 1.6's order of unconfirmed entries: -height ascending (0 before -1), then the txid
/// as displayed (not its internal byte order).
pub fn electrum_order(history: &mut [(Txid, i32, u64)]) {
    history.sort_by_key(|h| (-h.1, h.0.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn tx_paying(fee: u64, vsize: u64) -> MempoolTx {
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        };
        MempoolTx { tx, fee, vsize, unconfirmed_parent: false, spent: vec![], funded: vec![] }
    }

    #[test]
    fn fee_histogram_bins_like_electrumx() {
        let mut m = Mempool::default();
        // 60,000 vB at 50 sat/vB, 60,000 at 20.05 (floored to 20.0), and a 300,000 vB lump at 1.
        let rates = [(3_000_000, 60_000), (1_203_000, 60_000), (300_000, 300_000)];
        for (i, (fee, vsize)) in rates.iter().enumerate() {
            m.txs.insert(bitcoin::Txid::from_byte_array([i as u8; 32]), tx_paying(*fee, *vsize));
        }
        // 50 alone stays under the first bin; 20 brings it to 120,000 > 100,000: one bin. The lump
        // is more than twice the next bin (110,000), so what came before would be closed first
        // (nothing is left), then it fills a bin of its own.
        assert_eq!(m.fee_histogram(), vec![(20.0, 120_000), (1.0, 300_000)]);
        assert!(Mempool::default().fee_histogram().is_empty());
    }
}
