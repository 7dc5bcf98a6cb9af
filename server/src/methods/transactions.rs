//! Transactions: raw and verbose by txid, merkle proofs, txid by position, and broadcast
//! (single, package, and 1.7's test-accept) through the node.

use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::Transaction;
use serde_json::{json, Value};

use blkindex_shared::merkle;
use blkindex_shared::rpc::RpcError;

use super::*;

/// `blockchain.transaction.get`: raw hex, or the node's verbose JSON built from our data.
pub async fn get(state: &Arc<State>, txid: Txid, verbose: bool) -> Reply {
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
                None => match m.with(|m| m.txs.get(&txid).map(|e| e.raw().to_vec())) {
                    Some(raw) => (raw, None),
                    None => return Err(ServerError::UnknownTx(txid).into()),
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
        .map_err(ServerError::from)
}

/// `blockchain.transaction.get_merkle`: the branch of `txid` in the block at `height`.
pub async fn get_merkle(state: &Arc<State>, txid: Txid, height: u32) -> Reply {
    state
        .read(move |i, _| {
            let tx = i.txs_by_txid(&txid)?.into_iter().find(|t| t.height == height);
            let Some(tx) = tx else { return Ok(None) };
            let branch = merkle::tx_branch(&i.block_txids(height)?, tx.pos as usize);
            let merkle: Vec<String> = branch.iter().map(|n| n.to_string()).collect();
            Ok(Some(json!({"block_height": height, "merkle": merkle, "pos": tx.pos})))
        })
        .await?
        .ok_or_else(|| ServerError::bad_request(format!("{txid} is not in the block at height {height}")))
}

/// `blockchain.transaction.id_from_pos`: the txid at `pos` in the block at `height`, with its
/// branch if `merkle`.
pub async fn id_from_pos(state: &Arc<State>, height: u32, pos: u32, merkle: bool) -> Reply {
    let pos = pos as usize;
    state
        .read(move |i, _| {
            if i.chain.row(height).is_none() {
                return Err(ServerError::bad_request(format!("no block at height {height}")).into());
            }
            let txids = i.block_txids(height)?;
            let txid = txids.get(pos).ok_or_else(|| {
                ServerError::bad_request(format!("no transaction at position {pos} at height {height}"))
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
        .map_err(ServerError::from)
}

/// `blockchain.transaction.broadcast` through the node's `sendrawtransaction`.
pub async fn broadcast(state: &Arc<State>, raw: String, v: Version) -> Reply {
    match state.node("sendrawtransaction", json!([raw])).await {
        Ok(txid) => Ok(txid),
        // 1.0 returned the node's complaint as the result.
        // Only the node's own refusal is a rejection; a node down or busy is a daemon error the
        // client may retry, not a verdict on the transaction.
        Err(e) if !is_rejection(&e) => Err(ServerError::daemon(e)),
        Err(e) if v < (1, 1, 0) => Ok(json!(format!("{e:#}"))),
        Err(e) => {
            Err(ServerError::bad_request(format!("the transaction was rejected by network rules.\n\n{e:#}")))
        }
    }
}

/// Whether the node answered the call with an error of its own (not a transport failure).
fn is_rejection(e: &anyhow::Error) -> bool {
    e.downcast_ref::<RpcError>().is_some_and(|r| matches!(r, RpcError::Rpc { .. }) && !r.is_transient())
}

/// 1.6's `blockchain.transaction.broadcast_package` through the node's `submitpackage`.
pub async fn broadcast_package(state: &Arc<State>, txs: Vec<Value>, verbose: bool) -> Reply {
    let v = state.node("submitpackage", json!([txs])).await.map_err(ServerError::daemon)?;
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

/// 1.7's `blockchain.transaction.testmempoolaccept` through the node's.
pub async fn test_mempool_accept(state: &Arc<State>, txs: Vec<Value>) -> Reply {
    let v = state.node("testmempoolaccept", json!([txs])).await.map_err(ServerError::daemon)?;
    let results = v.as_array().ok_or_else(|| ServerError::Daemon("testmempoolaccept: not a list".into()))?;
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
