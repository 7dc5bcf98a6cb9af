//! `blkindex-server`: the flags, logging and signals around `blkindex_server::run`.

use std::time::Duration;

use anyhow::Result;

use blkindex_server::{Config, Listeners};
use blkindex_shared::config::{init_reloadable_logging, run_main};

fn main() {
    run_main(serve)
}

fn serve() -> Result<()> {
    let config = Config::from_command_line()?;
    let log_filter = init_reloadable_logging("info");
    // Each connection is a file descriptor; ask for as many as the system allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        blkindex_server::run(config, listeners, Some(log_filter), stop_signal()).await
    });
    // Sessions blocked on slow clients are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
