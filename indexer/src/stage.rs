//! The bucket rows of a load of many batches, staged on disk and merged once at the end.
//!
//! Ingesting every batch into RocksDB as merge operands made the load pay RocksDB's per-entry
//! cost once per bucket per batch: at mainnet's density (a batch touches a third of the buckets,
//! one or two prefixes each) a 220-batch load of the 1.1 GB bench chain wrote 74 times the entries
//! of a one-batch load, and a full compaction then folded them (3.8× the one-batch time). Here a
//! batch only appends its sorted rows, delta-coded, to one file per key range and family; at the
//! end each range is read back, sorted once and written as the final buckets (plain values into
//! an empty index: files that need no compaction), and its file is deleted. Disk use peaks at the
//! final index plus the staged rows still to merge, and memory at a few ranges' rows.
//!
//! File `<db>/bulk-stage/<family>-<range>.rows`: pieces, one per batch that had rows in the range:
//! `LEB128(row count) ‖ LEB128(base txnum)`, then per row `LEB128(prefix − previous prefix)` (the
//! 5-byte prefix as an integer; the first row's from 0) ‖ `LEB128(txnum − base)`, or when the prefix
//! repeats `LEB128(txnum − previous txnum)`.
//!
//! Crash safety: after a batch's pieces are appended, the files are synced and `meta/staged`
//! records the batch and every file's length, in one synced write. A rerun on the same chain cuts
//! the files back to those lengths and goes on; on a changed chain the staged rows are dropped.
//! While ranges are merged `meta/staged` counts the ranges done, so a rerun finishes the rest.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use blkindex_shared::schema::{cf, key_txnum, row_key, Prefix, RowKey, TxNum, PREFIX_LEN};
use blkindex_shared::varint::{get_leb128, put_leb128, Reader};

/// The two bucket families, in file-name and `lengths` order.
pub const FAMILIES: [&str; 2] = [cf::TXID, cf::SCRIPT];

pub struct Stage {
    dir: PathBuf,
    width: usize,
    ranges: usize,
}

impl Stage {
    /// The staging directory of the index at `db`, with `ranges` key ranges per family.
    pub fn new(db: &Path, width: usize, ranges: usize) -> Self {
        assert!((1..=max_ranges(width)).contains(&ranges), "{ranges} ranges for bucket width {width}");
        Stage { dir: db.join("bulk-stage"), width, ranges }
    }

    pub fn ranges(&self) -> usize {
        self.ranges
    }

    /// An empty staging directory (anything an earlier load left is removed).
    pub fn create(&self) -> Result<()> {
        self.remove()?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }

    fn path(&self, family: usize, range: usize) -> PathBuf {
        self.dir.join(format!("{}-{range:04}.rows", FAMILIES[family]))
    }

    /// The key range a row falls in. Ranges split the space of the first one or two prefix bytes
    /// evenly, never inside a bucket (a bucket key is at least one byte; with one-byte keys only
    /// the first byte is used).
    pub fn range_of(&self, row: &[u8]) -> usize {
        let (v, bits) = match self.width {
            1 => (row[0] as usize, 8),
            _ => (u16::from_be_bytes([row[0], row[1]]) as usize, 16),
        };
        (v * self.ranges) >> bits
    }

    /// Appends a batch's sorted rows of `family` (txnums from `base` on) to the range files.
    /// Nothing is durable until [`Stage::sync`].
    pub fn append(&self, family: usize, rows: &[RowKey], base: TxNum) -> Result<()> {
        let mut buf = Vec::new();
        for piece in rows.chunk_by(|a, b| self.range_of(a) == self.range_of(b)) {
            buf.clear();
            encode_piece(&mut buf, piece, base);
            let path = self.path(family, self.range_of(&piece[0]));
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&buf).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Makes every appended piece durable, and returns each file's length (family-major).
    pub fn sync(&self) -> Result<Vec<u64>> {
        let mut lengths = Vec::with_capacity(FAMILIES.len() * self.ranges);
        for family in 0..FAMILIES.len() {
            for range in 0..self.ranges {
                let path = self.path(family, range);
                match File::open(&path) {
                    Ok(f) => {
                        f.sync_data()?;
                        lengths.push(f.metadata()?.len());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => lengths.push(0),
                    Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
                }
            }
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(lengths)
    }

    /// Cuts the files back to the lengths a synced batch recorded: what a killed run appended
    /// after it goes.
    pub fn truncate(&self, lengths: &[u64]) -> Result<()> {
        anyhow::ensure!(
            lengths.len() == FAMILIES.len() * self.ranges,
            "staged lengths do not fit the ranges"
        );
        std::fs::create_dir_all(&self.dir)?;
        for family in 0..FAMILIES.len() {
            for range in 0..self.ranges {
                let want = lengths[family * self.ranges + range];
                let path = self.path(family, range);
                let have = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                anyhow::ensure!(
                    have >= want,
                    "{} is shorter ({have} bytes) than its last synced length ({want}); the staged rows are lost",
                    path.display()
                );
                if have > want {
                    OpenOptions::new().write(true).open(&path)?.set_len(want)?;
                }
            }
        }
        Ok(())
    }

    /// Bytes staged in one range of a family (0 when it has no file).
    pub fn range_bytes(&self, family: usize, range: usize) -> u64 {
        std::fs::metadata(self.path(family, range)).map(|m| m.len()).unwrap_or(0)
    }

    /// Every staged row of a range: one vector per piece, each sorted.
    pub fn read_range(&self, family: usize, range: usize) -> Result<Vec<Vec<RowKey>>> {
        let path = self.path(family, range);
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.with_context(|| format!("reading {}", path.display()))?,
        };
        decode_pieces(&bytes).with_context(|| format!("{}: corrupt staged rows", path.display()))
    }

    pub fn remove_range(&self, family: usize, range: usize) -> Result<()> {
        match std::fs::remove_file(self.path(family, range)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Most ranges a bucket width allows (a range is at least one value of the bytes it splits on).
pub fn max_ranges(width: usize) -> usize {
    match width {
        1 => 1 << 8,
        _ => 1 << 16,
    }
}

fn prefix_int(row: &RowKey) -> u64 {
    row[..PREFIX_LEN].iter().fold(0, |acc, &b| acc << 8 | b as u64)
}

fn encode_piece(out: &mut Vec<u8>, rows: &[RowKey], base: TxNum) {
    put_leb128(out, rows.len() as u64);
    put_leb128(out, base as u64);
    let (mut prefix, mut txnum) = (0u64, 0u32);
    for (i, row) in rows.iter().enumerate() {
        let (p, t) = (prefix_int(row), key_txnum(row));
        if i > 0 && p == prefix {
            put_leb128(out, 0);
            put_leb128(out, (t - txnum) as u64);
        } else {
            put_leb128(out, p - prefix);
            put_leb128(out, (t - base) as u64);
        }
        (prefix, txnum) = (p, t);
    }
}

fn decode_pieces(bytes: &[u8]) -> Result<Vec<Vec<RowKey>>> {
    let mut r = Reader::new(bytes);
    let mut pieces = Vec::new();
    while r.remaining() > 0 {
        let n = get_leb128(&mut r)?;
        // Every row takes at least two bytes: a count beyond that is corruption, not an allocation.
        anyhow::ensure!(n <= r.remaining() as u64 / 2, "a piece of {n} rows in {} bytes", r.remaining());
        let base = u32::try_from(get_leb128(&mut r)?)?;
        let mut rows = Vec::with_capacity(n as usize);
        let (mut prefix, mut txnum) = (0u64, 0u32);
        for i in 0..n {
            let step = get_leb128(&mut r)?;
            let t = u32::try_from(get_leb128(&mut r)?)?;
            if i > 0 && step == 0 {
                txnum = txnum.checked_add(t).context("txnum overflow")?;
            } else {
                prefix = prefix.checked_add(step).filter(|p| *p < 1 << 40).context("prefix overflow")?;
                txnum = base.checked_add(t).context("txnum overflow")?;
            }
            let p: Prefix = prefix.to_be_bytes()[3..].try_into().unwrap();
            rows.push(row_key(p, txnum));
        }
        pieces.push(rows);
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(items: &[([u8; 5], TxNum)]) -> Vec<RowKey> {
        let mut v: Vec<RowKey> = items.iter().map(|(p, n)| row_key(*p, *n)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn pieces_round_trip() {
        let a = rows(&[([0, 0, 0, 0, 1], 10), ([0, 0, 0, 0, 1], 12), ([9, 9, 9, 9, 9], 11), ([255; 5], 99)]);
        let b = rows(&[([0, 0, 0, 0, 0], 100), ([0, 0, 0, 0, 1], 100)]);
        let mut buf = Vec::new();
        encode_piece(&mut buf, &a, 10);
        encode_piece(&mut buf, &b, 100);
        assert_eq!(decode_pieces(&buf).unwrap(), vec![a, b]);
        assert!(decode_pieces(&buf[..buf.len() - 1]).is_err(), "a cut piece is an error");
        assert!(decode_pieces(&[0xff, 0xff, 0xff, 0x0f]).is_err(), "an impossible count is refused");
    }

    #[test]
    fn ranges_cover_the_key_space_in_order_and_never_split_a_bucket() {
        for (width, ranges) in [(1, 3), (1, 256), (2, 7), (3, 65536)] {
            let s = Stage::new(Path::new("/nonexistent"), width, ranges);
            let mut last = 0;
            for v in 0..=u16::MAX {
                let row = row_key([(v >> 8) as u8, v as u8, 0xff, 0, 0], 0);
                let r = s.range_of(&row);
                assert!(r >= last && r < ranges, "width {width}: ranges out of order");
                last = r;
                // Rows of one bucket key share a range.
                let other = row_key([(v >> 8) as u8, if width == 1 { 0 } else { v as u8 }, 0, 1, 2], 9);
                assert_eq!(s.range_of(&other), r);
            }
            assert_eq!(last, ranges - 1, "width {width}: the last range is used");
        }
    }

    #[test]
    fn appended_batches_are_synced_cut_back_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stage::new(dir.path(), 2, 4);
        s.create().unwrap();
        let first = rows(&[([0, 1, 0, 0, 0], 1), ([0x80, 0, 0, 0, 0], 2), ([0xff, 0, 0, 0, 0], 3)]);
        s.append(1, &first, 1).unwrap();
        let lengths = s.sync().unwrap();
        assert_eq!(lengths.len(), 8);
        assert_eq!(lengths[..4], [0, 0, 0, 0], "nothing staged for txid");
        let second = rows(&[([0, 2, 0, 0, 0], 7)]);
        s.append(1, &second, 7).unwrap();
        assert_eq!(s.read_range(1, 0).unwrap(), vec![first[..1].to_vec(), second.clone()]);
        // A killed run: the second batch was never recorded.
        s.truncate(&lengths).unwrap();
        assert_eq!(s.read_range(1, 0).unwrap(), vec![first[..1].to_vec()]);
        assert_eq!(s.read_range(1, 2).unwrap(), vec![first[1..2].to_vec()]);
        assert!(s.read_range(0, 0).unwrap().is_empty());
        let mut longer = lengths.clone();
        longer[4] += 1;
        assert!(s.truncate(&longer).is_err(), "a file shorter than its synced length is an error");
    }
}
