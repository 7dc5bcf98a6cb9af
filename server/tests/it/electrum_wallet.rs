//! The real Electrum wallet (Debian's `electrum` package, headless) syncs a watch-only wallet
//! from blkindex-server, over TCP and over TLS with a self-signed certificate; its balance and
//! history equal the node's. Over TLS it then sees a payment in the mempool as unconfirmed and,
//! once mined, as confirmed: the running wallet learns both only from the server's notifications.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Amount, Network, ScriptBuf};
use serde_json::{json, Value};

use blkindex_testkit::chain::build_rich_chain;
use blkindex_testkit::expect::expected;
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, Server};

/// How long the wallet may take to show what the node has.
const DEADLINE: Duration = Duration::from_secs(90);

struct Electrum {
    dir: PathBuf,
}

impl Electrum {
    fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("electrum")
            .arg("--regtest")
            .arg("-D")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "electrum {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(text.trim()).unwrap_or(Value::String(text.trim().to_string())))
    }

    /// The daemon log's lines that explain a failure.
    fn log_excerpt(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rror") || l.contains("xception") || l.contains("interface"))
            .take(60)
            .collect();
        lines.join("\n")
    }
}

impl Drop for Electrum {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    Tls,
}

/// What the wallet shows: balances in sat (confirmed counts Electrum's "unmatured" coinbase
/// outputs too), and its history as txid → (height, confirmations).
#[derive(Debug, PartialEq)]
struct Shown {
    confirmed: u64,
    unconfirmed: i64,
    history: BTreeMap<String, (i64, u64)>,
}

impl Shown {
    /// Sets the confirmations of the mined transactions for a chain tip at `tip`.
    fn confirmations_at(&mut self, tip: u64) {
        for (height, confirmations) in self.history.values_mut() {
            if *height > 0 {
                *confirmations = (tip as i64 - *height + 1) as u64;
            }
        }
    }
}

/// A regtest node with the rich chain, its indexer and server, and an Electrum daemon with a
/// watch-only wallet of the addresses of up to 30 scripts with history (the most used first),
/// synced: it shows the node's balance and history of those addresses.
struct Synced {
    el: Electrum,
    wallet: String,
    watched: Vec<(Address, ScriptBuf)>,
    shown: Shown,
    _server: Server,
    _indexer: Indexer,
    node: Node,
    _dir: tempfile::TempDir,
}

impl Synced {
    fn start(transport: Transport) -> Result<Self> {
        if Command::new("electrum").arg("version").arg("--offline").output().is_err() {
            panic!("Debian's electrum package is not installed (scripts/install-deps.sh installs it)");
        }
        let node = Node::start(NodeOptions::default())?;
        build_rich_chain(&node)?;
        let (dir, indexer) = indexed(&node)?;
        let db = dir.path().join("db");
        let el = Electrum { dir: dir.path().join("electrum") };
        std::fs::create_dir_all(&el.dir)?;

        // Over TLS the wallet is given the certificate's fingerprint: it then accepts this one
        // self-signed certificate (and stores it under `<dir>/regtest/certs/`), and no other.
        let (server, server_arg, fingerprint) = match transport {
            Transport::Tcp => {
                let server = Server::start(&node, &db)?;
                let arg = format!("{}:t", server.addr);
                (server, arg, None)
            }
            Transport::Tls => {
                let key = rcgen::KeyPair::generate()?;
                let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key)?;
                let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&cert_file, cert.pem())?;
                std::fs::write(&key_file, key.serialize_pem())?;
                let server = Server::start_with(
                    &node,
                    &db,
                    &[
                        "--electrum-addr",
                        "off",
                        "--tls-addr",
                        "127.0.0.1:0",
                        "--tls-cert",
                        cert_file.to_str().unwrap(),
                        "--tls-key",
                        key_file.to_str().unwrap(),
                    ],
                )?;
                let arg = format!("{}:s", server.addr_of("serving Electrum over TLS"));
                (server, arg, Some((sha256::Hash::hash(cert.der()).to_string(), cert.pem())))
            }
        };

        let want = expected(&node)?;
        let mut scripts: Vec<_> = want.history.iter().collect();
        scripts.sort_by_key(|(sh, h)| (std::cmp::Reverse(h.len()), **sh));
        let watched: Vec<(Address, _)> = scripts
            .iter()
            .filter_map(|(sh, _)| {
                let script = ScriptBuf::from_bytes(want.scripts[*sh].clone());
                Address::from_script(&script, Network::Regtest).ok().map(|a| (a, **sh))
            })
            .take(30)
            .collect();
        let confirmed: u64 = watched
            .iter()
            .map(|(_, sh)| want.utxos.get(sh).map_or(0, |u| u.values().map(|v| v.0).sum()))
            .sum();
        let mut shown = Shown { confirmed, unconfirmed: 0, history: BTreeMap::new() };
        for (txid, height) in watched.iter().flat_map(|(_, sh)| want.history[sh].iter()) {
            shown.history.insert(txid.to_string(), (i64::from(*height), 0));
        }
        shown.confirmations_at(node.height()?);

        // `daemon -d` forks and keeps the standard streams: give it a file, not pipes to wait on.
        let log = std::fs::File::create(el.dir.join("daemon.log"))?;
        let mut daemon = vec!["daemon", "-d", "-v", "--oneserver", "-s", &server_arg];
        if let Some((fingerprint, _)) = &fingerprint {
            daemon.extend(["--serverfingerprint", fingerprint]);
        }
        let status = Command::new("electrum")
            .arg("--regtest")
            .arg("-D")
            .arg(&el.dir)
            .args(&daemon)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        assert!(status.success(), "electrum daemon: {}", std::fs::read_to_string(el.dir.join("daemon.log"))?);
        let wallet = dir.path().join("watch-only").to_str().unwrap().to_string();
        let addresses: Vec<String> = watched.iter().map(|(a, _)| a.to_string()).collect();
        el.json(&["restore", &addresses.join(" "), "--wallet", &wallet])?;
        el.json(&["load_wallet", "--wallet", &wallet])?;

        let watched = watched.into_iter().map(|(a, _)| (a.clone(), a.script_pubkey())).collect();
        let synced =
            Synced { el, wallet, watched, shown, _server: server, _indexer: indexer, node, _dir: dir };
        synced.wait_for("the node's balance and history", &synced.shown)?;
        if let Some((_, pem)) = fingerprint {
            let pinned = std::fs::read_to_string(synced.el.dir.join("regtest/certs/127.0.0.1"))
                .context("the certificate Electrum pinned")?;
            let body = |p: &str| p.split_whitespace().collect::<String>();
            assert_eq!(body(&pinned), body(&pem), "Electrum pinned the server's certificate");
        }
        eprintln!(
            "Electrum synced {} addresses: {} transactions, {} sat",
            synced.watched.len(),
            synced.shown.history.len(),
            synced.shown.confirmed
        );
        Ok(synced)
    }

    fn shown(&self) -> Result<Shown> {
        let b = self.el.json(&["getbalance", "--wallet", &self.wallet])?;
        // Keys are left out when zero; "unconfirmed" is negative for an unconfirmed spend.
        let sats =
            |k: &str| (b[k].as_str().unwrap_or("0").parse::<f64>().unwrap_or(0.0) * 1e8).round() as i64;
        let hist = self.el.json(&["onchain_history", "--wallet", &self.wallet])?;
        let history = hist["transactions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some((t["txid"].as_str()?.to_string(), (t["height"].as_i64()?, t["confirmations"].as_u64()?)))
            })
            .collect();
        Ok(Shown {
            confirmed: (sats("confirmed") + sats("unmatured")) as u64,
            unconfirmed: sats("unconfirmed"),
            history,
        })
    }

    /// Polls the running wallet until it shows `want`, or fails after `DEADLINE` with the
    /// difference and the daemon's log.
    fn wait_for(&self, what: &str, want: &Shown) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.shown()?;
            if &got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!("electrum daemon log (excerpt):\n{}", self.el.log_excerpt());
                let extra: Vec<_> =
                    got.history.iter().filter(|t| want.history.get(t.0) != Some(t.1)).collect();
                let lacking: Vec<_> =
                    want.history.iter().filter(|t| got.history.get(t.0) != Some(t.1)).collect();
                bail!(
                    "after {DEADLINE:?} the wallet does not show {what}: confirmed {} (want {}), unconfirmed {} \
                     (want {}); history entries it has that it should not: {extra:?}, it lacks: {lacking:?}",
                    got.confirmed,
                    want.confirmed,
                    got.unconfirmed,
                    want.unconfirmed
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn electrum_wallet_syncs_over_tcp() -> Result<()> {
    Synced::start(Transport::Tcp)?;
    Ok(())
}

#[test]
fn electrum_wallet_syncs_over_tls_and_follows_the_mempool_and_new_blocks() -> Result<()> {
    let mut s = Synced::start(Transport::Tls)?;
    let node = &s.node;

    // The node pays a watched address from coins of none: mature coinbase outputs of a fresh
    // address, the watched addresses' coins locked. The watched balance then grows by exactly
    // the payment. The blocks mined for this touch no watched address.
    node.mine(101, &node.new_address("bech32")?)?;
    let watched: HashSet<String> = s.watched.iter().map(|(_, script)| script.to_hex_string()).collect();
    let ours: Vec<Value> = node
        .wallet_call("listunspent", json!([0]))?
        .as_array()
        .context("listunspent")?
        .iter()
        .filter(|u| u["scriptPubKey"].as_str().is_some_and(|s| watched.contains(s)))
        .map(|u| json!({"txid": u["txid"], "vout": u["vout"]}))
        .collect();
    node.wallet_call("lockunspent", json!([false, ours]))?;
    let amount = Amount::from_sat(12_345_678);
    let txid = node.send(&s.watched[0].0, amount)?.to_string();
    s.shown.confirmations_at(node.height()?);

    // Unconfirmed: height 0, no confirmation, counted apart.
    s.shown.unconfirmed = amount.to_sat() as i64;
    s.shown.history.insert(txid.clone(), (0, 0));
    s.wait_for("the payment as unconfirmed", &s.shown)?;

    // Mined: confirmed at the new tip.
    node.mine(1, &node.new_address("bech32")?)?;
    let tip = node.height()?;
    s.shown.unconfirmed = 0;
    s.shown.confirmed += amount.to_sat();
    s.shown.history.insert(txid, (tip as i64, 0));
    s.shown.confirmations_at(tip);
    s.wait_for("the payment as confirmed", &s.shown)?;
    Ok(())
}
