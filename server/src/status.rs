//! Subscription statuses, for requests and for the notifications after each new tip or
//! mempool change: a script's Electrum status (its confirmed side from the script cache, its
//! unconfirmed side from the mempool) and an outpoint's (1.7).

use std::collections::HashSet;
use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, OutPoint, Transaction, Txid};
use serde_json::{json, Value};

use blkindex_shared::query::IndexReader;
use blkindex_shared::schema::Height;
use blkindex_shared::ScriptHash;

use crate::mempool::{Pool, ScriptMempool};
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

/// The confirmed side first, from the index (the slow part, no lock held), then one short look
/// at the mempool.
pub fn script_view(
    cache: &ScriptCache,
    index: &IndexReader,
    pool: Pool,
    sh: &ScriptHash,
) -> anyhow::Result<ScriptView> {
    let confirmed = cache.confirmed(index, sh)?;
    let history = confirmed.history();
    let mempool = pool.with(|m| {
        if !m.touches(sh) {
            return ScriptMempool::default(); // most scripts (and every one without a node)
        }
        // A transaction can be on both sides only if mined above the height through which the
        // mempool has let mined ones go: few entries, not the whole history.
        let above = m.cleared_through.map_or(0, |h| history.partition_point(|e| e.height <= h));
        let recent = &history[above..];
        match recent.len() {
            0..=16 => m.script(sh, |t| recent.iter().any(|h| h.txid == *t)),
            _ => {
                let recent: HashSet<&Txid> = recent.iter().map(|h| &h.txid).collect();
                m.script(sh, |t| recent.contains(t))
            }
        }
    });
    Ok(ScriptView { confirmed, mempool })
}

/// The status of script `sh` (see `ScriptView::status`).
pub fn script_status(
    cache: &ScriptCache,
    index: &IndexReader,
    pool: Pool,
    sh: &ScriptHash,
) -> anyhow::Result<Option<String>> {
    Ok(script_view(cache, index, pool, sh)?.status())
}

/// An outpoint's status (1.7), with what tells when it can next change.
#[derive(Clone, Debug, PartialEq)]
pub struct OutpointState {
    pub status: Value,
    /// The script its output pays, once the output exists (confirmed or not): a mempool change
    /// can only change the status if it touches this script.
    pub script: Option<ScriptHash>,
    /// The block of its confirmed spender: the status holds while that block is in the chain.
    pub spent_in: Option<(Height, BlockHash)>,
}

impl OutpointState {
    /// Whether the status may differ at `index`'s tip (its confirmed spender's block is gone,
    /// or it has none).
    pub fn may_change_at(&self, index: &IndexReader) -> bool {
        self.spent_in.is_none_or(|(h, hash)| index.chain.hash(h) != Some(hash))
    }

    /// Whether a mempool change touching `changed` scripts may change the status.
    pub fn may_change_with(&self, changed: &HashSet<ScriptHash>, pool: Pool, op: &OutPoint) -> bool {
        match (&self.spent_in, &self.script) {
            (Some(_), _) => false,
            (None, Some(sh)) => changed.contains(sh),
            // Not found yet: it matters only once its transaction is in the mempool.
            (None, None) => pool.with(|m| m.txs.contains_key(&op.txid)),
        }
    }
}

/// From the index (spenders are found through the spent script's history) and the mempool: no
/// node call is needed, so unlike ElectrumX this works with any node, without a spender index.
/// `{}` if the output never existed, `{funder_height}` while unspent, and with `spender_txhash`
/// and `spender_height` once spent; unconfirmed heights are 0 or -1 as in histories. The index
/// is read first, without the mempool's lock; the mempool is looked at once, at the end.
pub fn outpoint_status(
    cache: &ScriptCache,
    index: &IndexReader,
    pool: Pool,
    op: &OutPoint,
) -> anyhow::Result<OutpointState> {
    let confirmed = match index.txs_by_txid(&op.txid)?.pop() {
        Some(t) => {
            let tx: Transaction = deserialize(&t.raw)?;
            let paid = tx.output.get(op.vout as usize).map(|o| ScriptHash::of(o.script_pubkey.as_bytes()));
            Some((t.height, t.txnum, paid))
        }
        None => None,
    };
    let confirmed_spender = match confirmed {
        // Among its script's unspent outputs (cached, brought forward block by block): no need
        // to read the script's later transactions, which subscriptions would do on every block.
        // A script over the history limit is refused here, before any of that reading.
        Some((_, _, Some(sh)))
            if cache.confirmed(index, &sh)?.scan.state.utxos.iter().any(|u| u.outpoint == *op) =>
        {
            None
        }
        // The funding transaction is already read: look for the spender from there (the
        // script's rows are within the limit: its confirmed side was just computed).
        Some((_, funding, Some(sh))) => index.spender_after(op, funding, &sh, usize::MAX)?,
        _ => None,
    };
    let spent_in =
        confirmed_spender.as_ref().map(|t| (t.height, index.chain.hash(t.height).expect("indexed")));
    Ok(pool.with(|m| {
        let (funder_height, script) = match (confirmed, m.txs.get(&op.txid)) {
            (Some((height, _, Some(sh))), _) => (height as i64, sh),
            (None, Some(e)) if (op.vout as usize) < e.outputs() => {
                (m.height(&op.txid).unwrap() as i64, e.output(op.vout as usize).expect("checked").1)
            }
            _ => return OutpointState { status: json!({}), script: None, spent_in: None },
        };
        let spender = match &confirmed_spender {
            Some(t) => Some((t.txid, t.height as i64)),
            None => m.spenders.get(op).map(|t| (*t, m.height(t).unwrap() as i64)),
        };
        let status = match spender {
            None => json!({"funder_height": funder_height}),
            Some((txid, height)) => json!({
                "funder_height": funder_height,
                "spender_txhash": txid.to_string(),
                "spender_height": height,
            }),
        };
        OutpointState { status, script: Some(script), spent_in }
    }))
}
