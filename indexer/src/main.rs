//! `blkindex-indexer`: the flags and logging around `blkindex_indexer::run`.

use anyhow::Result;

use blkindex_indexer::{Args, Shutdown};
use blkindex_shared::config::{init_logging, run_main};

fn main() {
    run_main(index)
}

fn index() -> Result<()> {
    let args = Args::from_command_line()?;
    init_logging("info,zeromq=error");
    if let Some(blkindex_indexer::Command::Checkpoint { dir }) = &args.command {
        let (height, hash) = blkindex_indexer::checkpoint::command(args.db(), dir)?;
        println!("checkpoint {} taken at height {height}, block {hash}", dir.display());
        return Ok(());
    }
    blkindex_indexer::run(args, Shutdown::Signals)
}
