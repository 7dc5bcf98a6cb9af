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

/// What the node's own transactions say about silent payments, block by block from `from` to
/// its tip: each eligible transaction (txnum, BIP352 tweak, taproot output prefixes) by
/// `blkindex_shared::silent::tweak` over the transaction as `getblock 3` gives it and the
/// prevout scripts the node reports (not the index's undo data). Also how many eligible
/// transactions spend a P2TR output and how many a P2WPKH one, so that a test can tell that
/// both kinds were exercised.
pub fn expected_tweaks(node: &Node, from: u32) -> Result<SpExpected> {
    use blkindex_shared::silent::{self, TweakedTx};
    let tip = node.height()?;
    let mut out = SpExpected::default();
    let mut txnum = 0u32;
    for h in 0..=tip {
        let hash = node.call("getblockhash", json!([h]))?;
        let block = node.call("getblock", json!([hash, 3]))?;
        let txs = block["tx"].as_array().context("tx")?;
        let mut eligible = Vec::new();
        for (i, tx) in txs.iter().enumerate() {
            let n = txnum + i as u32;
            if i == 0 || (h as u32) < from {
                continue;
            }
            let raw = hex::decode(tx["hex"].as_str().context("hex")?)?;
            let parsed: bitcoin::Transaction = bitcoin::consensus::deserialize(&raw)?;
            let spent: Vec<bitcoin::ScriptBuf> = tx["vin"]
                .as_array()
                .context("vin")?
                .iter()
                .map(|i| {
                    let s = i["prevout"]["scriptPubKey"]["hex"].as_str().context("prevout script")?;
                    Ok(bitcoin::ScriptBuf::from_bytes(hex::decode(s)?))
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&bitcoin::Script> = spent.iter().map(|s| s.as_script()).collect();
            if let Some(tweak) = silent::tweak(&parsed, &refs) {
                out.p2tr_spends += spent.iter().any(|s| s.is_p2tr()) as usize;
                out.p2wpkh_spends += spent.iter().any(|s| s.is_p2wpkh()) as usize;
                eligible.push(TweakedTx { txnum: n, tweak, outputs: silent::output_prefixes(&parsed) });
            }
        }
        txnum += txs.len() as u32;
        if !eligible.is_empty() {
            out.blocks.push((h as u32, eligible));
        }
    }
    Ok(out)
}

#[derive(Default, Debug)]
pub struct SpExpected {
    /// The blocks with eligible transactions, in height order, as `IndexReader::tweaks` gives them.
    pub blocks: Vec<(u32, Vec<blkindex_shared::silent::TweakedTx>)>,
    /// Eligible transactions with a P2TR input, and with a P2WPKH input.
    pub p2tr_spends: usize,
    pub p2wpkh_spends: usize,
}
