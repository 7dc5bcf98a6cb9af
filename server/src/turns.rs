//! The scan threads' turns (`--sp-scan-threads`), given out by urgency: a semaphore whose waiters
//! are served the most urgent first, in order of asking within one urgency. tokio's semaphore is
//! first come, first served, so a new block's batch waited behind every scan's queued chunk of
//! past blocks and every session's mempool check (seconds, on one thread, with a thousand
//! sessions), where every wallet waits for the block.
//!
//! A returned turn goes straight to the waiter it is for (it is sent to it), so that no task
//! asking meanwhile takes it first; one sent to a waiter that has stopped waiting goes on to the
//! next. Work in order waits for as long as a new block's is queued: blocks are rare and their
//! batches bounded by `--sp-max-live`. The mempool's checks and the scans of past blocks share one
//! order, so that neither can starve the other (a mempool busier than the threads would starve
//! every new subscription, were it first).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What a turn is for, the most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// A new block's batch for the live subscriptions.
    NewBlock = 0,
    /// The rest, in order of asking: the mempool's new transactions (their tweaks, the live
    /// subscriptions' checks of them), the scans of past blocks, and a live scan's rescan of
    /// several blocks (after a reorg, or after the index moved many at once), which is one
    /// scan's alone and not bounded as a batch is.
    InOrder = 1,
}

const URGENCIES: usize = 2;

pub struct Turns {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    free: usize,
    waiting: [VecDeque<oneshot::Sender<Turn>>; URGENCIES],
}

/// One turn on a scan thread, held while the work runs; returned when dropped.
pub struct Turn {
    /// None once defused: a turn that could not be handed over is not returned twice.
    turns: Option<Arc<Turns>>,
}

impl Turns {
    pub fn new(threads: usize) -> Arc<Turns> {
        Arc::new(Turns { inner: Mutex::new(Inner { free: threads, ..Inner::default() }) })
    }

    /// A turn, once none more urgent and none of the same urgency asked before is waiting.
    pub async fn take(self: &Arc<Self>, urgency: Urgency) -> Turn {
        let wait = {
            let mut inner = self.inner.lock().unwrap();
            // A free turn means no one waits: returned turns go to waiters first.
            if inner.free > 0 {
                inner.free -= 1;
                return Turn { turns: Some(self.clone()) };
            }
            let (tx, rx) = oneshot::channel();
            inner.waiting[urgency as usize].push_back(tx);
            rx
        };
        // Dropped while waiting (its task ended): a turn sent meanwhile is dropped with the
        // receiver, and so returned.
        wait.await.expect("a waiter's sender is only dropped by sending a turn")
    }

    /// A turn now, if one is free (no one is waiting then).
    pub fn try_take(self: &Arc<Self>) -> Option<Turn> {
        let mut inner = self.inner.lock().unwrap();
        (inner.free > 0).then(|| {
            inner.free -= 1;
            Turn { turns: Some(self.clone()) }
        })
    }

    /// Turns free now, and waiters of each urgency.
    #[cfg(test)]
    fn counts(&self) -> (usize, [usize; URGENCIES]) {
        let inner = self.inner.lock().unwrap();
        (inner.free, std::array::from_fn(|u| inner.waiting[u].len()))
    }

    fn give_back(self: Arc<Self>) {
        loop {
            let next = {
                let mut inner = self.inner.lock().unwrap();
                match inner.waiting.iter_mut().find_map(|q| q.pop_front()) {
                    Some(tx) => tx,
                    None => {
                        inner.free += 1;
                        return;
                    }
                }
            };
            // Sent outside the lock: a turn dropped here would take it again.
            match next.send(Turn { turns: Some(self.clone()) }) {
                Ok(()) => return,
                Err(mut unsent) => unsent.turns = None,
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(turns) = self.turns.take() {
            turns.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts a task that takes a turn at `urgency`, tells `order` it got it, and holds it until
    /// told; waits until it is queued.
    async fn waiter(
        turns: &Arc<Turns>,
        urgency: Urgency,
        name: &'static str,
        order: &tokio::sync::mpsc::UnboundedSender<&'static str>,
    ) -> tokio::task::JoinHandle<()> {
        let (turns2, order) = (turns.clone(), order.clone());
        let before: usize = turns.counts().1.iter().sum();
        let task = tokio::spawn(async move {
            let _turn = turns2.take(urgency).await;
            order.send(name).unwrap();
        });
        while turns.counts().1.iter().sum::<usize>() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn turns_go_to_the_most_urgent_first_and_in_order_within_one() {
        let turns = Turns::new(1);
        let held = turns.take(Urgency::InOrder).await;
        assert!(turns.try_take().is_none(), "the one turn is held");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (u, name) in [
            (Urgency::InOrder, "in order 1"),
            (Urgency::InOrder, "in order 2"),
            (Urgency::NewBlock, "block 1"),
            (Urgency::InOrder, "in order 3"),
            (Urgency::NewBlock, "block 2"),
        ] {
            tasks.push(waiter(&turns, u, name, &tx).await);
        }
        assert_eq!(turns.counts(), (0, [2, 3]));
        drop(held);
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(rx.recv().await.unwrap());
        }
        assert_eq!(got, ["block 1", "block 2", "in order 1", "in order 2", "in order 3"]);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(turns.counts(), (1, [0, 0]), "every turn came back");
    }

    #[tokio::test]
    async fn a_waiter_that_stops_waiting_loses_no_turn() {
        let turns = Turns::new(2);
        let (a, b) = (turns.take(Urgency::NewBlock).await, turns.take(Urgency::NewBlock).await);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gone = waiter(&turns, Urgency::NewBlock, "gone", &tx).await;
        let stays = waiter(&turns, Urgency::InOrder, "stays", &tx).await;
        // Stopped before it is sent a turn: the turn goes to the next.
        gone.abort();
        let _ = gone.await;
        drop(a);
        assert_eq!(rx.recv().await, Some("stays"));
        stays.await.unwrap();
        // Sent a turn, then stopped before it ran: the turn comes back.
        let c = turns.take(Urgency::InOrder).await;
        let (turns2, tx2) = (turns.clone(), tx.clone());
        let late = tokio::spawn(async move {
            let _t = turns2.take(Urgency::NewBlock).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx2.send("never").unwrap();
        });
        while turns.counts().1[0] == 0 {
            tokio::task::yield_now().await;
        }
        drop(b);
        late.abort();
        let _ = late.await;
        drop(c);
        assert_eq!(turns.counts(), (2, [0, 0]), "every turn came back");
        assert!(turns.try_take().is_some());
    }
}
