//! 1.7's `blockchain.outpoint.*`: whether an output exists and who spends it, from the index
//! (spenders are found through the spent script's history) and the mempool. No node call is
//! needed, so unlike ElectrumX this works with any node, without a spender index.

use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::{OutPoint, Transaction};
use serde_json::{json, Value};

use blkindex_shared::query::Index;
use blkindex_shared::ScriptHash;

use super::*;
use crate::mempool::Mempool;
use crate::script_cache::ScriptCache;

pub async fn call(state: &Arc<State>, s: &mut Session, method: &str, params: &Value) -> Reply {
    let op = OutPoint { txid: txid_arg(params, 0)?, vout: u32_arg(params, 1, "txout_idx", None)? };
    if method == "blockchain.outpoint.unsubscribe" {
        return Ok(json!(s.outpoints.remove(&op).is_some()));
    }
    // The hint is for servers that index by script; ours finds the script itself.
    if let Some(hint) = arg(params, 2, "spk_hint") {
        hint.as_str()
            .filter(|h| hex::decode(h).is_ok())
            .ok_or_else(|| err(INVALID_PARAMS, "spk_hint must be a hex string"))?;
    }
    let st = state.clone();
    let status = state.read(move |i, m| outpoint_status(&st.scripts, i, m, &op)).await?;
    if method == "blockchain.outpoint.subscribe" {
        s.outpoints.insert(op, status.clone());
    }
    Ok(status)
}

/// `{}` if the output never existed, `{funder_height}` while unspent, and with `spender_txhash`
/// and `spender_height` once spent; unconfirmed heights are 0 or -1 as in histories.
pub fn outpoint_status(
    cache: &ScriptCache,
    index: &Index,
    mempool: &Mempool,
    op: &OutPoint,
) -> anyhow::Result<Value> {
    let confirmed = match index.txs_by_txid(&op.txid)?.pop() {
        Some(t) => {
            let tx: Transaction = deserialize(&t.raw)?;
            let paid = tx.output.get(op.vout as usize).map(|o| ScriptHash::of(o.script_pubkey.as_bytes()));
            Some((t.height, t.txnum, paid))
        }
        None => None,
    };
    let funder_height: i64 = match (confirmed, mempool.txs.get(&op.txid)) {
        (Some((height, _, Some(_))), _) => height as i64,
        (None, Some(e)) if (op.vout as usize) < e.tx.output.len() => mempool.height(&op.txid).unwrap() as i64,
        _ => return Ok(json!({})),
    };
    let confirmed_spender = match confirmed {
        // Among its script's unspent outputs (cached, brought forward block by block): no need
        // to read the script's later transactions, which subscriptions would do on every block.
        Some((_, _, Some(sh)))
            if cache.confirmed(index, &sh)?.scan.state.utxos.iter().any(|u| u.outpoint == *op) =>
        {
            None
        }
        // The funding transaction is already read: look for the spender from there.
        Some((_, funding, Some(sh))) => index.spender_after(op, funding, &sh)?,
        _ => None,
    };
    let spender = match confirmed_spender {
        Some(t) => Some((t.txid, t.height as i64)),
        None => mempool.spenders.get(op).map(|t| (*t, mempool.height(t).unwrap() as i64)),
    };
    Ok(match spender {
        None => json!({"funder_height": funder_height}),
        Some((txid, height)) => json!({
            "funder_height": funder_height,
            "spender_txhash": txid.to_string(),
            "spender_height": height,
        }),
    })
}
