//! The Electrum methods, by name, for the negotiated protocol version (1.0 to 1.7).
//!
//! `protocol::METHODS` says in which versions each method exists; a session calls only what its
//! version has, and the handlers shape their replies by version where the protocol changed them.
//! Confirmed data comes from the index, unconfirmed data from the tracked mempool, fees and
//! broadcast from the node. A client that never sends `server.version` is served as 1.4.2.

mod fees;
mod headers;
mod outpoints;
mod scripts;
mod server_info;
mod transactions;
mod verbose;

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::{OutPoint, Txid};
use serde_json::Value;

use blkindex_shared::ScriptHash;

use crate::protocol::{
    available, daemon, err, family_and_name, known, push_txid, version_string, ErrorReply, Version,
    BAD_REQUEST, DAEMON_ERROR, HISTORY_TOO_LARGE, INVALID_PARAMS, METHOD_NOT_FOUND, PROTOCOL_MAX,
    PROTOCOL_MIN, UNNEGOTIATED,
};
use crate::state::State;

pub use headers::{header_json, HeaderForm};
pub use server_info::features;

pub type Reply = Result<Value, ErrorReply>;

/// A method's result: a JSON value, or JSON text written directly (long lists, where a tree of
/// values would cost more than the data).
pub enum Answer {
    Value(Value),
    Text(String),
}

impl Answer {
    pub fn write_to(&self, out: &mut String) {
        match self {
            Answer::Value(v) => out.push_str(&v.to_string()),
            Answer::Text(t) => out.push_str(t),
        }
    }
}

/// A subscribed script: the status last sent, and the names it was subscribed under (the
/// notification method and its first parameter: a script hash or an address).
#[derive(Default)]
pub struct ScriptSub {
    pub status: Option<String>,
    pub names: Vec<(&'static str, String)>,
}

/// What a session remembers between requests.
#[derive(Default)]
pub struct Session {
    pub version: Option<Version>,
    /// Subscribed to new tips, and in which shape.
    pub headers: Option<HeaderForm>,
    /// Subscribed to `blockchain.numblocks.subscribe` (1.0).
    pub numblocks: bool,
    pub scripts: HashMap<ScriptHash, ScriptSub>,
    /// Subscribed outpoints (1.7) and the status last sent.
    pub outpoints: HashMap<OutPoint, Value>,
    /// Set when the session must end after this reply.
    pub close: bool,
    /// The client's address (`server.add_peer` verifies that the announced host resolves to it).
    pub peer_addr: Option<std::net::SocketAddr>,
    /// `server.add_peer` calls so far.
    pub add_peer_calls: u32,
    /// The client's name from `server.version` (cut to `MAX_CLIENT_NAME` bytes).
    pub client: Option<String>,
    /// Requests answered, and the time spent answering them.
    pub requests: u64,
    pub busy: std::time::Duration,
}

/// Longest client name kept: it is only shown to the operator.
pub const MAX_CLIENT_NAME: usize = 64;

impl Session {
    /// The version this session speaks.
    pub fn version(&self) -> Version {
        self.version.unwrap_or(UNNEGOTIATED)
    }
}

/// Positional or named parameter `i` / `name`.
fn arg<'a>(params: &'a Value, i: usize, name: &str) -> Option<&'a Value> {
    match params {
        Value::Array(a) => a.get(i),
        Value::Object(o) => o.get(name),
        _ => None,
    }
    .filter(|v| !v.is_null())
}

fn u32_arg(params: &Value, i: usize, name: &str, default: Option<u32>) -> Result<u32, ErrorReply> {
    match arg(params, i, name) {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a non-negative integer"))),
        None => default.ok_or_else(|| err(INVALID_PARAMS, format!("missing {name}"))),
    }
}

fn str_arg<'a>(params: &'a Value, i: usize, name: &str) -> Result<&'a str, ErrorReply> {
    arg(params, i, name)
        .and_then(Value::as_str)
        .ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a string")))
}

fn txid_arg(params: &Value, i: usize) -> Result<Txid, ErrorReply> {
    str_arg(params, i, "tx_hash")?.parse().map_err(|_| err(INVALID_PARAMS, "tx_hash must be 64 hex digits"))
}

fn bool_arg(params: &Value, i: usize, name: &str) -> Result<bool, ErrorReply> {
    match arg(params, i, name) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a boolean"))),
    }
}

fn hex_list_arg(params: &Value, i: usize, name: &str) -> Result<Vec<Value>, ErrorReply> {
    arg(params, i, name)
        .and_then(Value::as_array)
        .filter(|a| {
            !a.is_empty()
                && a.iter().all(|t| t.as_str().is_some_and(|s| s.len() % 2 == 0 && hex::decode(s).is_ok()))
        })
        .cloned()
        .ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a non-empty list of hex strings")))
}

pub async fn call(
    state: &Arc<State>,
    s: &mut Session,
    method: &str,
    params: &Value,
) -> Result<Answer, ErrorReply> {
    let v = s.version();
    if !available(method, v) {
        return Err(match known(method) {
            true => {
                err(METHOD_NOT_FOUND, format!("{method} is not in protocol version {}", version_string(v)))
            }
            false => err(METHOD_NOT_FOUND, format!("unknown method {method:?}")),
        });
    }
    let family = family_and_name(method).0;
    if let "blockchain.address" | "blockchain.scripthash" | "blockchain.scriptpubkey" | "blockchain.utxo" =
        family
    {
        return scripts::call(state, s, method, params).await;
    }
    let reply = match family {
        "server" | "server.peers" => server_info::call(state, s, method, params),
        "blockchain.numblocks" | "blockchain.headers" | "blockchain.block" => {
            headers::call(state, s, method, params).await
        }
        "blockchain.outpoint" => outpoints::call(state, s, method, params).await,
        "blockchain.transaction" => transactions::call(state, s, method, params).await,
        _ => fees::call(state, s, method, params).await,
    };
    reply.map(Answer::Value)
}
