//! Catching up with the indexer: the standby index instance (see `state`) is brought up to
//! date once its last reader is gone, swapped in, and the new tip announced.

use std::sync::Arc;
use std::time::Duration;

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
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = state.woken(Task::CatchUp) => {}
        }
        // Readers of the standby are requests that started before the last swap.
        while Arc::strong_count(&standby) > 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || -> (Arc<IndexReader>, Result<Option<Tip>>) {
            let caught_up = (|| {
                let index = Arc::get_mut(&mut standby).expect("no reader holds the standby");
                index.catch_up()?;
                let tip = Tip::of(index);
                if tip == s.tip() {
                    return Ok(None);
                }
                standby = s.swap_index(standby.clone());
                Ok(tip)
            })();
            (standby, caught_up)
        })
        .await;
        let (back, result) = match result {
            Ok(r) => r,
            Err(e) => panic!("catch-up task failed: {e}"),
        };
        standby = back;
        match result {
            Ok(Some(tip)) => {
                info!(height = tip.height, hash = %tip.header.block_hash(), "new tip");
                state.announce_tip(tip);
                // Mempool transactions the new blocks mined can now be let go.
                state.wake(Task::Mempool);
            }
            Ok(None) => {}
            Err(e) => warn!("catching up with the indexer failed: {e:#}"),
        }
    }
}
