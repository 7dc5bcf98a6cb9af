//! A mempool of mainnet's size on a regtest node, and what a server does with it
//! (`scripts/bench-mempool.sh` runs the steps in order):
//!
//!   fill-mempool prepare --rpc-addr A --cookie C --dir D --txs 100000
//!       confirmed outputs to fund the transactions: coinbases to our key, matured, then fan-out
//!       transactions of 2,500 outputs each (one key per output), mined with `generateblock`
//!   fill-mempool fill ... --dir D --txs 100000 [--metrics M]
//!       that many independent transactions (one input, a payment to one of 20,000 scripts and
//!       change), signed here in parallel and sent in batches of `sendrawtransaction`; with
//!       `--metrics`, waits until the server's mempool view has them all
//!   fill-mempool startup --server S --log L --pid P ...
//!       the wallet mix against a server starting into the full mempool, until its log says
//!       "mempool view complete"
//!   fill-mempool mine ... --dir D --server S --metrics M --pid P --count 4000
//!       with scripts subscribed and the wallet mix running, mines a block of `count` of the
//!       transactions and times the server's mempool view and the notifications
//!
//! Keys are derived from their number, so each step finds the others' without a wallet. Each
//! step prints one JSON line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use clap::{Parser, Subcommand};
use rayon::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use blkindex_benches::wallet_mix::{self, percentile, rss_mb, Timed, Workload};
use blkindex_benches::NodeArgs;
use blkindex_shared::rpc::Rpc;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    step: Step,
}

#[derive(clap::Args)]
struct Common {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the steps keep what the next ones need.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(clap::Args)]
struct Mix {
    /// The server (host:port, TCP).
    #[arg(long)]
    server: String,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// The wallet mix's total rate, requests per second, and its connections.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 16)]
    connections: u64,
}

#[derive(Subcommand)]
enum Step {
    Prepare {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 100_000)]
        txs: usize,
    },
    Fill {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 100_000)]
        txs: usize,
        /// The server's metrics address: wait until its mempool view has every transaction.
        #[arg(long)]
        metrics: Option<String>,
    },
    Startup {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        mix: Mix,
        /// The server's log, read for "mempool view complete".
        #[arg(long)]
        log: PathBuf,
        /// The server's metrics: its view is complete too once its mempool gauge has every
        /// transaction `fill` sent (for a server without that log line).
        #[arg(long)]
        metrics: Option<String>,
    },
    Mine {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        mix: Mix,
        #[arg(long)]
        metrics: String,
        /// Transactions the block mines.
        #[arg(long, default_value_t = 4000)]
        count: usize,
        /// Scripts subscribed whose transaction the block mines (the spent outputs' scripts),
        /// over `wallets` connections; as many others are subscribed and must not be notified.
        #[arg(long, default_value_t = 1000)]
        subscribe: usize,
        #[arg(long, default_value_t = 10)]
        wallets: usize,
    },
}

/// Outputs of one fan-out transaction.
const FAN_OUT: usize = 2500;
/// Scripts the transactions pay.
const PAYEES: u64 = 20_000;
/// What each transaction pays; the rest, less the fee, is change.
const PAYMENT: u64 = 1_000_000;
/// A one-input, two-output P2WPKH transaction's vsize.
const TX_VSIZE: u64 = 141;

/// Key `i` of `family` (0: the coinbases, 1: funded outputs, 2: payees).
fn secret(family: u8, i: u64) -> SecretKey {
    let mut b = [0u8; 32];
    b[0] = 0x42;
    b[1] = family;
    b[24..].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).expect("a valid secret key")
}

struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
    spk: ScriptBuf,
}

fn key(secp: &Secp256k1<All>, family: u8, i: u64) -> Key {
    let sk = secret(family, i);
    let pk = CompressedPublicKey(sk.public_key(secp));
    Key { sk, pk, spk: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()) }
}

/// An Electrum script hash as the protocol shows it.
fn script_hash(spk: &ScriptBuf) -> String {
    let mut h = sha256::Hash::hash(spk.as_bytes()).to_byte_array();
    h.reverse();
    hex::encode(h)
}

/// Signs input `i` (P2WPKH, the only kind here) of `tx`, which spends `value` of `key`'s.
fn sign(secp: &Secp256k1<All>, tx: &mut Transaction, i: usize, key: &Key, value: u64) {
    let h = SighashCache::new(&*tx)
        .p2wpkh_signature_hash(i, &key.spk, Amount::from_sat(value), EcdsaSighashType::All)
        .expect("a P2WPKH input");
    let sig = secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &key.sk);
    let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
    tx.input[i].witness = Witness::p2wpkh(&sig, &key.pk.0);
}

fn spend(prevout: OutPoint, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prevout,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    }
}

/// What `prepare` made: the fan-out transactions and the value of each of their outputs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Funded {
    fan_outs: Vec<Txid>,
    value: u64,
}

/// What `fill` sent: transaction `k` spends funded output `k`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sent {
    txids: Vec<Txid>,
    bytes: u64,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Sends `calls` in batches of 1,000, `SENDERS` batches at a time (`sendrawtransaction` waits
/// for the node's notifications of each transaction, so one batch at a time leaves the node
/// mostly waiting); the answers in order.
fn batched(rpc: &Rpc, calls: Vec<(&str, Value)>) -> Result<Vec<Result<Value, String>>> {
    const SENDERS: usize = 4;
    let chunks: Vec<&[(&str, Value)]> = calls.chunks(1000).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut answers: Vec<Option<Vec<Result<Value, String>>>> = (0..chunks.len()).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut answers);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..SENDERS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { return Ok(()) };
                        let got =
                            rpc.batch(chunk)?.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
                        done.lock().unwrap()[i] = Some(got);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a sender thread")?;
        }
        Ok(())
    })?;
    Ok(answers.into_iter().flat_map(|a| a.expect("every batch answered")).collect())
}

fn burn_address(secp: &Secp256k1<All>) -> String {
    let k = key(secp, 3, 0);
    bitcoin::Address::p2wpkh(&k.pk, Network::Regtest).to_string()
}

fn prepare(c: &Common, txs: usize) -> Result<Value> {
    let rpc = c.node.rpc();
    let secp = Secp256k1::new();
    let t0 = Instant::now();
    let fan_outs = txs.div_ceil(FAN_OUT);
    let start = rpc.call("getblockcount", json!([]))?.as_u64().context("height")?;
    anyhow::ensure!(start + fan_outs as u64 <= 140, "needs a fresh node (coinbases of 50 BTC)");
    let miner = key(&secp, 0, 0);
    let miner_address = bitcoin::Address::p2wpkh(&miner.pk, Network::Regtest).to_string();
    let burn = burn_address(&secp);
    let hashes = rpc.call("generatetoaddress", json!([fan_outs, miner_address]))?;
    rpc.call("generatetoaddress", json!([100, burn]))?;
    let value_in = 50 * 100_000_000u64;
    // 2,500 outputs of 31 bytes: about 78,000 vB; 2 sat/vB.
    let fee = 160_000;
    let value = (value_in - fee) / FAN_OUT as u64;
    let made: Vec<Transaction> = hashes
        .as_array()
        .context("block hashes")?
        .iter()
        .enumerate()
        .map(|(i, hash)| {
            let block = rpc.call("getblock", json!([hash, 1]))?;
            let coinbase: Txid = block["tx"][0].as_str().context("coinbase")?.parse()?;
            Ok((i, coinbase))
        })
        .collect::<Result<Vec<_>>>()?
        .into_par_iter()
        .map(|(i, coinbase)| {
            let outputs = (0..FAN_OUT)
                .map(|j| TxOut {
                    value: Amount::from_sat(value),
                    script_pubkey: key(&secp, 1, (i * FAN_OUT + j) as u64).spk,
                })
                .collect();
            let mut tx = spend(OutPoint { txid: coinbase, vout: 0 }, outputs);
            sign(&secp, &mut tx, 0, &miner, value_in);
            tx
        })
        .collect();
    // Ten to a block (about 3.1 million of its 4 million weight units).
    for block in made.chunks(10) {
        let hex: Vec<String> = block.iter().map(serialize_hex).collect();
        rpc.call("generateblock", json!([burn, hex]))?;
    }
    let funded = Funded { fan_outs: made.iter().map(|t| t.compute_txid()).collect(), value };
    std::fs::create_dir_all(&c.dir)?;
    std::fs::write(c.dir.join("funded.json"), serde_json::to_string(&funded)?)?;
    let height = rpc.call("getblockcount", json!([]))?;
    Ok(json!({"outputs": fan_outs * FAN_OUT, "fan_outs": fan_outs, "height": height,
        "secs": t0.elapsed().as_secs_f64()}))
}

/// The fee rate of transaction `k`, sat/vB: 2 to 21, spread.
fn fee_rate(k: u64) -> u64 {
    2 + k.wrapping_mul(7919) % 20
}

/// Transaction `k`: funded output `k` to payee `k % PAYEES`, the change back to its own key.
fn make_tx(secp: &Secp256k1<All>, funded: &Funded, k: u64) -> Transaction {
    let owner = key(secp, 1, k);
    let prevout =
        OutPoint { txid: funded.fan_outs[k as usize / FAN_OUT], vout: (k as usize % FAN_OUT) as u32 };
    let change = funded.value - PAYMENT - TX_VSIZE * fee_rate(k);
    let outputs = vec![
        TxOut { value: Amount::from_sat(PAYMENT), script_pubkey: payee(k) },
        TxOut { value: Amount::from_sat(change), script_pubkey: owner.spk.clone() },
    ];
    let mut tx = spend(prevout, outputs);
    sign(secp, &mut tx, 0, &owner, funded.value);
    tx
}

/// The script transaction `k` pays: a payee's (their keys are never used to sign).
fn payee(k: u64) -> ScriptBuf {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(&(k % PAYEES).to_be_bytes());
    h[8] = 0x42;
    ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array(h))
}

/// The server's mempool size, from its metrics.
fn server_mempool(metrics: &str) -> Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics)?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let line = out.lines().find(|l| l.starts_with("blkindex_mempool_txs ")).context("no mempool gauge")?;
    Ok(line.split_whitespace().nth(1).context("a value")?.parse::<f64>()? as u64)
}

fn fill(c: &Common, txs: usize, metrics: Option<&str>) -> Result<Value> {
    let rpc = c.node.rpc();
    let funded: Funded = read(&c.dir.join("funded.json"))?;
    anyhow::ensure!(txs <= funded.fan_outs.len() * FAN_OUT, "prepare funded fewer outputs");
    let secp = Secp256k1::new();
    let t0 = Instant::now();
    let signed: Vec<(Txid, String)> = (0..txs as u64)
        .into_par_iter()
        .map(|k| {
            let tx = make_tx(&secp, &funded, k);
            (tx.compute_txid(), serialize_hex(&tx))
        })
        .collect();
    let sign_secs = t0.elapsed().as_secs_f64();
    let bytes: u64 = signed.iter().map(|(_, h)| h.len() as u64 / 2).sum();
    let before = server_mempool_opt(metrics);
    let t1 = Instant::now();
    let calls: Vec<(&str, Value)> = signed.iter().map(|(_, h)| ("sendrawtransaction", json!([h]))).collect();
    let answers = batched(&rpc, calls)?;
    let send_secs = t1.elapsed().as_secs_f64();
    let refused: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    if let Some(first) = refused.first() {
        bail!("{} of {txs} refused, the first: {first}", refused.len());
    }
    let sent = Sent { txids: signed.iter().map(|(t, _)| *t).collect(), bytes };
    std::fs::write(c.dir.join("sent.json"), serde_json::to_string(&sent)?)?;
    let info = rpc.call("getmempoolinfo", json!([]))?;
    // The server following the node's events: until its view has them all.
    let followed = match metrics {
        Some(m) => {
            let want = before.unwrap_or(0) + txs as u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while server_mempool(m)? < want {
                anyhow::ensure!(Instant::now() < deadline, "the server's mempool never reached {want}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(t1.elapsed().as_secs_f64())
        }
        None => None,
    };
    Ok(json!({"txs": txs, "bytes": bytes, "sign_secs": sign_secs, "send_secs": send_secs,
        "node_mempool": info["size"], "node_mempool_usage": info["usage"],
        "server_followed_secs": followed}))
}

fn server_mempool_opt(metrics: Option<&str>) -> Option<u64> {
    metrics.and_then(|m| server_mempool(m).ok())
}

/// The wallet mix's workload: funded outputs' scripts (spent in the mempool), payees (paid
/// only there), and unconfirmed transactions.
fn workload(c: &Common) -> Result<Workload> {
    let secp = Secp256k1::new();
    let sent: Sent = read(&c.dir.join("sent.json"))?;
    let n = sent.txids.len() as u64;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut scripthashes: Vec<String> =
        (0..2000).map(|_| script_hash(&key(&secp, 1, rng.u64(..n)).spk)).collect();
    scripthashes.extend((0..2000).map(|_| script_hash(&payee(rng.u64(..n)))));
    let txids = (0..2000).map(|_| sent.txids[rng.usize(..sent.txids.len())].to_string()).collect();
    let tip = c.node.rpc().call("getblockcount", json!([]))?.as_u64().context("height")?;
    Ok(Workload { scripthashes, txids, tip })
}

/// Latency figures of the timings due within `[from, to)`.
fn figures(timed: &[Timed], from: Instant, to: Instant) -> Value {
    let mut window: Vec<u64> =
        timed.iter().filter(|t| t.due >= from && t.due < to).map(|t| t.micros).collect();
    window.sort_unstable();
    let errors = timed.iter().filter(|t| t.due >= from && t.due < to && !t.ok).count();
    json!({"requests": window.len(), "p50_ms": percentile(&window, 0.5), "p99_ms": percentile(&window, 0.99),
        "max_ms": window.last().map(|m| *m as f64 / 1000.0), "errors": errors})
}

fn slowest(timed: &[Timed], from: Instant, n: usize) -> Value {
    let mut by_latency: Vec<&Timed> = timed.iter().collect();
    by_latency.sort_by_key(|t| std::cmp::Reverse(t.micros));
    let ms = |t: &Timed| {
        let at = match t.due >= from {
            true => t.due.duration_since(from).as_secs_f64(),
            false => -from.duration_since(t.due).as_secs_f64(),
        };
        json!([(at * 1000.0).round(), t.micros as f64 / 1000.0])
    };
    by_latency.iter().take(n).map(|t| ms(t)).collect()
}

async fn startup(c: &Common, mix: &Mix, log: &Path, metrics: Option<&str>) -> Result<Value> {
    let w = Arc::new(workload(c)?);
    let expect = read::<Sent>(&c.dir.join("sent.json"))?.txids.len() as u64;
    let t0 = Instant::now();
    // The server listens before its mempool view is complete; wait for the listener.
    while tokio::net::TcpStream::connect(&mix.server).await.is_err() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "the server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listening = t0.elapsed().as_secs_f64();
    // A wallet subscribed as soon as the server listens, to scripts whose coins the mempool
    // spends: notified as the read places them.
    let secp = Secp256k1::new();
    let n = expect;
    let mut rng = fastrand::Rng::with_seed(13);
    let scripts: Vec<String> = (0..1000).map(|_| script_hash(&key(&secp, 1, rng.u64(..n)).spk)).collect();
    let wallet = Wallet::open(&mix.server, &scripts).await?;
    let (subscribed, initial) = (wallet.subscribed, wallet.statuses.clone());
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::spawn(wallet.record(heard.clone()));
    let until = Instant::now() + Duration::from_secs(600);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(until);
    let (addr, ww, (conns, rate)) = (mix.server.clone(), w.clone(), (mix.connections, mix.rate));
    let load = tokio::spawn(async move {
        let mut stop = stop_rx;
        // Sent in rounds of a second, so that it ends soon after it is told to.
        let mut timed = Vec::new();
        let mut round = 0;
        while Instant::now() < *stop.borrow_and_update() {
            let end = (Instant::now() + Duration::from_secs(1)).min(*stop.borrow());
            timed.extend(
                wallet_mix::paced(addr.clone(), ww.clone(), conns, rate, 1000 + round * conns, end).await?,
            );
            round += 1;
        }
        anyhow::Ok(timed)
    });
    let line = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("mempool view complete")) {
            break l.to_string();
        }
        let gauge = match metrics.map(str::to_string) {
            Some(m) => tokio::task::spawn_blocking(move || server_mempool(&m).ok()).await?,
            None => None,
        };
        if gauge.is_some_and(|n| n >= expect) {
            break format!("(no log line) the mempool gauge at {expect}");
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "no \"mempool view complete\" in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let complete = Instant::now();
    let rss = (rss_mb(mix.pid, "VmRSS:"), rss_mb(mix.pid, "RssAnon:"));
    stop_tx.send(complete + Duration::from_secs(1))?;
    let timed = load.await??;
    // Each subscription's last status heard, against its status now (asked afresh): when the
    // one it ended at came (0: it was the first answer).
    tokio::time::sleep(Duration::from_secs(1)).await;
    listener.abort();
    let now = Wallet::open(&mix.server, &scripts).await?.statuses;
    let heard = heard.lock().unwrap().clone();
    let mut caught_up = Vec::new();
    let mut behind = 0;
    for (i, sh) in scripts.iter().enumerate() {
        let last = heard.iter().rev().find(|(s, ..)| s == sh);
        let (status, at) = last.map_or((&initial[i], subscribed), |(_, st, at)| (st, *at));
        match *status == now[i] {
            true => caught_up.push(at.duration_since(subscribed).as_micros() as u64),
            false => behind += 1,
        }
    }
    caught_up.sort_unstable();
    let notified = scripts.iter().filter(|sh| heard.iter().any(|(s, ..)| s == *sh)).count();
    Ok(json!({"listening_secs": listening, "complete_secs_seen": complete.duration_since(t0).as_secs_f64(),
        "log": line, "rss_mb": rss.0, "anon_mb": rss.1,
        "during": figures(&timed, t0, complete), "all": figures(&timed, t0, Instant::now()),
        "subscribed_at_start": {"scripts": scripts.len(), "notified": notified, "behind": behind,
            "final_status_p50_ms": percentile(&caught_up, 0.5), "final_status_max_ms": percentile(&caught_up, 1.0),
            "subscribed_after_ms": subscribed.duration_since(t0).as_secs_f64() * 1000.0}}))
}

/// A subscribing wallet: one connection, its scripts subscribed; notifications as they come,
/// with when.
struct Wallet {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    /// When it subscribed, and each script's status then.
    subscribed: Instant,
    statuses: Vec<Value>,
    /// Notifications that came among the replies: (script hash, status, when).
    early: Vec<(String, Value, Instant)>,
}

impl Wallet {
    async fn open(addr: &str, scripts: &[String]) -> Result<Wallet> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let (subscribed, statuses, early) = (Instant::now(), vec![Value::Null; scripts.len()], Vec::new());
        let mut wallet = Wallet { write: w, read: BufReader::new(r), subscribed, statuses, early };
        let mut lines =
            json!({"id": 0, "method": "server.version", "params": ["mempool-bench", "1.4"]}).to_string();
        lines.push('\n');
        for (i, sh) in scripts.iter().enumerate() {
            let req = json!({"id": i + 1, "method": "blockchain.scripthash.subscribe", "params": [sh]});
            lines.push_str(&req.to_string());
            lines.push('\n');
        }
        wallet.write.write_all(lines.as_bytes()).await?;
        let mut line = String::new();
        let mut answered = 0;
        while answered <= scripts.len() {
            line.clear();
            anyhow::ensure!(wallet.read.read_line(&mut line).await? > 0, "the server closed");
            let v: Value = serde_json::from_str(&line)?;
            if v["method"] == "blockchain.scripthash.subscribe" {
                let sh = v["params"][0].as_str().unwrap_or("").to_string();
                wallet.early.push((sh, v["params"][1].clone(), Instant::now()));
                continue;
            }
            anyhow::ensure!(v.get("error").is_none_or(Value::is_null), "subscribing: {v}");
            if let Some(i) = v["id"].as_u64().filter(|i| *i > 0) {
                wallet.statuses[i as usize - 1] = v["result"].clone();
            }
            answered += 1;
        }
        Ok(wallet)
    }

    /// Records notifications (script hash, status, when) into `sink`, those among the replies
    /// first, until the connection ends (or the task is aborted).
    async fn record(mut self, sink: Arc<std::sync::Mutex<Vec<(String, Value, Instant)>>>) -> Result<()> {
        sink.lock().unwrap().append(&mut self.early);
        let mut line = String::new();
        loop {
            line.clear();
            anyhow::ensure!(self.read.read_line(&mut line).await? > 0, "the server closed");
            let v: Value = serde_json::from_str(&line)?;
            if v["method"] == "blockchain.scripthash.subscribe" {
                let sh = v["params"][0].as_str().unwrap_or("").to_string();
                sink.lock().unwrap().push((sh, v["params"][1].clone(), Instant::now()));
            }
        }
    }

    /// Notifications (script hash, status, when) until `until`, those among the replies first.
    async fn notifications(mut self, until: Instant) -> Result<Vec<(String, Value, Instant)>> {
        let mut out = std::mem::take(&mut self.early);
        let mut line = String::new();
        let until = tokio::time::Instant::from_std(until);
        loop {
            line.clear();
            match tokio::time::timeout_at(until, self.read.read_line(&mut line)).await {
                Err(_) => return Ok(out),
                Ok(n) => anyhow::ensure!(n? > 0, "the server closed"),
            }
            let v: Value = serde_json::from_str(&line)?;
            if v["method"] == "blockchain.scripthash.subscribe" {
                let sh = v["params"][0].as_str().unwrap_or("").to_string();
                out.push((sh, v["params"][1].clone(), Instant::now()));
            }
        }
    }
}

async fn mine(
    c: &Common,
    mix: &Mix,
    metrics: &str,
    count: usize,
    subscribe: usize,
    wallets: usize,
) -> Result<Value> {
    let rpc = Arc::new(c.node.rpc());
    let secp = Secp256k1::new();
    let sent: Sent = read(&c.dir.join("sent.json"))?;
    let n = sent.txids.len();
    anyhow::ensure!(count <= n, "fewer transactions than the block is to mine");
    // Every (n / count)-th transaction; the scripts of the first `subscribe` of them (each
    // funded output's script is only in its own transaction), and as many not mined.
    let step = n / count;
    let mined: Vec<usize> = (0..count).map(|i| i * step).collect();
    let watched: Vec<String> =
        mined.iter().take(subscribe).map(|k| script_hash(&key(&secp, 1, *k as u64).spk)).collect();
    let control: Vec<String> =
        mined.iter().take(subscribe).map(|k| script_hash(&key(&secp, 1, *k as u64 + 1).spk)).collect();
    let all: Vec<String> = watched.iter().chain(&control).cloned().collect();
    let mut subscribed = Vec::new();
    for part in all.chunks(all.len().div_ceil(wallets)) {
        subscribed.push(Wallet::open(&mix.server, part).await?);
    }
    let w = Arc::new(workload(c)?);
    let before = server_mempool(metrics)?;
    let rss_before = rss_mb(mix.pid, "VmRSS:");
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(8);
    let load = tokio::spawn(wallet_mix::paced(mix.server.clone(), w, mix.connections, mix.rate, 5000, end));
    let listening: Vec<_> = subscribed.into_iter().map(|s| tokio::spawn(s.notifications(end))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let txids: Vec<String> = mined.iter().map(|k| sent.txids[*k].to_string()).collect();
    let burn = burn_address(&secp);
    let asked = Instant::now();
    let r = rpc.clone();
    let hash = tokio::task::spawn_blocking(move || r.call("generateblock", json!([burn, txids]))).await??;
    let mined_at = Instant::now();
    // Polled on a thread of its own (blocking reads), not the runtime's, whose threads time the
    // wallet mix.
    let m = metrics.to_string();
    let view_at = tokio::task::spawn_blocking(move || -> Result<Option<Instant>> {
        while Instant::now() < end {
            if server_mempool(&m)? + count as u64 <= before {
                return Ok(Some(Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(None)
    })
    .await??;
    let timed = load.await??;
    let mut notified: HashMap<String, Instant> = HashMap::new();
    for l in listening {
        for (sh, _, at) in l.await?? {
            notified.entry(sh).or_insert(at);
        }
    }
    let mut latencies: Vec<u64> = watched
        .iter()
        .filter_map(|sh| notified.get(sh))
        .map(|at| at.saturating_duration_since(mined_at).as_micros() as u64)
        .collect();
    latencies.sort_unstable();
    let wrongly = control.iter().filter(|sh| notified.contains_key(*sh)).count();
    let ms = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(mined_at).as_secs_f64() * 1000.0);
    Ok(json!({
        "block": hash["hash"], "mined": count, "mempool_before": before,
        "generateblock_ms": mined_at.duration_since(asked).as_secs_f64() * 1000.0,
        "view_updated_ms": ms(view_at),
        "subscribed": watched.len(), "notified": latencies.len(), "control_notified": wrongly,
        "notify_p50_ms": percentile(&latencies, 0.5), "notify_p99_ms": percentile(&latencies, 0.99),
        "notify_max_ms": latencies.last().map(|m| *m as f64 / 1000.0),
        "rss_before_mb": rss_before, "rss_after_mb": rss_mb(mix.pid, "VmRSS:"),
        "mix_around_block": figures(&timed, asked - Duration::from_millis(500), mined_at + Duration::from_secs(2)),
        "mix_all": figures(&timed, t0, end),
        // The slowest requests: when they were due (ms after generateblock was called) and how
        // long they took (ms), to line up with the server's log.
        "slowest": slowest(&timed, asked, 10),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let out = match Args::parse().step {
        Step::Prepare { c, txs } => prepare(&c, txs)?,
        Step::Fill { c, txs, metrics } => fill(&c, txs, metrics.as_deref())?,
        Step::Startup { c, mix, log, metrics } => startup(&c, &mix, &log, metrics.as_deref()).await?,
        Step::Mine { c, mix, metrics, count, subscribe, wallets } => {
            mine(&c, &mix, &metrics, count, subscribe, wallets).await?
        }
    };
    println!("{out}");
    Ok(())
}
