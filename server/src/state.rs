//! What every session shares: the index (a RocksDB secondary of the indexer's DB and the blk
//! files), the node's RPC, and the tip, which a catch-up task moves forward and announces.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use bitcoin::block::Header;
use tokio::sync::watch;
use tracing::{info, warn};

use blkindex_shared::query::Index;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::Height;
use blkindex_shared::Net;

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
    pub rpc: Rpc,
    pub tip: watch::Sender<Option<Tip>>,
}

impl State {
    pub fn new(net: Net, index: Index, rpc: Rpc) -> Arc<Self> {
        let tip = current_tip(&index);
        Arc::new(State { net, index: RwLock::new(index), rpc, tip: watch::Sender::new(tip) })
    }

    /// Runs `f` on the index on a blocking thread (RocksDB and blk-file reads block).
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Index) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state.index.read().unwrap())).await?
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

/// Follows the indexer: catches the secondary up with the primary every `every`, and announces a
/// new tip when there is one.
pub async fn catch_up_loop(state: Arc<State>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Option<Tip>> {
            let mut guard = s.index.write().unwrap();
            let Index { store, chain, .. } = &mut *guard;
            store.catch_up()?;
            let changed = chain.sync(store)?;
            Ok(if changed { current_tip(&guard) } else { None })
        })
        .await;
        match result {
            Ok(Ok(Some(tip))) => {
                info!(height = tip.height, hash = %tip.header.block_hash(), "new tip");
                state.tip.send_replace(Some(tip));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!("catching up with the indexer failed: {e:#}"),
            Err(e) => warn!("catch-up task failed: {e}"),
        }
    }
}
