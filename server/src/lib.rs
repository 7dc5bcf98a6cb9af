//! `blkindex-server`'s library: serves the Electrum protocol from the index that `blkindex-indexer` writes,
//! opened read-only as a RocksDB secondary that catches up with the indexer.
//!
//! Modules, top to bottom; each imports only modules below it (`layers` tests it):
//! - the crate root (`Listeners`, `run`): wiring, as mini-redis's `server::run`; `main.rs` only
//!   parses flags, sets up logging and signals.  `admin`: the operator's side. `listen`: TCP, TLS, WebSocket listeners and
//!   connection limits. `session`: one per connection (requests, batches, notifications).
//!   `methods`: the calls, by protocol version. `call`: a request parsed once into a typed call.
//! - `status` (script and outpoint statuses); the tasks that keep the state current:
//!   `catch_up` (the standby index instance caught up and swapped in, new tips announced),
//!   `mempool::driver` (the node's mempool tracked), `zmq` (wakes both early), `stats`.
//! - `state`: what every session shares: the index (secondary DB + blk files), the mempool, the
//!   node's RPC, the tip; its parts `script_cache`, `mempool`, `peers` (with `--peer-discovery`,
//!   other public servers found and verified), `sessions`, `metrics`, `bans`.
//! - `protocol` (versions, the method table, error codes) and `config` (the flags, checked).

mod admin;
mod bans;
mod call;
mod catch_up;
mod config;
mod cost;
#[cfg(test)]
mod fuzzing;
#[cfg(test)]
mod layers;
mod listen;
mod mempool;
mod methods;
mod metrics;
mod outbox;
mod peers;
pub mod protocol;
mod proxy;
mod script_cache;
mod session;
mod sessions;
mod silent;
mod state;
mod stats;
mod status;
mod tasks;
mod tls;
mod turns;
mod tweaks;
mod zmq;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::LogFilterHandle;
use blkindex_shared::query::IndexReader;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::service;
use blkindex_shared::store::{Mode, Store};

pub use config::{Config, Transport};
use listen::Admission;

/// The longest a node call made for a client may take.
const CLIENT_RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What the server serves on, bound before `run` (port 0 lets the system choose: `addrs` tells
/// which), with the TLS material checked before anything is bound.
pub struct Listeners {
    electrum: Vec<(TcpListener, Transport)>,
    admin: Vec<admin::Listener>,
    tls: Option<TlsAcceptor>,
}

impl Listeners {
    /// Checks the TLS material, then binds every listener the configuration names.
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let tls = match &config.tls {
            Some((c, k)) => Some(tls::acceptor(c, k)?),
            None => None,
        };
        let mut electrum = Vec::new();
        for &(addr, transport) in &config.listen {
            electrum.push((listen::bind(addr, transport, config.reuse_port)?, transport));
        }
        let mut admin = Vec::new();
        if let Some(addr) = config.admin_addr {
            admin.push(admin::bind(addr).await?);
        }
        if let Some(path) = &config.admin_socket {
            admin.push(admin::bind_unix(path)?);
        }
        Ok(Listeners { electrum, admin, tls })
    }

    /// The Electrum listeners' addresses.
    pub fn addrs(&self) -> Result<Vec<(SocketAddr, Transport)>> {
        self.electrum.iter().map(|(l, t)| Ok((l.local_addr()?, *t))).collect()
    }
}

/// Serves until `shutdown` completes (then Ok) or one of the long-lived tasks ends (then an error
/// naming it). `log_filter` lets the admin interface change the log level (None: it cannot).
pub async fn run(
    config: Config,
    listeners: Listeners,
    log_filter: Option<LogFilterHandle>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let node = config.node.node()?;
    let secondary = &config.secondary_dir;
    blkindex_shared::query::set_readers(config.read_threads);
    // Two secondary instances that take turns (see `state`), sharing the blk files' maps.
    let blocks = BlockFiles::open(&node.blocks_dir)?;
    let open = |which: &str| -> Result<IndexReader> {
        std::fs::create_dir_all(secondary.join(which))
            .with_context(|| format!("creating {}", secondary.join(which).display()))?;
        let store = Store::open(&config.node.db, Mode::Secondary(secondary.join(which)))?;
        store.check_identity(config.node.network, false, None)?;
        // A checkpoint's block places are the source node's blk files until an indexer has
        // started on it here: served now, transactions would be read from the wrong bytes.
        if store.get_meta(blkindex_shared::schema::meta::CHECKPOINT)?.is_some() {
            anyhow::bail!(
                "{} is a checkpoint no indexer has started on yet: its block places are another node's \
                 blk files. Start blkindex-indexer on it first (it rewrites them for this node), then the server",
                config.node.db.display()
            );
        }
        IndexReader::new(store, blocks.clone())
    };
    let (index, standby) = (open("a")?, open("b")?);
    // Fixed when the index is created: read once.
    let tweak_start = index.tweak_start()?;
    // Nothing here waits for the node: a node that is down (or a server without one) does not
    // keep the confirmed data from being served.
    let rpc = (!config.no_node).then(|| Arc::new(Rpc::new(&node.rpc_addr, node.auth.clone())));
    // A client waits for its node call; a node that takes the connection and never answers must
    // not hold it for the background tasks' two minutes.
    let client_rpc =
        rpc.as_ref().map(|_| Rpc::with_timeout(&node.rpc_addr, node.auth.clone(), CLIENT_RPC_TIMEOUT));

    let metrics = Arc::new(metrics::Metrics::new());
    let bans = Arc::new(bans::Bans::load(&config.ban_file)?);
    if !bans.list().is_empty() {
        info!(file = %config.ban_file.display(), subnets = bans.list().len(), "banned subnets loaded");
    }
    let admission = Admission::new(
        config.max_connections,
        config.max_connections_per_ip,
        config.limit_loopback,
        bans.clone(),
    );

    let bound = listeners.addrs()?;
    let settings = config.settings(&bound);
    let peers = Arc::new(peers(&config, &settings.info, tweak_start.is_some())?);
    let scripts =
        script_cache::ScriptCache::new(config.script_cache_bytes, settings.info.max_history, metrics.clone());
    let (state, events_rx) =
        state::State::new(index, client_rpc, settings, metrics.clone(), scripts, peers, tweak_start);
    info!(tip = ?state.tip().map(|t| t.height), "index opened");
    match tweak_start {
        Some(from) => info!(from, "serving silent payments: the index has tweaks"),
        None => info!("no silent payments: the index has no tweaks"),
    }
    if let Some(addr) = config.metrics_addr {
        let (s, max_lag) = (state.clone(), config.health_max_lag);
        let bound = metrics::serve(metrics, addr, Box::new(move || stats::health_of(&s, max_lag)))?;
        info!(addr = %bound, "serving metrics over HTTP");
    }
    let mut tasks = tasks::Tasks::default();
    if config.peer_discovery {
        tasks.spawn("peer discovery", state.peers().clone().run());
    }
    tasks.spawn("catch-up", catch_up::run(state.clone(), standby, config.catch_up_every));
    match rpc {
        Some(rpc) => {
            info!(rpc = %node.rpc_addr, "the node's mempool, fees and broadcast through its RPC");
            tasks.spawn("ZMQ", zmq::run(state.clone(), rpc.clone(), node.zmq_configured()));
            let (every, resync) = (config.mempool_every, config.mempool_resync_every);
            tasks.spawn("mempool", mempool::driver::run(state.clone(), rpc, events_rx, every, resync));
            if tweak_start.is_some() {
                tasks.spawn("silent-payments mempool", silent::track_mempool(state.clone()));
            }
        }
        None => {
            info!(
                "running without a node (--no-node): confirmed data only; mempool, broadcast and fee calls \
                 answer an error"
            );
            // Given with --no-node (often from a unit file or the environment kept for the usual
            // start): said once, so that nobody expects the node to be asked.
            let ignored: Vec<&str> = [
                ("--daemon-rpc-addr", config.node.daemon_rpc_addr.is_some()),
                ("--cookie", config.node.cookie.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect();
            if !ignored.is_empty() {
                warn!("--no-node: ignoring {} (no node is asked)", ignored.join(" and "));
            }
        }
    }
    tasks.spawn("status line", stats::run(state.clone(), config.log_stats_every));
    if !listeners.admin.is_empty() {
        let admin = Arc::new(admin::Admin { state: state.clone(), bans, log_filter, started });
        for listener in listeners.admin {
            tasks.spawn("admin listener", admin::accept_loop(listener, admin.clone()));
        }
    }
    for (listener, transport) in listeners.electrum {
        info!(addr = %listener.local_addr()?, transport = transport.name(), "serving Electrum over {}", transport.name().to_uppercase());
        let acceptor =
            matches!(transport, Transport::Tls | Transport::Wss).then(|| listeners.tls.clone().unwrap());
        let proxy = config.proxy_protocol.contains(&transport);
        if proxy {
            info!(transport = transport.name(), "its connections must start with a PROXY protocol v2 header");
        }
        let accept =
            listen::accept_loop(listener, transport, proxy, acceptor, state.clone(), admission.clone());
        tasks.spawn("Electrum listener", accept);
    }
    service::ready("serving Electrum");
    let failed = tokio::select! {
        _ = shutdown => None,
        e = tasks.first_failure() => Some(e),
    };
    service::stopping();
    match failed {
        None => info!("shutting down"),
        Some(e) => return Err(e),
    }
    Ok(())
}

/// The other public servers: configured, or with discovery found and verified.
fn peers(config: &Config, info: &config::Info, silent: bool) -> Result<peers::Peers> {
    let genesis_hash = config.node.network.genesis_hash().to_string();
    peers::Peers::new(peers::Config {
        discovery: config.peer_discovery,
        seeds: config.peers.clone(),
        check_every: config.peer_check_every,
        own_features: methods::features(&genesis_hash, &info.hosts, protocol::UNNEGOTIATED, silent),
        genesis_hash,
        default_ports: match config.node.network.0 {
            bitcoin::Network::Bitcoin => (50001, 50002),
            _ => (51001, 51002),
        },
    })
}
