//! A regtest node: started in a temporary data dir with free ports, cookie auth, ZMQ, stopped on
//! drop. The binary comes from `$BITCOIND`, or from `scripts/install-node.sh` (cached).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::{Address, Amount, BlockHash, Txid};
use serde_json::{json, Value};

use blkindex_shared::rpc::{Auth, Rpc};

/// The directory holding `bitcoind` and `bitcoin-cli`.
pub fn node_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-node.sh");
        let out =
            Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{} failed", script.display()));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(PathBuf::from(text.lines().last().unwrap_or("").trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Parameters as shown in errors: block hexes are cut short.
fn short(params: &Value) -> String {
    let s = params.to_string();
    if s.len() > 200 {
        format!("{}…", &s[..200])
    } else {
        s
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// 64 KiB blk files (`-fastprune`), so that a small chain spans many files.
    pub fastprune: bool,
    /// Write blk/rev files without obfuscation (`-blocksxor=0`).
    pub no_xor: bool,
    /// `-txindex=1` (for servers that need it, such as ElectrumX).
    pub txindex: bool,
    /// Publish no ZMQ notifications (clients must poll).
    pub no_zmq: bool,
    /// Use this data dir instead of a fresh temporary one (it is kept).
    pub datadir: Option<PathBuf>,
    pub extra_args: Vec<String>,
}

pub struct Node {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    pub datadir: PathBuf,
    pub rpc_port: u16,
    pub p2p_port: u16,
    pub zmq_port: u16,
    pub opts: NodeOptions,
    rpc: Rpc,
}

impl Node {
    pub fn start(opts: NodeOptions) -> Result<Self> {
        let (tmp, datadir) = match &opts.datadir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("blkindex-node-").tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let (rpc_port, p2p_port, zmq_port) = (free_port(), free_port(), free_port());
        let cookie = datadir.join("regtest/.cookie");
        let mut node = Node {
            child: None,
            _tmp: tmp,
            datadir,
            rpc_port,
            p2p_port,
            zmq_port,
            opts,
            rpc: Rpc::new(&format!("127.0.0.1:{rpc_port}"), Auth::Cookie(cookie)),
        };
        // Another process may take a port between free_port() and bitcoind's bind: retry with
        // fresh ports when the node dies at start.
        let mut attempt = 0;
        loop {
            match node.spawn() {
                Ok(()) => return Ok(node),
                Err(e) if attempt < 3 && e.to_string().contains("exited at start") => {
                    attempt += 1;
                    node.rpc_port = free_port();
                    node.p2p_port = free_port();
                    node.zmq_port = free_port();
                    node.rpc = Rpc::new(&format!("127.0.0.1:{}", node.rpc_port), Auth::Cookie(node.cookie()));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn args(&self) -> Vec<String> {
        let zmq = format!("tcp://127.0.0.1:{}", self.zmq_port);
        let mut args = vec![
            "-regtest".to_string(),
            format!("-datadir={}", self.datadir.display()),
            format!("-rpcport={}", self.rpc_port),
            "-rpcbind=127.0.0.1".into(),
            "-rpcallowip=127.0.0.1".into(),
            format!("-port={}", self.p2p_port),
            format!("-bind=127.0.0.1:{}", self.p2p_port),
            "-listen=1".into(),
            "-listenonion=0".into(),
            "-dnsseed=0".into(),
            "-fixedseeds=0".into(),
            "-upnp=0".into(),
            "-natpmp=0".into(),
            "-server=1".into(),
            "-rest=1".into(),
            format!("-txindex={}", self.opts.txindex as u8),
            "-fallbackfee=0.0002".into(),
            "-acceptnonstdtxn=1".into(),
            "-rpcworkqueue=64".into(),
            "-printtoconsole=0".into(),
        ];
        if !self.opts.no_zmq {
            args.extend([
                format!("-zmqpubhashblock={zmq}"),
                format!("-zmqpubsequence={zmq}"),
                format!("-zmqpubrawtx={zmq}"),
            ]);
        }
        if self.opts.fastprune {
            args.push("-fastprune=1".into());
        }
        if self.opts.no_xor {
            args.push("-blocksxor=0".into());
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = node_bin_dir()?.join("bitcoind");
        let child = Command::new(&bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.rpc.call("getblockchaininfo", json!([])) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("bitcoind did not start: {e}"),
                Err(_) => {
                    if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                        bail!("bitcoind exited at start: {status}");
                    }
                    std::thread::sleep(Duration::from_millis(100))
                }
            }
        }
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    pub fn rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc_port)
    }

    pub fn cookie(&self) -> PathBuf {
        self.datadir.join("regtest/.cookie")
    }

    pub fn blocks_dir(&self) -> PathBuf {
        self.datadir.join("regtest/blocks")
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        let shown = short(&params);
        self.rpc.call(method, params).with_context(|| format!("{method} {shown}"))
    }

    /// Calls a wallet RPC on the wallet "w".
    pub fn wallet_call(&self, method: &str, params: Value) -> Result<Value> {
        let rpc = Rpc::new(&format!("{}/wallet/w", self.rpc_addr()), Auth::Cookie(self.cookie()));
        let shown = short(&params);
        rpc.call(method, params).with_context(|| format!("{method} {shown}"))
    }

    /// Stops the node and waits for it to exit (blk and rev files are then complete).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = self.rpc.call("stop", json!([]));
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the (stopped) node's bitcoind expecting it to refuse to start: returns its stderr
    /// once it exits unsuccessfully within `within`; an error if it is still running then (it is
    /// stopped again) or exits with success.
    pub fn start_refused(&mut self, within: Duration) -> Result<String> {
        use std::io::Read;
        anyhow::ensure!(self.child.is_none(), "the node is running");
        let bin = node_bin_dir()?.join("bitcoind");
        let mut child = Command::new(&bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                self.stop()?;
                bail!("bitcoind was still running after {within:?}: it did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr)?;
        anyhow::ensure!(!status.success(), "bitcoind exited with success: {stderr}");
        Ok(stderr)
    }

    /// Restarts with the same data dir and ports.
    /// Stops the node and starts it again on the same data dir and RPC and ZMQ ports (its
    /// clients know those). While it was down, the kernel may have given its P2P port to another
    /// socket as an ephemeral local port (a CI run saw "Unable to bind"): the P2P port, which a
    /// peer asks for when it connects, is moved to a fresh one then.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let mut attempt = 0;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && e.to_string().contains("exited at start") => {
                    attempt += 1;
                    self.p2p_port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn ensure_wallet(&self) -> Result<()> {
        let wallets = self.call("listwallets", json!([]))?;
        let loaded = wallets.as_array().is_some_and(|w| w.iter().any(|n| n == "w"));
        if !loaded && self.call("loadwallet", json!(["w"])).is_err() {
            self.call("createwallet", json!(["w"]))?;
        }
        Ok(())
    }

    pub fn new_address(&self, kind: &str) -> Result<Address> {
        let v = self.wallet_call("getnewaddress", json!(["", kind]))?;
        Ok(v.as_str().context("address")?.parse::<Address<_>>()?.assume_checked())
    }

    pub fn mine(&self, n: u64, to: &Address) -> Result<Vec<BlockHash>> {
        let v = self.call("generatetoaddress", json!([n, to.to_string()]))?;
        Ok(serde_json::from_value(v)?)
    }

    pub fn send(&self, to: &Address, amount: Amount) -> Result<Txid> {
        let v = self.wallet_call("sendtoaddress", json!([to.to_string(), amount.to_btc()]))?;
        Ok(v.as_str().context("txid")?.parse()?)
    }

    pub fn height(&self) -> Result<u64> {
        self.call("getblockcount", json!([]))?.as_u64().context("height")
    }

    pub fn best_hash(&self) -> Result<BlockHash> {
        Ok(self.rpc.best_block_hash()?)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
