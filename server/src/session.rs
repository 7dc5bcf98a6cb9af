//! One client connection, whatever carries it (`listen` supplies the transport): JSON-RPC 1.0/2.0
//! requests and batches in, replies and notifications out. A bounded outgoing queue keeps a
//! slow reader from growing our memory: a reply waits for room, a notification that finds the
//! queue full ends the session. A session that sends no complete request for the idle timeout is
//! closed, which also ends connections that trickle bytes without ever finishing a line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use blkindex_shared::ScriptHash;

use crate::config::Transport;
use crate::methods::{self, Session};
use crate::protocol::ServerError;
use crate::state::{State, Tip};
use crate::status::{outpoint_status, script_status};

/// Replies and notifications waiting to be written.
pub const OUT_QUEUE: usize = 64;

/// What a transport hands the session.
pub enum Incoming {
    /// One request (or batch): a line on TCP/TLS, a message on WebSocket.
    Message(String),
    /// A request longer than the limit: answered with an error, then the session ends.
    TooLong,
}

pub async fn run(
    mut input: impl Stream<Item = Incoming> + Unpin,
    out: mpsc::Sender<String>,
    state: Arc<State>,
    peer: SocketAddr,
    transport: Transport,
) {
    let limits = state.settings().limits.clone();
    let registered = state.sessions().register(peer, transport);
    let live = &registered.live;
    let id = live.id;
    debug!(id, %peer, transport = transport.name(), "session opened");
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut session = Session { peer_addr: Some(peer), ..Session::default() };
    let mut tip_rx = state.watch_tip();
    tip_rx.mark_unchanged();
    let mut mempool_rx = state.watch_mempool();
    let idle = tokio::time::sleep(limits.idle);
    tokio::pin!(idle);
    let reason = loop {
        tokio::select! {
            msg = input.next() => {
                let text = match msg {
                    None => break "closed by the client",
                    Some(Incoming::Message(text)) => text,
                    Some(Incoming::TooLong) => {
                        let e = ServerError::InvalidRequest(format!("request longer than {} bytes", limits.max_request));
                        let _ = out.send(error_reply(&Value::Null, true, &e)).await;
                        break "request too long";
                    }
                };
                bytes_in += text.len() as u64 + 1;
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle);
                let reply = handle_message(&state, &mut session, &text).await;
                bytes_out += reply.as_ref().map_or(0, |r| r.len() as u64 + 1);
                report(live, &session, bytes_in, bytes_out);
                if let Some(reply) = reply {
                    if out.send(reply).await.is_err() {
                        break "write failed";
                    }
                }
                if session.close {
                    break "no common protocol version";
                }
            }
            changes = mempool_rx.recv() => {
                // Shared by every session: looked up, not copied.
                let scripts: Vec<ScriptHash> = match changes {
                    Ok(set) => session.scripts.keys().filter(|sh| set.contains(*sh)).copied().collect(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        session.scripts.keys().copied().collect() // recheck all
                    }
                    Err(_) => break "server stopping",
                };
                let sent = notify(&state, &mut session, &out, scripts, Vec::new()).await;
                bytes_out += sent.unwrap_or(0);
                report(live, &session, bytes_in, bytes_out);
                if sent.is_none() {
                    break "too slow to read notifications";
                }
            }
            changed = tip_rx.changed() => {
                if changed.is_err() {
                    break "server stopping";
                }
                let tip = *tip_rx.borrow_and_update();
                if let Some(tip) = tip {
                    let msgs = tip_notifications(&session, tip);
                    let scripts = session.scripts.keys().copied().collect();
                    let sent = notify(&state, &mut session, &out, scripts, msgs).await;
                    bytes_out += sent.unwrap_or(0);
                    report(live, &session, bytes_in, bytes_out);
                    if sent.is_none() {
                        break "too slow to read notifications";
                    }
                }
            }
            _ = &mut idle => {
                let e = ServerError::Closing(format!("no request for {} s", limits.idle.as_secs()));
                let _ = out.try_send(error_reply(&Value::Null, true, &e));
                break "idle";
            }
            _ = live.close.cancelled() => break "disconnected by the operator",
        }
    };
    debug!(
        id,
        %peer,
        secs = live.opened.elapsed().as_secs(),
        requests = session.requests,
        bytes_in,
        bytes_out,
        reason,
        "session closed"
    );
}

/// Tells the registry what the admin's `sessions` shows.
fn report(live: &crate::sessions::Live, s: &Session, bytes_in: u64, bytes_out: u64) {
    let mut seen = live.seen.lock().unwrap();
    if seen.client.is_none() {
        seen.client.clone_from(&s.client);
    }
    seen.version = s.version;
    seen.scripts = s.scripts.len();
    seen.outpoints = s.outpoints.len();
    seen.requests = s.requests;
    seen.busy = s.busy;
    seen.bytes_in = bytes_in;
    seen.bytes_out = bytes_out;
}

fn tip_notifications(s: &Session, tip: Tip) -> Vec<String> {
    let mut msgs = Vec::new();
    if let Some(form) = s.headers {
        msgs.push(notification(
            "blockchain.headers.subscribe",
            json!([methods::header_json(form, tip.height, &tip.header)]),
        ));
    }
    if s.numblocks {
        msgs.push(notification("blockchain.numblocks.subscribe", json!([tip.height])));
    }
    msgs
}

/// Sends `msgs`, a notification for each of `scripts` whose status changed, and one for each
/// subscribed outpoint whose status changed; returns the bytes queued. None when the client
/// does not keep up.
async fn notify(
    state: &Arc<State>,
    s: &mut Session,
    out: &mpsc::Sender<String>,
    scripts: Vec<ScriptHash>,
    mut msgs: Vec<String>,
) -> Option<u64> {
    let outpoints: Vec<bitcoin::OutPoint> = s.outpoints.keys().copied().collect();
    if !scripts.is_empty() || !outpoints.is_empty() {
        let st = state.clone();
        let fresh = state
            .read(move |i, m| {
                let scripts = scripts
                    .into_iter()
                    .map(|sh| Ok((sh, script_status(st.scripts(), i, m, &sh)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let outpoints = outpoints
                    .into_iter()
                    .map(|op| Ok((op, outpoint_status(st.scripts(), i, m, &op)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((scripts, outpoints))
            })
            .await;
        // Unread now, they are read again at the next tip or mempool change.
        let (scripts, outpoints) = fresh.unwrap_or_else(|e| {
            tracing::warn!("subscriptions not rechecked: {e:#}");
            Default::default()
        });
        for (sh, status) in scripts {
            let Some(sub) = s.scripts.get_mut(&sh) else { continue };
            if sub.status != status {
                sub.status = status.clone();
                for (method, name) in &sub.names {
                    msgs.push(notification(method, json!([name, status])));
                }
            }
        }
        for (op, status) in outpoints {
            if s.outpoints.get(&op).is_some_and(|last| *last != status) {
                msgs.push(notification(
                    "blockchain.outpoint.subscribe",
                    json!([op.txid.to_string(), op.vout, status]),
                ));
                s.outpoints.insert(op, status);
            }
        }
    }
    let bytes = msgs.iter().map(|m| m.len() as u64 + 1).sum();
    msgs.into_iter().all(|m| out.try_send(m).is_ok()).then_some(bytes)
}

fn notification(method: &str, params: Value) -> String {
    debug!(method, %params, "notification");
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

/// The reply to request `id` that failed with `e` (JSON-RPC 2.0 if `v2`, else 1.0).
pub fn error_reply(id: &Value, v2: bool, e: &ServerError) -> String {
    let error = json!({"code": e.code(), "message": e.message()});
    match v2 {
        true => json!({"jsonrpc": "2.0", "error": error, "id": id}),
        false => json!({"result": null, "error": error, "id": id}),
    }
    .to_string()
}

/// One message: a request, or a batch of them. None when nothing is owed (notifications only).
async fn handle_message(state: &Arc<State>, s: &mut Session, text: &str) -> Option<String> {
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_reply(&Value::Null, true, &ServerError::Parse(format!("invalid JSON: {e}"))))
        }
    };
    match msg {
        Value::Array(batch) => {
            let max = state.settings().limits.max_batch;
            if batch.is_empty() || batch.len() > max {
                let e = ServerError::InvalidRequest(format!("a batch holds 1 to {max} requests"));
                return Some(error_reply(&Value::Null, true, &e));
            }
            let mut replies = String::from("[");
            for req in &batch {
                if let Some(r) = handle_request(state, s, req).await {
                    replies.push_str(&r);
                    replies.push(',');
                }
                if s.close {
                    break;
                }
            }
            replies.pop(); // the last comma, or the '[' of no replies
            (!replies.is_empty()).then(|| replies + "]")
        }
        req => handle_request(state, s, &req).await,
    }
}

async fn handle_request(state: &Arc<State>, s: &mut Session, req: &Value) -> Option<String> {
    let v2 = req.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let id = req.get("id").cloned();
    let (Some(method), params) =
        (req.get("method").and_then(Value::as_str), req.get("params").cloned().unwrap_or(json!([])))
    else {
        let e = ServerError::InvalidRequest("not a JSON-RPC request".into());
        return Some(error_reply(&id.unwrap_or(Value::Null), v2, &e));
    };
    debug!(method, %params, "request");
    let started = Instant::now();
    let result = match params {
        Value::Array(_) | Value::Object(_) => methods::call(state, s, method, &params).await,
        _ => Err(ServerError::invalid_params("params must be an array or an object")),
    };
    if let Err(ServerError::Internal(e)) = &result {
        warn!(method, %params, "internal error: {e:#}");
    }
    let took = started.elapsed();
    state.metrics().request(method, result.is_ok(), took);
    state.sessions().count_request();
    s.requests += 1;
    s.busy += took;
    let id = id?; // a notification from the client: nothing to answer
                  // The result goes in as text: it may be a long list already written as JSON.
    let hint = match &result {
        Ok(methods::Answer::Text(t)) => t.len(),
        _ => 0,
    };
    // Room for the envelope and the newline the writer adds: a long list is copied once.
    let mut reply = String::with_capacity(hint + 64);
    match (result, v2) {
        (Ok(r), true) => {
            reply.push_str(r#"{"jsonrpc":"2.0","result":"#);
            r.write_to(&mut reply);
        }
        (Ok(r), false) => {
            reply.push_str(r#"{"result":"#);
            r.write_to(&mut reply);
            reply.push_str(r#","error":null"#);
        }
        (Err(e), _) => return Some(error_reply(&id, v2, &e)),
    }
    reply.push_str(r#","id":"#);
    reply.push_str(&id.to_string());
    reply.push('}');
    Some(reply)
}
