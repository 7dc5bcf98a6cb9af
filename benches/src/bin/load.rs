//! Electrum load generator for `scripts/bench-query.sh`: many connections, each sending a wallet's
//! mix of requests one at a time (history, balance, unspent, subscribe, transaction, header), for
//! a fixed time; then thousands of idle subscribed connections. Prints one JSON line: requests per
//! second, latency percentiles, errors, and the server's RSS under load and with the idle crowd.
//!
//! The workload (script hashes, txids, heights) is sampled from the node with a fixed seed, so
//! every server gets the same requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bitcoin::hashes::{sha256, Hash};
use clap::Parser;
use serde_json::json;

use blkindex_benches::wallet_mix::{self, percentile, rss_mb, Conn, Workload};
use blkindex_shared::rpc::{Auth, Rpc};

#[derive(Parser)]
struct Args {
    /// The Electrum server, host:port (TCP).
    #[arg(long)]
    server: String,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// The node's RPC address and cookie file, to sample the workload.
    #[arg(long)]
    rpc_addr: String,
    #[arg(long)]
    cookie: std::path::PathBuf,
    /// Busy connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load, after `warmup` seconds not measured.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Idle subscribed connections opened after the load (0: skip).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Requests per second of the paced phase (after the saturating one), which measures latency
    /// at a load below every server's capacity rather than queueing at saturation (0: skip).
    #[arg(long, default_value_t = 200)]
    paced_rate: u64,
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
    /// Blocks sampled for the workload.
    #[arg(long, default_value_t = 40)]
    sample_blocks: u64,
}

fn sample(args: &Args) -> Result<Workload> {
    let rpc = Rpc::new(&args.rpc_addr, Auth::Cookie(args.cookie.clone()));
    let tip = rpc.call("getblockcount", json!([]))?.as_u64().context("height")?;
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut scripthashes, mut txids) = (Vec::new(), Vec::new());
    for _ in 0..args.sample_blocks {
        let hash = rpc.call("getblockhash", json!([rng.u64(1..=tip)]))?;
        let block = rpc.call("getblock", json!([hash, 2]))?;
        for tx in block["tx"].as_array().context("tx")? {
            if rng.u8(..) < 8 {
                txids.push(tx["txid"].as_str().unwrap().to_string());
            }
            for out in tx["vout"].as_array().unwrap() {
                let script = hex::decode(out["scriptPubKey"]["hex"].as_str().unwrap())?;
                if script.first() != Some(&0x6a) && rng.u8(..) < 8 {
                    let mut h = sha256::Hash::hash(&script).to_byte_array();
                    h.reverse();
                    scripthashes.push(hex::encode(h));
                }
            }
        }
    }
    scripthashes.sort();
    scripthashes.dedup();
    Ok(Workload { scripthashes, txids, tip })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rlimit_nofile();
    let w = Arc::new(sample(&args)?);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.seconds);
    let (mut latencies, errors) =
        wallet_mix::saturate(&args.server, w.clone(), args.connections as u64, 0, measure_from, end).await?;
    let (rss_loaded, anon_loaded) = (rss_mb(args.pid, "VmRSS:"), rss_mb(args.pid, "RssAnon:"));
    latencies.sort_unstable();
    let n = latencies.len();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let paced = paced(&args, &w).await?;
    let (paced_p50, paced_p99) = (percentile(&paced, 0.50), percentile(&paced, 0.99));

    // The idle crowd: each connection negotiates and subscribes to headers and one script that
    // has no history yet (as a wallet's gap-limit addresses); given up on after two minutes.
    let mut idle = Vec::with_capacity(args.idle);
    let mut idle_failed = 0usize;
    let idle_deadline = Instant::now() + Duration::from_secs(120);
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..args.idle {
        if Instant::now() > idle_deadline {
            idle_failed += 1;
            continue;
        }
        let fresh: [u8; 32] = std::array::from_fn(|_| rng.u8(..));
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "blockchain.scripthash.subscribe",
            "params": [hex::encode(fresh)]})
        .to_string()
            + "\n";
        let opened = async {
            let mut c = Conn::open(&args.server).await?;
            c.call(
                &(json!({"jsonrpc": "2.0", "id": 2, "method": "blockchain.headers.subscribe", "params": []})
                    .to_string()
                    + "\n"),
            )
            .await?;
            c.call(&sub).await?;
            anyhow::Ok(c)
        };
        match tokio::time::timeout(Duration::from_secs(10), opened).await {
            Ok(Ok(c)) => idle.push(c),
            _ => idle_failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle, anon_idle) = (rss_mb(args.pid, "VmRSS:"), rss_mb(args.pid, "RssAnon:"));
    println!(
        "{}",
        json!({
            "requests": n,
            "seconds": args.seconds,
            "rps": n as f64 / args.seconds as f64,
            "p50_ms": p50,
            "p99_ms": p99,
            "paced_rate": args.paced_rate,
            "paced_p50_ms": paced_p50,
            "paced_p99_ms": paced_p99,
            "errors": errors,
            "rss_loaded_mb": rss_loaded,
            "idle_open": idle.len(),
            "idle_failed": idle_failed,
            "rss_idle_mb": rss_idle,
            "anon_loaded_mb": anon_loaded,
            "anon_idle_mb": anon_idle,
            "workload": {"scripthashes": w.scripthashes.len(), "txids": w.txids.len(), "connections": args.connections},
        })
    );
    Ok(())
}

/// The paced phase: the same connections and mix at a fixed total rate for `paced_seconds`
/// (`wallet_mix::paced`). Sorted latencies in µs.
async fn paced(args: &Args, w: &Arc<Workload>) -> Result<Vec<u64>> {
    if args.paced_rate == 0 {
        return Ok(Vec::new());
    }
    let until = Instant::now() + Duration::from_millis(200) + Duration::from_secs(args.paced_seconds);
    let timed = wallet_mix::paced(
        args.server.clone(),
        w.clone(),
        args.connections as u64,
        args.paced_rate,
        1000,
        until,
    )
    .await?;
    let mut latencies: Vec<u64> = timed.iter().map(|t| t.micros).collect();
    latencies.sort_unstable();
    Ok(latencies)
}

/// Raises the open-files limit to the hard limit (thousands of sockets).
fn rlimit_nofile() -> std::io::Result<()> {
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        l.rlim_cur = l.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
