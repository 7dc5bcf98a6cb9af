//! What every session shares: the index (a RocksDB secondary of the indexer's DB and the blk
//! files), the node's RPC, and the tip, which a catch-up task moves forward and announces.
//!
//! The index is double-buffered: two secondary instances take turns. Requests read the current
//! one (an `Arc` taken at the start, so one request sees one state of the chain and the rows);
//! the catch-up task brings the other one up to date once its last reader is gone, then swaps
//! it in. So catching up never makes a request wait, and no request sees a half-applied block.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use bitcoin::block::Header;
use bitcoin::BlockHash;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use blkindex_shared::query::Index;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::Height;
use blkindex_shared::ScriptHash;

use crate::config::Settings;
use crate::mempool::{Event, Mempool};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::script_cache::ScriptCache;
use crate::sessions::Sessions;

/// ZMQ mempool events queued for the mempool task; more than this means it is far behind, and a
/// resync replaces them.
const MEMPOOL_EVENTS: usize = 100_000;

/// The indexed tip as sessions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub height: Height,
    pub header: Header,
}

pub struct State {
    pub settings: Settings,
    /// The current index, swapped (never modified in place) by the catch-up task.
    index: RwLock<Arc<Index>>,
    pub mempool: RwLock<Mempool>,
    pub rpc: Rpc,
    pub tip: watch::Sender<Option<Tip>>,
    /// Script hashes whose unconfirmed side changed.
    pub mempool_changes: broadcast::Sender<Arc<HashSet<ScriptHash>>>,
    /// Wakes the catch-up and mempool tasks early (the node's ZMQ says something changed).
    pub wake_catch_up: tokio::sync::Notify,
    pub wake_mempool: tokio::sync::Notify,
    /// Other public servers, for `server.peers.subscribe` and `server.add_peer`.
    pub peers: Arc<Peers>,
    pub metrics: Arc<Metrics>,
    /// Scripts' confirmed sides, shared by both index instances.
    pub scripts: ScriptCache,
    /// Mempool changes the node announces on ZMQ `sequence`, for the mempool task.
    pub mempool_events: mpsc::Sender<Event>,
    /// Whether those events are flowing (a ZMQ `sequence` subscription is up); else the mempool
    /// task reads the whole mempool on every poll.
    pub zmq_sequence: AtomicBool,
    /// The tracked mempool may have missed something (a block, a lost ZMQ message, an event it
    /// could not place): the next round reads the whole mempool again.
    pub resync: AtomicBool,
    /// The open sessions, for the admin interface.
    pub sessions: Sessions,
}

impl State {
    pub fn new(
        index: Index,
        rpc: Rpc,
        settings: Settings,
        metrics: Arc<Metrics>,
        scripts: ScriptCache,
        peers: Arc<Peers>,
    ) -> (Arc<Self>, mpsc::Receiver<Event>) {
        let tip = current_tip(&index);
        if let Some(t) = tip {
            metrics.tip.set(t.height as i64);
        }
        let (mempool_events, events) = mpsc::channel(MEMPOOL_EVENTS);
        let state = Arc::new(State {
            settings,
            index: RwLock::new(Arc::new(index)),
            mempool: RwLock::new(Mempool::default()),
            rpc,
            tip: watch::Sender::new(tip),
            mempool_changes: broadcast::Sender::new(256),
            wake_catch_up: Default::default(),
            wake_mempool: Default::default(),
            peers,
            metrics,
            scripts,
            mempool_events,
            zmq_sequence: AtomicBool::new(false),
            resync: AtomicBool::new(true),
            sessions: Sessions::default(),
        });
        (state, events)
    }

    /// The current index.
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap().clone()
    }

    /// Runs `f` on the index and the mempool, seen together, on a blocking thread (RocksDB and
    /// blk-file reads block).
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Index, &Mempool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let index = state.index();
            let mempool = state.mempool.read().unwrap();
            f(&index, &mempool)
        })
        .await?
    }

    /// Calls the node on a blocking thread.
    pub async fn node(
        self: &Arc<Self>,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let state = self.clone();
        Ok(tokio::task::spawn_blocking(move || state.rpc.call(method, params)).await??)
    }
}

fn current_tip(index: &Index) -> Option<Tip> {
    index
        .chain
        .tip()
        .and_then(|(h, _)| index.chain.row(h))
        .map(|r| Tip { height: index.chain.len() as Height - 1, header: r.header })
}

/// Follows the indexer with the standby instance: every `every`, or sooner when woken, waits
/// for its last reader to finish, catches it up with the primary, and swaps it in when it shows
/// a different tip; then announces the new tip.
pub async fn catch_up_loop(state: Arc<State>, standby: Index, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut standby = Arc::new(standby);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.wake_catch_up.notified() => {}
        }
        // Readers of the standby are requests that started before the last swap.
        while Arc::strong_count(&standby) > 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || -> (Arc<Index>, Result<Option<Tip>>) {
            let caught_up = (|| {
                let index = Arc::get_mut(&mut standby).expect("no reader holds the standby");
                if let Err(e) = index.store.catch_up() {
                    tracing::debug!("catch-up failed ({e:#}); reopening the secondary");
                    index.store = index.store.reopen()?;
                }
                index.chain.sync(&index.store)?;
                let tip = current_tip(index);
                if tip == *s.tip.borrow() {
                    return Ok(None);
                }
                let old = std::mem::replace(&mut *s.index.write().unwrap(), standby.clone());
                standby = old;
                Ok(tip)
            })();
            (standby, caught_up)
        })
        .await;
        let (back, result) = match result {
            Ok(r) => r,
            Err(e) => panic!("catch-up task failed: {e}"),
        };
        standby = back;
        match result {
            Ok(Some(tip)) => {
                info!(height = tip.height, hash = %tip.header.block_hash(), "new tip");
                state.metrics.tip.set(tip.height as i64);
                state.tip.send_replace(Some(tip));
                // Mempool transactions the new blocks mined can now be let go.
                state.wake_mempool.notify_one();
            }
            Ok(None) => {}
            Err(e) => warn!("catching up with the indexer failed: {e:#}"),
        }
    }
}

/// An index tip (height, hash) up to which blocks' transactions have left the tracked mempool.
type Done = Option<(Height, BlockHash)>;

/// Keeps the mempool in step with the node's: applies the ZMQ events as they come, and reads the
/// whole mempool again when `resync` says so or `resync_every` has passed (or, without ZMQ
/// events, every `every`); announces the script hashes whose unconfirmed side changed.
pub async fn mempool_loop(
    state: Arc<State>,
    mut events: mpsc::Receiver<Event>,
    every: Duration,
    resync_every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    let mut last_full: Option<std::time::Instant> = None;
    // The index tip whose blocks' transactions the tracked mempool no longer holds.
    let mut applied: Done = None;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.wake_mempool.notified() => {}
            Some(e) = events.recv() => batch.push(e),
        }
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        let full = !state.zmq_sequence.load(Ordering::SeqCst)
            || state.resync.load(Ordering::SeqCst)
            || last_full.is_none_or(|t| t.elapsed() >= resync_every);
        if !full && batch.is_empty() && applied == state.index().chain.tip() {
            continue;
        }
        let s = state.clone();
        let mut tip_done = applied;
        let result = tokio::task::spawn_blocking(move || -> Result<(HashSet<ScriptHash>, Done)> {
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
                            s.mempool.write().unwrap().remove_all(&mined, &mut changed);
                        }
                        tip_done = tip;
                    }
                    _ => full = true,
                }
            }
            if full {
                // Anything arriving from now on sets it again.
                s.resync.store(false, Ordering::SeqCst);
                let synced = crate::mempool::sync(&s.mempool, &s.rpc, &index).inspect_err(|_| {
                    s.resync.store(true, Ordering::SeqCst);
                })?;
                match synced.complete {
                    true => tip_done = tip,
                    false => s.resync.store(true, Ordering::SeqCst),
                }
                s.metrics.mempool_updates.with_label_values(&["resync"]).inc();
                // The events taken so far came before this read of the whole mempool: it has them.
                changed.extend(synced.changed);
            } else {
                let (more, placed) = crate::mempool::apply(&s.mempool, &s.rpc, &index, &batch);
                s.metrics.mempool_updates.with_label_values(&["event"]).inc_by(batch.len() as u64);
                if !placed {
                    s.resync.store(true, Ordering::SeqCst);
                }
                changed.extend(more);
            }
            s.metrics.mempool_txs.set(s.mempool.read().unwrap().txs.len() as i64);
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
                failing = false;
                if !changed.is_empty() {
                    let _ = state.mempool_changes.send(Arc::new(changed));
                }
            }
            Ok(Err(e)) if !failing => {
                warn!("reading the node's mempool failed: {e:#}");
                failing = true;
            }
            _ => {}
        }
    }
}
