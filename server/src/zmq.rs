//! The node's ZMQ notifications: a block wakes the catch-up (the indexer is writing it); the
//! mempool task lets the block's transactions go once the index has it. `sequence`'s mempool events (a transaction added or removed)
//! go to the mempool task to apply. Each topic's message counter shows a lost message, which also
//! asks for a resync, as does a reconnection. Without `sequence`, other topics only wake the
//! polling mempool task early.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::Txid;

use tracing::{debug, info, warn};
use zeromq::{Socket, SocketRecv};

use crate::mempool::Event;
use crate::state::{State, Task};

/// What a `sequence` message says.
#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    /// A block connected or disconnected.
    Block,
    Mempool(Event),
}

/// Reads a `sequence` body: a 32-byte hash (as displayed, i.e. byte-reversed), a label (`C`/`D`
/// block connected/disconnected, `A`/`R` transaction added/removed) and, for `A`/`R`, the
/// mempool's 8-byte sequence number.
fn sequence_event(body: &[u8]) -> Option<Sequence> {
    let mut hash: [u8; 32] = body.get(..32)?.try_into().ok()?;
    hash.reverse();
    let txid = Txid::from_byte_array(hash);
    match (body.get(32)?, body.len()) {
        (b'C' | b'D', 33) => Some(Sequence::Block),
        (b'A', 41) => Some(Sequence::Mempool(Event::Added(txid))),
        (b'R', 41) => Some(Sequence::Mempool(Event::Removed(txid))),
        _ => None,
    }
}

/// Topics we use.
const TOPICS: &[&str] = &["hashblock", "sequence", "hashtx", "rawtx"];

/// One listener task per endpoint the node publishes any of `TOPICS` on.
pub fn spawn(state: Arc<State>, published: Vec<(String, String)>) {
    let mut by_endpoint: Vec<(String, Vec<String>)> = Vec::new();
    for (topic, endpoint) in published.into_iter().filter(|(t, _)| TOPICS.contains(&t.as_str())) {
        match by_endpoint.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, topics)) if !topics.contains(&topic) => topics.push(topic),
            Some(_) => {}
            None => by_endpoint.push((endpoint, vec![topic])),
        }
    }
    if by_endpoint.is_empty() {
        info!("the node publishes no ZMQ notifications we use; polling only");
    }
    for (endpoint, topics) in by_endpoint {
        tokio::spawn(listen(state.clone(), endpoint, topics));
    }
}

async fn listen(state: Arc<State>, endpoint: String, topics: Vec<String>) {
    let mut logged = false;
    loop {
        let mut socket = zeromq::SubSocket::new();
        let mut ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), socket.connect(&endpoint)).await,
            Ok(Ok(()))
        );
        for t in &topics {
            ok = ok && socket.subscribe(t).await.is_ok();
        }
        if !ok {
            if !logged {
                warn!(%endpoint, "cannot listen to the node's ZMQ; retrying, polling meanwhile");
                logged = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        info!(%endpoint, ?topics, "listening to ZMQ notifications");
        logged = false;
        let sequence = topics.iter().any(|t| t == "sequence");
        // Whatever happened while we were not listening is unknown.
        state.feed().resync();
        if sequence {
            state.feed().set_sequence(true);
        }
        let mut counters: HashMap<Vec<u8>, u32> = HashMap::new();
        loop {
            match socket.recv().await {
                Ok(msg) => {
                    // The third frame numbers each topic's messages: a jump is a lost message.
                    let topic = msg.get(0).map(|t| t.to_vec()).unwrap_or_default();
                    if let Some(n) = msg.get(2).and_then(|c| <[u8; 4]>::try_from(c.as_ref()).ok()) {
                        let n = u32::from_le_bytes(n);
                        if counters.insert(topic, n).is_some_and(|last| last.wrapping_add(1) != n) {
                            debug!(%endpoint, "a ZMQ message was lost; resyncing the mempool");
                            state.feed().resync();
                        }
                    }
                    on_message(&state, &msg)
                }
                Err(e) => {
                    warn!(%endpoint, "ZMQ receive failed: {e}; reconnecting");
                    break;
                }
            }
        }
        if sequence {
            state.feed().set_sequence(false);
        }
    }
}

fn on_message(state: &Arc<State>, msg: &zeromq::ZmqMessage) {
    let topic = msg.get(0).map(|t| t.as_ref()).unwrap_or_default();
    let body = msg.get(1).map(|b| b.as_ref()).unwrap_or_default();
    let block = match topic {
        b"hashblock" => true,
        b"sequence" => match sequence_event(body) {
            Some(Sequence::Block) => true,
            Some(Sequence::Mempool(event)) => {
                state.feed().push(event);
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
        // The indexer hears of the block at the same moment and needs a little while to write
        // it: look now and a few times soon after, rather than wait for the timer.
        let state = state.clone();
        tokio::spawn(async move {
            for delay in [0, 20, 50, 100, 200] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                state.wake(Task::CatchUp);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_messages_read_as_core_writes_them() {
        let shown = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
        let mut body = hex::decode(shown).unwrap();
        let txid: Txid = shown.parse().unwrap();
        let seq = 7u64.to_le_bytes();
        let with = |label: u8, tail: &[u8]| [body.as_slice(), &[label], tail].concat();
        assert_eq!(sequence_event(&with(b'A', &seq)), Some(Sequence::Mempool(Event::Added(txid))));
        assert_eq!(sequence_event(&with(b'R', &seq)), Some(Sequence::Mempool(Event::Removed(txid))));
        assert_eq!(sequence_event(&with(b'C', &[])), Some(Sequence::Block));
        assert_eq!(sequence_event(&with(b'D', &[])), Some(Sequence::Block));
        assert_eq!(sequence_event(&with(b'A', &[])), None, "A without its sequence number");
        assert_eq!(sequence_event(&with(b'X', &seq)), None);
        body.truncate(31);
        assert_eq!(sequence_event(&body), None);
    }
}
