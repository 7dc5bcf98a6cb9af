//! What every session shares: the index (a RocksDB secondary of the indexer's DB and the blk
//! files), the node's RPC, and the tip, which a catch-up task moves forward and announces.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use bitcoin::block::Header;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use blkindex_shared::query::Index;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::Height;
use blkindex_shared::{Net, ScriptHash};

use crate::mempool::Mempool;
use crate::methods::Info;
use crate::metrics::Metrics;
use crate::session::Limits;

/// The indexed tip as sessions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub height: Height,
    pub header: Header,
}

pub struct State {
    pub net: Net,
    /// Read by requests; written only by the catch-up task (which takes the write lock so that
    /// no request sees the chain half-updated).
    pub index: RwLock<Index>,
    pub mempool: RwLock<Mempool>,
    pub rpc: Rpc,
    pub tip: watch::Sender<Option<Tip>>,
    /// Script hashes whose unconfirmed side changed.
    pub mempool_changes: broadcast::Sender<Arc<HashSet<ScriptHash>>>,
    /// Wakes the catch-up and mempool tasks early (the node's ZMQ says something changed).
    pub wake_catch_up: tokio::sync::Notify,
    pub wake_mempool: tokio::sync::Notify,
    pub info: Info,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

impl State {
    pub fn new(
        net: Net,
        index: Index,
        rpc: Rpc,
        info: Info,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let tip = current_tip(&index);
        if let Some(t) = tip {
            metrics.tip.set(t.height as i64);
        }
        Arc::new(State {
            net,
            index: RwLock::new(index),
            mempool: RwLock::new(Mempool::default()),
            rpc,
            tip: watch::Sender::new(tip),
            mempool_changes: broadcast::Sender::new(256),
            wake_catch_up: Default::default(),
            wake_mempool: Default::default(),
            info,
            limits,
            metrics,
        })
    }

    /// Runs `f` on the index and the mempool, seen together, on a blocking thread (RocksDB and
    /// blk-file reads block).
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Index, &Mempool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let index = state.index.read().unwrap();
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

/// Follows the indexer: catches the secondary up with the primary every `every`, or sooner when
/// woken, and announces a new tip when there is one.
pub async fn catch_up_loop(state: Arc<State>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.wake_catch_up.notified() => {}
        }
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Option<Tip>> {
            let mut guard = s.index.write().unwrap();
            let Index { store, chain, .. } = &mut *guard;
            if let Err(e) = store.catch_up() {
                tracing::debug!("catch-up failed ({e:#}); reopening the secondary");
                *store = store.reopen()?;
            }
            let changed = chain.sync(store)?;
            Ok(if changed { current_tip(&guard) } else { None })
        })
        .await;
        match result {
            Ok(Ok(Some(tip))) => {
                info!(height = tip.height, hash = %tip.header.block_hash(), "new tip");
                state.metrics.tip.set(tip.height as i64);
                state.tip.send_replace(Some(tip));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!("catching up with the indexer failed: {e:#}"),
            Err(e) => warn!("catch-up task failed: {e}"),
        }
    }
}

/// Keeps the mempool in step with the node's every `every`, or sooner when woken, and announces
/// what changed.
pub async fn mempool_loop(state: Arc<State>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.wake_mempool.notified() => {}
        }
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let index = s.index.read().unwrap();
            let mut mempool = s.mempool.write().unwrap();
            let changed = mempool.sync(&s.rpc, &index);
            s.metrics.mempool_txs.set(mempool.txs.len() as i64);
            changed
        })
        .await;
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
