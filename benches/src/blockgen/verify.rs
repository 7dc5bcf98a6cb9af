//! An index of a generated chain checked against what the generator reported: the tip, the
//! number of transactions, every followed script's history length and balance (through
//! `IndexReader`, which verifies each candidate against the transaction bytes), and the stale
//! blocks' transactions absent.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::query::IndexReader;
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::ScriptHash;

use super::Report;

/// What was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub txs: u64,
    pub scripts: usize,
    /// Sum of the checked scripts' history lengths.
    pub history: u64,
}

/// Opens `db` (an index of `datadir`'s chain) as a secondary and compares it with `report`.
pub fn check_index(datadir: &Path, db: &Path, report: &Report) -> Result<Checked> {
    let secondary = std::env::temp_dir().join(format!("gen-blocks-check-{}", std::process::id()));
    let store = Store::open(db, Mode::Secondary(secondary.clone()))?;
    let blocks = BlockFiles::open(&datadir.join("regtest").join("blocks"))?;
    let index = IndexReader::new(store, blocks)?;
    let result = compare(&index, report);
    let _ = std::fs::remove_dir_all(secondary);
    result
}

fn compare(index: &IndexReader, report: &Report) -> Result<Checked> {
    let (height, hash) = index.chain.tip().context("the index is empty")?;
    ensure!(
        (height, hash.to_string()) == (report.best_height, report.best_hash.clone()),
        "tip {height} {hash}, generated {} {}",
        report.best_height,
        report.best_hash
    );
    let txs = index.chain.next_txnum() as u64;
    ensure!(txs == report.txs, "{txs} transactions indexed, {} generated", report.txs);
    let mut history = 0;
    for s in report.hot.iter().chain(&report.sample) {
        let sh: ScriptHash = s.scripthash.parse().map_err(anyhow::Error::msg)?;
        let state = index.script_state(&sh)?;
        let got = (state.history.len() as u64, state.balance());
        ensure!(
            got == (s.txs, s.balance),
            "{} ({}): history {} and balance {} indexed, {} and {} generated",
            s.scripthash,
            s.kind,
            got.0,
            got.1,
            s.txs,
            s.balance
        );
        history += got.0;
    }
    for txid in &report.stale_txids {
        let found = index.txs_by_txid(&txid.parse()?)?;
        ensure!(found.is_empty(), "stale transaction {txid} is indexed");
    }
    Ok(Checked { txs, scripts: report.hot.len() + report.sample.len(), history })
}
