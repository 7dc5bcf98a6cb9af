//! What silent-payment scanning shares over the whole server, below `state`: where the index's
//! tweaks start (None: the index has none, and the methods are refused), the limits, the count
//! of scans of past blocks in flight (`--sp-max-scans`, and `--sp-max-scans-per-ip` of one client
//! address) and of live subscriptions (`--sp-max-live`, `--sp-max-live-per-ip`: each costs a
//! check of every new block's eligible transactions), the threads their elliptic-curve work
//! may use (`--sp-scan-threads`, `turns`: a scan takes a turn per chunk of work, so the
//! blocking threads that answer requests are never the ones waiting; a new block's batch goes
//! first), and the tweaks of the mempool's eligible transactions, computed once for every
//! session (`silent::track_mempool` keeps them) and announced as they come.
//!
//! It also gathers the live scans that want the same new block into one batch
//! (`silent::together`), so that each transaction's tweak table is made once for all of them; a
//! batch stays open while it runs, so a scan that wakes late joins it at its next turn.
//!
//! No client key is held here but for that while: a scan waiting in a batch lends it its
//! `Receiver` until the batch has answered. Keys otherwise live in their session's scan tasks.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{BlockHash, Txid};
use tokio::sync::{broadcast, oneshot};

use blkindex_shared::schema::Height;
use blkindex_shared::silent::{OutputPrefix, Receiver, Tweak, TweakedTx};

use crate::bans::client_group;
use crate::config::SilentLimits;
use crate::turns::{Turn, Turns, Urgency};

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

/// New eligible mempool transactions, as a batch, numbered in the order announced (from 1).
pub struct NewsBatch {
    pub seq: u64,
    pub txs: Vec<Arc<MempoolTweak>>,
}

pub type News = Arc<NewsBatch>;

/// What a scan's check of a transaction depends on: its tweak and its output key prefixes. Two
/// transactions alike in these get the same answer from every `Receiver::matches`.
type CheckKey = (PublicKey, Vec<OutputPrefix>);

/// The eligible transactions announced from the mempool, by what their check depends on: the
/// batch that announced each. Kept while they are in the mempool and for `LOOKED_KEEP` after
/// (at most `LOOKED_LEFT` of those), so that a new block's batch can skip, for each live scan, the
/// transactions that scan has already checked from the mempool (most of a block's).
#[derive(Default)]
struct Looked {
    seq: u64,
    by_check: HashMap<CheckKey, (u64, Arc<MempoolTweak>)>,
    /// Those that left the mempool, oldest first (each the entry's own, not a copy of its key).
    left: VecDeque<(Instant, Arc<MempoolTweak>, u64)>,
}

/// How long a transaction that left the mempool (mined, mostly) stays looked up.
const LOOKED_KEEP: Duration = Duration::from_secs(600);
/// The most transactions kept after leaving the mempool (about 200 bytes each).
const LOOKED_LEFT: usize = 100_000;

/// A transaction found paying a wallet.
pub struct Hit {
    /// 0: in the mempool.
    pub height: Height,
    pub txid: Txid,
    pub tweak: Tweak,
}

/// What a scan of some blocks gave one wallet.
pub struct Found {
    pub hits: Vec<Hit>,
    /// The hash of each block scanned, for finding a fork later.
    pub hashes: Vec<(Height, BlockHash)>,
    /// CPU time spent for it (a batch's divided among its members).
    pub cpu: Duration,
}

/// A live scan waiting in a new block's batch: its keys, and where its answer goes.
pub struct Member {
    pub receiver: Arc<Receiver>,
    /// The last block the scan saw below this one: its answer is empty if that block has left
    /// the chain (the scan then rescans from the fork at its next tip change).
    pub below: Option<(Height, BlockHash)>,
    /// What the scan has checked from the mempool, which the batch need not check again.
    pub checked: Arc<Checked>,
    pub answer: oneshot::Sender<Result<Found, String>>,
}

/// What a live scan has checked from the mempool: every transaction announced up to batch
/// `through` (0: none), but those in `unsure` (matched, but gone before they could be
/// confirmed, or left out as found in a block already): a block's transaction alike in its
/// check to one of those needs no check for this scan.
#[derive(Clone, Default)]
pub struct Checked {
    pub through: u64,
    pub unsure: std::collections::HashSet<Txid>,
    /// Past `MAX_UNSURE`: nothing is taken as checked any more.
    given_up: bool,
}

impl Checked {
    /// Mempool transactions the scan may hold as unsure: past it, it skips nothing in its
    /// blocks from then on.
    pub const MAX_UNSURE: usize = 1_000;

    /// The scan has checked every batch up to `through` but `unsure`. Batches come to it in
    /// order (a gap is `Lagged`, answered by a snapshot), so `through` only grows.
    pub fn add(&mut self, through: u64, unsure: impl IntoIterator<Item = Txid>) {
        if self.given_up {
            return;
        }
        self.unsure.extend(unsure);
        self.through = self.through.max(through);
        if self.unsure.len() > Self::MAX_UNSURE {
            // Too many to carry into every block: the blocks check everything.
            *self = Checked { given_up: true, ..Checked::default() };
        }
    }

    /// Whether the check of a block's transaction looked up as `looked` (`Tweaks::looked_up`)
    /// was made already.
    pub fn has(&self, looked: Option<(u64, Txid)>) -> bool {
        looked.is_some_and(|(seq, txid)| seq <= self.through && !self.unsure.contains(&txid))
    }
}

pub struct Tweaks {
    start: Option<Height>,
    limits: SilentLimits,
    scans: Quota,
    live: Quota,
    threads: Arc<Turns>,
    mempool: Mutex<MempoolTweaks>,
    looked: Mutex<Looked>,
    news: broadcast::Sender<News>,
    /// The batches of new blocks, running or about to.
    batches: Mutex<HashMap<BatchKey, Vec<Member>>>,
}

/// A batch is of one block: its height and its hash as the scan saw it (None: past the tip it
/// saw), so that a scan whose view of the chain differs after a reorg never joins a batch of the
/// block it replaced.
pub type BatchKey = (Height, Option<BlockHash>);

/// Things held (scans in flight, live subscriptions) capped in all and per client group
/// (`bans::client_group`; loopback not counted per client unless `limit_loopback`).
struct Quota {
    total: usize,
    per_client: usize,
    limit_loopback: bool,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a scan or a live subscription could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The server's cap (`--sp-max-scans`, `--sp-max-live`).
    Server,
    /// The cap of the client's address (`--sp-max-scans-per-ip`, `--sp-max-live-per-ip`).
    Client,
}

/// One of a `Quota`'s: counted until dropped.
pub struct Slot {
    held: Arc<Mutex<Held>>,
    /// The group it is counted under, if counted per client.
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.held.lock().unwrap();
        h.total -= 1;
        if let Some(group) = self.client {
            let n = h.by_client.get_mut(&group).expect("a slot's client is counted");
            *n -= 1;
            if *n == 0 {
                h.by_client.remove(&group);
            }
        }
    }
}

impl Quota {
    fn new(total: usize, per_client: usize, limit_loopback: bool) -> Quota {
        Quota { total, per_client, limit_loopback, held: Arc::default() }
    }

    /// A slot for a client at `ip` (None: not a network client), if both caps allow one.
    fn take(&self, ip: Option<IpAddr>) -> Result<Slot, NoSlot> {
        let client =
            ip.filter(|ip| self.limit_loopback || !ip.to_canonical().is_loopback()).map(client_group);
        let mut h = self.held.lock().unwrap();
        if h.total >= self.total {
            return Err(NoSlot::Server);
        }
        if let Some(group) = client {
            let n = h.by_client.entry(group).or_default();
            if *n >= self.per_client {
                return Err(NoSlot::Client);
            }
            *n += 1;
        }
        h.total += 1;
        Ok(Slot { held: self.held.clone(), client })
    }

    /// Held now: in all, and by how many client groups.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let h = self.held.lock().unwrap();
        (h.total, h.by_client.len())
    }
}

impl Tweaks {
    /// `start`: the first height the index has tweaks for (None: none).
    pub fn new(start: Option<Height>, limits: SilentLimits) -> Tweaks {
        Tweaks {
            start,
            limits,
            scans: Quota::new(limits.max_scans, limits.max_scans_per_ip, limits.limit_loopback),
            live: Quota::new(limits.max_live, limits.max_live_per_ip, limits.limit_loopback),
            threads: Turns::new(limits.scan_threads),
            mempool: Mutex::default(),
            looked: Mutex::default(),
            news: broadcast::Sender::new(64),
            batches: Mutex::default(),
        }
    }

    /// The first height with tweaks; None when the index has none.
    pub fn start(&self) -> Option<Height> {
        self.start
    }

    pub fn limits(&self) -> &SilentLimits {
        &self.limits
    }

    /// A slot for a scan of past blocks for a client at `ip` (None: not a network client), if
    /// fewer than `--sp-max-scans` are in flight and fewer than `--sp-max-scans-per-ip` from its
    /// address (loopback counted only with `--limit-loopback`).
    pub fn try_scan(&self, ip: Option<IpAddr>) -> Result<Slot, NoSlot> {
        self.scans.take(ip)
    }

    /// A slot for a live subscription, held for as long as it lives, under `--sp-max-live` and
    /// `--sp-max-live-per-ip` as `try_scan` is under its caps.
    pub fn try_live(&self, ip: Option<IpAddr>) -> Result<Slot, NoSlot> {
        self.live.take(ip)
    }

    /// Scans of past blocks in flight now, and live subscriptions: each in all, and from how
    /// many client groups.
    #[cfg(test)]
    pub fn counts(&self) -> [(usize, usize); 2] {
        [self.scans.counts(), self.live.counts()]
    }

    /// A turn on one of the scan threads, for one chunk of work, after the more urgent.
    pub async fn thread(&self, urgency: Urgency) -> Turn {
        self.threads.take(urgency).await
    }

    /// Also one of the scan threads now, if one is idle: more work for a turn already had.
    pub fn idle_thread(&self) -> Option<Turn> {
        self.threads.try_take()
    }

    /// Puts `m` in the batch of `key`, where it waits to be taken at the batch's next turn; true
    /// if no batch of `key` was open (the caller must then run one: `silent::run_batch`).
    pub fn join_batch(&self, key: BatchKey, m: Member) -> bool {
        let mut b = self.batches.lock().unwrap();
        let mut opened = false;
        b.entry(key)
            .or_insert_with(|| {
                opened = true;
                Vec::new()
            })
            .push(m);
        opened
    }

    /// The members who joined the batch of `key` since it last looked.
    pub fn batch_joiners(&self, key: BatchKey) -> Vec<Member> {
        self.batches.lock().unwrap().get_mut(&key).map(std::mem::take).unwrap_or_default()
    }

    /// Closes the batch of `key` if nobody joined it since it last looked (true); later scans
    /// of the block open a new one.
    pub fn close_batch(&self, key: BatchKey) -> bool {
        let mut b = self.batches.lock().unwrap();
        let idle = b.get(&key).is_none_or(Vec::is_empty);
        if idle {
            b.remove(&key);
        }
        idle
    }

    /// The mempool's transactions as `silent::track_mempool` last saw them.
    pub fn mempool(&self) -> MutexGuard<'_, MempoolTweaks> {
        self.mempool.lock().unwrap()
    }

    /// Every eligible transaction announced and still looked up (in the mempool, or left it
    /// lately), with the number of the last batch announced: a scan that checks them all has
    /// checked everything announced up to that batch.
    pub fn mempool_snapshot(&self) -> (u64, Vec<Arc<MempoolTweak>>) {
        let looked = self.looked.lock().unwrap();
        (looked.seq, looked.by_check.values().map(|(_, t)| t.clone()).collect())
    }

    /// Tells the scans about new eligible mempool transactions.
    pub fn announce(&self, news: Vec<Arc<MempoolTweak>>) {
        if news.is_empty() {
            return;
        }
        let mut looked = self.looked.lock().unwrap();
        looked.seq += 1;
        let seq = looked.seq;
        for t in &news {
            looked.by_check.insert((t.tweak, t.outputs.clone()), (seq, t.clone()));
        }
        // Under the lock: a snapshot taken meanwhile either has these or is before them.
        let _ = self.news.send(Arc::new(NewsBatch { seq, txs: news }));
    }

    /// These eligible transactions left the mempool: looked up for a while yet, then forgotten.
    pub fn left_mempool(&self, gone: impl IntoIterator<Item = Arc<MempoolTweak>>) {
        let mut looked = self.looked.lock().unwrap();
        let now = Instant::now();
        for t in gone {
            if let Some((seq, kept)) = looked.by_check.get(&(t.tweak, t.outputs.clone())) {
                let left = (now, kept.clone(), *seq);
                looked.left.push_back(left);
            }
        }
        while let Some((at, _, _)) = looked.left.front() {
            if now.duration_since(*at) < LOOKED_KEEP && looked.left.len() <= LOOKED_LEFT {
                break;
            }
            let (_, t, seq) = looked.left.pop_front().expect("a front");
            let key = (t.tweak, t.outputs.clone());
            // Unless announced again since (back in the mempool after a reorg).
            if looked.by_check.get(&key).is_some_and(|&(s, _)| s == seq) {
                looked.by_check.remove(&key);
            }
        }
    }

    /// For each of a block's transactions, the announced one alike in its check (the batch
    /// that announced it, its txid), if any.
    pub fn looked_up(&self, txs: &[TweakedTx]) -> Vec<Option<(u64, Txid)>> {
        let looked = self.looked.lock().unwrap();
        txs.iter()
            .map(|t| looked.by_check.get(&(t.tweak, t.outputs.clone())).map(|(seq, m)| (*seq, m.txid)))
            .collect()
    }

    /// Each batch of new eligible mempool transactions.
    pub fn watch_mempool(&self) -> broadcast::Receiver<News> {
        self.news.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bitcoin::secp256k1::SecretKey;

    use super::*;

    /// Caps of one, to be raised where a test counts.
    fn limits() -> SilentLimits {
        SilentLimits {
            max_subscriptions: 1,
            max_labels: 1,
            max_scans: 1,
            max_scans_per_ip: 1,
            max_live: 1,
            max_live_per_ip: 1,
            limit_loopback: false,
            table_from: 128,
            scan_threads: 1,
            scan_cpu: Duration::from_secs(1),
        }
    }

    #[test]
    fn scans_in_flight_are_capped_and_freed() {
        let limits = SilentLimits { max_scans: 3, max_scans_per_ip: 2, ..limits() };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let t = Tweaks::new(Some(0), limits);
        let (a, b) = (t.try_scan(ip("192.0.2.1")).unwrap(), t.try_scan(ip("::ffff:192.0.2.1")).unwrap());
        assert_eq!(t.try_scan(ip("192.0.2.1")).err(), Some(NoSlot::Client), "a third from one address");
        // An IPv6 client is counted by its /64.
        let c = t.try_scan(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(t.counts()[0], (3, 2));
        assert_eq!(t.try_scan(ip("2001:db8:0:2::1")).err(), Some(NoSlot::Server), "a fourth in all");
        drop(a);
        let d = t.try_scan(ip("2001:db8:0:1::ffff")).expect("a slot freed, and the /64's second");
        assert_eq!(t.try_scan(None).err(), Some(NoSlot::Server));
        drop((b, c, d));
        assert_eq!(t.counts()[0], (0, 0));
        // Loopback is exempt from the per-address limit, not from the server's.
        let local: Vec<_> = (0..3).map(|_| t.try_scan(ip("127.0.0.1")).unwrap()).collect();
        assert_eq!(t.counts()[0], (3, 0));
        assert_eq!(t.try_scan(ip("127.0.0.1")).err(), Some(NoSlot::Server));
        drop(local);
        let t = Tweaks::new(Some(0), SilentLimits { limit_loopback: true, ..limits });
        let _held = (t.try_scan(ip("127.0.0.1")).unwrap(), t.try_scan(ip("127.0.0.1")).unwrap());
        assert_eq!(t.try_scan(ip("127.0.0.1")).err(), Some(NoSlot::Client), "with --limit-loopback");
        assert!(t.try_scan(ip("127.0.0.2")).is_ok(), "another loopback address is another client");
    }

    #[test]
    fn live_subscriptions_are_capped_apart_from_scans() {
        let limits = SilentLimits { max_live: 3, max_live_per_ip: 2, ..limits() };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let t = Tweaks::new(Some(0), limits);
        let _scan = t.try_scan(ip("192.0.2.1")).unwrap();
        let a = t.try_live(ip("192.0.2.1")).expect("a live slot beside a scan's, from its quota");
        let b = t.try_live(ip("192.0.2.1")).unwrap();
        assert_eq!(t.try_live(ip("192.0.2.1")).err(), Some(NoSlot::Client));
        let c = t.try_live(ip("192.0.2.2")).unwrap();
        assert_eq!(t.try_live(ip("192.0.2.3")).err(), Some(NoSlot::Server));
        assert_eq!(t.counts(), [(1, 1), (3, 2)]);
        drop(a);
        let _d = t.try_live(ip("192.0.2.3")).expect("a freed slot");
        drop((b, c));
        assert_eq!(t.counts()[1], (1, 1));
    }

    /// A batch is open from its first member's join until it closes with nobody waiting: a
    /// member who joins while it runs is taken by it (no second batch of the block), one who
    /// joins after it closed opens a new one, and a scan that saw another block at the height
    /// (a reorg) never joins it.
    #[test]
    fn a_batch_takes_joiners_until_it_closes_idle() {
        use bitcoin::hashes::Hash;
        let t = Tweaks::new(Some(0), limits());
        let member = || {
            let one = SecretKey::from_slice(&[1; 32]).unwrap();
            let receiver =
                Arc::new(Receiver::new(one, one.public_key(&bitcoin::secp256k1::Secp256k1::new()), &[]));
            let (answer, answered) = oneshot::channel();
            (Member { receiver, below: None, checked: Arc::default(), answer }, answered)
        };
        let key = (7, Some(BlockHash::all_zeros()));
        let (m1, _a1) = member();
        let (m2, _a2) = member();
        assert!(t.join_batch(key, m1), "the first opens it");
        assert!(!t.join_batch(key, m2), "the second finds it open");
        assert_eq!(t.batch_joiners(key).len(), 2);
        let (m3, _a3) = member();
        assert!(!t.join_batch(key, m3), "running, it is still open");
        assert!(!t.close_batch(key), "not closed with a member waiting");
        assert_eq!(t.batch_joiners(key).len(), 1);
        let (other, _b) = member();
        assert!(t.join_batch((7, Some(BlockHash::from_byte_array([1; 32]))), other), "another block at 7");
        assert!(t.close_batch(key), "closed with nobody waiting");
        let (m4, _a4) = member();
        assert!(t.join_batch(key, m4), "after it closed, a new one");
    }

    /// Transactions announced from the mempool are looked up by what their check depends on
    /// (tweak, output prefixes), with the batch that announced them, also for a while after they
    /// leave it; a scan's `Checked` says which of a block's it need not check again.
    #[test]
    fn announced_transactions_are_looked_up_for_the_blocks_that_mine_them() {
        use bitcoin::hashes::Hash;
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let tx = |i: u8| {
            let tweak = SecretKey::from_slice(&[i; 32]).unwrap().public_key(&secp);
            Arc::new(MempoolTweak { txid: Txid::from_byte_array([i; 32]), tweak, outputs: vec![[i; 8]] })
        };
        let tx_id = |i: u32| {
            let mut b = [0xee; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            b
        };
        let mined = |t: &MempoolTweak| TweakedTx { txnum: 0, tweak: t.tweak, outputs: t.outputs.clone() };
        let t = Tweaks::new(Some(0), limits());
        let (a, b, c, d) = (tx(1), tx(2), tx(3), tx(4));
        let mut news = t.watch_mempool();
        t.announce(vec![a.clone(), b.clone()]);
        t.announce(vec![c.clone()]);
        t.announce(Vec::new());
        assert_eq!(news.try_recv().unwrap().seq, 1);
        assert_eq!(news.try_recv().unwrap().seq, 2);
        assert!(news.try_recv().is_err(), "nothing new, nothing announced");
        let (through, snapshot) = t.mempool_snapshot();
        assert_eq!((through, snapshot.len()), (2, 3));
        t.left_mempool([a.clone()]);
        let block = [mined(&a), mined(&c), mined(&d), TweakedTx { outputs: vec![[9; 8]], ..mined(&b) }];
        let looked = t.looked_up(&block);
        assert_eq!(
            looked,
            vec![Some((1, a.txid)), Some((2, c.txid)), None, None],
            "a left lately, b's outputs differ"
        );
        assert_eq!(t.mempool_snapshot().1.len(), 3, "a, left lately, still in a snapshot");
        let upto1 = Checked { through: 1, ..Checked::default() };
        let has: Vec<bool> = looked.iter().map(|&l| upto1.has(l)).collect();
        assert_eq!(has, [true, false, false, false]);
        let unsure = Checked { through: 2, unsure: [a.txid].into(), ..Checked::default() };
        assert_eq!(looked.iter().map(|&l| unsure.has(l)).collect::<Vec<_>>(), [false, true, false, false]);
        assert!(!Checked::default().has(looked[0]), "a scan that checked nothing skips nothing");
        // Past `MAX_UNSURE` unsure ones, a scan skips nothing from then on.
        let mut many = Checked::default();
        many.add(2, (0..=Checked::MAX_UNSURE as u32).map(|i| Txid::from_byte_array(tx_id(i))));
        many.add(3, []);
        assert!(looked.iter().all(|&l| !many.has(l)), "given up");
        // Back in the mempool (a reorg): announced again, it outlives its first leaving.
        t.announce(vec![a.clone()]);
        assert_eq!(t.looked_up(&block[..1]), vec![Some((3, a.txid))]);
    }
}
