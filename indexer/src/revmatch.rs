//! Ties rev-file records to the best-chain blocks they undo. A rev record sits in the rev file with
//! its block's file number, and its checksum is SHA256d(previous block hash ‖ undo bytes), so it is
//! matched by trying the chain blocks of that file, in connection order first. A stale sibling
//! shares the previous hash, so the checksum cannot tell the two apart: every matching record is
//! kept, and the indexer picks the one whose shape fits the block (or asks the node).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use bitcoin::BlockHash;
use rayon::prelude::*;
use tracing::warn;

use blkindex_shared::blkfile::{scan_records, BlockFiles, FileKind, UNDO_CHECKSUM_LEN};
use blkindex_shared::undo::{checksum, BlockUndo};
use blkindex_shared::Net;

use crate::bestchain::ChainBlock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoLoc {
    pub file: u32,
    pub offset: u32,
    pub len: u32,
}

/// A chain block as the matcher sees it.
#[derive(Clone, Copy)]
struct Wanted {
    hash: BlockHash,
    prev: BlockHash,
    ntx: u32,
}

#[derive(Default)]
pub struct UndoIndex {
    by_block: HashMap<BlockHash, Vec<UndoLoc>>,
    matched_files: HashSet<u32>,
}

impl UndoIndex {
    /// Candidates for a block's undo record (usually exactly one).
    pub fn get(&self, hash: &BlockHash) -> &[UndoLoc] {
        self.by_block.get(hash).map_or(&[], |v| v.as_slice())
    }

    /// Matches the rev files `nums` (those not matched yet) against the chain blocks they hold.
    pub fn match_files(
        &mut self,
        files: &BlockFiles,
        net: Net,
        chain: &[ChainBlock],
        nums: &[u32],
    ) -> Result<()> {
        let todo: HashSet<u32> = nums.iter().copied().filter(|n| !self.matched_files.contains(n)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let mut wanted: HashMap<u32, Vec<Wanted>> = HashMap::new();
        for b in chain.iter().skip(1) {
            if let Some(e) = b.entry.filter(|e| todo.contains(&e.file)) {
                wanted.entry(e.file).or_default().push(Wanted {
                    hash: b.hash,
                    prev: b.header.prev_blockhash,
                    ntx: e.ntx,
                });
            }
        }
        let results: Vec<Result<Vec<(BlockHash, UndoLoc)>>> = todo
            .par_iter()
            .map(|&num| match wanted.get(&num) {
                Some(w) => match_file(files, net, num, w),
                None => Ok(Vec::new()),
            })
            .collect();
        for r in results {
            for (hash, loc) in r? {
                self.by_block.entry(hash).or_default().push(loc);
            }
        }
        self.matched_files.extend(todo);
        Ok(())
    }
}

fn match_file(
    files: &BlockFiles,
    net: Net,
    num: u32,
    wanted: &[Wanted],
) -> Result<Vec<(BlockHash, UndoLoc)>> {
    let path = files.path(FileKind::Rev, num);
    if !path.exists() {
        warn!(file = num, "no rev file for blk file; its blocks' spent outputs will come from the node");
        return Ok(Vec::new());
    }
    // Rev files are read, never mapped: bitcoind may still append to any of them.
    let bytes = files.file_bytes(FileKind::Rev, num)?;
    let key = files.xor_key();
    let (records, _) = scan_records(bytes.bytes(), &key, net.magic(), FileKind::Rev);
    let mut by_ntx: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, w) in wanted.iter().enumerate() {
        by_ntx.entry(w.ntx - 1).or_default().push(i);
    }
    let mut out = Vec::new();
    let mut next = 0usize; // undo is written in connection order, which is mostly height order
    for rec in records {
        let mut payload = bytes.bytes()[rec.offset as usize..rec.offset as usize + rec.len as usize].to_vec();
        key.apply(&mut payload, rec.offset);
        let sum_at = rec.offset + rec.len as u64;
        let mut sum = bytes.bytes()[sum_at as usize..sum_at as usize + UNDO_CHECKSUM_LEN].to_vec();
        key.apply(&mut sum, sum_at);
        let Ok(ntx_undo) = BlockUndo::tx_count(&payload) else {
            continue;
        };
        let fits = |w: &Wanted| w.ntx - 1 == ntx_undo as u32 && checksum(&w.prev, &payload)[..] == sum[..];
        let found = match wanted.get(next).filter(|w| fits(w)) {
            Some(_) => Some(next),
            None => {
                by_ntx.get(&(ntx_undo as u32)).and_then(|c| c.iter().copied().find(|&i| fits(&wanted[i])))
            }
        };
        if let Some(i) = found {
            next = i + 1;
            // A stale sibling's record fits too (same previous block): it is kept as a second
            // candidate and told apart by shape when the block is indexed.
            out.push((wanted[i].hash, UndoLoc { file: num, offset: rec.offset as u32, len: rec.len }));
        }
    }
    Ok(out)
}
