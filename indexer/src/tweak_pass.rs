//! The tweak pass: the silent-payment tweaks of the blocks the bulk pass indexed, computed after
//! the rest of their rows are written.
//!
//! A tweak (`input_hash·A`) costs a square root per input key and a point multiplication, about
//! 30 µs of CPU, where the rest of a transaction's rows cost about 3: computed in the bulk pass,
//! they made it up to ten times longer on a chain dense in taproot. So the bulk pass keeps what
//! each candidate's tweak is made of (`cf::TWEAK_INPUTS`, no curve arithmetic), the index serves
//! everything else as soon as it is written, and this pass turns those rows into `tweak` rows,
//! in height order, before the follower starts. Each of its batches puts a run of blocks'
//! `tweak` rows and deletes their `tweakinputs` rows in one write, so a height's tweaks are
//! complete exactly when it has no `tweakinputs` row; the server scans only below the first one
//! (`IndexReader::tweaks_done_below`), and a killed pass resumes from it.

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

/// Computes every pending tweak (none pending: nothing to do) and prints what it did.
pub fn run(store: &Store, progress: &Progress) -> Result<()> {
    let family = store.cf(cf::TWEAK_INPUTS);
    let height_of = |k: &[u8]| -> Result<Height> {
        Ok(Height::from_be_bytes(k.try_into().context("bad tweak inputs key")?))
    };
    let first = match store.db().iterator_cf(family, IteratorMode::Start).next().transpose()? {
        Some((k, _)) => height_of(&k)?,
        None => return Ok(()),
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
    let mut bytes = 0;
    let mut it = store.db().iterator_cf(family, IteratorMode::Start);
    loop {
        let next = it.next().transpose()?;
        if let Some((k, v)) = next.as_ref() {
            bytes += v.len();
            rows.push((height_of(k)?, v.clone()));
            if bytes < BATCH_BYTES {
                continue;
            }
        }
        if rows.is_empty() {
            break;
        }
        let computed: Vec<Option<Vec<u8>>> = rows
            .par_iter()
            .map(|(h, v)| {
                TweakInputsRow::computed(v).with_context(|| format!("the tweak inputs of block {h}"))
            })
            .collect::<Result<_>>()?;
        let mut batch = WriteBatch::default();
        for ((h, _), row) in rows.iter().zip(&computed) {
            let k = schema::height_key(*h);
            if let Some(row) = row {
                batch.put_cf(store.cf(cf::TWEAK), k, row);
            }
            batch.delete_cf(family, k);
        }
        crate::bulk::failpoint("tweaks");
        store.write_sync(batch)?;
        let to = rows.last().unwrap().0 + 1;
        blocks += rows.len() as u64;
        progress.inc(bytes as u64, (to - covered) as u64);
        covered = to;
        (rows, bytes) = (Vec::new(), 0);
        if next.is_none() {
            break;
        }
    }
    progress.finish();
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
    Ok(())
}
