//! Fees and the mempool at large: estimates and relay fees from the node, the histogram and
//! recent arrivals from the tracked mempool.

use std::sync::Arc;

use serde_json::json;

use super::*;

/// `blockchain.estimatefee`: the node's `estimatesmartfee`, -1 when it has no estimate.
pub async fn estimate(state: &Arc<State>, target: u32, mode: Option<String>) -> Reply {
    let call = match mode {
        Some(m) => json!([target, m]),
        None => json!([target]),
    };
    let v = state.node_reused("estimatesmartfee", call).await.map_err(ServerError::daemon)?;
    // No estimate (a new node, regtest) is -1, not an error.
    Ok(v.get("feerate").cloned().unwrap_or(json!(-1)))
}

pub async fn relay_fee(state: &Arc<State>) -> Reply {
    let v = state.node_reused("getnetworkinfo", json!([])).await.map_err(ServerError::daemon)?;
    Ok(v["relayfee"].clone())
}

/// `mempool.get_fee_histogram`: computed over the whole mempool (a sort of every transaction),
/// so reused for `--fee-cache-secs` rather than computed for every client that asks.
pub async fn histogram(state: &Arc<State>) -> Reply {
    let h = state
        .mempool_reused("fee histogram", |m| {
            m.fee_histogram().iter().map(|(rate, size)| json!([rate, size])).collect()
        })
        .await?;
    Ok(h)
}

pub async fn mempool_info(state: &Arc<State>) -> Reply {
    let v = state.node_reused("getmempoolinfo", json!([])).await.map_err(ServerError::daemon)?;
    Ok(json!({
        "mempoolminfee": v["mempoolminfee"],
        "minrelaytxfee": v["minrelaytxfee"],
        "incrementalrelayfee": v["incrementalrelayfee"],
    }))
}

/// 1.7's `mempool.recent`: the last ten arrivals.
pub async fn recent(state: &Arc<State>) -> Reply {
    state
        .read(|_, m| {
            Ok(m.with(|m| {
                m.recent(10)
                    .into_iter()
                    .map(|(txid, e)| json!({"txid": txid.to_string(), "fee": e.fee, "vsize": e.vsize}))
                    .collect()
            }))
        })
        .await
        .map_err(ServerError::from)
}
