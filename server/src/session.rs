//! One client connection, whatever carries it (`listen` supplies the transport): JSON-RPC 1.0/2.0
//! requests and batches in, replies and notifications out. What it may cost is bounded before
//! the work: replies and notifications queue in the session's `outbox` share of bytes (a reply
//! waits for room, a notification that finds none ends the session), a reply or a batch's
//! replies longer than that share is an error, and the session's `cost` budget slows, then
//! ends, a client asking for more work than its share. A session that sends no complete request
//! for the idle timeout is closed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tracing::{debug, warn};

use blkindex_shared::ScriptHash;

use crate::config::Transport;
use crate::cost::{Cost, Verdict};
use crate::methods::{self, Session};
use crate::outbox::{Outbox, Refused};
use crate::protocol::ServerError;
use crate::silent::Body;
use crate::state::{State, Tip};
use crate::status::{outpoint_status, script_status};

/// What a transport hands the session.
pub enum Incoming {
    /// One request (or batch): a line on TCP/TLS, a message on WebSocket.
    Message(String),
    /// A request longer than the limit: answered with an error, then the session ends.
    TooLong,
    /// A partial line held longer than the request timeout: the session ends.
    Stalled,
}

/// Which subscriptions to check again.
enum Recheck {
    /// A new tip: every script, and the outpoints whose status it may change.
    Tip,
    /// The mempool changed these scripts.
    Mempool(Arc<HashSet<ScriptHash>>),
    /// Mempool changes were missed: everything.
    All,
}

pub async fn run(
    mut input: impl Stream<Item = Incoming> + Unpin,
    out: Outbox,
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
    let mut session =
        Session { peer_addr: Some(peer), max_subscriptions: limits.max_subscriptions, ..Session::default() };
    let mut cost = Cost::new(limits.cost);
    let mut tip_rx = state.watch_tip();
    tip_rx.mark_unchanged();
    let mut mempool_rx = state.watch_mempool();
    let mut silent_rx = session.silent.take_receiver();
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
                        let _ = out.try_send(error_reply(&Value::Null, true, &e));
                        break "request too long";
                    }
                    Some(Incoming::Stalled) => {
                        let secs = limits.request_timeout.as_secs();
                        let e = ServerError::Closing(format!("request not finished within {secs} s"));
                        let _ = out.try_send(error_reply(&Value::Null, true, &e));
                        break "partial request held too long";
                    }
                };
                bytes_in += text.len() as u64 + 1;
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle);
                let answered = answer(&state, &mut session, &mut cost, &out, &text).await;
                report(live, &session, bytes_in, bytes_out, &out, &mut cost);
                match answered {
                    Ok(bytes) => bytes_out += bytes,
                    Err(why) => break why,
                }
                if let Some(why) = session.close {
                    break why;
                }
            }
            changes = mempool_rx.recv() => {
                // Shared by every session: looked up, not copied.
                let (scripts, recheck) = match changes {
                    Ok(set) => {
                        let scripts = session.scripts.keys().filter(|sh| set.contains(*sh)).copied().collect();
                        (scripts, Recheck::Mempool(set))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        (session.scripts.keys().copied().collect(), Recheck::All)
                    }
                    Err(_) => break "server stopping",
                };
                let sent = notify(&state, &mut session, &out, scripts, recheck, Vec::new()).await;
                bytes_out += sent.unwrap_or(0);
                report(live, &session, bytes_in, bytes_out, &out, &mut cost);
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
                    let sent = notify(&state, &mut session, &out, scripts, Recheck::Tip, msgs).await;
                    bytes_out += sent.unwrap_or(0);
                    report(live, &session, bytes_in, bytes_out, &out, &mut cost);
                    if sent.is_none() {
                        break "too slow to read notifications";
                    }
                }
            }
            Some(msg) = silent_rx.recv() => {
                // The scan's CPU time is this session's work too.
                cost.charge(msg.cpu);
                if !session.silent.is_current(msg.generation) {
                    continue; // of a subscription dropped or replaced since
                }
                match msg.body {
                    // Pages of history wait for room as replies do: a long history is not a
                    // reason to close the session, a client that does not read is (send timeout).
                    Body::Notification(text) => match queue(&out, text, true).await {
                        Ok(bytes) => bytes_out += bytes,
                        Err(why) => break why,
                    },
                    Body::OverBudget(message) => {
                        let _ = out.try_send(error_reply(&Value::Null, true, &ServerError::ExcessiveUsage(message)));
                        break "a silent-payments scan over its CPU limit";
                    }
                    Body::Failed => {
                        let m = "a silent-payments scan failed on the server: subscribe again later".into();
                        let _ = out.try_send(error_reply(&Value::Null, true, &ServerError::Closing(m)));
                        break "a silent-payments scan failed";
                    }
                }
                report(live, &session, bytes_in, bytes_out, &out, &mut cost);
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
fn report(
    live: &crate::sessions::Live,
    s: &Session,
    bytes_in: u64,
    bytes_out: u64,
    out: &Outbox,
    cost: &mut Cost,
) {
    let mut seen = live.seen.lock().unwrap();
    if seen.client.is_none() {
        seen.client.clone_from(&s.client);
    }
    seen.version = s.version;
    seen.scripts = s.scripts.len();
    seen.outpoints = s.outpoints.len();
    seen.silent = s.silent.len();
    seen.requests = s.requests;
    seen.busy = s.busy;
    seen.bytes_in = bytes_in;
    seen.bytes_out = bytes_out;
    seen.queued = out.queued();
    seen.cost = cost.units();
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

/// Queues `msgs`, a notification for each of `scripts` whose status changed, and one for each
/// outpoint `recheck` selects whose status changed; returns the bytes queued. None when the
/// client does not keep up.
async fn notify(
    state: &Arc<State>,
    s: &mut Session,
    out: &Outbox,
    scripts: Vec<ScriptHash>,
    recheck: Recheck,
    mut msgs: Vec<String>,
) -> Option<u64> {
    let outpoints: Vec<(bitcoin::OutPoint, crate::status::OutpointState)> =
        s.outpoints.iter().map(|(op, st)| (*op, st.clone())).collect();
    if !scripts.is_empty() || !outpoints.is_empty() {
        let st = state.clone();
        let fresh = state
            .read(move |i, m| {
                let scripts = scripts
                    .into_iter()
                    .map(|sh| Ok((sh, script_status(st.scripts(), i, m, &sh)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // Only those whose status can have changed: a confirmed spend holds until its
                // block leaves the chain; a mempool change matters only to the output's script.
                let outpoints = outpoints
                    .into_iter()
                    .filter(|(op, last)| match &recheck {
                        Recheck::Tip => last.may_change_at(i),
                        Recheck::Mempool(changed) => last.may_change_with(changed, m, op),
                        Recheck::All => true,
                    })
                    .map(|(op, _)| Ok((op, outpoint_status(st.scripts(), i, m, &op)?)))
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
        for (op, fresh) in outpoints {
            let Some(last) = s.outpoints.get_mut(&op) else { continue };
            if last.status != fresh.status {
                msgs.push(notification(
                    "blockchain.outpoint.subscribe",
                    json!([op.txid.to_string(), op.vout, fresh.status]),
                ));
            }
            *last = fresh;
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

/// Answers one message (a request, or a batch of them) through `out`: the bytes queued, or why
/// the session must end. Each request starts only once the queue is down to its low-water
/// mark (`Outbox::ready`), and no reply is longer than `Outbox::max_message`: a longer one
/// becomes an error. A batch's replies are queued one by one as pieces of one message; once
/// they reach that length, the batch's remaining requests get errors instead of being done.
async fn answer(
    state: &Arc<State>,
    s: &mut Session,
    cost: &mut Cost,
    out: &Outbox,
    text: &str,
) -> Result<u64, &'static str> {
    let max_reply = out.max_message();
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let e = ServerError::Parse(format!("invalid JSON: {e}"));
            return queue(out, error_reply(&Value::Null, true, &e), true).await;
        }
    };
    let batch = match msg {
        Value::Array(batch) => batch,
        req => {
            queued(out).await?;
            let reply = match within_budget(s, cost).await {
                Ok(()) => handle_request(state, s, cost, max_reply, &req).await,
                Err(e) => Some(error_reply(&req.get("id").cloned().unwrap_or(Value::Null), true, &e)),
            };
            return match reply {
                Some(r) => queue(out, r, true).await,
                None => Ok(0),
            };
        }
    };
    let max = state.settings().limits.max_batch;
    if batch.is_empty() || batch.len() > max {
        let e = ServerError::InvalidRequest(format!("a batch holds 1 to {max} requests"));
        return queue(out, error_reply(&Value::Null, true, &e), true).await;
    }
    let mut bytes: u64 = 0;
    let mut opened = false;
    for req in &batch {
        queued(out).await?;
        // Past the cap nothing more is done, and the budget is not waited for.
        let refused = match bytes > max_reply as u64 {
            true => {
                let e = ServerError::ExcessiveUsage(format!(
                    "not done: the replies to this batch reached the server's limit of {max_reply} bytes"
                ));
                Some((e, req.get("jsonrpc").and_then(Value::as_str) == Some("2.0")))
            }
            false => within_budget(s, cost).await.err().map(|e| (e, true)),
        };
        let reply = match (refused, req.get("id")) {
            (None, _) => handle_request(state, s, cost, max_reply, req).await,
            (Some(_), None) => None,
            (Some((e, v2)), Some(id)) => Some(error_reply(id, v2, &e)),
        };
        if let Some(r) = reply {
            let piece = format!("{}{r}", if opened { ',' } else { '[' });
            opened = true;
            bytes += queue(out, piece, false).await?;
        }
        if s.close.is_some() {
            break;
        }
    }
    if opened {
        bytes += queue(out, "]".into(), true).await?;
    }
    Ok(bytes)
}

/// Waits for the queue to be down to its low-water mark.
async fn queued(out: &Outbox) -> Result<(), &'static str> {
    out.ready().await.map_err(|r| refusal(out, r))
}

/// Queues `text` (the end of its message if `end`); the bytes queued.
async fn queue(out: &Outbox, text: String, end: bool) -> Result<u64, &'static str> {
    let len = text.len() as u64 + end as u64;
    out.send(text, end).await.map_err(|r| refusal(out, r))?;
    Ok(len)
}

fn refusal(out: &Outbox, r: Refused) -> &'static str {
    match r {
        // Replies are cut to `max_message` where they are made: this is a bug.
        Refused::TooLong(n) => {
            warn!(bytes = n, "a reply over the session's share reached its queue");
            "reply too long"
        }
        Refused::Full => "not reading its replies",
        Refused::Closed => out.closed_why(),
    }
}

/// Waits until the session's cost is back within its soft limit; over the hard limit, marks the
/// session for closing and says why.
async fn within_budget(s: &mut Session, cost: &mut Cost) -> Result<(), ServerError> {
    match cost.verdict() {
        Verdict::Go => Ok(()),
        Verdict::Wait(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Verdict::Disconnect => {
            s.close = Some("over its cost budget");
            Err(ServerError::ExcessiveUsage("excessive resource usage: too much work asked for".into()))
        }
    }
}

async fn handle_request(
    state: &Arc<State>,
    s: &mut Session,
    cost: &mut Cost,
    max_reply: usize,
    req: &Value,
) -> Option<String> {
    let v2 = req.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let id = req.get("id").cloned();
    let (Some(method), params) =
        (req.get("method").and_then(Value::as_str), req.get("params").cloned().unwrap_or(json!([])))
    else {
        let e = ServerError::InvalidRequest("not a JSON-RPC request".into());
        return Some(error_reply(&id.unwrap_or(Value::Null), v2, &e));
    };
    // A silent-payments subscription's parameters are a wallet's scan private key: never logged.
    let hidden;
    let shown = match method.starts_with("blockchain.silentpayments.") && !method.ends_with(".tweaks") {
        true => {
            hidden = json!("(keys not shown)");
            &hidden
        }
        false => &params,
    };
    debug!(method, params = %shown, "request");
    let started = Instant::now();
    let result = match params {
        Value::Array(_) | Value::Object(_) => methods::call(state, s, method, &params).await,
        _ => Err(ServerError::invalid_params("params must be an array or an object")),
    };
    if let Err(ServerError::Internal(e)) = &result {
        warn!(method, params = %shown, "internal error: {e:#}");
    }
    let took = started.elapsed();
    state.metrics().request(method, result.is_ok(), took);
    state.sessions().count_request();
    cost.charge(took);
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
    if reply.len() > max_reply {
        let e = ServerError::ExcessiveUsage(format!(
            "the reply is {} bytes, more than the server's limit of {max_reply}",
            reply.len()
        ));
        return Some(error_reply(&id, v2, &e));
    }
    Some(reply)
}
