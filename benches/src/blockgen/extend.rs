//! More blocks on top of a generated chain, for a follower to index (`scripts/bench-cold.sh`).
//!
//! The generator keeps no state on disk, but it is deterministic: the chain of the same seed and
//! size is planned and built again in memory (nothing written; its tip must be the one in
//! `gen-blocks.json`), which leaves the planner, its pool of unspent outputs and its hot head as
//! they were at the tip. The blocks after it are planned at mainnet's last height (full blocks of
//! today's shape, paying and spending the hot scripts at their shares) and written to one file:
//! for each block, `u32 LE length ‖ block`, then `u32 LE length ‖ undo record` (payload and
//! checksum, as a rev file holds it after the record header). `Appender` puts them into a blocks
//! directory the way bitcoind appends a block it accepted.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use blkindex_shared::blkfile::{list_files, BlockFiles, FileKind, XorKey, UNDO_CHECKSUM_LEN};

use super::build::{assemble, build_txs};
use super::plan::{OutScript, Planner};
use super::{chain_blocks, choose_forks, register, shape, Params, Report, Scripts};

/// What the extension holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Extension {
    pub blocks: u32,
    pub first_height: u32,
    /// The last block's hash.
    pub tip: String,
    pub txs: u64,
    pub bytes: u64,
    /// Outputs paying a script of the hot head, and inputs spending one; the same for its three
    /// busiest (10^6 transactions at 40 GB).
    pub hot_outputs: u64,
    pub hot_spends: u64,
    pub top3_outputs: u64,
    pub top3_spends: u64,
    /// Blocks with at least one output or input of the three busiest.
    pub blocks_touching_top3: u32,
    /// Spendable outputs left unspent at the new tip (as `Report::utxos`).
    pub utxos: u64,
    /// Seconds to build the chain again, then the new blocks.
    pub replay_seconds: f64,
    pub seconds: f64,
}

/// Plans the chain `report` describes again, checks its tip, then writes `count` more blocks to
/// `out`.
pub fn extend(report: &Report, count: u32, out: &Path) -> Result<Extension> {
    let t0 = std::time::Instant::now();
    let params = Params::new(report.gb, report.seed);
    let timeline = shape::timeline(params.gb * 1e9);
    let forks = choose_forks(&timeline, params.seed);
    let scripts = Scripts::new(params.seed);
    let mut planner = Planner::new(params.seed, params.pool_cap);
    let chained = chain_blocks(&mut planner, &scripts, &timeline, &forks, |_| true);
    ensure!(
        chained.tip.to_string() == report.best_hash,
        "the chain built again ends at {}, not at the report's {}: another generator version, or other \
         parameters (--pool-cap, --max-file-size are not in the report; only their defaults can be replayed)",
        chained.tip,
        report.best_hash
    );
    let replay_seconds = t0.elapsed().as_secs_f64();

    let hot: Vec<_> = planner.hot_scripts();
    let top3: HashSet<_> = hot.iter().take(3).copied().collect();
    let hot: HashSet<_> = hot.into_iter().collect();
    let m = *timeline.last().expect("a timeline has genesis");
    let mut file =
        BufWriter::new(File::create(out).with_context(|| format!("cannot create {}", out.display()))?);
    let mut ext = Extension { first_height: report.best_height + 1, ..Default::default() };
    let mut prev = chained.tip;
    for height in report.best_height + 1..=report.best_height + count {
        let plan = planner.plan_block(height, m, false, None);
        let block = assemble(&plan, build_txs(&plan, &scripts), prev, &scripts);
        register(&mut planner, &plan, &block.txids);
        let pays = |o: &super::plan::Out, set: &HashSet<_>| matches!(o.script, OutScript::Pay(id) if set.contains(&id));
        let outs = plan.outs.iter().chain(&plan.coinbase);
        let (mut top_out, mut top_in) = (0, 0);
        for o in outs {
            ext.hot_outputs += pays(o, &hot) as u64;
            top_out += pays(o, &top3) as u64;
        }
        for s in &plan.spends {
            ext.hot_spends += hot.contains(&s.script) as u64;
            top_in += top3.contains(&s.script) as u64;
        }
        ext.top3_outputs += top_out;
        ext.top3_spends += top_in;
        ext.blocks_touching_top3 += (top_out + top_in > 0) as u32;
        ext.blocks += 1;
        ext.txs += block.txids.len() as u64;
        ext.bytes += block.bytes.len() as u64;
        let undo = block.undo.as_ref().expect("only genesis has no undo record");
        for part in [&block.bytes, undo] {
            file.write_all(&(part.len() as u32).to_le_bytes())?;
            file.write_all(part)?;
        }
        prev = block.hash;
    }
    file.flush()?;
    ext.tip = prev.to_string();
    ext.utxos = planner.pool.unspent();
    ext.replay_seconds = replay_seconds;
    ext.seconds = t0.elapsed().as_secs_f64();
    Ok(ext)
}

/// A block of an extension file, and its undo record.
pub struct ExtraBlock {
    pub block: Vec<u8>,
    pub undo: Vec<u8>,
}

/// Reads the blocks `extend` wrote.
pub fn read_extension(path: &Path) -> Result<Vec<ExtraBlock>> {
    let mut f =
        std::io::BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let mut part = || -> Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match f.read_exact(&mut len) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        }
        let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
        f.read_exact(&mut v)?;
        Ok(Some(v))
    };
    let mut out = Vec::new();
    while let Some(block) = part()? {
        let undo = part()?.context("an extension file cut after a block")?;
        out.push(ExtraBlock { block, undo });
    }
    Ok(out)
}

/// Appends blocks to a blocks directory as bitcoind does when it accepts and connects one: the
/// block record at the end of the last blk file (or in a new one, when it would reach
/// `max_file_size`), then its undo record at the end of the rev file of the same number, both
/// XORed with `xor.dat`'s key at their offsets.
pub struct Appender {
    dir: PathBuf,
    key: XorKey,
    magic: [u8; 4],
    max_file_size: u64,
    num: u32,
    blk_end: u64,
    rev_end: u64,
}

impl Appender {
    /// Finds where the records of the last blk file and its rev file end (their preallocated zero
    /// tails are written over).
    pub fn open(dir: &Path, magic: [u8; 4], max_file_size: u64) -> Result<Self> {
        let files = BlockFiles::open(dir)?;
        let num = *list_files(dir, FileKind::Blk)?.last().context("no blk files")?;
        let end = |kind: FileKind, trailer: u64| -> Result<u64> {
            if !files.path(kind, num).exists() {
                return Ok(0);
            }
            let (recs, _, _) = files.scan(kind, num, magic, 0)?;
            Ok(recs.last().map_or(0, |r| r.offset + r.len as u64 + trailer))
        };
        let (blk_end, rev_end) = (end(FileKind::Blk, 0)?, end(FileKind::Rev, UNDO_CHECKSUM_LEN as u64)?);
        Ok(Appender {
            dir: dir.to_path_buf(),
            key: files.xor_key(),
            magic,
            max_file_size,
            num,
            blk_end,
            rev_end,
        })
    }

    /// Appends one block and its undo record (payload ‖ checksum); returns the blk file's number.
    pub fn append(&mut self, b: &ExtraBlock) -> Result<u32> {
        // Core's FindNextBlockPos: a block that would take the file to the limit starts the next.
        if self.blk_end > 0 && self.blk_end + 8 + b.block.len() as u64 >= self.max_file_size {
            self.num += 1;
            self.blk_end = 0;
            self.rev_end = 0;
        }
        self.blk_end = self.record(FileKind::Blk, self.blk_end, &b.block, 0)?;
        self.rev_end = self.record(FileKind::Rev, self.rev_end, &b.undo, UNDO_CHECKSUM_LEN)?;
        Ok(self.num)
    }

    fn record(&self, kind: FileKind, at: u64, payload: &[u8], trailer: usize) -> Result<u64> {
        let path = self.dir.join(kind.file_name(self.num));
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        let mut rec = Vec::with_capacity(8 + payload.len());
        rec.extend_from_slice(&self.magic);
        rec.extend_from_slice(&((payload.len() - trailer) as u32).to_le_bytes());
        rec.extend_from_slice(payload);
        self.key.apply(&mut rec, at);
        file.write_all_at(&rec, at).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(at + rec.len() as u64)
    }
}
