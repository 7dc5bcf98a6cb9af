//! Catching up with the indexer: the standby index instance (see `state`) is brought up to
//! date once its last reader is gone, swapped in, and the new tip announced.
//!
//! A reorg reaches the index block by block (the indexer unwinds one block per write, then
//! applies the new branch): shown as it lands, clients would see the tip fall back and scripts
//! lose their history for a moment, then regain it. So a tip below the one served is held back
//! for up to `REORG_GRACE`, while the standby keeps catching up: once the index is back at the
//! height served (the new branch in), or the grace is over (a chain that truly shrank: an
//! `invalidateblock` with no other branch), it is shown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use blkindex_shared::query::IndexReader;

use crate::state::{State, Task, Tip};

/// Follows the indexer with the standby instance: every `every`, or sooner when woken, waits
/// for its last reader to finish, catches it up with the primary, and swaps it in when it shows
/// a different tip; then announces the new tip.
pub async fn run(state: Arc<State>, standby: IndexReader, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut standby = Arc::new(standby);
    // Since when the standby has shown a tip below the one served.
    let mut lower_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.woken(Task::CatchUp) => {}
        }
        // Readers of the standby are requests that started before the last swap: their work is
        // bounded (history rows, reply bytes), so is this wait; a long one is worth knowing of.
        let waiting = Instant::now();
        while Arc::strong_count(&standby) > 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if waiting.elapsed() > SLOW_READER {
            warn!(ms = waiting.elapsed().as_millis() as u64, "catch-up waited for a slow request");
        }
        let hold_lower = lower_since.is_none_or(|t| t.elapsed() < REORG_GRACE);
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || -> (Arc<IndexReader>, Result<Progress>) {
            let caught_up = (|| {
                let index = Arc::get_mut(&mut standby).expect("no reader holds the standby");
                index.catch_up()?;
                let tip = Tip::of(index);
                if tip == s.tip() {
                    // The indexer's tweak pass (after a bulk pass) moves no tip: what it has done
                    // is swapped in by itself, so that scans waiting for it go on.
                    if index.tweaks_pending()? == s.index().tweaks_pending()? {
                        return Ok(Progress::Same);
                    }
                    standby = s.swap_index(standby.clone());
                    return Ok(Progress::Tweaks);
                }
                let height = |t: Option<Tip>| t.map(|t| t.height);
                if height(tip) < height(s.tip()) && hold_lower {
                    return Ok(Progress::Lower);
                }
                standby = s.swap_index(standby.clone());
                Ok(Progress::New(tip))
            })();
            (standby, caught_up)
        })
        .await;
        let (back, result) = match result {
            Ok(r) => r,
            Err(e) => panic!("catch-up task failed: {e}"),
        };
        standby = back;
        if result.is_ok() {
            state.caught_up();
        }
        match result {
            Ok(Progress::New(tip)) => {
                lower_since = None;
                if let Some(tip) = tip {
                    info!(height = tip.height, hash = %tip.header.block_hash(), "new tip");
                    state.announce_tip(tip);
                }
                // Mempool transactions the new blocks mined can now be let go.
                state.wake(Task::Mempool);
            }
            Ok(Progress::Lower) => {
                if lower_since.is_none() {
                    info!("the index fell back (a reorg being applied): holding the tip served");
                    lower_since = Some(Instant::now());
                }
                // Look again soon: the new branch's blocks follow the unwinding at once.
                state.wake(Task::CatchUp);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Progress::Same | Progress::Tweaks) => lower_since = None,
            Err(e) => warn!("catching up with the indexer failed: {e:#}"),
        }
    }
}

/// How long a tip below the one served is held back (see the module's comment).
const REORG_GRACE: Duration = Duration::from_secs(5);
/// A wait for the standby's readers longer than this is logged.
const SLOW_READER: Duration = Duration::from_secs(1);

/// What a catch-up found.
enum Progress {
    /// The tip served is still the index's.
    Same,
    /// A tip below the one served, held back.
    Lower,
    /// Swapped in (None: the index is empty now).
    New(Option<Tip>),
    /// Swapped in, the same tip with more silent-payment tweaks computed.
    Tweaks,
}
