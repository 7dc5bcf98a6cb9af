//! `blkindex-server`: serves the Electrum protocol from the index that `blkindex-indexer` writes,
//! opened read-only as a RocksDB secondary that catches up with the indexer.
//!
//! Modules, top to bottom; each imports only modules below it (`layers` tests it):
//! - `main`: wiring. `admin`: the operator's side. `listen`: TCP, TLS, WebSocket listeners and
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
#[cfg(test)]
mod layers;
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
mod status;
mod tasks;
mod tls;
mod zmq;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::info;

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{init_reloadable_logging, run_main};
use blkindex_shared::query::IndexReader;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::service;
use blkindex_shared::store::{Mode, Store};

use config::{Config, Transport};
use listen::Admission;

fn main() {
    run_main(run)
}

fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let config = Config::from_command_line()?;
    let log_filter = init_reloadable_logging("info");
    // Each connection is a file descriptor; ask for as many as the system allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let node = config.node.node()?;
    let tls = match &config.tls {
        Some((c, k)) => Some(tls::acceptor(c, k)?),
        None => None,
    };
    let secondary = &config.secondary_dir;
    // Two secondary instances that take turns (see `state`), sharing the blk files' maps.
    let blocks = BlockFiles::open(&node.blocks_dir)?.for_random_reads();
    let open = |which: &str| -> Result<IndexReader> {
        std::fs::create_dir_all(secondary.join(which))
            .with_context(|| format!("creating {}", secondary.join(which).display()))?;
        let store = Store::open(&config.node.db, Mode::Secondary(secondary.join(which)))?;
        store.check_identity(config.node.network, false, None)?;
        IndexReader::new(store, blocks.clone())
    };
    let (index, standby) = (open("a")?, open("b")?);
    let rpc = Rpc::new(&node.rpc_addr, node.auth.clone());
    let published = node.zmq_notifications(&rpc);

    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(metrics.clone(), addr)?;
        info!(addr = %bound, "serving metrics over HTTP");
    }
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

    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async move {
        let mut listeners = Vec::new();
        for &(addr, transport) in &config.listen {
            listeners.push((listen::bind(addr, transport).await?, transport));
        }
        let mut admin_listeners = Vec::new();
        if let Some(addr) = config.admin_addr {
            admin_listeners.push(admin::bind(addr).await?);
        }
        if let Some(path) = &config.admin_socket {
            admin_listeners.push(admin::bind_unix(path)?);
        }
        let bound = listeners.iter().map(|(l, t)| Ok((l.local_addr()?, *t))).collect::<Result<Vec<_>>>()?;
        let settings = config.settings(&bound);
        let peers = Arc::new(peers(&config, &settings.info)?);
        let scripts = script_cache::ScriptCache::new(config.script_cache_bytes, metrics.clone());
        let (state, events_rx) = state::State::new(index, rpc, settings, metrics, scripts, peers);
        info!(tip = ?state.tip().map(|t| t.height), "index opened");
        let mut tasks = tasks::Tasks::default();
        if config.peer_discovery {
            tasks.spawn("peer discovery", state.peers().clone().run());
        }
        zmq::spawn(&mut tasks, state.clone(), published);
        tasks.spawn("catch-up", catch_up::run(state.clone(), standby, config.catch_up_every));
        tasks.spawn(
            "mempool",
            mempool::driver::run(state.clone(), events_rx, config.mempool_every, config.mempool_resync_every),
        );
        tasks.spawn("status line", stats::run(state.clone(), config.log_stats_every));
        if !admin_listeners.is_empty() {
            let admin = Arc::new(admin::Admin { state: state.clone(), bans, log_filter, started });
            for listener in admin_listeners {
                tasks.spawn("admin listener", admin::accept_loop(listener, admin.clone()));
            }
        }
        for (listener, transport) in listeners {
            let acceptor = matches!(transport, Transport::Tls | Transport::Wss).then(|| tls.clone().unwrap());
            let accept = listen::accept_loop(listener, transport, acceptor, state.clone(), admission.clone());
            tasks.spawn("Electrum listener", accept);
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        service::ready("serving Electrum");
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            e = tasks.first_failure() => Some(e),
        };
        service::stopping();
        match failed {
            None => info!("shutting down"),
            Some(e) => return Err(e),
        }
        anyhow::Ok(())
    });
    // Sessions blocked on slow clients are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The other public servers: configured, or with discovery found and verified.
fn peers(config: &Config, info: &config::Info) -> Result<peers::Peers> {
    let genesis_hash = config.node.network.genesis_hash().to_string();
    peers::Peers::new(peers::Config {
        discovery: config.peer_discovery,
        seeds: config.peers.clone(),
        check_every: config.peer_check_every,
        own_features: methods::features(&genesis_hash, &info.hosts, protocol::UNNEGOTIATED),
        genesis_hash,
        default_ports: match config.node.network.0 {
            bitcoin::Network::Bitcoin => (50001, 50002),
            _ => (51001, 51002),
        },
    })
}
