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
    blkindex_indexer::run(args, Shutdown::Signals)
}
