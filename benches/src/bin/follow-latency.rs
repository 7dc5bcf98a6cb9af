//! How soon a new block is in the index: submits blocks of realistic transactions to a node that
//! a following `blkindex-indexer` watches, one at a time, and reads when the indexer committed
//! each (its "block committed ... committed_at_us=" log line; same machine, same clock).
//!
//!   follow-latency --rpc-addr A --cookie C --indexer-log LOG [--blocks 200] [--block-kb 600]
//!
//! The node must be at height 0. The first 110 blocks mature the generator's coins and are not
//! measured. Prints one JSON line: latencies from submitblock's return (negative: committed before
//! the call returned) and from its start, in ms.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use blkindex_benches::chaingen::ChainGen;
use blkindex_benches::NodeArgs;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[arg(long)]
    indexer_log: std::path::PathBuf,
    #[arg(long, default_value_t = 200)]
    blocks: usize,
    #[arg(long, default_value_t = 600)]
    block_kb: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Reads the indexer log as it grows and finds commit times by block hash.
struct LogWatch {
    file: std::fs::File,
    pos: u64,
    buf: String,
}

impl LogWatch {
    fn committed_at(&mut self, hash: &str, timeout: Duration) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.file.seek(SeekFrom::Start(self.pos))?;
            let mut more = String::new();
            self.pos += self.file.read_to_string(&mut more)? as u64;
            self.buf.push_str(&more);
            if let Some(line) = self.buf.lines().find(|l| l.contains("block committed") && l.contains(hash)) {
                let at = line.split("committed_at_us=").nth(1).context("no committed_at_us")?;
                return Ok(at.split_whitespace().next().unwrap_or("").parse()?);
            }
            if let Some(cut) = self.buf.rfind('\n') {
                // Keep only a partial last line; earlier ones were for earlier blocks.
                self.buf = self.buf[cut + 1..].to_string();
            }
            if Instant::now() > deadline {
                bail!("block {hash} not committed within {timeout:?}");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rpc = args.node.rpc();
    let mut gen = ChainGen::new(args.seed, rpc.best_block_hash()?);
    let mut log = LogWatch { file: std::fs::File::open(&args.indexer_log)?, pos: 0, buf: String::new() };
    let submit = |block: &bitcoin::Block| -> Result<()> {
        let r = rpc.call("submitblock", json!([bitcoin::consensus::encode::serialize_hex(block)]))?;
        if !r.is_null() {
            bail!("block rejected: {r}");
        }
        Ok(())
    };
    // Mature coinbases and grow the coin pool; the follower follows these too.
    while gen.height() < 110 || gen.pool_len() < 20_000 {
        let block = gen.next_block(args.block_kb * 1000)?;
        submit(&block)?;
        log.committed_at(&block.block_hash().to_string(), Duration::from_secs(60))?;
    }
    let (mut after_return, mut after_start, mut txs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.blocks {
        let block = gen.next_block(args.block_kb * 1000)?;
        let hash = block.block_hash().to_string();
        txs.push(block.txdata.len() as f64);
        let start = now_us();
        submit(&block)?;
        let returned = now_us();
        let committed = log.committed_at(&hash, Duration::from_secs(60))?;
        after_return.push((committed - returned) as f64 / 1e3);
        after_start.push((committed - start) as f64 / 1e3);
    }
    for v in [&mut after_return, &mut after_start, &mut txs] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    println!(
        "{}",
        json!({
            "blocks": args.blocks,
            "txs_per_block_min": txs[0],
            "txs_per_block_p50": pct(&txs, 0.5),
            "ms_after_submit_return": {"p50": pct(&after_return, 0.5), "p99": pct(&after_return, 0.99), "max": pct(&after_return, 1.0)},
            "ms_after_submit_start": {"p50": pct(&after_start, 0.5), "p99": pct(&after_start, 0.99), "max": pct(&after_start, 1.0)},
        })
    );
    Ok(())
}
