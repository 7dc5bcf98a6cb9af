//! A stand-in for bitcoind in front of a generated chain, for timing a follower at its tip
//! (`scripts/bench-cold.sh`). No real node can take a gen-blocks chain (its signatures are
//! made-up bytes), so this one validates nothing: it answers the few RPC calls the indexer's
//! follower makes (`getblockchaininfo`, `getblockcount`, `getbestblockhash`, `getblockheader`,
//! `getzmqnotifications`), and once the follower has asked for the best block it appends the
//! blocks of an extension file (`gen-blocks --extend`) to the blocks directory one at a time,
//! as bitcoind does (block record, undo record, then the new best block and a ZMQ `hashblock`).
//! `getblock` is refused: the follower must find each block in the files. Each block appended is
//! logged as a JSON line with its wall-clock time, to be matched with the indexer's
//! `block committed ... committed_at_us=` lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use clap::Parser;
use serde_json::{json, Value};
use zeromq::{Socket, SocketSend};

use blkindex_benches::blockgen::{read_extension, Appender, Report, MAX_BLOCKFILE_SIZE};
use blkindex_shared::config::run_main;
use blkindex_shared::Net;

#[derive(Parser)]
#[command(
    about = "A stand-in node for a generated chain: a follower's RPC calls, blocks appended one at a time"
)]
struct Args {
    /// The blocks directory the follower reads (a copy whose last files may be written).
    #[arg(long)]
    blocks_dir: PathBuf,
    /// gen-blocks.json of the chain (its tip).
    #[arg(long)]
    report: PathBuf,
    /// Blocks to append (`gen-blocks --extend`).
    #[arg(long)]
    extension: PathBuf,
    /// RPC listen address.
    #[arg(long)]
    rpc_addr: String,
    /// ZMQ `hashblock` publisher address (tcp://host:port).
    #[arg(long)]
    zmq_addr: String,
    /// Milliseconds between blocks.
    #[arg(long, default_value_t = 2000)]
    every_ms: u64,
    /// Milliseconds after the follower's first `getbestblockhash` before the first block.
    #[arg(long, default_value_t = 3000)]
    warmup_ms: u64,
    /// One JSON line per block appended.
    #[arg(long)]
    log: PathBuf,
}

/// What the RPC calls see.
struct Node {
    best_height: u32,
    best_hash: BlockHash,
    headers: HashMap<BlockHash, Header>,
    asked_best: Option<Instant>,
    zmq_addr: String,
}

fn main() {
    run_main(|| tokio::runtime::Runtime::new()?.block_on(run(Args::parse())))
}

async fn run(args: Args) -> Result<()> {
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&args.report)?)?;
    let blocks = read_extension(&args.extension)?;
    let net: Net = "regtest".parse().expect("a known network");
    let mut appender = Appender::open(&args.blocks_dir, net.magic(), MAX_BLOCKFILE_SIZE)?;
    let node = Arc::new(Mutex::new(Node {
        best_height: report.best_height,
        best_hash: report.best_hash.parse()?,
        headers: HashMap::new(),
        asked_best: None,
        zmq_addr: args.zmq_addr.clone(),
    }));
    let mut publisher = zeromq::PubSocket::new();
    publisher.bind(&args.zmq_addr).await.with_context(|| format!("cannot bind {}", args.zmq_addr))?;
    let listener =
        TcpListener::bind(&args.rpc_addr).with_context(|| format!("cannot bind {}", args.rpc_addr))?;
    {
        let node = node.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let node = node.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &node);
                });
            }
        });
    }
    eprintln!("fake-node: {} blocks to append after height {}", blocks.len(), report.best_height);

    let started = loop {
        if let Some(t) = node.lock().unwrap().asked_best {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = std::fs::File::create(&args.log)?;
    let first = tokio::time::Instant::from_std(started + Duration::from_millis(args.warmup_ms));
    for (k, b) in blocks.iter().enumerate() {
        tokio::time::sleep_until(first + Duration::from_millis(args.every_ms) * k as u32).await;
        let header: Header = bitcoin::consensus::deserialize(&b.block[..80])?;
        let hash = header.block_hash();
        let file = appender.append(b)?;
        let height = {
            let mut n = node.lock().unwrap();
            n.headers.insert(hash, header);
            n.best_height += 1;
            n.best_hash = hash;
            n.best_height
        };
        let at_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
        let mut body = hash.to_byte_array();
        body.reverse(); // as Core sends it: the hash as displayed
        let mut msg = zeromq::ZmqMessage::from("hashblock");
        msg.push_back(body.to_vec().into());
        msg.push_back((k as u32).to_le_bytes().to_vec().into());
        publisher.send(msg).await?;
        writeln!(
            log,
            "{}",
            json!({"height": height, "hash": hash.to_string(), "file": file, "bytes": b.block.len(), "appended_at_us": at_us})
        )?;
    }
    eprintln!("fake-node: all blocks appended; serving until killed");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// One HTTP connection: JSON-RPC requests until the client closes it.
fn serve(conn: TcpStream, node: &Mutex<Node>) -> Result<()> {
    // One write per reply, no Nagle: a reply written in pieces would wait for the client's
    // delayed ACK (40 ms) before its last piece.
    conn.set_nodelay(true)?;
    let mut read = BufReader::new(conn.try_clone()?);
    let mut write = conn;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if read.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            read.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body)?;
        let request: Value = serde_json::from_slice(&body)?;
        let reply = match request {
            Value::Array(calls) => Value::Array(calls.iter().map(|c| answer(c, node)).collect()),
            call => answer(&call, node),
        };
        let text = reply.to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        write.write_all(response.as_bytes())?;
    }
}

fn answer(call: &Value, node: &Mutex<Node>) -> Value {
    let mut n = node.lock().unwrap();
    let param = |i: usize| call["params"].get(i).cloned().unwrap_or(Value::Null);
    let result: Result<Value, (i64, &str)> = match call["method"].as_str().unwrap_or("") {
        "getblockchaininfo" => Ok(json!({
            "chain": "regtest", "blocks": n.best_height, "headers": n.best_height,
            "bestblockhash": n.best_hash.to_string(), "pruned": false, "initialblockdownload": false,
        })),
        "getblockcount" => Ok(json!(n.best_height)),
        "getbestblockhash" => {
            n.asked_best.get_or_insert_with(Instant::now);
            Ok(json!(n.best_hash.to_string()))
        }
        "getblockheader" => {
            let header =
                param(0).as_str().and_then(|s| s.parse::<BlockHash>().ok()).and_then(|h| n.headers.get(&h));
            match header {
                Some(h) if param(1) == json!(false) => {
                    Ok(json!(bitcoin::consensus::encode::serialize_hex(h)))
                }
                Some(_) => Err((-8, "only the raw form (verbose = false) is served")),
                None => Err((-5, "Block not found")),
            }
        }
        "getzmqnotifications" => Ok(json!([{"type": "pubhashblock", "address": n.zmq_addr, "hwm": 1000}])),
        "getblock" => {
            Err((-1, "fake-node serves no blocks over RPC: the follower must read them from the files"))
        }
        _ => Err((-32601, "Method not found")),
    };
    match result {
        Ok(r) => json!({"result": r, "error": null, "id": call["id"]}),
        Err((code, message)) => {
            json!({"result": null, "error": {"code": code, "message": message}, "id": call["id"]})
        }
    }
}
