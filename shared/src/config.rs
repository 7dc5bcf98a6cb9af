//! Where the node's files and RPC are, derived as bitcoind derives them (data dir, network
//! sub-folder, `bitcoin.conf` and its network sections, cookie); and blkindex's own config file,
//! merged under flags and `BLKINDEX_*` environment variables.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::network::Net;
use crate::rpc::Auth;

/// The node as blkindex needs to know it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub net: Net,
    pub datadir: PathBuf,
    pub blocks_dir: PathBuf,
    pub rpc_addr: String,
    pub auth: Auth,
    /// ZMQ endpoints from `bitcoin.conf` (`zmqpubhashblock`, `zmqpubsequence`, ...), by topic.
    pub zmq: HashMap<String, String>,
}

impl NodeConfig {
    /// Where the node publishes ZMQ notifications, as (topic, endpoint): what the node itself
    /// says (`getzmqnotifications`), then `bitcoin.conf`.
    pub fn zmq_notifications(&self, rpc: &crate::rpc::Rpc) -> Vec<(String, String)> {
        let mut found = match rpc.call("getzmqnotifications", serde_json::json!([])) {
            Ok(v) => zmq_published(&v),
            Err(_) => Vec::new(),
        };
        found.extend(self.zmq_configured());
        found
    }

    /// The ZMQ endpoints `bitcoin.conf` names, as (topic, endpoint).
    pub fn zmq_configured(&self) -> Vec<(String, String)> {
        self.zmq.iter().map(|(t, a)| (t.clone(), a.clone())).collect()
    }
}

/// The node's answer to `getzmqnotifications` as (topic, endpoint).
pub fn zmq_published(answer: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for n in answer.as_array().into_iter().flatten() {
        if let (Some(t), Some(a)) = (n["type"].as_str(), n["address"].as_str()) {
            found.push((t.trim_start_matches("pub").to_string(), a.to_string()));
        }
    }
    found
}

/// `bitcoin.conf` settings that apply to `net`: top-level ones, overridden by the network's section.
pub fn read_bitcoin_conf(path: &Path, net: Net) -> Result<HashMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut top = HashMap::new();
    let mut ours = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = Some(s.trim().to_string());
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        // `regtest.rpcport=...` is the same as rpcport under [regtest].
        let (sec, k) = match k.split_once('.') {
            Some((s, k)) => (Some(s.to_string()), k.to_string()),
            None => (section.clone(), k),
        };
        match sec.as_deref() {
            None => {
                top.insert(k, v);
            }
            Some(s) if s == net.conf_section() => {
                ours.insert(k, v);
            }
            Some(_) => {}
        }
    }
    top.extend(ours);
    Ok(top)
}

impl NodeConfig {
    /// Derives everything from the data dir, with explicit overrides.
    pub fn derive(
        net: Net,
        datadir: &Path,
        blocks_dir: Option<&Path>,
        rpc_addr: Option<&str>,
        cookie: Option<&Path>,
    ) -> Result<Self> {
        if !datadir.is_dir() {
            bail!("bitcoind data directory {} does not exist", datadir.display());
        }
        let conf = read_bitcoin_conf(&datadir.join("bitcoin.conf"), net)?;
        let netdir = datadir.join(net.subdir());
        let blocks_dir = match (blocks_dir, conf.get("blocksdir")) {
            (Some(d), _) => d.to_path_buf(),
            (None, Some(d)) => PathBuf::from(d).join(net.subdir()).join("blocks"),
            (None, None) => netdir.join("blocks"),
        };
        let rpc_addr = match rpc_addr {
            Some(a) => a.to_string(),
            None => {
                let host = conf.get("rpcconnect").cloned().unwrap_or_else(|| "127.0.0.1".into());
                let port = match conf.get("rpcport") {
                    Some(p) => p.parse().with_context(|| format!("bad rpcport {p:?} in bitcoin.conf"))?,
                    None => net.default_rpc_port(),
                };
                format!("{host}:{port}")
            }
        };
        let auth = match (cookie, conf.get("rpcuser"), conf.get("rpcpassword")) {
            (Some(c), _, _) => Auth::Cookie(c.to_path_buf()),
            (None, Some(u), Some(p)) => Auth::UserPass(u.clone(), p.clone()),
            _ => Auth::Cookie(
                conf.get("rpccookiefile").map(|f| netdir.join(f)).unwrap_or_else(|| netdir.join(".cookie")),
            ),
        };
        let zmq = conf
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("zmqpub").map(|t| (t.to_string(), v.clone())))
            .collect();
        Ok(NodeConfig { net, datadir: datadir.to_path_buf(), blocks_dir, rpc_addr, auth, zmq })
    }
}

/// The flags both binaries take to find the node and the index (each also a `BLKINDEX_*`
/// variable or a key of the `--config` file).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Node and index")]
pub struct NodeArgs {
    /// mainnet, testnet3, testnet4, signet or regtest.
    #[arg(long, env = "BLKINDEX_NETWORK", default_value = "mainnet")]
    pub network: Net,
    /// bitcoind's data directory (the one holding bitcoin.conf).
    #[arg(long, env = "BLKINDEX_DATADIR")]
    pub datadir: PathBuf,
    /// Where the index lives.
    #[arg(long, env = "BLKINDEX_DB")]
    pub db: PathBuf,
    /// bitcoind's blocks directory, when not <datadir>/<network>/blocks.
    #[arg(long, env = "BLKINDEX_BLOCKSDIR")]
    pub blocksdir: Option<PathBuf>,
    /// bitcoind's RPC address (default: from bitcoin.conf, else the network's port on 127.0.0.1).
    #[arg(long, env = "BLKINDEX_DAEMON_RPC_ADDR")]
    pub daemon_rpc_addr: Option<String>,
    /// RPC cookie file (default: <datadir>/<network>/.cookie; rpcuser/rpcpassword from bitcoin.conf).
    #[arg(long, env = "BLKINDEX_COOKIE")]
    pub cookie: Option<PathBuf>,
    /// TOML file with any of these settings (keys are the flag names); flags and env win over it.
    #[arg(long, env = "BLKINDEX_CONFIG")]
    pub config: Option<PathBuf>,
}

impl NodeArgs {
    pub fn node(&self) -> Result<NodeConfig> {
        NodeConfig::derive(
            self.network,
            &self.datadir,
            self.blocksdir.as_deref(),
            self.daemon_rpc_addr.as_deref(),
            self.cookie.as_deref(),
        )
    }
}

/// A binary's `main`: runs `run`, and on error prints the whole chain of causes and exits 1.
pub fn run_main(run: impl FnOnce() -> Result<()>) {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `$BLKINDEX_LOG` (else `default`), coloured only on a terminal.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Replaces the log filter of a running process (`init_reloadable_logging`).
pub type LogFilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// As `init_logging`, with a filter that can be replaced while running (the server's admin
/// `loglevel`); the lines written are the same.
pub fn init_reloadable_logging(default: &str) -> LogFilterHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry().with(filter).with(fmt).init();
    handle
}

fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("BLKINDEX_LOG").unwrap_or_else(|_| default.into())
}

/// Command-line arguments with a TOML config file's settings put in front of them, so that flags
/// win over the file. A setting whose `BLKINDEX_*` variable is set is left out, so the environment
/// wins over the file too. The file is `--config PATH` or `$BLKINDEX_CONFIG`.
pub fn args_with_config_file(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut path: Option<PathBuf> = std::env::var_os("BLKINDEX_CONFIG").map(PathBuf::from);
    for (i, a) in args.iter().enumerate() {
        let s = a.to_string_lossy();
        if let Some(p) = s.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        } else if s == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        }
    }
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut from_file = Vec::new();
    for (key, value) in table {
        let env = format!("BLKINDEX_{}", key.to_uppercase().replace('-', "_"));
        if std::env::var_os(&env).is_some() {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => from_file.push(OsString::from(flag)),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => from_file.push(OsString::from(format!("{flag}={s}"))),
            toml::Value::Integer(n) => from_file.push(OsString::from(format!("{flag}={n}"))),
            toml::Value::Float(n) => from_file.push(OsString::from(format!("{flag}={n}"))),
            other => bail!("config file {}: unsupported value for {key}: {other}", path.display()),
        }
    }
    let mut out = Vec::with_capacity(args.len() + from_file.len());
    let mut it = args.into_iter();
    out.extend(it.next());
    out.extend(from_file);
    out.extend(it);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcoin_conf_sections_override_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bitcoin.conf");
        std::fs::write(
            &conf,
            "rpcport=1111\nzmqpubhashblock=tcp://127.0.0.1:2\n[main]\nrpcport=2222\n[regtest]\nrpcport=3333 # comment\n",
        )
        .unwrap();
        let regtest = read_bitcoin_conf(&conf, "regtest".parse().unwrap()).unwrap();
        assert_eq!(regtest["rpcport"], "3333");
        let signet = read_bitcoin_conf(&conf, "signet".parse().unwrap()).unwrap();
        assert_eq!(signet["rpcport"], "1111");
        let nc = NodeConfig::derive("regtest".parse().unwrap(), dir.path(), None, None, None).unwrap();
        assert_eq!(nc.rpc_addr, "127.0.0.1:3333");
        assert_eq!(nc.blocks_dir, dir.path().join("regtest/blocks"));
        assert_eq!(nc.zmq["hashblock"], "tcp://127.0.0.1:2");
        let main =
            NodeConfig::derive("mainnet".parse().unwrap(), dir.path(), None, Some("h:9"), None).unwrap();
        assert_eq!(main.rpc_addr, "h:9");
        assert_eq!(main.blocks_dir, dir.path().join("blocks"));
    }

    #[test]
    fn config_file_goes_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blkindex.toml");
        std::fs::write(&file, "network = \"regtest\"\nno-follow = true\nmem-budget-mb = 512\n").unwrap();
        let args: Vec<OsString> = ["x", "--config", file.to_str().unwrap(), "--network", "signet"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = args_with_config_file(args).unwrap();
        let out: Vec<String> = out.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(out[0], "x");
        assert!(out.contains(&"--network=regtest".to_string()));
        assert!(out.contains(&"--no-follow".to_string()));
        // The flag comes after the file's value, so it wins (clap keeps the last occurrence).
        assert_eq!(out.last().unwrap(), "signet");
    }
}
