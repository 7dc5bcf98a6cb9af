//! More than one server on one index: two servers (each its own secondary directory, PROXY
//! protocol v2 on their TCP listeners) behind Debian's HAProxy, which checks their `/health`; a
//! client syncs histories through it while the server it is on is killed, reconnects and ends
//! with the node's answers; the dead server is taken out and, restarted, put back in (by the
//! `/health` check and by the alternative, a TCP check of `server.ping`). And
//! `--reuse-port`: two listeners on one port with it, not without.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use blkindex_server::{Config, Listeners};
use blkindex_testkit::chain::build_rich_chain;
use blkindex_testkit::expect::expected;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, Server};

/// Debian's haproxy (in /usr/sbin, which a user's PATH may lack).
fn haproxy_bin() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// A haproxy process in the foreground on config `dir/<name>.cfg` (written here), its log in
/// `dir/<name>.log`; killed on drop, so also when an assertion fails.
struct Running(Child);

impl Running {
    fn start(dir: &Path, name: &str, config: &str) -> Result<Running> {
        let file = dir.join(format!("{name}.cfg"));
        std::fs::write(&file, config)?;
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()
            .context("starting haproxy (scripts/install-deps.sh --tests installs it)")?;
        Ok(Running(child))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A haproxy process in the foreground, and its stats socket.
struct Haproxy {
    _process: Running,
    socket: PathBuf,
    pub addr: String,
}

impl Haproxy {
    /// Balances a frontend on a free loopback port over `servers` (name, Electrum address,
    /// metrics address), checking each one's `/health` every 100 ms; sticky by client address,
    /// sessions closed when their server is marked down (contrib/haproxy/haproxy.cfg's backend).
    fn start(dir: &Path, servers: &[(&str, &str, &str)]) -> Result<Haproxy> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let socket = dir.join("haproxy.sock");
        let mut config = format!(
            "global\n    stats socket {} level admin\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout check 500ms\n\
             frontend electrum\n    bind 127.0.0.1:{port}\n    default_backend blkindex\n\
             backend blkindex\n    balance leastconn\n    stick-table type ip size 1m expire 1h\n    stick on src\n    option redispatch\n    option httpchk GET /health\n    http-check expect status 200\n\
             \x20   default-server inter 100ms fall 2 rise 2 send-proxy-v2 on-marked-down shutdown-sessions\n",
            socket.display()
        );
        for (name, addr, metrics) in servers {
            let metrics_port = metrics.rsplit(':').next().unwrap();
            config += &format!("    server {name} {addr} check port {metrics_port}\n");
        }
        // contrib/haproxy/haproxy.cfg's alternative: server.ping on the Electrum port, checked
        // only (no frontend uses it).
        config += r#"backend ping
    option tcp-check
    tcp-check send "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"server.ping\",\"params\":[]}\n"
    tcp-check expect string result
    default-server inter 100ms fall 2 rise 2 send-proxy-v2 check-send-proxy
"#;
        for (name, addr, _) in servers {
            config += &format!("    server {name} {addr} check\n");
        }
        let process = Running::start(dir, "haproxy", &config)?;
        let h = Haproxy { _process: process, socket, addr: format!("127.0.0.1:{port}") };
        h.wait_for("the stats socket", |h| Ok(h.states().is_ok()))?;
        Ok(h)
    }

    /// `show stat`: each server's backend, name, status (UP, DOWN, …) and last check's status
    /// (L7OK for a passed HTTP check, L4CON for a refused connection, …).
    fn states(&self) -> Result<Vec<[String; 4]>> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)?;
        s.write_all(b"show stat\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let names: Vec<&str> =
            lines.next().context("no header")?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| names.iter().position(|n| *n == name).context("no such column");
        let cols = [col("pxname")?, col("svname")?, col("status")?, col("check_status")?];
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > cols[3] && !["FRONTEND", "BACKEND"].contains(&f[cols[1]]))
            .map(|f| cols.map(|c| f[c].to_string()))
            .collect())
    }

    /// Whether `server` is up in both backends (its last checks passed: `/health` and
    /// `server.ping`), down in both, or neither yet.
    fn state_of(&self, server: &str) -> Result<Option<bool>> {
        let states: Vec<_> = self.states()?.into_iter().filter(|s| s[1] == server).collect();
        anyhow::ensure!(states.len() == 2, "{server} is not in both backends");
        let up = |s: &[String; 4]| s[2] == "UP" && s[3].ends_with("OK");
        let down = |s: &[String; 4]| s[2] == "DOWN";
        Ok(if states.iter().all(up) {
            Some(true)
        } else if states.iter().all(down) {
            Some(false)
        } else {
            None
        })
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Haproxy) -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self).unwrap_or(false) {
            anyhow::ensure!(Instant::now() < deadline, "haproxy: no {what} in 10 s: {:?}", self.states());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// A line client that reports a closed connection as an error (the tests' `Conn` panics).
struct Line {
    s: BufReader<TcpStream>,
    id: u32,
}

impl Line {
    fn open(addr: &str) -> Result<Line> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut l = Line { s: BufReader::new(s), id: 0 };
        l.call("server.version", json!(["haproxy-test", "1.4"]))?;
        Ok(l)
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.id += 1;
        self.s.get_mut().write_all(format!("{}\n", req(self.id, method, params)).as_bytes())?;
        let mut line = String::new();
        anyhow::ensure!(self.s.read_line(&mut line)? > 0, "closed");
        let reply: Value = serde_json::from_str(&line)?;
        anyhow::ensure!(reply["id"] == json!(self.id), "not the reply: {reply}");
        reply.get("result").cloned().context("no result")
    }

    fn local_port(&self) -> u16 {
        self.s.get_ref().local_addr().unwrap().port()
    }
}

/// `GET path` at `addr`: the status code and body.
fn http(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

fn start_server(node: &Node, db: &Path, dir: &Path, name: &str, tcp: &str, metrics: &str) -> Result<Server> {
    let secondary = dir.join(format!("secondary-{name}"));
    let secondary = secondary.to_str().unwrap();
    let flags = [
        "--electrum-addr",
        tcp,
        "--metrics-addr",
        metrics,
        "--secondary-dir",
        secondary,
        "--proxy-protocol",
        "tcp",
    ];
    Server::start_with(node, db, &flags)
}

#[test]
fn two_servers_behind_haproxy_survive_one_killed() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    let mut servers = vec![];
    for name in ["a", "b"] {
        servers.push(Some(start_server(&node, &db, dir.path(), name, "127.0.0.1:0", "127.0.0.1:0")?));
    }
    let addrs: Vec<(String, String)> = servers
        .iter()
        .map(|s| (s.as_ref().unwrap().addr.clone(), s.as_ref().unwrap().addr_of("serving metrics")))
        .collect();
    // 503 ("node unknown") until the node first answers, then 200.
    for (_, metrics) in &addrs {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (code, body) = loop {
            let (code, body) = http(metrics, "/health")?;
            if code == 200 || Instant::now() > deadline {
                break (code, body);
            }
            assert!(body.starts_with("node unknown"), "{body}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("ok: caught up"), "{body}");
    }
    // Without the balancer's header, a PROXY listener takes nothing.
    let mut direct = TcpStream::connect(&addrs[0].0)?;
    direct.write_all(format!("{}\n", req(1, "server.ping", json!([]))).as_bytes())?;
    direct.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(direct.read(&mut [0; 64]).unwrap_or(0), 0, "answered without a PROXY header");

    let haproxy =
        Haproxy::start(dir.path(), &[("a", &addrs[0].0, &addrs[0].1), ("b", &addrs[1].0, &addrs[1].1)])?;
    haproxy.wait_for("both servers up", |h| {
        Ok(h.state_of("a")? == Some(true) && h.state_of("b")? == Some(true))
    })?;

    let want = expected(&node)?;
    let mut scripts: Vec<_> = want.history.iter().collect();
    scripts.sort();
    scripts.truncate(40);
    let mut client = Line::open(&haproxy.addr)?;
    let mut got = vec![];
    for (sh, _) in &scripts[..20] {
        got.push(client.call("blockchain.scripthash.get_history", json!([sh.to_string()]))?);
    }
    // Kill the server the client is on: the one that logged its address (from the PROXY
    // header; HAProxy's own connections come from other ports).
    let peer = format!("peer=127.0.0.1:{}", client.local_port());
    let on = (0..2)
        .find(|&i| servers[i].as_ref().unwrap().log().contains(&peer))
        .with_context(|| format!("no server logged {peer}"))?;
    let name = ["a", "b"][on];
    Command::new("kill").args(["-KILL", &servers[on].as_ref().unwrap().pid().to_string()]).status()?;
    drop(servers[on].take());
    let mut reconnects = 0;
    for (sh, _) in &scripts[20..] {
        let answer = loop {
            match client.call("blockchain.scripthash.get_history", json!([sh.to_string()])) {
                Ok(a) => break a,
                Err(_) => {
                    reconnects += 1;
                    anyhow::ensure!(reconnects < 50, "no server took the client back");
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(c) = Line::open(&haproxy.addr) {
                        client = c;
                    }
                }
            }
        };
        got.push(answer);
    }
    assert!(reconnects > 0, "the client's connection outlived its server");
    for ((sh, history), answer) in scripts.iter().zip(&got) {
        let answer: Vec<(String, u64)> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["tx_hash"].as_str().unwrap().to_string(), e["height"].as_u64().unwrap()))
            .collect();
        let history: Vec<(String, u64)> = history.iter().map(|(t, h)| (t.to_string(), *h as u64)).collect();
        assert_eq!(answer, history, "{sh}");
    }
    haproxy.wait_for("the killed server down", |h| Ok(h.state_of(name)? == Some(false)))?;
    // The survivor too saw the client's own address.
    let survivor = servers[1 - on].as_ref().unwrap();
    let peer = format!("peer=127.0.0.1:{}", client.local_port());
    assert!(survivor.log().contains(&peer), "no {peer} in the log of {}", ["a", "b"][1 - on]);

    // Restarted on its addresses, it is put back in.
    let (tcp, metrics) = &addrs[on];
    servers[on] = Some(start_server(&node, &db, dir.path(), name, tcp, metrics)?);
    haproxy.wait_for("the restarted server up", |h| Ok(h.state_of(name)? == Some(true)))?;
    Ok(())
}

#[test]
fn health_is_503_while_the_node_is_unreachable() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let (dir, _indexer) = indexed(&node)?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let flags = ["--daemon-rpc-addr", &closed, "--metrics-addr", "127.0.0.1:0"];
    let server = Server::start_with(&node, &dir.path().join("db"), &flags)?;
    let metrics = server.addr_of("serving metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http(&metrics, "/health")?;
        if code == 503 {
            assert!(body.starts_with("node down"), "{body}");
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "still {code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn reuse_port_lets_two_listeners_share_a_port() -> Result<()> {
    let config = |addr: &str, reuse: bool| {
        let mut args = vec!["blkindex-server", "--network", "regtest", "--datadir", "/nonexistent"];
        args.extend(["--db", "/nonexistent/db", "--electrum-addr", addr]);
        if reuse {
            args.push("--reuse-port");
        }
        Config::from_args(args)
    };
    let first = Listeners::bind(&config("127.0.0.1:0", true)?).await?;
    let addr = first.addrs()?[0].0.to_string();
    let second = Listeners::bind(&config(&addr, true)?).await?;
    assert_eq!(second.addrs()?[0].0.to_string(), addr);
    let refused =
        Listeners::bind(&config(&addr, false)?).await.err().context("bound without --reuse-port")?;
    assert!(format!("{refused:#}").contains("cannot listen on"), "{refused:#}");
    // Nor does one without it let others in.
    let alone = Listeners::bind(&config("127.0.0.1:0", false)?).await?;
    let addr = alone.addrs()?[0].0.to_string();
    assert!(Listeners::bind(&config(&addr, true)?).await.is_err());
    Ok(())
}

/// Network namespaces this test made (each a "host" joined to the root namespace by a veth
/// pair), deleted on drop, so also when the test fails: deleting a namespace deletes its end of
/// the pair, and with it the pair.
struct Hosts {
    names: Vec<String>,
}

/// One simulated host: its namespace, the root side of its link, its own address.
struct Host {
    ns: String,
    link: String,
    addr: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Hosts {
    /// Namespaces left by a run of this test that was killed (their pid gone) are deleted first.
    fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name.strip_prefix("blkidx-").and_then(|r| r.split('-').next()) else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }

    /// `n` hosts on 10.250.S.0/30, 10.250.S.4/30, … (root side .1, the host .2 of each), with a
    /// third octet S no interface here uses yet.
    fn create(n: usize) -> Result<(Hosts, Vec<Host>)> {
        Self::remove_stale();
        let pid = std::process::id();
        let used = String::from_utf8(Command::new("ip").args(["-o", "addr"]).output()?.stdout)?;
        let subnet = (0..256u32)
            .map(|i| (pid + i) % 256)
            .find(|s| !used.contains(&format!("10.250.{s}.")))
            .context("no free 10.250.x.0/24 here")?;
        let mut hosts = Hosts { names: vec![] };
        let mut made = vec![];
        for k in 0..n as u32 {
            let ns = format!("blkidx-{pid}-{k}");
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            let link = format!("bkx{}h{k}", pid % 100_000);
            let (gw, addr) =
                (format!("10.250.{subnet}.{}", 4 * k + 1), format!("10.250.{subnet}.{}", 4 * k + 2));
            ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["addr", "add", &format!("{gw}/30"), "dev", &link])?;
            ip(&["link", "set", &link, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/30"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            made.push(Host { ns, link, addr });
        }
        Ok((hosts, made))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleaning up: {e:#}");
            }
        }
    }
}

/// Two hosts, each its own network namespace and address, each a `--no-node` server (PROXY v2)
/// on its own index: host 0 the primary that an indexer follows, host 1 a replica (a checkpoint
/// of the running indexer, copied, with its own indexer; both indexers on this machine's one
/// node, whose blk files both servers read). HAProxy in the root namespace balances across them.
/// A client syncs 40 histories through it; halfway, the link of the host it is on is cut (its
/// veth set down, nothing killed); HAProxy marks the host down and closes its sessions, the
/// client reconnects to the other host and ends with the node's answers and the same tip.
/// Needs root and iproute2; without network namespaces it fails saying so, unless
/// BLKINDEX_NETNS_TEST=skip, which makes it say it skipped.
#[test]
fn two_hosts_in_network_namespaces_behind_haproxy_survive_a_cut_link() -> Result<()> {
    let (_hosts, hosts) = match Hosts::create(2) {
        Ok(h) => h,
        Err(e) if std::env::var("BLKINDEX_NETNS_TEST").as_deref() == Ok("skip") => {
            eprintln!("SKIPPED: no network namespaces here ({e:#}); BLKINDEX_NETNS_TEST=skip");
            return Ok(());
        }
        Err(e) => anyhow::bail!(
            "this test needs root and network namespaces (ip netns add, veth pairs), which failed here: {e:#}. \
             Run it as root with iproute2 (scripts/install-deps.sh --tests), or set BLKINDEX_NETNS_TEST=skip \
             where namespaces cannot be made"
        ),
    };
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    // Host 1's index: a checkpoint of the running indexer's, copied, with an indexer of its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.join("checkpoint.sock").exists() {
        anyhow::ensure!(Instant::now() < deadline, "the indexer never listened for checkpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cp = dir.path().join("checkpoint");
    let out = blkindex_testkit::verify::indexer_command(&crate::common::indexer_bin(), &node, &db)
        .arg("checkpoint")
        .arg(&cp)
        .output()?;
    anyhow::ensure!(out.status.success(), "checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    let replica = dir.path().join("replica");
    anyhow::ensure!(Command::new("cp").arg("-a").arg(&cp).arg(&replica).status()?.success());
    let mut replica_indexer =
        blkindex_testkit::verify::Indexer::follow(&crate::common::indexer_bin(), &node, &replica, &[])?;
    // Its block places checked (a server refuses the copy before that), and at the tip.
    replica_indexer.wait_logged("block places now this node's")?;
    replica_indexer.wait_synced(&node, &replica)?;

    let mut servers = vec![];
    for (k, (host, index)) in hosts.iter().zip([&db, &replica]).enumerate() {
        let secondary = dir.path().join(format!("secondary-host{k}"));
        let flags = [
            "--electrum-addr",
            &format!("{}:50001", host.addr),
            "--metrics-addr",
            &format!("{}:9100", host.addr),
            "--secondary-dir",
            secondary.to_str().unwrap(),
            "--proxy-protocol",
            "tcp",
        ];
        servers.push(Server::start_no_node_in(&host.ns, &node, index, &flags)?);
    }
    let backends: Vec<(String, String, String)> = hosts
        .iter()
        .enumerate()
        .map(|(k, h)| (format!("host{k}"), format!("{}:50001", h.addr), format!("{}:9100", h.addr)))
        .collect();
    let refs: Vec<(&str, &str, &str)> = backends.iter().map(|(a, b, c)| (&a[..], &b[..], &c[..])).collect();
    let haproxy = Haproxy::start(dir.path(), &refs)?;
    haproxy.wait_for("both hosts up", |h| {
        Ok(h.state_of("host0")? == Some(true) && h.state_of("host1")? == Some(true))
    })?;

    let want = expected(&node)?;
    let mut scripts: Vec<_> = want.history.iter().collect();
    scripts.sort();
    scripts.truncate(40);
    let mut client = Line::open(&haproxy.addr)?;
    let tip = client.call("blockchain.headers.subscribe", json!([]))?;
    let mut got = vec![];
    for (sh, _) in &scripts[..20] {
        got.push(client.call("blockchain.scripthash.get_history", json!([sh.to_string()]))?);
    }
    let peer = format!("peer=127.0.0.1:{}", client.local_port());
    let on = (0..2)
        .find(|&k| servers[k].log().contains(&peer))
        .with_context(|| format!("no host logged {peer}"))?;
    // The host's link is cut: its server runs on, unreachable.
    ip(&["link", "set", &hosts[on].link, "down"])?;
    let mut reconnects = 0;
    for (sh, _) in &scripts[20..] {
        let answer = loop {
            match client.call("blockchain.scripthash.get_history", json!([sh.to_string()])) {
                Ok(a) => break a,
                Err(_) => {
                    reconnects += 1;
                    anyhow::ensure!(reconnects < 50, "no host took the client back");
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(mut c) = Line::open(&haproxy.addr) {
                        // The same world on the other host: its tip is the one seen before.
                        assert_eq!(c.call("blockchain.headers.subscribe", json!([]))?, tip);
                        client = c;
                    }
                }
            }
        };
        got.push(answer);
    }
    assert!(reconnects > 0, "the client's connection outlived its host's link");
    let other = format!("peer=127.0.0.1:{}", client.local_port());
    assert!(servers[1 - on].log().contains(&other), "the client did not end on the other host");
    for ((sh, history), answer) in scripts.iter().zip(&got) {
        let answer: Vec<(String, u64)> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["tx_hash"].as_str().unwrap().to_string(), e["height"].as_u64().unwrap()))
            .collect();
        let history: Vec<(String, u64)> = history.iter().map(|(t, h)| (t.to_string(), *h as u64)).collect();
        assert_eq!(answer, history, "{sh}");
    }
    let name = format!("host{on}");
    haproxy.wait_for("the cut host down", |h| Ok(h.state_of(&name)? == Some(false)))?;
    // The link back: the host is put back in.
    ip(&["link", "set", &hosts[on].link, "up"])?;
    haproxy.wait_for("the host back up", |h| Ok(h.state_of(&name)? == Some(true)))?;
    drop(servers);
    Ok(())
}

/// PROXY v2 before TLS: HAProxy passes TLS through (TCP mode, `send-proxy-v2`) to a TLS listener
/// with `--proxy-protocol tls`; the server reads the header, then the handshake, and logs the
/// client's own address. Without the header the same listener takes nothing.
#[test]
fn proxy_v2_before_tls_passed_through_haproxy() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    blkindex_testkit::chain::ChainBuilder::new(&node)?.mine(3)?;
    let (dir, _indexer) = indexed(&node)?;
    let client_tls = crate::transports::certificate(dir.path())?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let flags = [
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--proxy-protocol",
        "tls",
    ];
    let server = Server::start_logged(&node, &dir.path().join("db"), &flags, "info,blkindex_server=debug")?;
    let tls_addr = server.addr_of("serving Electrum over TLS");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
         frontend electrum_tls\n    bind 127.0.0.1:{port}\n    default_backend blkindex_tls\n\
         backend blkindex_tls\n    server s1 {tls_addr} send-proxy-v2\n"
    );
    let _haproxy = Running::start(dir.path(), "haproxy-tls", &config)?;
    let front = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match TcpStream::connect(&front) {
            Ok(s) => break s,
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "haproxy did not listen: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let local_port = tcp.local_addr()?.port();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
    let conn = tokio_rustls::rustls::ClientConnection::new(client_tls.clone(), name.clone())?;
    let mut tls = tokio_rustls::rustls::StreamOwned::new(conn, tcp);
    writeln!(tls, "{}", req(1, "server.version", json!(["t", "1.4"])))?;
    writeln!(tls, "{}", req(2, "blockchain.headers.subscribe", json!([])))?;
    let mut lines = BufReader::new(tls).lines();
    let _version = lines.next().context("no version reply")??;
    let tip: Value = serde_json::from_str(&lines.next().context("no tip")??)?;
    assert_eq!(tip["result"]["height"].as_u64(), Some(node.height()?), "{tip}");
    let peer = format!("peer=127.0.0.1:{local_port}");
    assert!(server.log().contains(&peer), "the TLS listener did not take the client's address {peer}");
    // Straight to the listener, no header: the handshake gets nowhere.
    let direct = TcpStream::connect(&tls_addr)?;
    direct.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = tokio_rustls::rustls::ClientConnection::new(client_tls, name)?;
    let mut tls = tokio_rustls::rustls::StreamOwned::new(conn, direct);
    let refused = writeln!(tls, "{}", req(1, "server.ping", json!([]))).and_then(|_| tls.flush()).is_err()
        || BufReader::new(tls).lines().next().is_none_or(|l| l.is_err());
    assert!(refused, "a TLS client without a PROXY header was served");
    Ok(())
}

/// `/health` holds the server to `--health-max-lag-secs`: a server whose last catch-up with the
/// indexer is older than that answers 503 with the reason, and 200 again once it catches up.
/// Catch-ups 3 s apart (`--catch-up-ms`, no node so no ZMQ wake-ups) against a 1 s bound show both.
#[test]
fn health_is_503_once_the_last_catch_up_is_older_than_the_lag_bound() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    blkindex_testkit::chain::ChainBuilder::new(&node)?.mine(3)?;
    let (dir, _indexer) = indexed(&node)?;
    let flags = ["--metrics-addr", "127.0.0.1:0", "--catch-up-ms", "3000", "--health-max-lag-secs", "1"];
    let server = Server::start_no_node(&node, &dir.path().join("db"), &flags)?;
    let metrics = server.addr_of("serving metrics");
    let (mut ok, mut behind, mut ok_after) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(12);
    while ok_after.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "seen: {ok:?} then {behind:?}, never 200 again");
        let (code, body) = http(&metrics, "/health")?;
        match (code, behind.is_some()) {
            (200, false) => ok = Some(body),
            (503, _) => behind = Some(body),
            (200, true) => ok_after = Some(body),
            _ => anyhow::bail!("/health {code}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok.is_some_and(|b| b.starts_with("ok: caught up")), "no 200 before the lag");
    let behind = behind.unwrap();
    assert!(
        behind.starts_with("behind the index: not caught up for ") && behind.contains("(at most 1 s)"),
        "{behind}"
    );
    assert!(ok_after.unwrap().starts_with("ok: caught up"));
    Ok(())
}

/// A server refuses a checkpoint no indexer has started on (its block places are the source
/// node's), saying what to do; once an indexer has started on the copy, it serves it.
#[test]
fn a_server_refuses_a_checkpoint_until_an_indexer_has_started_on_it() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    blkindex_testkit::chain::ChainBuilder::new(&node)?.mine(3)?;
    let (dir, indexer) = indexed(&node)?;
    drop(indexer);
    let db = dir.path().join("db");
    let cp = dir.path().join("checkpoint");
    let out = blkindex_testkit::verify::indexer_command(&crate::common::indexer_bin(), &node, &db)
        .arg("checkpoint")
        .arg(&cp)
        .output()?;
    anyhow::ensure!(out.status.success(), "checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    let err = Server::start(&node, &cp).err().context("a server served a fresh checkpoint")?;
    assert!(format!("{err:#}").contains("is a checkpoint no indexer has started on yet"), "{err:#}");
    let mut f = blkindex_testkit::verify::Indexer::follow(&crate::common::indexer_bin(), &node, &cp, &[])?;
    f.wait_logged("block places now this node's")?;
    let server = Server::start(&node, &cp)?;
    let tip = crate::common::session(&server.addr, &[req(1, "blockchain.headers.subscribe", json!([]))]);
    assert_eq!(tip[0]["result"]["height"].as_u64(), Some(node.height()?));
    Ok(())
}
