//! bitcoind's `blocks/` directory: `blkNNNNN.dat` (blocks) and `revNNNNN.dat` (undo data) files,
//! their `xor.dat` obfuscation and their record framing.
//!
//! Safety rule: touching a map past a file's end kills the whole process (SIGBUS), so a file is
//! memory-mapped only while no node can change it: while this process holds the node's data-dir
//! lock (`nodelock`), which a stopped node leaves free and which keeps any node from starting on
//! that data dir. `BlockFiles::mapped` takes that lock, and only blk files are mapped under it
//! (for the bulk pass); the maps are dropped before the lock is released. Without it (a node
//! running: the server, the follower, a bulk pass beside a live node) every read is positional
//! (`pread`), because no file can be proven final from outside the node. bitcoind appends to its
//! current blk/rev file and truncates the file's preallocated tail when it moves to the next one,
//! so a file below the highest-numbered one is normally final; but after an unclean shutdown it
//! resumes writing at the position its block index last flushed, which can be inside a
//! lower-numbered file than the highest present (flushes are periodic, and a node in initial sync
//! fills several files between them): it then overwrites that file from there and truncates it
//! again when it moves on. A rev file is also written to after its successor exists (undo data of
//! a block connected late) and is rewritten from the start by `-reindex`. A positional read past a
//! file's current end is a short read, which is an error for that read only.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::nodelock::NodeLock;

/// Bitcoin Core's MAX_BLOCK_SERIALIZED_SIZE.
pub const MAX_BLOCK_SIZE: u32 = 4_000_000;
/// Undo data of one block has no consensus bound; this is far above anything a valid block makes.
pub const MAX_UNDO_SIZE: u32 = 64 << 20;
/// A rev record's payload is followed by this 32-byte checksum.
pub const UNDO_CHECKSUM_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Blk,
    Rev,
}

impl FileKind {
    fn prefix(self) -> &'static str {
        match self {
            FileKind::Blk => "blk",
            FileKind::Rev => "rev",
        }
    }

    pub fn file_name(self, num: u32) -> String {
        format!("{}{:05}.dat", self.prefix(), num)
    }
}

/// The 8-byte key of `xor.dat`; all zeros when the file is absent (older nodes, `-blocksxor=0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct XorKey(pub [u8; 8]);

impl XorKey {
    /// Reads `blocks/xor.dat`. Read it at every start: a node may re-key its files.
    pub fn read(blocks_dir: &Path) -> Result<Self> {
        let path = blocks_dir.join("xor.dat");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!("{}: expected 8 bytes, found {}", path.display(), bytes.len())
                })?;
                Ok(XorKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(XorKey::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// De-obfuscates `buf`, which was read from file offset `offset`.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        if self.is_zero() {
            return;
        }
        // Eight bytes at a time with the key turned to the offset (the compiler vectorizes it):
        // every block read in the bulk pass goes through here.
        let key = self.at(offset);
        let word = u64::from_ne_bytes(key);
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ word;
            c.copy_from_slice(&v.to_ne_bytes());
        }
        for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
            *b ^= k;
        }
    }

    /// A de-obfuscated copy of `src`, which sits at file offset `offset` (one pass, not a copy
    /// and then a pass).
    pub fn copy(&self, src: &[u8], offset: u64) -> Vec<u8> {
        if self.is_zero() {
            return src.to_vec();
        }
        let key = self.at(offset);
        let word = u64::from_ne_bytes(key);
        let mut out = Vec::with_capacity(src.len());
        let chunks = src.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            out.extend_from_slice(&(u64::from_ne_bytes(c.try_into().unwrap()) ^ word).to_ne_bytes());
        }
        out.extend(rest.iter().zip(key).map(|(b, k)| b ^ k));
        out
    }

    /// The key as it applies from file offset `offset` on.
    fn at(&self, offset: u64) -> [u8; 8] {
        std::array::from_fn(|i| self.0[(offset as usize + i) % 8])
    }

    fn byte(&self, offset: u64) -> u8 {
        self.0[(offset % 8) as usize]
    }
}

/// The numbered blk or rev files in `blocks_dir`, in number order.
pub fn list_files(blocks_dir: &Path, kind: FileKind) -> Result<Vec<u32>> {
    let mut nums = Vec::new();
    let rd = std::fs::read_dir(blocks_dir)
        .with_context(|| format!("cannot read blocks directory {}", blocks_dir.display()))?;
    for entry in rd {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(kind.prefix()) else {
            continue;
        };
        let Some(num) = rest.strip_suffix(".dat") else {
            continue;
        };
        if num.len() == 5 && num.bytes().all(|b| b.is_ascii_digit()) {
            nums.push(num.parse().unwrap());
        }
    }
    nums.sort_unstable();
    Ok(nums)
}

/// A whole file's bytes, read with ordinary reads (still obfuscated).
pub struct FileBytes(Vec<u8>);

impl FileBytes {
    pub fn read(path: &Path) -> Result<Self> {
        Ok(FileBytes(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One framed record: `magic ‖ size (u32 LE) ‖ payload` (rev records add a 32-byte checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// File offset of the payload.
    pub offset: u64,
    pub len: u32,
}

/// What a scan of a file's framing met besides records, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanNotes {
    /// Written bytes skipped to find the next magic (garbage). Unwritten stretches (raw zeros of
    /// a preallocated tail) are expected and not counted.
    pub skipped: u64,
    /// A record at the end whose payload is not all there (the node is still writing it).
    pub partial_tail: bool,
}

/// Walks the records of one file. Tolerates zero-filled preallocated tails, garbage between records
/// (resynchronizing on the magic), records with impossible sizes, and a partially written last record.
pub fn scan_records(bytes: &[u8], key: &XorKey, magic: [u8; 4], kind: FileKind) -> (Vec<Record>, ScanNotes) {
    let mut src = SliceSource(bytes);
    let (recs, _, notes) = walk_records(&mut src, key, magic, kind, 0).expect("a slice cannot fail");
    (recs, notes)
}

/// A file's records, the first bytes of each payload, and what else the walk met.
pub type Scanned = (Vec<Record>, Vec<Vec<u8>>, ScanNotes);

/// Where `walk_records` reads: `get(p, n)` is up to `n` bytes at `p`, fewer only at the end.
trait Source {
    fn len(&self) -> u64;
    fn get(&mut self, p: u64, n: usize) -> Result<&[u8]>;
}

struct SliceSource<'a>(&'a [u8]);

impl Source for SliceSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn get(&mut self, p: u64, n: usize) -> Result<&[u8]> {
        let p = (p as usize).min(self.0.len());
        Ok(&self.0[p..(p + n).min(self.0.len())])
    }
}

/// A file read through a window of positional reads: a record's header and the start of its
/// payload are read, its body is stepped over.
struct FileSource<'a> {
    file: &'a File,
    len: u64,
    base: u64,
    buf: Vec<u8>,
}

impl FileSource<'_> {
    const WINDOW: usize = 64 << 10;
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn get(&mut self, p: u64, n: usize) -> Result<&[u8]> {
        let in_window = p >= self.base && p + n as u64 <= self.base + self.buf.len() as u64;
        if !in_window {
            self.base = p;
            self.buf.resize(n.max(Self::WINDOW), 0);
            let mut filled = 0;
            while filled < self.buf.len() {
                match self.file.read_at(&mut self.buf[filled..], p + filled as u64) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.buf.truncate(filled);
        }
        let from = (p - self.base) as usize;
        Ok(&self.buf[from.min(self.buf.len())..(from + n).min(self.buf.len())])
    }
}

/// The framing walk behind `scan_records` and `BlockFiles::scan`; also keeps the first `head`
/// bytes of each payload (obfuscated). The length is the file's when the walk began: a file that
/// grows meanwhile is walked to that length, one that shrinks ends early as a partial tail.
fn walk_records(
    src: &mut impl Source,
    key: &XorKey,
    magic: [u8; 4],
    kind: FileKind,
    head: usize,
) -> Result<Scanned> {
    let (max_len, trailer) = match kind {
        FileKind::Blk => (MAX_BLOCK_SIZE, 0),
        FileKind::Rev => (MAX_UNDO_SIZE, UNDO_CHECKSUM_LEN as u64),
    };
    let n = src.len();
    let mut out = Vec::new();
    let mut heads = Vec::new();
    let mut notes = ScanNotes::default();
    let is_magic =
        |b: &[u8], p: u64| b.len() >= 4 && (0..4).all(|i| b[i] ^ key.byte(p + i as u64) == magic[i]);
    let mut p: u64 = 0;
    while p + 8 <= n {
        // The 8-byte record header, and 4 more bytes to tell a header with no payload.
        let b = src.get(p, 12)?;
        if b.len() < 8 {
            notes.partial_tail = true; // shrunk under the walk
            break;
        }
        if !is_magic(b, p) {
            // Unwritten (preallocated) bytes are raw zeros, never obfuscated.
            notes.skipped += (b[0] != 0) as u64;
            p += 1;
            continue;
        }
        let len = u32::from_le_bytes(std::array::from_fn(|i| b[4 + i] ^ key.byte(p + 4 + i as u64)));
        // A record whose size field is impossible, or whose payload starts with another magic (a
        // write that stopped after the header), is garbage: look for the next magic.
        if len == 0 || len > max_len || is_magic(&b[8..], p + 8) {
            p += 1;
            notes.skipped += 1;
            continue;
        }
        let end = p + 8 + len as u64 + trailer;
        if end > n {
            notes.partial_tail = true;
            break;
        }
        if head > 0 {
            let h = src.get(p + 8, head.min(len as usize))?;
            heads.push(h.to_vec());
        }
        out.push(Record { offset: p + 8, len });
        p = end;
    }
    Ok((out, heads, notes))
}

/// Reads records out of the blocks directory by (file, offset, length), de-obfuscated, with
/// positional reads; or, for a `mapped` one, out of memory maps of the blk files. Positional reads
/// go through the [`OPEN_FILES`] most recently read files kept open, shared by the clones: not all
/// of them, since mainnet has thousands, more than a process's usual descriptor limit (a map needs
/// no descriptor once made); and not one open per read, which costs a path walk each, for every
/// transaction of a long history.
#[derive(Clone)]
pub struct BlockFiles {
    dir: PathBuf,
    key: XorKey,
    mapped: Option<Arc<Mapped>>,
    open: Arc<Mutex<OpenFiles>>,
}

/// How many files positional reads keep open.
pub const OPEN_FILES: usize = 64;

/// Open files by (kind, number), each with the tick of its last use: the least recent goes first.
#[derive(Default)]
struct OpenFiles {
    files: HashMap<(FileKind, u32), (Arc<File>, u64)>,
    tick: u64,
}

impl OpenFiles {
    fn get(&mut self, kind: FileKind, num: u32) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        self.files.get_mut(&(kind, num)).map(|(f, used)| {
            *used = tick;
            f.clone()
        })
    }

    fn insert(&mut self, kind: FileKind, num: u32, file: Arc<File>) {
        if self.files.len() >= OPEN_FILES {
            let oldest = self.files.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k);
            oldest.map(|k| self.files.remove(&k));
        }
        self.files.insert((kind, num), (file, self.tick));
    }
}

/// The maps of blk files, and the node's lock that makes them safe. Fields drop in order: every
/// map is gone before the lock is released (when the last `BlockFiles` sharing it goes; a map is
/// only borrowed inside a call on one of them).
struct Mapped {
    maps: Mutex<HashMap<u32, Arc<Mmap>>>,
    lock: NodeLock,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.maps.get_mut().unwrap().clear();
        let locks: Vec<String> = self.lock.paths().map(|p| p.display().to_string()).collect();
        tracing::info!(locks = ?locks, "blk files unmapped; the node's data-dir lock released");
    }
}

impl BlockFiles {
    pub fn open(blocks_dir: &Path) -> Result<Self> {
        let key = XorKey::read(blocks_dir)?;
        if !blocks_dir.is_dir() {
            bail!("blocks directory {} does not exist", blocks_dir.display());
        }
        Ok(BlockFiles { dir: blocks_dir.to_path_buf(), key, mapped: None, open: Arc::default() })
    }

    /// These files with the blk files memory-mapped (the scan walks the maps, reads copy out of
    /// them), for as long as `lock`, the node's data-dir lock, is held: it is held by the clones of
    /// the result and released, after their maps are dropped, with the last of them. Rev files are
    /// still read positionally.
    pub fn mapped(&self, lock: NodeLock) -> BlockFiles {
        let mapped = Mapped { maps: Mutex::default(), lock };
        BlockFiles {
            dir: self.dir.clone(),
            key: self.key,
            mapped: Some(Arc::new(mapped)),
            open: self.open.clone(),
        }
    }

    /// Whether blk files are read through maps.
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// Forgets the maps made so far (they are made again on demand), so that the pages they
    /// touched leave this process's resident set. The lock stays held.
    pub fn unmap_all(&self) {
        self.unmap_except(&[]);
    }

    /// As [`BlockFiles::unmap_all`], but the maps of files `keep` stay (the next batch reads
    /// them: mapping a file again costs its page faults again).
    pub fn unmap_except(&self, keep: &[u32]) {
        if let Some(m) = &self.mapped {
            m.maps.lock().unwrap().retain(|num, _| keep.contains(num));
        }
    }

    /// A new map of blk file `num`.
    fn map_file(&self, num: u32) -> Result<Mmap> {
        let path = self.path(FileKind::Blk, num);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: only called while the node's data-dir lock is held (`mapped`), so no node runs
        // on this data dir and none can start: nothing appends to, rewrites or truncates the file
        // while it is mapped (the map is dropped before the lock is released). The node is the
        // only writer of its blocks directory, and pruning is not supported.
        unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
    }

    /// The shared map of blk file `num`, when blk files are mapped.
    fn blk_map(&self, kind: FileKind, num: u32) -> Result<Option<Arc<Mmap>>> {
        let Some(mapped) = self.mapped.as_ref().filter(|_| kind == FileKind::Blk) else {
            return Ok(None);
        };
        if let Some(m) = mapped.maps.lock().unwrap().get(&num) {
            return Ok(Some(m.clone()));
        }
        let m = Arc::new(self.map_file(num)?);
        Ok(Some(mapped.maps.lock().unwrap().entry(num).or_insert(m).clone()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn xor_key(&self) -> XorKey {
        self.key
    }

    pub fn path(&self, kind: FileKind, num: u32) -> PathBuf {
        self.dir.join(kind.file_name(num))
    }

    /// The de-obfuscated bytes `offset..offset+len` of a file. A range past the file's end (a file
    /// truncated since the record was found) is an error naming it.
    pub fn read(&self, kind: FileKind, num: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        if let Some(map) = self.blk_map(kind, num)? {
            let end = offset.checked_add(len as u64).filter(|&e| e <= map.len() as u64);
            let Some(end) = end else {
                bail!("{}: range {offset}+{len} is past the end", self.path(kind, num).display());
            };
            return Ok(self.key.copy(&map[offset as usize..end as usize], offset));
        }
        let file = self.open_file(kind, num)?;
        let mut v = vec![0u8; len];
        file.read_exact_at(&mut v, offset).with_context(|| {
            format!("{}: cannot read {len} bytes at {offset}", self.path(kind, num).display())
        })?;
        self.key.apply(&mut v, offset);
        Ok(v)
    }

    /// File `num`, opened once while it stays among the most recently read. The node only
    /// appends to its files (and truncates a finished one's preallocated tail, the same inode), so
    /// a descriptor kept open reads what a new one would.
    fn open_file(&self, kind: FileKind, num: u32) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().unwrap().get(kind, num) {
            return Ok(f);
        }
        let path = self.path(kind, num);
        let file = Arc::new(File::open(&path).with_context(|| format!("cannot open {}", path.display()))?);
        // The server's reads here are of one transaction at a time, at random: the kernel's
        // readahead would read (and cache, in place of what is wanted) about twice the bytes
        // asked for. The follower reads whole blocks and undo records here, each in one call,
        // mostly still in the page cache: it loses little.
        // SAFETY: a plain advice call on a descriptor this function owns; failure is harmless.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        unsafe {
            libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&*file), 0, 0, libc::POSIX_FADV_RANDOM)
        };
        self.open.lock().unwrap().insert(kind, num, file.clone());
        Ok(file)
    }

    /// Whole-file bytes, still obfuscated.
    pub fn file_bytes(&self, kind: FileKind, num: u32) -> Result<FileBytes> {
        FileBytes::read(&self.path(kind, num))
    }

    /// The records of a file and the first `head` bytes of each payload (de-obfuscated), read
    /// through a small window, or walked in a map of the file when blk files are mapped (a map of
    /// its own, dropped after the walk): record bodies are stepped over, not read.
    pub fn scan(&self, kind: FileKind, num: u32, magic: [u8; 4], head: usize) -> Result<Scanned> {
        let path = self.path(kind, num);
        let (recs, mut heads, notes) = if self.mapped.is_some() && kind == FileKind::Blk {
            let map = self.map_file(num)?;
            walk_records(&mut SliceSource(&map), &self.key, magic, kind, head)?
        } else {
            let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let len = file.metadata()?.len();
            let mut src = FileSource { file: &file, len, base: 0, buf: Vec::new() };
            walk_records(&mut src, &self.key, magic, kind, head)
                .with_context(|| format!("reading {}", path.display()))?
        };
        for (r, h) in recs.iter().zip(&mut heads) {
            self.key.apply(h, r.offset);
        }
        Ok((recs, heads, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 4] = [0xfa, 0xbf, 0xb5, 0xda];

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn xor_is_by_file_offset() {
        let key = XorKey([1, 2, 3, 4, 5, 6, 7, 8]);
        let mut buf = [0u8; 5];
        key.apply(&mut buf, 6);
        assert_eq!(buf, [7, 8, 1, 2, 3]);
        // The word-at-a-time paths agree with the definition at every offset and length.
        let src: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for offset in 0..16u64 {
            for len in 0..src.len() {
                let want: Vec<u8> = src[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key.0[(offset as usize + i) % 8])
                    .collect();
                assert_eq!(key.copy(&src[..len], offset), want, "copy at {offset}+{len}");
                let mut buf = src[..len].to_vec();
                key.apply(&mut buf, offset);
                assert_eq!(buf, want, "apply at {offset}+{len}");
            }
        }
    }

    #[test]
    fn framing_tolerates_garbage_zeros_and_partial_tail() {
        let mut file = frame(&[1u8; 100]);
        file.extend_from_slice(&[0xde, 0xad, 0xbe]); // garbage between records
        file.extend_from_slice(&MAGIC); // a header with no payload: magic follows at once
        file.extend_from_slice(&200u32.to_le_bytes());
        let second_at = file.len() as u64;
        file.extend_from_slice(&frame(&[2u8; 50]));
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&u32::MAX.to_le_bytes()); // impossible size
        file.extend_from_slice(&frame(&[3u8; 10]));
        let complete = file.clone();
        let mut tail = frame(&[4u8; 80]);
        tail.truncate(40); // a last record still being written
        file.extend_from_slice(&tail);

        for key in [XorKey::default(), XorKey([9, 8, 7, 6, 5, 4, 3, 2])] {
            let mut obf = file.clone();
            key.apply(&mut obf, 0);
            let (recs, notes) = scan_records(&obf, &key, MAGIC, FileKind::Blk);
            // The same walk through positional reads of the file, with the payloads' heads.
            let dir = tempfile::tempdir().unwrap();
            if !key.is_zero() {
                std::fs::write(dir.path().join("xor.dat"), key.0).unwrap();
            }
            std::fs::write(dir.path().join("blk00000.dat"), &obf).unwrap();
            let files = BlockFiles::open(dir.path()).unwrap();
            let (from_file, heads, file_notes) = files.scan(FileKind::Blk, 0, MAGIC, 20).unwrap();
            assert_eq!((&from_file, &file_notes), (&recs, &notes));
            let want: Vec<Vec<u8>> = [1u8, 2, 3].iter().map(|&b| vec![b; 10]).collect();
            let got: Vec<Vec<u8>> = heads.iter().map(|h| h[..10].to_vec()).collect();
            assert_eq!(got, want);
            assert_eq!(recs.len(), 3, "{recs:?}");
            assert_eq!(recs[0], Record { offset: 8, len: 100 });
            assert_eq!(recs[1], Record { offset: second_at + 8, len: 50 });
            assert_eq!(recs[2].len, 10);
            assert!(notes.skipped > 0);
            assert!(notes.partial_tail);
        }
        // Preallocated zeros after the last record are neither records nor worth a note. (A
        // partial record followed by zeros looks complete here: its block fails to parse later.)
        let (_, without) = scan_records(&complete, &XorKey::default(), MAGIC, FileKind::Blk);
        let mut zeros = complete;
        zeros.extend_from_slice(&[0u8; 4096]);
        let (recs, notes) = scan_records(&zeros, &XorKey::default(), MAGIC, FileKind::Blk);
        assert_eq!(recs.len(), 3);
        assert_eq!(notes, without);
        let (recs, notes) = scan_records(&[0u8; 1000], &XorKey::default(), MAGIC, FileKind::Blk);
        assert!(recs.is_empty());
        assert_eq!(notes, ScanNotes::default());
    }

    /// A blk file truncated under a reader that has read it (as bitcoind may after an unclean
    /// shutdown): a read past the new end is a clear error for that read, not SIGBUS, and reads
    /// below it go on.
    #[test]
    fn a_file_truncated_under_a_reader_is_an_error_for_that_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = XorKey([9, 8, 7, 6, 5, 4, 3, 2]);
        std::fs::write(dir.path().join("xor.dat"), key.0).unwrap();
        let mut file = frame(&[1u8; 5000]);
        file.extend_from_slice(&frame(&[2u8; 100_000]));
        key.apply(&mut file, 0);
        let path = dir.path().join("blk00000.dat");
        std::fs::write(&path, &file).unwrap();
        // A successor: the rule is the same for a file below the highest-numbered one.
        std::fs::write(dir.path().join("blk00001.dat"), []).unwrap();
        let files = BlockFiles::open(dir.path()).unwrap();
        let second = 8 + 5000 + 8;
        assert_eq!(files.read(FileKind::Blk, 0, second, 100_000).unwrap(), vec![2u8; 100_000]);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(second + 50_000).unwrap();
        let err = files.read(FileKind::Blk, 0, second, 100_000).unwrap_err();
        assert!(format!("{err:#}").contains("blk00000.dat: cannot read 100000 bytes at 5016"), "{err:#}");
        assert_eq!(files.read(FileKind::Blk, 0, 8, 5000).unwrap(), vec![1u8; 5000]);
        // A scan of the shorter file sees the first record and a partial tail.
        let (recs, _, notes) = files.scan(FileKind::Blk, 0, MAGIC, 80).unwrap();
        assert_eq!(recs, vec![Record { offset: 8, len: 5000 }]);
        assert!(notes.partial_tail);
    }

    /// Under the node's lock the blk files are mapped: the scan and reads give what positional
    /// reads give, a range past the end is an error, rev files are still read positionally, and
    /// the lock is released (maps first) with the last clone.
    #[test]
    fn mapped_files_read_as_positional_ones_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = dir.path().join("blocks");
        std::fs::create_dir(&blocks).unwrap();
        let key = XorKey([9, 8, 7, 6, 5, 4, 3, 2]);
        std::fs::write(blocks.join("xor.dat"), key.0).unwrap();
        let mut file = frame(&[1u8; 5000]);
        file.extend_from_slice(&frame(&[2u8; 3000]));
        file.extend_from_slice(&[0u8; 1000]); // a preallocated tail
        key.apply(&mut file, 0);
        std::fs::write(blocks.join("blk00000.dat"), &file).unwrap();
        std::fs::write(blocks.join("blk00001.dat"), []).unwrap();
        std::fs::write(blocks.join("rev00000.dat"), [7u8; 64]).unwrap();
        let plain = BlockFiles::open(&blocks).unwrap();
        let lock = NodeLock::try_take(&[dir.path(), &blocks]).unwrap();
        let mapped = plain.mapped(lock);
        assert!(mapped.is_mapped() && !plain.is_mapped());
        for num in [0, 1] {
            assert_eq!(
                mapped.scan(FileKind::Blk, num, MAGIC, 80).unwrap(),
                plain.scan(FileKind::Blk, num, MAGIC, 80).unwrap()
            );
        }
        let (recs, _, _) = mapped.scan(FileKind::Blk, 0, MAGIC, 80).unwrap();
        assert_eq!(recs.len(), 2);
        for r in &recs {
            let got = mapped.read(FileKind::Blk, 0, r.offset, r.len as usize).unwrap();
            assert_eq!(got, plain.read(FileKind::Blk, 0, r.offset, r.len as usize).unwrap());
        }
        let clone = mapped.clone();
        mapped.unmap_all();
        assert_eq!(clone.read(FileKind::Blk, 0, 8, 5000).unwrap(), vec![1u8; 5000]);
        let err = clone.read(FileKind::Blk, 0, file.len() as u64 - 10, 20).unwrap_err();
        assert!(format!("{err:#}").contains("past the end"), "{err:#}");
        assert_eq!(clone.read(FileKind::Rev, 0, 0, 8).unwrap(), plain.read(FileKind::Rev, 0, 0, 8).unwrap());
        // Held by the clones: another lock of the node's kind (a write lock) fails until the last.
        let node_lock = || {
            let f =
                std::fs::OpenOptions::new().read(true).write(true).open(dir.path().join(".lock")).unwrap();
            // SAFETY: plain data, and the descriptor is open for the call.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as _;
            fl.l_whence = libc::SEEK_SET as _;
            (unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_OFD_SETLK, &fl) } == 0, f)
        };
        drop(mapped);
        assert!(!node_lock().0, "the lock went with a clone still alive");
        drop(clone);
        assert!(node_lock().0, "the lock was not released with the last clone");
    }

    #[test]
    fn framing_of_another_network_finds_nothing() {
        let file = frame(&[1u8; 100]);
        let mainnet = [0xf9, 0xbe, 0xb4, 0xd9];
        let (recs, _) = scan_records(&file, &XorKey::default(), mainnet, FileKind::Blk);
        assert!(recs.is_empty());
    }

    #[test]
    fn missing_xor_file_means_no_key_and_bad_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(XorKey::read(dir.path()).unwrap().is_zero());
        std::fs::write(dir.path().join("xor.dat"), [1, 2, 3]).unwrap();
        assert!(XorKey::read(dir.path()).is_err());
        std::fs::write(dir.path().join("xor.dat"), [1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(XorKey::read(dir.path()).unwrap().0, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
