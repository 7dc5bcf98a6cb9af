//! A new block's silent-payment scan through running servers, end to end (issue 15's "a new
//! block's scan for 1,000 subscribed sessions"): `--sessions` connections to one server, each
//! with its own live subscription (its own keys, from the tip), then one block of
//! `--eligible` eligible transactions plus one that pays every session's wallet once, mined
//! with `generateblock` so that none of them was in the mempool first (a wallet told of a
//! payment from the mempool is not told again when it is mined). Timed from the call that mines
//! the block to each session's notification of its payment: the block's header notification
//! (the indexer's and the server's catching up), the first session, the median and the last.
//!
//! Each server named is measured in turn in every round (the order alternating), so that
//! setups (flags) compare in one run on one chain as ratios. Between setups the sessions are
//! closed: a server with no live subscription does no work for a block. Each round also does
//! the same block's checks in this process, on `--threads` threads, with the server's own
//! functions (a `TweakTable` per transaction, `Receiver::matches_by` for every wallet): the
//! cost of the arithmetic alone, beside which the servers' figures show what serving adds.
//!
//! With `--mempool-first`, the block is mainnet's usual one instead: its `--eligible`
//! transactions, and one more paying every session, are sent to the node's mempool first, and
//! every session has been told of that payment from the mempool (so each has checked all of
//! them there) before the block is mined with them and one new transaction paying every
//! session again, the one timed. The table then also has the mempool's part: the seconds from
//! the first transaction sent to the last session told of the payment (a 2 s pause included),
//! what a burst of `--eligible` transactions costs the server's live subscriptions.
//!
//! The coins are the bench's own P2WPKH keys, funded by the node's wallet a block before.
//!
//! Usage: sp-block --server NAME=HOST:PORT [--server ...] --rpc-addr ADDR --cookie FILE
//!        [--sessions 1000] [--eligible 1000] [--rounds 3]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::key::TweakedPublicKey;
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use clap::Parser;
use crossbeam_channel::Sender;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use blkindex_shared::rpc::{btc_to_sat, Auth, Rpc};
use blkindex_shared::silent::{self, Receiver, TweakTable};

#[derive(Parser)]
struct Args {
    /// A server to measure, NAME=HOST:PORT; all on the same node.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    #[arg(long)]
    rpc_addr: String,
    #[arg(long)]
    cookie: PathBuf,
    /// Sessions, each with one live subscription of its own keys.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Eligible transactions in the block besides the one paying the sessions.
    #[arg(long, default_value_t = 1000)]
    eligible: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads for the in-process checks of each round's block.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The block's transactions in the mempool first, all but the one timed.
    #[arg(long)]
    mempool_first: bool,
}

/// How long a block's notifications may take before the run is called failed.
const PATIENCE: Duration = Duration::from_secs(900);

fn key(tag: &str, i: u64) -> SecretKey {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update(i.to_be_bytes());
    SecretKey::from_slice(&h.finalize()).expect("a hash is a valid key but with odds 2^-128")
}

struct Coin {
    outpoint: OutPoint,
    txout: TxOut,
    key: SecretKey,
}

/// What a session's reader saw.
enum Event {
    /// Its historical scan ended (progress 1.0).
    Ready,
    /// Its wallet's payment at a height above 0 (a block), when the line was read.
    Paid(Instant),
    /// A payment from the mempool (height 0).
    Mempool,
    /// A header notification (the connection that subscribes headers).
    Header(u64, Instant),
}

struct Bench {
    rpc: Rpc,
    secp: Secp256k1<All>,
    miner: String,
    /// Keys used so far, so that every coin has keys of its own.
    serial: u64,
}

impl Bench {
    fn height(&self) -> Result<u64> {
        self.rpc.call("getblockcount", json!([]))?.as_u64().context("getblockcount")
    }

    /// Coins of the given amounts to fresh keys of the bench, mined in a block.
    fn fund(&mut self, amounts: &[u64]) -> Result<Vec<Coin>> {
        let mut keys = Vec::new();
        let mut outputs = serde_json::Map::new();
        for &sat in amounts {
            self.serial += 1;
            let k = key("coin", self.serial);
            let pk = CompressedPublicKey(k.public_key(&self.secp));
            let addr = Address::p2wpkh(&pk, Network::Regtest);
            outputs.insert(addr.to_string(), json!(Amount::from_sat(sat).to_btc()));
            keys.push((k, addr.script_pubkey()));
        }
        let txid: Txid =
            self.rpc.call("sendmany", json!(["", outputs]))?.as_str().context("sendmany")?.parse()?;
        self.rpc.call("generatetoaddress", json!([1, self.miner]))?;
        let hex = self.rpc.call("gettransaction", json!([txid.to_string()]))?["hex"].clone();
        let tx: Transaction = bitcoin::consensus::encode::deserialize_hex(hex.as_str().context("hex")?)?;
        keys.into_iter()
            .map(|(key, script)| {
                let vout =
                    tx.output.iter().position(|o| o.script_pubkey == script).context("funded output")?;
                let outpoint = OutPoint { txid, vout: vout as u32 };
                Ok(Coin { outpoint, txout: tx.output[vout].clone(), key })
            })
            .collect()
    }

    /// A transaction spending `coin` to `outputs` (the fee: what is left), signed.
    fn spend(&self, coin: &Coin, outputs: Vec<TxOut>) -> Result<Transaction> {
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin.outpoint,
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..TxIn::default()
            }],
            output: outputs,
        };
        let h = SighashCache::new(&tx).p2wpkh_signature_hash(
            0,
            &coin.txout.script_pubkey,
            coin.txout.value,
            EcdsaSighashType::All,
        )?;
        let signature = self.secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &coin.key);
        let sig = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
        tx.input[0].witness = Witness::p2wpkh(&sig, &coin.key.public_key(&self.secp));
        Ok(tx)
    }

    /// The transaction from `coin` paying each receiver once (k = 0), as a sender computes it:
    /// the tweak depends on the inputs only, so it is read off a first signing.
    fn pay_all(&self, coin: &Coin, receivers: &[Receiver]) -> Result<Transaction> {
        let draft = self.spend(coin, vec![p2tr(&key("draft", 0).public_key(&self.secp), 330)])?;
        let tweak = silent::tweak(&draft, &[&coin.txout.script_pubkey]).context("the payment is eligible")?;
        let outputs = receivers
            .iter()
            .map(|r| Ok(p2tr(&r.first_output_key(&tweak).context("an output key")?, 600)))
            .collect::<Result<_>>()?;
        self.spend(coin, outputs)
    }
}

fn p2tr(key: &PublicKey, sat: u64) -> TxOut {
    let x = TweakedPublicKey::dangerous_assume_tweaked(key.x_only_public_key().0);
    TxOut { value: Amount::from_sat(sat), script_pubkey: ScriptBuf::new_p2tr_tweaked(x) }
}

/// A connection whose reader thread turns lines into events.
fn connect(addr: &str, events: Sender<(usize, Event)>, id: usize) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let lines = BufReader::new(s.try_clone()?);
    std::thread::Builder::new().stack_size(64 << 10).spawn(move || {
        let mut ready = false;
        for line in lines.lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            let p = &v["params"];
            let event = match v["method"].as_str() {
                Some("blockchain.headers.subscribe") => {
                    Event::Header(p[0]["height"].as_u64().unwrap_or(0), at)
                }
                Some("blockchain.silentpayments.subscribe") => {
                    let mined = p["history"].as_array().is_some_and(|h| h.iter().any(|e| e["height"] != 0));
                    let unmined = p["history"].as_array().is_some_and(|h| h.iter().any(|e| e["height"] == 0));
                    if mined {
                        Event::Paid(at)
                    } else if unmined {
                        Event::Mempool
                    } else if p["progress"] == 1.0 && !ready {
                        ready = true;
                        Event::Ready
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            if events.send((id, event)).is_err() {
                break;
            }
        }
    })?;
    Ok(s)
}

/// Until the server at `addr` has a mempool transaction paying `script`.
fn wait_in_mempool(addr: &str, script: &bitcoin::Script) -> Result<()> {
    let mut hash: [u8; 32] = Sha256::digest(script.as_bytes()).into();
    hash.reverse();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let s = TcpStream::connect(addr)?;
        send(&s, 1, "blockchain.scripthash.get_mempool", json!([hex::encode(hash)]))?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let reply: Value = serde_json::from_str(&line)?;
        if reply["result"].as_array().is_some_and(|a| !a.is_empty()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the server never had the block's transactions in its mempool")
}

fn send(mut s: &TcpStream, id: u64, method: &str, params: Value) -> Result<()> {
    let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
    Ok(s.write_all(format!("{line}\n").as_bytes())?)
}

/// One block through one server; the times from the mining call, in seconds: header, first,
/// median and last session; and, with `in_process`, the seconds its checks take here.
fn one_block(
    bench: &mut Bench,
    addr: &str,
    args: &Args,
    round: usize,
    in_process: bool,
) -> Result<([f64; 5], Option<f64>)> {
    let (tx, events) = crossbeam_channel::unbounded::<(usize, Event)>();
    // The coins first: their block is scanned before any session is there.
    let mut amounts = vec![20_000u64; args.eligible];
    // The payment timed, and with --mempool-first the one before it.
    amounts.extend([args.sessions as u64 * 600 + 100_000; 2]);
    let coins = bench.fund(&amounts)?;
    let tip = bench.height()?;
    let headers = connect(addr, tx.clone(), usize::MAX)?;
    send(&headers, 0, "blockchain.headers.subscribe", json!([]))?;
    // Every round's wallets are new ones.
    let keys: Vec<(SecretKey, PublicKey)> = (0..args.sessions as u64)
        .map(|i| {
            let n = (round as u64) << 32 | i;
            (key("scan", n), key("spend", n).public_key(&bench.secp))
        })
        .collect();
    let mut conns = Vec::new();
    for (i, (scan, spend)) in keys.iter().enumerate() {
        let c = connect(addr, tx.clone(), i)?;
        send(&c, 0, "server.version", json!(["sp-block", "1.4"]))?;
        let params = json!([hex::encode(scan.secret_bytes()), spend.to_string(), tip + 1]);
        send(&c, 1, "blockchain.silentpayments.subscribe", params)?;
        conns.push(c);
    }
    let receivers: Vec<Receiver> =
        keys.iter().map(|(scan, spend)| Receiver::new(*scan, *spend, &[])).collect();
    let (mut ready, deadline) = (0, Instant::now() + PATIENCE);
    while ready < args.sessions {
        match events.recv_deadline(deadline).context("sessions not ready")? {
            (_, Event::Ready) => ready += 1,
            (_, Event::Header(..)) => {}
            (_, Event::Paid(_) | Event::Mempool) => bail!("a payment before the block"),
        }
    }
    // Some of the plain ones, then the payment to every session, then the rest.
    let mut txs = Vec::new();
    for (i, coin) in coins[..args.eligible].iter().enumerate() {
        let to = key("to", bench.serial * 1_000_000 + i as u64).public_key(&bench.secp);
        txs.push(bench.spend(coin, vec![p2tr(&to, 19_000)])?);
    }
    txs.insert(args.eligible / 2, bench.pay_all(&coins[args.eligible], &receivers)?);
    let hexes: Vec<String> = txs.iter().map(bitcoin::consensus::encode::serialize_hex).collect();
    let mut mempool_phase = 0.0;
    let block: Vec<String> = if args.mempool_first {
        // All in the mempool, the payment last and alone, so that a session told of it has
        // checked every batch the server announced before it.
        let (payment, plain) = (args.eligible / 2, hexes.iter().enumerate());
        let sent_first = Instant::now();
        for (_, hex) in plain.filter(|&(i, _)| i != payment) {
            bench.rpc.call("sendrawtransaction", json!([hex]))?;
        }
        // The server has them all (the last sent), then its tracker a moment to announce them,
        // before the payment: else the payment may come in the same pass, in an earlier batch, and
        // sessions told of it still check the rest when the block comes.
        let last =
            txs.iter().enumerate().rev().find(|&(i, _)| i != payment).map(|(_, t)| t).context("a tx")?;
        wait_in_mempool(addr, &last.output[0].script_pubkey)?;
        std::thread::sleep(Duration::from_secs(2));
        bench.rpc.call("sendrawtransaction", json!([hexes[payment]]))?;
        let mut told = 0;
        while told < args.sessions {
            if let (_, Event::Mempool) =
                events.recv_deadline(Instant::now() + PATIENCE).context("mempool payment")?
            {
                told += 1;
            }
        }
        mempool_phase = sent_first.elapsed().as_secs_f64();
        let again = bench.pay_all(&coins[args.eligible + 1], &receivers)?;
        let mut block: Vec<String> = txs.iter().map(|t| t.compute_txid().to_string()).collect();
        block.push(bitcoin::consensus::encode::serialize_hex(&again));
        txs.push(again);
        block
    } else {
        hexes
    };
    let t0 = Instant::now();
    bench.rpc.call("generateblock", json!([bench.miner, block]))?;
    let height = tip + 1;
    let mut paid: Vec<f64> = Vec::with_capacity(args.sessions);
    let mut seen = vec![false; args.sessions];
    let mut header = None;
    while paid.len() < args.sessions || header.is_none() {
        match events.recv_deadline(t0 + PATIENCE).context("notifications missing")? {
            (i, Event::Paid(at)) if !seen[i] => {
                seen[i] = true;
                paid.push((at - t0).as_secs_f64());
            }
            (_, Event::Header(h, at)) if h == height => header = Some((at - t0).as_secs_f64()),
            _ => {}
        }
    }
    // Closed, not only dropped: each reader thread holds a clone of its socket.
    for c in conns.iter().chain([&headers]) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    paid.sort_by(f64::total_cmp);
    let here = if in_process {
        // The coin each transaction spends, in the block's order.
        let mut spent: Vec<&bitcoin::Script> =
            coins[..args.eligible].iter().map(|c| c.txout.script_pubkey.as_script()).collect();
        spent.insert(args.eligible / 2, coins[args.eligible].txout.script_pubkey.as_script());
        if args.mempool_first {
            spent.push(coins[args.eligible + 1].txout.script_pubkey.as_script());
        }
        Some(checks_here(&txs, &spent, &receivers, args.threads)?)
    } else {
        None
    };
    Ok(([header.unwrap(), paid[0], paid[paid.len() / 2], paid[paid.len() - 1], mempool_phase], here))
}

/// The block's checks for every receiver in this process, as a server's batch makes them (one
/// `TweakTable` per transaction, shared; `matches_by` for each receiver), its transactions split
/// among `threads` threads: the seconds taken. `spent`: the script of the coin each transaction
/// spends. Every receiver must match the payment.
fn checks_here(
    txs: &[Transaction],
    spent: &[&bitcoin::Script],
    receivers: &[Receiver],
    threads: usize,
) -> Result<f64> {
    let eligible: Vec<(PublicKey, Vec<silent::OutputPrefix>)> = txs
        .iter()
        .zip(spent)
        .map(|(tx, &script)| {
            let tweak = silent::tweak(tx, &[script]).context("an eligible transaction")?;
            Ok((tweak, silent::output_prefixes(tx)))
        })
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let part = eligible.len().div_ceil(threads.max(1));
    let matched: usize = std::thread::scope(|s| {
        let parts: Vec<_> = eligible
            .chunks(part)
            .map(|chunk| {
                s.spawn(move || {
                    let mut n = 0;
                    for (tweak, outputs) in chunk {
                        let table = TweakTable::new(tweak);
                        n += receivers.iter().filter(|r| r.matches_by(&table, outputs)).count();
                    }
                    n
                })
            })
            .collect();
        parts.into_iter().map(|p| p.join().expect("a check thread panicked")).sum()
    });
    let took = t0.elapsed().as_secs_f64();
    if matched < receivers.len() {
        bail!("in process, {matched} matches where every one of {} receivers is paid", receivers.len());
    }
    Ok(took)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let servers: Vec<(String, String)> = args
        .servers
        .iter()
        .map(|s| s.split_once('=').map(|(n, a)| (n.to_string(), a.to_string())).context("NAME=HOST:PORT"))
        .collect::<Result<_>>()?;
    let rpc = Rpc::with_timeout(&args.rpc_addr, Auth::Cookie(args.cookie.clone()), Duration::from_secs(600));
    let miner = rpc.call("getnewaddress", json!([]))?.as_str().context("getnewaddress")?.to_string();
    let balance = btc_to_sat(&rpc.call("getbalance", json!([]))?)?;
    let need = (args.eligible as u64 * 20_000 + 2 * args.sessions as u64 * 600 + 300_000) * 2;
    if balance < need * (args.rounds * servers.len()) as u64 {
        bail!("the node's wallet has {balance} sat, the run needs more: mine to it first");
    }
    let mut bench = Bench { rpc, secp: Secp256k1::new(), miner, serial: 0 };
    println!(
        "{} sessions, each its own live subscription; a block of {} eligible transactions + 1 paying every \
         session{}; {} rounds; seconds from the mining call",
        args.sessions,
        args.eligible,
        if args.mempool_first {
            ", all of them in the mempool first and checked there by every session, + 1 new paying every session"
        } else {
            ""
        },
        args.rounds
    );
    // With --mempool-first, also the mempool's part: from the first transaction sent to the last
    // session told of the payment from the mempool (a 2 s pause included).
    let mempool = if args.mempool_first { (" mempool part |", "---|") } else { ("", "") };
    println!(
        "| round | server | header | first | median | last session | last / {} |{}",
        servers[0].0, mempool.0
    );
    println!("|---|---|---|---|---|---|---|{}", mempool.1);
    let mut lasts: Vec<Vec<f64>> = vec![Vec::new(); servers.len() + 1];
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut row = vec![[0.0; 5]; servers.len()];
        let mut here = None;
        for &s in &order {
            let (times, h) =
                one_block(&mut bench, &servers[s].1, &args, round * servers.len() + s, here.is_none())?;
            row[s] = times;
            here = here.or(h);
            // The sessions' closing, seen by the server, before the next one's block.
            std::thread::sleep(Duration::from_secs(2));
        }
        for (s, t) in row.iter().enumerate() {
            lasts[s].push(t[3]);
            let part = if args.mempool_first { format!(" {:.1} |", t[4]) } else { String::new() };
            println!(
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |{part}",
                round + 1,
                servers[s].0,
                t[0],
                t[1],
                t[2],
                t[3],
                t[3] / row[0][3]
            );
        }
        let here = here.expect("measured in the round's first block");
        lasts[servers.len()].push(here);
        println!(
            "| {} | in process, {} threads | – | – | – | {here:.3} | {:.2} |{}",
            round + 1,
            args.threads,
            here / row[0][3],
            if args.mempool_first { " – |" } else { "" }
        );
    }
    let checks = (args.sessions * (args.eligible + 1)) as f64;
    let in_process = format!("in process, {} threads", args.threads);
    for (s, l) in lasts.iter_mut().enumerate() {
        l.sort_by(f64::total_cmp);
        let median = l[l.len() / 2];
        println!(
            "{}: last session median {:.3} s over {} rounds; {:.1} µs of wall time per (session, transaction) check",
            servers.get(s).map_or(&in_process, |s| &s.0),
            median,
            l.len(),
            median / checks * 1e6
        );
    }
    Ok(())
}
