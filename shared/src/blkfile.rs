//! bitcoind's `blocks/` directory: `blkNNNNN.dat` (blocks) and `revNNNNN.dat` (undo data) files,
//! their `xor.dat` obfuscation and their record framing.
//!
//! Safety rule: bitcoind truncates a file's preallocated tail when it finalizes it, and touching an
//! mmap past a file's new end kills the process (SIGBUS). So only files that can no longer change are
//! memory-mapped: a blk file is final once a higher-numbered blk file exists. Everything else (the
//! active blk file, and rev files, which bitcoind may still append to for blocks connected late) is
//! read with ordinary reads.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

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

/// A whole file's bytes: a map of a finalized file, or a copy read with ordinary reads.
pub enum FileBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    pub fn open(path: &Path, map: bool) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if map {
            // SAFETY: only finalized files are mapped (see the module comment); bitcoind no longer
            // writes or truncates them, and pruning is not supported (files are never deleted).
            let mmap =
                unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let _ = mmap.advise(memmap2::Advice::Sequential);
            Ok(FileBytes::Mapped(mmap))
        } else {
            Ok(FileBytes::Read(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ))
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
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
    let (max_len, trailer) = match kind {
        FileKind::Blk => (MAX_BLOCK_SIZE, 0),
        FileKind::Rev => (MAX_UNDO_SIZE, UNDO_CHECKSUM_LEN as u64),
    };
    let n = bytes.len() as u64;
    let at = |p: u64| bytes[p as usize] ^ key.byte(p);
    let is_magic = |p: u64| p + 4 <= n && (0..4).all(|i| at(p + i) == magic[i as usize]);
    let mut out = Vec::new();
    let mut notes = ScanNotes::default();
    let mut p: u64 = 0;
    while p + 8 <= n {
        if !is_magic(p) {
            // Unwritten (preallocated) bytes are raw zeros, never obfuscated.
            notes.skipped += (bytes[p as usize] != 0) as u64;
            p += 1;
            continue;
        }
        let len = u32::from_le_bytes([at(p + 4), at(p + 5), at(p + 6), at(p + 7)]);
        // A record whose size field is impossible, or whose payload starts with another magic (a
        // write that stopped after the header), is garbage: look for the next magic.
        if len == 0 || len > max_len || is_magic(p + 8) {
            p += 1;
            notes.skipped += 1;
            continue;
        }
        let end = p + 8 + len as u64 + trailer;
        if end > n {
            notes.partial_tail = true;
            break;
        }
        out.push(Record { offset: p + 8, len });
        p = end;
    }
    (out, notes)
}

/// Reads records out of the blocks directory by (file, offset, length), de-obfuscated, mapping
/// finalized blk files once and reading everything else with positioned reads.
/// Clones share their maps (a file is mapped once per process, whoever reads it).
#[derive(Clone)]
pub struct BlockFiles {
    dir: PathBuf,
    key: XorKey,
    maps: Arc<Mutex<HashMap<u32, Arc<Mmap>>>>,
    /// Reads land at random places (a server's), rather than walk files in order.
    random: bool,
}

impl BlockFiles {
    pub fn open(blocks_dir: &Path) -> Result<Self> {
        let key = XorKey::read(blocks_dir)?;
        if !blocks_dir.is_dir() {
            bail!("blocks directory {} does not exist", blocks_dir.display());
        }
        Ok(BlockFiles { dir: blocks_dir.to_path_buf(), key, maps: Arc::default(), random: false })
    }

    /// For reads of single transactions here and there: maps are advised random access, so the
    /// kernel neither reads ahead nor maps neighbouring pages on a fault, and the process's
    /// resident set holds the pages it read rather than whole stretches of the files.
    pub fn for_random_reads(mut self) -> Self {
        self.random = true;
        self
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

    /// A finalized blk file is one with a successor.
    fn is_final_blk(&self, num: u32) -> bool {
        self.path(FileKind::Blk, num + 1).exists()
    }

    /// The map of blk file `num` if that file is finalized.
    fn final_map(&self, num: u32) -> Result<Option<Arc<Mmap>>> {
        if let Some(m) = self.maps.lock().unwrap().get(&num) {
            return Ok(Some(m.clone()));
        }
        if !self.is_final_blk(num) {
            return Ok(None);
        }
        let path = self.path(FileKind::Blk, num);
        let FileBytes::Mapped(m) = FileBytes::open(&path, true)? else { unreachable!() };
        if self.random {
            let _ = m.advise(memmap2::Advice::Random);
        }
        let m = Arc::new(m);
        self.maps.lock().unwrap().insert(num, m.clone());
        Ok(Some(m))
    }

    /// Forgets the maps, so that the pages they touched leave this process's resident set.
    pub fn unmap_all(&self) {
        self.maps.lock().unwrap().clear();
    }

    /// The de-obfuscated bytes `offset..offset+len` of a file: always a copy, since the files are
    /// obfuscated (and a map can be dropped under a borrower by `unmap_all`).
    pub fn read(&self, kind: FileKind, num: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        if kind == FileKind::Blk {
            if let Some(map) = self.final_map(num)? {
                let end = offset as usize + len;
                if end > map.len() {
                    bail!("{}: range {offset}+{len} is past the end", self.path(kind, num).display());
                }
                return Ok(self.key.copy(&map[offset as usize..end], offset));
            }
        }
        let path = self.path(kind, num);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut v = vec![0u8; len];
        file.read_exact_at(&mut v, offset)
            .with_context(|| format!("{}: cannot read {len} bytes at {offset}", path.display()))?;
        self.key.apply(&mut v, offset);
        Ok(v)
    }

    /// Whole-file bytes for scanning: mapped when final, read otherwise. Still obfuscated.
    pub fn file_bytes(&self, kind: FileKind, num: u32) -> Result<FileBytes> {
        let map = kind == FileKind::Blk && self.is_final_blk(num);
        FileBytes::open(&self.path(kind, num), map)
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
