//! The tweak pass: the silent-payment tweaks of the blocks the bulk pass indexed, computed after
//! the rest of their rows are written.
//!
//! A tweak (`input_hash·A`) costs a square root per input key and a point multiplication, about
//! 30 µs of CPU, where the rest of a transaction's rows cost about 3: computed in the bulk pass,
//! they made it up to ten times longer on a chain dense in taproot. So the bulk pass keeps what
//! each candidate's tweak is made of (`cf::TWEAK_INPUTS`, no curve arithmetic), the index serves
//! everything else as soon as it is written, and this pass turns those rows into `tweak` rows,
//! in height order, beside the follower (on mainnet it takes hours, and the tip must not wait).
//! Each of its batches puts a run of blocks' `tweak` rows and deletes their `tweakinputs` rows in
//! one write, so a height's tweaks are complete exactly when it has no `tweakinputs` row; the
//! server serves no tweaks from the first such row to the last (`IndexReader::tweaks_pending`),
//! and a killed pass resumes from the first.
//!
//! The follower writes rows of the same heights only when it undoes blocks (a reorg reaching
//! into heights the pass has not done yet): it deletes their `tweak` and `tweakinputs` rows.
//! The pass computes a batch from the rows as it read them, then, holding [`PENDING`] (which
//! the follower holds for its undo's write), keeps only the heights whose `tweakinputs` row is
//! still the one it read: a block undone meanwhile gets no tweaks from its old transactions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use rayon::prelude::*;
use rocksdb::{IteratorMode, WriteBatch};
use tracing::info;

use blkindex_shared::schema::{self, cf, Height, TweakInputsRow};
use blkindex_shared::service;
use blkindex_shared::store::Store;

use crate::progress::Progress;

/// Bytes of `tweakinputs` rows per write: about 13,000 candidates on mainnet, half a second of
/// CPU per core, so a kill loses little and the server sees the tweaks advance steadily.
const BATCH_BYTES: usize = 4 << 20;

/// Bytes of `tweakinputs` rows deleted between compactions of what the pass has done: their files
/// are dropped as it goes, so the disk holds the pending rows or their tweaks, not both.
const COMPACT_BYTES: usize = 256 << 20;

/// Held by the pass from checking a batch's rows to writing it, and by the follower for the write
/// that undoes blocks: the two never interleave there.
pub(crate) static PENDING: Mutex<()> = Mutex::new(());

/// Computes every pending tweak (none pending: nothing to do) and prints what it did; stops
/// between batches once `stop` is set (the rest is done at the next start).
pub fn run(store: &Store, progress: &Progress, stop: Option<&AtomicBool>) -> Result<()> {
    run_in(store, progress, BATCH_BYTES, COMPACT_BYTES, stop)
}

fn run_in(
    store: &Store,
    progress: &Progress,
    batch_bytes: usize,
    compact_bytes: usize,
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let family = store.cf(cf::TWEAK_INPUTS);
    let height_of = |k: &[u8]| -> Result<Height> {
        Ok(Height::from_be_bytes(k.try_into().context("bad tweak inputs key")?))
    };
    let first = match store.db().iterator_cf(family, IteratorMode::Start).next().transpose()? {
        Some((k, _)) => height_of(&k)?,
        None => {
            info!("tweak pass: done (nothing pending)");
            return Ok(());
        }
    };
    let last = match store.db().iterator_cf(family, IteratorMode::End).next().transpose()? {
        Some((k, _)) => height_of(&k)?,
        None => return Ok(()),
    };
    let sst: u64 =
        store.sst_bytes()?.into_iter().filter(|(name, _)| *name == cf::TWEAK_INPUTS).map(|(_, b)| b).sum();
    info!(first, last, rows = %HumanBytes(sst), "tweak pass: computing the silent-payment tweaks");
    service::status(&format!("computing the silent-payment tweaks of heights {first} to {last}"));
    let t0 = Instant::now();
    progress.start("tweaks", sst, (last - first + 1) as u64, "blocks");
    // Heights below `covered` are done (the progress counts heights, blocks without candidates
    // included).
    let (mut blocks, mut covered) = (0u64, first);
    let mut rows: Vec<(Height, Box<[u8]>)> = Vec::new();
    let (mut bytes, mut since_compaction) = (0, 0);
    let mut it = store.db().iterator_cf(family, IteratorMode::Start);
    loop {
        let next = it.next().transpose()?;
        if let Some((k, v)) = next.as_ref() {
            bytes += v.len();
            rows.push((height_of(k)?, v.clone()));
            if bytes < batch_bytes {
                continue;
            }
        }
        if rows.is_empty() || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let computed: Vec<Option<Vec<u8>>> = rows
            .par_iter()
            .map(|(h, v)| {
                TweakInputsRow::computed(v).with_context(|| format!("the tweak inputs of block {h}"))
            })
            .collect::<Result<_>>()?;
        crate::bulk::pausepoint("tweaks");
        let held = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        // The rows as they are now: one the follower deleted (its block undone) is left out.
        let now = store.db().multi_get_cf(rows.iter().map(|(h, _)| (family, schema::height_key(*h))));
        let mut batch = WriteBatch::default();
        for (((h, read), row), now) in rows.iter().zip(&computed).zip(now) {
            if now?.as_deref() != Some(&read[..]) {
                info!(height = h, "tweak pass: a block undone meanwhile is left out");
                continue;
            }
            let k = schema::height_key(*h);
            if let Some(row) = row {
                batch.put_cf(store.cf(cf::TWEAK), k, row);
            }
            batch.delete_cf(family, k);
        }
        crate::bulk::failpoint("tweaks");
        store.write_sync(batch)?;
        drop(held);
        let to = rows.last().unwrap().0 + 1;
        blocks += rows.len() as u64;
        progress.inc(bytes as u64, (to - covered) as u64);
        covered = to;
        since_compaction += bytes;
        if since_compaction >= compact_bytes {
            // A new iterator: the old one pins the files the compaction makes obsolete.
            let from = schema::height_key(to);
            drop(it);
            store.db().compact_range_cf(family, None::<&[u8]>, Some(&from[..]));
            it = store.db().iterator_cf(family, IteratorMode::From(&from, rocksdb::Direction::Forward));
            since_compaction = 0;
        }
        (rows, bytes) = (Vec::new(), 0);
        if next.is_none() {
            break;
        }
    }
    progress.finish();
    if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        info!(next = covered, "tweak pass stopped; it resumes from there at the next start");
        return Ok(());
    }
    store.flush()?;
    // Every `tweakinputs` row is deleted: a compaction of the family drops their files now (it
    // writes nothing), rather than whenever RocksDB would.
    store.db().compact_range_cf(family, None::<&[u8]>, None::<&[u8]>);
    let secs = t0.elapsed().as_secs_f64();
    let tweak_bytes: u64 =
        store.sst_bytes()?.into_iter().filter(|(name, _)| *name == cf::TWEAK).map(|(_, b)| b).sum();
    println!(
        "silent-payment tweaks of {blocks} blocks (heights {first} to {last}) computed in {secs:.1}s; tweak family {}",
        HumanBytes(tweak_bytes)
    );
    info!(blocks, secs = format!("{secs:.1}"), "tweak pass: done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use blkindex_shared::schema::{PendingTweak, TweakRow};
    use blkindex_shared::silent::{TweakInputs, TweakedTx};
    use blkindex_shared::store::Mode;

    use super::*;
    use crate::progress::ProgressMode;
    use crate::rows::test_keys::{key, NO_POINT};

    /// Many small batches with compactions between them (and the iterator made again after
    /// each) give what one batch gives: every block's `tweak` row, computed as `TweakInputs`
    /// computes it, blocks whose candidates are none eligible left out, no `tweakinputs` row left.
    #[test]
    fn batches_and_compactions_between_them_change_nothing() {
        let blocks: Vec<(Height, Vec<PendingTweak>)> = (0..300u32)
            .filter(|h| h % 7 != 3)
            .map(|h| {
                let txs = (0..3u32)
                    .map(|i| PendingTweak {
                        txnum: h * 10 + i,
                        inputs: TweakInputs {
                            outpoint: [(h + i) as u8; 36],
                            keys: match h % 5 {
                                0 => vec![NO_POINT],
                                _ => vec![key((h * 10 + i) as u64), key(1000 + i as u64)],
                            },
                        },
                        outputs: vec![[i as u8; 8]],
                    })
                    .collect();
                (h, txs)
            })
            .collect();
        let want: Vec<(Height, Vec<TweakedTx>)> = blocks
            .iter()
            .filter_map(|(h, txs)| {
                let done: Vec<TweakedTx> = txs
                    .iter()
                    .filter_map(|p| {
                        Some(TweakedTx {
                            txnum: p.txnum,
                            tweak: p.inputs.tweak()?,
                            outputs: p.outputs.clone(),
                        })
                    })
                    .collect();
                (!done.is_empty()).then_some((*h, done))
            })
            .collect();
        for (batch, compact) in [(usize::MAX, usize::MAX), (1, 1), (700, 3000)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), Mode::Follow).unwrap();
            let mut b = WriteBatch::default();
            for (h, txs) in &blocks {
                b.put_cf(store.cf(cf::TWEAK_INPUTS), schema::height_key(*h), TweakInputsRow::encode(txs));
            }
            store.write_sync(b).unwrap();
            run_in(&store, &Progress::new(ProgressMode::None), batch, compact, None).unwrap();
            let got: Vec<(Height, Vec<TweakedTx>)> = store
                .db()
                .iterator_cf(store.cf(cf::TWEAK), IteratorMode::Start)
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (Height::from_be_bytes(k[..].try_into().unwrap()), TweakRow::decode(&v).unwrap())
                })
                .collect();
            assert_eq!(got, want, "batches of {batch} bytes, compactions every {compact}");
            assert!(store.db().iterator_cf(store.cf(cf::TWEAK_INPUTS), IteratorMode::Start).next().is_none());
        }
    }
}
