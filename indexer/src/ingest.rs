//! Writing a batch's rows: one SST file per column family (the bucket families cut into parts at
//! bucket boundaries, written in parallel), then ingested, with `meta/pending` naming the batch
//! before and `meta/tip` moving past it after, so a crash in between is redone by recovery. In a
//! staged load (`stage`) a batch ingests only its height-keyed rows here, and each merged key range
//! of bucket rows comes through [`ingest_lists`] at the end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bitcoin::BlockHash;
use rayon::prelude::*;
use rocksdb::{IngestExternalFileOptions, SstFileWriter};

use std::collections::HashSet;

use blkindex_shared::bucket::{self, Long};
use blkindex_shared::schema::{self, cf, meta, Height, Pending, Prefix, RowKey};
use blkindex_shared::store::{cf_options, Store};

/// The rows of consecutive blocks `first..=last`, sorted and deduplicated.
pub struct Batch {
    pub first: Height,
    pub last: Height,
    pub last_hash: BlockHash,
    pub headers: Vec<(Height, [u8; schema::HEADER_ROW_LEN])>,
    pub txpos: Vec<(Height, Vec<u8>)>,
    /// The silent-payment rows of the blocks that have one (keyed by height, ingested as header
    /// rows are, with every batch or checkpoint): `tweak` rows, and `tweakinputs` rows for the
    /// tweak pass.
    pub tweak: Vec<(Height, Vec<u8>)>,
    pub tweak_inputs: Vec<(Height, Vec<u8>)>,
    pub txid: Vec<RowKey>,
    pub script: Vec<RowKey>,
    pub bytes: u64,
    pub txs: u64,
    /// Seconds the batch took to make: undo records matched, rows made, rows sorted.
    pub secs: [f64; 3],
}

/// How a batch's bucket rows are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lists {
    /// Plain values: the first and only batch into an empty index.
    Plain,
    /// Merge operands: other batches, or the index, hold lists of the same buckets.
    Merge,
    /// Not here: the caller stages them, and records the batch itself (`meta/staged`).
    Staged,
}

/// The prefixes of each bucket family whose lists are in the `long` family, as the index holds
/// them when a load starts (merge operands send those prefixes' rows there).
#[derive(Default)]
pub struct LongSets {
    txid: HashSet<Prefix>,
    script: HashSet<Prefix>,
}

impl LongSets {
    pub fn load(store: &Store) -> Result<Self> {
        Ok(LongSets { txid: store.long_prefixes(cf::TXID)?, script: store.long_prefixes(cf::SCRIPT)? })
    }

    pub fn of(&self, family: &str) -> &HashSet<Prefix> {
        match family {
            cf::TXID => &self.txid,
            _ => &self.script,
        }
    }

    /// How a writer of `family` sends lists to `long`: whole buckets promote lists over
    /// `threshold` bytes, operands follow the known ones.
    fn rule(&self, family: &str, merge: bool, threshold: usize) -> Long<'_> {
        match merge {
            true => Long::Known(self.of(family)),
            false => Long::Promote(threshold),
        }
    }
}

/// Writes a batch's rows as SST files and ingests them, the bucket rows as `lists` says. The
/// files are written in parallel: each family on its own, and the bucket families cut into parts
/// at bucket boundaries (parts do not overlap, so they are ingested together).
pub fn ingest(store: &Store, batch: &Batch, tmp: &Path, lists: Lists, long: &LongSets) -> Result<()> {
    let path = |name: &str, part: usize| tmp.join(format!("{}-{name}-{part}.sst", batch.first));
    let parts = rayon::current_num_threads().max(1);
    let width = store.bucket_width()?;
    let merge = lists == Lists::Merge;
    let mut jobs: Vec<(&str, usize, Job)> = vec![
        (cf::HEADERS, 0, Job::Headers),
        (cf::TXPOS, 0, Job::Txpos),
        (cf::TWEAK, 0, Job::Tweak),
        (cf::TWEAK_INPUTS, 0, Job::TweakInputs),
    ];
    let bucket_rows = match lists {
        Lists::Staged => vec![],
        _ => vec![(cf::TXID, &batch.txid), (cf::SCRIPT, &batch.script)],
    };
    for (name, rows) in bucket_rows {
        for (part, rows) in split_at_buckets(rows, parts, width).into_iter().enumerate() {
            jobs.push((name, part, Job::Lists(rows)));
        }
    }
    let written: Vec<Vec<(&str, PathBuf)>> = jobs
        .into_par_iter()
        .map(|(name, part, job)| -> Result<Vec<(&str, PathBuf)>> {
            let file = path(name, part);
            let any = match job {
                Job::Headers => {
                    let rows = batch.headers.iter().map(|(h, v)| (schema::height_key(*h), v));
                    write_sst(name, &file, rows)?
                }
                Job::Txpos => {
                    let rows = batch.txpos.iter().map(|(h, v)| (schema::height_key(*h), v));
                    write_sst(name, &file, rows)?
                }
                Job::Tweak => {
                    let rows = batch.tweak.iter().map(|(h, v)| (schema::height_key(*h), v));
                    write_sst(name, &file, rows)?
                }
                Job::TweakInputs => {
                    let rows = batch.tweak_inputs.iter().map(|(h, v)| (schema::height_key(*h), v));
                    write_sst(name, &file, rows)?
                }
                Job::Lists(rows) => {
                    let long_file = path(&format!("{name}-long"), part);
                    let rule = long.rule(name, merge, store.long_list_bytes()?);
                    return write_bucket_sst(name, &file, &long_file, rows, width, merge, rule);
                }
            };
            Ok(if any { vec![(name, file)] } else { vec![] })
        })
        .collect::<Result<_>>()?;
    let mut ssts: Vec<(&str, Vec<PathBuf>)> = Vec::new();
    for (name, file) in written.into_iter().flatten() {
        match ssts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, files)) => files.push(file),
            None => ssts.push((name, vec![file])),
        }
    }

    let pending = Pending { first: batch.first, last: batch.last, last_hash: batch.last_hash };
    if lists != Lists::Staged {
        store.put_meta(&[(meta::PENDING, Some(&pending.encode()))])?;
    }
    for (name, files) in ssts {
        ingest_files(store, name, files)
            .with_context(|| format!("ingesting {name} rows of heights {}..={}", batch.first, batch.last))?;
    }
    if lists != Lists::Staged {
        let tip = schema::encode_tip(batch.last, &batch.last_hash);
        store.put_meta(&[(meta::TIP, Some(&tip)), (meta::PENDING, None)])?;
    }
    Ok(())
}

/// Moves SST files of family `name` into the index (files that overlap nothing go straight to
/// the bottom level).
pub fn ingest_files(store: &Store, name: &str, files: Vec<PathBuf>) -> Result<()> {
    let mut opts = IngestExternalFileOptions::default();
    opts.set_move_files(true);
    Ok(store.db().ingest_external_file_cf_opts(store.cf(name), &opts, files)?)
}

/// Writes the sorted, deduplicated rows of one key range of bucket family `name` as an SST file at
/// `path`, and its long lists at `long_path` (plain values that promote long lists into an empty
/// index, or merge operands when `merge`): the files written, with their families. The caller
/// ingests the files of several ranges together.
pub fn write_lists<'a>(
    store: &Store,
    name: &'a str,
    path: &Path,
    long_path: &Path,
    rows: &[RowKey],
    merge: bool,
    long: &LongSets,
) -> Result<Vec<(&'a str, PathBuf)>> {
    let rule = long.rule(name, merge, store.long_list_bytes()?);
    write_bucket_sst(name, path, long_path, rows, store.bucket_width()?, merge, rule)
}

/// One SST file to write.
enum Job<'a> {
    Headers,
    Txpos,
    Tweak,
    TweakInputs,
    Lists(&'a [RowKey]),
}

/// Cuts sorted rows into about `parts` pieces, never inside one bucket's rows.
fn split_at_buckets(rows: &[RowKey], parts: usize, width: usize) -> Vec<&[RowKey]> {
    let mut out = Vec::new();
    let mut rest = rows;
    for left in (1..=parts).rev() {
        if rest.is_empty() {
            break;
        }
        let mut cut = if left == 1 { rest.len() } else { rest.len() / left };
        while cut > 0 && cut < rest.len() && rest[cut][..width] == rest[cut - 1][..width] {
            cut += 1;
        }
        let (piece, tail) = rest.split_at(cut.max(1).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Writes sorted, deduplicated rows of bucket family `name` as one bucket value per key at
/// `path` and the lists `long` sends out at `long_path` (merge operands when `merge`): the files
/// that got entries, with their families.
fn write_bucket_sst<'a>(
    name: &'a str,
    path: &Path,
    long_path: &Path,
    rows: &[RowKey],
    width: usize,
    merge: bool,
    long: Long,
) -> Result<Vec<(&'a str, PathBuf)>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let opts = cf_options(name);
    let mut w = SstFileWriter::create(&opts);
    w.open(path)?;
    let long_opts = cf_options(cf::LONG);
    let mut lw: Option<SstFileWriter> = None;
    let mut any = false;
    bucket::for_each_bucket(
        rows,
        width,
        long,
        |key, value| {
            any = true;
            match merge {
                true => w.merge(key, value),
                false => w.put(key, value),
            }
        },
        |prefix, list| {
            let lw = match &mut lw {
                Some(lw) => lw,
                None => {
                    let new = SstFileWriter::create(&long_opts);
                    new.open(long_path)?;
                    lw.insert(new)
                }
            };
            let key = schema::long_key(name, prefix);
            match merge {
                true => lw.merge(key, list),
                false => lw.put(key, list),
            }
        },
    )?;
    let mut out = Vec::new();
    if any {
        w.finish()?;
        out.push((name, path.to_path_buf()));
    }
    if let Some(mut lw) = lw {
        lw.finish()?;
        out.push((cf::LONG, long_path.to_path_buf()));
    }
    Ok(out)
}

/// Writes sorted rows into an SST file for family `name` (`headers`, `txpos`: plain values);
/// false when there were no rows.
fn write_sst<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    name: &str,
    path: &Path,
    rows: impl Iterator<Item = (K, V)>,
) -> Result<bool> {
    let opts = cf_options(name);
    let mut w = SstFileWriter::create(&opts);
    w.open(path)?;
    let mut any = false;
    for (k, v) in rows {
        w.put(k, v)?;
        any = true;
    }
    if any {
        w.finish()?;
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bucket: u16, rest: u8) -> RowKey {
        let mut k = [rest; schema::KEY_LEN];
        k[..2].copy_from_slice(&bucket.to_be_bytes());
        k
    }

    /// Every row lands in exactly one part, in order, and no bucket is cut between two parts.
    fn check(rows: &[RowKey], parts: usize, width: usize) -> Vec<usize> {
        let cut = split_at_buckets(rows, parts, width);
        assert_eq!(cut.concat(), rows, "parts lose or reorder rows");
        assert!(cut.len() <= parts && cut.iter().all(|p| !p.is_empty()));
        for pair in cut.windows(2) {
            assert_ne!(pair[0].last().unwrap()[..width], pair[1][0][..width], "a bucket cut in two");
        }
        cut.iter().map(|p| p.len()).collect()
    }

    #[test]
    fn split_at_buckets_never_cuts_a_bucket() {
        assert!(split_at_buckets(&[], 4, 2).is_empty());
        let spread: Vec<RowKey> = (0..100u16).map(|b| row(b, 0)).collect();
        assert_eq!(check(&spread, 4, 2), vec![25, 25, 25, 25]);
        // One crowded bucket in the middle moves the cut past its end.
        let mut crowded: Vec<RowKey> = (0..10u16).map(|b| row(b, 0)).collect();
        crowded.extend((1..=50u8).map(|r| row(10, r)));
        crowded.extend((11..20u16).map(|b| row(b, 0)));
        let sizes = check(&crowded, 4, 2);
        assert_eq!(sizes.iter().sum::<usize>(), crowded.len());
        assert!(sizes.contains(&0) || sizes.iter().any(|&n| n >= 50), "{sizes:?}");
        // A single bucket stays whole, whatever the number of parts.
        let one: Vec<RowKey> = (1..=9u8).map(|r| row(7, r)).collect();
        assert_eq!(check(&one, 3, 2), vec![9]);
        // More parts than rows.
        assert_eq!(check(&spread[..3], 8, 2), vec![1, 1, 1]);
    }
}
