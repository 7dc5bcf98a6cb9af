//! `blkindex-indexer`'s library: bulk-indexes bitcoind's blk files into RocksDB, then follows the
//! node's tip. `run` is the whole job; `main.rs` only parses flags and sets up logging.
//!
//! Flow: `scan` (blk framing → block map) → `bestchain` (which blocks) → `recovery` (back to a
//! block boundary) → `bulk` (batches: `revmatch` finds undo data, `rows` makes rows, `rowsort`
//! sorts them, `ingest` writes and ingests SST files) → compaction → `follow` (woken by `zmq` or a
//! timer; new blocks from `tail` of the files, or RPC; reorgs undone by `unwind`). `source` finds
//! a block's bytes and undo data for all of them: files, the `rawblock` family, or the node.

mod bestchain;
mod bulk;
mod follow;
mod ingest;
mod progress;
mod recovery;
mod revmatch;
mod rows;
mod rowsort;
mod scan;
mod source;
mod tail;
#[cfg(test)]
mod undo_redo;
mod unwind;
mod zmq;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::HumanBytes;
use tracing::info;

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{args_with_config_file, NodeArgs, NodeConfig};
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::meta;
use blkindex_shared::service;
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::Net;
use serde_json::json;

use follow::{FollowSource, Follower};

use progress::{Progress, ProgressMode};

/// Bulk-indexes a Bitcoin node's block files into a RocksDB index for blkindex-server.
#[derive(Parser, Debug)]
#[command(name = "blkindex-indexer", version, about, args_override_self = true)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Index what is in the blk files without asking the node (most-work chain in the files).
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_OFFLINE")]
    offline: bool,
    /// Exit after the bulk pass instead of following the node.
    #[arg(long, help_heading = "Following", env = "BLKINDEX_NO_FOLLOW")]
    no_follow: bool,
    /// The node's ZMQ endpoint for block notifications (default: asked with getzmqnotifications,
    /// else zmqpubhashblock / zmqpubsequence from bitcoin.conf; none: poll only).
    #[arg(long, help_heading = "Following", env = "BLKINDEX_ZMQ_ENDPOINT")]
    zmq_endpoint: Option<String>,
    /// Seconds between polls of the node's best block (also when ZMQ is on, in case it drops).
    #[arg(long, help_heading = "Following", env = "BLKINDEX_POLL_SECS", default_value_t = 2.0)]
    poll_secs: f64,
    /// Where followed blocks come from.
    #[arg(
        long,
        help_heading = "Following",
        env = "BLKINDEX_FOLLOW_SOURCE",
        value_enum,
        default_value = "files"
    )]
    follow_source: FollowSource,
    /// Go straight to following when the index is at most this many blocks behind the node
    /// (no header scan of the blk files); further behind, the bulk path catches up first.
    #[arg(long, help_heading = "Following", env = "BLKINDEX_FOLLOW_GAP", default_value_t = 1000)]
    follow_gap: u32,
    /// Memory budget in MiB for the bulk pass (batch sizes follow from it).
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_MEM_BUDGET_MB", default_value_t = 2048)]
    mem_budget_mb: u64,
    /// Bytes of blocks per bulk batch, in KiB (default: three fifths of the memory budget: a batch's
    /// rows peak at about half its block bytes, and three batches can be in memory at once, one
    /// being written, one queued, one being built). Smaller
    /// batches commit more often, at some cost in speed.
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_BATCH_KB")]
    batch_kb: Option<u64>,
    /// Worker threads (default: one per CPU).
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_THREADS")]
    threads: Option<usize>,
    /// Bytes of hash prefix per bucket key of a new index (default: 3 on mainnet and the testnets,
    /// 2 on signet and regtest); a regtest chain of mainnet's size wants 3. Fixed at creation.
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_BUCKET_WIDTH")]
    bucket_width: Option<usize>,
    /// Deepest reorg undone without asking: a deeper one (or a node whose chain has less work
    /// than the index, e.g. while it reindexes) makes the indexer wait and say why.
    #[arg(long, help_heading = "Following", env = "BLKINDEX_MAX_REORG", default_value_t = 100)]
    max_reorg: u32,
    /// Progress display.
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_PROGRESS", value_enum, default_value = "auto")]
    progress: ProgressMode,
}

impl Args {
    /// The command line's flags, with the config file's settings behind them.
    pub fn from_command_line() -> Result<Args> {
        Ok(Args::parse_from(args_with_config_file(std::env::args_os().collect())?))
    }

    /// As the command line `args` (the program's name first) would set them; no config file.
    pub fn from_args<I: Into<std::ffi::OsString> + Clone>(args: impl IntoIterator<Item = I>) -> Result<Args> {
        Ok(Args::try_parse_from(args)?)
    }
}

/// When the follower stops.
pub enum Shutdown {
    /// On SIGINT or SIGTERM, registered once following starts: before that, during a bulk pass,
    /// they end the process at once, which is safe (a killed pass resumes).
    Signals,
    /// When this flag is set (an indexer run in-process).
    Flag(Arc<AtomicBool>),
}

/// The indexer's job: the bulk pass if the index is far from the node's tip, then following
/// until `shutdown` (not with `--no-follow`).
pub fn run(args: Args, shutdown: Shutdown) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let node = args.node.node()?;
    let rpc = (!args.offline).then(|| Rpc::new(&node.rpc_addr, node.auth.clone()));
    let files = BlockFiles::open(&node.blocks_dir)?;
    info!(
        network = %args.node.network,
        blocks = %node.blocks_dir.display(),
        xor = !files.xor_key().is_zero(),
        db = %args.node.db.display(),
        "starting"
    );
    if let Some(rpc) = &rpc {
        check_node_network(rpc, args.node.network)?;
    }
    let store = Store::open(&args.node.db, Mode::Bulk)?;
    store.check_identity(args.node.network, true, args.bucket_width)?;
    // Ready once the index is open: a bulk pass may follow for hours, and a service manager must
    // not hold the boot (or the server, ordered after it) for that; `systemctl status` shows the
    // phase.
    service::ready("index open");

    let progress = Progress::new(args.progress);
    let source =
        source::BlockSource { files: &files, store: &store, net: args.node.network, rpc: rpc.as_ref() };
    let bulk = bulk::Bulk {
        source: &source,
        progress: &progress,
        batch_bytes: args.batch_kb.map_or((args.mem_budget_mb << 20) * 3 / 5, |kb| kb << 10),
        max_reorg: args.max_reorg,
    };
    if args.no_follow || !close_to_tip(&store, rpc.as_ref(), args.follow_gap)? {
        bulk_pass(&bulk, &store, &files, args.node.network, rpc.as_ref(), &progress)?;
    } else {
        info!("the index is close to the node's tip: following without a bulk pass");
        store.enable_auto_compactions()?;
    }
    if args.no_follow {
        return Ok(());
    }
    if rpc.is_none() {
        anyhow::bail!("following needs the node's RPC: drop --offline, or add --no-follow");
    }
    let stop = match shutdown {
        Shutdown::Flag(flag) => flag,
        Shutdown::Signals => {
            let stop = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
            signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
            stop
        }
    };
    let poll = Duration::from_secs_f64(args.poll_secs.max(0.05));
    let mut follower = Follower::new(&source, args.follow_source, poll, args.max_reorg, stop.clone())?;
    service::status(&format!("following the node from height {}", store.tip()?.map_or(0, |(h, _)| h)));
    let (wake_tx, wake_rx) = crossbeam_channel::unbounded();
    match zmq_config(&args, &node, rpc.as_ref().unwrap()) {
        Some(cfg) => {
            info!(endpoint = %cfg.endpoint, topic = %cfg.topic, poll_secs = args.poll_secs, source = ?args.follow_source, "following: ZMQ notifications, and polling");
            zmq::spawn(cfg, wake_tx, follower.zmq_reconnect.clone(), stop.clone());
        }
        None => {
            info!(poll_secs = args.poll_secs, source = ?args.follow_source, "following: no ZMQ endpoint, polling only");
            std::mem::forget(wake_tx);
        }
    }
    let result = follower.run(&wake_rx);
    service::stopping();
    result
}

/// The bulk pass: scan, best chain, batches, compaction; prints a summary.
fn bulk_pass(
    bulk: &bulk::Bulk,
    store: &Store,
    files: &BlockFiles,
    net: Net,
    rpc: Option<&Rpc>,
    progress: &Progress,
) -> Result<()> {
    let t0 = Instant::now();
    service::status("bulk pass: scanning the block files");
    let map = scan::scan_blk_files(files, net, progress)?;
    let chain = bestchain::select(&map, net, rpc)?;
    info!(blocks_in_files = map.len(), chain_height = chain.len() - 1, "chain selected");
    service::status(&format!("bulk pass: indexing {} blocks", chain.len()));
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
    Ok(())
}

/// Refuses a node that cannot give every block (a reachable node only: a node that is down is the
/// follower's business): one of another network, a pruned one, one still validating an
/// assumeutxo snapshot (the blocks below the snapshot are not in its files yet).
fn check_node_network(rpc: &Rpc, net: Net) -> Result<()> {
    let Ok(info) = rpc.call("getblockchaininfo", json!([])) else { return Ok(()) };
    let chain = info["chain"].as_str().unwrap_or("");
    if chain != net.conf_section() {
        anyhow::bail!(
            "the node at {} is on {chain}, not {net}: check --network and --daemon-rpc-addr",
            rpc.addr()
        );
    }
    if info["pruned"].as_bool() == Some(true) {
        anyhow::bail!(
            "the node at {} is pruned: blkindex reads every block from the node's files, so it needs an \
             unpruned node (bitcoind without -prune)",
            rpc.addr()
        );
    }
    // Nodes before 26.0 have no getchainstates (nor assumeutxo).
    if let Ok(states) = rpc.call("getchainstates", json!([])) {
        let chainstates = states["chainstates"].as_array().map_or(&[][..], |a| a.as_slice());
        if chainstates.len() > 1 || chainstates.iter().any(|c| c["validated"].as_bool() == Some(false)) {
            anyhow::bail!(
                "the node at {} is still validating an assumeutxo snapshot in the background, so the blocks \
                 below the snapshot are not in its files yet: run the indexer once `bitcoin-cli \
                 getchainstates` shows a single validated chainstate",
                rpc.addr()
            );
        }
    }
    Ok(())
}

/// Is a finished index within `gap` blocks of the node's best block (so the follower can catch up
/// over RPC without scanning every blk file)?
fn close_to_tip(store: &Store, rpc: Option<&Rpc>, gap: u32) -> Result<bool> {
    let (Some(rpc), Some((tip, _))) = (rpc, store.tip()?) else { return Ok(false) };
    if store.pending()?.is_some() || store.get_meta(meta::COMPACTED)?.is_none() {
        return Ok(false);
    }
    match rpc.call("getblockcount", json!([])) {
        Ok(v) => Ok(v.as_u64().is_some_and(|n| n <= tip as u64 + gap as u64)),
        Err(_) => Ok(false),
    }
}

/// Where the node publishes block notifications: the flag, else what the node says, else
/// bitcoin.conf.
fn zmq_config(args: &Args, node: &NodeConfig, rpc: &Rpc) -> Option<zmq::ZmqConfig> {
    if let Some(e) = &args.zmq_endpoint {
        return Some(zmq::ZmqConfig { endpoint: e.clone(), topic: "hashblock".into() });
    }
    let found = node.zmq_notifications(rpc);
    ["hashblock", "sequence"].iter().find_map(|topic| {
        found
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, a)| zmq::ZmqConfig { endpoint: a.clone(), topic: topic.to_string() })
    })
}
