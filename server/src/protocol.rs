//! The Electrum protocol's vocabulary, shared by every layer above: the versions served, which
//! method exists in which version, the error codes and the error a method answers with, and the
//! wire form of a txid. Nothing here knows about the server's state.

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
];

/// Whether `method` exists in version `v`.
pub fn available(method: &str, v: Version) -> bool {
    METHODS.iter().any(|(name, since, until)| *name == method && *since <= v && v < *until)
}

/// A method's family and name: ("blockchain.scripthash", "get_history").
pub fn family_and_name(method: &str) -> (&str, &str) {
    method.rsplit_once('.').unwrap_or(("", method))
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

/// A method's error as the client gets it: `{"code": …, "message": …}`.
#[derive(Debug)]
pub struct ErrorReply {
    pub code: i64,
    pub message: String,
}

pub const BAD_REQUEST: i64 = 1;
pub const DAEMON_ERROR: i64 = 2;
/// Protocol 1.7's code for a history too large to send (used for every version).
pub const HISTORY_TOO_LARGE: i64 = 10001;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

pub fn err(code: i64, message: impl Into<String>) -> ErrorReply {
    ErrorReply { code, message: message.into() }
}

impl From<anyhow::Error> for ErrorReply {
    fn from(e: anyhow::Error) -> Self {
        err(BAD_REQUEST, format!("{e:#}"))
    }
}

pub fn daemon(e: anyhow::Error) -> ErrorReply {
    err(DAEMON_ERROR, format!("daemon error: {e:#}"))
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
}
