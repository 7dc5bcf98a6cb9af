//! `gen-blocks`: a regtest data directory's `regtest/blocks/` written directly, in Bitcoin Core's
//! on-disk formats, shaped like mainnet, with no node involved.
//!
//! Pipeline: `plan` (sequential: which outputs each transaction spends, what it pays, from a
//! bounded `pool` of unspent outputs) → `build` (parallel: serialization, txids, wtxids, undo
//! encoding; then the coinbase, merkle root, header) → `files` (a writer thread: arrival order,
//! 128 MiB files, XOR, rev records). The shape (block sizes, script types by era, inputs and
//! outputs per transaction, the hot head) is `shape`; script bytes come from compact ids
//! (`script`); undo records are Core's encodings (`undo`).
//!
//! What holds, as a node would check it (signatures aside, which are made-up bytes of the right
//! sizes): headers link and meet regtest's target, merkle roots and witness commitments are
//! right, every input spends an existing earlier output of its branch once, coinbases only after
//! 100 blocks, outputs never exceed inputs (a coinbase: subsidy plus fees), and each undo record
//! holds exactly the spent outputs (height, coinbase flag, value, script) with its checksum.
//! Same seed and size, same bytes. `verify` checks an index of the chain against the report;
//! `extend` builds a chain again in memory and makes the blocks that would follow its tip.

mod build;
mod extend;
mod files;
mod plan;
mod pool;
mod script;
mod shape;
mod undo;
mod verify;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use bitcoin::hashes::Hash;
use serde::Serialize;

use blkindex_shared::blkfile::XorKey;
use blkindex_shared::{Net, ScriptHash};

use build::{assemble, build_txs, genesis, BuiltBlock};
use plan::{BlockPlan, OutScript, Planner};
use pool::Utxo;
use script::{mix, stream, Kind, ScriptId, Scripts, Stream};

pub use extend::{extend, read_extension, Appender, Extension, ExtraBlock};
pub use files::MAX_BLOCKFILE_SIZE;
pub use verify::{check_index, Checked};

/// What to make.
#[derive(Clone, Debug)]
pub struct Params {
    /// Bytes of best-chain blocks wanted, in units of 10^9.
    pub gb: f64,
    pub seed: u64,
    /// Blk files are cut before this size (Core's 128 MiB; tests use less to get many files).
    pub max_file_size: u64,
    /// Unspent outputs kept spendable; the oldest small ones beyond stay unspent for ever.
    pub pool_cap: usize,
}

impl Params {
    pub fn new(gb: f64, seed: u64) -> Self {
        Params { gb, seed, max_file_size: MAX_BLOCKFILE_SIZE, pool_cap: 4_000_000 }
    }
}

/// A script the generator followed on the best chain: how Electrum names it and what the index
/// must answer for it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ScriptReport {
    /// sha256 of the script, reversed, in hex (Electrum's script hash).
    pub scripthash: String,
    pub script: String,
    pub kind: String,
    /// Transactions that pay it or spend from it.
    pub txs: u64,
    /// Its unspent outputs' value, in satoshis.
    pub balance: u64,
}

/// What was made; printed as one JSON line and written to `<datadir>/gen-blocks.json`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Report {
    pub seed: u64,
    pub gb: f64,
    /// Best-chain blocks, genesis included.
    pub blocks: u64,
    pub best_height: u32,
    pub best_hash: String,
    pub stale_blocks: u64,
    /// Best-chain transactions, genesis's coinbase included (what the index numbers).
    pub txs: u64,
    /// Best-chain inputs that spend an output (coinbase inputs not counted).
    pub inputs: u64,
    /// Best-chain outputs, OP_RETURN ones included.
    pub outputs: u64,
    pub op_return_outputs: u64,
    /// Best-chain outputs paying each kind of script.
    pub outputs_by_kind: BTreeMap<String, u64>,
    /// Share of those paying a script paid before.
    pub reused_share: f64,
    /// Inputs spending a P2TR output by its script path with an inscription.
    pub inscriptions: u64,
    /// Spendable outputs left unspent at the tip.
    pub utxos: u64,
    /// Of those, the ones that left the full pool (never to be spent).
    pub abandoned: u64,
    pub blk_files: u32,
    /// Bytes of blk and rev records (the last files' preallocated zero tails not counted).
    pub blk_bytes: u64,
    pub rev_bytes: u64,
    /// Blocks stored before their parent (out of height order); of those, in an earlier blk
    /// file than their parent's.
    pub blocks_before_parent: u64,
    pub blocks_in_file_before_parent: u64,
    pub seconds: f64,
    /// blk bytes per second, in 10^6.
    pub mb_per_s: f64,
    /// The hot head, busiest first.
    pub hot: Vec<ScriptReport>,
    /// Other followed scripts: the busiest, miners' among them, and a few of one or two txs.
    pub sample: Vec<ScriptReport>,
    /// Some transactions of stale blocks (which an index must not have).
    pub stale_txids: Vec<String>,
}

/// Writes the chain into `<datadir>/regtest/blocks/` and the report into
/// `<datadir>/gen-blocks.json`.
pub fn generate(datadir: &Path, params: &Params) -> Result<Report> {
    let t0 = Instant::now();
    let net: Net = "regtest".parse().expect("a known network");
    let blocks_dir = datadir.join(net.subdir()).join("blocks");
    let timeline = shape::timeline(params.gb * 1e9);
    let forks = choose_forks(&timeline, params.seed);
    let scripts = Scripts::new(params.seed);
    let mut planner = Planner::new(params.seed, params.pool_cap);

    let writer = files::Writer::create(
        &blocks_dir,
        xor_key(params.seed),
        net.magic(),
        params.max_file_size,
        stream(params.seed, Stream::Arrival),
    )?;
    let (to_writer, blocks) = crossbeam_channel::bounded::<BuiltBlock>(4);
    let writing = std::thread::spawn(move || -> Result<files::FileStats> {
        let mut writer = writer;
        for b in blocks {
            writer.push(b)?;
        }
        writer.finish()
    });
    // False once the writer has stopped (on an error, which its join returns).
    let send = |b: BuiltBlock| to_writer.send(b).is_ok();

    let chained = chain_blocks(&mut planner, &scripts, &timeline, &forks, send);
    let (prev, stale_blocks, stale_txids) = (chained.tip, chained.stale_blocks, chained.stale_txids);
    let sent = chained.complete;
    drop(to_writer);
    let stats = writing.join().expect("the writer does not panic")?;
    anyhow::ensure!(sent, "the writer stopped early");
    let seconds = t0.elapsed().as_secs_f64();

    let totals = planner.totals;
    let best_height = timeline.len() as u32 - 1;
    let genesis_tx = 1;
    let (hot, sample) = script_reports(&planner, &scripts);
    let report = Report {
        seed: params.seed,
        gb: params.gb,
        blocks: best_height as u64 + 1,
        best_height,
        best_hash: prev.to_string(),
        stale_blocks,
        txs: totals.txs + genesis_tx,
        inputs: totals.inputs,
        outputs: totals.outputs + genesis_tx,
        op_return_outputs: totals.op_returns,
        outputs_by_kind: Kind::ALL
            .iter()
            .map(|k| (k.name().to_string(), totals.by_kind[*k as usize]))
            .collect(),
        reused_share: 1.0 - totals.fresh as f64 / totals.by_kind.iter().sum::<u64>().max(1) as f64,
        inscriptions: totals.inscriptions,
        utxos: planner.pool.unspent(),
        abandoned: planner.pool.abandoned,
        blk_files: stats.blk_files,
        blk_bytes: stats.blk_bytes,
        rev_bytes: stats.rev_bytes,
        blocks_before_parent: stats.before_parent,
        blocks_in_file_before_parent: stats.before_parent_file,
        seconds,
        mb_per_s: stats.blk_bytes as f64 / 1e6 / seconds,
        hot,
        sample,
        stale_txids: stale_txids.iter().map(|t| t.to_string()).collect(),
    };
    let path = datadir.join("gen-blocks.json");
    std::fs::write(&path, serde_json::to_string(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(report)
}

/// What `chain_blocks` made.
struct Chained {
    tip: bitcoin::BlockHash,
    stale_blocks: u64,
    /// The first two transactions of each stale block.
    stale_txids: Vec<bitcoin::Txid>,
    /// False if `sink` asked to stop before the end.
    complete: bool,
}

/// Plans and builds the chain of `timeline`, genesis first, handing each block to `sink` in
/// connection order (a stale branch's blocks before their best-chain sibling) until it returns
/// false. The planner is left as the chain's tip leaves it, so more blocks can follow.
fn chain_blocks(
    planner: &mut Planner,
    scripts: &Scripts,
    timeline: &[f64],
    forks: &BTreeMap<u32, u32>,
    mut sink: impl FnMut(BuiltBlock) -> bool,
) -> Chained {
    let g = genesis();
    let mut prev = g.hash;
    let mut sent = sink(g);
    let (mut stale_blocks, mut stale_txids) = (0u64, Vec::new());
    // Block h is built while block h+1 is planned, so h's outputs join the pool only for h+2
    // (h+1 may spend outputs of its own block, and of h-1 and before).
    let n = timeline.len() as u32;
    let mut step = plan_step(planner, 1, timeline, forks);
    for h in 1..n {
        if !sent {
            break;
        }
        let (next, (stale, block)) = rayon::join(
            || (h + 1 < n).then(|| plan_step(planner, h + 1, timeline, forks)),
            || build_step(&step, prev, scripts),
        );
        register(planner, &step.best, &block.txids);
        for b in stale {
            stale_blocks += 1;
            stale_txids.extend(b.txids.iter().take(2).map(|t| bitcoin::Txid::from_byte_array(*t)));
            sent &= sink(b);
        }
        prev = block.hash;
        sent &= sink(block);
        match next {
            Some(next) => step = next,
            None => break,
        }
    }
    Chained { tip: prev, stale_blocks, stale_txids, complete: sent }
}

/// The plans of one height: a stale branch forking there, if any, and the best chain's block.
struct Step {
    stale: Vec<BlockPlan>,
    best: BlockPlan,
}

fn plan_step(planner: &mut Planner, h: u32, timeline: &[f64], forks: &BTreeMap<u32, u32>) -> Step {
    let mut stale = Vec::new();
    if let Some(&len) = forks.get(&h) {
        planner.pool.start_block(h);
        planner.pool.begin_trial();
        for k in h..h + len {
            stale.push(planner.plan_block(k, timeline[k as usize], true, None));
        }
        planner.pool.end_trial();
    }
    let avoid = stale.first().map(|p| p.txs.len() + 1);
    let best = planner.plan_block(h, timeline[h as usize], false, avoid);
    Step { stale, best }
}

/// The blocks of a step, on top of `prev`: the stale branch's first, as they arrived.
fn build_step(step: &Step, prev: bitcoin::BlockHash, scripts: &Scripts) -> (Vec<BuiltBlock>, BuiltBlock) {
    let mut stale = Vec::new();
    let mut stale_prev = prev;
    for plan in &step.stale {
        let b = assemble(plan, build_txs(plan, scripts), stale_prev, scripts);
        stale_prev = b.hash;
        stale.push(b);
    }
    (stale, assemble(&step.best, build_txs(&step.best, scripts), prev, scripts))
}

/// The block's outputs that are still unspent join the pool (coinbases once mature).
fn register(planner: &mut Planner, plan: &BlockPlan, txids: &[[u8; 32]]) {
    let mut add = |txid: [u8; 32], vout: usize, value: u64, script: OutScript, coinbase: bool| {
        if let (OutScript::Pay(script), true) = (script, value > 0) {
            let u = Utxo { txid, value, script, vout: vout as u32, height: plan.height, coinbase };
            planner.pool.push(u);
        }
    };
    for (vout, o) in plan.coinbase.iter().enumerate() {
        add(txids[0], vout, o.value, o.script, true);
    }
    for &(tx, vout) in &plan.unspent {
        let o = plan.outs[plan.txs[tx as usize].outputs.start + vout as usize];
        add(txids[tx as usize + 1], vout as usize, o.value, o.script, false);
    }
}

/// Heights where a stale branch of one or two blocks forks off (its first block is a sibling of
/// the best chain's block at that height): about one in 250 blocks, at least two branches (one of
/// each length), among blocks with transactions, apart, and not near the tip.
fn choose_forks(timeline: &[f64], seed: u64) -> BTreeMap<u32, u32> {
    let mut rng = fastrand::Rng::with_seed(stream(seed, Stream::Forks));
    let n = timeline.len() as u32;
    let first = timeline.partition_point(|&m| m < 101_000.0) as u32;
    let mut forks = BTreeMap::new();
    if first + 6 > n {
        return forks;
    }
    let wanted = (n / 250).max(2);
    for _ in 0..wanted * 50 {
        if forks.len() as u32 == wanted {
            break;
        }
        let h = rng.u32(first..n - 4);
        let len = if forks.len() == 1 || (forks.len() > 1 && rng.u8(..10) < 3) { 2 } else { 1 };
        if forks.range(h.saturating_sub(2)..h + len + 1).next().is_none() {
            forks.insert(h, len);
        }
    }
    forks
}

/// `xor.dat`'s key: eight bytes from the seed, none of them zero (Core draws it at random).
fn xor_key(seed: u64) -> XorKey {
    let mut key = stream(seed, Stream::XorKey).to_le_bytes();
    for b in &mut key {
        *b |= (*b == 0) as u8;
    }
    XorKey(key)
}

fn script_reports(planner: &Planner, scripts: &Scripts) -> (Vec<ScriptReport>, Vec<ScriptReport>) {
    let report = |id: ScriptId| {
        let bytes = scripts.bytes(id);
        let s = planner.tracked.get(&id).copied().unwrap_or_default();
        ScriptReport {
            scripthash: ScriptHash::of(&bytes).to_string(),
            script: hex::encode(&bytes),
            kind: id.kind().name().to_string(),
            txs: s.txs,
            balance: s.funded - s.spent,
        }
    };
    let hot_ids = planner.hot_scripts();
    let mut hot: Vec<ScriptReport> = hot_ids.iter().map(|&id| report(id)).collect();
    hot.sort_by(|a, b| b.txs.cmp(&a.txs).then(a.scripthash.cmp(&b.scripthash)));
    let mut others: Vec<(ScriptId, u64)> = planner
        .tracked
        .iter()
        .filter(|(id, s)| !hot_ids.contains(id) && s.txs > 0)
        .map(|(id, s)| (*id, s.txs))
        .collect();
    others.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut sample: Vec<ScriptId> = others.iter().take(12).map(|o| o.0).collect();
    let mut rest: Vec<ScriptId> = others.iter().skip(12).map(|o| o.0).collect();
    rest.sort_by_key(|id| mix(id.0));
    sample.extend(rest.into_iter().take(12));
    (hot, sample.into_iter().map(report).collect())
}
