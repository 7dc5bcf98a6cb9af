//! The admin interface against a real node, indexer and server: `getinfo` and `sessions` show
//! what the clients did, `disconnect` and `ban` close them, bans refuse new connections and
//! outlive a restart, `loglevel` changes what is logged at once, and `blkindex-admin` drives it
//! all. Without `--admin-addr` there is no admin listener, and a non-loopback one is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, raw, req, Server};

fn indexed_node() -> Result<(Node, tempfile::TempDir, Indexer)> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(101)?;
    let (dir, indexer) = indexed(&node)?;
    Ok((node, dir, indexer))
}

/// A client connection that stays open between requests.
struct Conn {
    reader: BufReader<TcpStream>,
    next_id: u32,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { reader: BufReader::new(s), next_id: 1 }
    }

    fn local_addr(&self) -> String {
        self.reader.get_ref().local_addr().unwrap().to_string()
    }

    /// The reply to one request (notifications in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        writeln!(self.reader.get_mut(), "{}", req(id, method, params)).unwrap();
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "closed before replying to {method}");
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["id"] == id {
                return msg;
            }
        }
    }

    /// Whether the server closes the connection within the read timeout.
    fn closed(&mut self) -> bool {
        let mut line = String::new();
        loop {
            match self.reader.read_line(&mut line) {
                Ok(0) => return true,
                Ok(_) => line.clear(), // a notification or an error line before the close
                Err(e) => {
                    return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                }
            }
        }
    }
}

/// One admin request on its own connection; the whole reply.
fn admin(addr: &str, method: &str, params: Value) -> Value {
    let reply = raw(addr, &[&req(7, method, params).to_string()], 1);
    assert_eq!(reply.len(), 1, "no reply to admin {method}");
    serde_json::from_str(&reply[0]).unwrap()
}

fn admin_ok(addr: &str, method: &str, params: Value) -> Value {
    let reply = admin(addr, method, params);
    assert!(reply["error"].is_null(), "{method}: {reply}");
    reply["result"].clone()
}

fn admin_error(addr: &str, method: &str, params: Value) -> (i64, String) {
    let reply = admin(addr, method, params);
    let e = &reply["error"];
    (e["code"].as_i64().unwrap(), e["message"].as_str().unwrap().to_string())
}

/// Runs `blkindex-admin --admin-addr ADDR ARGS...`: (success, stdout, stderr).
fn cli(addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blkindex-admin"))
        .args(["--admin-addr", addr])
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn cli_ok(addr: &str, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = cli(addr, args);
    assert!(ok, "blkindex-admin {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// Waits up to 10 s for `f` to hold.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a new connection to `addr` is turned away as banned: one error line, then closed,
/// and no answer to the request.
fn refused(addr: &str) -> bool {
    let version = req(1, "server.version", json!(["t", "1.4"])).to_string();
    let lines = raw(addr, &[&version], 2);
    lines.len() == 1 && lines[0].contains("your address is banned")
}

/// TCP sockets process `pid` listens on (from /proc: its socket inodes in LISTEN state).
fn listening_sockets(pid: u32) -> usize {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                listening.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| listening.contains(target.to_string_lossy().as_ref()))
        .count()
}

fn script_hash(n: u8) -> String {
    format!("{n:064x}")
}

#[test]
fn getinfo_sessions_disconnect_and_loglevel() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let db = dir.path().join("db");
    let socket = dir.path().join("admin.sock");
    let flags =
        ["--admin-addr", "127.0.0.1:0", "--admin-socket", socket.to_str().unwrap(), "--log-stats-secs", "1"];
    let server = Server::start_logged(&node, &db, &flags, "info")?;
    let admin_addr = server.addr_of("serving the admin interface over TCP");

    let mut one = Conn::open(&server.addr);
    assert_eq!(one.call("server.version", json!(["wallet-one", "1.6"]))["result"][1], "1.6");
    for n in [1, 2] {
        assert!(one.call("blockchain.scripthash.subscribe", json!([script_hash(n)]))["error"].is_null());
    }
    assert!(one.call("blockchain.headers.subscribe", json!([]))["error"].is_null());
    let mut two = Conn::open(&server.addr);
    assert_eq!(two.call("server.version", json!(["wallet-two", ["1.4", "1.4"]]))["result"][1], "1.4");
    assert!(two.call("blockchain.scripthash.subscribe", json!([script_hash(1)]))["error"].is_null());

    let info = admin_ok(&admin_addr, "getinfo", json!([]));
    assert_eq!(info["tip"]["height"], node.height()?);
    assert_eq!(info["tip"]["hash"], node.best_hash()?.to_string());
    assert_eq!(info["sessions"], 2);
    assert_eq!(info["requests"], 6);
    assert_eq!(info["network"], "regtest");
    assert!(info["version"].as_str().unwrap().starts_with("blkindex "));
    assert!(info["mempool_txs"].is_u64() && info["requests_per_sec"].is_number());
    assert_eq!(info["node"], "up", "the mempool task reads the node");
    assert!(info["script_cache"]["capacity_bytes"].as_u64().unwrap() > 0);

    let sessions = admin_ok(&admin_addr, "sessions", json!([]));
    let by_client = |name: &str| {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no session of {name}: {sessions}"))
    };
    let (s1, s2) = (by_client("wallet-one"), by_client("wallet-two"));
    assert_eq!(sessions.as_array().unwrap().len(), 2);
    assert_eq!(s1["protocol"], "1.6");
    assert_eq!(s1["subscriptions"], json!({"scripts": 2, "outpoints": 0, "silent_payments": 0}));
    assert_eq!(s1["requests"], 4);
    assert_eq!(s1["transport"], "tcp");
    assert_eq!(s1["peer"], one.local_addr());
    assert!(s1["bytes_in"].as_u64().unwrap() > 100 && s1["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(s2["protocol"], "1.4");
    assert_eq!(s2["subscriptions"], json!({"scripts": 1, "outpoints": 0, "silent_payments": 0}));
    assert_eq!(s2["requests"], 2);

    // By id: that session is closed, the other one still served.
    let id = s2["id"].as_u64().unwrap();
    assert_eq!(admin_ok(&admin_addr, "disconnect", json!([id])), json!({"disconnected": [id]}));
    assert!(two.closed());
    assert!(one.call("server.ping", json!([]))["error"].is_null());
    eventually("one session left", || admin_ok(&admin_addr, "getinfo", json!([]))["sessions"] == 1);
    // By client address.
    let closed = admin_ok(&admin_addr, "disconnect", json!([one.local_addr()]));
    assert_eq!(closed["disconnected"], json!([s1["id"]]));
    assert!(one.closed());
    assert_eq!(admin_error(&admin_addr, "disconnect", json!([id])).0, -32000);

    // Errors are JSON-RPC errors, and a long line is refused before it is read whole.
    assert_eq!(admin_error(&admin_addr, "shutdown", json!([])).0, -32601);
    assert_eq!(admin_error(&admin_addr, "ban", json!([])).0, -32602);
    assert_eq!(admin_error(&admin_addr, "ban", json!(["1.2.3.4/33"])).0, -32602);
    assert_eq!(admin_error(&admin_addr, "loglevel", json!(["blkindex_server=loud"])).0, -32602);
    let reply = raw(&admin_addr, &["{not json"], 1);
    assert!(reply[0].contains("-32700"), "{reply:?}");
    // An HTTP request, as a web page can make a browser send to a loopback port: the connection
    // ends at its first line, so a JSON body behind the headers is never run.
    let smuggled = req(1, "ban", json!(["0.0.0.0/0"])).to_string();
    let reply = raw(&admin_addr, &["POST / HTTP/1.1", "Host: 127.0.0.1", "", &smuggled], 2);
    assert_eq!(reply.len(), 1, "read past a line that is not JSON: {reply:?}");
    assert_eq!(admin_ok(&admin_addr, "banlist", json!([])), json!([]), "the smuggled ban ran");
    let long = format!("{{\"method\":\"getinfo\",\"params\":[\"{}\"]}}", "x".repeat(70_000));
    let reply = raw(&admin_addr, &[&long, &req(1, "getinfo", json!([])).to_string()], 2);
    assert_eq!(reply.len(), 1, "answered after a long line: {reply:?}");
    assert!(reply[0].contains("-32600") && reply[0].contains("longer than"), "{reply:?}");

    // At info, no line per connection or request; after `loglevel`, requests are logged.
    let mut three = Conn::open(&server.addr);
    assert!(three.call("server.banner", json!([]))["error"].is_null());
    let log = server.log();
    assert!(!log.contains("session opened") && !log.contains("session closed"), "{log}");
    assert!(!log.contains(r#"method="server.banner""#), "{log}");
    assert_eq!(
        cli_ok(&admin_addr, &["loglevel", "info,blkindex_server=debug"])["filter"],
        "info,blkindex_server=debug"
    );
    assert!(three.call("server.banner", json!([]))["error"].is_null());
    eventually("a debug line for the request", || server.log().contains(r#"request method="server.banner""#));
    drop(three);
    eventually("the session's summary", || {
        server.log().lines().any(|l| l.contains("session closed") && l.contains("requests=2"))
    });
    // The periodic status line.
    let height = format!("height={}", node.height()?);
    eventually("a status line", || {
        server.log().lines().any(|l| l.contains(" status sessions=") && l.contains(&height))
    });

    // The CLI prints the result, or fails with the server's message; over TCP or the socket,
    // which only the server's user may open.
    let info = cli_ok(&admin_addr, &["getinfo"]);
    assert_eq!(info["tip"]["height"], node.height()?);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket)?.permissions().mode() & 0o777, 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_blkindex-admin"))
        .arg("--admin-socket")
        .arg(&socket)
        .arg("sessions")
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?, json!([]));
    let (ok, _, stderr) = cli(&admin_addr, &["disconnect", "424242"]);
    assert!(!ok && stderr.contains("no open session matches"), "{stderr}");
    Ok(())
}

#[test]
fn bans_refuse_drop_persist_and_lift() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let db = dir.path().join("db");
    let with_admin = ["--admin-addr", "127.0.0.1:0"];
    let mut server =
        Server::start_with(&node, &db, &[&with_admin[..], &["--ws-addr", "127.0.0.1:0"]].concat())?;
    let admin_addr = server.addr_of("serving the admin interface over TCP");
    let mut live = Conn::open(&server.addr);
    assert!(live.call("server.version", json!(["victim", "1.4"]))["error"].is_null());
    // Admitted before the ban, its WebSocket handshake done after it.
    let handshaking = TcpStream::connect(server.addr_of("serving Electrum over WS"))?;

    // Loopback is all a test has: banning it drops the live session and refuses new ones (the
    // admin interface is not an Electrum listener and stays reachable).
    let banned = cli_ok(&admin_addr, &["ban", "127.0.0.1/32"]);
    assert_eq!(banned["banned"], "127.0.0.1/32");
    assert_eq!(banned["disconnected"].as_array().unwrap().len(), 1);
    assert!(live.closed());
    assert!(refused(&server.addr));
    let (mut ws, _) = tungstenite::client("ws://localhost/", handshaking)?;
    ws.send(Message::text(req(1, "server.version", json!(["late", "1.4"])).to_string()))?;
    assert!(matches!(ws.read()?, Message::Text(t) if t.contains("1.4")));
    // Closed by the ban's second sweep, once every handshake under way at the ban has ended.
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(30)))?;
    let closed = loop {
        match ws.read() {
            Ok(_) => continue, // the close frame
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    assert!(closed, "the late session was not closed");
    assert_eq!(cli_ok(&admin_addr, &["ban", "::1"])["banned"], "::1/128");
    assert_eq!(admin_ok(&admin_addr, "ban", json!(["10.1.2.3/8"]))["banned"], "10.0.0.0/8");
    assert_eq!(admin_ok(&admin_addr, "ban", json!(["10.0.0.0/8"]))["new"], false);
    let list = json!(["127.0.0.1/32", "::1/128", "10.0.0.0/8"]);
    assert_eq!(cli_ok(&admin_addr, &["banlist"]), list);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(db.with_extension("server").join("banned.json"))?)?;
    assert_eq!(file, list);
    let info = admin_ok(&admin_addr, "getinfo", json!([]));
    assert_eq!((info["sessions"].as_u64(), info["banned"].as_u64()), (Some(0), Some(3)));

    // Restarted without --admin-addr: the bans hold, and there is no admin listener (only the
    // Electrum one).
    server.terminate()?;
    drop(server);
    let mut server = Server::start(&node, &db)?;
    assert!(refused(&server.addr));
    assert_eq!(listening_sockets(server.pid()), 1);
    assert!(!server.log().contains("serving the admin interface"), "{}", server.log());
    server.terminate()?;
    drop(server);

    let server = Server::start_with(&node, &db, &with_admin)?;
    let admin_addr = server.addr_of("serving the admin interface over TCP");
    assert_eq!(listening_sockets(server.pid()), 2);
    assert_eq!(admin_ok(&admin_addr, "banlist", json!([])), list);
    assert!(refused(&server.addr));
    assert_eq!(cli_ok(&admin_addr, &["unban", "127.0.0.1"])["unbanned"], "127.0.0.1/32");
    let (ok, _, stderr) = cli(&admin_addr, &["unban", "127.0.0.1/32"]);
    assert!(!ok && stderr.contains("is not banned"), "{stderr}");
    let mut back = Conn::open(&server.addr);
    assert_eq!(back.call("server.version", json!(["back", "1.4"]))["result"][1], "1.4");
    assert_eq!(admin_ok(&admin_addr, "banlist", json!([])), json!(["::1/128", "10.0.0.0/8"]));
    Ok(())
}

#[test]
fn a_non_loopback_admin_address_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:4000"] {
        let out = Command::new(env!("CARGO_BIN_EXE_blkindex-server"))
            .args(["--network", "regtest", "--datadir"])
            .arg(dir.path())
            .arg("--db")
            .arg(dir.path().join("db"))
            .args(["--admin-addr", addr])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{addr} was taken");
        assert!(stderr.contains("loopback"), "{addr}: {stderr}");
    }
    Ok(())
}
