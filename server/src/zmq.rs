//! The node's ZMQ notifications, turned into early wake-ups: a block wakes the catch-up (the
//! indexer is writing it) and the mempool task; a mempool event wakes the mempool task. The
//! timers stay as the fallback, so a lost message costs latency, never correctness.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};
use zeromq::{Socket, SocketRecv};

use crate::state::State;

/// Topics we use, and whether each is about blocks (else the mempool).
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
        loop {
            match socket.recv().await {
                Ok(msg) => wake(&state, &msg),
                Err(e) => {
                    warn!(%endpoint, "ZMQ receive failed: {e}; reconnecting");
                    break;
                }
            }
        }
    }
}

fn wake(state: &Arc<State>, msg: &zeromq::ZmqMessage) {
    let topic = msg.get(0).map(|t| t.as_ref()).unwrap_or_default();
    let block = match topic {
        b"hashblock" => true,
        // sequence: 32-byte hash, then C/D (block connected/disconnected) or A/R (mempool).
        b"sequence" => msg.get(1).is_some_and(|b| b.len() >= 33 && matches!(b[32], b'C' | b'D')),
        _ => false,
    };
    debug!(topic = %String::from_utf8_lossy(topic), block, "ZMQ notification");
    state.wake_mempool.notify_one();
    if block {
        // The indexer hears of the block at the same moment and needs a little while to write
        // it: look now and a few times soon after, rather than wait for the timer.
        let state = state.clone();
        tokio::spawn(async move {
            for delay in [0, 20, 50, 100, 200] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                state.wake_catch_up.notify_one();
            }
        });
    }
}
