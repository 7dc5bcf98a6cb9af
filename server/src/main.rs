//! `blkindex-server`: serves the Electrum protocol from the index that `blkindex-indexer` writes,
//! opened read-only as a RocksDB secondary that catches up with the indexer.
//!
//! Flow: `state` (secondary DB + blk files + node RPC; a catch-up task announces new tips, a
//! mempool task tracks the node's mempool, `zmq` wakes both early) → `listen` (TCP, TLS,
//! WebSocket; connection limits) → `session` (one per connection: requests, batches,
//! notifications) → `methods` (the calls, by protocol version). `metrics` counts it all;
//! `peers` (with `--peer-discovery`) finds and verifies other public servers.
//! `admin` (with `sessions`, `bans`, `stats`) is the operator's side.

mod admin;
mod bans;
mod listen;
mod mempool;
mod methods;
mod metrics;
mod peers;
mod protocol;
mod script_cache;
mod session;
mod sessions;
mod state;
mod stats;
mod zmq;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use tracing::info;

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{args_with_config_file, init_reloadable_logging, run_main, NodeArgs};
use blkindex_shared::query::Index;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::service;
use blkindex_shared::store::{Mode, Store};

use listen::{Admission, Transport};

/// Serves Electrum clients from a blkindex index.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where this server keeps its secondary instances' files (default: <db>.server).
    #[arg(long, env = "BLKINDEX_SECONDARY_DIR", help_heading = "Node and index")]
    secondary_dir: Option<PathBuf>,
    /// Address for Electrum clients over TCP ("off": no TCP listener).
    #[arg(
        long,
        env = "BLKINDEX_ELECTRUM_ADDR",
        default_value = "127.0.0.1:50001",
        help_heading = "Listeners"
    )]
    electrum_addr: String,
    /// Address for Electrum clients over TLS (needs --tls-cert and --tls-key).
    #[arg(long, env = "BLKINDEX_TLS_ADDR", help_heading = "Listeners")]
    tls_addr: Option<SocketAddr>,
    /// Address for Electrum clients over WebSocket.
    #[arg(long, env = "BLKINDEX_WS_ADDR", help_heading = "Listeners")]
    ws_addr: Option<SocketAddr>,
    /// Address for Electrum clients over WebSocket with TLS (needs --tls-cert and --tls-key).
    #[arg(long, env = "BLKINDEX_WSS_ADDR", help_heading = "Listeners")]
    wss_addr: Option<SocketAddr>,
    /// TLS certificate chain, PEM.
    #[arg(long, env = "BLKINDEX_TLS_CERT", help_heading = "Listeners")]
    tls_cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, env = "BLKINDEX_TLS_KEY", help_heading = "Listeners")]
    tls_key: Option<PathBuf>,
    /// Address for Prometheus metrics over HTTP.
    #[arg(long, env = "BLKINDEX_METRICS_ADDR", help_heading = "Listeners")]
    metrics_addr: Option<SocketAddr>,
    /// Most connections open at once.
    #[arg(long, env = "BLKINDEX_MAX_CONNECTIONS", default_value_t = 20_000, help_heading = "Limits")]
    max_connections: usize,
    /// Most connections from one IP address (loopback exempt unless --limit-loopback).
    #[arg(long, env = "BLKINDEX_MAX_CONNECTIONS_PER_IP", default_value_t = 50, help_heading = "Limits")]
    max_connections_per_ip: usize,
    /// Apply --max-connections-per-ip to loopback clients too.
    #[arg(long, env = "BLKINDEX_LIMIT_LOOPBACK", help_heading = "Limits")]
    limit_loopback: bool,
    /// Seconds without a complete request before a connection is closed.
    #[arg(long, env = "BLKINDEX_IDLE_TIMEOUT", default_value_t = 600, help_heading = "Limits")]
    idle_timeout: u64,
    /// Longest request accepted, in bytes.
    #[arg(long, env = "BLKINDEX_MAX_REQUEST", default_value_t = 4 << 20, help_heading = "Limits")]
    max_request: usize,
    /// Most requests in one batch.
    #[arg(long, env = "BLKINDEX_MAX_BATCH", default_value_t = 100, help_heading = "Limits")]
    max_batch: usize,
    /// Longest history (or unspent list) served; longer ones get an error, never a cut list.
    #[arg(long, env = "BLKINDEX_MAX_HISTORY", default_value_t = 100_000, help_heading = "Limits")]
    max_history: usize,
    /// Memory for scripts' computed histories, kept between requests and blocks, in MiB.
    #[arg(long, env = "BLKINDEX_SCRIPT_CACHE_MB", default_value_t = 256, help_heading = "Limits")]
    script_cache_mb: u64,
    /// Text for server.banner.
    #[arg(long, env = "BLKINDEX_BANNER", help_heading = "Public server")]
    banner: Option<String>,
    /// Address for server.donation_address.
    #[arg(long, env = "BLKINDEX_DONATION_ADDRESS", default_value = "", help_heading = "Public server")]
    donation_address: String,
    /// Host name this server is reached at, for server.features (default: the listen address).
    #[arg(long, env = "BLKINDEX_PUBLIC_HOST", help_heading = "Public server")]
    public_host: Option<String>,
    /// A peer for server.peers.subscribe: "host [tPORT] [sPORT] [vVERSION]" (repeatable); with
    /// --peer-discovery, a seed.
    #[arg(long = "peer", help_heading = "Public server")]
    peers: Vec<String>,
    /// Find other public servers (seeds, their lists, server.add_peer) and list those verified.
    #[arg(long, env = "BLKINDEX_PEER_DISCOVERY", help_heading = "Public server")]
    peer_discovery: bool,
    /// With --peer-discovery: how often each peer is checked again, in seconds.
    #[arg(long, env = "BLKINDEX_PEER_CHECK_SECS", default_value_t = 600, help_heading = "Public server")]
    peer_check_secs: u64,
    /// How often to read the node's whole mempool, in milliseconds, when it publishes no ZMQ
    /// `sequence` (other ZMQ topics wake it sooner).
    #[arg(long, env = "BLKINDEX_MEMPOOL_MS", default_value_t = 500, help_heading = "Node and index")]
    mempool_ms: u64,
    /// With ZMQ `sequence` events applied as they come: how often to read the whole mempool
    /// anyway, in seconds (also after a reorg and any lost message).
    #[arg(long, env = "BLKINDEX_MEMPOOL_RESYNC_SECS", default_value_t = 60, help_heading = "Node and index")]
    mempool_resync_secs: u64,
    /// How often to catch up with the indexer, in milliseconds (ZMQ wakes it sooner).
    #[arg(long, env = "BLKINDEX_CATCH_UP_MS", default_value_t = 200, help_heading = "Node and index")]
    catch_up_ms: u64,
    /// Loopback address for the admin interface (blkindex-admin); none by default.
    #[arg(long, env = "BLKINDEX_ADMIN_ADDR", help_heading = "Administration")]
    admin_addr: Option<SocketAddr>,
    /// Unix socket for the admin interface, mode 0600; none by default.
    #[arg(long, env = "BLKINDEX_ADMIN_SOCKET", help_heading = "Administration")]
    admin_socket: Option<PathBuf>,
    /// Where banned subnets are kept (default: <secondary-dir>/banned.json).
    #[arg(long, env = "BLKINDEX_BAN_FILE", help_heading = "Administration")]
    ban_file: Option<PathBuf>,
    /// Seconds between status lines in the log (sessions, requests per second, tip); 0: none.
    #[arg(long, env = "BLKINDEX_LOG_STATS_SECS", default_value_t = 60, help_heading = "Administration")]
    log_stats_secs: u64,
}

fn main() {
    run_main(run)
}

fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let args = Args::parse_from(args_with_config_file(std::env::args_os().collect())?);
    if let Some(addr) = args.admin_addr {
        admin::check_addr(addr)?;
    }
    let log_filter = init_reloadable_logging("info");
    // Each connection is a file descriptor; ask for as many as the system allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let node = args.node.node()?;
    let tcp_addr: Option<SocketAddr> = match args.electrum_addr.as_str() {
        "off" => None,
        a => Some(a.parse().with_context(|| format!("--electrum-addr {a:?}"))?),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(listen::tls_acceptor(c, k)?),
        (None, None) if args.tls_addr.is_none() && args.wss_addr.is_none() => None,
        _ => anyhow::bail!("--tls-addr and --wss-addr need both --tls-cert and --tls-key"),
    };
    let secondary = args.secondary_dir.clone().unwrap_or_else(|| args.node.db.with_extension("server"));
    // Two secondary instances that take turns (see `state`), sharing the blk files' maps.
    let blocks = BlockFiles::open(&node.blocks_dir)?.for_random_reads();
    let open = |which: &str| -> Result<Index> {
        std::fs::create_dir_all(secondary.join(which))
            .with_context(|| format!("creating {}", secondary.join(which).display()))?;
        let store = Store::open(&args.node.db, Mode::Secondary(secondary.join(which)))?;
        store.check_identity(args.node.network, false)?;
        Index::new(store, blocks.clone())
    };
    let (index, standby) = (open("a")?, open("b")?);
    let rpc = Rpc::new(&node.rpc_addr, node.auth.clone());
    let published = node.zmq_notifications(&rpc);

    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(addr) = args.metrics_addr {
        let bound = metrics::serve(metrics.clone(), addr)?;
        info!(addr = %bound, "serving metrics over HTTP");
    }
    let limits = session::Limits {
        max_request: args.max_request,
        max_batch: args.max_batch,
        idle: Duration::from_secs(args.idle_timeout),
    };
    let ban_file = args.ban_file.clone().unwrap_or_else(|| secondary.join("banned.json"));
    let bans = Arc::new(bans::Bans::load(&ban_file)?);
    if !bans.list().is_empty() {
        info!(file = %ban_file.display(), subnets = bans.list().len(), "banned subnets loaded");
    }
    let admission =
        Admission::new(args.max_connections, args.max_connections_per_ip, args.limit_loopback, bans.clone());

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for (addr, transport) in [
            (tcp_addr, Transport::Tcp),
            (args.tls_addr, Transport::Tls),
            (args.ws_addr, Transport::Ws),
            (args.wss_addr, Transport::Wss),
        ] {
            if let Some(addr) = addr {
                listeners.push((listen::bind(addr, transport).await?, transport));
            }
        }
        anyhow::ensure!(!listeners.is_empty(), "no listener: give at least one of the listen addresses");
        let mut admin_listeners = Vec::new();
        if let Some(addr) = args.admin_addr {
            admin_listeners.push(admin::bind(addr).await?);
        }
        if let Some(path) = &args.admin_socket {
            admin_listeners.push(admin::bind_unix(path)?);
        }
        let info = info(&args, &listeners)?;
        let scripts = script_cache::ScriptCache::new(args.script_cache_mb << 20, metrics.clone());
        let (state, events_rx) =
            state::State::new(args.node.network, index, rpc, info, limits, metrics, scripts);
        info!(tip = ?state.tip.borrow().map(|t| t.height), "index opened");
        tokio::spawn(state.info.peers.clone().run());
        zmq::spawn(state.clone(), published);
        tokio::spawn(state::catch_up_loop(state.clone(), standby, Duration::from_millis(args.catch_up_ms)));
        tokio::spawn(state::mempool_loop(
            state.clone(),
            events_rx,
            Duration::from_millis(args.mempool_ms),
            Duration::from_secs(args.mempool_resync_secs),
        ));
        let log_every = (args.log_stats_secs > 0).then(|| Duration::from_secs(args.log_stats_secs));
        tokio::spawn(stats::run(state.clone(), log_every));
        if !admin_listeners.is_empty() {
            let admin = Arc::new(admin::Admin { state: state.clone(), bans, log_filter, started });
            for listener in admin_listeners {
                tokio::spawn(admin::accept_loop(listener, admin.clone()));
            }
        }
        for (listener, transport) in listeners {
            let acceptor = matches!(transport, Transport::Tls | Transport::Wss).then(|| tls.clone().unwrap());
            tokio::spawn(listen::accept_loop(
                listener,
                transport,
                acceptor,
                state.clone(),
                admission.clone(),
            ));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        service::ready("serving Electrum");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        service::stopping();
        info!("shutting down");
        Ok(())
    })?;
    // Sessions blocked on slow clients are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// What `server.*` reports: banner, donation address, our hosts and ports, configured peers.
fn info(args: &Args, listeners: &[(tokio::net::TcpListener, Transport)]) -> Result<methods::Info> {
    let mut ports = serde_json::Map::new();
    let mut host = args.public_host.clone();
    for (l, t) in listeners {
        let addr = l.local_addr()?;
        host.get_or_insert_with(|| addr.ip().to_string());
        let key = match t {
            Transport::Tcp => "tcp_port",
            Transport::Tls => "ssl_port",
            Transport::Ws => "ws_port",
            Transport::Wss => "wss_port",
        };
        ports.insert(key.into(), json!(addr.port()));
    }
    let mut hosts = serde_json::Map::new();
    hosts.insert(host.unwrap_or_default(), serde_json::Value::Object(ports));
    anyhow::ensure!(args.peer_check_secs > 0, "--peer-check-secs must be at least 1");
    let genesis_hash = args.node.network.genesis_hash().to_string();
    let peers = peers::Peers::new(peers::Config {
        discovery: args.peer_discovery,
        seeds: args.peers.clone(),
        check_every: Duration::from_secs(args.peer_check_secs),
        own_features: methods::features(&genesis_hash, &hosts, protocol::UNNEGOTIATED),
        genesis_hash,
        default_ports: match args.node.network.0 {
            bitcoin::Network::Bitcoin => (50001, 50002),
            _ => (51001, 51002),
        },
    })?;
    Ok(methods::Info {
        banner: args
            .banner
            .clone()
            .unwrap_or_else(|| format!("Welcome to blkindex {}", env!("CARGO_PKG_VERSION"))),
        donation_address: args.donation_address.clone(),
        hosts,
        peers: Arc::new(peers),
        max_history: args.max_history,
    })
}
