//! The node's ZMQ notifications (through `shared::zmq`'s subscriber): a block wakes the catch-up
//! (the indexer is writing it); the mempool task lets the block's transactions go once the index
//! has it. `sequence`'s mempool events (a transaction added or removed) go to the mempool task to
//! apply. A lost message (a jump in its topic's counter) asks for a resync, as does a
//! reconnection. Without `sequence`, other topics only wake the polling mempool task early.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use blkindex_shared::zmq::{self, Sequence};

use crate::mempool::Event;
use crate::state::{State, Task};
use crate::tasks::Tasks;

/// Topics we use.
const TOPICS: &[&str] = &["hashblock", "sequence", "hashtx", "rawtx"];

/// One listener task per endpoint the node publishes any of `TOPICS` on, in `tasks` (they run
/// until the process ends).
pub fn spawn(tasks: &mut Tasks, state: Arc<State>, published: Vec<(String, String)>) {
    let mut by_endpoint: Vec<(String, Vec<String>)> = Vec::new();
    for (topic, endpoint) in published.into_iter().filter(|(t, _)| TOPICS.contains(&t.as_str())) {
        match by_endpoint.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, topics)) if !topics.contains(&topic) => topics.push(topic),
            Some(_) => {}
            None => by_endpoint.push((endpoint, vec![topic])),
        }
    }
    if by_endpoint.is_empty() {
        tracing::info!("the node publishes no ZMQ notifications we use; polling only");
    }
    for (endpoint, topics) in by_endpoint {
        tasks.spawn("ZMQ listener", listen(state.clone(), endpoint, topics));
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
