//! What waits to be written to clients, bounded in bytes: each session has a share, and all
//! sessions together a total. A message holds its bytes of both from the moment it is queued
//! until the writer has handed it to the socket.
//!
//! The reply being built counts too: a session starts a request only once its queue is down to
//! the low-water mark (`ready`), and no reply is longer than the share less that mark, so what
//! is queued plus what is being built never exceeds the share, whatever the client asks for
//! and however little it reads. Waiting for the queue to drain is how a slow reader is slowed
//! (it sends no more requests meanwhile, so TCP holds the client back, not our memory); one
//! whose queue does not drain within the send timeout is disconnected. A notification never
//! waits: a session whose queue cannot take one now is behind for good and is closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What a queued message is charged beyond its text: the channel's node and the newline.
const OVERHEAD: usize = 64;
/// A session starts a request once its queue holds at most this (or a quarter of its share).
const LOW_WATER: usize = 1 << 20;

/// The bytes all sessions may have queued, shared by every `Outbox`.
#[derive(Clone)]
pub struct Budget {
    total: Arc<Semaphore>,
    total_bytes: usize,
    per_session: usize,
    wait: Duration,
}

impl Budget {
    /// `per_session` bytes for each session, `total` for all; replies wait up to `wait` for room.
    pub fn new(per_session: usize, total: usize, wait: Duration) -> Budget {
        let total = total.min(Semaphore::MAX_PERMITS);
        Budget { total: Arc::new(Semaphore::new(total)), total_bytes: total, per_session, wait }
    }

    /// What a session's queue may hold when it starts a request.
    fn low_water(&self) -> usize {
        LOW_WATER.min(self.per_session / 4)
    }

    /// The longest message (and reply) a session can queue.
    pub fn max_message(&self) -> usize {
        self.per_session.min(self.total_bytes) - self.low_water() - OVERHEAD
    }

    /// Bytes queued now, over all sessions.
    pub fn queued(&self) -> usize {
        self.total_bytes - self.total.available_permits()
    }

    /// A session's queue: the sending half for the session, the receiving half for its writer.
    pub fn outbox(&self) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Arc::new(Semaphore::new(self.per_session));
        let why = Arc::new(Mutex::new(None));
        (Outbox { tx, session, budget: self.clone(), why: why.clone() }, Inbox { rx, why })
    }
}

/// A message, or a piece of one (a batch's replies go one by one), with the bytes it holds;
/// dropping it (once written) frees them.
pub struct Queued {
    pub text: String,
    /// The last piece of its message (the writer ends the line, or sends the WebSocket frame).
    pub end: bool,
    _session: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Longer than a session may ever queue.
    TooLong(usize),
    /// No room came within the wait (or, for a notification, there was none now).
    Full,
    /// The writer is gone (the connection closed).
    Closed,
}

pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    session: Arc<Semaphore>,
    budget: Budget,
    /// Why the writer stopped, once it has.
    why: Arc<Mutex<Option<&'static str>>>,
}

/// The writer's end of a session's queue.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Queued>,
    why: Arc<Mutex<Option<&'static str>>>,
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }

    /// The writer stops: the session learns why at its next message.
    pub fn stop(self, why: &'static str) {
        *self.why.lock().unwrap() = Some(why);
    }
}

impl Outbox {
    /// Waits (up to the send timeout) until the queue is down to the low-water mark: then a
    /// reply of up to `max_message` bytes, built next, fits.
    pub async fn ready(&self) -> Result<(), Refused> {
        let room = self.budget.per_session - self.budget.low_water();
        let wait = self.session.acquire_many(room as u32);
        match tokio::time::timeout(self.budget.wait, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Refused::Closed),
            Err(_) => Err(Refused::Full),
        }
    }

    /// Queues a reply (or with `end` false, a piece of one), waiting up to the send timeout for
    /// room.
    pub async fn send(&self, text: String, end: bool) -> Result<(), Refused> {
        let n = self.charge(&text)?;
        let acquire = async {
            let session = self.session.clone().acquire_many_owned(n).await;
            let total = self.budget.total.clone().acquire_many_owned(n).await;
            (session, total)
        };
        match tokio::time::timeout(self.budget.wait, acquire).await {
            Ok((Ok(session), Ok(total))) => self.push(text, end, session, total),
            Ok(_) => Err(Refused::Closed),
            Err(_) => Err(Refused::Full),
        }
    }

    /// Queues a message if there is room now.
    pub fn try_send(&self, text: String) -> Result<(), Refused> {
        let n = self.charge(&text)?;
        let session = self.session.clone().try_acquire_many_owned(n).map_err(|_| Refused::Full)?;
        let total = self.budget.total.clone().try_acquire_many_owned(n).map_err(|_| Refused::Full)?;
        self.push(text, true, session, total)
    }

    /// The longest message this session can queue.
    pub fn max_message(&self) -> usize {
        self.budget.max_message()
    }

    /// Why the writer stopped (a send was `Closed`).
    pub fn closed_why(&self) -> &'static str {
        self.why.lock().unwrap().unwrap_or("connection closed")
    }

    /// Bytes this session has queued and not yet written.
    pub fn queued(&self) -> usize {
        self.budget.per_session - self.session.available_permits()
    }

    fn charge(&self, text: &str) -> Result<u32, Refused> {
        if text.len() > self.max_message() {
            return Err(Refused::TooLong(text.len()));
        }
        Ok((text.len() + OVERHEAD) as u32)
    }

    fn push(
        &self,
        text: String,
        end: bool,
        s: OwnedSemaphorePermit,
        t: OwnedSemaphorePermit,
    ) -> Result<(), Refused> {
        self.tx.send(Queued { text, end, _session: s, _total: t }).map_err(|_| Refused::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_are_held_until_written_per_session_and_in_all() {
        // A share of 1000 bytes: low water 250, so replies up to 1000 - 250 - 64 = 686 bytes.
        let budget = Budget::new(1000, 1500, Duration::from_millis(50));
        let (a, mut a_rx) = budget.outbox();
        let (b, _b_rx) = budget.outbox();
        assert_eq!(a.max_message(), 686);
        assert_eq!(a.try_send("z".repeat(687)), Err(Refused::TooLong(687)));
        assert_eq!(a.ready().await, Ok(()));
        assert_eq!(a.send("x".repeat(686), true).await, Ok(()));
        assert_eq!(a.queued(), 750);
        // Over the low-water mark: no new request starts, and a notification finds no room.
        assert_eq!(a.ready().await, Err(Refused::Full), "waits, then gives up");
        assert_eq!(a.try_send("y".repeat(200)), Err(Refused::Full));
        assert_eq!(a.try_send("y".repeat(186)), Ok(()), "exactly the share");
        assert_eq!(a.queued(), 1000);
        // The total holds 500 more bytes: b gets them, then no more, though its share has room.
        assert_eq!(b.send("w".repeat(436), true).await, Ok(()));
        assert_eq!(budget.queued(), 1500);
        assert_eq!(b.try_send("v".into()), Err(Refused::Full));
        // Written (dropped), a's messages free their bytes for the waiting request.
        let waiting = tokio::spawn(async move {
            let r = a.ready().await;
            (a, r)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = a_rx.recv().await.unwrap();
        assert!(first.end);
        drop(first);
        drop(a_rx.recv().await.unwrap());
        let (a, r) = waiting.await.unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(a.queued(), 0);
        assert_eq!(budget.queued(), 500);
        a_rx.stop("the client is not reading");
        assert_eq!(a.try_send("t".into()), Err(Refused::Closed));
        assert_eq!(a.closed_why(), "the client is not reading");
    }
}
