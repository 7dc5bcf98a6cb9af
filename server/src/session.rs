//! One client connection: newline-framed JSON-RPC 1.0/2.0 requests and batches in, replies and
//! notifications out. A bounded outgoing queue keeps a slow reader from growing our memory: a
//! reply waits for room, a notification that finds the queue full ends the session.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::debug;

use blkindex_shared::ScriptHash;

use crate::methods::{self, RpcError, Session};
use crate::state::State;

/// Longest request line accepted (a raw transaction to broadcast fits easily).
pub const MAX_LINE: usize = 4 << 20;
/// Most requests in one batch.
pub const MAX_BATCH: usize = 100;
/// Replies and notifications waiting to be written.
const OUT_QUEUE: usize = 64;

pub async fn serve(stream: TcpStream, state: Arc<State>) {
    let peer = stream.peer_addr().ok();
    let (read, mut write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    let (out_tx, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = out_rx.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut session = Session::default();
    let mut tip_rx = state.tip.subscribe();
    tip_rx.mark_unchanged();
    let mut mempool_rx = state.mempool_changes.subscribe();
    loop {
        tokio::select! {
            line = lines.next() => {
                let line = match line {
                    None => break,
                    Some(Ok(line)) => line,
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                        let _ = out_tx.send(error_reply(&Value::Null, true, -32600, &format!("request longer than {MAX_LINE} bytes"))).await;
                        break;
                    }
                    Some(Err(_)) => break,
                };
                if let Some(reply) = handle_line(&state, &mut session, &line).await {
                    if out_tx.send(reply).await.is_err() {
                        break;
                    }
                }
                if session.close {
                    break;
                }
            }
            changes = mempool_rx.recv() => {
                let touched: Option<std::collections::HashSet<ScriptHash>> = match changes {
                    Ok(set) => Some((*set).clone()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None, // recheck all
                    Err(_) => break,
                };
                let subs: Vec<ScriptHash> =
                    session.scripthashes.keys().filter(|sh| touched.as_ref().is_none_or(|t| t.contains(sh))).copied().collect();
                if !notify_scripts(&state, &mut session, &out_tx, subs, Vec::new()).await {
                    debug!(?peer, "client too slow to read notifications; closing");
                    break;
                }
            }
            changed = tip_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let tip = *tip_rx.borrow_and_update();
                if let Some(tip) = tip {
                    if !notify(&state, &mut session, &out_tx, tip).await {
                        debug!(?peer, "client too slow to read notifications; closing");
                        break;
                    }
                }
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
    debug!(?peer, "session ended");
}

/// Notifications for a new tip: the header, and every subscribed script whose status changed.
/// False when the client does not keep up.
async fn notify(
    state: &Arc<State>,
    s: &mut methods::Session,
    out: &mpsc::Sender<String>,
    tip: crate::state::Tip,
) -> bool {
    let mut msgs = Vec::new();
    if s.headers_subscribed {
        msgs.push(notification(
            "blockchain.headers.subscribe",
            json!([methods::header_notification(tip.height, &tip.header)]),
        ));
    }
    let subs: Vec<_> = s.scripthashes.keys().copied().collect();
    notify_scripts(state, s, out, subs, msgs).await
}

/// Sends `msgs` and a notification for each of `subs` whose status changed. False when the
/// client does not keep up.
async fn notify_scripts(
    state: &Arc<State>,
    s: &mut methods::Session,
    out: &mpsc::Sender<String>,
    subs: Vec<ScriptHash>,
    mut msgs: Vec<String>,
) -> bool {
    if !subs.is_empty() {
        let statuses = state
            .read(move |i, m| {
                subs.into_iter()
                    .map(|sh| Ok((sh, methods::status(i, m, &sh)?)))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await;
        for (sh, status) in statuses.unwrap_or_default() {
            if s.scripthashes.get(&sh) != Some(&status) {
                s.scripthashes.insert(sh, status.clone());
                msgs.push(notification("blockchain.scripthash.subscribe", json!([sh.to_string(), status])));
            }
        }
    }
    msgs.into_iter().all(|m| out.try_send(m).is_ok())
}

fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

fn error_reply(id: &Value, v2: bool, code: i64, message: &str) -> String {
    let error = json!({"code": code, "message": message});
    match v2 {
        true => json!({"jsonrpc": "2.0", "error": error, "id": id}),
        false => json!({"result": null, "error": error, "id": id}),
    }
    .to_string()
}

/// One line: a request, or a batch of them. None when nothing is owed (a notification).
async fn handle_line(state: &Arc<State>, s: &mut Session, line: &str) -> Option<String> {
    let msg: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some(error_reply(&Value::Null, true, -32700, &format!("invalid JSON: {e}"))),
    };
    match msg {
        Value::Array(batch) => {
            if batch.is_empty() || batch.len() > MAX_BATCH {
                return Some(error_reply(
                    &Value::Null,
                    true,
                    -32600,
                    &format!("a batch holds 1 to {MAX_BATCH} requests"),
                ));
            }
            let mut replies = Vec::new();
            for req in &batch {
                if let Some(r) = handle_request(state, s, req).await {
                    replies.push(r);
                }
                if s.close {
                    break;
                }
            }
            (!replies.is_empty()).then(|| Value::Array(replies).to_string())
        }
        req => handle_request(state, s, &req).await.map(|v| v.to_string()),
    }
}

async fn handle_request(state: &Arc<State>, s: &mut Session, req: &Value) -> Option<Value> {
    let v2 = req.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let id = req.get("id").cloned();
    let (Some(method), params) =
        (req.get("method").and_then(Value::as_str), req.get("params").cloned().unwrap_or(json!([])))
    else {
        return Some(
            serde_json::from_str(&error_reply(
                &id.unwrap_or(Value::Null),
                v2,
                -32600,
                "not a JSON-RPC request",
            ))
            .unwrap(),
        );
    };
    let result = match params {
        Value::Array(_) | Value::Object(_) => methods::call(state, s, method, &params).await,
        _ => Err(RpcError {
            code: methods::INVALID_PARAMS,
            message: "params must be an array or an object".into(),
        }),
    };
    let id = id?; // a notification from the client: nothing to answer
    Some(match (result, v2) {
        (Ok(r), true) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        (Ok(r), false) => json!({"result": r, "error": null, "id": id}),
        (Err(e), _) => serde_json::from_str(&error_reply(&id, v2, e.code, &e.message)).unwrap(),
    })
}
