//! The Electrum methods, by name, for the negotiated protocol version (1.0 to 1.7).
//!
//! `METHODS` says in which versions each method exists; a session calls only what its version
//! has, and the handlers shape their replies by version where the protocol changed them.
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

use crate::state::State;

pub use headers::{header_json, HeaderForm};
pub use outpoints::outpoint_status;
pub use scripts::status;
pub use server_info::{features, software};

/// A protocol version as (major, minor, revision).
pub type Version = (u32, u32, u32);

/// The versions served, oldest first. 1.5 was skipped by the protocol; 1.4.3 only adds a
/// Namecoin method.
pub const VERSIONS: &[Version] =
    &[(1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 3, 0), (1, 4, 0), (1, 4, 1), (1, 4, 2), (1, 6, 0), (1, 7, 0)];
pub const PROTOCOL_MIN: Version = VERSIONS[0];
pub const PROTOCOL_MAX: Version = VERSIONS[VERSIONS.len() - 1];
/// What a session that never negotiates speaks: 1.4's shapes, with `scripthash.unsubscribe`.
pub const UNNEGOTIATED: Version = (1, 4, 2);
const NEVER: Version = (u32::MAX, 0, 0);

/// Each method and the versions that have it: [since, until).
const METHODS: &[(&str, Version, Version)] = &[
    ("server.version", (1, 0, 0), NEVER),
    ("server.banner", (1, 0, 0), NEVER),
    ("server.donation_address", (1, 0, 0), NEVER),
    ("server.peers.subscribe", (1, 0, 0), NEVER),
    ("server.features", (1, 1, 0), NEVER),
    ("server.add_peer", (1, 1, 0), NEVER),
    ("server.ping", (1, 2, 0), NEVER),
    ("blockchain.numblocks.subscribe", (1, 0, 0), (1, 1, 0)),
    ("blockchain.headers.subscribe", (1, 0, 0), NEVER),
    ("blockchain.block.get_header", (1, 0, 0), (1, 4, 0)),
    ("blockchain.block.get_chunk", (1, 0, 0), (1, 4, 0)),
    ("blockchain.block.header", (1, 3, 0), NEVER),
    ("blockchain.block.headers", (1, 2, 0), NEVER),
    ("blockchain.address.get_balance", (1, 0, 0), (1, 3, 0)),
    ("blockchain.address.get_history", (1, 0, 0), (1, 3, 0)),
    ("blockchain.address.get_mempool", (1, 0, 0), (1, 3, 0)),
    ("blockchain.address.listunspent", (1, 0, 0), (1, 3, 0)),
    ("blockchain.address.subscribe", (1, 0, 0), (1, 3, 0)),
    ("blockchain.utxo.get_address", (1, 0, 0), (1, 1, 0)),
    ("blockchain.scripthash.get_balance", (1, 1, 0), (1, 7, 0)),
    ("blockchain.scripthash.get_history", (1, 1, 0), (1, 7, 0)),
    ("blockchain.scripthash.get_mempool", (1, 1, 0), (1, 7, 0)),
    ("blockchain.scripthash.listunspent", (1, 1, 0), (1, 7, 0)),
    ("blockchain.scripthash.subscribe", (1, 1, 0), (1, 7, 0)),
    ("blockchain.scripthash.unsubscribe", (1, 4, 2), (1, 7, 0)),
    ("blockchain.scriptpubkey.get_balance", (1, 7, 0), NEVER),
    ("blockchain.scriptpubkey.get_history", (1, 7, 0), NEVER),
    ("blockchain.scriptpubkey.get_mempool", (1, 7, 0), NEVER),
    ("blockchain.scriptpubkey.listunspent", (1, 7, 0), NEVER),
    ("blockchain.scriptpubkey.subscribe", (1, 7, 0), NEVER),
    ("blockchain.scriptpubkey.unsubscribe", (1, 7, 0), NEVER),
    ("blockchain.outpoint.subscribe", (1, 7, 0), NEVER),
    ("blockchain.outpoint.unsubscribe", (1, 7, 0), NEVER),
    ("blockchain.outpoint.get_status", (1, 7, 0), NEVER),
    ("blockchain.transaction.broadcast", (1, 0, 0), NEVER),
    ("blockchain.transaction.broadcast_package", (1, 6, 0), NEVER),
    ("blockchain.transaction.testmempoolaccept", (1, 7, 0), NEVER),
    ("blockchain.transaction.get", (1, 0, 0), NEVER),
    ("blockchain.transaction.get_merkle", (1, 0, 0), NEVER),
    ("blockchain.transaction.id_from_pos", (1, 4, 0), NEVER),
    ("blockchain.estimatefee", (1, 0, 0), NEVER),
    ("blockchain.relayfee", (1, 0, 0), (1, 6, 0)),
    ("mempool.get_fee_histogram", (1, 2, 0), NEVER),
    ("mempool.get_info", (1, 6, 0), NEVER),
    ("mempool.recent", (1, 7, 0), NEVER),
];

/// Whether `method` exists in version `v`.
pub fn available(method: &str, v: Version) -> bool {
    METHODS.iter().any(|(name, since, until)| *name == method && *since <= v && v < *until)
}

/// A method's family and name: ("blockchain.scripthash", "get_history").
fn family_and_name(method: &str) -> (&str, &str) {
    method.rsplit_once('.').unwrap_or(("", method))
}

/// Whether `method` is a method of any version.
pub fn known(method: &str) -> bool {
    METHODS.iter().any(|(name, ..)| *name == method)
}

#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

pub const BAD_REQUEST: i64 = 1;
pub const DAEMON_ERROR: i64 = 2;
/// Protocol 1.7's code for a history too large to send (used for every version).
pub const HISTORY_TOO_LARGE: i64 = 10001;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into() }
}

impl From<anyhow::Error> for RpcError {
    fn from(e: anyhow::Error) -> Self {
        err(BAD_REQUEST, format!("{e:#}"))
    }
}

fn daemon(e: anyhow::Error) -> RpcError {
    err(DAEMON_ERROR, format!("daemon error: {e:#}"))
}

pub type Reply = Result<Value, RpcError>;

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

/// Appends a txid as displayed (byte-reversed hex) without the formatting machinery: long
/// histories write tens of thousands of them.
pub fn push_txid(out: &mut String, txid: &Txid) {
    use bitcoin::hashes::Hash;
    let mut bytes = txid.to_byte_array();
    bytes.reverse();
    let mut buf = [0u8; 64];
    hex::encode_to_slice(bytes, &mut buf).expect("64 hex digits for 32 bytes");
    out.push_str(std::str::from_utf8(&buf).expect("hex is ASCII"));
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

pub fn parse_version(s: &str) -> Option<Version> {
    let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
    let v = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    it.next().is_none().then_some(v)
}

pub fn version_string(v: Version) -> String {
    match v.2 {
        0 => format!("{}.{}", v.0, v.1),
        r => format!("{}.{}.{r}", v.0, v.1),
    }
}

/// Server settings the methods report.
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub banner: String,
    pub donation_address: String,
    /// `server.features`'s hosts: host → ports.
    pub hosts: serde_json::Map<String, Value>,
    /// `server.peers.subscribe`'s entries and `server.add_peer`'s verifications.
    pub peers: Arc<crate::peers::Peers>,
    /// A history longer than this is an error, never a silently cut one.
    pub max_history: usize,
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

fn u32_arg(params: &Value, i: usize, name: &str, default: Option<u32>) -> Result<u32, RpcError> {
    match arg(params, i, name) {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a non-negative integer"))),
        None => default.ok_or_else(|| err(INVALID_PARAMS, format!("missing {name}"))),
    }
}

fn str_arg<'a>(params: &'a Value, i: usize, name: &str) -> Result<&'a str, RpcError> {
    arg(params, i, name)
        .and_then(Value::as_str)
        .ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a string")))
}

fn txid_arg(params: &Value, i: usize) -> Result<Txid, RpcError> {
    str_arg(params, i, "tx_hash")?.parse().map_err(|_| err(INVALID_PARAMS, "tx_hash must be 64 hex digits"))
}

fn bool_arg(params: &Value, i: usize, name: &str) -> Result<bool, RpcError> {
    match arg(params, i, name) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a boolean"))),
    }
}

fn hex_list_arg(params: &Value, i: usize, name: &str) -> Result<Vec<Value>, RpcError> {
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
) -> Result<Answer, RpcError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_print() {
        assert_eq!(parse_version("1.4"), Some((1, 4, 0)));
        assert_eq!(parse_version("1.4.2"), Some((1, 4, 2)));
        assert_eq!(parse_version("1"), None);
        assert_eq!(parse_version("1.x"), None);
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(version_string((1, 4, 0)), "1.4");
        assert_eq!(version_string((1, 4, 2)), "1.4.2");
    }

    #[test]
    fn methods_come_and_go_with_versions() {
        assert!(available("blockchain.numblocks.subscribe", (1, 0, 0)));
        assert!(!available("blockchain.numblocks.subscribe", (1, 1, 0)));
        assert!(available("blockchain.address.get_history", (1, 2, 0)));
        assert!(!available("blockchain.address.get_history", (1, 3, 0)));
        assert!(!available("blockchain.scripthash.get_history", (1, 0, 0)));
        assert!(available("blockchain.scripthash.get_history", (1, 6, 0)));
        assert!(!available("blockchain.scripthash.get_history", (1, 7, 0)));
        assert!(available("blockchain.scriptpubkey.get_history", (1, 7, 0)));
        assert!(!available("blockchain.scripthash.unsubscribe", (1, 4, 1)));
        assert!(available("blockchain.scripthash.unsubscribe", UNNEGOTIATED));
        assert!(available("blockchain.relayfee", (1, 4, 2)));
        assert!(!available("blockchain.relayfee", (1, 6, 0)));
        assert!(!available("blockchain.block.get_chunk", (1, 4, 0)));
        assert!(!available("blockchain.block.header", (1, 2, 0)));
        assert!(!available("mempool.recent", (1, 6, 0)));
        assert!(!available("no.such.method", (1, 7, 0)));
        // Every method exists in some version.
        for (name, since, until) in METHODS {
            assert!(since < until, "{name}");
            assert!(VERSIONS.iter().any(|v| available(name, *v)), "{name}");
        }
    }
}
