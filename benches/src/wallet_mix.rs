//! A wallet's mix of Electrum requests (history, balance, unspent, subscribe, transaction,
//! header) over a workload of script hashes and txids, on plain TCP connections; and its paced
//! form, each request sent at its scheduled time, for latency below saturation. Shared by `load`
//! (`scripts/bench-query.sh`), `fill-mempool` (`scripts/bench-mempool.sh`) and `cold`
//! (`scripts/bench-cold.sh`).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What the requests name.
pub struct Workload {
    /// Script hashes as the protocol shows them (byte-reversed hex).
    pub scripthashes: Vec<String>,
    pub txids: Vec<String>,
    pub tip: u64,
}

/// One request of the mix, as a line.
pub fn request(w: &Workload, rng: &mut fastrand::Rng, id: u64) -> String {
    let sh = &w.scripthashes[rng.usize(..w.scripthashes.len())];
    let (method, params) = match rng.u8(0..100) {
        0..30 => ("blockchain.scripthash.get_history", json!([sh])),
        30..50 => ("blockchain.scripthash.get_balance", json!([sh])),
        50..70 => ("blockchain.scripthash.listunspent", json!([sh])),
        70..80 => ("blockchain.scripthash.subscribe", json!([sh])),
        80..95 => ("blockchain.transaction.get", json!([w.txids[rng.usize(..w.txids.len())]])),
        _ => ("blockchain.block.header", json!([rng.u64(0..=w.tip)])),
    };
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string() + "\n"
}

/// What the generator reads of a reply or notification; the rest is parsed and skipped.
#[derive(serde::Deserialize)]
struct ReplyShape {
    /// Only notifications have one.
    method: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

/// One connection, protocol 1.4 negotiated.
pub struct Conn {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Conn { write: w, read: BufReader::new(r), line: String::new() };
        c.call(
            &(json!({"jsonrpc": "2.0", "id": 0, "method": "server.version", "params": ["load", "1.4"]})
                .to_string()
                + "\n"),
        )
        .await?;
        Ok(c)
    }

    /// Sends one request and reads lines up to its reply (skipping notifications); true when the
    /// reply is not an error.
    pub async fn call(&mut self, req: &str) -> Result<bool> {
        self.write.write_all(req.as_bytes()).await?;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.read.read_line(&mut self.line).await? > 0,
                "the server closed the connection"
            );
            // Checked, not kept: building a tree of a long reply would cost this process (which
            // shares the cores with the server) more than the server spent on it.
            let r: ReplyShape = serde_json::from_str(&self.line)?;
            if r.method.is_none() {
                return Ok(r.error.is_none());
            }
        }
    }
}

/// A process's resident memory (`VmRSS`, or its anonymous part `RssAnon`, which leaves out
/// file-backed pages such as memory-mapped block files), in MiB.
pub fn rss_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The `p` quantile of sorted latencies (µs), in ms.
pub fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().checked_sub(1)?);
    Some(sorted[i] as f64 / 1000.0)
}

/// The saturating mix: `connections` connections, each sending its next request as soon as the
/// reply to the last one is in, from now to `end`; latencies (µs) of the requests sent from
/// `measure_from` on, and how many of those were errors. `seed` picks the requests (connection
/// `c` uses `seed + c`).
pub async fn saturate(
    addr: &str,
    w: std::sync::Arc<Workload>,
    connections: u64,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Result<(Vec<u64>, u64)> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (w, addr) = (w.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut rng = fastrand::Rng::with_seed(seed + c);
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut id = 1;
            while Instant::now() < end {
                let req = request(&w, &mut rng, id);
                id += 1;
                let t = Instant::now();
                let ok = conn.call(&req).await?;
                if t >= measure_from {
                    latencies.push(t.elapsed().as_micros() as u64);
                    errors += !ok as u64;
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    Ok((latencies, errors))
}

/// One request of the paced mix: when it was due, and how long after that its reply came (µs).
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub due: Instant,
    pub micros: u64,
    pub ok: bool,
}

/// The paced mix: `connections` connections sending `rate` requests per second in all, each at
/// its scheduled time, until `until` (a deadline) or `stop` resolves; latency counts from the
/// scheduled time, so a server that falls behind is charged for the wait too (no coordinated
/// omission). `seed` picks the requests. Every request's timing, in the order they were due.
pub async fn paced(
    addr: String,
    w: std::sync::Arc<Workload>,
    connections: u64,
    rate: u64,
    seed: u64,
    until: Instant,
) -> Result<Vec<Timed>> {
    let every = Duration::from_secs_f64(connections as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let until = tokio::time::Instant::from_std(until);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (w, addr) = (w.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut rng = fastrand::Rng::with_seed(seed + c);
            let mut timed = Vec::new();
            // Staggered so the connections do not all send at once.
            let first = start + every.mul_f64(c as f64 / connections as f64);
            for k in 0.. {
                let at = first + every * k as u32;
                if at >= until {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let ok = conn.call(&request(&w, &mut rng, k + 1)).await?;
                timed.push(Timed { due: at.into_std(), micros: at.elapsed().as_micros() as u64, ok });
            }
            anyhow::Ok(timed)
        }));
    }
    let mut timed = Vec::new();
    for t in tasks {
        timed.extend(t.await??);
    }
    timed.sort_by_key(|t| t.due);
    Ok(timed)
}
