//! The Electrum methods this server answers, by name, for the negotiated protocol version
//! (1.4 to 1.6; a client that never sends `server.version` is served as 1.4).
//! Confirmed data comes from the index, unconfirmed data from the tracked mempool, fees and
//! broadcast from the node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bitcoin::consensus::serialize;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::Txid;
use serde_json::{json, Value};

use blkindex_shared::query::{merkle_branch, merkle_branch_and_root, Index, ScriptState};
use blkindex_shared::ScriptHash;

use crate::mempool::{Mempool, ScriptMempool};
use crate::state::State;

/// Protocol versions served, as (major, minor, revision).
pub const PROTOCOL_MIN: Version = (1, 4, 0);
pub const PROTOCOL_MAX: Version = (1, 6, 0);
/// `blockchain.block.headers` returns at most this many.
pub const MAX_HEADERS: u32 = 2016;
/// A history longer than this is an error rather than a huge response.
pub const MAX_HISTORY: usize = 100_000;

pub type Version = (u32, u32, u32);

#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

pub const BAD_REQUEST: i64 = 1;
pub const DAEMON_ERROR: i64 = 2;
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

pub type Reply = Result<Value, RpcError>;

/// The version a session speaks: the negotiated one, or 1.4 for clients that never negotiate.
fn effective(s: &Session) -> Version {
    s.version.unwrap_or(PROTOCOL_MIN)
}

/// What a session remembers between requests.
#[derive(Default)]
pub struct Session {
    pub version: Option<Version>,
    pub headers_subscribed: bool,
    /// Subscribed script hashes and the status last sent.
    pub scripthashes: HashMap<ScriptHash, Option<String>>,
    /// Set when the session must end after this reply.
    pub close: bool,
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

fn scripthash_arg(params: &Value) -> Result<ScriptHash, RpcError> {
    str_arg(params, 0, "scripthash")?.parse().map_err(|e: String| err(INVALID_PARAMS, e))
}

fn txid_arg(params: &Value) -> Result<Txid, RpcError> {
    str_arg(params, 0, "tx_hash")?.parse().map_err(|_| err(INVALID_PARAMS, "tx_hash must be 64 hex digits"))
}

fn bool_arg(params: &Value, i: usize, name: &str) -> Result<bool, RpcError> {
    match arg(params, i, name) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| err(INVALID_PARAMS, format!("{name} must be a boolean"))),
    }
}

pub async fn call(state: &Arc<State>, s: &mut Session, method: &str, params: &Value) -> Reply {
    match method {
        "server.version" => server_version(s, params),
        "server.ping" => Ok(Value::Null),
        "server.banner" => Ok(json!(format!("blkindex {}", env!("CARGO_PKG_VERSION")))),
        "server.donation_address" => Ok(json!("")),
        "server.peers.subscribe" => Ok(json!([])),
        "server.features" => Ok(json!({
            "genesis_hash": state.net.genesis_hash().to_string(),
            "hosts": {},
            "protocol_min": version_string(PROTOCOL_MIN),
            "protocol_max": version_string(PROTOCOL_MAX),
            "server_version": format!("blkindex {}", env!("CARGO_PKG_VERSION")),
            "hash_function": "sha256",
            "pruning": null,
        })),
        "blockchain.headers.subscribe" => {
            s.headers_subscribed = true;
            let tip = (*state.tip.borrow()).ok_or_else(|| err(BAD_REQUEST, "the index is empty"))?;
            Ok(header_notification(tip.height, &tip.header))
        }
        "blockchain.block.header" => block_header(state, params).await,
        "blockchain.block.headers" => block_headers(state, params, effective(s) >= (1, 6, 0)).await,
        "blockchain.scripthash.get_history" => {
            let sh = scripthash_arg(params)?;
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            if v.confirmed.history.len() + v.mempool.history.len() > MAX_HISTORY {
                return Err(err(BAD_REQUEST, "history too large"));
            }
            let confirmed = v
                .confirmed
                .history
                .iter()
                .map(|h| json!({"tx_hash": h.txid.to_string(), "height": h.height}));
            let unconfirmed = v
                .mempool
                .history
                .iter()
                .map(|(t, h, fee)| json!({"tx_hash": t.to_string(), "height": h, "fee": fee}));
            Ok(confirmed.chain(unconfirmed).collect())
        }
        "blockchain.scripthash.get_balance" => {
            let sh = scripthash_arg(params)?;
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            Ok(json!({"confirmed": v.confirmed.balance(), "unconfirmed": v.mempool.delta}))
        }
        "blockchain.scripthash.listunspent" => {
            let sh = scripthash_arg(params)?;
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            // Confirmed outputs no mempool transaction spends, then unconfirmed ones (height 0).
            let confirmed = v.confirmed.utxos.iter().filter(|u| !v.mempool.spent.contains(&u.outpoint)).map(|u| {
                json!({"tx_hash": u.outpoint.txid.to_string(), "tx_pos": u.outpoint.vout, "height": u.height, "value": u.value})
            });
            let unconfirmed = v.mempool.unspent.iter().map(|(op, value)| {
                json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": 0, "value": value})
            });
            Ok(confirmed.chain(unconfirmed).collect())
        }
        "blockchain.scripthash.get_mempool" => {
            let sh = scripthash_arg(params)?;
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            Ok(v.mempool
                .history
                .iter()
                .map(|(t, h, fee)| json!({"tx_hash": t.to_string(), "height": h, "fee": fee}))
                .collect())
        }
        "blockchain.scripthash.subscribe" => {
            let sh = scripthash_arg(params)?;
            let status = state.read(move |i, m| status(i, m, &sh)).await?;
            s.scripthashes.insert(sh, status.clone());
            Ok(json!(status))
        }
        "blockchain.scripthash.unsubscribe" if s.version >= Some((1, 4, 2)) || s.version.is_none() => {
            let sh = scripthash_arg(params)?;
            Ok(json!(s.scripthashes.remove(&sh).is_some()))
        }
        "blockchain.transaction.get" => {
            let txid = txid_arg(params)?;
            if bool_arg(params, 1, "verbose")? {
                return Err(err(BAD_REQUEST, "verbose transactions are not served yet"));
            }
            let raw = state
                .read(move |i, m| {
                    Ok(match i.txs_by_txid(&txid)?.pop() {
                        Some(t) => Some(t.raw),
                        None => m.txs.get(&txid).map(|e| serialize(&e.tx)),
                    })
                })
                .await?;
            raw.map(|r| json!(hex::encode(r)))
                .ok_or_else(|| err(BAD_REQUEST, format!("no transaction {txid}")))
        }
        "blockchain.transaction.get_merkle" => {
            let txid = txid_arg(params)?;
            let height = u32_arg(params, 1, "height", None)?;
            state
                .read(move |i, _| {
                    let tx = i.txs_by_txid(&txid)?.into_iter().find(|t| t.height == height);
                    let Some(tx) = tx else { return Ok(None) };
                    let branch = merkle_branch(&i.block_txids(height)?, tx.pos as usize);
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
                    let txid =
                        txids.get(pos).ok_or_else(|| anyhow::anyhow!("no transaction at position {pos}"))?;
                    Ok(match merkle {
                        false => json!(txid.to_string()),
                        true => {
                            let branch: Vec<String> =
                                merkle_branch(&txids, pos).iter().map(|n| n.to_string()).collect();
                            json!({"tx_hash": txid.to_string(), "merkle": branch})
                        }
                    })
                })
                .await
                .map_err(RpcError::from)
        }
        "mempool.get_fee_histogram" => {
            let h = state.read(|_, m| Ok(m.fee_histogram())).await?;
            Ok(h.iter().map(|(rate, size)| json!([rate, size])).collect())
        }
        "blockchain.estimatefee" => {
            let target = u32_arg(params, 0, "number", None)?;
            // 1.6 passes `mode` (CONSERVATIVE / ECONOMICAL) on to estimatesmartfee.
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
            Ok(v.get("feerate").cloned().unwrap_or(json!(-1)))
        }
        "blockchain.relayfee" if effective(s) < (1, 6, 0) => {
            let v = state.node("getnetworkinfo", json!([])).await.map_err(daemon)?;
            Ok(v["relayfee"].clone())
        }
        "mempool.get_info" if effective(s) >= (1, 6, 0) => {
            let v = state.node("getmempoolinfo", json!([])).await.map_err(daemon)?;
            Ok(json!({
                "mempoolminfee": v["mempoolminfee"],
                "minrelaytxfee": v["minrelaytxfee"],
                "incrementalrelayfee": v["incrementalrelayfee"],
            }))
        }
        "blockchain.transaction.broadcast" => {
            let raw = str_arg(params, 0, "raw_tx")?.to_string();
            state.node("sendrawtransaction", json!([raw])).await.map_err(|e| {
                err(BAD_REQUEST, format!("the transaction was rejected by network rules.\n\n{e:#}"))
            })
        }
        "blockchain.transaction.broadcast_package" if effective(s) >= (1, 6, 0) => {
            let txs = arg(params, 0, "raw_txs")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty() && a.iter().all(Value::is_string))
                .ok_or_else(|| err(INVALID_PARAMS, "raw_txs must be a non-empty list of hex strings"))?
                .clone();
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
        _ => Err(err(METHOD_NOT_FOUND, format!("unknown method {method:?}"))),
    }
}

fn daemon(e: anyhow::Error) -> RpcError {
    err(DAEMON_ERROR, format!("daemon error: {e:#}"))
}

/// `server.version(client_name, protocol_version)`: protocol_version is one version or a
/// [min, max] pair; the highest common version wins; none in common ends the session.
fn server_version(s: &mut Session, params: &Value) -> Reply {
    if s.version.is_some() {
        return Err(err(BAD_REQUEST, "server.version already sent"));
    }
    let (min, max) = match arg(params, 1, "protocol_version") {
        None => (PROTOCOL_MIN, PROTOCOL_MIN),
        Some(Value::String(v)) => {
            let v = parse_version(v)
                .ok_or_else(|| err(BAD_REQUEST, format!("invalid protocol version {v:?}")))?;
            (v, v)
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let p = |v: &Value| v.as_str().and_then(parse_version);
            match (p(&a[0]), p(&a[1])) {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => return Err(err(BAD_REQUEST, "invalid protocol version range")),
            }
        }
        Some(_) => return Err(err(BAD_REQUEST, "protocol_version must be a string or [min, max]")),
    };
    let chosen = max.min(PROTOCOL_MAX);
    if chosen < min.max(PROTOCOL_MIN) {
        s.close = true;
        return Err(err(
            BAD_REQUEST,
            format!(
                "unsupported protocol version: this server speaks {} to {}",
                version_string(PROTOCOL_MIN),
                version_string(PROTOCOL_MAX)
            ),
        ));
    }
    s.version = Some(chosen);
    Ok(json!([format!("blkindex {}", env!("CARGO_PKG_VERSION")), version_string(chosen)]))
}

pub fn header_notification(height: u32, header: &bitcoin::block::Header) -> Value {
    json!({"hex": hex::encode(serialize(header)), "height": height})
}

/// A script's confirmed and unconfirmed sides, seen together. A transaction found on both sides
/// (mined since the mempool was last read) counts as confirmed.
pub struct ScriptView {
    pub confirmed: ScriptState,
    pub mempool: ScriptMempool,
}

pub fn script_view(index: &Index, mempool: &Mempool, sh: &ScriptHash) -> anyhow::Result<ScriptView> {
    let confirmed = index.script_state(sh)?;
    let mined: HashSet<Txid> = confirmed.history.iter().map(|h| h.txid).collect();
    let mempool = mempool.script(sh, &mined);
    Ok(ScriptView { confirmed, mempool })
}

/// Electrum's status: sha256 of "txid:height:" for every transaction of the history (confirmed
/// in chain order, then unconfirmed in 1.6's order), or None for no history.
pub fn status(index: &Index, mempool: &Mempool, sh: &ScriptHash) -> anyhow::Result<Option<String>> {
    let v = script_view(index, mempool, sh)?;
    if v.confirmed.history.is_empty() && v.mempool.history.is_empty() {
        return Ok(None);
    }
    let mut text: String = v.confirmed.history.iter().map(|h| format!("{}:{}:", h.txid, h.height)).collect();
    text.extend(v.mempool.history.iter().map(|(t, h, _)| format!("{t}:{h}:")));
    Ok(Some(hex::encode(sha256::Hash::hash(text.as_bytes()).to_byte_array())))
}

/// The branch and root proving the header at `height` under checkpoint `cp_height`: a merkle tree
/// over the block hashes 0..=cp_height.
fn header_proof(index: &Index, height: u32, cp_height: u32) -> anyhow::Result<(Vec<String>, String)> {
    let tip = index.chain.len() as u32 - 1;
    if height > cp_height || cp_height > tip {
        anyhow::bail!("require header height {height} <= cp_height {cp_height} <= chain height {tip}");
    }
    let leaves = (0..=cp_height).map(|h| index.chain.hash(h).unwrap().to_byte_array()).collect();
    let (branch, root) = merkle_branch_and_root(leaves, height as usize);
    let show = |b: [u8; 32]| {
        let mut r = b;
        r.reverse();
        hex::encode(r)
    };
    Ok((branch.into_iter().map(show).collect(), show(root)))
}

async fn block_header(state: &Arc<State>, params: &Value) -> Reply {
    let height = u32_arg(params, 0, "height", None)?;
    let cp_height = u32_arg(params, 1, "cp_height", Some(0))?;
    state
        .read(move |i, _| {
            let row = i.chain.row(height).ok_or_else(|| anyhow::anyhow!("no block at height {height}"))?;
            let hex_header = hex::encode(serialize(&row.header));
            if cp_height == 0 {
                return Ok(json!(hex_header));
            }
            let (branch, root) = header_proof(i, height, cp_height)?;
            Ok(json!({"branch": branch, "header": hex_header, "root": root}))
        })
        .await
        .map_err(RpcError::from)
}

/// `blockchain.block.headers`: concatenated hex before 1.6, a list of headers from 1.6.
async fn block_headers(state: &Arc<State>, params: &Value, as_list: bool) -> Reply {
    let start = u32_arg(params, 0, "start_height", None)?;
    let count = u32_arg(params, 1, "count", None)?.min(MAX_HEADERS);
    let cp_height = u32_arg(params, 2, "cp_height", Some(0))?;
    state
        .read(move |i, _| {
            let end = (start as u64 + count as u64).min(i.chain.len() as u64) as u32;
            let headers: Vec<String> = (start..end.max(start))
                .map(|h| hex::encode(serialize(&i.chain.row(h).unwrap().header)))
                .collect();
            let n = end.saturating_sub(start);
            let mut out = match as_list {
                true => json!({"count": n, "headers": headers, "max": MAX_HEADERS}),
                false => json!({"count": n, "hex": headers.concat(), "max": MAX_HEADERS}),
            };
            if n > 0 && cp_height > 0 {
                let (branch, root) = header_proof(i, end - 1, cp_height)?;
                out["branch"] = json!(branch);
                out["root"] = json!(root);
            }
            Ok(out)
        })
        .await
        .map_err(RpcError::from)
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
    fn negotiation_picks_the_highest_common_version_or_closes() {
        let nego = |p: Value| {
            let mut s = Session::default();
            let r = server_version(&mut s, &p);
            (r.map(|v| v[1].as_str().unwrap().to_string()).ok(), s.close)
        };
        assert_eq!(nego(json!(["c", ["1.1", "1.9"]])), (Some("1.6".into()), false));
        assert_eq!(nego(json!(["c", ["1.4", "1.4.2"], "trailing", 9999.9])), (Some("1.4.2".into()), false));
        assert_eq!(nego(json!(["c", "1.4"])), (Some("1.4".into()), false));
        assert_eq!(nego(json!(["c"])), (Some("1.4".into()), false));
        assert_eq!(
            nego(json!({"client_name": "c", "protocol_version": "1.4.1"})),
            (Some("1.4.1".into()), false)
        );
        assert_eq!(nego(json!(["c", "1.2"])), (None, true));
        assert_eq!(nego(json!(["c", ["1.7", "1.8"]])), (None, true));
        assert_eq!(nego(json!(["c", "1.3"])), (None, true));
        let mut s = Session::default();
        server_version(&mut s, &json!(["c", "1.4"])).unwrap();
        assert!(server_version(&mut s, &json!(["c", "1.4"])).is_err());
    }
}
