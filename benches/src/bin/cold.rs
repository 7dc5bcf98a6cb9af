//! Serving a chain bigger than memory (`scripts/bench-cold.sh`): which scripts to ask, and the
//! client side of each measurement. Each step prints one JSON line.
//!
//!   cold pick --datadir D --db DB --report gen-blocks.json --out scripts.json
//!       reads the whole `script` family once: prefixes by history length, a sample of scripts of
//!       about 10, 100, 1,000 and 10,000 transactions, the small scripts sharing a bucket with the
//!       hottest ones (and small scripts of the same lengths elsewhere, to compare), each
//!       resolved to its full script hash through its first transaction; and a wallet mix's
//!       script hashes and txids, drawn from random blocks
//!   cold history --server S --pid P --scripts scripts.json --class 1000
//!   cold history ... --neighbours --round R
//!       asks each script's get_history once, one request at a time, and counts per request what
//!       the server read (`/proc/P/io`) and what the disk did (`/sys/dev/block/M:N/stat`)
//!   cold mix --server S --scripts scripts.json --phase saturated|paced
//!       the wallet mix (`wallet_mix`) over that workload
//!   cold disk --dir BLOCKS
//!       the disk itself: O_DIRECT random 4 KiB reads of the blk files, one at a time and 8 at once
//!
//! Nothing here keeps a script warm on purpose: `history` asks each script once, and the script
//! restarts the server (whose script cache would answer a repeat) and evicts the files before
//! each phase.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

use blkindex_benches::blockgen::Report;
use blkindex_benches::wallet_mix::{self, percentile, rss_mb, Workload};
use blkindex_shared::blkfile::{list_files, BlockFiles, FileKind};
use blkindex_shared::bucket;
use blkindex_shared::config::run_main;
use blkindex_shared::parse::{self, Tx};
use blkindex_shared::query::IndexReader;
use blkindex_shared::schema::{self, cf, Prefix, TxnumList, PREFIX_LEN};
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::varint::Reader;
use blkindex_shared::ScriptHash;

#[derive(Parser)]
#[command(about = "Serving a chain bigger than memory: scripts to ask, and the client of each measurement")]
struct Args {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    Pick(PickArgs),
    History(HistoryArgs),
    Mix(MixArgs),
    Disk(DiskArgs),
}

fn main() {
    run_main(|| match Args::parse().step {
        Step::Pick(a) => pick(&a),
        Step::History(a) => history(&a),
        Step::Mix(a) => tokio::runtime::Runtime::new()?.block_on(mix(&a)),
        Step::Disk(a) => disk(&a),
    })
}

/// History lengths asked for, and the band around each that counts as that size.
const CLASSES: [u64; 4] = [10, 100, 1_000, 10_000];
fn band(class: u64) -> std::ops::RangeInclusive<u64> {
    class * 4 / 5..=class * 5 / 4
}

/// Neighbours and their controls have at most this many transactions.
const SMALL: u64 = 64;

#[derive(Parser)]
struct PickArgs {
    /// The chain's data directory (blocks in <datadir>/regtest/blocks).
    #[arg(long)]
    datadir: PathBuf,
    #[arg(long)]
    db: PathBuf,
    /// The secondary instance's own directory.
    #[arg(long)]
    secondary: PathBuf,
    /// gen-blocks.json (the hot scripts).
    #[arg(long)]
    report: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Scripts per size class.
    #[arg(long, default_value_t = 60)]
    per_class: usize,
    /// Hot scripts with at least this many transactions have their bucket's small scripts taken
    /// as neighbours.
    #[arg(long, default_value_t = 1_000_000)]
    hot_min: u64,
    /// Blocks the wallet mix's workload is drawn from, and one output (and txid) in how many.
    #[arg(long, default_value_t = 2000)]
    mix_blocks: u64,
    #[arg(long, default_value_t = 32)]
    mix_one_in: u32,
    #[arg(long, default_value_t = 13)]
    seed: u64,
}

/// A script to ask for, with what the index holds for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Script {
    /// Electrum's script hash.
    scripthash: String,
    /// Txnums in its list (its history, bar a prefix collision).
    txnums: u64,
    /// Distinct blocks they are in (one `txpos` row read each).
    blocks: u64,
    /// Its list is in the `long` family (one more read).
    long: bool,
    /// Bytes of its bucket's value.
    bucket_bytes: u64,
    /// For a hot script's neighbour: its place among the bucket's neighbours (round `rank` asks
    /// the `rank`-th neighbour of every hot bucket, so no two share a bucket in one round).
    #[serde(default)]
    rank: usize,
}

#[derive(Serialize, Deserialize)]
struct HotBucket {
    scripthash: String,
    txs: u64,
    bucket_bytes: u64,
    /// Other prefixes in its bucket, and how many of them are small.
    others: u64,
    small: u64,
}

#[derive(Serialize, Deserialize)]
struct Picked {
    tip: u32,
    txs: u64,
    /// Prefixes by list length: (lowest length of the bin, prefixes).
    histogram: Vec<(u64, u64)>,
    classes: BTreeMap<u64, Vec<Script>>,
    hot: Vec<HotBucket>,
    neighbours: Vec<Script>,
    /// For each neighbour, a small script of the same length from another bucket.
    controls: Vec<Script>,
    /// The wallet mix's script hashes by history length: (lowest length of the bin, scripts).
    mix_histogram: Vec<(u64, u64)>,
    scripthashes: Vec<String>,
    txids: Vec<String>,
}

/// A prefix seen in the scan.
#[derive(Clone, Copy)]
struct Seen {
    prefix: Prefix,
    long: bool,
    bucket_bytes: u64,
}

/// Keeps a uniform sample of `k` of the items offered (reservoir sampling).
struct Reservoir {
    k: usize,
    seen: u64,
    items: Vec<Seen>,
}

impl Reservoir {
    fn new(k: usize) -> Self {
        Reservoir { k, seen: 0, items: Vec::new() }
    }

    fn offer(&mut self, rng: &mut fastrand::Rng, s: Seen) {
        self.seen += 1;
        if self.items.len() < self.k {
            self.items.push(s);
        } else {
            let i = rng.u64(..self.seen) as usize;
            if i < self.k {
                self.items[i] = s;
            }
        }
    }
}

fn pick(a: &PickArgs) -> Result<()> {
    let t0 = Instant::now();
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&a.report)?)?;
    let store = Store::open(&a.db, Mode::Secondary(a.secondary.clone()))?;
    let width = store.bucket_width()?;
    let blocks = BlockFiles::open(&a.datadir.join("regtest").join("blocks"))?;
    let index = IndexReader::new(store, blocks)?;
    let store = &index.store;
    let mut rng = fastrand::Rng::with_seed(a.seed);

    let long_counts: HashMap<Prefix, u64> = {
        let mut m = HashMap::new();
        let tag = [schema::long_tag(cf::SCRIPT)];
        for item in store.db().prefix_iterator_cf(store.cf(cf::LONG), tag) {
            let (k, v) = item?;
            if k[0] != tag[0] {
                break;
            }
            m.insert(k[1..].try_into()?, TxnumList::count(&v) as u64);
        }
        m
    };
    // Hot scripts' buckets: key → the hot prefix and its report entry.
    let hot: Vec<(Prefix, &blkindex_benches::blockgen::ScriptReport)> = report
        .hot
        .iter()
        .filter(|h| h.txs >= a.hot_min)
        .map(|h| Ok((schema::script_prefix(&h.scripthash.parse().map_err(anyhow::Error::msg)?), h)))
        .collect::<Result<_>>()?;
    let mut hot_buckets: Vec<HotBucket> = hot
        .iter()
        .map(|(_, h)| HotBucket {
            scripthash: h.scripthash.clone(),
            txs: h.txs,
            bucket_bytes: 0,
            others: 0,
            small: 0,
        })
        .collect();

    let mut classes: Vec<Reservoir> = CLASSES.iter().map(|_| Reservoir::new(a.per_class * 2)).collect();
    let mut by_length: Vec<Reservoir> = (0..=SMALL).map(|_| Reservoir::new(64)).collect();
    // Per hot bucket, its small neighbours.
    let mut neighbours: Vec<Vec<Seen>> = vec![Vec::new(); hot.len()];
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(false);
    opts.set_readahead_size(4 << 20);
    let it = store.db().iterator_cf_opt(store.cf(cf::SCRIPT), opts, rocksdb::IteratorMode::Start);
    let rest_len = PREFIX_LEN - width;
    let mut buckets = 0u64;
    for item in it {
        let (key, value) = item?;
        buckets += 1;
        let in_hot = hot.iter().position(|(p, _)| p[..width] == key[..]);
        for entry in bucket::entries(&value, rest_len) {
            let (rest, list) = entry?;
            let mut prefix = [0u8; PREFIX_LEN];
            prefix[..width].copy_from_slice(&key);
            prefix[width..].copy_from_slice(rest);
            let long = list.is_empty();
            let txnums = match long {
                true => *long_counts.get(&prefix).context("a marker with no long list")?,
                false => TxnumList::count(list) as u64,
            };
            *histogram.entry(bin(txnums)).or_default() += 1;
            let s = Seen { prefix, long, bucket_bytes: value.len() as u64 };
            for (c, r) in CLASSES.iter().zip(&mut classes) {
                if band(*c).contains(&txnums) {
                    r.offer(&mut rng, s);
                }
            }
            if let Some(h) = in_hot {
                let hb = &mut hot_buckets[h];
                hb.bucket_bytes = value.len() as u64;
                if prefix != hot[h].0 {
                    hb.others += 1;
                    if txnums <= SMALL {
                        hb.small += 1;
                        neighbours[h].push(s);
                    }
                }
            } else if txnums <= SMALL {
                by_length[txnums as usize].offer(&mut rng, s);
            }
        }
    }
    let scanned_secs = t0.elapsed().as_secs_f64();

    let resolve_all = |seen: &[Seen], want: usize| -> Result<Vec<Script>> {
        let mut out = Vec::new();
        for s in seen {
            if out.len() == want {
                break;
            }
            if let Some(script) = resolve(&index, s)? {
                out.push(script);
            }
        }
        Ok(out)
    };
    let mut picked_classes = BTreeMap::new();
    for (c, r) in CLASSES.iter().zip(&classes) {
        picked_classes.insert(*c, resolve_all(&r.items, a.per_class)?);
    }
    // Each neighbour with a control: a script of its length from another bucket, never twice.
    let (mut picked_neighbours, mut controls) = (Vec::new(), Vec::new());
    for in_bucket in &neighbours {
        for (rank, n) in resolve_all(in_bucket, usize::MAX)?.into_iter().enumerate() {
            let pool = &mut by_length[n.txnums as usize].items;
            while let Some(s) = pool.pop() {
                if let Some(control) = resolve(&index, &s)? {
                    picked_neighbours.push(Script { rank, ..n });
                    controls.push(control);
                    break;
                }
            }
        }
    }

    let (scripthashes, txids) = mix_workload(&index, a, &mut rng)?;
    let mut mix_histogram: BTreeMap<u64, u64> = BTreeMap::new();
    for sh in &scripthashes {
        let sh: ScriptHash = sh.parse().map_err(anyhow::Error::msg)?;
        let n = match store.txnums_at_most(cf::SCRIPT, &schema::script_prefix(&sh), 0)? {
            Ok(_) => 0,
            Err(n) => n as u64,
        };
        *mix_histogram.entry(bin(n.max(1))).or_default() += 1;
    }
    let (tip, _) = index.chain.tip().context("empty index")?;
    let picked = Picked {
        tip,
        txs: index.chain.next_txnum() as u64,
        histogram: histogram.into_iter().collect(),
        classes: picked_classes,
        hot: hot_buckets,
        neighbours: picked_neighbours,
        controls,
        mix_histogram: mix_histogram.into_iter().collect(),
        scripthashes,
        txids,
    };
    std::fs::write(&a.out, serde_json::to_string(&picked)?)?;
    println!(
        "{}",
        json!({
            "buckets": buckets, "scan_seconds": scanned_secs, "seconds": t0.elapsed().as_secs_f64(),
            "classes": picked.classes.iter().map(|(c, v)| (c.to_string(), v.len())).collect::<BTreeMap<_, _>>(),
            "neighbours": picked.neighbours.len(), "controls": picked.controls.len(),
            "rounds": picked.neighbours.iter().map(|n| n.rank + 1).max().unwrap_or(0), "mix_histogram": picked.mix_histogram,
            "hot": picked.hot, "histogram": picked.histogram,
            "mix_scripthashes": picked.scripthashes.len(), "mix_txids": picked.txids.len(),
        })
    );
    Ok(())
}

/// The lowest length of a prefix's histogram bin: 1, 2, 5, 10, 20, 50, …
fn bin(n: u64) -> u64 {
    let mut b = 1;
    for i in 0.. {
        let next = if i % 3 == 1 { b / 2 * 5 } else { b * 2 };
        if next > n {
            break;
        }
        b = next;
    }
    b
}

/// The full script hash of a prefix, from its first transactions (the first one pays it, unless
/// another script shares the 5-byte prefix), with what the index holds for it.
fn resolve(index: &IndexReader, s: &Seen) -> Result<Option<Script>> {
    let txnums = index.store.txnums(cf::SCRIPT, &s.prefix)?;
    let mut found = None;
    'txs: for &t in txnums.iter().take(4) {
        let (raw, _, _) = index.tx_by_num(t)?;
        let mut tx = Tx::default();
        parse::parse_tx(&mut Reader::new(&raw), &raw, &mut tx)?;
        for out in &tx.outputs {
            let sh = ScriptHash::of(out.script);
            if sh.0[..PREFIX_LEN] == s.prefix {
                found = Some(sh);
                break 'txs;
            }
        }
    }
    let Some(sh) = found else { return Ok(None) };
    let mut blocks = 0;
    let mut last = None;
    for &t in &txnums {
        let h = index.chain.height_of_txnum(t);
        if h != last {
            blocks += 1;
            last = h;
        }
    }
    Ok(Some(Script {
        scripthash: sh.to_string(),
        txnums: txnums.len() as u64,
        blocks,
        long: s.long,
        bucket_bytes: s.bucket_bytes,
        rank: 0,
    }))
}

/// Script hashes (of outputs) and txids from random blocks, one in `mix_one_in` of each: a
/// workload spread over the whole chain, so that few requests repeat.
fn mix_workload(
    index: &IndexReader,
    a: &PickArgs,
    rng: &mut fastrand::Rng,
) -> Result<(Vec<String>, Vec<String>)> {
    let (tip, _) = index.chain.tip().context("empty index")?;
    let (mut scripthashes, mut txids) = (Vec::new(), Vec::new());
    for _ in 0..a.mix_blocks {
        let block = index.block_bytes(rng.u32(1..=tip))?;
        parse::for_each_tx::<anyhow::Error>(&block, |_, tx| {
            if rng.u32(..a.mix_one_in) == 0 {
                txids.push(tx.txid.to_string());
            }
            for out in &tx.outputs {
                if out.script.first() != Some(&0x6a) && rng.u32(..a.mix_one_in) == 0 {
                    scripthashes.push(ScriptHash::of(out.script).to_string());
                }
            }
            Ok(())
        })?;
    }
    scripthashes.sort();
    scripthashes.dedup();
    Ok((scripthashes, txids))
}

#[derive(Parser)]
struct HistoryArgs {
    /// The Electrum server, host:port (TCP).
    #[arg(long)]
    server: String,
    /// The server's process id, for its I/O counters.
    #[arg(long)]
    pid: u32,
    #[arg(long)]
    scripts: PathBuf,
    /// A file (or directory) on the disk whose counters are read: its device's.
    #[arg(long)]
    disk_of: PathBuf,
    /// The size class to ask for.
    #[arg(long, required_unless_present = "neighbours")]
    class: Option<u64>,
    /// Instead: this round's neighbours of the hot scripts (one per hot bucket), each followed by
    /// its control.
    #[arg(long, requires = "round")]
    neighbours: bool,
    #[arg(long)]
    round: Option<usize>,
    /// Each request's figures, as JSON lines, appended here.
    #[arg(long)]
    detail: Option<PathBuf>,
}

/// A process's I/O counters (`/proc/<pid>/io`).
#[derive(Clone, Copy, Default)]
struct ProcIo {
    syscr: u64,
    read_bytes: u64,
}

fn proc_io(pid: u32) -> Result<ProcIo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/io"))
    };
    Ok(ProcIo { syscr: field("syscr:")?, read_bytes: field("read_bytes:")? })
}

/// A block device's counters (`/sys/dev/block/M:N/stat`): reads completed, sectors read, ms
/// spent reading.
#[derive(Clone, Copy, Default)]
struct DiskIo {
    reads: u64,
    sectors: u64,
    read_ms: u64,
}

struct Disk(PathBuf);

impl Disk {
    fn of(path: &Path) -> Result<Disk> {
        let dev = std::fs::metadata(path)?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let stat = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
        anyhow::ensure!(stat.exists(), "{}: no block device counters at {}", path.display(), stat.display());
        Ok(Disk(stat))
    }

    fn read(&self) -> Result<DiskIo> {
        let text = std::fs::read_to_string(&self.0)?;
        let f: Vec<u64> = text.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        anyhow::ensure!(f.len() >= 4, "{}: short", self.0.display());
        Ok(DiskIo { reads: f[0], sectors: f[2], read_ms: f[3] })
    }
}

/// One plain TCP connection speaking JSON-RPC lines, protocol 1.4.
struct Line {
    write: TcpStream,
    read: BufReader<TcpStream>,
    buf: String,
    id: u64,
}

#[derive(Deserialize)]
struct HistoryReply {
    result: Option<Vec<serde::de::IgnoredAny>>,
    error: Option<serde_json::Value>,
}

impl Line {
    fn open(addr: &str) -> Result<Line> {
        let s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        s.set_nodelay(true)?;
        let mut l = Line { read: BufReader::new(s.try_clone()?), write: s, buf: String::new(), id: 0 };
        l.call("server.version", json!(["cold", "1.4"]))?;
        Ok(l)
    }

    /// Sends a request and returns its reply's line.
    fn call(&mut self, method: &str, params: serde_json::Value) -> Result<&str> {
        self.id += 1;
        let req =
            json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params}).to_string() + "\n";
        self.write.write_all(req.as_bytes())?;
        self.buf.clear();
        anyhow::ensure!(self.read.read_line(&mut self.buf)? > 0, "the server closed the connection");
        Ok(&self.buf)
    }
}

/// What one request cost.
#[derive(Serialize)]
struct Asked {
    set: &'static str,
    scripthash: String,
    txnums: u64,
    blocks: u64,
    long: bool,
    entries: i64,
    ms: f64,
    syscr: u64,
    read_kib: f64,
    disk_reads: u64,
    disk_kib: f64,
    disk_ms: u64,
}

fn ask(line: &mut Line, pid: u32, disk: &Disk, set: &'static str, s: &Script) -> Result<Asked> {
    let (io0, d0) = (proc_io(pid)?, disk.read()?);
    let t = Instant::now();
    let reply = line.call("blockchain.scripthash.get_history", json!([s.scripthash]))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (io1, d1) = (proc_io(pid)?, disk.read()?);
    let r: HistoryReply = serde_json::from_str(reply)?;
    let entries = match (r.result, r.error) {
        (Some(v), _) => v.len() as i64,
        (None, e) => {
            eprintln!("cold: {}: {}", s.scripthash, e.unwrap_or_default());
            -1
        }
    };
    Ok(Asked {
        set,
        scripthash: s.scripthash.clone(),
        txnums: s.txnums,
        blocks: s.blocks,
        long: s.long,
        entries,
        ms,
        syscr: io1.syscr - io0.syscr,
        read_kib: (io1.read_bytes - io0.read_bytes) as f64 / 1024.0,
        disk_reads: d1.reads - d0.reads,
        disk_kib: (d1.sectors - d0.sectors) as f64 / 2.0,
        disk_ms: d1.read_ms - d0.read_ms,
    })
}

/// Percentiles and means of a set of requests.
fn summary(rows: &[&Asked], ping_syscr: f64) -> serde_json::Value {
    let n = rows.len().max(1) as f64;
    let mut us: Vec<u64> = rows.iter().map(|r| (r.ms * 1000.0) as u64).collect();
    us.sort_unstable();
    let mean = |f: &dyn Fn(&Asked) -> f64| rows.iter().map(|r| f(r)).sum::<f64>() / n;
    let disk_reads = mean(&|r| r.disk_reads as f64);
    json!({
        "n": rows.len(),
        "p50_ms": percentile(&us, 0.50), "p99_ms": percentile(&us, 0.99),
        "mean_ms": mean(&|r| r.ms), "max_ms": us.last().map(|&v| v as f64 / 1000.0),
        "entries": mean(&|r| r.entries as f64),
        "errors": rows.iter().filter(|r| r.entries < 0).count(),
        // What the index says a request must read: its bucket (and long list), one txpos row per
        // block, one blk read per transaction.
        "logical_reads": mean(&|r| 1.0 + r.long as u8 as f64 + r.blocks as f64 + r.txnums as f64),
        "txnums": mean(&|r| r.txnums as f64), "blocks": mean(&|r| r.blocks as f64),
        "syscr": mean(&|r| r.syscr as f64) - ping_syscr,
        "read_kib": mean(&|r| r.read_kib),
        "disk_reads": disk_reads, "disk_kib": mean(&|r| r.disk_kib),
        "disk_ms_per_read": mean(&|r| r.disk_ms as f64) / disk_reads.max(1e-9),
    })
}

fn history(a: &HistoryArgs) -> Result<()> {
    let picked: Picked = serde_json::from_str(&std::fs::read_to_string(&a.scripts)?)?;
    let disk = Disk::of(&a.disk_of)?;
    let mut line = Line::open(&a.server)?;
    // A request's syscr also counts the server's reads that are not the index's (its runtime's
    // wake-ups): measured on pings, and taken off.
    let pings = 50;
    let before = proc_io(a.pid)?;
    for _ in 0..pings {
        line.call("server.ping", json!([]))?;
    }
    let ping_syscr = (proc_io(a.pid)?.syscr - before.syscr) as f64 / pings as f64;

    let mut asked = Vec::new();
    let t0 = Instant::now();
    if a.neighbours {
        let round = a.round.expect("clap requires --round");
        // In turn, so that both sets meet the same state of the caches.
        for (n, c) in picked.neighbours.iter().zip(&picked.controls).filter(|(n, _)| n.rank == round) {
            asked.push(ask(&mut line, a.pid, &disk, "neighbour", n)?);
            asked.push(ask(&mut line, a.pid, &disk, "control", c)?);
        }
    } else {
        let class = a.class.expect("clap requires --class");
        let scripts = picked.classes.get(&class).with_context(|| format!("no class {class}"))?;
        for s in scripts {
            asked.push(ask(&mut line, a.pid, &disk, "class", s)?);
        }
    }
    if let Some(path) = &a.detail {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for r in &asked {
            writeln!(f, "{}", json!({"class": a.class, "round": a.round, "request": r}))?;
        }
    }
    let sets: Vec<&'static str> = match a.neighbours {
        true => vec!["neighbour", "control"],
        false => vec!["class"],
    };
    let mut out = serde_json::Map::new();
    for set in sets {
        let rows: Vec<&Asked> = asked.iter().filter(|r| r.set == set).collect();
        out.insert(set.to_string(), summary(&rows, ping_syscr));
    }
    out.insert("ping_syscr".into(), json!(ping_syscr));
    out.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    out.insert("rss_mb".into(), json!(rss_mb(a.pid, "VmRSS:")));
    out.insert("anon_mb".into(), json!(rss_mb(a.pid, "RssAnon:")));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

#[derive(Parser)]
struct MixArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    pid: u32,
    #[arg(long)]
    scripts: PathBuf,
    /// A file (or directory) on the disk whose counters are read: its device's.
    #[arg(long)]
    disk_of: PathBuf,
    #[arg(long, value_parser = ["saturated", "paced"])]
    phase: String,
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Saturated: seconds, measured from the first request (the cold start is the point), in
    /// windows of `window` seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 5)]
    window: u64,
    /// Paced: requests per second, for `paced_seconds`.
    #[arg(long, default_value_t = 200)]
    paced_rate: u64,
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
}

async fn mix(a: &MixArgs) -> Result<()> {
    let picked: Picked = serde_json::from_str(&std::fs::read_to_string(&a.scripts)?)?;
    let w =
        Arc::new(Workload { scripthashes: picked.scripthashes, txids: picked.txids, tip: picked.tip as u64 });
    let disk = Disk::of(&a.disk_of)?;
    let (io0, d0) = (proc_io(a.pid)?, disk.read()?);
    let out = match a.phase.as_str() {
        "saturated" => {
            let (mut all, mut errors, mut windows) = (Vec::new(), 0, Vec::new());
            let start = Instant::now();
            let mut k = 0;
            while start.elapsed() < Duration::from_secs(a.seconds) {
                let from = Instant::now();
                let end = from + Duration::from_secs(a.window);
                let (mut lat, e) =
                    wallet_mix::saturate(&a.server, w.clone(), a.connections, k * 1000, from, end).await?;
                let secs = from.elapsed().as_secs_f64();
                lat.sort_unstable();
                windows.push(json!({"from_s": (from - start).as_secs_f64(), "rps": lat.len() as f64 / secs,
                    "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)}));
                all.extend(lat);
                errors += e;
                k += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            all.sort_unstable();
            json!({"phase": "saturated", "requests": all.len(), "seconds": secs, "rps": all.len() as f64 / secs,
                "p50_ms": percentile(&all, 0.5), "p99_ms": percentile(&all, 0.99), "errors": errors, "windows": windows})
        }
        _ => {
            let until = Instant::now() + Duration::from_millis(200) + Duration::from_secs(a.paced_seconds);
            let timed =
                wallet_mix::paced(a.server.clone(), w.clone(), a.connections, a.paced_rate, 1000, until)
                    .await?;
            let mut lat: Vec<u64> = timed.iter().map(|t| t.micros).collect();
            lat.sort_unstable();
            json!({"phase": "paced", "rate": a.paced_rate, "requests": lat.len(),
                "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                "max_ms": lat.last().map(|&v| v as f64 / 1000.0), "errors": timed.iter().filter(|t| !t.ok).count()})
        }
    };
    let (io1, d1) = (proc_io(a.pid)?, disk.read()?);
    let requests = out["requests"].as_u64().unwrap_or(0).max(1) as f64;
    let mut out = out;
    out["per_request"] = json!({
        "syscr": (io1.syscr - io0.syscr) as f64 / requests,
        "read_kib": (io1.read_bytes - io0.read_bytes) as f64 / 1024.0 / requests,
        "disk_reads": (d1.reads - d0.reads) as f64 / requests,
        "disk_ms_per_read": (d1.read_ms - d0.read_ms) as f64 / (d1.reads - d0.reads).max(1) as f64,
    });
    out["workload"] =
        json!({"scripthashes": w.scripthashes.len(), "txids": w.txids.len(), "connections": a.connections});
    out["rss_mb"] = json!(rss_mb(a.pid, "VmRSS:"));
    out["anon_mb"] = json!(rss_mb(a.pid, "RssAnon:"));
    println!("{out}");
    Ok(())
}

#[derive(Parser)]
struct DiskArgs {
    /// A blocks directory: its blk files are read.
    #[arg(long)]
    dir: PathBuf,
    /// Reads per concurrency level.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    #[arg(long, default_value_t = 4096)]
    size: usize,
}

/// O_DIRECT reads at random aligned offsets of the blk files: the disk's own latency, with no
/// page cache of this machine in the way (a virtual disk's host may still cache).
fn disk(a: &DiskArgs) -> Result<()> {
    let nums = list_files(&a.dir, FileKind::Blk)?;
    let mut files = Vec::new();
    for n in nums {
        let path = a.dir.join(FileKind::Blk.file_name(n));
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path)?;
        let len = f.metadata()?.len();
        if len >= a.size as u64 * 2 {
            files.push((f, len));
        }
    }
    if files.is_empty() {
        bail!("no blk files in {}", a.dir.display());
    }
    let files = Arc::new(files);
    let mut out = serde_json::Map::new();
    for threads in [1usize, 8] {
        let per = a.reads / threads;
        let t0 = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (files, size) = (files.clone(), a.size);
                std::thread::spawn(move || -> Result<Vec<u64>> {
                    let mut rng = fastrand::Rng::with_seed(100 + t as u64 + threads as u64 * 1000);
                    let layout = std::alloc::Layout::from_size_align(size, 4096)?;
                    // SAFETY: an aligned buffer for O_DIRECT, freed below; only read through as bytes.
                    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
                    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, size) };
                    let mut lat = Vec::with_capacity(per);
                    for _ in 0..per {
                        let (f, len) = &files[rng.usize(..files.len())];
                        let at = rng.u64(..len / size as u64) * size as u64;
                        let t = Instant::now();
                        f.read_exact_at(buf, at)?;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    unsafe { std::alloc::dealloc(ptr, layout) };
                    Ok(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.join().expect("reader thread")?);
        }
        let secs = t0.elapsed().as_secs_f64();
        lat.sort_unstable();
        out.insert(
            format!("qd{threads}"),
            json!({"reads": lat.len(), "iops": lat.len() as f64 / secs,
                "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                "mean_ms": lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0}),
        );
    }
    out.insert("size".into(), json!(a.size));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
