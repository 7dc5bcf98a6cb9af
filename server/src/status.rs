//! Subscription statuses, for requests and for the notifications after each new tip or
//! mempool change: a script's Electrum status (its confirmed side from the script cache, its
//! unconfirmed side from the mempool) and an outpoint's (1.7).

use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::{OutPoint, Transaction};
use serde_json::{json, Value};

use blkindex_shared::query::IndexReader;
use blkindex_shared::ScriptHash;

use crate::mempool::{Mempool, ScriptMempool};
use crate::script_cache::{Confirmed, ScriptCache};

/// A script's confirmed and unconfirmed sides, seen together. A transaction found on both sides
/// (mined since the mempool was last read) counts as confirmed.
pub struct ScriptView {
    pub confirmed: Arc<Confirmed>,
    pub mempool: ScriptMempool,
}

impl ScriptView {
    /// Electrum's status of the script: sha256 of "txid:height:" for every transaction of the
    /// history (confirmed in chain order, then unconfirmed in 1.6's order), or None for none.
    pub fn status(&self) -> Option<String> {
        self.confirmed.status(&self.mempool.history)
    }
}

pub fn script_view(
    cache: &ScriptCache,
    index: &IndexReader,
    mempool: &Mempool,
    sh: &ScriptHash,
) -> anyhow::Result<ScriptView> {
    let confirmed = cache.confirmed(index, sh)?;
    // Mined-since-read transactions are few and recent: search the history from its end.
    let history = confirmed.history();
    let mempool = mempool.script(sh, |t| history.iter().rev().any(|h| h.txid == *t));
    Ok(ScriptView { confirmed, mempool })
}

/// The status of script `sh` (see `ScriptView::status`).
pub fn script_status(
    cache: &ScriptCache,
    index: &IndexReader,
    mempool: &Mempool,
    sh: &ScriptHash,
) -> anyhow::Result<Option<String>> {
    Ok(script_view(cache, index, mempool, sh)?.status())
}

/// From the index (spenders are found through the spent script's history) and the mempool: no
/// node call is needed, so unlike ElectrumX this works with any node, without a spender index.
/// `{}` if the output never existed, `{funder_height}` while unspent, and with `spender_txhash`
/// and `spender_height` once spent; unconfirmed heights are 0 or -1 as in histories.
pub fn outpoint_status(
    cache: &ScriptCache,
    index: &IndexReader,
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
