//! Makes a large regtest chain through a real node (see `blkindex_benches::chaingen`): blocks are
//! generated here and handed to the node with `submitblock`, the node validating block k while
//! block k+1 is signed.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bitcoin::Block;
use clap::Parser;
use serde_json::json;

use blkindex_benches::chaingen::ChainGen;
use blkindex_benches::NodeArgs;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Stop after this many MB of serialized blocks.
    #[arg(long, default_value_t = 1100)]
    target_mb: u64,
    /// Serialized size of each block, in kB.
    #[arg(long, default_value_t = 1000)]
    block_kb: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rpc = args.node.rpc();
    let info = rpc.call("getblockchaininfo", json!([]))?;
    if info["blocks"].as_u64() != Some(0) {
        bail!("the node must be at height 0 (it is at {})", info["blocks"]);
    }
    let t0 = Instant::now();
    let mut gen = ChainGen::new(args.seed, rpc.best_block_hash()?);
    let (tx_blocks, rx_blocks) = crossbeam_channel::bounded::<(u32, Block)>(2);
    let submitter = {
        let rpc = args.node.rpc();
        std::thread::spawn(move || -> Result<()> {
            for (height, block) in rx_blocks {
                let hex_block = bitcoin::consensus::encode::serialize_hex(&block);
                let r = rpc.call("submitblock", json!([hex_block]))?;
                if !r.is_null() {
                    bail!("block {height} rejected: {r}");
                }
            }
            Ok(())
        })
    };
    let (mut total_bytes, mut total_txs) = (0u64, 0u64);
    let mut last = None;
    while total_bytes < args.target_mb * 1_000_000 {
        let block = gen.next_block(args.block_kb * 1000)?;
        total_bytes += bitcoin::consensus::encode::serialize(&block).len() as u64;
        total_txs += block.txdata.len() as u64;
        let height = gen.height();
        if height.is_multiple_of(50) {
            eprintln!(
                "gen-chain: height {height}, {total_txs} txs, {:.1} MB of blocks, pool {} coins, {:.0}s",
                total_bytes as f64 / 1e6,
                gen.pool_len(),
                t0.elapsed().as_secs_f64()
            );
        }
        last = Some(block.block_hash());
        if tx_blocks.send((height, block)).is_err() {
            break;
        }
    }
    drop(tx_blocks);
    submitter.join().unwrap()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Some(rpc.best_block_hash()?) != last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{{\"height\": {}, \"txs\": {total_txs}, \"block_bytes\": {total_bytes}, \"secs\": {:.1}}}",
        gen.height(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
