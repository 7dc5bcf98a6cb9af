//! A request parsed once into a typed call: the method, checked against the version table, and
//! its arguments, checked against the method's rules for that version. `methods` then matches
//! the call exhaustively; no handler looks at the method's name or the raw parameters again.

use std::str::FromStr;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use bitcoin::{Address, OutPoint, Txid};
use serde_json::Value;

use blkindex_shared::{Net, ScriptHash};

use crate::protocol::{available, known, version_string, ServerError, Version};

/// `blockchain.block.headers` returns at most this many, and `get_chunk` returns this many.
pub const MAX_HEADERS: u32 = 2016;

/// Longest `server.ping` pong (1.7) served.
pub const MAX_PONG: u64 = 1 << 20;

/// The spec's default `protocol_version` argument of `server.version`.
const UNNEGOTIATED_DEFAULT: Version = (1, 4, 0);

/// How a session wants headers: `{hex, height}`, or deserialized (before 1.4 without `raw`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderForm {
    Raw,
    Deserialized,
}

/// The script a request names, and how its notifications name it.
#[derive(Debug, PartialEq, Eq)]
pub struct Named {
    pub sh: ScriptHash,
    /// The notification's method and first parameter: a script hash or an address.
    pub notify_as: (&'static str, String),
}

/// One request of a method the session's version has, with its arguments. The script methods
/// are one variant each whichever way the client names the script (`blockchain.address.*`
/// 1.0–1.2, `blockchain.scripthash.*` 1.1–1.6, `blockchain.scriptpubkey.*` 1.7): `Named` says how.
#[derive(Debug, PartialEq, Eq)]
pub enum Call {
    /// `server.version`: the client's name and the range of versions it speaks.
    ServerVersion {
        client_name: Option<String>,
        min: Version,
        max: Version,
    },
    ServerBanner,
    ServerDonationAddress,
    ServerPeersSubscribe,
    /// `server.add_peer`: the announcing server's features, as sent.
    ServerAddPeer {
        features: Option<Value>,
    },
    ServerFeatures,
    /// `server.ping`: the pong's length from 1.7, None before.
    ServerPing {
        pong_len: Option<u64>,
    },

    HeadersSubscribe {
        form: HeaderForm,
    },
    NumblocksSubscribe,
    BlockGetHeader {
        height: u32,
    },
    /// `blockchain.block.get_chunk`: the chunk's first height.
    BlockGetChunk {
        start: u32,
    },
    BlockHeader {
        height: u32,
        cp_height: u32,
    },
    /// `blockchain.block.headers`: `count` already capped at `MAX_HEADERS`.
    BlockHeaders {
        start: u32,
        count: u32,
        cp_height: u32,
    },

    GetHistory(Named),
    GetMempool(Named),
    GetBalance(Named),
    ListUnspent(Named),
    Subscribe(Named),
    Unsubscribe(Named),
    UtxoGetAddress {
        outpoint: OutPoint,
    },

    OutpointSubscribe {
        outpoint: OutPoint,
    },
    OutpointUnsubscribe {
        outpoint: OutPoint,
    },
    OutpointGetStatus {
        outpoint: OutPoint,
    },

    TransactionGet {
        txid: Txid,
        verbose: bool,
    },
    TransactionGetMerkle {
        txid: Txid,
        height: u32,
    },
    TransactionIdFromPos {
        height: u32,
        pos: u32,
        merkle: bool,
    },
    TransactionBroadcast {
        raw_tx: String,
    },
    TransactionBroadcastPackage {
        raw_txs: Vec<Value>,
        verbose: bool,
    },
    TransactionTestMempoolAccept {
        raw_txs: Vec<Value>,
    },

    /// `blockchain.estimatefee`: the target, and `mode` upper-cased.
    EstimateFee {
        target: u32,
        mode: Option<String>,
    },
    RelayFee,
    FeeHistogram,
    MempoolInfo,
    MempoolRecent,

    /// `blockchain.silentpayments.subscribe`: the keys, where to start, the labels asked for
    /// (as sent: the handler checks their number against the limit before any work).
    SilentSubscribe {
        keys: SpKeys,
        start: SpStart,
        labels: Vec<u32>,
    },
    SilentUnsubscribe {
        keys: SpKeys,
    },
    /// `blockchain.silentpayments.tweaks`: blocks from `start`, `count` already capped at
    /// `MAX_TWEAK_BLOCKS`.
    SilentTweaks {
        start: u32,
        count: u32,
    },
}

/// `blockchain.silentpayments.tweaks` covers at most this many blocks a call.
pub const MAX_TWEAK_BLOCKS: u32 = 1000;

/// A silent-payment wallet's keys as a client sends them: its scan private key and spend
/// public key. Held for the session only; never printed (the `Debug` here shows neither).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpKeys {
    pub scan: SecretKey,
    pub spend: PublicKey,
}

impl std::fmt::Debug for SpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpKeys(..)")
    }
}

/// Where a silent-payments scan starts, as the client said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpStart {
    /// A height, and the scan goes on live from the tip.
    From(u32),
    /// `"FROM-TO"`: a closed range of heights, scanned once.
    Range(u32, u32),
    /// Seconds since the epoch (a number over 500,000,000): from the first block of that time on.
    Time(u64),
}

/// BIP65's threshold: a start above it is a time, below it a height (as Frigate reads it).
const TIME_THRESHOLD: u64 = 500_000_000;

impl Call {
    /// Whether the answer needs the node: a call to it (broadcast, fees, mempool info), or its
    /// mempool as the whole answer (what a server without a node cannot know). Confirmed data,
    /// and answers whose unconfirmed side is only a part (history, balance, unspent, statuses),
    /// do not. Every variant is named, so a new one must be placed.
    pub fn needs_node(&self) -> bool {
        match self {
            Call::TransactionBroadcast { .. }
            | Call::TransactionBroadcastPackage { .. }
            | Call::TransactionTestMempoolAccept { .. }
            | Call::EstimateFee { .. }
            | Call::RelayFee
            | Call::MempoolInfo
            | Call::FeeHistogram
            | Call::MempoolRecent
            | Call::GetMempool(_) => true,
            Call::ServerVersion { .. }
            | Call::ServerBanner
            | Call::ServerDonationAddress
            | Call::ServerPeersSubscribe
            | Call::ServerAddPeer { .. }
            | Call::ServerFeatures
            | Call::ServerPing { .. }
            | Call::HeadersSubscribe { .. }
            | Call::NumblocksSubscribe
            | Call::BlockGetHeader { .. }
            | Call::BlockGetChunk { .. }
            | Call::BlockHeader { .. }
            | Call::BlockHeaders { .. }
            | Call::GetHistory(_)
            | Call::GetBalance(_)
            | Call::ListUnspent(_)
            | Call::Subscribe(_)
            | Call::Unsubscribe(_)
            | Call::UtxoGetAddress { .. }
            | Call::OutpointSubscribe { .. }
            | Call::OutpointUnsubscribe { .. }
            | Call::OutpointGetStatus { .. }
            | Call::TransactionGet { .. }
            | Call::TransactionGetMerkle { .. }
            | Call::TransactionIdFromPos { .. }
            | Call::SilentSubscribe { .. }
            | Call::SilentUnsubscribe { .. }
            | Call::SilentTweaks { .. } => false,
        }
    }

    /// `method` with `params` (an array or an object) as version `v` has it, on network `net`
    /// (addresses must be of it).
    pub fn parse(method: &str, params: &Value, v: Version, net: Net) -> Result<Call, ServerError> {
        if !available(method, v) {
            return Err(match known(method) {
                true => ServerError::MethodNotFound(format!(
                    "{method} is not in protocol version {}",
                    version_string(v)
                )),
                false => ServerError::MethodNotFound(format!("unknown method {method:?}")),
            });
        }
        let p = params;
        Ok(match method {
            "server.version" => server_version(p)?,
            "server.banner" => Call::ServerBanner,
            "server.donation_address" => Call::ServerDonationAddress,
            "server.peers.subscribe" => Call::ServerPeersSubscribe,
            "server.add_peer" => Call::ServerAddPeer { features: arg(p, 0, "features").cloned() },
            "server.features" => Call::ServerFeatures,
            "server.ping" if v >= (1, 7, 0) => {
                // 1.7: padding both ways against traffic analysis; `data` is any hex and ignored.
                if let Some(d) = arg(p, 1, "data") {
                    d.as_str()
                        .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
                        .ok_or_else(|| ServerError::invalid_params("data must be a hex string"))?;
                }
                let len = match arg(p, 0, "pong_len") {
                    None => 0,
                    Some(n) => n.as_u64().filter(|n| *n <= MAX_PONG).ok_or_else(|| {
                        ServerError::invalid_params(format!("pong_len must be 0 to {MAX_PONG}"))
                    })?,
                };
                Call::ServerPing { pong_len: Some(len) }
            }
            "server.ping" => Call::ServerPing { pong_len: None },

            "blockchain.headers.subscribe" => {
                // 1.2 added `raw` (default false), 1.3 made true the default, 1.4 removed it.
                let form = match v {
                    v if v < (1, 2, 0) => HeaderForm::Deserialized,
                    v if v < (1, 4, 0) => match arg(p, 0, "raw") {
                        Some(r) => {
                            match r
                                .as_bool()
                                .ok_or_else(|| ServerError::bad_request("raw must be a boolean"))?
                            {
                                true => HeaderForm::Raw,
                                false => HeaderForm::Deserialized,
                            }
                        }
                        None if v < (1, 3, 0) => HeaderForm::Deserialized,
                        None => HeaderForm::Raw,
                    },
                    _ => HeaderForm::Raw,
                };
                Call::HeadersSubscribe { form }
            }
            "blockchain.numblocks.subscribe" => Call::NumblocksSubscribe,
            "blockchain.block.get_header" => Call::BlockGetHeader { height: u32_arg(p, 0, "height", None)? },
            "blockchain.block.get_chunk" => {
                let index = u32_arg(p, 0, "index", None)?;
                let start = index
                    .checked_mul(MAX_HEADERS)
                    .ok_or_else(|| ServerError::bad_request("index too large"))?;
                Call::BlockGetChunk { start }
            }
            "blockchain.block.header" => {
                let height = u32_arg(p, 0, "height", None)?;
                Call::BlockHeader { height, cp_height: cp_height_arg(p, 1, v)? }
            }
            "blockchain.block.headers" => {
                let start = u32_arg(p, 0, "start_height", None)?;
                let count = u32_arg(p, 1, "count", None)?.min(MAX_HEADERS);
                Call::BlockHeaders { start, count, cp_height: cp_height_arg(p, 2, v)? }
            }

            "blockchain.utxo.get_address" => {
                let txid = txid_arg(p, 0)?;
                Call::UtxoGetAddress { outpoint: OutPoint { txid, vout: u32_arg(p, 1, "index", None)? } }
            }
            "blockchain.outpoint.subscribe" | "blockchain.outpoint.get_status" => {
                let outpoint = outpoint_arg(p)?;
                // The hint is for servers that index by script; ours finds the script itself.
                if let Some(hint) = arg(p, 2, "spk_hint") {
                    hint.as_str()
                        .filter(|h| hex::decode(h).is_ok())
                        .ok_or_else(|| ServerError::invalid_params("spk_hint must be a hex string"))?;
                }
                match method {
                    "blockchain.outpoint.subscribe" => Call::OutpointSubscribe { outpoint },
                    _ => Call::OutpointGetStatus { outpoint },
                }
            }
            "blockchain.outpoint.unsubscribe" => Call::OutpointUnsubscribe { outpoint: outpoint_arg(p)? },

            "blockchain.transaction.get" => {
                let txid = txid_arg(p, 0)?;
                // 1.0 had an unused `height` second argument; 1.1 dropped it; 1.2 made it `verbose`.
                let verbose = match v {
                    v if v < (1, 1, 0) => false,
                    v if v < (1, 2, 0) => match arg(p, 1, "verbose") {
                        None => false,
                        Some(_) => {
                            return Err(ServerError::invalid_params("protocol 1.1 takes only tx_hash"))
                        }
                    },
                    _ => bool_arg(p, 1, "verbose")?,
                };
                Call::TransactionGet { txid, verbose }
            }
            "blockchain.transaction.get_merkle" => {
                let txid = txid_arg(p, 0)?;
                Call::TransactionGetMerkle { txid, height: u32_arg(p, 1, "height", None)? }
            }
            "blockchain.transaction.id_from_pos" => {
                let height = u32_arg(p, 0, "height", None)?;
                let pos = u32_arg(p, 1, "tx_pos", None)?;
                Call::TransactionIdFromPos { height, pos, merkle: bool_arg(p, 2, "merkle")? }
            }
            "blockchain.transaction.broadcast" => {
                Call::TransactionBroadcast { raw_tx: str_arg(p, 0, "raw_tx")?.to_string() }
            }
            "blockchain.transaction.broadcast_package" => {
                let raw_txs = hex_list_arg(p, 0, "raw_txs")?;
                Call::TransactionBroadcastPackage { raw_txs, verbose: bool_arg(p, 1, "verbose")? }
            }
            "blockchain.transaction.testmempoolaccept" => {
                Call::TransactionTestMempoolAccept { raw_txs: hex_list_arg(p, 0, "raw_txs")? }
            }

            "blockchain.estimatefee" => {
                let target = u32_arg(p, 0, "number", None)?;
                // 1.6 passes `mode` on to estimatesmartfee; accepted in every version, as ElectrumX does.
                let mode = match arg(p, 1, "mode") {
                    None => None,
                    Some(Value::String(m))
                        if ["CONSERVATIVE", "ECONOMICAL"].contains(&m.to_uppercase().as_str()) =>
                    {
                        Some(m.to_uppercase())
                    }
                    Some(_) => {
                        return Err(ServerError::bad_request("mode must be CONSERVATIVE or ECONOMICAL"))
                    }
                };
                Call::EstimateFee { target, mode }
            }
            "blockchain.relayfee" => Call::RelayFee,
            "mempool.get_fee_histogram" => Call::FeeHistogram,
            "mempool.get_info" => Call::MempoolInfo,
            "mempool.recent" => Call::MempoolRecent,

            "blockchain.silentpayments.subscribe" => {
                Call::SilentSubscribe { keys: sp_keys(p)?, start: sp_start(p)?, labels: sp_labels(p)? }
            }
            "blockchain.silentpayments.unsubscribe" => Call::SilentUnsubscribe { keys: sp_keys(p)? },
            "blockchain.silentpayments.tweaks" => Call::SilentTweaks {
                start: u32_arg(p, 0, "start_height", None)?,
                count: u32_arg(p, 1, "count", None)?.min(MAX_TWEAK_BLOCKS),
            },

            m => {
                // The script methods, whichever way they name the script.
                let (family, name) = m.rsplit_once('.').unwrap_or(("", m));
                let script = || named(net, family, p);
                match name {
                    "get_history" => Call::GetHistory(script()?),
                    "get_mempool" => Call::GetMempool(script()?),
                    "get_balance" => Call::GetBalance(script()?),
                    "listunspent" => Call::ListUnspent(script()?),
                    "subscribe" => Call::Subscribe(script()?),
                    "unsubscribe" => Call::Unsubscribe(script()?),
                    // A method of the table not parsed here; a test parses every one.
                    _ => return Err(ServerError::MethodNotFound(format!("unknown method {method:?}"))),
                }
            }
        })
    }
}

/// `server.version(client_name, protocol_version)`: protocol_version is one version or a
/// [min, max] pair.
fn server_version(params: &Value) -> Result<Call, ServerError> {
    let (min, max) = match arg(params, 1, "protocol_version") {
        None => (UNNEGOTIATED_DEFAULT, UNNEGOTIATED_DEFAULT),
        Some(Value::String(v)) => {
            let v = crate::protocol::parse_version(v)
                .ok_or_else(|| ServerError::bad_request(format!("invalid protocol version {v:?}")))?;
            (v, v)
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let p = |v: &Value| v.as_str().and_then(crate::protocol::parse_version);
            match (p(&a[0]), p(&a[1])) {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => return Err(ServerError::bad_request("invalid protocol version range")),
            }
        }
        Some(_) => return Err(ServerError::bad_request("protocol_version must be a string or [min, max]")),
    };
    let client_name = arg(params, 0, "client_name").and_then(Value::as_str).map(str::to_string);
    Ok(Call::ServerVersion { client_name, min, max })
}

/// The script of a `blockchain.address.*`, `.scripthash.*` or `.scriptpubkey.*` request.
fn named(net: Net, family: &str, params: &Value) -> Result<Named, ServerError> {
    Ok(match family {
        "blockchain.address" => {
            let text = str_arg(params, 0, "address")?;
            let address = Address::from_str(text)
                .and_then(|a| a.require_network(net.0))
                .map_err(|e| ServerError::bad_request(format!("invalid address {text:?}: {e}")))?;
            let sh = ScriptHash::of(address.script_pubkey().as_bytes());
            Named { sh, notify_as: ("blockchain.address.subscribe", text.to_string()) }
        }
        "blockchain.scriptpubkey" => {
            let script = hex::decode(str_arg(params, 0, "scriptpubkey")?)
                .map_err(|_| ServerError::bad_request("scriptpubkey must be hex"))?;
            let sh = ScriptHash::of(&script);
            // As ElectrumX does, notifications name the script by its hash.
            Named { sh, notify_as: ("blockchain.scriptpubkey.subscribe", sh.to_string()) }
        }
        _ => {
            let sh: ScriptHash =
                str_arg(params, 0, "scripthash")?.parse().map_err(ServerError::BadRequest)?;
            Named { sh, notify_as: ("blockchain.scripthash.subscribe", sh.to_string()) }
        }
    })
}

// The argument rules' codes follow ElectrumX, which clients may branch on: an argument missing
// (or one too many) is JSON-RPC's -32602 (aiorpcX's "invalid arguments"), one present but
// malformed is 1, `BAD_REQUEST` (ElectrumX's `non_negative_integer`, `assert_boolean`,
// `assert_tx_hash`, `scripthash_to_hashX`). `server.ping`'s, `spk_hint`'s and the hex lists'
// rules keep -32602: what ElectrumX answers there is not established.

/// Positional or named parameter `i` / `name`.
fn arg<'a>(params: &'a Value, i: usize, name: &str) -> Option<&'a Value> {
    match params {
        Value::Array(a) => a.get(i),
        Value::Object(o) => o.get(name),
        _ => None,
    }
    .filter(|v| !v.is_null())
}

fn u32_arg(params: &Value, i: usize, name: &str, default: Option<u32>) -> Result<u32, ServerError> {
    match arg(params, i, name) {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ServerError::bad_request(format!("{name} must be a non-negative integer"))),
        None => default.ok_or_else(|| ServerError::invalid_params(format!("missing {name}"))),
    }
}

fn str_arg<'a>(params: &'a Value, i: usize, name: &str) -> Result<&'a str, ServerError> {
    let message = || format!("{name} must be a string");
    match arg(params, i, name) {
        None => Err(ServerError::InvalidParams(message())),
        Some(v) => v.as_str().ok_or_else(|| ServerError::BadRequest(message())),
    }
}

fn txid_arg(params: &Value, i: usize) -> Result<Txid, ServerError> {
    str_arg(params, i, "tx_hash")?
        .parse()
        .map_err(|_| ServerError::bad_request("tx_hash must be 64 hex digits"))
}

/// An outpoint as 1.7's `blockchain.outpoint.*` take it: `tx_hash`, `txout_idx`.
fn outpoint_arg(params: &Value) -> Result<OutPoint, ServerError> {
    Ok(OutPoint { txid: txid_arg(params, 0)?, vout: u32_arg(params, 1, "txout_idx", None)? })
}

fn bool_arg(params: &Value, i: usize, name: &str) -> Result<bool, ServerError> {
    match arg(params, i, name) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| ServerError::bad_request(format!("{name} must be a boolean"))),
    }
}

fn hex_list_arg(params: &Value, i: usize, name: &str) -> Result<Vec<Value>, ServerError> {
    arg(params, i, name)
        .and_then(Value::as_array)
        .filter(|a| {
            !a.is_empty()
                && a.iter().all(|t| t.as_str().is_some_and(|s| s.len() % 2 == 0 && hex::decode(s).is_ok()))
        })
        .cloned()
        .ok_or_else(|| ServerError::invalid_params(format!("{name} must be a non-empty list of hex strings")))
}

/// The scan private key (64 hex digits) and the spend public key (66, compressed). The messages
/// never quote what was sent: it is a private key.
fn sp_keys(params: &Value) -> Result<SpKeys, ServerError> {
    let scan = str_arg(params, 0, "scan_private_key")?;
    let spend = str_arg(params, 1, "spend_public_key")?;
    let scan = match scan.len() == 64 {
        true => SecretKey::from_str(scan).ok(),
        false => None,
    }
    .ok_or_else(|| ServerError::bad_request("scan_private_key must be 64 hex digits of a valid key"))?;
    let spend = match spend.len() == 66 {
        true => PublicKey::from_str(spend).ok(),
        false => None,
    }
    .ok_or_else(|| ServerError::bad_request("spend_public_key must be 66 hex digits of a compressed key"))?;
    Ok(SpKeys { scan, spend })
}

/// `start`: a height, a time, or `"FROM-TO"`; none is height 0 (the scan starts where the tweaks
/// do).
fn sp_start(params: &Value) -> Result<SpStart, ServerError> {
    let bad = || ServerError::bad_request("start must be a height, a time or \"FROM-TO\" heights");
    Ok(match arg(params, 2, "start") {
        None => SpStart::From(0),
        Some(Value::String(range)) => {
            let (from, to) = range.split_once('-').ok_or_else(bad)?;
            let (from, to) = (from.trim().parse().map_err(|_| bad())?, to.trim().parse().map_err(|_| bad())?);
            if from > to {
                return Err(ServerError::bad_request("start \"FROM-TO\" needs FROM <= TO"));
            }
            SpStart::Range(from, to)
        }
        Some(v) => match v.as_u64().ok_or_else(bad)? {
            t if t > TIME_THRESHOLD => SpStart::Time(t),
            h => SpStart::From(h as u32),
        },
    })
}

/// `labels`: BIP352's label numbers m, any 32-bit value (0, change, is always scanned for, so it
/// may be given too).
fn sp_labels(params: &Value) -> Result<Vec<u32>, ServerError> {
    let bad = || ServerError::bad_request("labels must be a list of integers from 0 to 2^32 - 1");
    match arg(params, 3, "labels") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => {
            a.iter().map(|l| l.as_u64().and_then(|l| u32::try_from(l).ok()).ok_or_else(bad)).collect()
        }
        Some(_) => Err(bad()),
    }
}

/// `cp_height` arrived in 1.4; before that the header alone is served.
fn cp_height_arg(params: &Value, i: usize, v: Version) -> Result<u32, ServerError> {
    match v >= (1, 4, 0) {
        true => u32_arg(params, i, "cp_height", Some(0)),
        false => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{BAD_REQUEST, INVALID_PARAMS, METHODS, METHOD_NOT_FOUND, VERSIONS};

    const REGTEST: Net = Net(bitcoin::Network::Regtest);
    /// A scan private key (1) and a spend public key (the generator), valid as keys.
    const SCAN: &str = "0000000000000000000000000000000000000000000000000000000000000001";
    const SPEND: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

    #[test]
    fn silent_payments_arguments() {
        let v = (1, 4, 2);
        let parse = |params: Value| Call::parse("blockchain.silentpayments.subscribe", &params, v, REGTEST);
        let Call::SilentSubscribe { keys, start, labels } = parse(json!([SCAN, SPEND])).unwrap() else {
            panic!("not a subscribe")
        };
        assert_eq!((start, labels), (SpStart::From(0), vec![]));
        // Neither key is ever printed, not even in a debug log of the call.
        let shown = format!("{:?}", Call::SilentUnsubscribe { keys });
        assert!(!shown.contains(&SCAN[48..]) && !shown.contains(&SPEND[2..20]), "{shown}");
        let start = |s: Value| match parse(json!([SCAN, SPEND, s])) {
            Ok(Call::SilentSubscribe { start, .. }) => Ok(start),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err((e.code(), e.message())),
        };
        assert_eq!(start(json!(120)), Ok(SpStart::From(120)));
        assert_eq!(start(json!(500_000_000)), Ok(SpStart::From(500_000_000)));
        assert_eq!(start(json!(1_700_000_000)), Ok(SpStart::Time(1_700_000_000)));
        assert_eq!(start(json!("10-20")), Ok(SpStart::Range(10, 20)));
        assert_eq!(start(json!("20-10")).unwrap_err().0, BAD_REQUEST);
        assert_eq!(start(json!("x-10")).unwrap_err().0, BAD_REQUEST);
        assert_eq!(start(json!(-1)).unwrap_err().0, BAD_REQUEST);
        assert_eq!(start(json!(null)), Ok(SpStart::From(0)));
        let Call::SilentSubscribe { labels, .. } = parse(json!({"scan_private_key": SCAN,
            "spend_public_key": SPEND, "labels": [3, 0, 7]}))
        .unwrap() else {
            panic!()
        };
        assert_eq!(labels, vec![3, 0, 7]);
        let Call::SilentSubscribe { labels, .. } =
            parse(json!([SCAN, SPEND, 0, [1u64 << 31, u32::MAX]])).unwrap()
        else {
            panic!()
        };
        assert_eq!(labels, vec![1 << 31, u32::MAX]);
        for bad in [json!([-1]), json!([1u64 << 32]), json!("1"), json!([1.5])] {
            let e = parse(json!([SCAN, SPEND, 0, bad])).unwrap_err();
            assert_eq!(e.code(), BAD_REQUEST, "{bad}");
        }
        // Bad keys: malformed is 1, missing is -32602, and the message never quotes them.
        let zero = "00".repeat(32);
        for (scan, spend) in [(&zero[..], SPEND), (&SCAN[2..], SPEND), (SCAN, &SPEND[2..]), (SCAN, "04ab")] {
            let e = parse(json!([scan, spend])).unwrap_err();
            assert_eq!(e.code(), BAD_REQUEST, "{scan} {spend}");
            assert!(!e.message().contains(scan) && !e.message().contains(spend), "{}", e.message());
        }
        assert_eq!(parse(json!([SCAN])).unwrap_err().code(), INVALID_PARAMS);
        assert_eq!(
            Call::parse("blockchain.silentpayments.tweaks", &json!([5, 1_000_000]), v, REGTEST).unwrap(),
            Call::SilentTweaks { start: 5, count: MAX_TWEAK_BLOCKS }
        );
        let e = Call::parse("blockchain.silentpayments.tweaks", &json!([5]), v, REGTEST).unwrap_err();
        assert_eq!(e.code(), INVALID_PARAMS);
    }

    #[test]
    fn every_method_of_every_version_parses() {
        // Arguments that suit every method that takes any (unused ones are ignored).
        let txid = "00".repeat(32);
        for (method, ..) in METHODS {
            for v in VERSIONS.iter().filter(|v| available(method, **v)) {
                let params = match *method {
                    m if m.starts_with("blockchain.address.") => {
                        json!(["bcrt1qn7d2x7272lznt5hhk9s07q3cqnrqljnwladrd3"])
                    }
                    m if m.starts_with("blockchain.scriptpubkey.") => json!(["51"]),
                    m if m.starts_with("blockchain.scripthash.") => json!([txid]),
                    m if m.starts_with("blockchain.block.") => json!([1, 2]),
                    "blockchain.transaction.id_from_pos" => json!([1, 0]),
                    m if m.contains("testmempoolaccept") || m.contains("package") => json!([["00"]]),
                    "blockchain.transaction.broadcast" => json!(["00"]),
                    "blockchain.estimatefee" => json!([2]),
                    "blockchain.transaction.get" => json!([txid]),
                    "blockchain.silentpayments.tweaks" => json!([0, 10]),
                    m if m.starts_with("blockchain.silentpayments.") => json!([SCAN, SPEND]),
                    "server.version" => json!(["c", "1.4"]),
                    m if m.starts_with("blockchain.transaction.")
                        || m.starts_with("blockchain.outpoint.")
                        || m.starts_with("blockchain.utxo.") =>
                    {
                        json!([txid, 0])
                    }
                    _ => json!([]),
                };
                let parsed = Call::parse(method, &params, *v, REGTEST);
                assert!(parsed.is_ok(), "{method} at {v:?}: {:?}", parsed.err());
            }
        }
    }

    #[test]
    fn availability_and_argument_rules() {
        let parse = |method: &str, params: Value, v: Version| Call::parse(method, &params, v, REGTEST);
        let message = |r: Result<Call, ServerError>| r.map_err(|e| (e.code(), e.message())).unwrap_err();
        assert_eq!(
            message(parse("no.such", json!([]), (1, 4, 0))),
            (METHOD_NOT_FOUND, "unknown method \"no.such\"".into())
        );
        assert_eq!(
            message(parse("blockchain.relayfee", json!([]), (1, 6, 0))),
            (METHOD_NOT_FOUND, "blockchain.relayfee is not in protocol version 1.6".into())
        );
        assert_eq!(
            parse("blockchain.block.headers", json!([5, 9000]), (1, 4, 0)).unwrap(),
            Call::BlockHeaders { start: 5, count: MAX_HEADERS, cp_height: 0 }
        );
        assert_eq!(
            parse("blockchain.block.header", json!({"height": 3, "cp_height": 7}), (1, 4, 0)).unwrap(),
            Call::BlockHeader { height: 3, cp_height: 7 }
        );
        // cp_height came with 1.4.
        assert_eq!(
            parse("blockchain.block.header", json!([3, 7]), (1, 3, 0)).unwrap(),
            Call::BlockHeader { height: 3, cp_height: 0 }
        );
        assert_eq!(
            message(parse("blockchain.block.get_chunk", json!([u32::MAX]), (1, 2, 0))).1,
            "index too large"
        );
        assert_eq!(
            parse("blockchain.headers.subscribe", json!([]), (1, 2, 0)).unwrap(),
            Call::HeadersSubscribe { form: HeaderForm::Deserialized }
        );
        assert_eq!(
            parse("blockchain.headers.subscribe", json!([]), (1, 3, 0)).unwrap(),
            Call::HeadersSubscribe { form: HeaderForm::Raw }
        );
        assert_eq!(
            parse("blockchain.estimatefee", json!([6, "economical"]), (1, 6, 0)).unwrap(),
            Call::EstimateFee { target: 6, mode: Some("ECONOMICAL".into()) }
        );
        assert_eq!(parse("server.ping", json!([]), (1, 6, 0)).unwrap(), Call::ServerPing { pong_len: None });
        assert_eq!(
            parse("server.ping", json!([3, "ab"]), (1, 7, 0)).unwrap(),
            Call::ServerPing { pong_len: Some(3) }
        );
        assert_eq!(message(parse("server.ping", json!([3, "xy"]), (1, 7, 0))).1, "data must be a hex string");
        assert_eq!(
            message(parse("blockchain.scripthash.get_history", json!([]), (1, 4, 0))).1,
            "scripthash must be a string"
        );
        assert_eq!(
            message(parse("blockchain.transaction.get", json!(["00".repeat(32), true]), (1, 1, 0))).1,
            "protocol 1.1 takes only tx_hash"
        );
    }

    /// The codes clients may branch on, as ElectrumX answers: missing is -32602, malformed is 1.
    #[test]
    fn missing_arguments_are_invalid_params_and_malformed_ones_bad_requests() {
        let code = |method: &str, params: Value, v: Version| {
            Call::parse(method, &params, v, REGTEST)
                .map(|c| panic!("{method}{params} parsed: {c:?}"))
                .unwrap_err()
                .code()
        };
        let v = (1, 4, 2);
        let txid = "ab".repeat(32);
        for (method, params, want) in [
            ("blockchain.scripthash.get_history", json!([]), INVALID_PARAMS),
            ("blockchain.scripthash.get_history", json!(["zz"]), BAD_REQUEST),
            ("blockchain.scripthash.get_history", json!([5]), BAD_REQUEST),
            ("blockchain.address.get_balance", json!(["1BoatSLRHtKNngkdXEeobR76b53LETtpyT"]), BAD_REQUEST),
            ("blockchain.transaction.get", json!([]), INVALID_PARAMS),
            ("blockchain.transaction.get", json!(["xyz"]), BAD_REQUEST),
            ("blockchain.transaction.get", json!([txid, "yes"]), BAD_REQUEST),
            ("blockchain.transaction.get_merkle", json!([txid]), INVALID_PARAMS),
            ("blockchain.transaction.get_merkle", json!([txid, -1]), BAD_REQUEST),
            ("blockchain.block.header", json!(["tall"]), BAD_REQUEST),
            ("blockchain.block.headers", json!([0]), INVALID_PARAMS),
            ("blockchain.estimatefee", json!([2, "FAST"]), BAD_REQUEST),
            ("blockchain.transaction.broadcast", json!([]), INVALID_PARAMS),
        ] {
            let v = if method.starts_with("blockchain.address.") { (1, 2, 0) } else { v };
            assert_eq!(code(method, params.clone(), v), want, "{method}{params}");
        }
        assert_eq!(code("blockchain.headers.subscribe", json!(["no"]), (1, 3, 0)), BAD_REQUEST);
        assert_eq!(code("blockchain.transaction.get", json!([txid, true]), (1, 1, 0)), INVALID_PARAMS);
    }
}
