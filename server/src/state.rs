//! What every session shares: the index (a RocksDB secondary of the indexer's DB and the blk
//! files), the tracked mempool, the node's RPC for clients' calls (none with `--no-node`) and
//! whether the node answers lately, the tip, the settings, and the shared parts
//! (script cache, peers, sessions, metrics). Its fields are private: sessions and methods read
//! through `read`, `tip`, `settings`…; the tasks above it (`catch_up`, `mempool::driver`, `zmq`)
//! move it forward through `swap_index`, `announce_*`, `feed` and `wake`.
//!
//! The index is double-buffered: two secondary instances take turns. Requests read the current
//! one (an `Arc` taken at the start, so one request sees one state of the chain and the rows);
//! `catch_up` brings the other one up to date once its last reader is gone, then swaps it in.
//! So catching up never makes a request wait, and no request sees a half-applied block.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use bitcoin::block::Header;
use tokio::sync::futures::Notified;
use tokio::sync::{broadcast, mpsc, watch, Notify};

use blkindex_shared::merkle::PrefixTree;
use blkindex_shared::query::IndexReader;
use blkindex_shared::rpc::{Rpc, RpcError};
use blkindex_shared::schema::Height;
use blkindex_shared::ScriptHash;

use crate::config::Settings;
use crate::mempool::{Event, Feed, Mempool, Pool};
use crate::metrics::Metrics;
use crate::outbox::Budget;
use crate::peers::Peers;
use crate::protocol::ServerError;
use crate::script_cache::ScriptCache;
use crate::sessions::Sessions;
use crate::tweaks::Tweaks;

/// The indexed tip as sessions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub height: Height,
    pub header: Header,
}

impl Tip {
    /// The tip of `index`, None when it is empty.
    pub fn of(index: &IndexReader) -> Option<Tip> {
        index
            .chain
            .tip()
            .and_then(|(h, _)| index.chain.row(h))
            .map(|r| Tip { height: index.chain.len() as Height - 1, header: r.header })
    }
}

/// The node as the server last found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLink {
    /// `--no-node`: none is asked.
    None,
    /// Not asked yet.
    Unknown,
    /// Its last answer came (an error of its own is an answer).
    Up,
    /// The last call could not reach it (down, restarting, busy, warming up).
    Down,
}

impl NodeLink {
    pub fn name(self) -> &'static str {
        match self {
            NodeLink::None => "none",
            NodeLink::Unknown => "unknown",
            NodeLink::Up => "up",
            NodeLink::Down => "down",
        }
    }
}

/// A task that `wake` can hurry.
#[derive(Clone, Copy, Debug)]
pub enum Task {
    /// `catch_up`: the indexer may have written a block.
    CatchUp,
    /// `mempool::driver`: the node's mempool may have changed.
    Mempool,
}

pub struct State {
    settings: Settings,
    /// The current index, swapped (never modified in place) by the catch-up task.
    index: RwLock<Arc<IndexReader>>,
    mempool: RwLock<Mempool>,
    /// The node, for clients' calls (a shorter timeout than the tasks' own `Rpc`); None with
    /// `--no-node`.
    node: Option<Rpc>,
    /// `NodeLink::Unknown`, `Up` or `Down` as a number: what the last call to the node found.
    node_link: AtomicU8,
    tip: watch::Sender<Option<Tip>>,
    /// Script hashes whose unconfirmed side changed.
    mempool_changes: broadcast::Sender<Arc<HashSet<ScriptHash>>>,
    /// Wake the catch-up and mempool tasks early (the node's ZMQ says something changed).
    wake_catch_up: Notify,
    wake_mempool: Notify,
    metrics: Arc<Metrics>,
    /// Scripts' confirmed sides, shared by both index instances.
    scripts: ScriptCache,
    /// Other public servers, for `server.peers.subscribe` and `server.add_peer`.
    peers: Arc<Peers>,
    /// ZMQ's events and flags for the mempool task.
    feed: Feed,
    /// The open sessions, for the admin interface.
    sessions: Sessions,
    /// The bytes sessions may have queued for their clients.
    send_budget: Budget,
    /// Node calls made for clients in flight (`--max-node-calls`).
    node_calls: tokio::sync::Semaphore,
    /// Answers reused for a while (fee estimates, the fee histogram), by what was asked.
    reused: Mutex<HashMap<String, (Instant, serde_json::Value)>>,
    /// The block hashes' merkle tree, for checkpoint proofs.
    header_tree: Mutex<PrefixTree>,
    /// When the catch-up task last found the index served level with the indexer's.
    caught_up_at: Mutex<Instant>,
    /// Silent payments: the index's tweaks, the scans' limits, the mempool's tweaks.
    tweaks: Tweaks,
}

/// How long a client's node call waits for its turn before it is told the node is busy.
const NODE_CALL_WAIT: Duration = Duration::from_secs(10);
/// Most answers `reused` keeps (its keys come from clients' arguments).
const REUSED_MAX: usize = 1024;

impl State {
    /// The state, and the receiving end of the mempool events for `mempool::driver::run`;
    /// `node` is None for a server without one (`--no-node`).
    pub fn new(
        index: IndexReader,
        node: Option<Rpc>,
        settings: Settings,
        metrics: Arc<Metrics>,
        scripts: ScriptCache,
        peers: Arc<Peers>,
        tweak_start: Option<Height>,
    ) -> (Arc<Self>, mpsc::Receiver<Event>) {
        let tip = Tip::of(&index);
        let tweaks = Tweaks::new(tweak_start, settings.limits.silent);
        if let Some(t) = tip {
            metrics.tip.set(t.height as i64);
        }
        let (feed, events) = Feed::new();
        let l = &settings.limits;
        let send_budget = Budget::new(l.max_send_buffer, l.max_send_buffers, l.send_timeout);
        let node_calls = tokio::sync::Semaphore::new(l.max_node_calls);
        let state = Arc::new(State {
            settings,
            index: RwLock::new(Arc::new(index)),
            mempool: RwLock::new(Mempool::default()),
            node,
            node_link: AtomicU8::new(NodeLink::Unknown as u8),
            tip: watch::Sender::new(tip),
            mempool_changes: broadcast::Sender::new(256),
            wake_catch_up: Notify::new(),
            wake_mempool: Notify::new(),
            metrics,
            scripts,
            peers,
            feed,
            sessions: Sessions::default(),
            send_budget,
            node_calls,
            reused: Mutex::default(),
            header_tree: Mutex::default(),
            // Just opened: as caught up as it gets.
            caught_up_at: Mutex::new(Instant::now()),
            tweaks,
        });
        (state, events)
    }

    /// The network, `server.*`'s settings, the sessions' limits.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn scripts(&self) -> &ScriptCache {
        &self.scripts
    }

    /// Silent payments' shared parts (see `tweaks`).
    pub fn tweaks(&self) -> &Tweaks {
        &self.tweaks
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The tip sessions see now.
    pub fn tip(&self) -> Option<Tip> {
        *self.tip.borrow()
    }

    /// Each new tip, as `catch_up` announces it.
    pub fn watch_tip(&self) -> watch::Receiver<Option<Tip>> {
        self.tip.subscribe()
    }

    /// The script hashes whose unconfirmed side changed, at each change of the mempool.
    pub fn watch_mempool(&self) -> broadcast::Receiver<Arc<HashSet<ScriptHash>>> {
        self.mempool_changes.subscribe()
    }

    /// The current index.
    pub fn index(&self) -> Arc<IndexReader> {
        self.index.read().unwrap().clone()
    }

    /// Runs `f` on the index and the mempool on a blocking thread (RocksDB and blk-file reads
    /// block). The index is one state of the chain throughout; the mempool is looked at through
    /// `Pool::with`, briefly, never across index reads.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&IndexReader, Pool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let index = state.index();
            f(&index, Pool(&state.mempool))
        })
        .await?
    }

    /// Calls the node on a blocking thread, for a client: at most `--max-node-calls` at once,
    /// a call that waits longer than `NODE_CALL_WAIT` for its turn fails as the node being busy.
    /// Without a node: `ServerError::NoNode`.
    pub async fn node(
        self: &Arc<Self>,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        if self.node.is_none() {
            return Err(ServerError::NoNode.into());
        }
        let Ok(Ok(_turn)) = tokio::time::timeout(NODE_CALL_WAIT, self.node_calls.acquire()).await else {
            anyhow::bail!("the node is busy: too many calls waiting for it");
        };
        let state = self.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let rpc = state.node.as_ref().expect("checked above");
            let answer = rpc.call(method, params);
            state.node_answered(answer.as_ref().map(|_| ()));
            answer
        })
        .await?;
        Ok(answer?)
    }

    /// The catch-up task found the index level with the indexer's (a new tip swapped in, or
    /// none to take).
    pub fn caught_up(&self) {
        *self.caught_up_at.lock().unwrap() = Instant::now();
    }

    /// How long since the index was last found level with the indexer's.
    pub fn since_caught_up(&self) -> Duration {
        self.caught_up_at.lock().unwrap().elapsed()
    }

    /// Whether a node is configured (false with `--no-node`).
    pub fn has_node(&self) -> bool {
        self.node.is_some()
    }

    /// Records what a call to the node found: an answer (or the node's own error), or a node
    /// that could not be reached.
    pub fn node_answered(&self, result: Result<(), &RpcError>) {
        let link = match result {
            Err(e) if e.is_transient() => NodeLink::Down,
            _ => NodeLink::Up,
        };
        self.node_link.store(link as u8, Ordering::Relaxed);
    }

    /// The node as the last call to it found it.
    pub fn node_link(&self) -> NodeLink {
        match (&self.node, self.node_link.load(Ordering::Relaxed)) {
            (None, _) => NodeLink::None,
            (Some(_), n) if n == NodeLink::Up as u8 => NodeLink::Up,
            (Some(_), n) if n == NodeLink::Down as u8 => NodeLink::Down,
            (Some(_), _) => NodeLink::Unknown,
        }
    }

    /// `node(method, params)`, its answer reused for `--fee-cache-secs`.
    pub async fn node_reused(
        self: &Arc<Self>,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let key = format!("{method}{params}");
        if let Some(v) = self.reused_answer(&key) {
            return Ok(v);
        }
        let v = self.node(method, params).await?;
        self.keep_answer(key, v.clone());
        Ok(v)
    }

    /// An answer computed by `f` from the mempool, reused for `--fee-cache-secs`.
    pub async fn mempool_reused(
        self: &Arc<Self>,
        key: &'static str,
        f: impl FnOnce(&Mempool) -> serde_json::Value + Send + 'static,
    ) -> Result<serde_json::Value> {
        if let Some(v) = self.reused_answer(key) {
            return Ok(v);
        }
        let v = self.read(move |_, m| Ok(m.with(f))).await?;
        self.keep_answer(key.to_string(), v.clone());
        Ok(v)
    }

    fn reused_answer(&self, key: &str) -> Option<serde_json::Value> {
        let reused = self.reused.lock().unwrap();
        let (at, v) = reused.get(key)?;
        (at.elapsed() < self.settings.limits.fee_cache).then(|| v.clone())
    }

    fn keep_answer(&self, key: String, v: serde_json::Value) {
        let mut reused = self.reused.lock().unwrap();
        if reused.len() >= REUSED_MAX {
            let ttl = self.settings.limits.fee_cache;
            reused.retain(|_, (at, _)| at.elapsed() < ttl);
            if reused.len() >= REUSED_MAX {
                reused.clear();
            }
        }
        reused.insert(key, (Instant::now(), v));
    }

    /// The block hashes' merkle tree, shared by the index instances (it follows whichever asks).
    pub fn header_tree(&self) -> &Mutex<PrefixTree> {
        &self.header_tree
    }

    /// The bytes sessions may queue for their clients.
    pub fn send_budget(&self) -> &Budget {
        &self.send_budget
    }

    /// The tracked mempool, which `mempool::driver` writes.
    pub fn mempool(&self) -> &RwLock<Mempool> {
        &self.mempool
    }

    /// What ZMQ tells the mempool task.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Hurries `task` to its next round.
    pub fn wake(&self, task: Task) {
        match task {
            Task::CatchUp => self.wake_catch_up.notify_one(),
            Task::Mempool => self.wake_mempool.notify_one(),
        }
    }

    /// Resolves when `task` is woken.
    pub fn woken(&self, task: Task) -> Notified<'_> {
        match task {
            Task::CatchUp => self.wake_catch_up.notified(),
            Task::Mempool => self.wake_mempool.notified(),
        }
    }

    /// Makes `index` the current index; returns the one it replaces.
    pub fn swap_index(&self, index: Arc<IndexReader>) -> Arc<IndexReader> {
        std::mem::replace(&mut *self.index.write().unwrap(), index)
    }

    /// Tells the sessions (and the metrics) about a new tip.
    pub fn announce_tip(&self, tip: Tip) {
        self.metrics.tip.set(tip.height as i64);
        self.tip.send_replace(Some(tip));
    }

    /// Tells the sessions which scripts' unconfirmed sides changed.
    pub fn announce_mempool(&self, changed: HashSet<ScriptHash>) {
        let _ = self.mempool_changes.send(Arc::new(changed));
    }
}
