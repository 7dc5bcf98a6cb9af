//! bitcoind's ZMQ notifications: one subscriber loop (connect, subscribe, receive, reconnect on
//! failure, notice lost messages by each topic's counter) for the indexer's follower and the
//! server, and the reading of `sequence` messages. A notification only ever says "look now":
//! both sides ask the node or the index what changed, so a lost one costs latency, not data.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Txid};
use tracing::{info, warn};
use zeromq::{Socket, SocketRecv};

/// What a `sequence` message says.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Sequence {
    /// A block connected (`C`) or disconnected (`D`).
    Block(BlockHash),
    /// A transaction entered (`A`) or left (`R`) the mempool.
    Added(Txid),
    Removed(Txid),
}

impl Sequence {
    /// Reads a `sequence` body: a 32-byte hash (as displayed, i.e. byte-reversed), a label and,
    /// for `A`/`R`, the mempool's 8-byte sequence number. None for anything else.
    pub fn parse(body: &[u8]) -> Option<Sequence> {
        let mut hash: [u8; 32] = body.get(..32)?.try_into().ok()?;
        hash.reverse();
        match (body.get(32)?, body.len()) {
            (b'C' | b'D', 33) => Some(Sequence::Block(BlockHash::from_byte_array(hash))),
            (b'A', 41) => Some(Sequence::Added(Txid::from_byte_array(hash))),
            (b'R', 41) => Some(Sequence::Removed(Txid::from_byte_array(hash))),
            _ => None,
        }
    }
}

/// What a subscriber does with the stream; every method but `message` has a default.
pub trait Listener {
    /// Connected and subscribed again: whatever was published meanwhile is unknown.
    fn connected(&mut self) {}
    /// A message (topic and body frames); `Break` ends listening for good.
    fn message(&mut self, topic: &[u8], body: &[u8]) -> ControlFlow<()>;
    /// A message of `topic` was lost (its counter jumped).
    fn lost(&mut self, _topic: &[u8]) {}
    /// The connection ended; `listen` connects again unless `stopped`.
    fn disconnected(&mut self) {}
    /// Asked twice a second: true ends listening for good.
    fn stopped(&self) -> bool {
        false
    }
    /// Asked twice a second: true connects afresh (the node restarted, say).
    fn reconnect(&mut self) -> bool {
        false
    }
}

/// Listens to `topics` on `endpoint` until the listener stops it, reconnecting every 2 s while
/// the node is unreachable (logged once per outage).
pub async fn listen(endpoint: &str, topics: &[String], listener: &mut impl Listener) {
    let mut logged = false;
    while !listener.stopped() {
        let mut socket = zeromq::SubSocket::new();
        let mut ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), socket.connect(endpoint)).await,
            Ok(Ok(()))
        );
        for t in topics {
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
        listener.reconnect(); // a request made while not connected is served by this connection
        listener.connected();
        let mut counters: HashMap<Vec<u8>, u32> = HashMap::new();
        loop {
            if listener.stopped() || listener.reconnect() {
                break;
            }
            let msg = match tokio::time::timeout(Duration::from_millis(500), socket.recv()).await {
                Err(_) => continue, // quiet: ask the listener again
                Ok(Ok(msg)) => msg,
                Ok(Err(e)) => {
                    warn!(%endpoint, "ZMQ receive failed: {e}; reconnecting");
                    break;
                }
            };
            let topic = msg.get(0).map(|t| t.to_vec()).unwrap_or_default();
            // The third frame numbers each topic's messages: a jump is a lost message.
            if let Some(n) = msg.get(2).and_then(|c| <[u8; 4]>::try_from(c.as_ref()).ok()) {
                let n = u32::from_le_bytes(n);
                if counters.insert(topic.clone(), n).is_some_and(|last| last.wrapping_add(1) != n) {
                    listener.lost(&topic);
                }
            }
            let body = msg.get(1).map(|b| b.as_ref()).unwrap_or_default();
            if listener.message(&topic, body).is_break() {
                return;
            }
        }
        listener.disconnected();
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
        let block: BlockHash = shown.parse().unwrap();
        let seq = 7u64.to_le_bytes();
        let with = |label: u8, tail: &[u8]| [body.as_slice(), &[label], tail].concat();
        assert_eq!(Sequence::parse(&with(b'A', &seq)), Some(Sequence::Added(txid)));
        assert_eq!(Sequence::parse(&with(b'R', &seq)), Some(Sequence::Removed(txid)));
        assert_eq!(Sequence::parse(&with(b'C', &[])), Some(Sequence::Block(block)));
        assert_eq!(Sequence::parse(&with(b'D', &[])), Some(Sequence::Block(block)));
        assert_eq!(Sequence::parse(&with(b'A', &[])), None, "A without its sequence number");
        assert_eq!(Sequence::parse(&with(b'C', &seq)), None, "C with a sequence number");
        assert_eq!(Sequence::parse(&with(b'X', &seq)), None);
        body.truncate(31);
        assert_eq!(Sequence::parse(&body), None);
    }
}
