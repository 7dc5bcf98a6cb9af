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
}
