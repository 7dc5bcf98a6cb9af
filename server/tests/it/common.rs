//! What the server's integration tests share: the indexer binary, and a server process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Result;
use electrum_client::Client;

use blkindex_testkit::chain::build_rich_chain;
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

/// The indexer binary, built beside this test by `cargo test --workspace`.
pub fn indexer_bin() -> PathBuf {
    workspace_bin("blkindex-indexer")
}

/// A binary of another crate of the workspace, built beside this test by `cargo test --workspace`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: run `cargo test --workspace`", bin.display());
    bin
}

/// A following indexer on `node`, synced; its DB is `<dir>/db`.
pub fn indexed(node: &Node) -> Result<(tempfile::TempDir, Indexer)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut indexer = Indexer::follow(&indexer_bin(), node, &db, &[])?;
    indexer.wait_synced(node, &db)?;
    // At the node's tip is not yet done: the bulk pass marks itself finished just after, and the
    // tweak pass runs beside the follower. A test that stops the indexer (a checkpoint of a
    // finished index) or reads the tweaks needs both done.
    indexer.wait_logged("following:")?;
    indexer.wait_logged("tweak pass: done")?;
    Ok((dir, indexer))
}

/// A node with the rich test chain, indexed and followed, and a server on the index.
pub fn rich_setup() -> Result<(Node, tempfile::TempDir, Indexer, Server)> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let (dir, indexer) = indexed(&node)?;
    let server = Server::start(&node, &dir.path().join("db"))?;
    Ok((node, dir, indexer, server))
}

pub struct Server {
    child: Child,
    /// The TCP listener's address (empty with `--electrum-addr off`).
    pub addr: String,
    log: PathBuf,
}

impl Server {
    /// Starts the server on a port the OS picks (no race with other tests for a free port) and
    /// reads the address from its log.
    pub fn start(node: &Node, db: &Path) -> Result<Self> {
        Self::start_with(node, db, &[])
    }

    /// As `start`, with more flags (which may override the defaults given here).
    pub fn start_with(node: &Node, db: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_logged(node, db, extra, "info,blkindex_server=debug")
    }

    /// As `start_with`, logging what `filter` (`BLKINDEX_LOG`) lets through.
    pub fn start_logged(node: &Node, db: &Path, extra: &[&str], filter: &str) -> Result<Self> {
        let rpc = node.rpc_addr();
        Self::spawn(node, db, &[&["--daemon-rpc-addr", rpc.as_str()], extra].concat(), filter)
    }

    /// A server with `--no-node` on `node`'s data dir (the node may be stopped): no RPC address
    /// or cookie given.
    pub fn start_no_node(node: &Node, db: &Path, extra: &[&str]) -> Result<Self> {
        Self::spawn(node, db, &[&["--no-node"], extra].concat(), "info,blkindex_server=debug")
    }

    /// A `--no-node` server run inside network namespace `netns` (`ip netns exec`, which execs
    /// the server itself, so its pid is the server's); `extra` gives its addresses there.
    pub fn start_no_node_in(netns: &str, node: &Node, db: &Path, extra: &[&str]) -> Result<Self> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_blkindex-server")]);
        Self::spawn_command(
            c,
            &node.datadir,
            db,
            &[&["--no-node"], extra].concat(),
            "info,blkindex_server=debug",
        )
    }

    /// A `--no-node` server on the blocks of data dir `datadir` (no node there: e.g. one
    /// `gen-blocks` wrote).
    pub fn start_no_node_on(datadir: &Path, db: &Path, extra: &[&str]) -> Result<Self> {
        let bin = Command::new(env!("CARGO_BIN_EXE_blkindex-server"));
        Self::spawn_command(bin, datadir, db, &[&["--no-node"], extra].concat(), "info,blkindex_server=debug")
    }

    fn spawn(node: &Node, db: &Path, args: &[&str], filter: &str) -> Result<Self> {
        Self::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_blkindex-server")),
            &node.datadir,
            db,
            args,
            filter,
        )
    }

    fn spawn_command(
        mut command: Command,
        datadir: &Path,
        db: &Path,
        args: &[&str],
        filter: &str,
    ) -> Result<Self> {
        let log = db.with_extension(format!("server{}.log", std::process::id() ^ rand_suffix()));
        let mut child = command
            .args(["--network", "regtest", "--datadir"])
            .arg(datadir)
            .arg("--db")
            .arg(db)
            .args(["--electrum-addr", "127.0.0.1:0"])
            .args(args)
            .env("BLKINDEX_LOG", filter)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The readiness line comes once every listener is served (and logged).
            if text.contains(r#"ready status="serving Electrum""#) {
                let addr = logged_addr(&text, "serving Electrum over TCP").unwrap_or_default();
                return Ok(Server { child, addr, log });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the server exited ({status}): {text}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the server did not listen: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address a listener logged, e.g. "serving Electrum over TLS" or "serving metrics".
    pub fn addr_of(&self, what: &str) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        logged_addr(&text, what).unwrap_or_else(|| panic!("no {what:?} in the log: {text}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log has `needle` within `wait` (a line written after the change it reports
    /// became visible to clients may come a moment after the test saw the change).
    pub fn logged_within(&self, needle: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(Instant::now() < deadline, "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("tcp://{}", self.addr)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The test harness shows a test's output only when it fails: then this log explains.
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- server log (last 200 lines) ---\n{}",
            lines[lines.len().saturating_sub(200)..].join("\n")
        );
    }
}

fn logged_addr(log: &str, what: &str) -> Option<String> {
    let rest = log.split(what).nth(1)?;
    let rest = rest.split("addr=").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Tells apart the logs of servers started on one index.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed) << 20
}

/// Sends raw lines and reads one reply line per expected reply (or until the server closes).
pub fn raw(addr: &str, lines: &[&str], replies: usize) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for l in lines {
        // The server may close first (an oversized line, no common version): read what it sent.
        if s.write_all(l.as_bytes()).and_then(|_| s.write_all(b"\n")).is_err() {
            break;
        }
    }
    let mut r = BufReader::new(s);
    (0..replies)
        .map_while(|_| {
            let mut line = String::new();
            (r.read_line(&mut line).ok()? > 0).then_some(line)
        })
        .collect()
}

/// Sends requests on one connection and returns the replies, in order.
pub fn session(addr: &str, requests: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let lines: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    raw(addr, &lines, requests.len()).iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A JSON-RPC 2.0 request.
pub fn req(id: u32, method: &str, params: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The body and headers of `GET /metrics` at `addr`.
pub fn http_get(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One line from `s` within `wait`; None on a timeout or a closed connection.
pub fn read_line(s: &std::net::TcpStream, wait: Duration) -> Option<String> {
    use std::io::BufRead;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    match std::io::BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

/// One Electrum connection that keeps reading: replies by id, notifications kept as they come.
pub struct Conn {
    write: std::net::TcpStream,
    read: std::io::BufReader<std::net::TcpStream>,
    next_id: u32,
    partial: String,
    pub notifications: Vec<serde_json::Value>,
}

impl Conn {
    pub fn open(addr: &str) -> Conn {
        Conn::on(std::net::TcpStream::connect(addr).unwrap())
    }

    /// A connection from the local address `from` (e.g. 127.0.0.2: to the server another client
    /// address than 127.0.0.1's).
    pub fn open_from(addr: &str, from: &str) -> Conn {
        use socket2::{Domain, Socket, Type};
        let to: std::net::SocketAddr = addr.parse().unwrap();
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
        s.connect(&to.into()).unwrap();
        Conn::on(s.into())
    }

    fn on(s: std::net::TcpStream) -> Conn {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            write: s.try_clone().unwrap(),
            read: std::io::BufReader::new(s),
            next_id: 0,
            partial: String::new(),
            notifications: vec![],
        }
    }

    /// The next message; None if none came within the socket's timeout (a part of a line read
    /// by then is kept for the next call).
    fn line(&mut self) -> Option<serde_json::Value> {
        use std::io::BufRead;
        match self.read.read_line(&mut self.partial) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) if !self.partial.ends_with('\n') => panic!("the server closed the connection mid-line"),
            Ok(_) => Some(serde_json::from_str(&std::mem::take(&mut self.partial)).unwrap()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                None
            }
            Err(e) => panic!("reading from the server: {e}"),
        }
    }

    /// The whole reply (result or error) to one request; notifications met on the way are kept.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        self.next_id += 1;
        let id = self.next_id;
        // One write per request: a line written in two parts waits out Nagle and delayed ACKs.
        self.write.write_all(format!("{}\n", req(id, method, params.clone())).as_bytes()).unwrap();
        self.read.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        loop {
            let msg = self.line().unwrap_or_else(|| panic!("no reply to {method}{params} in 30 s"));
            if msg["id"] == serde_json::json!(id) {
                return msg;
            }
            assert!(msg.get("method").is_some(), "unexpected {msg}");
            self.notifications.push(msg);
        }
    }

    /// The result of a request that must succeed.
    pub fn result(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let r = self.call(method, params.clone());
        assert!(r.get("error").is_none_or(serde_json::Value::is_null), "{method}{params}: {r}");
        r["result"].clone()
    }

    /// Reads notifications for up to `wait`, until `done` holds over all those kept so far.
    pub fn wait_until(&mut self, wait: Duration, done: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        while !done(&self.notifications) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            self.read.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            if let Some(msg) = self.line() {
                assert!(msg.get("method").is_some(), "a reply nothing asked for: {msg}");
                self.notifications.push(msg);
            }
        }
        true
    }
}

/// A script's Electrum status from its history as (txid, height) pairs, confirmed entries in
/// chain order first, then unconfirmed ones (0 and -1) in any order: they are put in protocol
/// 1.6's order (0 before -1, then by txid as shown). None for an empty history.
pub fn status_of(history: &[(bitcoin::Txid, i64)]) -> Option<String> {
    use bitcoin::hashes::{sha256, Hash};
    let (confirmed, mut unconfirmed): (Vec<_>, Vec<_>) = history.iter().partition(|(_, h)| *h > 0);
    unconfirmed.sort_by_key(|(t, h)| (*h == -1, t.to_string()));
    let text: String = confirmed.iter().chain(unconfirmed.iter()).map(|(t, h)| format!("{t}:{h}:")).collect();
    (!text.is_empty()).then(|| hex::encode(sha256::Hash::hash(text.as_bytes()).to_byte_array()))
}

/// A header at `height` in the deserialized form of protocol 1.0–1.3, from the node.
pub fn header_dict(node: &Node, height: u64) -> Result<serde_json::Value> {
    use serde_json::json;
    let hash = node.call("getblockhash", json!([height]))?;
    let h = node.call("getblockheader", json!([hash]))?;
    Ok(json!({
        "block_height": height,
        "version": h["version"],
        "prev_block_hash": h.get("previousblockhash").cloned().unwrap_or(json!("00".repeat(32))),
        "merkle_root": h["merkleroot"],
        "timestamp": h["time"],
        "bits": u32::from_str_radix(h["bits"].as_str().unwrap(), 16)?,
        "nonce": h["nonce"],
    }))
}
