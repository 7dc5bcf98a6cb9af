//! Bitcoin's merkle trees (odd levels pair their last node with itself): a block's merkle root,
//! which the indexer checks every block against, and the branches the server proves
//! transactions and checkpointed headers with.

use bitcoin::hashes::Hash;
use bitcoin::{TxMerkleNode, Txid};

use crate::hashes::sha256d_64;

/// The root of the tree over `leaves` (all zeros for none).
pub fn root(mut level: Vec<[u8; 32]>) -> [u8; 32] {
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| sha256d_64(&pair[0], pair.get(1).unwrap_or(&pair[0]))).collect();
    }
    level.first().copied().unwrap_or([0; 32])
}

/// The branch of the leaf at `pos` (deepest pairing first, as Electrum's `get_merkle` and
/// `cp_height` proofs list it) and the root.
pub fn branch_and_root(mut level: Vec<[u8; 32]>, mut pos: usize) -> (Vec<[u8; 32]>, [u8; 32]) {
    let mut branch = Vec::new();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().unwrap());
        }
        branch.push(level[pos ^ 1]);
        level = level.chunks(2).map(|pair| sha256d_64(&pair[0], &pair[1])).collect();
        pos /= 2;
    }
    (branch, level.first().copied().unwrap_or([0; 32]))
}

/// A block's merkle root from its txids.
pub fn tx_root(txids: &[Txid]) -> TxMerkleNode {
    TxMerkleNode::from_byte_array(root(txids.iter().map(|t| t.to_byte_array()).collect()))
}

/// The merkle branch of the transaction at `pos` in its block.
pub fn tx_branch(txids: &[Txid], pos: usize) -> Vec<TxMerkleNode> {
    let leaves = txids.iter().map(|t| t.to_byte_array()).collect();
    branch_and_root(leaves, pos).0.into_iter().map(TxMerkleNode::from_byte_array).collect()
}

/// Leaves under one cached node of `PrefixTree`'s lowest cached level.
const CHUNK_LEVEL: usize = 6;

/// The merkle tree over a prefix of a growing list of leaves (the chain's block hashes, for
/// `cp_height` proofs), with the roots of its complete aligned subtrees of 64 leaves and up
/// kept: a branch and root for any prefix then cost O(log n) hashes (at most 63 for each level
/// below the kept ones), not O(n). Those roots do not depend on the prefix's length, so one
/// tree serves every checkpoint. About 2 × 32 bytes per 64 leaves.
#[derive(Default)]
pub struct PrefixTree {
    /// `levels[k]`: the roots of the complete subtrees at level `CHUNK_LEVEL + k`, in order.
    levels: Vec<Vec<[u8; 32]>>,
    /// The last leaf of each lowest-level subtree: if a leaf changed (a reorg), so did every
    /// leaf after it (a block hash commits to its parent's), so checking these finds it.
    last_leaves: Vec<[u8; 32]>,
}

impl PrefixTree {
    /// Brings the kept roots in line with the first `n` leaves: subtrees whose leaves changed
    /// are dropped, complete ones added. Subtrees beyond `n` are kept unchecked (a shorter view
    /// of the chain, from a reader behind) and never used for such a prefix.
    pub fn sync(&mut self, n: usize, leaf: impl Fn(usize) -> [u8; 32]) {
        let chunk = 1 << CHUNK_LEVEL;
        let mut valid = self.last_leaves.len().min(n / chunk);
        while valid > 0 && leaf(valid * chunk - 1) != self.last_leaves[valid - 1] {
            valid -= 1;
        }
        if valid < self.last_leaves.len().min(n / chunk) {
            self.truncate(valid);
        }
        while self.last_leaves.len() < n / chunk {
            let c = self.last_leaves.len();
            let root = complete_root(CHUNK_LEVEL, c, &leaf);
            self.push(0, root);
            self.last_leaves.push(leaf((c + 1) * chunk - 1));
        }
    }

    /// The branch of leaf `pos` in the tree over the first `n` leaves (deepest first, as
    /// `branch_and_root`), and its root. `sync(n, …)` must have been called with these leaves.
    pub fn branch_and_root(
        &self,
        n: usize,
        pos: usize,
        leaf: impl Fn(usize) -> [u8; 32],
    ) -> (Vec<[u8; 32]>, [u8; 32]) {
        assert!(pos < n, "leaf {pos} of {n}");
        let mut branch = Vec::new();
        let (mut level, mut i, mut width) = (0, pos, n);
        while width > 1 {
            let sibling = i ^ 1;
            branch.push(self.node(level, if sibling < width { sibling } else { i }, n, &leaf));
            (level, i, width) = (level + 1, i / 2, width.div_ceil(2));
        }
        (branch, self.node(level, 0, n, &leaf))
    }

    /// Node `i` of `level` in the tree over `n` leaves.
    fn node(&self, level: usize, i: usize, n: usize, leaf: &impl Fn(usize) -> [u8; 32]) -> [u8; 32] {
        if level == 0 {
            return leaf(i);
        }
        let complete = (i + 1) << level <= n;
        if complete {
            if let Some(kept) = level.checked_sub(CHUNK_LEVEL).and_then(|k| self.levels.get(k)?.get(i)) {
                return *kept;
            }
            return complete_root(level, i, leaf);
        }
        // On the right edge: the last node of a level of odd width pairs with itself.
        let below = n.div_ceil(1 << (level - 1));
        let left = self.node(level - 1, 2 * i, n, leaf);
        let right = if 2 * i + 1 < below { self.node(level - 1, 2 * i + 1, n, leaf) } else { left };
        sha256d_64(&left, &right)
    }

    /// Adds a complete root at `levels[k]`, and the parent it completes.
    fn push(&mut self, k: usize, root: [u8; 32]) {
        if self.levels.len() == k {
            self.levels.push(Vec::new());
        }
        self.levels[k].push(root);
        let level = &self.levels[k];
        if level.len().is_multiple_of(2) {
            let parent = sha256d_64(&level[level.len() - 2], &level[level.len() - 1]);
            self.push(k + 1, parent);
        }
    }

    /// Keeps the first `chunks` lowest-level subtrees and what is built only from them.
    fn truncate(&mut self, chunks: usize) {
        self.last_leaves.truncate(chunks);
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate(chunks >> k);
        }
        self.levels.retain(|l| !l.is_empty());
    }
}

/// The root of the complete subtree `i` of `level` (leaves `i << level` to `(i + 1) << level`).
fn complete_root(level: usize, i: usize, leaf: &impl Fn(usize) -> [u8; 32]) -> [u8; 32] {
    let first = i << level;
    root((first..first + (1 << level)).map(leaf).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block 100000 of mainnet: four transactions.
    fn block_100000() -> (Vec<Txid>, TxMerkleNode) {
        let txids = [
            "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
            "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
            "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
            "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let root = "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766".parse().unwrap();
        (txids, root)
    }

    #[test]
    fn root_of_a_mainnet_block() {
        let (txids, root) = block_100000();
        assert_eq!(tx_root(&txids), root);
        // Three leaves: the odd last node pairs with itself, as bitcoin's own computation does.
        let three = bitcoin::merkle_tree::calculate_root(txids[..3].iter().map(|t| t.to_raw_hash()));
        assert_eq!(tx_root(&txids[..3]).to_raw_hash(), three.unwrap());
        assert_eq!(tx_root(&[]), TxMerkleNode::all_zeros());
    }

    #[test]
    fn branch_proves_every_leaf() {
        let (txids, root) = block_100000();
        for n in 1..=txids.len() {
            let want = tx_root(&txids[..n]);
            for (pos, txid) in txids[..n].iter().enumerate() {
                let mut acc = txid.to_byte_array();
                for (level, node) in tx_branch(&txids[..n], pos).iter().enumerate() {
                    acc = match (pos >> level) & 1 {
                        0 => sha256d_64(&acc, node.as_byte_array()),
                        _ => sha256d_64(node.as_byte_array(), &acc),
                    };
                }
                assert_eq!(TxMerkleNode::from_byte_array(acc), want, "leaf {pos} of {n}");
            }
        }
        assert_eq!(tx_root(&txids), root);
        assert!(tx_branch(&txids[..1], 0).is_empty());
    }

    #[test]
    fn prefix_tree_proofs_equal_a_tree_built_whole_through_growth_and_reorgs() {
        let hash = |salt: u8, i: usize| -> [u8; 32] {
            let mut b = [salt; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b
        };
        let mut salt_from = usize::MAX; // leaves from here on are of a reorged branch
        let mut tree = PrefixTree::default();
        let mut seed = 7u64;
        let mut next = |m: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % m
        };
        for round in 0..60 {
            if round == 30 {
                salt_from = 700; // a reorg: every leaf from 700 on changes
            }
            let leaf = |i: usize| hash(if i >= salt_from { 9 } else { 1 }, i);
            let n = 1 + next(1500);
            tree.sync(n, leaf);
            let leaves: Vec<[u8; 32]> = (0..n).map(leaf).collect();
            for pos in [0, n - 1, next(n), next(n)] {
                assert_eq!(
                    tree.branch_and_root(n, pos, leaf),
                    branch_and_root(leaves.clone(), pos),
                    "n {n} pos {pos}"
                );
            }
        }
        assert!(!tree.levels.is_empty(), "roots were kept");
    }
}
