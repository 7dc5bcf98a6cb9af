//! Writes a mainnet-shaped regtest chain straight into `<datadir>/regtest/blocks/` (blk, rev and
//! xor.dat files as Bitcoin Core writes them), with no node (see `blkindex_benches::blockgen`).
//! Prints what it made as one JSON line, also written to `<datadir>/gen-blocks.json`.
//! With `--check DB`, compares an index of that chain with the JSON instead; with `--extend N
//! --extend-out FILE`, builds the chain again in memory (from the JSON's seed and size) and writes
//! the N blocks that follow its tip to FILE (for a follower; `blockgen::extend`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use blkindex_benches::blockgen::{check_index, extend, generate, Params, Report, MAX_BLOCKFILE_SIZE};
use blkindex_shared::config::run_main;

#[derive(Parser)]
#[command(about = "Writes a mainnet-shaped regtest chain into a data directory's block files")]
struct Args {
    /// The data directory (the chain goes into its regtest/blocks/, which must hold no blk files).
    #[arg(long)]
    datadir: PathBuf,
    /// Bytes of best-chain blocks, in GB (10^9 bytes); fractions are fine (0.01).
    #[arg(long, required_unless_present_any = ["check", "extend"])]
    gb: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size a blk file is cut before (Core's is 128 MiB).
    #[arg(long, default_value_t = MAX_BLOCKFILE_SIZE)]
    max_file_size: u64,
    /// Unspent outputs kept spendable (64 bytes each); beyond, the oldest small ones stay
    /// unspent for ever.
    #[arg(long, default_value_t = Params::new(1.0, 1).pool_cap)]
    pool_cap: usize,
    /// Instead of generating: check the index DB of the chain in --datadir against its
    /// gen-blocks.json (tip, transactions, the followed scripts' histories and balances).
    #[arg(long, conflicts_with = "gb")]
    check: Option<PathBuf>,
    /// Instead of generating: build the chain in --datadir again (its gen-blocks.json's seed and
    /// size, default --pool-cap and --max-file-size) and write this many more blocks after its
    /// tip to --extend-out.
    #[arg(long, conflicts_with_all = ["gb", "check"], requires = "extend_out")]
    extend: Option<u32>,
    #[arg(long)]
    extend_out: Option<PathBuf>,
}

fn main() {
    run_main(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let read_report = || -> Result<Report> {
        let path = args.datadir.join("gen-blocks.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    if let (Some(count), Some(out)) = (args.extend, &args.extend_out) {
        let ext = extend(&read_report()?, count, out)?;
        println!("{}", serde_json::to_string(&ext)?);
        return Ok(());
    }
    if let Some(db) = &args.check {
        let report = read_report()?;
        let t0 = Instant::now();
        let c = check_index(&args.datadir, db, &report)?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"ok": true, "txs": c.txs, "scripts": c.scripts, "history": c.history, "seconds": secs})
        );
        return Ok(());
    }
    let gb = args.gb.expect("clap requires --gb without --check");
    anyhow::ensure!(gb > 0.0 && gb.is_finite(), "--gb must be a positive number");
    anyhow::ensure!(args.max_file_size >= 1 << 20, "--max-file-size must be at least 1 MiB");
    let params =
        Params { max_file_size: args.max_file_size, pool_cap: args.pool_cap, ..Params::new(gb, args.seed) };
    let report = generate(&args.datadir, &params)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
