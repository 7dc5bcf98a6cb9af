//! The node's ZMQ notifications (through `shared::zmq`'s subscriber): a block wakes the catch-up
//! (the indexer is writing it); the mempool task lets the block's transactions go once the index
//! has it. `sequence`'s mempool events (a transaction added or removed) go to the mempool task to
//! apply. A lost message (a jump in its topic's counter) asks for a resync, as does a
//! reconnection. Without `sequence`, other topics only wake the polling mempool task early.
//! Where the node publishes is asked of the node itself, again and again while it cannot be
//! reached (a node down at start-up is not a reason to poll for ever once it is back).

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use blkindex_shared::config::zmq_published;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::zmq::{self, Sequence};

use crate::mempool::Event;
use crate::state::{State, Task};

/// Topics we use.
const TOPICS: &[&str] = &["hashblock", "sequence", "hashtx", "rawtx"];

/// The longest wait between two questions to a node that cannot be reached.
const ASK_AGAIN_MAX: Duration = Duration::from_secs(30);

/// Listens to the node's notifications until the process ends: at once on the endpoints
/// `configured` (`bitcoin.conf`) names, then also on those the node reports
/// (`getzmqnotifications`) once it answers, asked again (1 s, doubling up to 30 s) while it
/// cannot be reached. Returns only if a listener does.
pub async fn run(state: Arc<State>, rpc: Arc<Rpc>, configured: Vec<(String, String)>) {
    let mut listeners = JoinSet::new();
    let mut listening = HashSet::new();
    start(&mut listeners, &mut listening, &state, configured);
    let mut wait = Duration::from_secs(1);
    let mut logged = false;
    let published = loop {
        let ask = rpc.clone();
        let answer = tokio::task::spawn_blocking(move || ask.call("getzmqnotifications", json!([]))).await;
        match answer {
            Ok(Ok(v)) => break zmq_published(&v),
            Ok(Err(e)) if e.is_transient() => {
                if !logged {
                    info!(
                        "the node cannot be reached ({e}); asking it where it publishes ZMQ until it answers"
                    );
                    logged = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ASK_AGAIN_MAX);
            }
            // A node without the call (no ZMQ support): bitcoin.conf's endpoints only.
            _ => break Vec::new(),
        }
    };
    start(&mut listeners, &mut listening, &state, published);
    if listening.is_empty() {
        info!("the node publishes no ZMQ notifications we use; polling only");
    }
    // Each listener runs until the process ends: one that ends (or panics) ends this task.
    match listeners.join_next().await {
        Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Some(_) => {}
        None => std::future::pending().await,
    }
}

/// Listeners for the (topic, endpoint) pairs of `found` we use and do not listen to yet, one
/// per endpoint.
fn start(
    listeners: &mut JoinSet<()>,
    listening: &mut HashSet<(String, String)>,
    state: &Arc<State>,
    found: Vec<(String, String)>,
) {
    let mut by_endpoint: Vec<(String, Vec<String>)> = Vec::new();
    for (topic, endpoint) in found.into_iter().filter(|(t, _)| TOPICS.contains(&t.as_str())) {
        if !listening.insert((topic.clone(), endpoint.clone())) {
            continue;
        }
        match by_endpoint.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, topics)) => topics.push(topic),
            None => by_endpoint.push((endpoint, vec![topic])),
        }
    }
    for (endpoint, topics) in by_endpoint {
        listeners.spawn(listen(state.clone(), endpoint, topics));
    }
}

async fn listen(state: Arc<State>, endpoint: String, topics: Vec<String>) {
    let sequence = topics.iter().any(|t| t == "sequence");
    zmq::listen(&endpoint, &topics, &mut Notices { state, sequence }).await;
}

/// What the server makes of the node's notifications.
struct Notices {
    state: Arc<State>,
    /// Subscribed to `sequence`: the mempool task applies its events instead of polling.
    sequence: bool,
}

impl zmq::Listener for Notices {
    fn connected(&mut self) {
        // Whatever happened while we were not listening is unknown.
        self.state.feed().resync();
        if self.sequence {
            self.state.feed().set_sequence(true);
        }
    }

    fn lost(&mut self, topic: &[u8]) {
        debug!(topic = %String::from_utf8_lossy(topic), "a ZMQ message was lost; resyncing the mempool");
        self.state.feed().resync();
    }

    fn disconnected(&mut self) {
        if self.sequence {
            self.state.feed().set_sequence(false);
        }
    }

    fn message(&mut self, topic: &[u8], body: &[u8]) -> ControlFlow<()> {
        let state = &self.state;
        let block = match topic {
            b"hashblock" => true,
            b"sequence" => match Sequence::parse(body) {
                Some(Sequence::Block(_)) => true,
                Some(Sequence::Added(txid)) => {
                    state.feed().push(Event::Added(txid));
                    false
                }
                Some(Sequence::Removed(txid)) => {
                    state.feed().push(Event::Removed(txid));
                    false
                }
                None => {
                    warn!("a ZMQ sequence message we cannot read; resyncing the mempool");
                    state.feed().resync();
                    false
                }
            },
            _ => false,
        };
        debug!(topic = %String::from_utf8_lossy(topic), block, "ZMQ notification");
        state.wake(Task::Mempool);
        if block {
            // The indexer hears of the block at the same moment and needs a little while to
            // write it: look now and a few times soon after, rather than wait for the timer.
            let state = state.clone();
            tokio::spawn(async move {
                for delay in [0, 20, 50, 100, 200] {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    state.wake(Task::CatchUp);
                }
            });
        }
        ControlFlow::Continue(())
    }
}
