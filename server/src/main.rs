//! `blkindex-server`: serves the Electrum protocol from the index that `blkindex-indexer` writes,
//! opened read-only as a RocksDB secondary that catches up with the indexer.
//!
//! Flow: `state` (secondary DB + blk files + node RPC; a catch-up task announces new tips) →
//! `session` (one per connection: framing, batches, notifications) → `methods` (the calls).

mod mempool;
mod methods;
mod session;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::{info, warn};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::config::{args_with_config_file, init_logging, run_main, NodeArgs};
use blkindex_shared::query::Index;
use blkindex_shared::rpc::Rpc;
use blkindex_shared::store::{Mode, Store};

/// Serves Electrum clients from a blkindex index.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where this server keeps its secondary instance's files (default: <db>.server).
    #[arg(long, env = "BLKINDEX_SECONDARY_DIR")]
    secondary_dir: Option<PathBuf>,
    /// Address for Electrum clients over TCP.
    #[arg(long, env = "BLKINDEX_ELECTRUM_ADDR", default_value = "127.0.0.1:50001")]
    electrum_addr: SocketAddr,
    /// How often to read the node's mempool, in milliseconds.
    #[arg(long, env = "BLKINDEX_MEMPOOL_MS", default_value_t = 500)]
    mempool_ms: u64,
    /// How often to catch up with the indexer, in milliseconds.
    #[arg(long, env = "BLKINDEX_CATCH_UP_MS", default_value_t = 200)]
    catch_up_ms: u64,
}

fn main() {
    run_main(run)
}

fn run() -> Result<()> {
    let args = Args::parse_from(args_with_config_file(std::env::args_os().collect())?);
    init_logging("info");
    let node = args.node.node()?;
    let secondary = args.secondary_dir.clone().unwrap_or_else(|| args.node.db.with_extension("server"));
    let store = Store::open(&args.node.db, Mode::Secondary(secondary))?;
    store.check_identity(args.node.network, false)?;
    let index = Index::new(store, BlockFiles::open(&node.blocks_dir)?)?;
    let state = state::State::new(args.node.network, index, Rpc::new(&node.rpc_addr, node.auth.clone()));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.electrum_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.electrum_addr))?;
        info!(addr = %listener.local_addr()?, tip = ?state.tip.borrow().map(|t| t.height), "serving Electrum over TCP");
        tokio::spawn(state::catch_up_loop(state.clone(), Duration::from_millis(args.catch_up_ms)));
        tokio::spawn(state::mempool_loop(state.clone(), Duration::from_millis(args.mempool_ms)));
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            anyhow::Ok(())
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(session::serve(stream, state.clone()));
                    }
                    Err(e) => warn!("accept failed: {e}"),
                },
                _ = &mut shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
            }
        }
    })
}
