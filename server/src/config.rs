//! The server's configuration: its flags (and their environment variables and config file),
//! checked once into a `Config`, and the settings the layers above run with: `Limits` for
//! sessions, `Info` for the `server.*` methods, the `Transport` of each listener. It imports
//! nothing of the server's; everything else may import it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use blkindex_shared::config::{args_with_config_file, NodeArgs};
use blkindex_shared::Net;

/// Serves Electrum clients from a blkindex index.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where this server keeps its secondary instances' files (default: <db>.server).
    #[arg(long, env = "BLKINDEX_SECONDARY_DIR", help_heading = "Node and index")]
    secondary_dir: Option<PathBuf>,
    /// Serve the index without asking any node (no RPC, cookie or ZMQ): confirmed data only;
    /// mempool, broadcast and fee calls answer an error. For an index whose node is down,
    /// reindexing, or elsewhere; the blk files must still be readable.
    #[arg(long, env = "BLKINDEX_NO_NODE", help_heading = "Node and index")]
    no_node: bool,
    /// Threads that read transactions for long histories, so many reads in flight at once across
    /// all requests (an SSD serves tens at once in the time of one; 1: one after another).
    #[arg(long, env = "BLKINDEX_READ_THREADS", default_value_t = blkindex_shared::query::DEFAULT_READERS,
          value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Node and index")]
    read_threads: u16,
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
    /// Address for Prometheus metrics over HTTP (`/metrics`), and `/health` for a balancer.
    #[arg(long, env = "BLKINDEX_METRICS_ADDR", help_heading = "Listeners")]
    metrics_addr: Option<SocketAddr>,
    /// Listen with SO_REUSEPORT, so that several servers on one host share the Electrum ports
    /// (the kernel spreads new connections among them).
    #[arg(long, env = "BLKINDEX_REUSE_PORT", help_heading = "Listeners")]
    reuse_port: bool,
    /// Listeners (tcp, tls, ws, wss; comma-separated) whose connections come from a balancer
    /// and start with a PROXY protocol v2 header naming the client; one without is refused.
    #[arg(long, env = "BLKINDEX_PROXY_PROTOCOL", value_delimiter = ',', help_heading = "Listeners")]
    proxy_protocol: Vec<String>,
    /// `/health` answers 503 once the server has not caught up with the indexer for this
    /// many seconds.
    #[arg(long, env = "BLKINDEX_HEALTH_MAX_LAG_SECS", default_value_t = 10, help_heading = "Listeners")]
    health_max_lag_secs: u64,
    /// Most connections open at once.
    #[arg(long, env = "BLKINDEX_MAX_CONNECTIONS", default_value_t = 20_000, help_heading = "Limits")]
    max_connections: usize,
    /// Most connections from one IP address, an IPv6 client counted by /64 (loopback exempt
    /// unless --limit-loopback).
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
    /// Seconds a connection may hold a partial request line (bytes without their newline).
    #[arg(long, env = "BLKINDEX_REQUEST_TIMEOUT", default_value_t = 30, help_heading = "Limits")]
    request_timeout: u64,
    /// Longest history (or unspent list) served; longer ones get an error, never a cut list.
    /// Checked from the index's row count before any transaction is read; balances, statuses
    /// and subscriptions of such scripts get the same error.
    #[arg(long, env = "BLKINDEX_MAX_HISTORY", default_value_t = 80_000, help_heading = "Limits")]
    max_history: usize,
    /// Bytes of replies and notifications one session may have waiting to be written; also the
    /// longest reply (or batch of replies). Must hold a reply of --max-history entries.
    #[arg(long, env = "BLKINDEX_MAX_SEND_BUFFER", default_value_t = 12 << 20, help_heading = "Limits")]
    max_send_buffer: usize,
    /// Bytes all sessions together may have waiting to be written.
    #[arg(long, env = "BLKINDEX_MAX_SEND_BUFFERS", default_value_t = 1 << 30, help_heading = "Limits")]
    max_send_buffers: usize,
    /// Seconds a reply may wait for room in its session's send buffer, and a write for the
    /// client to take it, before the client is disconnected as not reading.
    #[arg(long, env = "BLKINDEX_SEND_TIMEOUT", default_value_t = 30, help_heading = "Limits")]
    send_timeout: u64,
    /// Most subscriptions (scripts and outpoints) of one session.
    #[arg(long, env = "BLKINDEX_MAX_SUBSCRIPTIONS", default_value_t = 10_000, help_heading = "Limits")]
    max_subscriptions: usize,
    /// A session's cost (0.1 per request + 1 per millisecond of work) over which each request
    /// waits until the cost has decayed back to it.
    #[arg(long, env = "BLKINDEX_COST_SOFT_LIMIT", default_value_t = 5_000.0, help_heading = "Limits")]
    cost_soft_limit: f64,
    /// A session's cost over which it is disconnected.
    #[arg(long, env = "BLKINDEX_COST_HARD_LIMIT", default_value_t = 50_000.0, help_heading = "Limits")]
    cost_hard_limit: f64,
    /// Cost units forgiven per second (500: a session may keep half a core busy).
    #[arg(long, env = "BLKINDEX_COST_DECAY", default_value_t = 500.0, help_heading = "Limits")]
    cost_decay: f64,
    /// Node calls made for clients (fees, broadcasts, mempool info) in flight at once; others
    /// wait up to 10 s, then get an error.
    #[arg(long, env = "BLKINDEX_MAX_NODE_CALLS", default_value_t = 4, help_heading = "Limits")]
    max_node_calls: usize,
    /// Seconds the node's fee estimates and relay fees are reused for.
    #[arg(long, env = "BLKINDEX_FEE_CACHE_SECS", default_value_t = 10, help_heading = "Limits")]
    fee_cache_secs: u64,
    /// Memory for scripts' computed histories, kept between requests and blocks, in MiB.
    #[arg(long, env = "BLKINDEX_SCRIPT_CACHE_MB", default_value_t = 256, help_heading = "Limits")]
    script_cache_mb: u64,
    /// Most silent-payment subscriptions (blockchain.silentpayments.subscribe) of one session.
    #[arg(
        long,
        env = "BLKINDEX_SP_MAX_SUBSCRIPTIONS",
        default_value_t = 100,
        help_heading = "Silent payments"
    )]
    sp_max_subscriptions: usize,
    /// Most labels of one silent-payment subscription, besides change (label 0).
    #[arg(long, env = "BLKINDEX_SP_MAX_LABELS", default_value_t = 10, help_heading = "Silent payments")]
    sp_max_labels: usize,
    /// Silent-payment scans of past blocks in flight at once, over all sessions; a subscribe
    /// past it is refused until one ends.
    #[arg(long, env = "BLKINDEX_SP_MAX_SCANS", default_value_t = 8, help_heading = "Silent payments")]
    sp_max_scans: usize,
    /// Of those, most from one client address (counted as --max-connections-per-ip counts:
    /// an IPv4 address or an IPv6 /64; loopback exempt unless --limit-loopback), so that one
    /// client cannot hold every slot.
    #[arg(long, env = "BLKINDEX_SP_MAX_SCANS_PER_IP", default_value_t = 2, help_heading = "Silent payments")]
    sp_max_scans_per_ip: usize,
    /// Live silent-payment subscriptions (those without an end height) at once, over all
    /// sessions: each costs a check of every eligible transaction of every new block (about
    /// 40 µs of a scan thread a transaction, 1,500 transactions a mainnet block), for as long
    /// as it lives. A subscribe past it is refused until one is dropped.
    #[arg(long, env = "BLKINDEX_SP_MAX_LIVE", default_value_t = 1000, help_heading = "Silent payments")]
    sp_max_live: usize,
    /// Of those, most from one client address (counted as --sp-max-scans-per-ip counts), so
    /// that one client's sessions cannot hold them all.
    #[arg(long, env = "BLKINDEX_SP_MAX_LIVE_PER_IP", default_value_t = 20, help_heading = "Silent payments")]
    sp_max_live_per_ip: usize,
    /// Live subscriptions from which a new block is checked with one table of multiples per
    /// transaction's tweak, made once and shared by all of them (about 2.3 ms a transaction;
    /// each check then saves about 18 µs, on the machine measured); below it, each subscription checks on its own.
    #[arg(long, env = "BLKINDEX_SP_TABLE_FROM", default_value_t = 128, help_heading = "Silent payments")]
    sp_table_from: usize,
    /// Threads that run silent-payment scans (their elliptic-curve work), beside those that
    /// answer requests.
    #[arg(long, env = "BLKINDEX_SP_SCAN_THREADS", default_value_t = 1, help_heading = "Silent payments")]
    sp_scan_threads: usize,
    /// CPU seconds one silent-payment scan of past blocks may use; a scan over it ends its
    /// session with an error (-101).
    #[arg(
        long,
        env = "BLKINDEX_SP_SCAN_CPU_SECS",
        default_value_t = 600.0,
        help_heading = "Silent payments"
    )]
    sp_scan_cpu_secs: f64,
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

/// The flags, checked and with their defaults filled in.
pub struct Config {
    pub node: NodeArgs,
    /// Where the secondary instances' files go.
    pub secondary_dir: PathBuf,
    pub read_threads: usize,
    /// `--no-node`: no RPC, no ZMQ, no mempool.
    pub no_node: bool,
    /// The Electrum listeners to bind, in this order: TCP, TLS, WebSocket, WSS; at least one.
    pub listen: Vec<(SocketAddr, Transport)>,
    /// TLS certificate chain and private key (PEM files), when given.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub metrics_addr: Option<SocketAddr>,
    /// `--reuse-port`: SO_REUSEPORT on the Electrum listeners.
    pub reuse_port: bool,
    /// The listeners whose connections start with a PROXY protocol v2 header.
    pub proxy_protocol: Vec<Transport>,
    /// Longest time since the last catch-up with the indexer for `/health` to answer 200.
    pub health_max_lag: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub limit_loopback: bool,
    pub limits: Limits,
    pub script_cache_bytes: u64,
    /// `--peer`: configured peers, or with discovery, seeds.
    pub peers: Vec<String>,
    pub peer_discovery: bool,
    pub peer_check_every: Duration,
    pub mempool_every: Duration,
    pub mempool_resync_every: Duration,
    pub catch_up_every: Duration,
    /// A loopback address (checked).
    pub admin_addr: Option<SocketAddr>,
    pub admin_socket: Option<PathBuf>,
    pub ban_file: PathBuf,
    /// None: no periodic status line.
    pub log_stats_every: Option<Duration>,
    banner: String,
    donation_address: String,
    public_host: Option<String>,
    max_history: usize,
}

impl Config {
    /// Reads the command line (with the config file and the environment) and checks it.
    pub fn from_command_line() -> Result<Config> {
        let args = Args::parse_from(args_with_config_file(std::env::args_os().collect())?);
        Config::check(args)
    }

    /// As the command line `args` (the program's name first) would configure it, for a server run
    /// in-process; no config file is read.
    pub fn from_args<I: Into<std::ffi::OsString> + Clone>(
        args: impl IntoIterator<Item = I>,
    ) -> Result<Config> {
        Config::check(Args::try_parse_from(args)?)
    }

    fn check(a: Args) -> Result<Config> {
        if let Some(addr) = a.admin_addr {
            check_admin_addr(addr)?;
        }
        let tcp_addr: Option<SocketAddr> = match a.electrum_addr.as_str() {
            "off" => None,
            addr => Some(addr.parse().with_context(|| format!("--electrum-addr {addr:?}"))?),
        };
        let tls = match (a.tls_cert, a.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) if a.tls_addr.is_none() && a.wss_addr.is_none() => None,
            _ => anyhow::bail!("--tls-addr and --wss-addr need both --tls-cert and --tls-key"),
        };
        let listen: Vec<(SocketAddr, Transport)> = [
            (tcp_addr, Transport::Tcp),
            (a.tls_addr, Transport::Tls),
            (a.ws_addr, Transport::Ws),
            (a.wss_addr, Transport::Wss),
        ]
        .into_iter()
        .filter_map(|(addr, t)| Some((addr?, t)))
        .collect();
        anyhow::ensure!(!listen.is_empty(), "no listener: give at least one of the listen addresses");
        let mut proxy_protocol = Vec::new();
        for name in &a.proxy_protocol {
            let t = [Transport::Tcp, Transport::Tls, Transport::Ws, Transport::Wss]
                .into_iter()
                .find(|t| t.name() == name)
                .with_context(|| format!("--proxy-protocol {name:?}: name tcp, tls, ws or wss"))?;
            anyhow::ensure!(
                listen.iter().any(|(_, l)| *l == t),
                "--proxy-protocol {name}: there is no {name} listener"
            );
            proxy_protocol.push(t);
        }
        anyhow::ensure!(a.health_max_lag_secs > 0, "--health-max-lag-secs must be at least 1");
        anyhow::ensure!(a.peer_check_secs > 0, "--peer-check-secs must be at least 1");
        // The longest entry of a list reply (an unspent output) is about 134 bytes.
        let list_reply = a.max_history.saturating_mul(LIST_ENTRY_BYTES).saturating_add(1024);
        anyhow::ensure!(
            a.max_send_buffer >= list_reply,
            "--max-send-buffer {} cannot hold a reply of --max-history {} entries: give at least {list_reply} \
             or lower --max-history",
            a.max_send_buffer,
            a.max_history
        );
        anyhow::ensure!(a.max_send_buffer <= 1 << 30, "--max-send-buffer is at most 1 GiB");
        anyhow::ensure!(
            a.max_send_buffers >= a.max_send_buffer,
            "--max-send-buffers must be at least --max-send-buffer"
        );
        anyhow::ensure!(
            a.cost_decay > 0.0 && a.cost_soft_limit > 0.0 && a.cost_hard_limit >= a.cost_soft_limit,
            "the cost limits need --cost-decay > 0 and 0 < --cost-soft-limit <= --cost-hard-limit"
        );
        anyhow::ensure!(a.max_node_calls > 0, "--max-node-calls must be at least 1");
        anyhow::ensure!(
            a.sp_scan_threads > 0
                && a.sp_max_scans > 0
                && a.sp_max_scans_per_ip > 0
                && a.sp_max_live > 0
                && a.sp_max_live_per_ip > 0
                && a.sp_scan_cpu_secs > 0.0,
            "--sp-scan-threads, --sp-max-scans(-per-ip), --sp-max-live(-per-ip) and --sp-scan-cpu-secs \
             must be above 0"
        );
        let secondary_dir = a.secondary_dir.unwrap_or_else(|| a.node.db.with_extension("server"));
        Ok(Config {
            ban_file: a.ban_file.unwrap_or_else(|| secondary_dir.join("banned.json")),
            secondary_dir,
            read_threads: a.read_threads as usize,
            no_node: a.no_node,
            node: a.node,
            listen,
            tls,
            metrics_addr: a.metrics_addr,
            reuse_port: a.reuse_port,
            proxy_protocol,
            health_max_lag: Duration::from_secs(a.health_max_lag_secs),
            max_connections: a.max_connections,
            max_connections_per_ip: a.max_connections_per_ip,
            limit_loopback: a.limit_loopback,
            limits: Limits {
                max_request: a.max_request,
                max_batch: a.max_batch,
                idle: Duration::from_secs(a.idle_timeout),
                request_timeout: Duration::from_secs(a.request_timeout),
                send_timeout: Duration::from_secs(a.send_timeout),
                max_send_buffer: a.max_send_buffer,
                max_send_buffers: a.max_send_buffers,
                max_subscriptions: a.max_subscriptions,
                cost: CostLimits { soft: a.cost_soft_limit, hard: a.cost_hard_limit, decay: a.cost_decay },
                max_node_calls: a.max_node_calls,
                fee_cache: Duration::from_secs(a.fee_cache_secs),
                silent: SilentLimits {
                    max_subscriptions: a.sp_max_subscriptions,
                    max_labels: a.sp_max_labels,
                    max_scans: a.sp_max_scans,
                    max_scans_per_ip: a.sp_max_scans_per_ip,
                    max_live: a.sp_max_live,
                    max_live_per_ip: a.sp_max_live_per_ip,
                    limit_loopback: a.limit_loopback,
                    table_from: a.sp_table_from,
                    scan_threads: a.sp_scan_threads,
                    scan_cpu: Duration::from_secs_f64(a.sp_scan_cpu_secs),
                },
            },
            script_cache_bytes: a.script_cache_mb << 20,
            peers: a.peers,
            peer_discovery: a.peer_discovery,
            peer_check_every: Duration::from_secs(a.peer_check_secs),
            mempool_every: Duration::from_millis(a.mempool_ms),
            mempool_resync_every: Duration::from_secs(a.mempool_resync_secs),
            catch_up_every: Duration::from_millis(a.catch_up_ms),
            admin_addr: a.admin_addr,
            admin_socket: a.admin_socket,
            log_stats_every: (a.log_stats_secs > 0).then(|| Duration::from_secs(a.log_stats_secs)),
            banner: a.banner.unwrap_or_else(|| format!("Welcome to blkindex {}", env!("CARGO_PKG_VERSION"))),
            donation_address: a.donation_address,
            public_host: a.public_host,
            max_history: a.max_history,
        })
    }

    /// The settings the server runs with, with the hosts and ports of the listeners as bound
    /// (a port 0 becomes the one the system chose).
    pub fn settings(&self, bound: &[(SocketAddr, Transport)]) -> Settings {
        Settings { net: self.node.network, info: self.info(bound), limits: self.limits.clone() }
    }

    /// What `server.*` reports.
    fn info(&self, bound: &[(SocketAddr, Transport)]) -> Info {
        let mut ports = serde_json::Map::new();
        let mut host = self.public_host.clone();
        for (addr, t) in bound {
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
        hosts.insert(host.unwrap_or_default(), Value::Object(ports));
        Info {
            banner: self.banner.clone(),
            donation_address: self.donation_address.clone(),
            hosts,
            max_history: self.max_history,
        }
    }
}

/// Refuses an admin address other hosts could reach.
pub fn check_admin_addr(addr: SocketAddr) -> Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "--admin-addr {addr}: the admin interface has no authentication and listens only on a \
         loopback address (127.0.0.1 or [::1])"
    );
    Ok(())
}

/// What carries a client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// What the layers above read and never change.
#[derive(Clone, Debug)]
pub struct Settings {
    pub net: Net,
    pub info: Info,
    pub limits: Limits,
}

/// Bytes a list reply may take per entry (an unspent output's `{"tx_hash":…,"value":…},`).
pub const LIST_ENTRY_BYTES: usize = 136;

/// What a session allows a client.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request: usize,
    pub max_batch: usize,
    pub idle: Duration,
    /// How long a partial request line may be held.
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    /// Bytes queued for one session (and the longest reply); for all of them.
    pub max_send_buffer: usize,
    pub max_send_buffers: usize,
    pub max_subscriptions: usize,
    pub cost: CostLimits,
    pub max_node_calls: usize,
    pub fee_cache: Duration,
    pub silent: SilentLimits,
}

/// What silent-payment scanning may take (the `--sp-*` flags).
#[derive(Clone, Copy, Debug)]
pub struct SilentLimits {
    /// Subscriptions per session, and labels per subscription (change not counted).
    pub max_subscriptions: usize,
    pub max_labels: usize,
    /// Scans of past blocks in flight over the whole server, and from one client address
    /// (loopback's counted only with `limit_loopback`).
    pub max_scans: usize,
    pub max_scans_per_ip: usize,
    /// Live subscriptions over the whole server, and from one client address (counted alike).
    pub max_live: usize,
    pub max_live_per_ip: usize,
    pub limit_loopback: bool,
    /// Members of a new block's batch from which its transactions' tweak tables are made.
    pub table_from: usize,
    /// Threads doing scans' elliptic-curve work at once.
    pub scan_threads: usize,
    /// CPU time one scan of past blocks may take.
    pub scan_cpu: Duration,
}

/// A session's cost budget (see `cost`).
#[derive(Clone, Copy, Debug)]
pub struct CostLimits {
    pub soft: f64,
    pub hard: f64,
    /// Units forgiven per second.
    pub decay: f64,
}

/// Server settings the methods report.
#[derive(Clone, Debug, Default)]
pub struct Info {
    pub banner: String,
    pub donation_address: String,
    /// `server.features`'s hosts: host → ports.
    pub hosts: serde_json::Map<String, Value>,
    /// A history longer than this is an error, never a silently cut one.
    pub max_history: usize,
}
