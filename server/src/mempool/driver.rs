//! The mempool driver: reads the node's mempool (whole, or the transactions its events announce)
//! into the tracked `Mempool`, and the task that decides when, and announces what changed. New
//! transactions are asked of the node in batches (`BATCH` to one HTTP request), never one round
//! trip each, and the confirmed outputs they spend are read from the index once per parent. The
//! node and the index are asked without holding the mempool's lock; only applying the changes
//! takes the write lock, a batch at a time, so requests never wait for RPC round trips or for a
//! whole mempool to be placed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bitcoin::{BlockHash, OutPoint, Txid};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use blkindex_shared::parse::{is_unspendable, parse_tx, Tx};
use blkindex_shared::query::IndexReader;
use blkindex_shared::rpc::{btc_to_sat, Rpc, RpcError};
use blkindex_shared::schema::Height;
use blkindex_shared::varint::Reader;
use blkindex_shared::ScriptHash;

use crate::mempool::{Event, Mempool, NewTx};
use crate::state::{State, Task};

/// An index tip (height, hash) up to which blocks' transactions have left the tracked mempool.
type AppliedTip = Option<(Height, BlockHash)>;

/// Mined transactions taken out of the mempool under one write lock.
const REMOVE_AT_ONCE: usize = 256;

/// What one round of the driver did.
struct Round {
    /// Script hashes whose unconfirmed side changed.
    changed: HashSet<ScriptHash>,
    applied: AppliedTip,
    /// A whole read that was complete (no removal held back for a block the index lacks).
    complete: bool,
    /// Blocks whose transactions left: (their heights, how many left, how long it took).
    mined: Option<(std::ops::RangeInclusive<Height>, usize, Duration)>,
}

/// Keeps the mempool in step with the node's: applies the ZMQ events as they come, and reads the
/// whole mempool again when the feed asks for it or `resync_every` has passed (or, without ZMQ
/// events, every `every`); announces the script hashes whose unconfirmed side changed. A node
/// that cannot be reached is asked again every round (logged once); the mempool meanwhile is the
/// last one read.
pub async fn run(
    state: Arc<State>,
    rpc: Arc<Rpc>,
    mut events: mpsc::Receiver<Event>,
    every: Duration,
    resync_every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    let started = std::time::Instant::now();
    let mut completed = false;
    let mut last_full: Option<std::time::Instant> = None;
    // The index tip whose blocks' transactions the tracked mempool no longer holds.
    let mut applied: AppliedTip = None;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.woken(Task::Mempool) => {}
            Some(e) = events.recv() => batch.push(e),
        }
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        let full = !state.feed().sequence()
            || state.feed().resync_due()
            || last_full.is_none_or(|t| t.elapsed() >= resync_every);
        if !full && batch.is_empty() && applied == state.index().chain.tip() {
            continue;
        }
        // Whether this round asks the node (a round that only lets mined transactions go does not).
        let asks_node = full || !batch.is_empty();
        let s = state.clone();
        let rpc = rpc.clone();
        let mut tip_done = applied;
        let result = tokio::task::spawn_blocking(move || -> Result<Round> {
            let index = s.index();
            let tip = index.chain.tip();
            let mut changed = HashSet::new();
            let mut full = full;
            let (mut complete, mut mined_out) = (false, None);
            // Blocks the index has gained: their transactions leave now (the node announces none
            // of them, and not before, so no status flickers). Below a reorg: a whole read.
            if !full && tip_done != tip {
                match tip_done {
                    Some((h, hash)) if index.chain.hash(h) == Some(hash) => {
                        let t = std::time::Instant::now();
                        let heights = h + 1..=tip.map_or(0, |t| t.0);
                        let mut left = 0;
                        for height in heights.clone() {
                            // A few hundred at a time, so that requests wait at most for those:
                            // a transaction on both sides already counts as confirmed only.
                            for mined in index.block_txids(height)?.chunks(REMOVE_AT_ONCE) {
                                let mut pool = s.mempool().write().unwrap();
                                let before = pool.txs.len();
                                pool.remove_all(mined, &mut changed);
                                left += before - pool.txs.len();
                            }
                        }
                        mined_out = Some((heights, left, t.elapsed()));
                        tip_done = tip;
                    }
                    _ => full = true,
                }
            }
            if full {
                s.feed().resync_started();
                let announce = |changed| s.announce_mempool(changed);
                let synced = sync(s.mempool(), &rpc, &index, &announce).inspect_err(|_| s.feed().resync())?;
                match synced.complete {
                    true => tip_done = tip,
                    false => s.feed().resync(),
                }
                complete = synced.complete;
                s.metrics().mempool_updates.with_label_values(&["resync"]).inc();
                // The events taken so far came before this read of the whole mempool: it has them.
                changed.extend(synced.changed);
            } else {
                let (more, placed) =
                    apply(s.mempool(), &rpc, &index, &batch).inspect_err(|_| s.feed().resync())?;
                s.metrics().mempool_updates.with_label_values(&["event"]).inc_by(batch.len() as u64);
                if !placed {
                    s.feed().resync();
                }
                changed.extend(more);
            }
            let mut pool = s.mempool().write().unwrap();
            pool.cleared_through = tip_done.map(|t| t.0);
            s.metrics().mempool_txs.set(pool.txs.len() as i64);
            drop(pool);
            Ok(Round { changed, applied: tip_done, complete, mined: mined_out })
        })
        .await;
        if full && matches!(result, Ok(Ok(_))) {
            last_full = Some(std::time::Instant::now());
        }
        match result {
            Ok(Ok(Round { changed, applied: done, complete, mined })) => {
                applied = done;
                if complete && !completed {
                    completed = true;
                    let txs = state.mempool().read().unwrap().txs.len();
                    let secs = started.elapsed().as_secs_f64();
                    info!(txs, secs = %format!("{secs:.1}"), "mempool view complete: {txs} txs in {secs:.1} s");
                }
                if let Some((heights, left, took)) = mined.filter(|m| m.1 > 0) {
                    let ms = took.as_secs_f64() * 1000.0;
                    let (height, blocks) = (*heights.end(), heights.count());
                    info!(height, blocks, left, "mined transactions left the mempool: {left} in {ms:.1} ms");
                }
                if asks_node {
                    if failing {
                        info!("reading the node's mempool again");
                    }
                    failing = false;
                    state.node_answered(Ok(()));
                }
                if !changed.is_empty() {
                    state.announce_mempool(changed);
                }
            }
            Ok(Err(e)) => {
                if let Some(e) = e.downcast_ref::<RpcError>() {
                    state.node_answered(Err(e));
                }
                if !failing {
                    warn!("reading the node's mempool failed: {e:#}; serving the last one read meanwhile");
                    failing = true;
                }
            }
            Err(_) => {}
        }
    }
}

/// Transactions asked of the node in one batch (one HTTP request holding a `getmempoolentry`
/// and a `getrawtransaction` for each): about half a megabyte of reply, so memory stays bounded
/// whatever the mempool's size, and a round trip is paid per 500 transactions, not per one.
const BATCH: usize = 500;

/// How often a long read of the whole mempool announces what it has placed so far.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// Brings the mempool up to date; returns the script hashes whose mempool side changed. The node
/// is listed (`getrawmempool`, txids only), then the transactions not tracked yet are fetched in
/// batches, the next batch asked of the node while the last one is placed. The node and the
/// index are asked without holding the lock; only applying the changes takes the write lock
/// (once per batch), so requests never wait for RPC round trips. A long read hands what it has
/// changed so far to `announce` every `ANNOUNCE_EVERY`, so subscribers hear of the transactions
/// placed without waiting for the whole mempool.
pub fn sync(
    lock: &RwLock<Mempool>,
    rpc: &Rpc,
    index: &IndexReader,
    announce: &dyn Fn(HashSet<ScriptHash>),
) -> Result<SyncOutcome> {
    // In the node's order: by ancestor count, so parents come before their children.
    let ids = rpc.call("getrawmempool", json!([false]))?;
    let ids: Vec<Txid> = serde_json::from_value(ids).context("getrawmempool: not a list of txids")?;
    // Transactions that left the node's mempool because a block the index does not have yet
    // mined them must stay until it has: dropped now, a script would seem to lose them and get
    // them back a moment later (a status flicker a wallet would show). So removals wait until the
    // node's tip, read after its mempool, is the index's.
    let best: bitcoin::BlockHash = serde_json::from_value(rpc.call("getbestblockhash", json!([]))?)?;
    let removals = index.chain.tip().map(|t| t.1) == Some(best);
    let (gone, new) = {
        let m = lock.read().unwrap();
        let gone: Vec<Txid> = match removals {
            true => {
                let listed: HashSet<&Txid> = ids.iter().collect();
                m.txs.keys().filter(|t| !listed.contains(t)).copied().collect()
            }
            false => Vec::new(),
        };
        let new: Vec<Txid> = ids.iter().filter(|t| !m.txs.contains_key(*t)).copied().collect();
        (gone, new)
    };
    drop(ids);
    let mut changed = HashSet::new();
    if !gone.is_empty() {
        let mut m = lock.write().unwrap();
        for txid in gone {
            m.remove(&txid, &mut changed);
        }
    }
    let new_ids: HashSet<Txid> = new.iter().copied().collect();
    let mut parents = Parents::default();
    let mut waiting = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        // One batch being asked of the node while the one before is placed: at most two (and
        // the one being handed over) in memory.
        let (batches, fetched) = std::sync::mpsc::sync_channel(0);
        s.spawn(move || {
            for chunk in new.chunks(BATCH) {
                let batch = fetch(rpc, chunk);
                let failed = batch.is_err();
                if batches.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let mut announced = std::time::Instant::now();
        for batch in fetched {
            let ready = resolve(lock, index, &new_ids, &mut parents, batch?)?;
            place(lock, ready, &mut waiting, &mut changed);
            if announced.elapsed() >= ANNOUNCE_EVERY {
                announce(std::mem::take(&mut changed));
                announced = std::time::Instant::now();
            }
        }
        Ok(())
    })?;
    // Children listed before their parents, placed once these are (rare: the node lists
    // ancestors first); any still waiting spend a transaction that has left.
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut retry = std::mem::take(&mut waiting);
        while !retry.is_empty() {
            let rest = retry.split_off(retry.len().min(BATCH));
            place(lock, std::mem::replace(&mut retry, rest), &mut waiting, &mut changed);
        }
        if waiting.len() == before {
            for f in &waiting {
                tracing::debug!(txid = %f.txid, "mempool tx skipped: a parent has left");
            }
            break;
        }
    }
    Ok(SyncOutcome { changed, complete: removals })
}

/// Adds each of `txs` whose inputs are all found; the others go to `waiting`.
fn place(
    lock: &RwLock<Mempool>,
    txs: Vec<NewTx>,
    waiting: &mut Vec<NewTx>,
    changed: &mut HashSet<ScriptHash>,
) {
    let mut m = lock.write().unwrap();
    for f in txs {
        if !m.can_place(&f) {
            waiting.push(f);
            continue;
        }
        let txid = f.txid;
        match m.add(f) {
            Ok(scripts) => changed.extend(scripts),
            Err(e) => tracing::debug!(%txid, "mempool tx skipped: {e:#}"),
        }
    }
}

/// What a full resync did.
pub struct SyncOutcome {
    /// Script hashes whose unconfirmed side changed.
    pub changed: HashSet<ScriptHash>,
    /// False when removals were held back (the node has a block the index does not yet).
    pub complete: bool,
}

/// Applies `events` in order: the added transactions are fetched from the node in batches (gone
/// again by now: skipped), the removed ones dropped. Returns the changed script hashes, and
/// false when an addition could not be placed (its parent unknown: a resync settles it).
pub fn apply(
    lock: &RwLock<Mempool>,
    rpc: &Rpc,
    index: &IndexReader,
    events: &[Event],
) -> Result<(HashSet<ScriptHash>, bool)> {
    let added: Vec<Txid> = {
        let m = lock.read().unwrap();
        let mut seen = HashSet::new();
        events
            .iter()
            .filter_map(|e| match e {
                Event::Added(txid) if !m.txs.contains_key(txid) && seen.insert(*txid) => Some(*txid),
                _ => None,
            })
            .collect()
    };
    let new_ids: HashSet<Txid> = added.iter().copied().collect();
    let mut parents = Parents::default();
    let mut ready: HashMap<Txid, NewTx> = HashMap::new();
    for chunk in added.chunks(BATCH) {
        let fetched = fetch(rpc, chunk)?;
        ready.extend(resolve(lock, index, &new_ids, &mut parents, fetched)?.into_iter().map(|f| (f.txid, f)));
    }
    let (mut changed, mut placed) = (HashSet::new(), true);
    // A thousand events per write lock: requests wait at most for those.
    for part in events.chunks(1000) {
        let mut m = lock.write().unwrap();
        for event in part {
            match event {
                Event::Removed(txid) => m.remove(txid, &mut changed),
                Event::Added(txid) => {
                    let Some(f) = ready.remove(txid) else { continue }; // tracked, or left already
                    if !m.can_place(&f) {
                        tracing::debug!(%txid, "mempool tx not placed: a parent is not here");
                        placed = false;
                        continue;
                    }
                    match m.add(f) {
                        Ok(scripts) => changed.extend(scripts),
                        Err(e) => {
                            tracing::debug!(%txid, "mempool tx not placed: {e:#}");
                            placed = false;
                        }
                    }
                }
            }
        }
    }
    Ok((changed, placed))
}

/// A transaction as the node gave it: its fee and vsize (from its entry) and its bytes.
struct Fetched {
    txid: Txid,
    fee: u64,
    vsize: u64,
    raw: Vec<u8>,
}

/// Asks the node for the entries and bytes of `txids` in one batch; those that left since they
/// were listed are left out.
fn fetch(rpc: &Rpc, txids: &[Txid]) -> Result<Vec<Fetched>> {
    let calls: Vec<(&str, Value)> = txids
        .iter()
        .flat_map(|t| {
            let t = t.to_string();
            [("getmempoolentry", json!([t])), ("getrawtransaction", json!([t, false]))]
        })
        .collect();
    let answers = rpc.batch(&calls)?;
    let mut out = Vec::with_capacity(txids.len());
    for (txid, pair) in txids.iter().zip(answers.chunks(2)) {
        // Mined or replaced since it was listed: the next read settles it.
        let (Ok(entry), Ok(raw)) = (&pair[0], &pair[1]) else { continue };
        let fee = btc_to_sat(&entry["fees"]["base"]).context("fees.base")?;
        let vsize = entry["vsize"].as_u64().context("vsize")?.max(1);
        let raw = hex::decode(raw.as_str().context("getrawtransaction: not hex")?)?;
        out.push(Fetched { txid: *txid, fee, vsize, raw });
    }
    Ok(out)
}

/// `fetched` as new mempool transactions: decoded, outputs hashed, and the confirmed outputs
/// they spend looked up (a parent that is tracked, or among `new_ids`, is read when placed).
/// One that cannot be decoded, or whose parent is neither confirmed nor in the mempool, is
/// left out (the next read settles it).
fn resolve(
    lock: &RwLock<Mempool>,
    index: &IndexReader,
    new_ids: &HashSet<Txid>,
    parents: &mut Parents,
    fetched: Vec<Fetched>,
) -> Result<Vec<NewTx>> {
    let mut decoded = Vec::with_capacity(fetched.len());
    for f in fetched {
        let mut tx = Tx::default();
        match parse_tx(&mut Reader::new(&f.raw), &f.raw, &mut tx) {
            Ok(()) if tx.txid == f.txid && tx.raw.len() == f.raw.len() => {}
            other => {
                tracing::debug!(txid = %f.txid, "mempool tx skipped: not the transaction asked for ({other:?})");
                continue;
            }
        }
        let inputs: Vec<OutPoint> =
            tx.inputs.iter().map(|i| OutPoint { txid: i.prev_txid(), vout: i.prev_vout }).collect();
        let outputs = tx
            .outputs
            .iter()
            .map(|o| (o.value, ScriptHash::of(o.script), !is_unspendable(o.script)))
            .collect();
        decoded.push((f, inputs, outputs));
    }
    // The inputs whose parent is not in the mempool (nor about to be): confirmed, or nowhere.
    let confirmed_inputs: Vec<Vec<OutPoint>> = {
        let m = lock.read().unwrap();
        let in_mempool = |t: &Txid| new_ids.contains(t) || m.txs.contains_key(t);
        decoded
            .iter()
            .map(|(_, inputs, _)| inputs.iter().filter(|op| !in_mempool(&op.txid)).copied().collect())
            .collect()
    };
    parents.read(index, confirmed_inputs.iter().flatten().map(|op| op.txid).collect())?;
    let mut out = Vec::with_capacity(decoded.len());
    for ((f, inputs, outputs), from_chain) in decoded.into_iter().zip(confirmed_inputs) {
        let confirmed: Option<HashMap<OutPoint, (u64, ScriptHash)>> =
            from_chain.iter().map(|op| Some((*op, parents.output(op)?))).collect();
        let Some(confirmed) = confirmed else {
            tracing::debug!(txid = %f.txid, "mempool tx skipped: a parent neither confirmed nor in the mempool");
            continue;
        };
        let Fetched { txid, fee, vsize, raw } = f;
        out.push(NewTx { txid, raw: raw.into(), fee, vsize, inputs, outputs, confirmed });
    }
    Ok(out)
}

/// The confirmed parents of new transactions, read from the index once each (a parent paying
/// thousands of mempool transactions, an exchange's payout, is read and hashed once, not once
/// per child) and kept for one read of the mempool or one round of events; at most
/// `PARENT_OUTPUTS` outputs are held (then it starts over).
#[derive(Default)]
struct Parents {
    /// Each parent's outputs (value, script hash); None: not in the index.
    outputs: HashMap<Txid, Option<Outputs>>,
    held: usize,
}

/// A transaction's outputs: value and script hash.
type Outputs = Box<[(u64, ScriptHash)]>;

/// Outputs `Parents` holds at most (about 40 bytes each).
const PARENT_OUTPUTS: usize = 1 << 18;

impl Parents {
    /// Makes sure every one of `txids` is held: reads those not held yet, spread over the cores
    /// (each a bucket read and a positional read of the blk file). Over the bound, the others
    /// are let go first.
    fn read(&mut self, index: &IndexReader, mut txids: Vec<Txid>) -> Result<()> {
        txids.sort_unstable();
        txids.dedup();
        let needed: HashSet<Txid> = txids.iter().copied().collect();
        txids.retain(|t| !self.outputs.contains_key(t));
        if txids.is_empty() {
            return Ok(());
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(txids.len());
        let parts: Vec<&[Txid]> = txids.chunks(txids.len().div_ceil(threads)).collect();
        type Read = Vec<(Txid, Option<Outputs>)>;
        let read: Vec<Result<Read>> = std::thread::scope(|s| {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    s.spawn(move || part.iter().map(|t| Ok((*t, parent_outputs(index, t)?))).collect())
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("a parent reader")).collect()
        });
        let read = read.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
        self.keep(&needed, read, PARENT_OUTPUTS);
        Ok(())
    }

    /// Holds `read`; if that makes more than `bound` outputs, lets go first of those held that
    /// are not `needed`.
    fn keep(&mut self, needed: &HashSet<Txid>, read: Vec<(Txid, Option<Outputs>)>, bound: usize) {
        let size = |o: &Option<Outputs>| o.as_ref().map_or(1, |o| o.len());
        let adding: usize = read.iter().map(|(_, o)| size(o)).sum();
        if self.held + adding > bound {
            self.outputs.retain(|t, _| needed.contains(t));
            self.held = self.outputs.values().map(size).sum();
        }
        self.held += adding;
        self.outputs.extend(read);
    }

    /// The value and script hash of output `op` of a parent `read` was asked for: None if the
    /// index does not have it.
    fn output(&self, op: &OutPoint) -> Option<(u64, ScriptHash)> {
        self.outputs.get(&op.txid)?.as_ref()?.get(op.vout as usize).copied()
    }
}

/// The outputs of confirmed transaction `txid` (None: not in the index).
fn parent_outputs(index: &IndexReader, txid: &Txid) -> Result<Option<Outputs>> {
    let Some(funding) = index.txs_by_txid(txid)?.pop() else { return Ok(None) };
    let mut tx = Tx::default();
    parse_tx(&mut Reader::new(&funding.raw), &funding.raw, &mut tx)
        .map_err(|e| anyhow::anyhow!("transaction {txid} in the index: {e}"))?;
    Ok(Some(tx.outputs.iter().map(|o| (o.value, ScriptHash::of(o.script))).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    /// Over its bound, the parents' cache lets go of those no transaction being resolved needs,
    /// never of one it does (they were read for a batch over two calls, say).
    #[test]
    fn the_parents_cache_keeps_what_is_needed_over_its_bound() {
        let txid = |i: u8| Txid::from_byte_array([i; 32]);
        let outputs = |n: usize| Some((0..n).map(|v| (v as u64, ScriptHash([0; 32]))).collect::<Outputs>());
        let mut parents = Parents::default();
        let needed: HashSet<Txid> = [txid(1), txid(3)].into();
        parents.keep(&needed, vec![(txid(1), outputs(4)), (txid(2), outputs(4))], 10);
        assert_eq!(parents.held, 8);
        parents.keep(&needed, vec![(txid(3), outputs(4)), (txid(4), None)], 10);
        assert!(parents.output(&OutPoint { txid: txid(1), vout: 3 }).is_some(), "needed: kept");
        assert!(parents.output(&OutPoint { txid: txid(3), vout: 0 }).is_some());
        assert!(!parents.outputs.contains_key(&txid(2)), "not needed: let go");
        assert!(
            parents.outputs.contains_key(&txid(4))
                && parents.output(&OutPoint { txid: txid(4), vout: 0 }).is_none()
        );
        assert_eq!(parents.held, 9);
        assert!(parents.output(&OutPoint { txid: txid(1), vout: 4 }).is_none(), "no such output");
    }
}
