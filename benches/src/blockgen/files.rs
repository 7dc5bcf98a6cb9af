//! The blocks directory as Bitcoin Core leaves it: `blkNNNNN.dat` records in arrival order, each
//! file under 128 MiB; `revNNNNN.dat` holding, in connection order, the undo records of the
//! blocks of the blk file with its number; every byte of both XORed with `xor.dat`'s key by file
//! offset; the last files of each kind with their preallocated zero tails (Core truncates a file
//! only when it moves on from it).
//!
//! Arrival order: a node downloads from several peers at once, so blocks land a little out of
//! height order. Blocks are taken in windows of 1 to 12, and some windows are shuffled locally
//! (each block moves by up to three places), and at half the file boundaries the blocks on
//! either side swap: a child can sit before its parent, in the same file or the one before. Undo records follow connection order, which is height order (a stale block
//! connects before the best-chain sibling that later replaces it).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

use blkindex_shared::blkfile::{FileKind, XorKey};

use super::build::BuiltBlock;

/// Core's MAX_BLOCKFILE_SIZE.
pub const MAX_BLOCKFILE_SIZE: u64 = 0x800_0000;
/// Core preallocates blk files 16 MiB at a time and rev files 1 MiB at a time.
const BLOCKFILE_CHUNK: u64 = 0x100_0000;
const UNDOFILE_CHUNK: u64 = 0x10_0000;
const MAX_WINDOW: usize = 12;

/// What went into the files.
#[derive(Debug, Default, Clone)]
pub struct FileStats {
    pub blk_files: u32,
    /// Bytes of records (the preallocated tails not counted).
    pub blk_bytes: u64,
    pub rev_bytes: u64,
    /// Blocks stored before their parent; of those, in an earlier file than their parent's.
    pub before_parent: u64,
    pub before_parent_file: u64,
}

struct Open {
    file: BufWriter<File>,
    len: u64,
}

pub struct Writer {
    dir: PathBuf,
    key: XorKey,
    magic: [u8; 4],
    max_file_size: u64,
    rng: fastrand::Rng,
    window: Vec<BuiltBlock>,
    window_len: usize,
    blk_num: u32,
    blk: Open,
    revs: BTreeMap<u32, Open>,
    /// The blk file of every block stored, and (file, parent) of those stored before their parent.
    stored: HashMap<BlockHash, u32>,
    early: Vec<(u32, BlockHash)>,
    pub stats: FileStats,
}

impl Open {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Open { file: BufWriter::with_capacity(1 << 20, file), len: 0 })
    }

    /// Appends one record, obfuscated at its offset: the payload is XORed in place.
    fn record(&mut self, key: &XorKey, magic: [u8; 4], payload: &mut [u8], trailer: usize) -> Result<()> {
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&magic);
        head[4..].copy_from_slice(&((payload.len() - trailer) as u32).to_le_bytes());
        key.apply(&mut head, self.len);
        key.apply(payload, self.len + 8);
        self.file.write_all(&head)?;
        self.file.write_all(payload)?;
        self.len += 8 + payload.len() as u64;
        Ok(())
    }

    /// Flushes, with `chunk` > 0 leaving the zero tail a preallocated file has.
    fn close(mut self, chunk: u64) -> Result<()> {
        self.file.flush()?;
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        if chunk > 0 {
            file.set_len(self.len.div_ceil(chunk).max(1) * chunk)?;
        }
        Ok(())
    }
}

impl Writer {
    /// Starts `blocks_dir` (which must hold no blk files) with `xor.dat`.
    pub fn create(
        blocks_dir: &Path,
        key: XorKey,
        magic: [u8; 4],
        max_file_size: u64,
        seed: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(blocks_dir)
            .with_context(|| format!("cannot create {}", blocks_dir.display()))?;
        let existing = blkindex_shared::blkfile::list_files(blocks_dir, FileKind::Blk)?;
        if !existing.is_empty() {
            anyhow::bail!("{} already holds blk files: give an empty data directory", blocks_dir.display());
        }
        std::fs::write(blocks_dir.join("xor.dat"), key.0)?;
        let blk = Open::create(&blocks_dir.join(FileKind::Blk.file_name(0)))?;
        Ok(Writer {
            dir: blocks_dir.to_path_buf(),
            key,
            magic,
            max_file_size,
            rng: fastrand::Rng::with_seed(seed),
            window: Vec::new(),
            window_len: 1,
            blk_num: 0,
            blk,
            revs: BTreeMap::new(),
            stored: HashMap::new(),
            early: Vec::new(),
            stats: FileStats { blk_files: 1, ..Default::default() },
        })
    }

    /// Takes blocks in connection order (a stale block before its best-chain sibling).
    pub fn push(&mut self, block: BuiltBlock) -> Result<()> {
        self.window.push(block);
        if self.window.len() >= self.window_len {
            self.flush_window()?;
        }
        Ok(())
    }

    fn flush_window(&mut self) -> Result<()> {
        let n = self.window.len();
        let mut order: Vec<usize> = (0..n).collect();
        if n > 1 && self.rng.u8(..10) < 4 {
            let keys: Vec<f64> = (0..n).map(|i| i as f64 + 3.0 * self.rng.f64()).collect();
            order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        }
        // Where this window would start the next blk file: half the time, the two blocks on
        // either side of that boundary arrived the other way round (a child in the file before
        // its parent's, when they are consecutive).
        let mut len = self.blk.len;
        let boundary = order.iter().position(|&i| {
            let add = self.window[i].bytes.len() as u64 + 8;
            let next_file = len > 0 && len + add >= self.max_file_size;
            len += add;
            next_file
        });
        if let Some(k) = boundary.filter(|&k| k > 0 && self.rng.bool()) {
            order.swap(k - 1, k);
        }
        let mut files = vec![0u32; n];
        for &i in &order {
            let len = self.window[i].bytes.len() as u64 + 8;
            // Core's FindNextBlockPos: a block that would take the file to the limit starts the next.
            if self.blk.len > 0 && self.blk.len + len >= self.max_file_size {
                self.blk_num += 1;
                let next = Open::create(&self.dir.join(FileKind::Blk.file_name(self.blk_num)))?;
                std::mem::replace(&mut self.blk, next).close(0)?;
                self.stats.blk_files += 1;
            }
            let b = &mut self.window[i];
            let prev = BlockHash::from_byte_array(b.bytes[4..36].try_into().expect("a header"));
            if b.height > 0 && !self.stored.contains_key(&prev) {
                self.stats.before_parent += 1;
                self.early.push((self.blk_num, prev));
            }
            self.stored.insert(b.hash, self.blk_num);
            files[i] = self.blk_num;
            self.stats.blk_bytes += len;
            self.blk.record(&self.key, self.magic, &mut b.bytes, 0)?;
        }
        for (b, &num) in self.window.iter_mut().zip(&files) {
            let Some(undo) = &mut b.undo else { continue };
            if !self.revs.contains_key(&num) {
                let open = Open::create(&self.dir.join(FileKind::Rev.file_name(num)))?;
                self.revs.insert(num, open);
            }
            let rev = self.revs.get_mut(&num).unwrap();
            self.stats.rev_bytes += undo.len() as u64 + 8;
            rev.record(&self.key, self.magic, undo, blkindex_shared::blkfile::UNDO_CHECKSUM_LEN)?;
        }
        // Rev files of blk files done with take no more records (Core finalizes them).
        while let Some(entry) = self.revs.first_entry().filter(|e| *e.key() < self.blk_num) {
            entry.remove().close(0)?;
        }
        self.window.clear();
        self.window_len = self.rng.usize(1..=MAX_WINDOW);
        Ok(())
    }

    /// Writes what is left; the files being written keep their preallocated tails.
    pub fn finish(mut self) -> Result<FileStats> {
        self.flush_window()?;
        self.stats.before_parent_file =
            self.early.iter().filter(|(file, parent)| self.stored[parent] > *file).count() as u64;
        self.blk.close(BLOCKFILE_CHUNK.min(self.max_file_size))?;
        for (_, rev) in std::mem::take(&mut self.revs) {
            rev.close(UNDOFILE_CHUNK)?;
        }
        Ok(self.stats)
    }
}
