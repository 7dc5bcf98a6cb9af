//! What the index must say, computed from the node alone (`getblock <hash> 3` over the best chain).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use bitcoin::{BlockHash, OutPoint, Txid};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;

use crate::node::Node;

#[derive(Default, Debug)]
pub struct Expected {
    /// Each script's confirmed history in chain order.
    pub history: HashMap<ScriptHash, Vec<(Txid, u32)>>,
    /// Each script's unspent outputs: outpoint → (value, height).
    pub utxos: HashMap<ScriptHash, BTreeMap<OutPoint, (u64, u32)>>,
    /// Every transaction of the chain but the genesis coinbase: (txid, height, block hash, position).
    pub txs: Vec<(Txid, u32, BlockHash, u32)>,
    /// Spender of each spent outpoint: (txid, height).
    pub spenders: HashMap<OutPoint, (Txid, u32)>,
    /// The script behind each script hash.
    pub scripts: HashMap<ScriptHash, Vec<u8>>,
}

fn sats(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1e8).round() as u64
}

fn is_op_return(hex_script: &str) -> bool {
    hex_script.starts_with("6a")
}

pub fn expected(node: &Node) -> Result<Expected> {
    let tip = node.height()?;
    let mut e = Expected::default();
    let mut owner: HashMap<OutPoint, ScriptHash> = HashMap::new();
    for h in 1..=tip {
        let hash = node.call("getblockhash", json!([h]))?;
        let block = node.call("getblock", json!([hash, 3]))?;
        let block_hash: BlockHash = hash.as_str().unwrap().parse()?;
        for (pos, tx) in block["tx"].as_array().context("tx")?.iter().enumerate() {
            let txid: Txid = tx["txid"].as_str().unwrap().parse()?;
            e.txs.push((txid, h as u32, block_hash, pos as u32));
            let mut touched: Vec<ScriptHash> = Vec::new();
            for vin in tx["vin"].as_array().unwrap() {
                if vin.get("coinbase").is_some() {
                    continue;
                }
                let script = hex::decode(vin["prevout"]["scriptPubKey"]["hex"].as_str().unwrap())?;
                let sh = ScriptHash::of(&script);
                e.scripts.insert(sh, script);
                touched.push(sh);
                let op = OutPoint {
                    txid: vin["txid"].as_str().unwrap().parse()?,
                    vout: vin["vout"].as_u64().unwrap() as u32,
                };
                if let Some(sh) = owner.remove(&op) {
                    e.utxos.get_mut(&sh).unwrap().remove(&op);
                }
                e.spenders.insert(op, (txid, h as u32));
            }
            for (vout, out) in tx["vout"].as_array().unwrap().iter().enumerate() {
                let hex_script = out["scriptPubKey"]["hex"].as_str().unwrap();
                if is_op_return(hex_script) {
                    continue;
                }
                let script = hex::decode(hex_script)?;
                let sh = ScriptHash::of(&script);
                e.scripts.insert(sh, script);
                touched.push(sh);
                let op = OutPoint { txid, vout: vout as u32 };
                owner.insert(op, sh);
                e.utxos.entry(sh).or_default().insert(op, (sats(&out["value"]), h as u32));
            }
            touched.sort();
            touched.dedup();
            for sh in touched {
                e.history.entry(sh).or_default().push((txid, h as u32));
            }
        }
    }
    Ok(e)
}
