//! Which blocks to index: the chain ending at the node's best block when its RPC answers, else the
//! most-work chain found in the blk files. Stale blocks are never part of it.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bitcoin::block::Header;
use bitcoin::{BlockHash, Work};
use tracing::{info, warn};

use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::{BlockLoc, HeaderRow};
use blkindex_shared::Net;

use crate::scan::{BlockEntry, BlockMap};

#[derive(Clone, Copy, Debug)]
pub struct ChainBlock {
    pub hash: BlockHash,
    pub header: Header,
    /// Where it is in the blk files; None when only the node has it (not yet flushed to a file).
    pub entry: Option<BlockEntry>,
}

impl ChainBlock {
    /// An indexed block, from its header row: its place in the blk files is the row's.
    pub fn from_row(row: &HeaderRow) -> Self {
        let hash = row.hash();
        let entry = match row.loc {
            BlockLoc::File { file, offset, len } => {
                Some(BlockEntry { header: row.header, hash, file, offset, len, ntx: row.tx_count })
            }
            BlockLoc::Db { .. } => None,
        };
        ChainBlock { hash, header: row.header, entry }
    }
}

/// The best chain from genesis to the tip.
pub fn select(map: &BlockMap, net: Net, rpc: Option<&Rpc>) -> Result<Vec<ChainBlock>> {
    let genesis = net.genesis_hash();
    if !map.contains_key(&genesis) {
        bail!("the {net} genesis block is not in the blk files: wrong --network or data directory?");
    }
    let tip = match rpc.map(|r| r.best_block_hash()) {
        Some(Ok(tip)) => {
            info!(%tip, "best block from the node");
            Some(tip)
        }
        Some(Err(e)) => {
            warn!("{e}; indexing the most-work chain in the blk files instead");
            None
        }
        None => None,
    };
    let tip = match tip {
        Some(t) => t,
        None => most_work_tip(map, genesis),
    };
    let mut chain = Vec::new();
    let mut cur = tip;
    loop {
        let block = match map.get(&cur) {
            Some(e) => ChainBlock { hash: cur, header: e.header, entry: Some(*e) },
            None => {
                let rpc = rpc.context("a best-chain block is missing from the blk files and no RPC")?;
                let header = rpc.header(&cur).with_context(|| format!("header of block {cur}"))?;
                ChainBlock { hash: cur, header, entry: None }
            }
        };
        chain.push(block);
        if cur == genesis {
            break;
        }
        cur = block.header.prev_blockhash;
    }
    chain.reverse();
    let missing = chain.iter().filter(|b| b.entry.is_none()).count();
    if missing > 0 {
        info!(missing, "best-chain blocks not in the blk files yet; they will be fetched over RPC");
    }
    Ok(chain)
}

/// The tip of the chain with the most work among the blocks connected to genesis.
fn most_work_tip(map: &BlockMap, genesis: BlockHash) -> BlockHash {
    let mut children: HashMap<BlockHash, Vec<BlockHash>> = HashMap::new();
    for e in map.values() {
        if e.hash != genesis {
            children.entry(e.header.prev_blockhash).or_default().push(e.hash);
        }
    }
    let mut best = (map[&genesis].header.work(), 0u32, genesis);
    let mut stack = vec![(genesis, map[&genesis].header.work(), 0u32)];
    while let Some((hash, work, height)) = stack.pop() {
        if (work, height) > (best.0, best.1) {
            best = (work, height, hash);
        }
        for child in children.get(&hash).into_iter().flatten() {
            let w: Work = work + map[child].header.work();
            stack.push((*child, w, height + 1));
        }
    }
    info!(tip = %best.2, height = best.1, "most-work chain in the blk files");
    best.2
}
