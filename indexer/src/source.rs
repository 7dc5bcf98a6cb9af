//! Where a block's bytes and spent outputs come from: the node's blk and rev files, the index's
//! `rawblock` family (blocks the files never had), or the node over RPC. The bulk pass, unwinding
//! and the follower all ask here, so each rule (which rev record fits, when to fall back to the
//! node) holds in one place.

use anyhow::{anyhow, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use serde_json::{json, Value};
use tracing::warn;

use blkindex_shared::blkfile::{BlockFiles, FileKind};
use blkindex_shared::rpc::{btc_to_sat, Rpc};
use blkindex_shared::schema::{cf, BlockLoc, Height, TxNum};
use blkindex_shared::store::Store;
use blkindex_shared::undo::{BlockUndo, Coin};
use blkindex_shared::Net;

use crate::bestchain::ChainBlock;
use crate::revmatch::UndoLoc;
use crate::rows::{block_rows, undo_fits, verify, BlockRows, CheckedBlock, SpRows};
use crate::scan::{BlockEntry, BlockMap};

pub struct BlockSource<'a> {
    pub files: &'a BlockFiles,
    pub store: &'a Store,
    pub net: Net,
    /// None with `--offline`: only the files and the index are read.
    pub rpc: Option<&'a Rpc>,
    /// The index's silent-payment setting (`meta/tweakstart`: which blocks get silent-payment
    /// rows), and whether their tweaks are left to the tweak pass (the bulk pass's source).
    pub sp: SpRows,
}

impl BlockSource<'_> {
    /// The node's RPC, or an error naming what needed it.
    pub fn rpc(&self, what: &str) -> Result<&Rpc> {
        self.rpc.ok_or_else(|| anyhow!("{what} needs the node's RPC (drop --offline)"))
    }

    /// A block's bytes wherever they are: blk files, the rawblock family, or the node.
    pub fn block_bytes(
        &self,
        map: &BlockMap,
        hash: &BlockHash,
        entry: Option<&BlockEntry>,
    ) -> Result<Vec<u8>> {
        if let Some(e) = entry.or_else(|| map.get(hash)) {
            return self.files.read(FileKind::Blk, e.file, e.offset as u64, e.len as usize);
        }
        if let Some(raw) = self.store.db().get_cf(self.store.cf(cf::RAWBLOCK), hash.as_byte_array())? {
            return Ok(raw);
        }
        let rpc = self.rpc.ok_or_else(|| anyhow!("block {hash} is in no blk file and there is no RPC"))?;
        Ok(rpc.block_bytes(hash)?)
    }

    /// The undo data among these rev records that fits the block (told apart from a stale
    /// sibling's by shape), or the node's when the files cannot say.
    pub fn undo_from(
        &self,
        locs: &[UndoLoc],
        b: &ChainBlock,
        height: Height,
        block: &CheckedBlock,
    ) -> Result<Option<BlockUndo>> {
        if height == 0 {
            return Ok(None);
        }
        let mut fitting: Vec<(Vec<u8>, BlockUndo)> = Vec::new();
        for loc in locs {
            let payload = self.files.read(FileKind::Rev, loc.file, loc.offset as u64, loc.len as usize)?;
            // Byte-identical records (siblings spending the same coins, as a conflicting reorg
            // makes them) give the same rows: one of them is as good as the other.
            if fitting.iter().any(|(p, _)| *p == payload) {
                continue;
            }
            match BlockUndo::decode(&payload) {
                Ok(u) if undo_fits(block, &u) => fitting.push((payload, u)),
                Ok(_) => {}
                Err(e) => warn!(height, file = loc.file, "corrupt rev record: {e}"),
            }
        }
        if fitting.len() == 1 {
            return Ok(fitting.pop().map(|(_, u)| u));
        }
        let why = if fitting.is_empty() { "no usable undo record" } else { "several undo records fit" };
        let rpc = self.rpc.ok_or_else(|| {
            anyhow!(
                "block {} at height {height}: {why} in the rev files, and the node's RPC is not available",
                b.hash
            )
        })?;
        Ok(Some(
            undo_from_rpc(rpc, &b.hash)
                .with_context(|| format!("block {} at height {height}: {why}", b.hash))?,
        ))
    }

    /// Rows of a block fetched from the node, with its bytes, which the caller keeps in the
    /// `rawblock` family (they are in no blk file the server could read).
    pub fn rows_from_node(
        &self,
        hash: &BlockHash,
        height: Height,
        txnum: TxNum,
    ) -> Result<(BlockRows, Vec<u8>)> {
        let rpc = self.rpc("fetching a block from the node")?;
        let bytes = rpc.block_bytes(hash)?;
        let checked = verify(&bytes).with_context(|| format!("block {hash} from the node"))?;
        let undo = if height == 0 { None } else { Some(undo_from_rpc(rpc, hash)?) };
        let loc = BlockLoc::Db { len: bytes.len() as u32 };
        Ok((block_rows(height, &bytes, &checked, txnum, loc, undo.as_ref(), self.sp)?, bytes))
    }
}

/// The spent outputs of a block as the node reports them (`getblock <hash> 3`), as undo data.
pub fn undo_from_rpc(rpc: &Rpc, hash: &BlockHash) -> Result<BlockUndo> {
    undo_from_getblock(&rpc.call("getblock", json!([hash.to_string(), 3]))?)
}

/// Undo data from a `getblock` verbosity-3 answer: each non-coinbase input's `prevout`.
pub fn undo_from_getblock(v: &Value) -> Result<BlockUndo> {
    let txs = v["tx"].as_array().context("getblock 3: no tx array")?;
    let mut undo = BlockUndo::default();
    for tx in txs.iter().skip(1) {
        let vin = tx["vin"].as_array().context("getblock 3: no vin")?;
        undo.tx_inputs.push(vin.len() as u32);
        for input in vin {
            let prevout = &input["prevout"];
            let script = hex::decode(
                prevout["scriptPubKey"]["hex"].as_str().context("getblock 3: no prevout script")?,
            )?;
            let value = btc_to_sat(&prevout["value"]).context("getblock 3: prevout value")?;
            let start = undo.scripts.len() as u32;
            undo.scripts.extend_from_slice(&script);
            undo.coins.push(Coin {
                height: prevout["height"].as_u64().context("getblock 3: no prevout height")? as u32,
                coinbase: prevout["generated"].as_bool().context("getblock 3: no prevout generated")?,
                value,
                script: start..undo.scripts.len() as u32,
            });
        }
    }
    Ok(undo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `getblock <hash> 3` answer of Bitcoin Knots 29.4 on regtest, cut to what is read: a
    /// coinbase and a transaction spending a P2WPKH and a coinbase output.
    const GETBLOCK_3: &str = r#"{"hash": "00", "height": 205, "tx": [
        {"txid": "aa", "vin": [{"coinbase": "02cd0000"}], "vout": []},
        {"txid": "bb", "vin": [
            {"txid": "cc", "vout": 1, "prevout": {"generated": false, "height": 204, "value": 12.34567891,
                "scriptPubKey": {"hex": "0014751e76e8199196d454941c45d1b3a323f1433bd6"}}},
            {"txid": "dd", "vout": 0, "prevout": {"generated": true, "height": 3, "value": 50.00000000,
                "scriptPubKey": {"hex": "51"}}}
        ], "vout": []}
    ]}"#;

    #[test]
    fn undo_from_getblock_3() {
        let undo = undo_from_getblock(&serde_json::from_str(GETBLOCK_3).unwrap()).unwrap();
        assert_eq!(undo.tx_inputs, vec![2]);
        let coins: Vec<_> = undo
            .coins
            .iter()
            .map(|c| {
                (
                    c.height,
                    c.coinbase,
                    c.value,
                    hex::encode(&undo.scripts[c.script.start as usize..c.script.end as usize]),
                )
            })
            .collect();
        assert_eq!(
            coins,
            vec![
                (204, false, 1_234_567_891, "0014751e76e8199196d454941c45d1b3a323f1433bd6".to_string()),
                (3, true, 5_000_000_000, "51".to_string()),
            ]
        );
    }

    #[test]
    fn undo_from_getblock_refuses_what_it_cannot_read() {
        let mut v: Value = serde_json::from_str(GETBLOCK_3).unwrap();
        v["tx"][1]["vin"][0]["prevout"]["value"] = json!("12.3");
        assert!(undo_from_getblock(&v).is_err());
        v["tx"][1]["vin"][0]["prevout"] = json!(null);
        assert!(undo_from_getblock(&v).is_err());
        assert!(undo_from_getblock(&json!({})).is_err());
    }
}
