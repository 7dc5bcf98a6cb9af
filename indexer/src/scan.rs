//! First pass over the blocks directory: the framing of every blk file, in parallel, keeping each
//! block's header, place and transaction count. No block body is read here.

use std::collections::HashMap;

use anyhow::{bail, Result};
use bitcoin::block::Header;
use bitcoin::BlockHash;
use rayon::prelude::*;
use tracing::{debug, warn};

use blkindex_shared::blkfile::{list_files, BlockFiles, FileKind};
use blkindex_shared::varint::Reader;
use blkindex_shared::Net;

use crate::progress::Progress;

/// A block found in a blk file.
#[derive(Clone, Copy, Debug)]
pub struct BlockEntry {
    pub header: Header,
    pub hash: BlockHash,
    pub file: u32,
    /// Payload offset in the file.
    pub offset: u32,
    pub len: u32,
    pub ntx: u32,
}

/// Every block in the blk files, stale ones included, by hash.
pub type BlockMap = HashMap<BlockHash, BlockEntry>;

pub fn scan_blk_files(files: &BlockFiles, net: Net, progress: &Progress) -> Result<BlockMap> {
    let nums = list_files(files.dir(), FileKind::Blk)?;
    if nums.is_empty() {
        bail!("no blk*.dat files in {}", files.dir().display());
    }
    let sizes: Vec<u64> = nums
        .iter()
        .map(|n| std::fs::metadata(files.path(FileKind::Blk, *n)).map(|m| m.len()).unwrap_or(0))
        .collect();
    progress.start("scanning headers", sizes.iter().sum(), nums.len() as u64, "files");
    let magic = net.magic();
    let per_file: Vec<Result<Vec<BlockEntry>>> = nums
        .par_iter()
        .zip(&sizes)
        .map(|(&num, &size)| {
            // The header and the transaction count: at most 80 + 9 bytes of each payload.
            let (records, heads, notes) = files.scan(FileKind::Blk, num, magic, 89)?;
            if notes.skipped > 0 {
                warn!(file = num, bytes = notes.skipped, "blk file has garbage between records; skipped it");
            }
            if notes.partial_tail {
                debug!(file = num, "blk file ends with a partly written record");
            }
            let mut out = Vec::with_capacity(records.len());
            for (rec, head) in records.into_iter().zip(heads) {
                let Ok(header) = bitcoin::consensus::deserialize::<Header>(&head[..80.min(head.len())])
                else {
                    warn!(file = num, offset = rec.offset, "unreadable block header; record skipped");
                    continue;
                };
                let mut r = Reader::new(&head[80..]);
                // Zero is what a record still being written reads as (bitcoind preallocates its
                // files): no valid block has no transactions.
                let Some(ntx) = r.compact_size().ok().filter(|&n| n > 0) else {
                    debug!(file = num, offset = rec.offset, "no transaction count yet; record skipped");
                    continue;
                };
                out.push(BlockEntry {
                    header,
                    hash: header.block_hash(),
                    file: num,
                    offset: rec.offset as u32,
                    len: rec.len,
                    ntx: ntx as u32,
                });
            }
            progress.inc(size, 1);
            Ok(out)
        })
        .collect();
    let mut map = BlockMap::new();
    for entries in per_file {
        for e in entries? {
            // The same block stored twice (a re-download) is the same block: keep the first.
            map.entry(e.hash).or_insert(e);
        }
    }
    progress.finish();
    if map.is_empty() {
        refuse_other_network(files, net, &nums)?;
        bail!("no {net} blocks found in {}", files.dir().display());
    }
    Ok(map)
}

/// A clear error when the files are another network's.
fn refuse_other_network(files: &BlockFiles, net: Net, nums: &[u32]) -> Result<()> {
    let mut head = files.read(FileKind::Blk, nums[0], 0, 4).unwrap_or_default();
    head.resize(4, 0);
    for other in ["mainnet", "testnet3", "testnet4", "signet", "regtest"] {
        let other: Net = other.parse().unwrap();
        if other != net && head == other.magic() {
            bail!("{} holds {other} blocks, not {net}: check --network and --datadir", files.dir().display());
        }
    }
    Ok(())
}
