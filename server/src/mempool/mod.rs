//! The node's mempool as the server needs it: each unconfirmed transaction's fee, whether it
//! spends another unconfirmed one, and the scripts it funds and spends, indexed by script hash;
//! and the `Feed` through which ZMQ tells the driver what changed.
//!
//! This half is data, below `state`; `driver` (above `state`) keeps it in step: by the node's
//! ZMQ `sequence` events (a transaction added or removed), by dropping a block's transactions
//! once the index has the block, and by full resyncs against `getrawmempool` (at start,
//! after a reorg, when a ZMQ message was missed, and periodically; or on every poll when the
//! node publishes no `sequence`). New transactions come from `getmempoolentry` and
//! `getrawtransaction` (batched) and the scripts they spend from their mempool parent or the
//! index.
//!
//! Kept small, since a mainnet mempool holds up to 300,000 transactions: each transaction's bytes
//! (decoded only when a method needs more than what is kept), the value and script hash of each
//! output and spent output, and one entry per (script, transaction) and per spent outpoint, with
//! no allocation of their own.

pub mod driver;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Txid};
use tokio::sync::mpsc;

use blkindex_shared::parse::prevouts;
use blkindex_shared::ScriptHash;

/// A mempool transaction, in one allocation: its bytes as the node serialized them, then the
/// value and script hash of each output it spends and of each of its own outputs (hashed once, on
/// arrival), 40 bytes each. What it spends is read from its bytes when asked.
pub struct MempoolTx {
    data: Box<[u8]>,
    /// The length of the transaction's bytes, and its number of inputs.
    raw_len: u32,
    inputs: u32,
    pub fee: u64,
    pub vsize: u64,
}

/// An output a mempool transaction spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub outpoint: OutPoint,
    pub value: u64,
    pub script: ScriptHash,
}

/// The bytes of a (value, script hash) in `MempoolTx::data`.
const ENTRY: usize = 40;

impl MempoolTx {
    fn new(
        raw: &[u8],
        fee: u64,
        vsize: u64,
        spent: &[(u64, ScriptHash)],
        outputs: &[(u64, ScriptHash)],
    ) -> Self {
        let mut data = Vec::with_capacity(raw.len() + ENTRY * (spent.len() + outputs.len()));
        data.extend_from_slice(raw);
        for (value, sh) in spent.iter().chain(outputs) {
            data.extend_from_slice(&value.to_le_bytes());
            data.extend_from_slice(&sh.0);
        }
        debug_assert_eq!(prevouts(raw).count(), spent.len(), "an entry for each input");
        MempoolTx { data: data.into(), raw_len: raw.len() as u32, inputs: spent.len() as u32, fee, vsize }
    }

    /// The transaction as the node serialized it.
    pub fn raw(&self) -> &[u8] {
        &self.data[..self.raw_len as usize]
    }

    fn entry(&self, i: usize) -> (u64, ScriptHash) {
        let at = self.raw_len as usize + ENTRY * i;
        let e = &self.data[at..at + ENTRY];
        let value = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
        (value, ScriptHash(e[8..].try_into().expect("32 bytes")))
    }

    /// Every output it spends.
    pub fn spent(&self) -> impl Iterator<Item = Spent> + '_ {
        prevouts(self.raw()).enumerate().map(|(i, input)| {
            let (value, script) = self.entry(i);
            Spent { outpoint: OutPoint { txid: input.prev_txid(), vout: input.prev_vout }, value, script }
        })
    }

    /// Its number of outputs.
    pub fn outputs(&self) -> usize {
        (self.data.len() - self.raw_len as usize) / ENTRY - self.inputs as usize
    }

    /// The value and script hash of output `vout`.
    pub fn output(&self, vout: usize) -> Option<(u64, ScriptHash)> {
        (vout < self.outputs()).then(|| self.entry(self.inputs as usize + vout))
    }

    /// The script hashes of what it spends and of its outputs.
    fn scripts(&self) -> impl Iterator<Item = ScriptHash> + '_ {
        (0..self.inputs as usize + self.outputs()).map(|i| self.entry(i).1)
    }
}

/// The tracked mempool as requests see it: looked at briefly through `with`. Never hold it
/// across index reads: a writer waiting for the lock (the driver applying a change) makes
/// every new reader wait too, so one slow request holding it would stall them all.
#[derive(Clone, Copy)]
pub struct Pool<'a>(pub &'a std::sync::RwLock<Mempool>);

impl Pool<'_> {
    pub fn with<T>(self, f: impl FnOnce(&Mempool) -> T) -> T {
        f(&self.0.read().unwrap())
    }
}

#[derive(Default)]
pub struct Mempool {
    /// The height through which mined transactions have been taken out (None: not yet known):
    /// only a script's confirmed entries above it can be in the mempool still.
    pub cleared_through: Option<blkindex_shared::schema::Height>,
    pub txs: HashMap<Txid, MempoolTx>,
    /// Which transactions fund or spend each script, as one ordered set of (the script hash's
    /// first 8 bytes, txid): no set per script (most scripts have one transaction), no script's
    /// set so large that taking one transaction out of it is slow, and 40 bytes a pair. Two
    /// scripts sharing a prefix share candidates; `script` keeps a script's own.
    by_script: BTreeSet<(u64, Txid)>,
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

/// A change the node announced on ZMQ `sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Added(Txid),
    /// Removed for a reason other than a block (replaced, expired, evicted, in conflict).
    Removed(Txid),
}

/// A new mempool transaction, fetched from the node without holding the mempool's lock, with
/// the confirmed outputs it spends already looked up in the index.
pub struct NewTx {
    pub txid: Txid,
    pub raw: Box<[u8]>,
    pub fee: u64,
    pub vsize: u64,
    /// What it spends, in input order.
    pub inputs: Vec<OutPoint>,
    /// Each output's value and script hash, and whether it can be spent (not OP_RETURN).
    pub outputs: Vec<(u64, ScriptHash, bool)>,
    /// Spent outputs of confirmed parents: (value, script hash).
    pub confirmed: HashMap<OutPoint, (u64, ScriptHash)>,
}

/// What tells the mempool driver to look: the node's ZMQ `sequence` events, whether they are
/// flowing, and whether the tracked mempool may have missed something.
pub struct Feed {
    events: mpsc::Sender<Event>,
    /// A ZMQ `sequence` subscription is up; else the driver reads the whole mempool on every poll.
    sequence: AtomicBool,
    /// The tracked mempool may have missed something (a block, a lost ZMQ message, an event it
    /// could not place): the next round reads the whole mempool again.
    resync: AtomicBool,
}

/// ZMQ mempool events queued for the driver; more than this means it is far behind, and a
/// resync replaces them.
const EVENTS: usize = 100_000;

impl Feed {
    /// A feed that asks for a first whole read, and the driver's end of its events.
    pub fn new() -> (Feed, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(EVENTS);
        (Feed { events, sequence: AtomicBool::new(false), resync: AtomicBool::new(true) }, rx)
    }

    /// Queues an event for the driver; when the queue is full, asks for a resync instead.
    pub fn push(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.resync(); // the driver is far behind
        }
    }

    /// The next round reads the whole mempool again.
    pub fn resync(&self) {
        self.resync.store(true, Ordering::SeqCst);
    }

    /// Whether a ZMQ `sequence` subscription is up (events flow).
    pub fn set_sequence(&self, up: bool) {
        self.sequence.store(up, Ordering::SeqCst);
    }

    pub fn sequence(&self) -> bool {
        self.sequence.load(Ordering::SeqCst)
    }

    pub fn resync_due(&self) -> bool {
        self.resync.load(Ordering::SeqCst)
    }

    /// A whole read begins: anything arriving from now on asks for the next one.
    pub fn resync_started(&self) {
        self.resync.store(false, Ordering::SeqCst);
    }
}

impl Mempool {
    /// Whether `f` can be added now: every output it spends is confirmed or of a transaction
    /// here (a child listed before its parent waits for it).
    pub fn can_place(&self, f: &NewTx) -> bool {
        f.inputs.iter().all(|op| f.confirmed.contains_key(op) || self.txs.contains_key(&op.txid))
    }

    /// Adds `f`; the scripts whose unconfirmed side changed.
    pub fn add(&mut self, f: NewTx) -> Result<Vec<ScriptHash>> {
        let NewTx { txid, raw, fee, vsize, inputs, outputs, confirmed } = f;
        let mut spent = Vec::with_capacity(inputs.len());
        for op in &inputs {
            spent.push(match confirmed.get(op) {
                Some(found) => *found,
                None => {
                    let parent = self.txs.get(&op.txid).context("the mempool parent has left")?;
                    parent.output(op.vout as usize).context("no such parent output")?
                }
            });
        }
        let mut scripts: Vec<ScriptHash> = spent.iter().map(|s| s.1).collect();
        scripts.extend(outputs.iter().filter(|o| o.2).map(|o| o.1));
        scripts.sort();
        scripts.dedup();
        for sh in &scripts {
            self.by_script.insert((prefix(sh), txid));
        }
        // Children already here (a parent back from a reorged block) are at height -1 now:
        // their scripts changed too (they are not this transaction's).
        self.children_scripts(&txid, outputs.len(), &mut scripts);
        for op in inputs {
            self.spenders.insert(op, txid);
        }
        if self.arrivals.len() == ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(txid);
        let outputs: Vec<(u64, ScriptHash)> = outputs.into_iter().map(|(value, sh, _)| (value, sh)).collect();
        self.txs.insert(txid, MempoolTx::new(&raw, fee, vsize, &spent, &outputs));
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
        // Its children (left by the block that mined it) may be at height 0 now.
        let mut children = Vec::new();
        self.children_scripts(txid, entry.outputs(), &mut children);
        changed.extend(children);
        for s in entry.spent() {
            if self.spenders.get(&s.outpoint) == Some(txid) {
                self.spenders.remove(&s.outpoint);
            }
        }
        for sh in entry.scripts() {
            self.by_script.remove(&(prefix(&sh), *txid));
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

    /// The Electrum height of mempool transaction `txid`: -1 while it spends an output of
    /// another mempool transaction, else 0. Worked out when asked: a parent mined, or back
    /// from a reorged block, changes it without the child changing.
    pub fn height(&self, txid: &Txid) -> Option<i32> {
        self.txs.get(txid).map(|e| self.height_of(e))
    }

    fn height_of(&self, e: &MempoolTx) -> i32 {
        match prevouts(e.raw()).any(|i| self.txs.contains_key(&i.prev_txid())) {
            true => -1,
            false => 0,
        }
    }

    /// Appends the scripts of the mempool transactions spending outputs of `txid` (which has
    /// `outputs` outputs): their heights follow `txid`'s presence.
    fn children_scripts(&self, txid: &Txid, outputs: usize, scripts: &mut Vec<ScriptHash>) {
        for vout in 0..outputs as u32 {
            let Some(child) = self.spenders.get(&OutPoint { txid: *txid, vout }) else { continue };
            if let Some(c) = self.txs.get(child) {
                scripts.extend(c.scripts());
            }
        }
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

    /// Whether any mempool transaction funds or spends script `sh`.
    pub fn touches(&self, sh: &ScriptHash) -> bool {
        self.txids_of(sh).next().is_some()
    }

    /// The transactions that fund or spend script `sh`.
    fn txids_of<'a>(&'a self, sh: &'a ScriptHash) -> impl Iterator<Item = (&'a Txid, &'a MempoolTx)> {
        let p = prefix(sh);
        let (first, last) = ((p, Txid::from_byte_array([0; 32])), (p, Txid::from_byte_array([0xff; 32])));
        self.by_script.range(first..=last).filter_map(move |(_, t)| {
            let e = &self.txs[t];
            e.scripts().any(|s| s == *sh).then_some((t, e))
        })
    }

    /// The unconfirmed side of a script, leaving out those `mined` says the index already has
    /// (mined since the mempool was last read).
    pub fn script(&self, sh: &ScriptHash, mined: impl Fn(&Txid) -> bool) -> ScriptMempool {
        let mut out = ScriptMempool::default();
        let mut funded: Vec<(OutPoint, u64)> = Vec::new();
        for (txid, e) in self.txids_of(sh).filter(|(t, _)| !mined(t)) {
            out.history.push((*txid, self.height_of(e), e.fee));
            for s in e.spent().filter(|s| s.script == *sh) {
                out.spent.insert(s.outpoint);
                out.delta -= s.value as i64;
            }
            for vout in 0..e.outputs() {
                let (value, out_sh) = e.output(vout).expect("an output");
                if out_sh == *sh {
                    funded.push((OutPoint { txid: *txid, vout: vout as u32 }, value));
                    out.delta += value as i64;
                }
            }
        }
        out.unspent = funded.into_iter().filter(|(op, _)| !out.spent.contains(op)).collect();
        electrum_order(&mut out.history);
        out.unspent.sort();
        out
    }
}

/// The part of a script hash `Mempool::by_script` is ordered by.
fn prefix(sh: &ScriptHash) -> u64 {
    u64::from_be_bytes(sh.0[..8].try_into().expect("8 of 32 bytes"))
}

/// Electrum 1.6's order of unconfirmed entries: -height ascending (0 before -1), then the txid
/// as displayed (not its internal byte order).
pub fn electrum_order(history: &mut [(Txid, i32, u64)]) {
    history.sort_by_key(|h| (-h.1, h.0.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx_paying(fee: u64, vsize: u64) -> MempoolTx {
        MempoolTx::new(&[], fee, vsize, &[], &[])
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
