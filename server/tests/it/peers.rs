//! Peer discovery on loopback, one real regtest node and indexer, several servers on its index:
//! servers seeded with one peer find each other through it and forget the one that stops; a
//! server without discovery lists its `--peer` entries only; an announced server is listed only
//! if it serves our chain and the announcing client is its host.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, session, Server};

fn indexed_node() -> Result<(Node, tempfile::TempDir, Indexer)> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(101)?;
    let (dir, indexer) = indexed(&node)?;
    Ok((node, dir, indexer))
}

/// A server with discovery on, checking its peers every second, with its own secondary dir.
fn discovering(node: &Node, dir: &Path, name: &str, seeds: &[&Server]) -> Result<Server> {
    let secondary = dir.join(name);
    let mut args = vec![
        "--peer-discovery".to_string(),
        "--peer-check-secs".into(),
        "1".into(),
        "--secondary-dir".into(),
        secondary.to_str().unwrap().into(),
    ];
    for s in seeds {
        args.extend(["--peer".into(), format!("127.0.0.1 t{}", port(&s.addr))]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(node, &dir.join("db"), &args)
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn call(addr: &str, method: &str, params: Value) -> Value {
    let reply = session(addr, &[req(1, method, params)]).remove(0);
    assert!(reply["error"].is_null(), "{method}: {reply}");
    reply["result"].clone()
}

/// The TCP ports of the peers `addr` lists (entries checked for the protocol's shape).
fn listed(addr: &str) -> Vec<u16> {
    let list = call(addr, "server.peers.subscribe", json!([]));
    let mut ports: Vec<u16> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let features = e[2].as_array().unwrap_or_else(|| panic!("entry {e}"));
            assert!(e[0].is_string() && e[1].is_string(), "entry {e}");
            assert!(features.iter().any(|f| f.as_str().unwrap().starts_with('v')), "entry {e}");
            let t = features.iter().find_map(|f| f.as_str().unwrap().strip_prefix('t')).unwrap();
            t.parse().unwrap()
        })
        .collect();
    ports.sort();
    ports
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn servers_find_each_other_through_a_seed_and_forget_the_one_that_stops() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let a = discovering(&node, dir.path(), "a", &[])?;
    let mut b = discovering(&node, dir.path(), "b", &[&a])?;
    let c = discovering(&node, dir.path(), "c", &[&a])?;
    let (pa, pb, pc) = (port(&a.addr), port(&b.addr), port(&c.addr));

    // B and C announce themselves to their seed A; C learns B from A's list.
    let mut both = vec![pb, pc];
    both.sort();
    wait_until("A lists B and C", Duration::from_secs(20), || listed(&a.addr) == both);
    wait_until("C lists B (learned via A)", Duration::from_secs(20), || listed(&c.addr).contains(&pb));
    assert!(!listed(&c.addr).contains(&pc), "C lists itself");
    let entry = call(&a.addr, "server.peers.subscribe", json!([]))
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[2].as_array().unwrap().contains(&json!(format!("t{pb}"))))
        .cloned()
        .unwrap();
    assert_eq!(entry, json!(["127.0.0.1", "127.0.0.1", ["v1.7", format!("t{pb}")]]));
    assert!(!listed(&a.addr).contains(&pa), "A lists itself");

    // B stops answering: A's checks of it fail and A forgets it; C stays.
    b.terminate()?;
    wait_until("A forgets B", Duration::from_secs(20), || listed(&a.addr) == [pc]);
    assert!(a.log().contains("peer forgotten"), "{}", a.log());
    wait_until("C forgets B", Duration::from_secs(20), || !listed(&c.addr).contains(&pb));

    // Without discovery: the configured entries only, and announcements are not taken.
    let secondary = dir.path().join("d");
    let d = Server::start_with(
        &node,
        &dir.path().join("db"),
        &["--peer", "x.example t50001 s50002", "--secondary-dir", secondary.to_str().unwrap()],
    )?;
    let c_features = call(&c.addr, "server.features", json!([]));
    assert_eq!(call(&d.addr, "server.add_peer", json!([c_features])), json!(false));
    let list = call(&d.addr, "server.peers.subscribe", json!([]));
    assert_eq!(list, json!([["x.example", "x.example", ["t50001", "s50002"]]]));
    // A still takes C's announcement (it is listed already).
    assert_eq!(call(&a.addr, "server.add_peer", json!([c_features])), json!(true));
    Ok(())
}

/// A fake Electrum server on `ip` that serves `genesis`: answers `server.version`,
/// `server.features` (counted), `server.peers.subscribe` (empty) and `server.add_peer`.
struct Fake {
    addr: SocketAddr,
    features_asked: Arc<AtomicUsize>,
}

impl Fake {
    fn start(ip: &str, genesis: &str) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let features = json!({
            "genesis_hash": genesis,
            "hosts": {ip: {"tcp_port": addr.port()}},
            "protocol_min": "1.4",
            "protocol_max": "1.4.2",
            "server_version": "fake 0.1",
            "hash_function": "sha256",
            "pruning": null,
        });
        let features_asked = Arc::new(AtomicUsize::new(0));
        let asked = features_asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (features, asked) = (features.clone(), asked.clone());
                std::thread::spawn(move || -> Option<()> {
                    let mut w = stream.try_clone().ok()?;
                    for line in BufReader::new(stream).lines() {
                        let r: Value = serde_json::from_str(&line.ok()?).ok()?;
                        let result = match r["method"].as_str()? {
                            "server.version" => json!(["fake 0.1", "1.4.2"]),
                            "server.features" => {
                                asked.fetch_add(1, Ordering::SeqCst);
                                features.clone()
                            }
                            "server.peers.subscribe" => json!([]),
                            "server.add_peer" => json!(true),
                            _ => Value::Null,
                        };
                        let reply = json!({"jsonrpc": "2.0", "id": r["id"], "result": result});
                        writeln!(w, "{reply}").ok()?;
                    }
                    Some(())
                });
            }
        });
        Ok(Fake { addr, features_asked })
    }

    /// Its announcement, claiming our genesis (what it serves is found by connecting to it).
    fn announcement(&self, genesis: &str) -> Value {
        json!({"genesis_hash": genesis, "hosts": {self.addr.ip().to_string(): {"tcp_port": self.addr.port()}},
            "protocol_min": "1.4", "protocol_max": "1.4.2"})
    }
}

/// `server.add_peer(features)` sent from a client socket bound to `from`.
fn add_peer_from(from: &str, server: &str, features: &Value) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse()?)?;
        anyhow::Ok(socket.connect(server.parse()?).await?.into_std()?)
    })?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w: &TcpStream = &stream;
    writeln!(w, "{}", req(1, "server.add_peer", json!([features])))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line)?;
    Ok(reply["result"].clone())
}

#[test]
fn announced_servers_of_another_chain_or_another_address_are_refused() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let a = discovering(&node, dir.path(), "a", &[])?;
    let genesis = call(&a.addr, "server.features", json!([]))["genesis_hash"].as_str().unwrap().to_string();
    let ours = Fake::start("127.0.0.1", &genesis)?;
    let other = Fake::start("127.0.0.1", &"11".repeat(32))?;
    let elsewhere = Fake::start("127.0.0.2", &genesis)?;

    // An announcement that names another genesis is refused at once.
    let mut wrong = other.announcement(&genesis);
    wrong["genesis_hash"] = json!("11".repeat(32));
    assert_eq!(call(&a.addr, "server.add_peer", json!([wrong])), json!(false));

    // Both claim our chain; only the one that serves it, asked over its own port, is listed.
    assert_eq!(add_peer_from("127.0.0.1", &a.addr, &ours.announcement(&genesis))?, json!(true));
    assert_eq!(add_peer_from("127.0.0.1", &a.addr, &other.announcement(&genesis))?, json!(true));
    wait_until("A lists the fake of our chain", Duration::from_secs(15), || {
        listed(&a.addr) == [ours.addr.port()]
    });
    wait_until("A asks the other chain's fake for its features", Duration::from_secs(15), || {
        other.features_asked.load(Ordering::SeqCst) > 0
    });
    wait_until("A refuses the other chain's fake", Duration::from_secs(15), || {
        a.log().contains("another chain")
    });
    assert_eq!(listed(&a.addr), [ours.addr.port()]);
    assert!(ours.features_asked.load(Ordering::SeqCst) > 0);

    // A host that is not the announcing client's address is never contacted...
    assert_eq!(add_peer_from("127.0.0.1", &a.addr, &elsewhere.announcement(&genesis))?, json!(true));
    wait_until("A refuses the announcement for 127.0.0.2", Duration::from_secs(15), || {
        a.log().contains("does not resolve to the announcing client")
    });
    assert_eq!(elsewhere.features_asked.load(Ordering::SeqCst), 0);
    assert_eq!(listed(&a.addr), [ours.addr.port()]);
    // ...and is listed when it announces itself.
    assert_eq!(add_peer_from("127.0.0.2", &a.addr, &elsewhere.announcement(&genesis))?, json!(true));
    let mut both = vec![ours.addr.port(), elsewhere.addr.port()];
    both.sort();
    wait_until("A lists 127.0.0.2 once it announced itself", Duration::from_secs(15), || {
        listed(&a.addr) == both
    });
    Ok(())
}
