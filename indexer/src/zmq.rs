//! bitcoind's ZMQ block notifications, turned into wake-ups for the follower. A notification only
//! says "look now": the follower always asks the node over RPC what changed, so a dropped or
//! duplicated message costs nothing but latency (the poll timer covers drops).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use tracing::{debug, info, warn};
use zeromq::{Socket, SocketRecv};

/// Which notifications to listen to.
#[derive(Clone, Debug)]
pub struct ZmqConfig {
    pub endpoint: String,
    /// "hashblock" or "sequence".
    pub topic: String,
}

/// Listens in a thread of its own until `stop`; each block notification sends `()` on `wake`.
/// Setting `reconnect` makes it connect afresh (after the node restarted).
pub fn spawn(cfg: ZmqConfig, wake: Sender<()>, reconnect: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("zmq".into())
        .spawn(move || {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(listen(cfg, wake, reconnect, stop));
        })
        .expect("spawn zmq thread");
}

async fn listen(cfg: ZmqConfig, wake: Sender<()>, reconnect: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut logged = false;
    while !stop.load(Ordering::Relaxed) {
        let mut socket = zeromq::SubSocket::new();
        let connected = tokio::time::timeout(Duration::from_secs(5), socket.connect(&cfg.endpoint)).await;
        match connected {
            Ok(Ok(())) => {}
            other => {
                if !logged {
                    warn!(endpoint = %cfg.endpoint, "cannot connect to the node's ZMQ ({other:?}); retrying, polling meanwhile");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        if let Err(e) = socket.subscribe(&cfg.topic).await {
            warn!("ZMQ subscribe failed: {e}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        info!(endpoint = %cfg.endpoint, topic = %cfg.topic, "listening to ZMQ notifications");
        logged = false;
        reconnect.store(false, Ordering::Relaxed);
        loop {
            if stop.load(Ordering::Relaxed) || reconnect.swap(false, Ordering::Relaxed) {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), socket.recv()).await {
                Err(_) => continue, // quiet; check the flags again
                Ok(Ok(msg)) => {
                    if is_block_event(&cfg.topic, &msg) {
                        debug!("ZMQ block notification");
                        if wake.send(()).is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    warn!("ZMQ receive failed: {e}; reconnecting");
                    break;
                }
            }
        }
    }
}

/// hashblock messages are all blocks; sequence messages are blocks when labelled C (connected)
/// or D (disconnected), mempool changes otherwise.
fn is_block_event(topic: &str, msg: &zeromq::ZmqMessage) -> bool {
    match topic {
        "sequence" => msg.get(1).is_some_and(|body| body.len() >= 33 && matches!(body[32], b'C' | b'D')),
        _ => true,
    }
}
