//! 1.7's `blockchain.outpoint.*`: whether an output exists and who spends it
//! (`status::outpoint_status`), once or as a subscription.

use std::sync::Arc;

use bitcoin::OutPoint;
use serde_json::{json, Value};

use super::*;
use crate::status::outpoint_status;

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
    let status = state.read(move |i, m| outpoint_status(st.scripts(), i, m, &op)).await?;
    if method == "blockchain.outpoint.subscribe" {
        s.outpoints.insert(op, status.clone());
    }
    Ok(status)
}
