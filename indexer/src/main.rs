//! `blkindex-indexer`: bulk-indexes bitcoind's blk files into RocksDB, then (in a later release)
//! follows the node's tip.
//!
//! Flow: `scan` (blk framing → block map) → `bestchain` (which blocks) → `bulk` (batches:
//! `revmatch` finds undo data, `rows` makes rows, SSTs are ingested) → compaction.

mod bestchain;
mod bulk;
mod progress;
mod revmatch;
mod rows;
mod scan;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::HumanBytes;
use tracing::info;

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{args_with_config_file, NodeConfig};
use blkindex_shared::rpc::Rpc;
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::Net;

use progress::{Progress, ProgressMode};

/// Bulk-indexes a Bitcoin node's block files into a RocksDB index for blkindex-server.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// mainnet, testnet3, testnet4, signet or regtest.
    #[arg(long, env = "BLKINDEX_NETWORK", default_value = "mainnet")]
    network: Net,
    /// bitcoind's data directory (the one holding bitcoin.conf).
    #[arg(long, env = "BLKINDEX_DATADIR")]
    datadir: PathBuf,
    /// Where the index lives.
    #[arg(long, env = "BLKINDEX_DB")]
    db: PathBuf,
    /// bitcoind's blocks directory, when not <datadir>/<network>/blocks.
    #[arg(long, env = "BLKINDEX_BLOCKSDIR")]
    blocksdir: Option<PathBuf>,
    /// bitcoind's RPC address (default: from bitcoin.conf, else the network's port on 127.0.0.1).
    #[arg(long, env = "BLKINDEX_DAEMON_RPC_ADDR")]
    daemon_rpc_addr: Option<String>,
    /// RPC cookie file (default: <datadir>/<network>/.cookie; rpcuser/rpcpassword from bitcoin.conf).
    #[arg(long, env = "BLKINDEX_COOKIE")]
    cookie: Option<PathBuf>,
    /// Index what is in the blk files without asking the node (most-work chain in the files).
    #[arg(long, env = "BLKINDEX_OFFLINE")]
    offline: bool,
    /// Exit after the bulk pass instead of following the node.
    #[arg(long, env = "BLKINDEX_NO_FOLLOW")]
    no_follow: bool,
    /// Memory budget in MiB for the bulk pass (batch sizes follow from it).
    #[arg(long, env = "BLKINDEX_MEM_BUDGET_MB", default_value_t = 2048)]
    mem_budget_mb: u64,
    /// Bytes of blocks per bulk batch, in KiB (default: a third of the memory budget). Smaller
    /// batches commit more often, at some cost in speed.
    #[arg(long, env = "BLKINDEX_BATCH_KB")]
    batch_kb: Option<u64>,
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "BLKINDEX_THREADS")]
    threads: Option<usize>,
    /// Progress display.
    #[arg(long, env = "BLKINDEX_PROGRESS", value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// TOML file with any of these settings (keys are the flag names); flags and env win over it.
    #[arg(long, env = "BLKINDEX_CONFIG")]
    config: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse_from(args_with_config_file(std::env::args_os().collect())?);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLKINDEX_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let node = NodeConfig::derive(
        args.network,
        &args.datadir,
        args.blocksdir.as_deref(),
        args.daemon_rpc_addr.as_deref(),
        args.cookie.as_deref(),
    )?;
    let rpc = (!args.offline).then(|| Rpc::new(&node.rpc_addr, node.auth.clone()));
    let files = BlockFiles::open(&node.blocks_dir)?;
    info!(
        network = %args.network,
        blocks = %node.blocks_dir.display(),
        xor = !files.xor_key().is_zero(),
        db = %args.db.display(),
        "starting"
    );
    let store = Store::open(&args.db, Mode::Bulk)?;
    store.check_identity(args.network, true)?;

    let progress = Progress::new(args.progress);
    let t0 = Instant::now();
    let map = scan::scan_blk_files(&files, args.network, &progress)?;
    let chain = bestchain::select(&map, args.network, rpc.as_ref())?;
    info!(blocks_in_files = map.len(), chain_height = chain.len() - 1, "chain selected");
    let bulk = bulk::Bulk {
        store: &store,
        files: &files,
        net: args.network,
        rpc: rpc.as_ref(),
        progress: &progress,
        batch_bytes: args.batch_kb.map_or((args.mem_budget_mb << 20) / 3, |kb| kb << 10),
    };
    let summary = bulk.run(&map, &chain).context("bulk indexing failed")?;
    let sst: u64 = store.sst_bytes()?.iter().map(|(_, b)| b).sum();
    let (tip_height, tip_hash) = summary.tip.context("nothing indexed")?;
    println!(
        "indexed {} blocks ({} txs, {}) in {:.1}s (index {:.1}s, compaction {:.1}s); tip {} at height {}; index size {}",
        summary.blocks,
        summary.txs,
        HumanBytes(summary.bytes),
        t0.elapsed().as_secs_f64(),
        summary.index_secs,
        summary.compact_secs,
        tip_hash,
        tip_height,
        HumanBytes(sst),
    );
    if !args.no_follow {
        anyhow::bail!("following the node after the bulk pass is not built yet; run with --no-follow");
    }
    Ok(())
}
