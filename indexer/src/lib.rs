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
pub mod checkpoint;
mod follow;
mod ingest;
mod progress;
mod recovery;
mod replica;
mod revmatch;
mod rows;
mod rowsort;
mod scan;
mod source;
mod stage;
mod tail;
mod tweak_pass;
#[cfg(test)]
mod undo_redo;
mod unwind;
mod zmq;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::HumanBytes;
use tracing::{info, warn};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{args_with_config_file, NodeArgs, NodeConfig};
use blkindex_shared::nodelock::{NodeLock, NotTaken};
use blkindex_shared::rpc::Rpc;
use blkindex_shared::schema::{self, meta};
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
    /// Txnum lists longer than this many bytes (a hot script's) are kept apart from their bucket
    /// in a new index (default 4096); fixed at creation. Tests make it small.
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_LONG_LIST_BYTES")]
    long_list_bytes: Option<usize>,

    /// First height whose silent-payment (BIP352) eligible transactions get tweak rows [default:
    /// 709632, taproot's activation, on mainnet; 0 elsewhere]. Fixed when the index is created.
    #[arg(long, help_heading = "Silent payments", env = "BLKINDEX_SP_START", conflicts_with = "no_sp_index")]
    sp_start: Option<u32>,

    /// No silent-payment index: no tweak rows, no tweak computed. Fixed when the index is created.
    #[arg(long, help_heading = "Silent payments", env = "BLKINDEX_NO_SP_INDEX")]
    no_sp_index: bool,
    /// Deepest reorg undone without asking: a deeper one (or a node whose chain has less work
    /// than the index, e.g. while it reindexes) makes the indexer wait and say why.
    #[arg(long, help_heading = "Following", env = "BLKINDEX_MAX_REORG", default_value_t = 100)]
    max_reorg: u32,
    /// Progress display.
    #[arg(long, help_heading = "Bulk pass", env = "BLKINDEX_PROGRESS", value_enum, default_value = "auto")]
    progress: ProgressMode,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// A checkpoint of the index in DIR (a directory it creates; hard links on the same file
    /// system), at a block boundary, to start a replica from: asked of the indexer following on
    /// --db, or taken directly when none runs. Flags go before the word `checkpoint`.
    Checkpoint { dir: std::path::PathBuf },
}

impl Args {
    /// The index (`--db`).
    pub fn db(&self) -> &std::path::Path {
        &self.node.db
    }

    /// The command line's flags, with the config file's settings behind them.
    pub fn from_command_line() -> Result<Args> {
        Ok(Args::parse_from(args_with_config_file(std::env::args_os().collect())?))
    }

    /// As the command line `args` (the program's name first) would set them; no config file.
    pub fn from_args<I: Into<std::ffi::OsString> + Clone>(args: impl IntoIterator<Item = I>) -> Result<Args> {
        Ok(Args::try_parse_from(args)?)
    }

    /// The silent-payment setting the flags ask for (None: the network's default for a new index,
    /// whatever an existing one has).
    fn tweak_start(&self) -> Option<schema::TweakStart> {
        match (self.no_sp_index, self.sp_start) {
            (true, _) => Some(schema::TweakStart(None)),
            (false, Some(h)) => Some(schema::TweakStart(Some(h))),
            (false, None) => None,
        }
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
    // Set only for an in-process run; signals end a process before following at once.
    let stop_flag = match &shutdown {
        Shutdown::Flag(f) => Some(f.clone()),
        Shutdown::Signals => None,
    };
    let retry = NodeRetry { stop: stop_flag.as_deref() };
    if let Some(rpc) = &rpc {
        retry.run("checking the node", || check_node_network(rpc, args.node.network))?;
    }
    let store = Store::open(&args.node.db, Mode::Bulk)?;
    store.check_identity(args.node.network, true, args.bucket_width)?;
    store.check_long_list_bytes(args.long_list_bytes)?;
    let tweaks = store.check_tweak_start(args.node.network, args.tweak_start())?;
    match tweaks.0 {
        Some(h) => info!(from = h, "silent-payment index on"),
        None => info!("silent-payment index off"),
    }
    // Ready once the index is open: a bulk pass may follow for hours, and a service manager must
    // not hold the boot (or the server, ordered after it) for that; `systemctl status` shows the
    // phase.
    service::ready("index open");

    let progress = Progress::new(args.progress);
    let source = source::BlockSource {
        files: &files,
        store: &store,
        net: args.node.network,
        rpc: rpc.as_ref(),
        sp: rows::SpRows { start: tweaks, deferred: false },
    };
    // A copied index (a checkpoint from another host) gets this node's block places first, and is
    // refused here if it cannot follow this node.
    retry.run("checking a copied index against the node", || {
        replica::prepare(&source, &progress, args.max_reorg)
    })?;
    // The bulk pass leaves the tweaks' curve arithmetic to the tweak pass (`tweak_pass`).
    let bulk_source = source::BlockSource { sp: rows::SpRows { deferred: true, ..source.sp }, ..source };
    let bulk = bulk::Bulk {
        source: &bulk_source,
        progress: &progress,
        batch_bytes: args.batch_kb.map_or((args.mem_budget_mb << 20) * 3 / 5, |kb| kb << 10),
        mem_budget: args.mem_budget_mb << 20,
        max_reorg: args.max_reorg,
    };
    if args.no_follow
        || !retry.run("asking the node's height", || close_to_tip(&store, rpc.as_ref(), args.follow_gap))?
    {
        let scan_files = files_for_bulk_pass(&files, &node, rpc.is_some());
        // Offline, the pass never talks to a node, so its block reads go through the maps too
        // and the lock is held until the pass ends; with a node, only the scan does.
        let (pass_files, mapped_source);
        let bulk = match rpc.is_none() && scan_files.is_mapped() {
            true => {
                pass_files = scan_files.clone();
                mapped_source = source::BlockSource { files: &pass_files, ..bulk_source };
                bulk::Bulk { source: &mapped_source, ..bulk }
            }
            false => bulk,
        };
        bulk_pass(&bulk, &store, scan_files, args.node.network, rpc.as_ref(), &progress, &retry)?;
    } else {
        info!("the index is close to the node's tip: following without a bulk pass");
        store.enable_auto_compactions()?;
    }
    // The bulk pass's tweaks, or those a killed tweak pass left: the index serves everything else
    // meanwhile. Without a follower they are computed now; with one, beside it (below).
    if args.no_follow || rpc.is_none() {
        tweak_pass::run(&store, &progress, None)?;
        if args.no_follow {
            return Ok(());
        }
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
    follower.checkpoints = Some(checkpoint::listen(&args.node.db, wake_tx.clone(), stop.clone())?);
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
    // The follower computes each new block's tweaks at once; the pass's, of the blocks before,
    // take hours on mainnet, and the tip does not wait for them. A failed pass stops the
    // follower too, and the process says why.
    // Each side stops the other when it ends, by an error or a panic too (a guard's drop).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let result = std::thread::scope(|s| {
        let pass = s.spawn(|| {
            let guard = StopOnDrop(&stop);
            let done = tweak_pass::run(&store, &progress, Some(&stop));
            if done.is_ok() {
                // Done: the follower goes on.
                std::mem::forget(guard);
                service::status("following the node; the silent-payment tweaks are computed");
            }
            done
        });
        let followed = {
            let _guard = StopOnDrop(&stop);
            follower.run(&wake_rx)
        };
        let passed = pass.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the tweak pass panicked")));
        followed.and(passed)
    });
    service::stopping();
    result
}

/// The node's locks as the bulk pass takes them: `<datadir>/<network>/.lock` (every bitcoind
/// takes it) and `<blocksdir>/.lock` (recent ones take it too, and it is the one that counts when
/// the blocks directory is not under the data dir). `Err` says why not (a node runs).
pub fn take_node_lock(node: &NodeConfig) -> std::result::Result<NodeLock, NotTaken> {
    let netdir = node.datadir.join(node.net.subdir());
    NodeLock::try_take(&[&netdir, &node.blocks_dir])
}

/// The blk files as the bulk pass reads them: memory-mapped if the node's data-dir lock can be
/// taken (no node runs on that data dir, and none can start while it is held, so no mapped file
/// can change), else `files` (positional reads). Logs which, and why, once.
fn files_for_bulk_pass(files: &BlockFiles, node: &NodeConfig, with_node: bool) -> BlockFiles {
    match take_node_lock(node) {
        Ok(lock) => {
            let locks: Vec<String> = lock.paths().map(|p| p.display().to_string()).collect();
            let held = match with_node {
                true => "for the scan (released before the node is asked)",
                false => "until the bulk pass ends",
            };
            info!(
                locks = ?locks,
                "node stopped: blk files memory-mapped; the node's data-dir lock is held {held}, so no node can start and change them"
            );
            files.mapped(lock)
        }
        Err(why) if why.held => {
            info!(
                reason = %why,
                "node running: blk files read with positional reads; stop the node for a memory-mapped scan"
            );
            files.clone()
        }
        Err(why) => {
            warn!(
                reason = %why,
                "the node's data-dir lock cannot be taken, so whether a node runs is unknown: blk files read with positional reads"
            );
            files.clone()
        }
    }
}

/// The bulk pass: scan, best chain, batches, compaction; prints a summary. `scan_files` are the
/// files the scan reads (mapped or not); they are dropped after it, and with them the node's lock
/// unless the pass's own source shares it (offline).
fn bulk_pass(
    bulk: &bulk::Bulk,
    store: &Store,
    scan_files: BlockFiles,
    net: Net,
    rpc: Option<&Rpc>,
    progress: &Progress,
    retry: &NodeRetry,
) -> Result<()> {
    let t0 = Instant::now();
    service::status("bulk pass: scanning the block files");
    let map = scan::scan_blk_files(&scan_files, net, progress)?;
    let scan_secs = t0.elapsed().as_secs_f64();
    drop(scan_files);
    // A node error midway leaves the store as a kill would, and a kill's rerun resumes: so the
    // chain is asked again and the pass resumes (the scan, which needs no node, is kept).
    let summary = retry.run("the bulk pass", || {
        let chain = bestchain::select(&map, net, rpc)?;
        info!(blocks_in_files = map.len(), chain_height = chain.len() - 1, "chain selected");
        service::status(&format!("bulk pass: indexing {} blocks", chain.len()));
        bulk.run(&map, &chain).context("bulk indexing failed")
    })?;
    let sst: u64 = store.sst_bytes()?.iter().map(|(_, b)| b).sum();
    let (tip_height, tip_hash) = summary.tip.context("nothing indexed")?;
    let [rev, rows, sort] = summary.make_secs;
    println!(
        "indexed {} blocks ({} txs, {}) in {:.1}s: scan {scan_secs:.1}s, indexing {:.1}s ({} batches; summed \
         over batches: undo matched {rev:.1}s, rows {rows:.1}s, sorted {sort:.1}s, written {:.1}s), merge {:.1}s \
         ({} staged ranges); tip {} at height {}; index size {}",
        summary.blocks,
        summary.txs,
        HumanBytes(summary.bytes),
        t0.elapsed().as_secs_f64(),
        (summary.index_secs - summary.merge_secs).max(0.0),
        summary.batches,
        summary.write_secs,
        summary.merge_secs,
        summary.ranges,
        tip_hash,
        tip_height,
        HumanBytes(sst),
    );
    Ok(())
}

/// Retries what fails for a node that is down, restarting, overloaded (HTTP 503) or warming up:
/// waits with back-off (1 s doubling to 30 s), logged once; other errors end it.
struct NodeRetry<'a> {
    /// An in-process run's stop flag: set, the wait ends with an error.
    stop: Option<&'a AtomicBool>,
}

impl NodeRetry<'_> {
    fn run<T>(&self, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut backoff = Duration::from_secs(1);
        let mut waited = false;
        loop {
            match f() {
                Ok(v) => {
                    if waited {
                        info!("the node is back; {what} goes on");
                    }
                    return Ok(v);
                }
                Err(e) if follow::is_transient(&e) => {
                    if !waited {
                        warn!("node unavailable during {what} ({e:#}); retrying with back-off");
                        waited = true;
                    }
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
                            return Err(e.context("stopped while waiting for the node"));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Refuses a node that cannot give every block: one of another network, a pruned one, one still
/// validating an assumeutxo snapshot (the blocks below the snapshot are not in its files yet).
fn check_node_network(rpc: &Rpc, net: Net) -> Result<()> {
    let info = rpc.call("getblockchaininfo", json!([]))?;
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
    // Nodes before 26.0 have no getchainstates (nor assumeutxo): only a transient error counts.
    let states = match rpc.call("getchainstates", json!([])) {
        Err(e) if e.is_transient() => return Err(e.into()),
        r => r.ok(),
    };
    if let Some(states) = states {
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
    let v = rpc.call("getblockcount", json!([]))?;
    Ok(v.as_u64().is_some_and(|n| n <= tip as u64 + gap as u64))
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
