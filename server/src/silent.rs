//! Silent payments (BIP352) for a session: its subscriptions (Frigate's proposed
//! `blockchain.silentpayments.subscribe`), each one scan task that finds the transactions paying
//! the wallet, first in past blocks, then in each new block (from the fork after a reorg) and each
//! new eligible mempool transaction; and the task that keeps the mempool's tweaks
//! (`track_mempool`), computed once for every session.
//!
//! A scan takes the tweaks of a chunk of blocks from the index, asks the wallet's `Receiver`
//! whether an output key prefix is one its keys make (`matches`: one ECDH per eligible
//! transaction, the only costly step), and confirms each candidate against the transaction
//! itself (`paid_outputs`) before reporting it. Its elliptic-curve work runs on the scan threads
//! (`tweaks::Tweaks::thread`), a chunk at a time, so scans take turns and the request path keeps
//! its threads; a scan of past blocks holds one of the server's `--sp-max-scans` slots and may
//! use `--sp-scan-cpu-secs` of CPU (measured per thread, checked after each chunk of at most
//! `CHUNK` blocks). A new block is scanned for every live subscription at once: their scans join
//! one batch per block (`together`, `run_batch`), which reads the block's tweaks once and, with
//! enough members, makes each transaction's `TweakTable` once for all of them; a scan that wakes
//! while the batch runs joins it at its next turn. A scan's results
//! go to the session as whole notifications through a channel of `CHANNEL` messages (each at most
//! `PAGE` entries), so what a scan holds is a chunk's rows and a page; the session queues them in
//! its byte budget, waiting for room as a reply does.
//!
//! Keys: a `Receiver` lives in its scan task only, for as long as the subscription does (lent to
//! a block's batch while the scan waits in it); nothing
//! here logs or prints one (no `Debug` of a receiver, no message quoting a key).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bitcoin::{BlockHash, Transaction, Txid};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use blkindex_shared::query::IndexReader;
use blkindex_shared::schema::Height;
use blkindex_shared::silent::{self as sp, Receiver};

use crate::protocol::{push_txid, ServerError};
use crate::state::State;
use crate::turns::{Turn, Urgency};
use crate::tweaks::{BatchKey, Checked, Found, Hit, Member, MempoolTweak, News, NoSlot, Slot};

/// Most entries in one notification's `history` (Frigate's suggestion).
pub const PAGE: usize = 100;
/// Blocks scanned per turn on a scan thread: on mainnet about 1,500 eligible transactions a
/// block, 40 µs each, so a turn of about half a second.
const CHUNK: Height = 8;
/// A scan of past blocks that found nothing sends its progress this often (Frigate: "every 5
/// seconds").
const PULSE: Duration = Duration::from_secs(5);
/// Blocks by height and hash, as a scan saw them.
type Seen = Vec<(Height, BlockHash)>;

/// Block hashes a scan remembers to find the fork after a reorg: the indexer follows reorgs of
/// up to 100 blocks.
const MAX_SEEN: usize = 101;
/// Notifications a scan may have made that its session has not yet queued.
const CHANNEL: usize = 2;
/// How often a scan waiting for the indexer's tweak pass looks again.
const TWEAKS_POLL: Duration = Duration::from_millis(500);
/// Transactions from the mempool looked at per turn by `track_mempool`; a live scan gathers
/// ready news batches into one check until it holds at least this many.
const MEMPOOL_BATCH: usize = 500;
/// How long `track_mempool` gathers the mempool's changes after the first before it looks.
const MEMPOOL_GATHER: Duration = Duration::from_millis(100);

/// What a scan sends its session.
pub struct Msg {
    /// The subscription it is for (a message of one since replaced or dropped is not sent).
    pub generation: u64,
    pub body: Body,
    /// CPU time spent since the last message, charged to the session's cost.
    pub cpu: Duration,
}

pub enum Body {
    /// A notification, whole.
    Notification(String),
    /// The scan used more CPU than it may: the session is told and closed.
    OverBudget(String),
    /// The scan failed (the index could not be read: the server's log says why): the session is
    /// told and closed, rather than left waiting for what will not come.
    Failed,
}

/// A session's silent-payment subscriptions, by address, and the channel their scans send on.
pub struct Subs {
    map: HashMap<String, Sub>,
    tx: mpsc::Sender<Msg>,
    rx: Option<mpsc::Receiver<Msg>>,
    generation: u64,
}

/// A subscription: its start and end, and its scan task (aborted when the subscription is
/// dropped).
struct Sub {
    start_height: Height,
    /// The end of a `"FROM-TO"` range (None: live).
    to: Option<Height>,
    generation: u64,
    task: tokio::task::JoinHandle<()>,
    /// The scan's slot while it scans past blocks (shared with it).
    slot: Arc<Mutex<Option<Slot>>>,
    /// Its place under `--sp-max-live`, if live.
    live: Option<Slot>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Default for Subs {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Subs { map: HashMap::new(), tx, rx: Some(rx), generation: 0 }
    }
}

/// What a new subscription scans, resolved from the request.
pub struct Wanted {
    pub receiver: Receiver,
    pub address: String,
    /// The labels asked for, sorted, without 0.
    pub labels: Vec<u32>,
    pub from: Height,
    /// The end of a `"FROM-TO"` range (then no live scan).
    pub to: Option<Height>,
}

impl Subs {
    /// The receiving end, taken once by the session loop.
    pub fn take_receiver(&mut self) -> mpsc::Receiver<Msg> {
        self.rx.take().expect("the receiver is taken once")
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a message of `generation` belongs to a subscription still held.
    pub fn is_current(&self, generation: u64) -> bool {
        self.map.values().any(|s| s.generation == generation)
    }

    /// Subscribes (or subscribes again) and starts the scan; the subscription object, as the
    /// reply and every notification carry it. Refused before any work: over the session's
    /// subscriptions (a new address), with `--sp-max-scans` scans in flight, or, for a live
    /// subscription, `--sp-max-live` live ones (each with its per-address cap). Subscribing
    /// again never narrows what is scanned (Frigate's rule: neither the start nor, for a live
    /// subscription, its live part) and scans again from the start.
    pub fn subscribe(
        &mut self,
        state: &Arc<State>,
        w: Wanted,
        ip: Option<IpAddr>,
    ) -> Result<String, ServerError> {
        let limits = *state.tweaks().limits();
        let existing = self.map.get(&w.address).map(|s| (s.start_height, s.to));
        if existing.is_none() && self.map.len() >= limits.max_subscriptions {
            return Err(ServerError::ExcessiveUsage(format!(
                "too many silent-payment subscriptions: at most {} per session",
                limits.max_subscriptions
            )));
        }
        // Nor the end: a live subscription stays live, a range keeps the later end.
        let from = existing.map_or(w.from, |(e, _)| e.min(w.from));
        let to = match existing {
            None => w.to,
            Some((_, to)) => to.zip(w.to).map(|(a, b)| a.max(b)),
        };
        // A subscription made again keeps its slots: otherwise it would need second ones for
        // the moment both scans run. Only a new slot can be refused, so the earlier
        // subscription loses nothing when this one is refused.
        let earlier = self.map.get_mut(&w.address);
        let had_live = earlier.as_ref().is_some_and(|s| s.live.is_some());
        let new_live = if to.is_none() && !had_live {
            Some(state.tweaks().try_live(ip).map_err(|why| {
                refused(why, "live silent-payment subscriptions", limits.max_live, limits.max_live_per_ip)
            })?)
        } else {
            None
        };
        let held = earlier.as_ref().and_then(|s| s.slot.lock().unwrap().take());
        let slot = match held {
            Some(slot) => slot,
            None => state.tweaks().try_scan(ip).map_err(|why| {
                refused(why, "silent-payment scans in flight", limits.max_scans, limits.max_scans_per_ip)
            })?,
        };
        let live = new_live.or_else(|| earlier.and_then(|s| s.live.take()));
        let slot = Arc::new(Mutex::new(Some(slot)));
        let mut labels = vec![0];
        labels.extend(&w.labels);
        let text = json!({"address": w.address, "labels": labels, "start_height": from}).to_string();
        self.generation += 1;
        let scan = Scan {
            state: state.clone(),
            receiver: Arc::new(w.receiver),
            subscription: text.clone().into(),
            generation: self.generation,
            from,
            to,
            out: self.tx.clone(),
            slot: slot.clone(),
            cpu_limit: limits.scan_cpu,
        };
        let task = tokio::spawn(run(scan));
        // Replacing an earlier subscription of the address drops it: its scan is aborted.
        let sub = Sub { start_height: from, to, generation: self.generation, task, slot, live };
        self.map.insert(w.address, sub);
        Ok(text)
    }

    /// Drops the subscription of `address` (its scan stops); whether there was one.
    pub fn unsubscribe(&mut self, address: &str) -> bool {
        self.map.remove(address).is_some()
    }
}

/// The error for a subscription refused a slot of `what`: `server` of them on the server, or
/// `client` from the client's address, held already.
fn refused(why: NoSlot, what: &str, server: usize, client: usize) -> ServerError {
    ServerError::ExcessiveUsage(match why {
        NoSlot::Server => format!("the server is busy: {server} {what}; try again later"),
        NoSlot::Client => {
            format!("too many {what} from your address: at most {client}; try again when one has ended")
        }
    })
}

/// One subscription's scan, for its task.
struct Scan {
    state: Arc<State>,
    receiver: Arc<Receiver>,
    /// The subscription object's JSON, byte for byte as the reply had it.
    subscription: Arc<str>,
    generation: u64,
    from: Height,
    to: Option<Height>,
    out: mpsc::Sender<Msg>,
    /// Held while past blocks are scanned (a subscription made again may take it over).
    slot: Arc<Mutex<Option<Slot>>>,
    cpu_limit: Duration,
}

/// Why a scan ended.
enum Stop {
    /// Its session or subscription is gone.
    Gone,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

async fn run(mut scan: Scan) {
    let ended = scan.go().await;
    // Its slot, if it still held one (a scan that failed mid-way).
    drop(scan.slot.lock().unwrap().take());
    if let Err(Stop::Failed(e)) = ended {
        // Nothing of the wallet is in the error: only heights and the index's own messages.
        warn!("a silent-payments scan stopped: {e:#}");
        // The session closes, and with it the subscription's live place.
        let mut unsent = Duration::ZERO;
        let _ = scan.send(Body::Failed, &mut unsent).await;
    }
}

impl Scan {
    async fn go(&mut self) -> Result<(), Stop> {
        let mut tips = self.state.watch_tip();
        tips.mark_unchanged();
        let top = self.state.index().chain.len() as i64 - 1;
        let end = self.to.map_or(top, |to| (to as i64).min(top));
        let mut seen: VecDeque<(Height, BlockHash)> = VecDeque::new();
        let mut hits = Vec::new();
        let (mut used, mut unsent) = (Duration::ZERO, Duration::ZERO);
        let mut last_sent = Instant::now();
        let total = (end + 1 - self.from as i64).max(1) as f64;
        let mut progress = 0.0;
        let mut h = self.from as i64;
        while h <= end {
            let pulse = Some((progress, &mut last_sent));
            let (found, last) = self.chunk(h, end, &mut used, &mut unsent, &mut seen, pulse, None).await?;
            hits.extend(found);
            // Never 1.0 before the last page: 1.0 marks the end of the historical scan.
            progress = ((last + 1 - self.from as i64) as f64 / total).min(0.999);
            while hits.len() >= PAGE {
                let page: Vec<Hit> = hits.drain(..PAGE).collect();
                self.page(&page, progress, &mut unsent).await?;
                last_sent = Instant::now();
            }
            if last_sent.elapsed() >= PULSE {
                self.page(&[], progress, &mut unsent).await?;
                last_sent = Instant::now();
            }
            h = last + 1;
        }
        // Mempool transactions sent, each once: not again from the mempool, nor when mined
        // (Frigate: the client follows confirmations by script).
        let mut sent = Sent::default();
        // From just before the scan's first look at the mempool: the batches announced before
        // that look are in it (and skipped), none after it is missed, and a long scan of past
        // blocks does not come out of it already lagging.
        let mut news = self.state.tweaks().watch_mempool();
        // What this scan checks from the mempool, which new blocks' batches need not check again.
        let mut checked = Checked::default();
        if self.to.is_none() {
            // One mined since the mempool was last read is reported with its block only.
            let mined: std::collections::HashSet<Txid> = hits.iter().map(|h: &Hit| h.txid).collect();
            let (through, mut snapshot) = self.state.tweaks().mempool_snapshot();
            snapshot.retain(|t| !mined.contains(&t.txid));
            // Part of the scan of the past: in its slot and its CPU budget.
            let (found, cpu, gone) = self.mempool(snapshot).await?;
            (used, unsent) = (used + cpu, unsent + cpu);
            self.within_budget(used, &mut unsent).await?;
            for hit in found {
                sent.add_from_mempool(hit.txid);
                hits.push(hit);
            }
            checked.add(through, mined.into_iter().chain(gone));
        }
        drop(self.slot.lock().unwrap().take());
        // The rest, the last page at 1.0: the historical scan is done.
        let pages: Vec<&[Hit]> = hits.chunks(PAGE).collect();
        if pages.is_empty() {
            self.page(&[], 1.0, &mut unsent).await?;
        }
        for (i, page) in pages.iter().enumerate() {
            let p = if i + 1 == pages.len() { 1.0 } else { progress };
            self.page(page, p, &mut unsent).await?;
        }
        if self.to.is_some() {
            return Ok(());
        }
        drop(hits);
        loop {
            tokio::select! {
                changed = tips.changed() => {
                    if changed.is_err() {
                        return Err(Stop::Gone);
                    }
                    tips.borrow_and_update();
                    self.new_tip(&mut seen, &mut sent, &mut unsent, &Arc::new(checked.clone())).await?;
                }
                batch = news.recv() => {
                    let all = || self.state.tweaks().mempool_snapshot();
                    let Some((through, list)) = news_ready(&mut news, batch, checked.through, all)? else {
                        continue;
                    };
                    let list: Vec<_> = list.into_iter().filter(|t| !sent.contains(&t.txid)).collect();
                    let (found, cpu, gone) = self.mempool(list).await?;
                    checked.add(through, gone);
                    unsent += cpu;
                    for hit in &found {
                        sent.add_from_mempool(hit.txid);
                    }
                    for page in found.chunks(PAGE) {
                        self.page(page, 1.0, &mut unsent).await?;
                    }
                }
                _ = self.out.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// After a new tip: the blocks from the fork (or the last one scanned) to the tip, their
    /// hits sent but those already sent from the mempool.
    async fn new_tip(
        &self,
        seen: &mut VecDeque<(Height, BlockHash)>,
        sent: &mut Sent,
        unsent: &mut Duration,
        checked: &Arc<Checked>,
    ) -> Result<(), Stop> {
        let index = self.state.index();
        let from = fork(&index, seen, self.from);
        let top = index.chain.len() as i64 - 1;
        drop(index);
        debug!(from, top, "silent payments: a live scan after a new tip");
        let mut hits = Vec::new();
        // A rescan after a reorg, or after the index moved many blocks at once, has the budget
        // of a scan of its own.
        let mut used = Duration::ZERO;
        let mut h = from as i64;
        while h <= top {
            let (found, last) = self.chunk(h, top, &mut used, unsent, seen, None, Some(checked)).await?;
            hits.extend(found.into_iter().filter(|hit| sent.new_in_block(&hit.txid, hit.height)));
            h = last + 1;
        }
        for page in hits.chunks(PAGE) {
            self.page(page, 1.0, unsent).await?;
        }
        let mempool = self.state.tweaks().mempool();
        sent.prune(|txid| mempool.contains_key(txid), top.max(0) as Height);
        Ok(())
    }

    /// One turn of a scan: the blocks from `h` (at most `CHUNK`, none past `end`, none whose
    /// tweaks the index has not computed yet: it waits for those) scanned on a scan thread, their
    /// CPU time charged to `used` (held to the scan's budget) and to the session, their hashes
    /// remembered. The hits, and the last height scanned. With `together`, a turn of one block
    /// is scanned in a batch with the other scans that want it (`together`).
    #[allow(clippy::too_many_arguments)]
    async fn chunk(
        &self,
        h: i64,
        end: i64,
        used: &mut Duration,
        unsent: &mut Duration,
        seen: &mut VecDeque<(Height, BlockHash)>,
        pulse: Option<(f64, &mut Instant)>,
        together: Option<&Arc<Checked>>,
    ) -> Result<(Vec<Hit>, i64), Stop> {
        let last = (h + CHUNK as i64 - 1).min(end);
        let last = self.computed_to(h as Height, last as Height, pulse, unsent).await? as i64;
        let found = match together {
            Some(checked) if last == h => self.together(h as Height, seen.back().copied(), checked).await?,
            // A live scan's rescan of several blocks (after a reorg, or after the index moved many
            // at once) is one scan's alone, in order with the others: a thousand of them first
            // would hold back the mempool and every new subscription for minutes.
            _ => self.blocks(h as Height, last as Height).await?,
        };
        *used += found.cpu;
        *unsent += found.cpu;
        self.within_budget(*used, unsent).await?;
        remember(seen, found.hashes);
        Ok((found.hits, last))
    }

    /// The last height of `from..=to` up to which the index has computed the tweaks, once it has
    /// `from`'s: while `from` is among the heights the indexer's tweak pass has still to do, the
    /// scan waits for it (sending its empty progress pages meanwhile, if it is a scan of past
    /// blocks). Blocks above those (the follower's) are scanned meanwhile.
    async fn computed_to(
        &self,
        from: Height,
        to: Height,
        mut pulse: Option<(f64, &mut Instant)>,
        unsent: &mut Duration,
    ) -> Result<Height, Stop> {
        loop {
            if let Some(last) = self.state.index().tweaks_computed_to(from, to)? {
                // Below `from` only if the chain is now shorter than `from` (a reorg): the scan
                // of `from..=from` then finds nothing, as a scan past the tip does.
                return Ok(last.max(from));
            }
            if let Some((progress, last_sent)) = pulse.as_mut() {
                if last_sent.elapsed() >= PULSE {
                    self.page(&[], *progress, unsent).await?;
                    **last_sent = Instant::now();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TWEAKS_POLL) => {}
                _ = self.out.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Scans blocks `from..=to` (those the index has) on a scan thread.
    async fn blocks(&self, from: Height, to: Height) -> Result<Found, Stop> {
        let turn = self.state.tweaks().thread(Urgency::InOrder).await;
        let (state, receiver) = (self.state.clone(), self.receiver.clone());
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let started = thread_cpu();
            let index = state.index();
            let found = scan_blocks(&index, &receiver, from, to);
            found.map(|(hits, hashes)| Found { hits, hashes, cpu: thread_cpu().saturating_sub(started) })
        })
        .await
        .map_err(|e| Stop::Failed(e.into()))??;
        Ok(found)
    }

    /// The block at `height` scanned in one batch with every other scan that asks for it
    /// meanwhile (a new tip wakes all live subscriptions at once): see `run_batch`. `below`: the
    /// last block this scan saw, which the batch checks is still in the chain.
    async fn together(
        &self,
        height: Height,
        below: Option<(Height, BlockHash)>,
        checked: &Arc<Checked>,
    ) -> Result<Found, Stop> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let key = (height, self.state.index().chain.hash(height));
        let m = Member { receiver: self.receiver.clone(), below, checked: checked.clone(), answer };
        if self.state.tweaks().join_batch(key, m) {
            // Its own task: this scan may be dropped (its session closed) before the others.
            tokio::spawn(run_batch(self.state.clone(), key));
        }
        tokio::select! {
            found = answered => match found {
                Ok(Ok(found)) => Ok(found),
                Ok(Err(e)) => Err(Stop::Failed(anyhow::anyhow!("{e}"))),
                Err(_) => Err(Stop::Failed(anyhow::anyhow!("the batch of block {height} was dropped"))),
            },
            _ = self.out.closed() => Err(Stop::Gone),
        }
    }

    /// Which of `list` pay the wallet, on a scan thread; the CPU time it took; those that
    /// matched but left the mempool before they could be confirmed.
    async fn mempool(&self, list: Vec<Arc<MempoolTweak>>) -> Result<(Vec<Hit>, Duration, Vec<Txid>), Stop> {
        if list.is_empty() {
            return Ok((Vec::new(), Duration::ZERO, Vec::new()));
        }
        let asked = Instant::now();
        let turn = self.state.tweaks().thread(Urgency::InOrder).await;
        let waited = asked.elapsed();
        let (state, receiver) = (self.state.clone(), self.receiver.clone());
        let n = list.len();
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            debug!(n, waited_ms = waited.as_millis() as u64, "silent payments: a live scan's mempool check");
            let started = thread_cpu();
            let (mut hits, mut gone) = (Vec::new(), Vec::new());
            for t in list.iter().filter(|t| receiver.matches(&t.tweak, &t.outputs)) {
                let raw = state.mempool().read().unwrap().txs.get(&t.txid).map(|m| m.raw().to_vec());
                // Gone since: it is in a block now, or replaced; a block scan finds the first.
                let Some(raw) = raw else {
                    gone.push(t.txid);
                    continue;
                };
                let tx: Transaction = bitcoin::consensus::deserialize(&raw)?;
                if !receiver.paid_outputs(&t.tweak, &tx).is_empty() {
                    hits.push(Hit { height: 0, txid: t.txid, tweak: t.tweak.serialize() });
                }
            }
            anyhow::Ok((hits, thread_cpu().saturating_sub(started), gone))
        })
        .await
        .map_err(|e| Stop::Failed(e.into()))??;
        Ok(found)
    }

    /// Ok while `used` is within the per-scan CPU limit; past it, the session is told (and then
    /// closed) and the scan ends.
    async fn within_budget(&self, used: Duration, unsent: &mut Duration) -> Result<(), Stop> {
        if used <= self.cpu_limit {
            return Ok(());
        }
        let m = format!(
            "a silent-payments scan used more than its {} s of CPU: subscribe from a later start",
            self.cpu_limit.as_secs_f64()
        );
        self.send(Body::OverBudget(m), unsent).await?;
        Err(Stop::Gone)
    }

    /// Sends one notification: `history` (at most `PAGE` entries) at `progress`.
    async fn page(&self, history: &[Hit], progress: f64, unsent: &mut Duration) -> Result<(), Stop> {
        let text = notification(&self.subscription, progress, history);
        self.send(Body::Notification(text), unsent).await
    }

    async fn send(&self, body: Body, unsent: &mut Duration) -> Result<(), Stop> {
        let msg = Msg { generation: self.generation, body, cpu: std::mem::take(unsent) };
        self.out.send(msg).await.map_err(|_| Stop::Gone)
    }
}

/// The mempool's news for a live scan that has checked every batch up to `through`: `first`
/// and the batches ready behind it, until it holds `MEMPOOL_BATCH` transactions or more, so
/// that a scan behind by many small batches checks them on one turn, not on one each; past a
/// gap (`Lagged`), the whole record instead (`all`). None if all were covered already (by the
/// scan's first look at the record, or one taken after a gap). The last batch's number, and
/// the transactions.
#[allow(clippy::type_complexity)]
fn news_ready(
    news: &mut broadcast::Receiver<News>,
    first: Result<News, broadcast::error::RecvError>,
    through: u64,
    all: impl FnOnce() -> (u64, Vec<Arc<MempoolTweak>>),
) -> Result<Option<(u64, Vec<Arc<MempoolTweak>>)>, Stop> {
    use broadcast::error::{RecvError, TryRecvError};
    let (mut last, mut list) = (through, Vec::new());
    let mut next = first;
    loop {
        match next {
            Ok(batch) if batch.seq > last => {
                last = batch.seq;
                list.extend(batch.txs.iter().cloned());
            }
            Ok(_) => {}
            // Missed some: look at all of them (those sent are skipped by the caller).
            Err(RecvError::Lagged(_)) => return Ok(Some(all())),
            Err(RecvError::Closed) => return Err(Stop::Gone),
        }
        if list.len() >= MEMPOOL_BATCH {
            break;
        }
        next = match news.try_recv() {
            Ok(batch) => Ok(batch),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
            Err(TryRecvError::Empty) => break,
        };
    }
    Ok((last > through).then_some((last, list)))
}

/// The first height to scan after a tip change: above the highest block remembered that is still
/// in the chain (those above it are forgotten); if none is, from the lowest remembered (or, with
/// none remembered, from `start`).
fn fork(index: &IndexReader, seen: &mut VecDeque<(Height, BlockHash)>, start: Height) -> Height {
    let mut from = start;
    while let Some(&(h, hash)) = seen.back() {
        if index.chain.hash(h) == Some(hash) {
            return h + 1;
        }
        from = h;
        seen.pop_back();
    }
    from
}

fn remember(seen: &mut VecDeque<(Height, BlockHash)>, hashes: Vec<(Height, BlockHash)>) {
    seen.extend(hashes);
    while seen.len() > MAX_SEEN {
        seen.pop_front();
    }
}

/// The transactions of blocks `from..=to` that pay `receiver`, each confirmed against its bytes
/// (`confirm`, as a batch's are); and the blocks' hashes. Blocks past the index's tip are not
/// there yet: none.
fn scan_blocks(
    index: &IndexReader,
    receiver: &Arc<Receiver>,
    from: Height,
    to: Height,
) -> Result<(Vec<Hit>, Seen)> {
    let top = index.chain.len() as i64 - 1;
    let to = (to as i64).min(top);
    if (from as i64) > to {
        return Ok((Vec::new(), Vec::new()));
    }
    let to = to as Height;
    let mut hits = Vec::new();
    for (height, txs) in index.tweaks(from..=to)? {
        let candidates = txs
            .iter()
            .enumerate()
            .filter(|(_, t)| receiver.matches(&t.tweak, &t.outputs))
            .map(|(i, _)| (0, i));
        let (found, _) =
            confirm(index, std::slice::from_ref(receiver), &txs, candidates.collect(), height, 1);
        hits.extend(found.into_iter().next().expect("one result a receiver").map_err(anyhow::Error::msg)?);
    }
    let hashes = (from..=to).filter_map(|h| Some((h, index.chain.hash(h)?))).collect();
    Ok((hits, hashes))
}

/// How long a new block's batch waits for its members after the first (a tip wakes every live
/// scan within about a millisecond) before its first turn; those later join at a later turn.
const GATHER: Duration = Duration::from_millis(5);
/// (member, transaction) checks a batch makes per thread in one turn: about half a second at
/// 40 µs a check, as a scan's turn of `CHUNK` blocks; between turns other scans get theirs.
const TURN_CHECKS: usize = 12_500;

/// A member of a running batch: the transactions that matched its prefixes so far, and its share
/// of the CPU time so far.
struct Place {
    member: Member,
    candidates: Vec<usize>,
    cpu: Duration,
}

/// A batch's bookkeeping, apart from its work so that a test drives the same code: the block's
/// `n` transactions, the position of the next turn in them, and each member still going with
/// how many it has been checked against (always the ones just before `at`, round the block).
struct Round<T> {
    n: usize,
    at: usize,
    going: Vec<(T, usize)>,
}

impl<T> Round<T> {
    fn new(n: usize) -> Self {
        Round { n, at: 0, going: Vec::new() }
    }

    /// A member from now on: checked from `at`.
    fn join(&mut self, member: T) {
        self.going.push((member, 0));
    }

    /// The members checked against every transaction, taken out; and those `keep` refuses
    /// (gone meanwhile) dropped.
    fn take_done(&mut self, keep: impl Fn(&T) -> bool) -> Vec<T> {
        let n = self.n;
        let (done, going) = std::mem::take(&mut self.going)
            .into_iter()
            .filter(|(m, _)| keep(m))
            .partition::<Vec<_>, _>(|&(_, checked)| checked >= n);
        self.going = going;
        done.into_iter().map(|(m, _)| m).collect()
    }

    /// The next turn, for `threads` threads of `turn_checks` (member, transaction) checks
    /// each: how many of the turn's transactions (from `at`) each member still going needs.
    fn needs(&self, threads: usize, turn_checks: usize) -> Vec<usize> {
        let per_thread = (turn_checks / self.going.len().max(1)).max(1);
        let len = (per_thread * threads).min(self.n);
        self.going.iter().map(|&(_, checked)| (self.n - checked).min(len)).collect()
    }

    /// After a turn of `needs`: each member checked against its need more, `at` past the turn.
    fn advance(&mut self, needs: &[usize]) {
        for ((_, checked), need) in self.going.iter_mut().zip(needs) {
            *checked += need;
        }
        if self.n > 0 {
            self.at = (self.at + needs.iter().copied().max().unwrap_or(0)) % self.n;
        }
    }
}

/// Closes a batch that stops short (a panic in its task), answering those still waiting to join
/// it with an error, so that none waits for a batch nobody runs. Disarmed once the batch has
/// closed itself: a batch of the same key opened after it is not this one's.
struct Open {
    state: Arc<State>,
    key: BatchKey,
    armed: bool,
}

impl Open {
    /// The batch closed itself.
    fn closed(mut self) {
        self.armed = false;
    }

    /// Every member still to join the batch answered alike (`answer_all`), the batch closed.
    fn answer_all(mut self, answer: Result<(), String>) {
        answer_all(&self.state, self.key, answer);
        self.armed = false;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.armed {
            answer_all(&self.state, self.key, Err("the batch of this block stopped".into()));
        }
    }
}

/// Runs the batch of one block (`Scan::together`). The block's tweak rows are read once, from
/// one index view for the whole batch, and its transactions checked in turns on the scan
/// threads (each turn on one scan thread and any idle others, the turn's checks split among
/// them): with a table of each tweak's multiples made once for all the members checked against
/// it when they are at least `--sp-table-from`, each on its own below that. The batch takes its
/// first turn before any other scan's (`Urgency::NewBlock`) and keeps the turns it has until it
/// ends: every live wallet waits for the block, none for the others' work.
///
/// The batch goes round the block's transactions (`Round`): a member who joins late (its scan
/// woke after the first turn) is taken at the next turn, checked from where the batch is, and
/// answered once it has been round, wrapping to the transactions before. Each member is answered
/// as soon as it is done, with its own hits in block order (or its own error) and its share of
/// the CPU time of the turns it was in (in proportion to its checks). A member whose last block
/// seen is no longer in the batch's view, or whose view of the block is not the batch's, gets
/// nothing, and its next tip change rescans from the fork.
async fn run_batch(state: Arc<State>, key: BatchKey) {
    let (height, hash) = key;
    let open = Open { state: state.clone(), key, armed: true };
    let started = Instant::now();
    tokio::time::sleep(GATHER).await;
    let index = state.index();
    if index.chain.hash(height) != hash || hash.is_none() {
        // Not this view's block (a reorg since) or past its tip: nothing found, nothing
        // remembered.
        debug!(height, "silent payments: a new block's batch answered empty: the block is not in the chain");
        return open.answer_all(Ok(()));
    }
    // The scan threads' turns the batch holds, until it ends: every wallet waits for all of it.
    let mut held = Vec::new();
    let mut waited = more_turns(&state, &mut held, false).await;
    let (i2, turns) = (index.clone(), std::mem::take(&mut held));
    let read = tokio::task::spawn_blocking(move || {
        let started = thread_cpu();
        let txs = i2.tweaks(height..=height).map(|t| t.into_iter().flat_map(|(_, t)| t).collect::<Vec<_>>());
        (txs.map(|txs| (txs, thread_cpu().saturating_sub(started))), turns)
    })
    .await;
    let (txs, mut unshared) = match read {
        Ok((Ok((txs, cpu)), turns)) => {
            held = turns;
            (Arc::new(txs), cpu)
        }
        Ok((Err(e), _)) => return open.answer_all(Err(format!("{e:#}"))),
        Err(e) => return open.answer_all(Err(format!("{e}"))),
    };
    let n = txs.len();
    // Each transaction as the mempool announced it, if it did: most members checked it then.
    let looked = Arc::new(state.tweaks().looked_up(&txs));
    let (mut members, mut late, mut turns, mut skipped, mut made) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut round: Round<Place> = Round::new(n);
    let mut confirmed = Duration::ZERO;
    loop {
        for member in state.tweaks().batch_joiners(key) {
            if !member.answer.is_closed() {
                members += 1;
                late += usize::from(turns > 0);
                round.join(Place { member, candidates: Vec::new(), cpu: Duration::ZERO });
            }
        }
        let done = round.take_done(|p| !p.member.answer.is_closed());
        if !done.is_empty() {
            let confirming = Instant::now();
            waited += answer_done(&state, &index, &txs, height, done, &mut held).await;
            confirmed += confirming.elapsed();
        }
        if round.going.is_empty() {
            if state.tweaks().close_batch(key) {
                break;
            }
            continue;
        }
        waited += more_turns(&state, &mut held, true).await;
        let needs = Arc::new(round.needs(held.len(), TURN_CHECKS));
        let receivers: Arc<Vec<Arc<Receiver>>> =
            Arc::new(round.going.iter().map(|(p, _)| p.member.receiver.clone()).collect());
        let checked: Vec<Arc<Checked>> = round.going.iter().map(|(p, _)| p.member.checked.clone()).collect();
        let table_from = state.tweaks().limits().table_from;
        let (txs2, needs2, looked2, at) = (txs.clone(), needs.clone(), looked.clone(), round.at);
        let permits = std::mem::take(&mut held);
        let turn = tokio::task::spawn_blocking(move || {
            let done = |r: usize, i: usize| checked[r].has(looked2[i]);
            (check_all(&receivers, &txs2, &needs2, at, permits.len(), table_from, &done), permits)
        })
        .await;
        let Ok(((found, skips, spent), permits)) = turn else {
            // The turn panicked: its members are answered as the batch's dropped (`together`).
            return open.answer_all(Err("a turn of the batch of this block stopped".into()));
        };
        held = permits;
        turns += 1;
        skipped += skips;
        // The read's CPU time goes with the first turn.
        let spent = spent + std::mem::take(&mut unshared);
        let checks: usize = needs.iter().sum();
        made += checks - skips;
        for ((p, _), &need) in round.going.iter_mut().zip(needs.iter()) {
            p.cpu += spent.mul_f64(need as f64 / checks.max(1) as f64);
        }
        for (r, i) in found {
            round.going[r].0.candidates.push(i);
        }
        round.advance(&needs);
    }
    let ms = started.elapsed().as_millis() as u64;
    if n > 0 {
        info!(
            height,
            transactions = n,
            members,
            late,
            checked = made,
            skipped,
            turns,
            ms,
            waited_ms = waited.as_millis() as u64,
            confirm_ms = confirmed.as_millis() as u64,
            "silent payments: a new block scanned for the live subscriptions"
        );
    } else {
        debug!(height, members, ms, "silent payments: a new block with no eligible transaction");
    }
    open.closed();
}

/// Answers every member of the batch of `key`, those still to join included, alike: with an
/// error, or (`Ok`) with nothing found and no block remembered. Closes the batch.
fn answer_all(state: &State, key: BatchKey, answer: Result<(), String>) {
    loop {
        for m in state.tweaks().batch_joiners(key) {
            let found =
                answer.clone().map(|()| Found { hits: Vec::new(), hashes: Vec::new(), cpu: Duration::ZERO });
            let _ = m.answer.send(found);
        }
        if state.tweaks().close_batch(key) {
            return;
        }
    }
}

/// Tops up `held`, the batch's turns on the scan threads: one, waited for if it holds none
/// (before the other scans' turns); with `idle`, also every other one that is idle. How long it
/// waited.
async fn more_turns(state: &State, held: &mut Vec<Turn>, idle: bool) -> Duration {
    let asked = Instant::now();
    if held.is_empty() {
        held.push(state.tweaks().thread(Urgency::NewBlock).await);
    }
    while idle && held.len() < state.tweaks().limits().scan_threads {
        let Some(t) = state.tweaks().idle_thread() else { break };
        held.push(t);
    }
    asked.elapsed()
}

/// The members checked against all of the block's transactions: their candidates confirmed on
/// the scan threads (`confirm`, on the batch's turns `held` and any idle others; with no
/// candidates, no turn is waited for), each answered, its hits in block order. How long it
/// waited for a turn.
async fn answer_done(
    state: &State,
    index: &Arc<IndexReader>,
    txs: &Arc<Vec<sp::TweakedTx>>,
    height: Height,
    done: Vec<Place>,
    held: &mut Vec<Turn>,
) -> Duration {
    let mut candidates: Vec<(usize, usize)> =
        done.iter().enumerate().flat_map(|(r, p)| p.candidates.iter().map(move |&i| (r, i))).collect();
    // A member who joined late was checked from mid-block round to its start.
    candidates.sort_unstable();
    let mut waited = Duration::ZERO;
    let (results, spent) = if candidates.is_empty() {
        (done.iter().map(|_| Ok(Vec::new())).collect(), Duration::ZERO)
    } else {
        waited = more_turns(state, held, true).await;
        let receivers: Vec<Arc<Receiver>> = done.iter().map(|p| p.member.receiver.clone()).collect();
        let (index2, txs2, turns) = (index.clone(), txs.clone(), std::mem::take(held));
        let confirmed = tokio::task::spawn_blocking(move || {
            let (results, spent) = confirm(&index2, &receivers, &txs2, candidates, height, turns.len());
            (results, spent, turns)
        })
        .await;
        match confirmed {
            Ok((results, spent, turns)) => {
                *held = turns;
                (results, spent)
            }
            Err(e) => (done.iter().map(|_| Err(format!("{e}"))).collect(), Duration::ZERO),
        }
    };
    let share = spent / done.len() as u32;
    let hashes: Seen = index.chain.hash(height).map(|hash| vec![(height, hash)]).unwrap_or_default();
    let forked = |m: &Member| m.below.is_some_and(|(h, hash)| index.chain.hash(h) != Some(hash));
    for (p, hits) in done.into_iter().zip(results) {
        let cpu = p.cpu + share;
        let found = match hits {
            Ok(_) if forked(&p.member) => Ok(Found { hits: Vec::new(), hashes: Vec::new(), cpu }),
            Ok(hits) => Ok(Found { hits, hashes: hashes.clone(), cpu }),
            Err(e) => Err(e),
        };
        let _ = p.member.answer.send(found);
    }
    waited
}

/// One turn of a batch: the (member, transaction) pairs whose prefixes match, for the turn's
/// transactions, from `at` round the block (the `j`-th of them checked for the members whose
/// `needs` exceed j, but those for whom `done(member, transaction)`: checked from the mempool);
/// how many were so skipped; the CPU time of all. The pairs to check are split evenly among
/// `threads` threads, not the transactions: a block seen in the mempool first leaves a turn of
/// one or two transactions that every member checks.
fn check_all(
    receivers: &[Arc<Receiver>],
    txs: &[sp::TweakedTx],
    needs: &[usize],
    at: usize,
    threads: usize,
    table_from: usize,
    done: &(dyn Fn(usize, usize) -> bool + Sync),
) -> (Vec<(usize, usize)>, usize, Duration) {
    let started = thread_cpu();
    let len = needs.iter().copied().max().unwrap_or(0);
    // In transaction order; with how many members check each transaction.
    let (mut pairs, mut members_of, mut skipped) = (Vec::new(), HashMap::new(), 0);
    for j in 0..len {
        let i = (at + j) % txs.len();
        let before = pairs.len();
        for r in (0..receivers.len()).filter(|&r| needs[r] > j) {
            if done(r, i) {
                skipped += 1;
            } else {
                pairs.push((r, i));
            }
        }
        members_of.insert(i, pairs.len() - before);
    }
    // A transaction's pairs are consecutive: its table is made once a thread.
    let check = |pairs: &[(usize, usize)]| {
        let started = thread_cpu();
        let mut found = Vec::new();
        for same in pairs.chunk_by(|a, b| a.1 == b.1) {
            let i = same[0].1;
            let table = (members_of[&i] >= table_from).then(|| sp::TweakTable::new(&txs[i].tweak));
            for &(r, i) in same {
                let hit = match &table {
                    Some(table) => receivers[r].matches_by(table, &txs[i].outputs),
                    None => receivers[r].matches(&txs[i].tweak, &txs[i].outputs),
                };
                if hit {
                    found.push((r, i));
                }
            }
        }
        (found, thread_cpu().saturating_sub(started))
    };
    // The listing's CPU time, on this thread, before the parts' (the first part's included).
    let listing = thread_cpu().saturating_sub(started);
    let parts = on_threads(&pairs, threads, &check);
    let found = parts.iter().flat_map(|(found, _)| found.iter().copied()).collect();
    (found, skipped, listing + parts.iter().map(|(_, cpu)| *cpu).sum::<Duration>())
}

/// `work` done on `items` split into `threads` parts of consecutive items, the first on this
/// thread, the others each on a thread of its own; the parts' results in order.
fn on_threads<T: Sync, R: Send>(items: &[T], threads: usize, work: &(dyn Fn(&[T]) -> R + Sync)) -> Vec<R> {
    let mut parts = items.chunks(items.len().div_ceil(threads.max(1)).max(1));
    let Some(first) = parts.next() else { return Vec::new() };
    std::thread::scope(|s| {
        let others: Vec<_> = parts.map(|part| s.spawn(move || work(part))).collect();
        let mut done = vec![work(first)];
        done.extend(others.into_iter().map(|o| o.join().expect("a scan thread panicked")));
        done
    })
}

/// Each candidate checked on its transaction (read once for all the members it matched), split
/// among `threads` threads: each member's hits in block order, or the error met reading one of
/// its candidates (its own; the others go on); the CPU time of all. `candidates` sorted.
fn confirm(
    index: &IndexReader,
    receivers: &[Arc<Receiver>],
    txs: &[sp::TweakedTx],
    candidates: Vec<(usize, usize)>,
    height: Height,
    threads: usize,
) -> (Vec<Result<Vec<Hit>, String>>, Duration) {
    let started = thread_cpu();
    let mut read: HashMap<usize, Result<(Transaction, Txid), String>> = HashMap::new();
    for &(_, i) in &candidates {
        read.entry(i).or_insert_with(|| {
            let txnum = txs[i].txnum;
            let (raw, ..) = index.tx_by_num(txnum).map_err(|e| format!("{e:#}"))?;
            let tx: Transaction =
                bitcoin::consensus::deserialize(&raw).map_err(|e| format!("transaction {txnum}: {e}"))?;
            let txid = tx.compute_txid();
            Ok((tx, txid))
        });
    }
    let check = |these: &[(usize, usize)]| {
        let started = thread_cpu();
        let paid = |&(r, i): &(usize, usize)| match &read[&i] {
            Ok((tx, _)) => !receivers[r].paid_outputs(&txs[i].tweak, tx).is_empty(),
            Err(_) => false,
        };
        (these.iter().map(paid).collect::<Vec<bool>>(), thread_cpu().saturating_sub(started))
    };
    let reading = thread_cpu().saturating_sub(started);
    let parts = on_threads(&candidates, threads, &check);
    let cpu = reading + parts.iter().map(|(_, cpu)| *cpu).sum::<Duration>();
    let paid = parts.into_iter().flat_map(|(paid, _)| paid);
    let mut results: Vec<Result<Vec<Hit>, String>> = receivers.iter().map(|_| Ok(Vec::new())).collect();
    for (&(r, i), paid) in candidates.iter().zip(paid) {
        match (&read[&i], &mut results[r]) {
            (Ok((_, txid)), Ok(hits)) if paid => {
                hits.push(Hit { height, txid: *txid, tweak: txs[i].tweak.serialize() })
            }
            (Err(e), result @ Ok(_)) => *result = Err(e.clone()),
            _ => {}
        }
    }
    (results, cpu)
}

/// A `blockchain.silentpayments.subscribe` notification, as Frigate sends it: named parameters
/// `subscription` (the object the reply had, byte for byte), `progress`, `history`.
fn notification(subscription: &str, progress: f64, history: &[Hit]) -> String {
    let mut out = String::with_capacity(256 + history.len() * 180);
    out.push_str(
        r#"{"jsonrpc":"2.0","method":"blockchain.silentpayments.subscribe","params":{"subscription":"#,
    );
    out.push_str(subscription);
    out.push_str(r#","progress":"#);
    out.push_str(&json!(progress).to_string());
    out.push_str(r#","history":["#);
    for (i, hit) in history.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"height":"#);
        out.push_str(itoa::Buffer::new().format(hit.height));
        out.push_str(r#","tx_hash":""#);
        push_txid(&mut out, &hit.txid);
        out.push_str(r#"","tweak_key":""#);
        out.push_str(&hex::encode(hit.tweak));
        out.push_str(r#""}"#);
    }
    out.push_str("]}}");
    out
}

/// The CPU time of the calling thread (a scan's elliptic-curve work, not its waits).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The first height whose block's time is at least `time` (a subscription's start given as a
/// time); past the tip when no block is that late.
pub fn height_at_time(index: &IndexReader, time: u64) -> Height {
    let n = index.chain.len() as Height;
    (0..n).find(|h| index.chain.row(*h).is_some_and(|r| u64::from(r.header.time) >= time)).unwrap_or(n)
}

/// Keeps the tweaks of the mempool's eligible transactions (`tweaks::Tweaks::mempool`), woken by
/// each mempool change: the transactions new since the last look get their tweak, from the
/// scripts they spend (a mempool parent's output, or a confirmed one's from the index), on a scan
/// thread; those gone are dropped; the new eligible ones are announced to every scan.
pub async fn track_mempool(state: Arc<State>) {
    let mut changes = state.watch_mempool();
    let mut logged = false;
    loop {
        match track_once(&state).await {
            Ok(more) if more => continue,
            Ok(_) => {}
            Err(e) => warn!("silent payments: mempool transactions not looked at: {e:#}"),
        }
        if !logged {
            info!(
                eligible = state.tweaks().mempool_snapshot().1.len(),
                "silent payments: the mempool's tweaks"
            );
            logged = true;
        }
        // Woken by a change (a lagged receiver means changes too), and every few seconds anyway:
        // a change announced while this looked is not lost.
        tokio::select! {
            r = changes.recv() => if let Err(broadcast::error::RecvError::Closed) = r { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // The node relays a burst one transaction at a time: gathered, they are announced in
        // a few batches, each one turn of every live scan, not one batch each. The changes
        // meanwhile are all in the look that follows.
        tokio::time::sleep(MEMPOOL_GATHER).await;
        loop {
            match changes.try_recv() {
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
    }
}

/// One turn: at most `MEMPOOL_BATCH` new transactions; whether more are waiting.
async fn track_once(state: &Arc<State>) -> Result<bool> {
    // What is new and what is gone, and the new ones' bytes with those of their mempool parents.
    let (new, more) = {
        let mut known = state.tweaks().mempool();
        let mempool = state.mempool().read().unwrap();
        let mut gone = Vec::new();
        known.retain(|txid, t| {
            let stays = mempool.txs.contains_key(txid);
            if !stays {
                gone.extend(t.clone());
            }
            stays
        });
        state.tweaks().left_mempool(gone);
        let mut new = Vec::new();
        let mut more = false;
        for (txid, entry) in &mempool.txs {
            if known.contains_key(txid) {
                continue;
            }
            if new.len() == MEMPOOL_BATCH {
                more = true;
                break;
            }
            let parents: HashMap<Txid, Vec<u8>> = entry
                .spent()
                .filter_map(|s| Some((s.outpoint.txid, mempool.txs.get(&s.outpoint.txid)?.raw().to_vec())))
                .collect();
            new.push((*txid, entry.raw().to_vec(), parents));
        }
        (new, more)
    };
    if new.is_empty() {
        return Ok(false);
    }
    let turn = state.tweaks().thread(Urgency::InOrder).await;
    let st = state.clone();
    let looked = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let index = st.index();
        new.into_iter()
            .map(|(txid, raw, parents)| Ok((txid, mempool_tweak(&index, txid, &raw, &parents)?)))
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    let mut news = Vec::new();
    {
        let mut known = state.tweaks().mempool();
        let mempool = state.mempool().read().unwrap();
        for (txid, t) in looked {
            // Left while it was looked at: the next turn would only drop it.
            if mempool.txs.contains_key(&txid) {
                let t = t.map(Arc::new);
                news.extend(t.clone());
                known.insert(txid, t);
            }
        }
    }
    debug!(eligible = news.len(), "silent payments: new mempool transactions looked at");
    state.tweaks().announce(news);
    Ok(more)
}

/// A mempool transaction's tweak, if it is eligible: the scripts it spends come from `parents`
/// (its mempool parents' bytes) or the index. One whose spent output cannot be found (a parent
/// gone meanwhile) is taken as not eligible.
fn mempool_tweak(
    index: &IndexReader,
    txid: Txid,
    raw: &[u8],
    parents: &HashMap<Txid, Vec<u8>>,
) -> Result<Option<MempoolTweak>> {
    let tx: Transaction = bitcoin::consensus::deserialize(raw)?;
    let outputs = sp::output_prefixes(&tx);
    if outputs.is_empty() {
        return Ok(None);
    }
    let mut scripts = Vec::with_capacity(tx.input.len());
    let mut cache: HashMap<Txid, Transaction> = HashMap::new();
    for input in &tx.input {
        let prev = input.previous_output;
        if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(prev.txid) {
            // A mempool parent is decoded where it is kept, not copied first.
            let parent = match parents.get(&prev.txid) {
                Some(raw) => bitcoin::consensus::deserialize(raw)?,
                None => match index.txs_by_txid(&prev.txid)?.pop() {
                    Some(info) => bitcoin::consensus::deserialize(&info.raw)?,
                    None => return Ok(None),
                },
            };
            e.insert(parent);
        }
        match cache[&prev.txid].output.get(prev.vout as usize) {
            Some(out) => scripts.push(out.script_pubkey.clone()),
            None => return Ok(None),
        }
    }
    let spent: Vec<&bitcoin::Script> = scripts.iter().map(|s| s.as_script()).collect();
    Ok(sp::tweak(&tx, &spent).map(|tweak| MempoolTweak { txid, tweak, outputs }))
}

/// Forgets the mempool transactions sent that have been gone from the mempool at two checks
/// running (checks come after a tip's blocks are scanned, so a mined one is skipped first).
/// The mempool transactions a scan has sent, so that none is sent twice: not from the mempool
/// again, not when it is mined, nor when a reorg takes its block away and it is mined again.
#[derive(Default)]
struct Sent(HashMap<Txid, SentState>);

#[derive(Clone, Copy, Debug, PartialEq)]
enum SentState {
    /// In the mempool; `true`: seen gone from it at the last check (dropped at the next, after a
    /// block scan has had its chance to find it mined).
    Mempool(bool),
    /// Found in the block at this height: kept while a reorg could mine it again.
    Mined(Height),
}

impl Sent {
    fn add_from_mempool(&mut self, txid: Txid) {
        self.0.insert(txid, SentState::Mempool(false));
    }

    fn contains(&self, txid: &Txid) -> bool {
        self.0.contains_key(txid)
    }

    /// Whether a hit in the block at `height` is to be sent: not if it was sent already (it is
    /// then remembered as mined there).
    fn new_in_block(&mut self, txid: &Txid, height: Height) -> bool {
        match self.0.get_mut(txid) {
            Some(state) => {
                *state = SentState::Mined(height);
                false
            }
            None => true,
        }
    }

    /// Forgets what can no longer come back: mempool transactions gone at two checks in a row,
    /// and mined ones deeper below `tip` than the indexer follows a reorg.
    fn prune(&mut self, in_mempool: impl Fn(&Txid) -> bool, tip: Height) {
        self.0.retain(|txid, state| match state {
            SentState::Mempool(gone) => {
                let was = *gone;
                *gone = !in_mempool(txid);
                !(was && *gone)
            }
            SentState::Mined(h) => (*h as usize) + MAX_SEEN > tip as usize,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bitcoin::hashes::Hash;

    use super::*;

    #[test]
    fn notifications_have_frigates_shape() {
        let sub = r#"{"address":"sp1x","labels":[0],"start_height":5}"#;
        let hit = Hit { height: 7, txid: Txid::from_byte_array([1; 32]), tweak: [2; 33] };
        let v: serde_json::Value = serde_json::from_str(&notification(sub, 1.0, &[hit])).unwrap();
        assert_eq!(v["method"], "blockchain.silentpayments.subscribe");
        assert_eq!(v["params"]["subscription"], serde_json::from_str::<serde_json::Value>(sub).unwrap());
        assert_eq!(v["params"]["progress"], 1.0);
        assert_eq!(v["params"]["history"][0]["height"], 7);
        assert_eq!(v["params"]["history"][0]["tx_hash"], "01".repeat(32));
        assert_eq!(v["params"]["history"][0]["tweak_key"], "02".repeat(33));
        let text = notification(sub, 0.5, &[]);
        assert!(text.contains(&format!(r#""subscription":{sub},"progress":0.5,"history":[]"#)), "{text}");
    }

    /// A batch's checks give the same (member, transaction) pairs however the block is cut into
    /// turns and threads, with tables or without, whenever each member joins (those who join late
    /// are checked from where the batch is, round to where they came in), and exactly those the
    /// block was made to pay.
    #[test]
    fn a_batch_finds_the_same_pairs_in_any_turns_threads_and_joining_times() {
        use bitcoin::secp256k1::{Secp256k1, SecretKey};
        let secp = Secp256k1::new();
        let key = |i: u32| {
            let mut b = [0x11u8; 32];
            b[28..].copy_from_slice(&i.to_be_bytes());
            SecretKey::from_slice(&b).unwrap()
        };
        let receivers: Vec<Arc<Receiver>> = (0..5)
            .map(|r| Arc::new(Receiver::new(key(100 + r), key(200 + r).public_key(&secp), &[])))
            .collect();
        let mut want = Vec::new();
        let txs: Vec<sp::TweakedTx> = (0..23)
            .map(|i| {
                let tweak = key(300 + i).public_key(&secp);
                let mut outputs = vec![[i as u8; 8]];
                // Transaction i pays member i % 7 (none for 5 and 6), and every third also member 0.
                for r in [i as usize % 7, if i % 3 == 0 { 0 } else { 9 }] {
                    if let Some(receiver) = receivers.get(r) {
                        outputs.push(receiver.first_output_prefix(&tweak).unwrap());
                        want.push((r, i as usize));
                    }
                }
                sp::TweakedTx { txnum: i, tweak, outputs }
            })
            .collect();
        want.sort_unstable();
        want.dedup();
        let n = txs.len();
        // Member 0 checked the odd transactions from the mempool (in the test, their pairs are
        // not checked again, so not found), or nobody checked any.
        let odd = |r: usize, i: usize| r == 0 && i % 2 == 1;
        let none = |_: usize, _: usize| false;
        type Skip<'a> = &'a (dyn Fn(usize, usize) -> bool + Sync);
        let skips: [(&str, Skip); 2] = [("none", &none), ("odd", &odd)];
        let cases =
            skips.iter().flat_map(|s| [[0, 0, 0, 0, 0], [0, 0, 1, 3, 3], [2, 0, 5, 1, 4]].map(|j| (s, j)));
        for (&(skipped, skip), joins) in cases {
            let want: Vec<(usize, usize)> = want.iter().copied().filter(|&(r, i)| !skip(r, i)).collect();
            for table_from in [usize::MAX, 1, 3] {
                // Checks a thread makes a turn (shared among the members going, as `run_batch`
                // shares `TURN_CHECKS`), and threads.
                for (turn_checks, threads) in [(100, 1), (100, 2), (10, 2), (1, 3), (12, 5)] {
                    let mut round: Round<usize> = Round::new(n);
                    let (mut got, mut answered) = (Vec::new(), Vec::new());
                    let mut turn = 0;
                    // As `run_batch` goes: take the joiners, answer those done, a turn for the rest.
                    loop {
                        (0..receivers.len()).filter(|&r| joins[r] == turn).for_each(|r| round.join(r));
                        answered.extend(round.take_done(|_| true));
                        if round.going.is_empty() && joins.iter().all(|&j| j <= turn) {
                            break;
                        }
                        let needs = round.needs(threads, turn_checks);
                        let these: Vec<Arc<Receiver>> =
                            round.going.iter().map(|&(r, _)| receivers[r].clone()).collect();
                        let ids: Vec<usize> = round.going.iter().map(|&(r, _)| r).collect();
                        let done = |k: usize, i: usize| skip(ids[k], i);
                        let (found, _, _) =
                            check_all(&these, &txs, &needs, round.at, threads, table_from, &done);
                        got.extend(found.into_iter().map(|(k, i)| (round.going[k].0, i)));
                        round.advance(&needs);
                        turn += 1;
                    }
                    got.sort_unstable();
                    answered.sort_unstable();
                    let what =
                        format!("joins {joins:?}, {turn_checks} checks × {threads} threads, tables from {table_from}, {skipped} skipped");
                    assert_eq!(got, want, "{what}");
                    assert_eq!(
                        answered,
                        (0..receivers.len()).collect::<Vec<_>>(),
                        "{what}: each answered once"
                    );
                }
            }
        }
        // A block with no eligible transaction answers its members at once.
        let mut empty: Round<usize> = Round::new(0);
        empty.join(7);
        assert_eq!(empty.take_done(|_| true), vec![7]);
        assert_eq!(empty.needs(2, 100), Vec::<usize>::new());
    }

    #[test]
    fn a_live_scan_checks_the_news_ready_in_one_turn_and_skips_what_a_record_covered() {
        use bitcoin::secp256k1::{Secp256k1, SecretKey};
        let secp = Secp256k1::new();
        let tx = |i: u8| {
            let tweak = SecretKey::from_slice(&[i; 32]).unwrap().public_key(&secp);
            Arc::new(MempoolTweak { txid: Txid::from_byte_array([i; 32]), tweak, outputs: vec![[i; 8]] })
        };
        let batch = |seq: u64, txs: &[u8]| {
            Arc::new(crate::tweaks::NewsBatch { seq, txs: txs.iter().map(|&i| tx(i)).collect() })
        };
        let ids = |got: Option<(u64, Vec<Arc<MempoolTweak>>)>| {
            got.map(|(through, txs)| {
                (through, txs.iter().map(|t| t.txid.to_byte_array()[0]).collect::<Vec<u8>>())
            })
        };
        let never = || -> (u64, Vec<Arc<MempoolTweak>>) { panic!("no gap, no record") };
        let (tx_news, mut news) = broadcast::channel(4);
        for (seq, txs) in [(1, &[1u8, 2][..]), (2, &[3]), (3, &[4, 5])] {
            tx_news.send(batch(seq, txs)).ok().unwrap();
        }
        // Three batches ready: one check of all of them.
        let first = news.try_recv().map_err(|_| broadcast::error::RecvError::Closed);
        assert_eq!(ids(news_ready(&mut news, first, 0, never).ok().unwrap()), Some((3, vec![1, 2, 3, 4, 5])));
        // Batches a record covered (through 5) are skipped, the next one taken.
        for (seq, txs) in [(4, &[6u8][..]), (5, &[7]), (6, &[8])] {
            tx_news.send(batch(seq, txs)).ok().unwrap();
        }
        let first = news.try_recv().map_err(|_| broadcast::error::RecvError::Closed);
        assert_eq!(ids(news_ready(&mut news, first, 5, never).ok().unwrap()), Some((6, vec![8])));
        tx_news.send(batch(7, &[9])).ok().unwrap();
        let first = news.try_recv().map_err(|_| broadcast::error::RecvError::Closed);
        assert_eq!(ids(news_ready(&mut news, first, 7, never).ok().unwrap()), None, "all covered");
        // A gap while gathering: the whole record instead.
        tx_news.send(batch(8, &[10])).ok().unwrap();
        let first = news.try_recv().map_err(|_| broadcast::error::RecvError::Closed);
        for seq in 9..=14 {
            tx_news.send(batch(seq, &[seq as u8 + 2])).ok().unwrap();
        }
        let record = || (14, vec![tx(10), tx(16)]);
        assert_eq!(ids(news_ready(&mut news, first, 7, record).ok().unwrap()), Some((14, vec![10, 16])));
        // Gathering ends once a check holds MEMPOOL_BATCH transactions; the rest is the next.
        let (tx_news, mut news) = broadcast::channel(4);
        let big: Vec<u8> = (1..=250).collect();
        for seq in 1..=3 {
            tx_news.send(batch(seq, &big)).ok().unwrap();
        }
        let first = news.try_recv().map_err(|_| broadcast::error::RecvError::Closed);
        let (through, txs) = news_ready(&mut news, first, 0, never).ok().unwrap().unwrap();
        assert_eq!((through, txs.len()), (2, 2 * 250));
        assert_eq!(news.try_recv().unwrap().seq, 3);
    }

    #[test]
    fn mempool_sends_are_sent_once_through_blocks_and_reorgs() {
        let (a, b, c) =
            (Txid::from_byte_array([1; 32]), Txid::from_byte_array([2; 32]), Txid::from_byte_array([3; 32]));
        let mut sent = Sent::default();
        sent.add_from_mempool(a);
        sent.add_from_mempool(b);
        let mempool: HashSet<Txid> = [a].into();
        sent.prune(|t| mempool.contains(t), 10);
        assert!(sent.contains(&b), "b gone once: kept, so its block's scan can still skip it");
        sent.prune(|t| mempool.contains(t), 10);
        assert!(sent.contains(&a) && !sent.contains(&b));
        // a is mined at 11: not sent again; a reorg puts it back in the mempool (still known,
        // so not sent from there) and mines it at 12: not sent again either.
        assert!(!sent.new_in_block(&a, 11));
        sent.prune(|_| false, 11);
        assert!(sent.contains(&a));
        assert!(!sent.new_in_block(&a, 12));
        // A transaction first seen in a block is sent (and sent again after a reorg, as the
        // rescan from the fork sends every block's).
        assert!(sent.new_in_block(&c, 12));
        assert!(sent.new_in_block(&c, 12));
        // Forgotten once deeper than a reorg the indexer follows.
        sent.prune(|_| false, 12 + MAX_SEEN as Height - 1);
        assert!(sent.contains(&a));
        sent.prune(|_| false, 12 + MAX_SEEN as Height);
        assert!(!sent.contains(&a));
    }
}
