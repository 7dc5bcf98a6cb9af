//! Fees and the mempool at large: estimates and relay fees from the node, the histogram and
//! recent arrivals from the tracked mempool.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

pub async fn call(state: &Arc<State>, _s: &mut Session, method: &str, params: &Value) -> Reply {
    match method {
        "blockchain.estimatefee" => {
            let target = u32_arg(params, 0, "number", None)?;
            // 1.6 passes `mode` on to estimatesmartfee; accepted in every version, as ElectrumX does.
            let mode = match arg(params, 1, "mode") {
                None => None,
                Some(Value::String(m))
                    if ["CONSERVATIVE", "ECONOMICAL"].contains(&m.to_uppercase().as_str()) =>
                {
                    Some(m.to_uppercase())
                }
                Some(_) => return Err(err(INVALID_PARAMS, "mode must be CONSERVATIVE or ECONOMICAL")),
            };
            let call = match mode {
                Some(m) => json!([target, m]),
                None => json!([target]),
            };
            let v = state.node("estimatesmartfee", call).await.map_err(daemon)?;
            // No estimate (a new node, regtest) is -1, not an error.
            Ok(v.get("feerate").cloned().unwrap_or(json!(-1)))
        }
        "blockchain.relayfee" => {
            let v = state.node("getnetworkinfo", json!([])).await.map_err(daemon)?;
            Ok(v["relayfee"].clone())
        }
        "mempool.get_fee_histogram" => {
            let h = state.read(|_, m| Ok(m.fee_histogram())).await?;
            Ok(h.iter().map(|(rate, size)| json!([rate, size])).collect())
        }
        "mempool.get_info" => {
            let v = state.node("getmempoolinfo", json!([])).await.map_err(daemon)?;
            Ok(json!({
                "mempoolminfee": v["mempoolminfee"],
                "minrelaytxfee": v["minrelaytxfee"],
                "incrementalrelayfee": v["incrementalrelayfee"],
            }))
        }
        "mempool.recent" => state
            .read(|_, m| {
                Ok(m.recent(10)
                    .into_iter()
                    .map(|(txid, e)| json!({"txid": txid.to_string(), "fee": e.fee, "vsize": e.vsize}))
                    .collect())
            })
            .await
            .map_err(ErrorReply::from),
        _ => unreachable!("{method} is routed here by its family"),
    }
}
