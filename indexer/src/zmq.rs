//! bitcoind's ZMQ block notifications, turned into wake-ups for the follower. A notification only
//! says "look now": the follower always asks the node over RPC what changed, so a dropped or
//! duplicated message costs nothing but latency (the poll timer covers drops).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use tracing::debug;

use blkindex_shared::zmq::{self, Sequence};

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
            let mut wakes = Wakes { wake, reconnect, stop };
            rt.block_on(zmq::listen(&cfg.endpoint, std::slice::from_ref(&cfg.topic), &mut wakes));
        })
        .expect("spawn zmq thread");
}

struct Wakes {
    wake: Sender<()>,
    reconnect: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl zmq::Listener for Wakes {
    /// hashblock messages are all blocks; sequence messages are blocks when labelled C or D.
    fn message(&mut self, topic: &[u8], body: &[u8]) -> ControlFlow<()> {
        let block = match topic {
            b"sequence" => matches!(Sequence::parse(body), Some(Sequence::Block(_))),
            _ => true,
        };
        if !block {
            return ControlFlow::Continue(());
        }
        debug!("ZMQ block notification");
        match self.wake.send(()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()), // the follower is gone
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn reconnect(&mut self) -> bool {
        self.reconnect.swap(false, Ordering::Relaxed)
    }
}
