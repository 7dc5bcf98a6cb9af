//! What silent-payment scanning shares over the whole server, below `state`: where the index's
//! tweaks start (None: the index has none, and the methods are refused), the limits, the count
//! of scans of past blocks in flight (`--sp-max-scans`), the threads their elliptic-curve work
//! may use (`--sp-scan-threads`, a semaphore: a scan takes a permit per chunk of blocks, so the
//! blocking threads that answer requests are never the ones waiting), and the tweaks of the
//! mempool's eligible transactions, computed once for every session (`silent::track_mempool`
//! keeps them) and announced as they come.
//!
//! No client key is held here: keys live in their session's scan tasks only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bitcoin::secp256k1::PublicKey;
use bitcoin::Txid;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use blkindex_shared::schema::Height;
use blkindex_shared::silent::OutputPrefix;

use crate::config::SilentLimits;

/// An eligible mempool transaction: what a scan needs to tell whether it may pay a wallet.
pub struct MempoolTweak {
    pub txid: Txid,
    /// Parsed once, for every session that scans it.
    pub tweak: PublicKey,
    pub outputs: Vec<OutputPrefix>,
}

/// The mempool's transactions as far as silent payments go: each txid seen, with its tweak if
/// it is eligible (None: looked at, not eligible). As large as the node's mempool allows
/// (about 150 bytes an eligible transaction, 40 one that is not).
pub type MempoolTweaks = HashMap<Txid, Option<Arc<MempoolTweak>>>;

/// New eligible mempool transactions, as a batch.
pub type News = Arc<Vec<Arc<MempoolTweak>>>;

pub struct Tweaks {
    start: Option<Height>,
    limits: SilentLimits,
    scans: Arc<AtomicUsize>,
    threads: Arc<Semaphore>,
    mempool: Mutex<MempoolTweaks>,
    news: broadcast::Sender<News>,
}

/// A scan of past blocks in flight: counted until dropped.
pub struct ScanSlot(Arc<AtomicUsize>);

impl Drop for ScanSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tweaks {
    /// `start`: the first height the index has tweaks for (None: none).
    pub fn new(start: Option<Height>, limits: SilentLimits) -> Tweaks {
        Tweaks {
            start,
            limits,
            scans: Arc::default(),
            threads: Arc::new(Semaphore::new(limits.scan_threads)),
            mempool: Mutex::default(),
            news: broadcast::Sender::new(64),
        }
    }

    /// The first height with tweaks; None when the index has none.
    pub fn start(&self) -> Option<Height> {
        self.start
    }

    pub fn limits(&self) -> &SilentLimits {
        &self.limits
    }

    /// A slot for a scan of past blocks, if fewer than `--sp-max-scans` are in flight.
    pub fn try_scan(&self) -> Option<ScanSlot> {
        self.scans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_scans).then_some(n + 1)
            })
            .ok()
            .map(|_| ScanSlot(self.scans.clone()))
    }

    /// Scans of past blocks in flight now.
    #[cfg(test)]
    pub fn scans(&self) -> usize {
        self.scans.load(Ordering::Acquire)
    }

    /// A turn on one of the scan threads, for one chunk of work.
    pub async fn thread(&self) -> OwnedSemaphorePermit {
        self.threads.clone().acquire_owned().await.expect("the semaphore is never closed")
    }

    /// The mempool's transactions as `silent::track_mempool` last saw them.
    pub fn mempool(&self) -> MutexGuard<'_, MempoolTweaks> {
        self.mempool.lock().unwrap()
    }

    /// The eligible mempool transactions now.
    pub fn mempool_snapshot(&self) -> Vec<Arc<MempoolTweak>> {
        self.mempool().values().flatten().cloned().collect()
    }

    /// Tells the scans about new eligible mempool transactions.
    pub fn announce(&self, news: Vec<Arc<MempoolTweak>>) {
        if !news.is_empty() {
            let _ = self.news.send(Arc::new(news));
        }
    }

    /// Each batch of new eligible mempool transactions.
    pub fn watch_mempool(&self) -> broadcast::Receiver<News> {
        self.news.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn scans_in_flight_are_capped_and_freed() {
        let limits = SilentLimits {
            max_subscriptions: 1,
            max_labels: 1,
            max_scans: 2,
            scan_threads: 1,
            scan_cpu: Duration::from_secs(1),
        };
        let t = Tweaks::new(Some(0), limits);
        let (a, b) = (t.try_scan().unwrap(), t.try_scan().unwrap());
        assert!(t.try_scan().is_none(), "a third scan past --sp-max-scans 2");
        drop(a);
        let c = t.try_scan().expect("a slot freed");
        assert_eq!(t.scans(), 2);
        drop((b, c));
        assert_eq!(t.scans(), 0);
    }
}
