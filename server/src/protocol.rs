//! The Electrum protocol's vocabulary, shared by every layer above: the versions served, which
//! method exists in which version, the error codes and `ServerError` (mapped to them here only),
//! and the wire form of a txid. Nothing here knows about the server's state.

use bitcoin::Txid;

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
pub const METHODS: &[(&str, Version, Version)] = &[
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
    // Silent payments (BIP352): Frigate's proposed methods, and ours for client-side scanning.
    // From 1.4 on, the oldest version Frigate serves them in that clients still speak.
    ("blockchain.silentpayments.subscribe", (1, 4, 0), NEVER),
    ("blockchain.silentpayments.unsubscribe", (1, 4, 0), NEVER),
    ("blockchain.silentpayments.tweaks", (1, 4, 0), NEVER),
];

/// Whether `method` exists in version `v`.
pub fn available(method: &str, v: Version) -> bool {
    METHODS.iter().any(|(name, since, until)| *name == method && *since <= v && v < *until)
}

/// Whether `method` is a method of any version.
pub fn known(method: &str) -> bool {
    METHODS.iter().any(|(name, ..)| *name == method)
}

/// Our `server.version` software string (also what we announce to peers and the admin shows).
pub fn software() -> String {
    format!("blkindex {}", env!("CARGO_PKG_VERSION"))
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

// JSON-RPC 2.0's codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// JSON-RPC's first implementation-defined server error: the server ends the connection (idle,
/// refused), or (admin) a request understood but not done.
pub const SERVER_ERROR: i64 = -32000;
// The Electrum servers' codes (ElectrumX's `BAD_REQUEST` and `DAEMON_ERROR`).
pub const BAD_REQUEST: i64 = 1;
pub const DAEMON_ERROR: i64 = 2;
/// Protocol 1.7's code for a history too large to send (used for every version).
pub const HISTORY_TOO_LARGE: i64 = 10001;
/// ElectrumX's code for a client over a resource limit (subscriptions, reply bytes, cost).
pub const EXCESSIVE_RESOURCE_USAGE: i64 = -101;

/// Why a request failed, whatever raised it; `code` and `message` are the one place it becomes
/// what the client reads (`{"code": …, "message": …}`).
#[derive(Debug)]
pub enum ServerError {
    /// Not JSON.
    Parse(String),
    /// Not a JSON-RPC request: no method, a batch of the wrong size, a request over the size limit.
    InvalidRequest(String),
    /// A method of no version, or of another version than the session's.
    MethodNotFound(String),
    /// An argument missing or one too many, or `params` neither a list nor an object.
    InvalidParams(String),
    /// An argument the method cannot take (malformed: a script hash, txid, address, height,
    /// boolean; or a height beyond the tip), a second `server.version`, no common version, a
    /// transaction the node rejects.
    BadRequest(String),
    /// The node's error.
    Daemon(String),
    /// A call that needs the node (its mempool, fees, broadcast) on a server run with
    /// `--no-node`: `DAEMON_ERROR`, as for a node that cannot be reached.
    NoNode,
    /// A transaction neither in the index nor in the mempool: `DAEMON_ERROR`, as ElectrumX.
    UnknownTx(Txid),
    /// A history or unspent list longer than `--max-history` (the limit).
    HistoryTooLarge(usize),
    /// Over a per-session limit: subscriptions, a reply's bytes, the cost budget.
    ExcessiveUsage(String),
    /// The server ends the connection: idle, or refused (a limit, a ban).
    Closing(String),
    /// Ours, not the client's: the index (RocksDB, the blk files), I/O, a bug. The session logs
    /// it; the client reads only "internal error".
    Internal(anyhow::Error),
}

impl ServerError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ServerError::BadRequest(message.into())
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        ServerError::InvalidParams(message.into())
    }

    /// A failed call to the node (a `ServerError` raised on the way, such as `NoNode`, comes
    /// back as itself).
    pub fn daemon(e: anyhow::Error) -> Self {
        match e.downcast::<ServerError>() {
            Ok(e) => e,
            Err(e) => ServerError::Daemon(format!("daemon error: {e:#}")),
        }
    }

    pub fn code(&self) -> i64 {
        match self {
            ServerError::Parse(_) => PARSE_ERROR,
            ServerError::InvalidRequest(_) => INVALID_REQUEST,
            ServerError::MethodNotFound(_) => METHOD_NOT_FOUND,
            ServerError::InvalidParams(_) => INVALID_PARAMS,
            ServerError::BadRequest(_) => BAD_REQUEST,
            ServerError::Daemon(_) | ServerError::NoNode => DAEMON_ERROR,
            // ElectrumX asks the node for it, so its clients get the node's error code.
            ServerError::UnknownTx(_) => DAEMON_ERROR,
            ServerError::HistoryTooLarge(_) => HISTORY_TOO_LARGE,
            ServerError::ExcessiveUsage(_) => EXCESSIVE_RESOURCE_USAGE,
            ServerError::Closing(_) => SERVER_ERROR,
            ServerError::Internal(_) => INTERNAL_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ServerError::Parse(m)
            | ServerError::InvalidRequest(m)
            | ServerError::MethodNotFound(m)
            | ServerError::InvalidParams(m)
            | ServerError::BadRequest(m)
            | ServerError::Daemon(m)
            | ServerError::ExcessiveUsage(m)
            | ServerError::Closing(m) => m.clone(),
            ServerError::NoNode => "no node: the server runs with --no-node".into(),
            ServerError::UnknownTx(txid) => format!("no transaction {txid}"),
            ServerError::HistoryTooLarge(max) => format!("history too large: more than {max} entries"),
            ServerError::Internal(_) => "internal error".into(),
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Internal(e) => write!(f, "internal error: {e:#}"),
            other => write!(f, "{} ({})", other.message(), other.code()),
        }
    }
}

/// So that code reading the index, which returns `anyhow` errors, can raise a client's error
/// too (`Err(ServerError::bad_request(…))?`) and have it come back out as itself.
impl std::error::Error for ServerError {}

/// An error from the index or a task: `Internal`, unless it is a `ServerError` raised inside,
/// or the index's refusal to read a script's history past the limit.
impl From<anyhow::Error> for ServerError {
    fn from(e: anyhow::Error) -> Self {
        if let Some(too_many) = e.downcast_ref::<blkindex_shared::bucket::TooManyRows>() {
            return ServerError::HistoryTooLarge(too_many.max);
        }
        match e.downcast::<ServerError>() {
            Ok(e) => e,
            Err(e) => ServerError::Internal(e),
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

    #[test]
    fn errors_raised_inside_index_code_come_back_as_themselves() {
        let raised: anyhow::Error = ServerError::bad_request("no block at height 9").into();
        let e = ServerError::from(raised);
        assert_eq!((e.code(), e.message()), (BAD_REQUEST, "no block at height 9".to_string()));
        let e = ServerError::from(anyhow::anyhow!("rocksdb: Corruption: block checksum mismatch"));
        assert_eq!((e.code(), e.message()), (INTERNAL_ERROR, "internal error".to_string()));
        assert!(e.to_string().contains("checksum mismatch"), "the log gets the cause: {e}");
    }
}
