//! The real Electrum wallet (Debian's `electrum` package, headless) syncs a watch-only wallet
//! from blkindex-server; its balance and history equal the node's.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bitcoin::{Address, Network, ScriptBuf};
use serde_json::Value;

use blkindex_testkit::expect::expected;

use common::rich_setup;

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
}

impl Drop for Electrum {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

#[test]
fn electrum_wallet_syncs_a_watch_only_wallet() -> Result<()> {
    if Command::new("electrum").arg("version").arg("--offline").output().is_err() {
        panic!("Debian's electrum package is not installed (scripts/install-deps.sh installs it)");
    }
    let (node, dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;

    // Watch the addresses of up to 30 scripts with history, the most used first.
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
    let balance: u64 =
        watched.iter().map(|(_, sh)| want.utxos.get(sh).map_or(0, |u| u.values().map(|v| v.0).sum())).sum();
    let mut txids: Vec<String> =
        watched.iter().flat_map(|(_, sh)| want.history[sh].iter().map(|(t, _)| t.to_string())).collect();
    txids.sort();
    txids.dedup();

    let el = Electrum { dir: dir.path().join("electrum") };
    let server_arg = format!("{}:t", server.addr);
    // `daemon -d` forks and keeps the standard streams: give it a file, not pipes to wait on.
    std::fs::create_dir_all(&el.dir)?;
    let log = std::fs::File::create(el.dir.join("daemon.log"))?;
    let status = Command::new("electrum")
        .arg("--regtest")
        .arg("-D")
        .arg(&el.dir)
        .args(["daemon", "-d", "-v", "--oneserver", "-s", &server_arg])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    assert!(status.success(), "electrum daemon: {}", std::fs::read_to_string(el.dir.join("daemon.log"))?);
    let wallet = dir.path().join("watch-only");
    let wallet = wallet.to_str().unwrap();
    let addresses: Vec<String> = watched.iter().map(|(a, _)| a.to_string()).collect();
    el.json(&["restore", &addresses.join(" "), "--wallet", wallet])?;
    el.json(&["load_wallet", "--wallet", wallet])?;

    let deadline = Instant::now() + Duration::from_secs(90);
    let (got_balance, got_txids) = loop {
        let b = el.json(&["getbalance", "--wallet", wallet])?;
        // Electrum counts coinbase outputs younger than 100 blocks apart, as "unmatured".
        let sats =
            |k: &str| (b[k].as_str().unwrap_or("0").parse::<f64>().unwrap_or(0.0) * 1e8).round() as u64;
        let confirmed = sats("confirmed") + sats("unmatured");
        let hist = el.json(&["onchain_history", "--wallet", wallet])?;
        let mut t: Vec<String> = hist["transactions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["txid"].as_str().map(String::from))
            .collect();
        t.sort();
        if (confirmed, &t) == (balance, &txids) || Instant::now() > deadline {
            break (confirmed, t);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    drop(server);
    if (got_balance, &got_txids) != (balance, &txids) {
        let log = std::fs::read_to_string(el.dir.join("daemon.log")).unwrap_or_default();
        let interesting: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("rror") || l.contains("xception") || l.contains("interface"))
            .take(60)
            .collect();
        eprintln!("electrum daemon log (excerpt):\n{}", interesting.join("\n"));
    }
    assert_eq!(got_balance, balance, "Electrum's balance of {} addresses", addresses.len());
    assert_eq!(got_txids, txids, "Electrum's history");
    eprintln!("Electrum synced {} addresses: {} transactions, {} sat", addresses.len(), txids.len(), balance);
    Ok(())
}
