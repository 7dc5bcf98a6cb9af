//! The mempool driver: reads the node's mempool (whole, or one announced transaction at a time)
//! into the tracked `Mempool`, and the task that decides when, and announces what changed. The
//! node and the index are asked without holding the mempool's lock; only applying the changes
//! takes the write lock, so requests never wait for RPC round trips.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bitcoin::{BlockHash, Transaction, Txid};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use blkindex_shared::query::IndexReader;
use blkindex_shared::rpc::{btc_to_sat, Rpc, RpcError};
use blkindex_shared::schema::Height;
use blkindex_shared::ScriptHash;

use crate::mempool::{Event, Mempool, NewTx};
use crate::state::{State, Task};

/// An index tip (height, hash) up to which blocks' transactions have left the tracked mempool.
type AppliedTip = Option<(Height, BlockHash)>;

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
        let result = tokio::task::spawn_blocking(move || -> Result<(HashSet<ScriptHash>, AppliedTip)> {
            let index = s.index();
            let tip = index.chain.tip();
            let mut changed = HashSet::new();
            let mut full = full;
            // Blocks the index has gained: their transactions leave now (the node announces none
            // of them, and not before, so no status flickers). Below a reorg: a whole read.
            if !full && tip_done != tip {
                match tip_done {
                    Some((h, hash)) if index.chain.hash(h) == Some(hash) => {
                        for height in h + 1..=tip.map_or(0, |t| t.0) {
                            let mined = index.block_txids(height)?;
                            s.mempool().write().unwrap().remove_all(&mined, &mut changed);
                        }
                        tip_done = tip;
                    }
                    _ => full = true,
                }
            }
            if full {
                s.feed().resync_started();
                let synced = sync(s.mempool(), &rpc, &index).inspect_err(|_| s.feed().resync())?;
                match synced.complete {
                    true => tip_done = tip,
                    false => s.feed().resync(),
                }
                s.metrics().mempool_updates.with_label_values(&["resync"]).inc();
                // The events taken so far came before this read of the whole mempool: it has them.
                changed.extend(synced.changed);
            } else {
                let (more, placed) = apply(s.mempool(), &rpc, &index, &batch);
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
            Ok((changed, tip_done))
        })
        .await;
        let result = result.map(|r| {
            r.map(|(changed, done)| {
                applied = done;
                changed
            })
        });
        if full && matches!(result, Ok(Ok(_))) {
            last_full = Some(std::time::Instant::now());
        }
        match result {
            Ok(Ok(changed)) => {
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

/// Brings the mempool up to date; returns the script hashes whose mempool side changed. The node
/// and the index are asked without holding the lock; only applying the changes takes the write
/// lock, so requests never wait for RPC round trips.
pub fn sync(lock: &RwLock<Mempool>, rpc: &Rpc, index: &IndexReader) -> Result<SyncOutcome> {
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
    let fetched: Vec<NewTx> = new
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
    Ok(SyncOutcome { changed, complete: removals })
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
pub struct SyncOutcome {
    /// Script hashes whose unconfirmed side changed.
    pub changed: HashSet<ScriptHash>,
    /// False when removals were held back (the node has a block the index does not yet).
    pub complete: bool,
}

/// Applies `events` in order: an added transaction is fetched from the node (gone again by now:
/// skipped), a removed one dropped. Returns the changed script hashes, and false when an
/// addition could not be placed (its parent unknown: a resync settles it).
pub fn apply(
    lock: &RwLock<Mempool>,
    rpc: &Rpc,
    index: &IndexReader,
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
    index: &IndexReader,
    new_ids: &HashSet<Txid>,
    txid: Txid,
    info: &Value,
) -> Result<NewTx> {
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
    Ok(NewTx { txid, tx, fee, vsize, confirmed })
}
