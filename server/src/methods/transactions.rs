//! Transactions: raw and verbose by txid, merkle proofs, txid by position, and broadcast
//! (single, package, and 1.7's test-accept) through the node.

use std::sync::Arc;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::Transaction;
use serde_json::{json, Value};

use blkindex_shared::merkle;

use super::*;

pub async fn call(state: &Arc<State>, s: &mut Session, method: &str, params: &Value) -> Reply {
    let v = s.version();
    match method {
        "blockchain.transaction.get" => {
            let txid = txid_arg(params, 0)?;
            // 1.0 had an unused `height` second argument; 1.1 dropped it; 1.2 made it `verbose`.
            let verbose = match v {
                v if v < (1, 1, 0) => false,
                v if v < (1, 2, 0) => match arg(params, 1, "verbose") {
                    None => false,
                    Some(_) => return Err(err(INVALID_PARAMS, "protocol 1.1 takes only tx_hash")),
                },
                _ => bool_arg(params, 1, "verbose")?,
            };
            let net = state.settings().net.0;
            state
                .read(move |i, m| {
                    let confirmed = i.txs_by_txid(&txid)?.pop();
                    let (raw, place) = match confirmed {
                        Some(t) => {
                            let hash = i.chain.hash(t.height).expect("an indexed height");
                            let time = i.chain.row(t.height).expect("an indexed height").header.time;
                            let confirmations = i.chain.len() as u32 - t.height;
                            (t.raw, Some(verbose::Place { hash, time, confirmations }))
                        }
                        None => match m.txs.get(&txid) {
                            Some(e) => (serialize(&e.tx), None),
                            None => anyhow::bail!("no transaction {txid}"),
                        },
                    };
                    Ok(match verbose {
                        false => json!(hex::encode(raw)),
                        true => {
                            let tx: Transaction = deserialize(&raw)?;
                            verbose::tx_json(&tx, &raw, net, place)
                        }
                    })
                })
                .await
                .map_err(ErrorReply::from)
        }
        "blockchain.transaction.get_merkle" => {
            let txid = txid_arg(params, 0)?;
            let height = u32_arg(params, 1, "height", None)?;
            state
                .read(move |i, _| {
                    let tx = i.txs_by_txid(&txid)?.into_iter().find(|t| t.height == height);
                    let Some(tx) = tx else { return Ok(None) };
                    let branch = merkle::tx_branch(&i.block_txids(height)?, tx.pos as usize);
                    let merkle: Vec<String> = branch.iter().map(|n| n.to_string()).collect();
                    Ok(Some(json!({"block_height": height, "merkle": merkle, "pos": tx.pos})))
                })
                .await?
                .ok_or_else(|| err(BAD_REQUEST, format!("{txid} is not in the block at height {height}")))
        }
        "blockchain.transaction.id_from_pos" => {
            let height = u32_arg(params, 0, "height", None)?;
            let pos = u32_arg(params, 1, "tx_pos", None)? as usize;
            let merkle = bool_arg(params, 2, "merkle")?;
            state
                .read(move |i, _| {
                    if i.chain.row(height).is_none() {
                        anyhow::bail!("no block at height {height}");
                    }
                    let txids = i.block_txids(height)?;
                    let txid = txids.get(pos).ok_or_else(|| {
                        anyhow::anyhow!("no transaction at position {pos} at height {height}")
                    })?;
                    Ok(match merkle {
                        false => json!(txid.to_string()),
                        true => {
                            let branch: Vec<String> =
                                merkle::tx_branch(&txids, pos).iter().map(|n| n.to_string()).collect();
                            json!({"tx_hash": txid.to_string(), "merkle": branch})
                        }
                    })
                })
                .await
                .map_err(ErrorReply::from)
        }
        "blockchain.transaction.broadcast" => {
            let raw = str_arg(params, 0, "raw_tx")?.to_string();
            match state.node("sendrawtransaction", json!([raw])).await {
                Ok(txid) => Ok(txid),
                // 1.0 returned the node's complaint as the result.
                Err(e) if v < (1, 1, 0) => Ok(json!(format!("{e:#}"))),
                Err(e) => {
                    Err(err(BAD_REQUEST, format!("the transaction was rejected by network rules.\n\n{e:#}")))
                }
            }
        }
        "blockchain.transaction.broadcast_package" => {
            let txs = hex_list_arg(params, 0, "raw_txs")?;
            let verbose = bool_arg(params, 1, "verbose")?;
            let v = state.node("submitpackage", json!([txs])).await.map_err(daemon)?;
            if verbose {
                return Ok(v);
            }
            // The stable form: success, and the errors by txid.
            let errors: Vec<Value> = v["tx-results"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, r)| r.get("error").map(|e| json!({"txid": r["txid"], "error": e})))
                .collect();
            let success = v["package_msg"] == "success" && errors.is_empty();
            Ok(if errors.is_empty() {
                json!({"success": success})
            } else {
                json!({"success": success, "errors": errors})
            })
        }
        "blockchain.transaction.testmempoolaccept" => {
            let txs = hex_list_arg(params, 0, "raw_txs")?;
            let v = state.node("testmempoolaccept", json!([txs])).await.map_err(daemon)?;
            let results = v.as_array().ok_or_else(|| err(DAEMON_ERROR, "testmempoolaccept: not a list"))?;
            Ok(results
                .iter()
                .map(|r| {
                    let mut out = json!({"txid": r["txid"], "wtxid": r["wtxid"]});
                    if let Some(allowed) = r.get("allowed").and_then(Value::as_bool) {
                        out["allowed"] = json!(allowed);
                    }
                    let reason = ["package-error", "reject-details", "reject-reason"]
                        .iter()
                        .find_map(|k| r.get(*k).and_then(Value::as_str));
                    if let Some(reason) = reason {
                        out["reason"] = json!(reason);
                    }
                    out
                })
                .collect())
        }
        _ => unreachable!("{method} is routed here by its family"),
    }
}
