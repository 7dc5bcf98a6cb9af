//! Reading what bitcoind appended to its blk and rev files since last time, for the follower. Only
//! record headers are read while walking (8 bytes, plus 89 of a block); the walk stops at bytes
//! that were never written (raw zeros of the preallocated tail) or a record still being written.
//! bitcoind writes a block and, when it connects it, the block's undo record before it announces
//! the block, so a block the node calls best is normally found here.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::Result;
use bitcoin::block::Header;
use bitcoin::BlockHash;
use tracing::debug;

use blkindex_shared::blkfile::{
    list_files, BlockFiles, FileKind, MAX_BLOCK_SIZE, MAX_UNDO_SIZE, UNDO_CHECKSUM_LEN,
};
use blkindex_shared::undo::checksum;
use blkindex_shared::varint::Reader;
use blkindex_shared::Net;

use crate::revmatch::UndoLoc;
use crate::scan::BlockEntry;

/// A rev record seen while tailing.
#[derive(Clone, Copy)]
struct RevRecord {
    loc: UndoLoc,
    sum: [u8; 32],
    /// Transactions it has undo data for (the block's count less the coinbase).
    ntx: u64,
}

pub struct Tail {
    net: Net,
    /// Next blk file and offset to read from.
    blk_file: u32,
    blk_offset: u64,
    blocks: HashMap<BlockHash, BlockEntry>,
    /// Per rev file: the offset read up to and the records seen.
    revs: HashMap<u32, (u64, Vec<RevRecord>)>,
}

/// A record header at `pos`: Some(payload length) if a whole record of a sane size is there.
fn record_at(
    file: &File,
    len: u64,
    pos: u64,
    files: &BlockFiles,
    magic: [u8; 4],
    max: u32,
    trailer: u64,
) -> Option<u32> {
    if pos + 8 > len {
        return None;
    }
    let mut head = [0u8; 8];
    file.read_exact_at(&mut head, pos).ok()?;
    if head == [0; 8] {
        return None; // never written
    }
    files.xor_key().apply(&mut head, pos);
    let size = u32::from_le_bytes(head[4..].try_into().unwrap());
    if head[..4] != magic || size == 0 || size > max || pos + 8 + size as u64 + trailer > len {
        return None;
    }
    Some(size)
}

impl Tail {
    /// Starts reading blk files at `file`, `offset` (the end of what is already indexed).
    pub fn new(net: Net, file: u32, offset: u64) -> Self {
        Tail { net, blk_file: file, blk_offset: offset, blocks: HashMap::new(), revs: HashMap::new() }
    }

    /// Reads the blocks appended to the blk files since the last call.
    pub fn poll_blocks(&mut self, files: &BlockFiles) -> Result<()> {
        let last = list_files(files.dir(), FileKind::Blk)?.last().copied().unwrap_or(0);
        loop {
            let path = files.path(FileKind::Blk, self.blk_file);
            if let Ok(file) = File::open(&path) {
                let len = file.metadata()?.len();
                while let Some(size) =
                    record_at(&file, len, self.blk_offset, files, self.net.magic(), MAX_BLOCK_SIZE, 0)
                {
                    let at = self.blk_offset + 8;
                    let mut head = vec![0u8; 89.min(size as usize)];
                    file.read_exact_at(&mut head, at)?;
                    files.xor_key().apply(&mut head, at);
                    if let Ok(header) = bitcoin::consensus::deserialize::<Header>(&head[..80.min(head.len())])
                    {
                        let ntx = Reader::new(&head[80..]).compact_size().unwrap_or(0) as u32;
                        let hash = header.block_hash();
                        let entry = BlockEntry {
                            header,
                            hash,
                            file: self.blk_file,
                            offset: at as u32,
                            len: size,
                            ntx,
                        };
                        debug!(%hash, file = self.blk_file, offset = at, "found block in blk file");
                        self.blocks.insert(hash, entry);
                    }
                    self.blk_offset = at + size as u64;
                }
            }
            if self.blk_file >= last {
                return Ok(());
            }
            self.blk_file += 1;
            self.blk_offset = 0;
        }
    }

    pub fn block(&self, hash: &BlockHash) -> Option<BlockEntry> {
        self.blocks.get(hash).copied()
    }

    pub fn forget(&mut self, hash: &BlockHash) {
        self.blocks.remove(hash);
    }

    /// The records of rev file `num` whose checksum says they undo a child of `prev` with `ntx`
    /// transactions. All of them: a stale sibling's record fits the checksum too, and the caller
    /// tells them apart by shape.
    pub fn undo_candidates(
        &mut self,
        files: &BlockFiles,
        num: u32,
        prev: &BlockHash,
        ntx: u32,
    ) -> Result<Vec<UndoLoc>> {
        let (offset, records) = self.revs.entry(num).or_default();
        let path = files.path(FileKind::Rev, num);
        if let Ok(file) = File::open(&path) {
            let len = file.metadata()?.len();
            let trailer = UNDO_CHECKSUM_LEN as u64;
            while let Some(size) =
                record_at(&file, len, *offset, files, self.net.magic(), MAX_UNDO_SIZE, trailer)
            {
                let at = *offset + 8;
                let mut sum = [0u8; 32];
                file.read_exact_at(&mut sum, at + size as u64)?;
                files.xor_key().apply(&mut sum, at + size as u64);
                let mut head = [0u8; 9];
                let n = head.len().min(size as usize);
                file.read_exact_at(&mut head[..n], at)?;
                files.xor_key().apply(&mut head[..n], at);
                let ntx = Reader::new(&head[..n]).compact_size().unwrap_or(u64::MAX);
                let loc = UndoLoc { file: num, offset: at as u32, len: size };
                records.push(RevRecord { loc, sum, ntx });
                *offset = at + size as u64 + trailer;
            }
        }
        let mut out = Vec::new();
        for r in records.iter().rev().filter(|r| r.ntx + 1 == ntx as u64) {
            let payload = files.read(FileKind::Rev, num, r.loc.offset as u64, r.loc.len as usize)?;
            if checksum(prev, &payload) == r.sum {
                out.push(r.loc);
            }
        }
        Ok(out)
    }
}
