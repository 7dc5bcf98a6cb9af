//! Hostile clients against a real server, real sockets, a real node: while each attack runs, a
//! well-behaved client's requests are timed and the server's resident memory is sampled.
//! Asserted: memory growth per attacking connection ≤ 16 MiB, the control client's p99 ≤ 100 ms,
//! and each attacker cut off (or refused) with a clear error. `scripts/bench-attacks.sh` prints
//! the figures (the `figures:` lines).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use bitcoin::Amount;
use serde_json::{json, Value};

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, Conn, Server};

const MIB: u64 = 1 << 20;

/// The server's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A well-behaved client timing its requests, and a sampler of the server's memory, both running
/// until `finish`.
struct Watch {
    stop: Arc<AtomicBool>,
    control: thread::JoinHandle<Vec<Duration>>,
    peak: Arc<Mutex<u64>>,
    sampler: thread::JoinHandle<()>,
    base: u64,
}

impl Watch {
    fn start(server: &Server) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr.clone();
        let s = stop.clone();
        let control = thread::spawn(move || {
            let mut c = Conn::open(&addr);
            let mut times = Vec::new();
            let mut h = 0;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.result("blockchain.block.header", json!([h % 100]));
                c.result("blockchain.scripthash.get_balance", json!([format!("{:064x}", h)]));
                times.push(t.elapsed());
                h += 1;
                thread::sleep(Duration::from_millis(10));
            }
            times
        });
        let pid = server.pid();
        let base = rss(pid);
        let peak = Arc::new(Mutex::new(base));
        let (s, p) = (stop.clone(), peak.clone());
        let sampler = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = rss(pid);
                let mut peak = p.lock().unwrap();
                *peak = (*peak).max(now);
                drop(peak);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Watch { stop, control, peak, sampler, base }
    }

    /// The peak memory growth and the control client's p99 and worst time.
    fn finish(self, what: &str) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut times = self.control.join().unwrap();
        self.sampler.join().unwrap();
        let growth = self.peak.lock().unwrap().saturating_sub(self.base);
        times.sort();
        assert!(times.len() >= 20, "{what}: the control client made only {} requests", times.len());
        let p99 = times[times.len() * 99 / 100];
        eprintln!(
            "figures: {what}: rss growth {:.1} MiB, control p99 {:.1} ms (max {:.1} ms, {} requests)",
            growth as f64 / MIB as f64,
            p99.as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3,
            times.len()
        );
        (growth, p99)
    }
}

fn assert_bounded(what: &str, (growth, p99): (u64, Duration), attackers: u64) {
    assert!(growth <= attackers * 16 * MIB, "{what}: {} MiB for {attackers} attackers", growth / MIB);
    assert!(p99 <= Duration::from_millis(100), "{what}: control p99 {p99:?}");
}

/// Writes `line` over and over (never reading) until the server stops taking it or closes the
/// connection; true when it closed within `within`.
fn flood_without_reading(addr: &str, first: &str, line: &str, within: Duration) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    s.write_all(first.as_bytes()).unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.write_all(line.as_bytes()) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true, // reset or broken pipe: the server closed it
        }
    }
    false
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn hostile_clients_are_bounded_and_cut_off_while_a_wallet_is_served() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    let chain = ChainBuilder::new(&node)?;
    chain.mine(110)?;
    // A script with more history than this server's --max-history.
    let hot = node.new_address("bech32")?;
    for _ in 0..30 {
        node.send(&hot, Amount::from_sat(10_000))?;
    }
    chain.mine(1)?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    let secondary = dir.path().join("a");
    let server = Server::start_with(
        &node,
        &db,
        &[
            "--secondary-dir",
            secondary.to_str().unwrap(),
            "--send-timeout",
            "3",
            "--request-timeout",
            "2",
            "--max-history",
            "25",
            "--max-subscriptions",
            "5000",
        ],
    )?;
    let version = format!("{}\n", req(0, "server.version", json!(["attacker", "1.7"])));

    // 1. Four connections send batches of 100 pings asking for 1 MiB pongs and never read, a
    // fifth pipelines header requests and never reads: each is held to its send buffer, then cut
    // off once nothing drained for the send timeout.
    let watch = Watch::start(&server);
    let ping_batch: Vec<Value> = (1..=100).map(|i| req(i, "server.ping", json!([1 << 20]))).collect();
    let ping_line = format!("{}\n", Value::Array(ping_batch));
    let headers_line = format!("{}\n", req(1, "blockchain.block.headers", json!([0, 2016])));
    let mut attackers: Vec<thread::JoinHandle<bool>> = (0..4)
        .map(|_| {
            let (addr, v, l) = (server.addr.clone(), version.clone(), ping_line.clone());
            thread::spawn(move || flood_without_reading(&addr, &v, &l, Duration::from_secs(30)))
        })
        .collect();
    let (addr, v, l) = (server.addr.clone(), version.clone(), headers_line);
    attackers.push(thread::spawn(move || flood_without_reading(&addr, &v, &l, Duration::from_secs(30))));
    for a in attackers {
        assert!(a.join().unwrap(), "a client that does not read is disconnected");
    }
    let figures = watch.finish("ping bomb and non-readers (5 connections)");
    assert_bounded("ping bomb", figures, 5);
    let log = server.log();
    assert_eq!(count(&log, r#"reason="not reading its replies""#), 5, "{log}");

    // 2. 10,000 subscriptions on one session: the first 5,000 are taken, the rest refused with
    // ElectrumX's resource code; then a block makes the server recheck all of them.
    let watch = Watch::start(&server);
    let mut s = TcpStream::connect(&server.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let (mut taken, mut refused) = (0, 0);
    for chunk in 0..10 {
        let lines: String = (0..1000)
            .map(|i| {
                let sh = format!("{:064x}", chunk * 1000 + i + 1_000_000);
                format!("{}\n", req(i, "blockchain.scripthash.subscribe", json!([sh])))
            })
            .collect();
        s.write_all(lines.as_bytes())?;
        for _ in 0..1000 {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let r: Value = serde_json::from_str(&line)?;
            match r["error"]["code"].as_i64() {
                None => taken += 1,
                Some(-101) => {
                    assert!(
                        r["error"]["message"].as_str().unwrap().contains("too many subscriptions"),
                        "{r}"
                    );
                    refused += 1
                }
                Some(_) => panic!("{r}"),
            }
        }
    }
    assert_eq!((taken, refused), (5000, 5000));
    let height = node.height()?;
    chain.mine(1)?;
    let mut c = Conn::open(&server.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.result("blockchain.headers.subscribe", json!([]))["height"] != json!(height + 1) {
        assert!(Instant::now() < deadline, "the server did not reach the new tip");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500)); // the rechecks after the tip
    assert_bounded("10,000 subscriptions", watch.finish("10,000 subscriptions on one session"), 1);
    drop((s, reader));

    // 3. A flood of fee estimates and broadcasts (node calls): bounded in flight, all answered.
    let watch = Watch::start(&server);
    let flooders: Vec<thread::JoinHandle<()>> =
        [("blockchain.estimatefee", json!([2])), ("blockchain.transaction.broadcast", json!(["00"]))]
            .into_iter()
            .flat_map(|m| [m.clone(), m])
            .map(|(method, params)| {
                let addr = server.addr.clone();
                thread::spawn(move || {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let lines: String =
                        (0..1000).map(|i| format!("{}\n", req(i, method, params.clone()))).collect();
                    s.write_all(lines.as_bytes()).unwrap();
                    let mut reader = BufReader::new(s);
                    for _ in 0..1000 {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let r: Value = serde_json::from_str(&line).unwrap();
                        match method {
                            "blockchain.estimatefee" => assert_eq!(r["result"], json!(-1), "{r}"),
                            _ => assert_eq!(r["error"]["code"], json!(1), "the node's rejection: {r}"),
                        }
                    }
                })
            })
            .collect();
    for f in flooders {
        f.join().unwrap();
    }
    assert_bounded("node-call flood", watch.finish("estimatefee and broadcast flood (4 x 1000)"), 4);

    // 4. A script over --max-history: every way of asking is the same error, found from the
    // index's row count.
    let sh = blkindex_shared::ScriptHash::of(hot.script_pubkey().as_bytes()).to_string();
    let mut c = Conn::open(&server.addr);
    for method in [
        "blockchain.scripthash.get_history",
        "blockchain.scripthash.get_balance",
        "blockchain.scripthash.listunspent",
        "blockchain.scripthash.subscribe",
    ] {
        let r = c.call(method, json!([sh]));
        assert_eq!(r["error"]["code"], json!(10001), "{method}: {r}");
    }

    // 5. A partial line held open: cut off with a clear error after the request timeout.
    let mut s = TcpStream::connect(&server.addr)?;
    s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"server.pi"#)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let started = Instant::now();
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    assert!(text.contains("request not finished within 2 s"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    Ok(())
}

#[test]
fn the_cost_budget_slows_then_cuts_off_a_greedy_session() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(5)?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    let slowed_dir = dir.path().join("slowed");
    let slowed = Server::start_with(
        &node,
        &db,
        &["--secondary-dir", slowed_dir.to_str().unwrap(), "--cost-soft-limit", "2", "--cost-decay", "2"],
    )?;
    // 60 requests of a tenth of a unit each: 20 within the soft limit, then each waits for the
    // cost to decay: at 2 units a second, the other 40 take about 2 s.
    let mut c = Conn::open(&slowed.addr);
    let started = Instant::now();
    for _ in 0..60 {
        c.result("server.ping", json!([]));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "not slowed: {took:?}");
    // Another session is not slowed by this one's cost.
    let mut other = Conn::open(&slowed.addr);
    let started = Instant::now();
    for _ in 0..10 {
        other.result("server.ping", json!([]));
    }
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());

    let cut_dir = dir.path().join("cut");
    let cut = Server::start_with(
        &node,
        &db,
        &[
            "--secondary-dir",
            cut_dir.to_str().unwrap(),
            "--cost-soft-limit",
            "2",
            "--cost-hard-limit",
            "2",
            "--cost-decay",
            "0.1",
        ],
    )?;
    // A batch past the hard limit: answered up to it, then the error, then closed.
    let mut s = TcpStream::connect(&cut.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let batch: Vec<Value> = (1..=40).map(|i| req(i, "server.ping", json!([]))).collect();
    s.write_all(format!("{}\n", Value::Array(batch)).as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let replies: Value = serde_json::from_str(text.trim())?;
    let replies = replies.as_array().unwrap();
    let done = replies.iter().filter(|r| r.get("error").is_none()).count();
    assert!((15..=22).contains(&done), "{replies:?}");
    let last = replies.last().unwrap();
    assert_eq!(last["error"]["code"], json!(-101), "{last}");
    assert!(cut.log().contains(r#"reason="over its cost budget""#));
    Ok(())
}
