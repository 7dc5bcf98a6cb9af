//! What the server's integration tests share: the indexer binary, and a server process.
// Each test file compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Result;
use electrum_client::Client;

use blkindex_testkit::Node;

/// The indexer binary, built beside this test by `cargo test --workspace`.
pub fn indexer_bin() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("blkindex-indexer");
    assert!(bin.exists(), "{} is missing: run `cargo test --workspace`", bin.display());
    bin
}

pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts the server on a port the OS picks (no race with other tests for a free port) and
    /// reads the address from its log.
    pub fn start(node: &Node, db: &Path) -> Result<Self> {
        let log = db.with_extension("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_blkindex-server"))
            .args(["--network", "regtest", "--datadir"])
            .arg(&node.datadir)
            .arg("--db")
            .arg(db)
            .args(["--daemon-rpc-addr", &node.rpc_addr(), "--electrum-addr", "127.0.0.1:0"])
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) =
                text.split("serving Electrum over TCP addr=").nth(1).and_then(|r| r.split_whitespace().next())
            {
                return Ok(Server { child, addr: addr.to_string() });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the server exited ({status}): {text}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the server did not listen: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("tcp://{}", self.addr)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
