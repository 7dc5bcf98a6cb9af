//! A small JSON-RPC client for bitcoind (cookie or user/password auth).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub enum Auth {
    /// Re-read at every call: bitcoind writes a new cookie each time it starts.
    Cookie(PathBuf),
    UserPass(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach bitcoind at {addr}: {msg}")]
    Unreachable { addr: String, msg: String },
    #[error("bitcoind RPC auth failed at {addr}: {msg}")]
    Auth { addr: String, msg: String },
    #[error("bitcoind RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
    /// HTTP 503: bitcoind's RPC work queue is full (`-rpcworkqueue`), or a proxy is overloaded.
    #[error("bitcoind at {addr} is overloaded: HTTP {status} {body}")]
    Busy { addr: String, status: u16, body: String },
    #[error("unexpected reply from bitcoind: {0}")]
    Protocol(String),
}

impl RpcError {
    /// Worth retrying later (node down, restarting, overloaded, or warming up: code -28).
    pub fn is_transient(&self) -> bool {
        matches!(self, RpcError::Unreachable { .. } | RpcError::Busy { .. } | RpcError::Rpc { code: -28, .. })
    }
}

pub struct Rpc {
    agent: ureq::Agent,
    addr: String,
    auth: Auth,
}

impl Rpc {
    /// The overall timeout of a call (connect, send, wait, read) for `Rpc::new`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    pub fn new(addr: &str, auth: Auth) -> Self {
        Self::with_timeout(addr, auth, Self::DEFAULT_TIMEOUT)
    }

    /// As `new`, with `timeout` as each call's overall bound instead of the default 120 s; a call
    /// that takes longer fails with a transient error (the node is slow, not wrong).
    pub fn with_timeout(addr: &str, auth: Auth, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Rpc { agent, addr: addr.to_string(), auth }
    }

    /// `host:port`, or `host:port/wallet/<name>` for a wallet's endpoint.
    fn url(&self) -> String {
        match self.addr.contains('/') {
            true => format!("http://{}", self.addr),
            false => format!("http://{}/", self.addr),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn auth_header(&self) -> Result<String, RpcError> {
        let userpass = match &self.auth {
            Auth::Cookie(path) => match std::fs::read_to_string(path) {
                Ok(c) => c.trim().to_string(),
                // bitcoind deletes its cookie when it stops: a missing cookie is a node that is down.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(RpcError::Unreachable {
                        addr: self.addr.clone(),
                        msg: format!("no cookie file {} (is bitcoind running?)", path.display()),
                    })
                }
                Err(e) => {
                    return Err(RpcError::Auth {
                        addr: self.addr.clone(),
                        msg: format!("cannot read cookie {}: {e}", path.display()),
                    })
                }
            },
            Auth::UserPass(u, p) => format!("{u}:{p}"),
        };
        Ok(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(userpass)))
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params});
        answer(&mut self.post(method, &body)?, method)
    }

    /// Posts `body` and reads the JSON reply (`what` names the call in errors).
    fn post(&self, what: &str, body: &Value) -> Result<Value, RpcError> {
        let unreachable = |msg: String| RpcError::Unreachable { addr: self.addr.clone(), msg };
        let mut resp = self
            .agent
            .post(&self.url())
            .header("Authorization", &self.auth_header()?)
            .send_json(body)
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RpcError::Auth { addr: self.addr.clone(), msg: format!("HTTP {status}") });
        }
        if status == 503 {
            // Its body is text ("Work queue depth exceeded"), not JSON: keep a line of it.
            let body = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
            let body = body.lines().next().unwrap_or("").chars().take(200).collect();
            return Err(RpcError::Busy { addr: self.addr.clone(), status, body });
        }
        // The body is read first and parsed after, so that a connection lost mid-reply (a node
        // restarting, a proxy resetting) is told apart from a malformed reply: the first is
        // transient, the second is not.
        let bytes = match resp.body_mut().with_config().limit(512 << 20).read_to_vec() {
            Ok(b) => b,
            Err(e @ ureq::Error::BodyExceedsLimit(_)) => {
                return Err(RpcError::Protocol(format!("{what}: HTTP {status}: {e}")))
            }
            Err(e) => return Err(unreachable(format!("{what}: the reply was cut short: {e}"))),
        };
        serde_json::from_slice(&bytes).map_err(|e| match e.is_eof() {
            // A reply without Content-Length that stops early.
            true => unreachable(format!("{what}: the reply was cut short: {e}")),
            false => RpcError::Protocol(format!("{what}: HTTP {status}: {e}")),
        })
    }

    /// Many calls in one HTTP request (a JSON-RPC batch: one round trip, the node answering them
    /// in turn): each call's own result or error, in the order of `calls`; an error for the
    /// whole batch if the node cannot be reached or its reply is not a list of answers to them.
    pub fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Result<Value, RpcError>>, RpcError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(id, (method, params))| json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params}))
            .collect();
        let what = format!("a batch of {} calls ({}…)", calls.len(), calls[0].0);
        let replies = self.post(&what, &Value::Array(body))?;
        let Value::Array(replies) = replies else {
            return Err(RpcError::Protocol(format!("{what}: the reply is not a list")));
        };
        let mut out: Vec<Option<Result<Value, RpcError>>> = (0..calls.len()).map(|_| None).collect();
        for mut reply in replies {
            let id = reply.get("id").and_then(Value::as_u64).map(|id| id as usize);
            let Some(id) = id.filter(|id| *id < calls.len()) else {
                return Err(RpcError::Protocol(format!("{what}: a reply with an id not asked for")));
            };
            out[id] = Some(answer(&mut reply, calls[id].0));
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| RpcError::Protocol(format!("{what}: a call without a reply"))))
            .collect()
    }

    pub fn best_block_hash(&self) -> Result<bitcoin::BlockHash, RpcError> {
        let v = self.call("getbestblockhash", json!([]))?;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RpcError::Protocol(format!("getbestblockhash: {v}")))
    }

    /// The raw bytes of a block.
    pub fn block_bytes(&self, hash: &bitcoin::BlockHash) -> Result<Vec<u8>, RpcError> {
        let v = self.call("getblock", json!([hash.to_string(), 0]))?;
        v.as_str()
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| RpcError::Protocol("getblock 0: not hex".into()))
    }

    /// The header of block `hash`, checked to hash to it (the follower builds on what it says).
    pub fn header(&self, hash: &bitcoin::BlockHash) -> Result<bitcoin::block::Header, RpcError> {
        let v = self.call("getblockheader", json!([hash.to_string(), false]))?;
        let header: bitcoin::block::Header = v
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| bitcoin::consensus::deserialize(&b).ok())
            .ok_or_else(|| RpcError::Protocol("getblockheader: bad header".into()))?;
        check_header(hash, header)
    }
}

/// The result of one call's `reply`, or the node's error.
fn answer(reply: &mut Value, method: &str) -> Result<Value, RpcError> {
    if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
        return Err(RpcError::Rpc {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
        });
    }
    reply.get_mut("result").map(Value::take).ok_or_else(|| RpcError::Protocol(format!("{method}: no result")))
}

/// `header` if it hashes to `hash`.
fn check_header(
    hash: &bitcoin::BlockHash,
    header: bitcoin::block::Header,
) -> Result<bitcoin::block::Header, RpcError> {
    match header.block_hash() == *hash {
        true => Ok(header),
        false => Err(RpcError::Protocol(format!(
            "getblockheader {hash}: the header returned hashes to {}",
            header.block_hash()
        ))),
    }
}

/// An amount the node gives in BTC (a JSON number), in satoshis: exact for every amount with at
/// most eight decimals, and an error for anything else (negative, not a number, too precise).
pub fn btc_to_sat(v: &Value) -> anyhow::Result<u64> {
    let btc = v.as_f64().ok_or_else(|| anyhow::anyhow!("not a number of BTC: {v}"))?;
    Ok(bitcoin::Amount::from_btc(btc).map_err(|e| anyhow::anyhow!("{v} BTC: {e}"))?.to_sat())
}

#[cfg(test)]
mod amount_tests {
    use super::*;

    #[test]
    fn a_header_must_hash_to_the_block_asked_for() {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest).header;
        assert!(check_header(&genesis.block_hash(), genesis).is_ok());
        let mut other = genesis;
        other.nonce += 1;
        let err = check_header(&genesis.block_hash(), other).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");
        assert!(!err.is_transient());
    }

    /// A node answering HTTP 503 (its work queue full): a transient error, retried, never fatal.
    /// A fake server, since a real node cannot be made to do this on cue.
    #[test]
    fn http_503_is_a_transient_error() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "Work queue depth exceeded";
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).unwrap();
        });
        let rpc = Rpc::new(&addr, Auth::UserPass("u".into(), "p".into()));
        let err = rpc.call("getblockcount", json!([])).unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, RpcError::Busy { status: 503, .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(err.to_string().contains("Work queue depth exceeded"), "{err}");
    }

    /// A node that stops mid-reply (restarting, or a reset): transient, like a refused connection.
    #[test]
    fn a_reply_cut_short_is_a_transient_error() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for with_length in [true, false] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let length = if with_length { "Content-Length: 100\r\n" } else { "" };
                let reply = format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n{{\"result\":");
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        let rpc = Rpc::new(&addr, Auth::UserPass("u".into(), "p".into()));
        for _ in 0..2 {
            let err = rpc.call("getblockcount", json!([])).unwrap_err();
            assert!(err.is_transient(), "{err:?}");
            assert!(err.to_string().contains("cut short"), "{err}");
        }
        server.join().unwrap();
    }

    /// A node that takes the call and never answers: `with_timeout` bounds the wait, and the
    /// error is transient.
    #[test]
    fn with_timeout_bounds_a_call_to_a_silent_node() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = done_rx.recv(); // holds the connection open, silent, until the client gave up
        });
        let rpc =
            Rpc::with_timeout(&addr, Auth::UserPass("u".into(), "p".into()), Duration::from_millis(300));
        let t = std::time::Instant::now();
        let err = rpc.call("getblockcount", json!([])).unwrap_err();
        let took = t.elapsed();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(10), "{took:?}");
        assert!(err.is_transient(), "{err:?}");
    }

    /// A server answering one HTTP request with `reply` (a JSON text), and the body it was sent.
    fn answer_once(reply: String) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            r.read_exact(&mut body).unwrap();
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", reply.len());
            (&s).write_all(format!("{head}{reply}").as_bytes()).unwrap();
            String::from_utf8(body).unwrap()
        });
        (addr, server)
    }

    /// A batch's answers come back in the order of the calls whatever order the node sends them
    /// in, each with its own error; a reply missing a call is an error for the whole batch.
    #[test]
    fn a_batch_matches_answers_to_calls_by_id() {
        let reply = json!([
            {"id": 2, "result": null, "error": {"code": -5, "message": "No such mempool transaction"}},
            {"id": 0, "result": "a", "error": null},
            {"id": 1, "result": {"vsize": 141}, "error": null},
        ]);
        let (addr, server) = answer_once(reply.to_string());
        let rpc = Rpc::new(&addr, Auth::UserPass("u".into(), "p".into()));
        let calls = [("m0", json!([])), ("m1", json!([1])), ("m2", json!(["x"]))];
        let answers = rpc.batch(&calls).unwrap();
        let sent: Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(sent.as_array().unwrap().len(), 3, "one request for the three: {sent}");
        assert_eq!(sent[1]["method"], "m1");
        assert_eq!(answers[0].as_ref().unwrap(), &json!("a"));
        assert_eq!(answers[1].as_ref().unwrap()["vsize"], 141);
        assert!(matches!(&answers[2], Err(RpcError::Rpc { code: -5, .. })), "{:?}", answers[2]);

        let (addr, server) = answer_once(json!([{"id": 0, "result": 1, "error": null}]).to_string());
        let rpc = Rpc::new(&addr, Auth::UserPass("u".into(), "p".into()));
        let err = rpc.batch(&calls[..2]).unwrap_err();
        server.join().unwrap();
        assert!(err.to_string().contains("without a reply"), "{err}");
        assert!(Rpc::new("127.0.0.1:1", Auth::UserPass("u".into(), "p".into()))
            .batch(&[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn btc_to_sat_is_exact() {
        for (btc, sat) in
            [("0", 0u64), ("0.00000001", 1), ("12.34567891", 1_234_567_891), ("0.1", 10_000_000)]
        {
            assert_eq!(btc_to_sat(&serde_json::from_str(btc).unwrap()).unwrap(), sat, "{btc}");
        }
        assert_eq!(btc_to_sat(&json!(20999999.9769)).unwrap(), 2_099_999_997_690_000);
        assert!(btc_to_sat(&json!(-1.0)).is_err());
        assert!(btc_to_sat(&json!("1.0")).is_err());
        assert!(btc_to_sat(&json!(0.000000001)).is_err());
    }
}
