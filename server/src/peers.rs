//! Peer discovery between public servers, off by default (`--peer-discovery`): which other
//! Electrum servers `server.peers.subscribe` lists. Candidates come from the `--peer` seeds, from
//! the lists of peers we check, and from `server.add_peer` announcements. A candidate is listed
//! only after we connected to its TCP port and its `server.features` named our genesis block, a
//! protocol range we share and the host and port we reached it at; an announced host must also
//! resolve to the address of the client that announced it. Listed peers are checked again every
//! `--peer-check-secs` and forgotten after `MAX_FAILED_CHECKS` failures in a row (or `MAX_AGE`
//! without an answer). Every check also announces us to the peer when its list lacks us. A
//! server reached at a public host visits no private address other than its seeds.
//!
//! Not done: peers are checked over TCP only (the `s` port listed is the one the peer reports),
//! and onion hosts are never listed (reaching them needs a Tor proxy, which we do not have).
//! Without discovery the `--peer` entries are listed as configured and `add_peer` answers false.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, LinesCodec};
use tracing::{debug, info};

use crate::protocol::{parse_version, version_string, Version, PROTOCOL_MAX};

/// Peers listed at most; a peer verified beyond this is not kept.
const MAX_PEERS: usize = 200;
/// Peers listed at most per network (an IPv4 /16, an IPv6 /48: see `network_of`), so that one
/// machine, or one operator's block of addresses, cannot fill the list that wallets are given.
const MAX_PEERS_PER_IP: usize = 4;
/// Verifications and checks running at once. An announcement that finds none free is answered
/// false; scheduled checks wait for one.
const MAX_IN_FLIGHT: usize = 8;
/// `server.add_peer` calls one session may make (a server announces itself once per connection).
pub const MAX_ADD_PEER_PER_SESSION: u32 = 3;
/// New candidates taken from one peer's list per check.
const MAX_LEARNED_PER_LIST: usize = 16;
/// A listed peer that fails this many checks in a row is forgotten.
const MAX_FAILED_CHECKS: u32 = 3;
/// A listed peer that has not answered for this long is forgotten at its next failed check.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One whole visit: name lookup, connection, and its four calls.
const VISIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest reply line read from a peer.
const MAX_REPLY: usize = 1 << 20;
/// The lowest version we ask peers for: `server.features` and `add_peer` exist since 1.1, and
/// servers that still speak below 1.4 are gone.
const PEER_PROTOCOL_MIN: Version = (1, 4, 0);

/// How the server was configured to deal with peers.
pub struct Config {
    pub discovery: bool,
    /// `--peer` values: "host [tPORT] [sPORT] [vVERSION] [pPRUNING]".
    pub seeds: Vec<String>,
    pub check_every: Duration,
    pub genesis_hash: String,
    /// Our `server.features`, as announced to peers.
    pub own_features: Value,
    /// The TCP and TLS ports a bare `t` or `s` means on this network (ElectrumX's defaults).
    pub default_ports: (u16, u16),
}

/// A peer's identity: several servers may share a host (one per port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    host: String,
    tcp_port: u16,
}

/// A listed peer: what its last answer said, and how its checks went.
#[derive(Debug)]
struct Peer {
    ip: IpAddr,
    ssl_port: Option<u16>,
    protocol_max: Version,
    pruning: Option<u64>,
    last_seen: Instant,
    failures: u32,
}

pub struct Peers {
    discovery: bool,
    /// Without discovery: the `--peer` entries, listed as configured.
    configured: Vec<Value>,
    /// With discovery: the seeds, checked every round whether listed or not.
    seeds: Vec<Key>,
    check_every: Duration,
    genesis_hash: String,
    own_features: Value,
    /// The (host, TCP port)s our features name, so that we never list ourselves.
    own: Vec<Key>,
    /// Whether we are reached at a public name or address (not in a test or a private network).
    public: bool,
    default_ports: (u16, u16),
    listed: Mutex<HashMap<Key, Peer>>,
    /// Peers being visited now; each holds one of `permits`, so at most `MAX_IN_FLIGHT`.
    busy: Mutex<HashSet<Key>>,
    permits: Arc<Semaphore>,
    /// Where in a peer's list `learn` starts next.
    learn_from: AtomicUsize,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("discovery", &self.discovery).field("seeds", &self.seeds).finish()
    }
}

impl Default for Peers {
    /// No discovery, no peers.
    fn default() -> Self {
        Self::new(Config {
            discovery: false,
            seeds: Vec::new(),
            check_every: Duration::from_secs(600),
            genesis_hash: String::new(),
            own_features: json!({}),
            default_ports: (50001, 50002),
        })
        .expect("no seeds to refuse")
    }
}

impl Peers {
    pub fn new(c: Config) -> Result<Self> {
        let mut configured = Vec::new();
        let mut seeds = Vec::new();
        for p in &c.seeds {
            let mut words = p.split_whitespace();
            let host = words.next().context("--peer needs a host")?.to_string();
            let features: Vec<String> = words.map(str::to_string).collect();
            ensure!(
                features.iter().all(|f| f.starts_with(['t', 's', 'v', 'p'])),
                "--peer {p:?}: features are tPORT, sPORT, vVERSION or pPRUNING"
            );
            if c.discovery {
                let tcp_port = port_word(&features, 't', c.default_ports.0)
                    .with_context(|| format!("--peer {p:?}: peers are checked over TCP: give tPORT"))?;
                seeds.push(Key { host, tcp_port });
            } else {
                configured.push(json!([host, host, features]));
            }
        }
        let own = hosts(&c.own_features)
            .into_iter()
            .filter_map(|(host, ports)| Some(Key { host, tcp_port: ports.tcp? }))
            .collect::<Vec<_>>();
        if c.discovery {
            for k in &own {
                ensure!(
                    k.host.parse::<IpAddr>().map_or(true, |ip| !ip.is_unspecified()),
                    "--peer-discovery announces our host to peers, and {} is no address they can \
                     reach: give --public-host",
                    k.host
                );
            }
        }
        let public = hosts(&c.own_features).iter().any(|(h, _)| h.parse().map_or(true, is_public));
        Ok(Peers {
            public,
            discovery: c.discovery,
            configured,
            seeds,
            check_every: c.check_every,
            genesis_hash: c.genesis_hash,
            own_features: c.own_features,
            own,
            default_ports: c.default_ports,
            listed: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            learn_from: AtomicUsize::new(0),
        })
    }

    /// `server.peers.subscribe`: `[ip, host, ["v1.7", "s50002", "t50001"]]` per peer.
    pub fn list(&self) -> Value {
        if !self.discovery {
            return json!(self.configured);
        }
        let listed = self.listed.lock().unwrap();
        let mut keys: Vec<&Key> = listed.keys().collect();
        keys.sort();
        let entries: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                let p = &listed[k];
                let mut features = vec![format!("v{}", version_string(p.protocol_max))];
                features.extend(p.ssl_port.map(|s| format!("s{s}")));
                features.push(format!("t{}", k.tcp_port));
                features.extend(p.pruning.map(|n| format!("p{n}")));
                json!([p.ip.to_string(), k.host, features])
            })
            .collect();
        json!(entries)
    }

    /// `server.add_peer(features)` from a client at `client`, its `calls`th in the session. True
    /// when the announced server is taken for verification (or is listed already); the
    /// verification itself runs in the background.
    pub fn add_peer(self: &Arc<Self>, features: Option<&Value>, client: IpAddr, calls: u32) -> bool {
        if !self.discovery || calls > MAX_ADD_PEER_PER_SESSION {
            return false;
        }
        let Some(features) = features else { return false };
        if features.get("genesis_hash").and_then(Value::as_str) != Some(self.genesis_hash.as_str()) {
            debug!(%client, "add_peer refused: another genesis_hash");
            return false;
        }
        // The first clearnet host with a TCP port is the one verified.
        let Some(key) = hosts(features)
            .into_iter()
            .filter(|(host, _)| !is_onion(host))
            .find_map(|(host, ports)| Some(Key { host, tcp_port: ports.tcp? }))
        else {
            debug!(%client, "add_peer refused: no clearnet host with a TCP port");
            return false;
        };
        if self.own.contains(&key) {
            return false;
        }
        if self.listed.lock().unwrap().contains_key(&key) {
            return true; // checked again on schedule
        }
        let Some(permit) = self.begin(&key) else {
            // Being verified already is a yes; no room for another verification is a no.
            return self.busy.lock().unwrap().contains(&key);
        };
        debug!(host = %key.host, port = key.tcp_port, %client, "peer announced itself; verifying");
        tokio::spawn(self.clone().check(key, Some(client), permit));
        true
    }

    /// Checks the seeds and every listed peer each `check_every`, until the process ends.
    pub async fn run(self: Arc<Self>) {
        if !self.discovery {
            return;
        }
        let mut ticker = tokio::time::interval(self.check_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let mut due = self.seeds.clone();
            due.extend(self.listed.lock().unwrap().keys().filter(|k| !self.seeds.contains(k)).cloned());
            for key in due {
                // Waits for a free slot: a scheduled check is never dropped, announcements are.
                let permit =
                    self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                if self.busy.lock().unwrap().insert(key.clone()) {
                    tokio::spawn(self.clone().check(key, None, permit));
                }
            }
        }
    }

    /// A free verification slot for `key`, unless it is being visited or no slot is free.
    fn begin(&self, key: &Key) -> Option<OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.busy.lock().unwrap().insert(key.clone()).then_some(permit)
    }

    /// Visits `key` (announced by `client`, or a seed, list entry or listed peer) and keeps the
    /// outcome; the permit is held until then.
    async fn check(self: Arc<Self>, key: Key, client: Option<IpAddr>, _permit: OwnedSemaphorePermit) {
        let visit = tokio::time::timeout(VISIT_TIMEOUT, self.visit(&key, client))
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {} s", VISIT_TIMEOUT.as_secs())));
        self.busy.lock().unwrap().remove(&key);
        match visit {
            Ok(v) => {
                self.keep(&key, &v);
                self.learn(&v.peers);
            }
            Err(e) => self.failed(&key, e),
        }
    }

    /// Connects to the peer, checks its features, reads its list, and announces us when the list
    /// lacks us.
    async fn visit(&self, key: &Key, client: Option<IpAddr>) -> Result<Visit> {
        ensure!(!is_onion(&key.host), "onion hosts need a Tor proxy, which this server does not have");
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((key.host.as_str(), key.tcp_port))
            .await
            .with_context(|| format!("looking up {}", key.host))?
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
            .collect();
        let addr = match client {
            // An announcement speaks for the announcing machine only.
            Some(ip) => *addrs
                .iter()
                .find(|a| a.ip() == ip.to_canonical())
                .with_context(|| format!("{} does not resolve to the announcing client {ip}", key.host))?,
            None => *addrs.first().with_context(|| format!("{} resolves to no address", key.host))?,
        };
        // A public server visits no private address it was told of (its seeds are the operator's).
        ensure!(
            !self.public || is_public(addr.ip()) || self.seeds.contains(key),
            "{addr} is not a public address"
        );
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        let mut conn = Conn::new(stream);
        let range = [version_string(PEER_PROTOCOL_MIN), version_string(PROTOCOL_MAX)];
        conn.call("server.version", json!([crate::protocol::software(), range])).await?;
        let features = conn.call("server.features", json!([])).await?;
        let (ssl_port, protocol_max, pruning) = self.check_features(key, &features)?;
        let peers = match conn.call("server.peers.subscribe", json!([])).await? {
            Value::Array(a) => a,
            other => bail!("server.peers.subscribe answered {other}"),
        };
        let listed_us = peers.iter().filter_map(|e| self.entry_key(e)).any(|k| self.own.contains(&k));
        if !listed_us && !self.own.is_empty() {
            let taken = conn.call("server.add_peer", json!([self.own_features])).await;
            debug!(host = %key.host, port = key.tcp_port, ?taken, "announced ourselves");
        }
        Ok(Visit { ip: addr.ip(), ssl_port, protocol_max, pruning, peers })
    }

    /// The peer's features must name our genesis, a sane protocol range, and the host and port
    /// we reached it at (and not be ours). Returns its TLS port, protocol max and pruning.
    fn check_features(&self, key: &Key, f: &Value) -> Result<(Option<u16>, Version, Option<u64>)> {
        let genesis = f.get("genesis_hash").and_then(Value::as_str).unwrap_or_default();
        ensure!(genesis == self.genesis_hash, "another chain: genesis_hash {genesis:?}");
        let version = |name: &str| f.get(name).and_then(Value::as_str).and_then(parse_version);
        let (Some(min), Some(max)) = (version("protocol_min"), version("protocol_max")) else {
            bail!("no protocol_min or protocol_max in its features");
        };
        ensure!(
            min <= max && max >= PEER_PROTOCOL_MIN,
            "protocol range {} to {}",
            version_string(min),
            version_string(max)
        );
        ensure!(f.get("hosts") != self.own_features.get("hosts"), "it is this server");
        let hosts = hosts(f);
        let ports = hosts
            .iter()
            .find(|(h, p)| h.eq_ignore_ascii_case(&key.host) && p.tcp == Some(key.tcp_port))
            .with_context(|| {
                format!("its features do not name {} with tcp_port {}", key.host, key.tcp_port)
            })?;
        Ok((ports.1.ssl, max, f.get("pruning").and_then(Value::as_u64)))
    }

    /// Lists (or refreshes) a peer that answered well.
    fn keep(&self, key: &Key, v: &Visit) {
        let mut listed = self.listed.lock().unwrap();
        let fresh = Peer {
            ip: v.ip,
            ssl_port: v.ssl_port,
            protocol_max: v.protocol_max,
            pruning: v.pruning,
            last_seen: Instant::now(),
            failures: 0,
        };
        if let Some(p) = listed.get_mut(key) {
            *p = fresh;
            return;
        }
        if listed.len() >= MAX_PEERS {
            debug!(host = %key.host, port = key.tcp_port, "peer verified but not listed: {MAX_PEERS} listed already");
            return;
        }
        let network = network_of(v.ip);
        if listed.values().filter(|p| network_of(p.ip) == network).count() >= MAX_PEERS_PER_IP {
            debug!(host = %key.host, port = key.tcp_port, ip = %v.ip, "peer verified but not listed: {MAX_PEERS_PER_IP} listed in its network");
            return;
        }
        info!(host = %key.host, port = key.tcp_port, ip = %v.ip, "peer verified; listed");
        listed.insert(key.clone(), fresh);
    }

    /// Counts a failed visit against a listed peer; forgets it after too many.
    fn failed(&self, key: &Key, e: anyhow::Error) {
        let mut listed = self.listed.lock().unwrap();
        let Some(p) = listed.get_mut(key) else {
            debug!(host = %key.host, port = key.tcp_port, "peer not listed: {e:#}");
            return;
        };
        p.failures += 1;
        debug!(host = %key.host, port = key.tcp_port, failures = p.failures, "peer check failed: {e:#}");
        if p.failures >= MAX_FAILED_CHECKS || p.last_seen.elapsed() > MAX_AGE {
            info!(host = %key.host, port = key.tcp_port, failures = p.failures, "peer forgotten: {e:#}");
            listed.remove(key);
        }
    }

    /// Takes up to `MAX_LEARNED_PER_LIST` new candidates from a peer's list, while slots are
    /// free. Each call starts further into the list, so that entries which never verify cannot
    /// keep the later ones out.
    fn learn(self: &Arc<Self>, entries: &[Value]) {
        if entries.is_empty() {
            return;
        }
        let start = self.learn_from.fetch_add(MAX_LEARNED_PER_LIST, Ordering::Relaxed) % entries.len();
        let new = entries[start..]
            .iter()
            .chain(&entries[..start])
            .filter_map(|e| self.entry_key(e))
            .filter(|k| !is_onion(&k.host) && !self.own.contains(k))
            .filter(|k| !self.listed.lock().unwrap().contains_key(k));
        for key in new.take(MAX_LEARNED_PER_LIST) {
            let Some(permit) = self.begin(&key) else { continue };
            debug!(host = %key.host, port = key.tcp_port, "learned a peer; verifying");
            tokio::spawn(self.clone().check(key, None, permit));
        }
    }

    /// A `server.peers.subscribe` entry's host and TCP port.
    fn entry_key(&self, entry: &Value) -> Option<Key> {
        let host = entry.get(1)?.as_str()?.to_string();
        let words: Vec<String> =
            entry.get(2)?.as_array()?.iter().filter_map(|w| w.as_str().map(str::to_string)).collect();
        Some(Key { host, tcp_port: port_word(&words, 't', self.default_ports.0)? })
    }
}

/// What one visit learned.
struct Visit {
    ip: IpAddr,
    ssl_port: Option<u16>,
    protocol_max: Version,
    pruning: Option<u64>,
    peers: Vec<Value>,
}

/// The port of a `t`/`s` feature word: `t50001`, or a bare `t` for the network's default.
fn port_word(words: &[String], letter: char, default: u16) -> Option<u16> {
    let rest = words.iter().find_map(|w| w.strip_prefix(letter))?;
    match rest {
        "" => Some(default),
        n => n.parse().ok().filter(|p| *p != 0),
    }
}

/// A host's ports in a features object.
struct Ports {
    tcp: Option<u16>,
    ssl: Option<u16>,
}

/// A features object's hosts and their ports.
fn hosts(features: &Value) -> Vec<(String, Ports)> {
    let Some(hosts) = features.get("hosts").and_then(Value::as_object) else { return Vec::new() };
    let port =
        |v: &Value, name: &str| v.get(name).and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
    hosts
        .iter()
        .map(|(h, v)| (h.clone(), Ports { tcp: port(v, "tcp_port"), ssl: port(v, "ssl_port") }))
        .collect()
}

/// Not loopback, private, link-local, shared (CGNAT), unspecified, broadcast, multicast or
/// reserved; nor an IPv6 address that embeds an IPv4 one (6to4, NAT64), which may be private.
fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && b & 0xc0 == 64;
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || shared
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let unique_local = s[0] & 0xfe00 == 0xfc00;
            let link_local = s[0] & 0xffc0 == 0xfe80;
            let six_to_four = s[0] == 0x2002;
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || unique_local
                || link_local
                || six_to_four
                || nat64)
        }
    }
}

/// The network an address belongs to for the per-network cap: its IPv4 /16 or IPv6 /48.
fn network_of(ip: IpAddr) -> (bool, u64) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (false, u64::from(u32::from(v4) >> 16)),
        IpAddr::V6(v6) => (true, (u128::from(v6) >> 80) as u64),
    }
}

fn is_onion(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".onion")
}

/// A newline-delimited JSON-RPC client connection to a peer.
struct Conn {
    read: FramedRead<tokio::net::tcp::OwnedReadHalf, LinesCodec>,
    write: tokio::net::tcp::OwnedWriteHalf,
    next_id: u64,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        let (r, write) = stream.into_split();
        Conn { read: FramedRead::new(r, LinesCodec::new_with_max_length(MAX_REPLY)), write, next_id: 0 }
    }

    /// One call's result; notifications the peer sends meanwhile are skipped.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string() + "\n";
        self.write.write_all(line.as_bytes()).await.with_context(|| format!("sending {method}"))?;
        loop {
            let line = self
                .read
                .next()
                .await
                .with_context(|| format!("the peer closed the connection before answering {method}"))?
                .with_context(|| format!("reading the answer to {method}"))?;
            let reply: Value =
                serde_json::from_str(&line).with_context(|| format!("the answer to {method} is not JSON"))?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(e) = reply.get("error").filter(|e| !e.is_null()) {
                bail!("{method} failed: {e}");
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENESIS: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";

    fn peers(discovery: bool, seeds: &[&str]) -> Result<Arc<Peers>> {
        Peers::new(Config {
            discovery,
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            check_every: Duration::from_secs(1),
            genesis_hash: GENESIS.into(),
            own_features: json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.1": {"tcp_port": 50001}}}),
            default_ports: (51001, 51002),
        })
        .map(Arc::new)
    }

    #[test]
    fn without_discovery_the_configured_entries_are_listed_and_announcements_refused() {
        let p = peers(false, &["a.example t50001 s50002", "b.example s"]).unwrap();
        assert_eq!(
            p.list(),
            json!([["a.example", "a.example", ["t50001", "s50002"]], ["b.example", "b.example", ["s"]]])
        );
        let f = json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.2": {"tcp_port": 1}}});
        assert!(!p.add_peer(Some(&f), "127.0.0.2".parse().unwrap(), 1));
    }

    #[test]
    fn discovery_seeds_need_a_tcp_port_and_lists_start_empty() {
        assert!(peers(true, &["a.example s50002"]).is_err());
        let p = peers(true, &["a.example t", "b.example t50011"]).unwrap();
        let ports: Vec<u16> = p.seeds.iter().map(|k| k.tcp_port).collect();
        assert_eq!(ports, [51001, 50011]);
        assert_eq!(p.list(), json!([]));
    }

    #[test]
    fn announcements_without_our_genesis_or_a_clearnet_tcp_host_are_refused_at_once() {
        let p = peers(true, &[]).unwrap();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let other = json!({"genesis_hash": "00".repeat(32), "hosts": {"127.0.0.2": {"tcp_port": 1}}});
        assert!(!p.add_peer(Some(&other), ip, 1));
        let onion = json!({"genesis_hash": GENESIS, "hosts": {"abc.onion": {"tcp_port": 1}}});
        assert!(!p.add_peer(Some(&onion), ip, 1));
        let tls_only = json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.2": {"ssl_port": 1}}});
        assert!(!p.add_peer(Some(&tls_only), ip, 1));
        let ourselves = json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.1": {"tcp_port": 50001}}});
        assert!(!p.add_peer(Some(&ourselves), ip, 1));
        let fine = json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.2": {"tcp_port": 1}}});
        assert!(!p.add_peer(Some(&fine), ip, MAX_ADD_PEER_PER_SESSION + 1));
        assert!(!p.add_peer(None, ip, 1));
    }

    #[tokio::test]
    async fn announcements_need_a_free_verification_slot() {
        let p = peers(true, &[]).unwrap();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let fine = json!({"genesis_hash": GENESIS, "hosts": {"127.0.0.2": {"tcp_port": 1}}});
        let all = p.permits.clone().try_acquire_many_owned(MAX_IN_FLIGHT as u32).unwrap();
        assert!(!p.add_peer(Some(&fine), ip, 1));
        assert!(p.busy.lock().unwrap().is_empty());
        drop(all);
        assert!(p.add_peer(Some(&fine), ip, 1));
        // Being verified: another announcement of it is a yes that starts nothing more.
        assert!(p.add_peer(Some(&fine), ip, 2));
        assert_eq!(p.permits.available_permits(), MAX_IN_FLIGHT - 1);
    }

    #[test]
    fn the_list_is_bounded_per_address() {
        let p = peers(true, &[]).unwrap();
        let visit = Visit {
            ip: "10.0.0.1".parse().unwrap(),
            ssl_port: Some(50002),
            protocol_max: (1, 6, 0),
            pruning: None,
            peers: vec![],
        };
        for port in 1..=MAX_PEERS_PER_IP as u16 + 2 {
            p.keep(&Key { host: "10.0.0.1".into(), tcp_port: port }, &visit);
        }
        assert_eq!(p.listed.lock().unwrap().len(), MAX_PEERS_PER_IP);
        assert_eq!(p.list()[0], json!(["10.0.0.1", "10.0.0.1", ["v1.6", "s50002", "t1"]]));
    }

    #[test]
    fn the_cap_is_per_network_not_per_address() {
        let p = peers(true, &[]).unwrap();
        let visit = |ip: &str| Visit {
            ip: ip.parse().unwrap(),
            ssl_port: None,
            protocol_max: (1, 6, 0),
            pruning: None,
            peers: vec![],
        };
        // Many addresses of one IPv6 /48, and of one IPv4 /16: four of each are listed.
        for i in 1..=10u16 {
            let v6 = format!("2001:db8:7:{i:x}::1");
            p.keep(&Key { host: v6.clone(), tcp_port: 50001 }, &visit(&v6));
            let v4 = format!("203.0.{i}.1");
            p.keep(&Key { host: v4.clone(), tcp_port: 50001 }, &visit(&v4));
        }
        assert_eq!(p.listed.lock().unwrap().len(), 2 * MAX_PEERS_PER_IP);
        // Another network is listed.
        p.keep(&Key { host: "198.51.100.1".into(), tcp_port: 50001 }, &visit("198.51.100.1"));
        assert_eq!(p.listed.lock().unwrap().len(), 2 * MAX_PEERS_PER_IP + 1);
    }

    #[test]
    fn public_addresses() {
        for ip in ["1.2.3.4", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "240.1.2.3",
            "0.1.2.3",
            "ff02::1",
            "2002:a00:1::1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        // A server reached at loopback (tests) or in a private network may list such peers.
        assert!(!peers(true, &[]).unwrap().public);
    }

    #[test]
    fn unspecified_hosts_are_not_announced() {
        let r = Peers::new(Config {
            discovery: true,
            seeds: vec![],
            check_every: Duration::from_secs(1),
            genesis_hash: GENESIS.into(),
            own_features: json!({"hosts": {"0.0.0.0": {"tcp_port": 50001}}}),
            default_ports: (50001, 50002),
        });
        assert!(r.is_err());
    }

    #[test]
    fn features_must_name_our_chain_and_the_host_reached() {
        let p = peers(true, &[]).unwrap();
        let key = Key { host: "peer.example".into(), tcp_port: 50001 };
        let good = json!({"genesis_hash": GENESIS, "protocol_min": "1.4", "protocol_max": "1.6",
            "hosts": {"peer.example": {"tcp_port": 50001, "ssl_port": 50002}}, "pruning": null});
        assert_eq!(p.check_features(&key, &good).unwrap(), (Some(50002), (1, 6, 0), None));
        let mut other = good.clone();
        other["genesis_hash"] = json!("00".repeat(32));
        assert!(p.check_features(&key, &other).is_err());
        let mut port = good.clone();
        port["hosts"]["peer.example"]["tcp_port"] = json!(50003);
        assert!(p.check_features(&key, &port).is_err());
        let mut range = good.clone();
        range["protocol_min"] = json!("1.7");
        assert!(p.check_features(&key, &range).is_err());
    }

    #[test]
    fn list_entries_give_host_and_tcp_port() {
        let p = peers(true, &[]).unwrap();
        let key = |e: Value| p.entry_key(&e).map(|k| (k.host, k.tcp_port));
        assert_eq!(key(json!(["1.2.3.4", "h", ["v1.4", "s50002", "t50011"]])), Some(("h".into(), 50011)));
        assert_eq!(key(json!(["1.2.3.4", "h", ["v1.4", "t"]])), Some(("h".into(), 51001)));
        assert_eq!(key(json!(["1.2.3.4", "h", ["v1.4", "s50002"]])), None);
        assert_eq!(key(json!(["1.2.3.4"])), None);
    }
}
