//! What the server's integration tests share: the indexer binary, and a server process.
// Each test file compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use electrum_client::Client;

use blkindex_testkit::node::free_port;
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
    pub fn start(node: &Node, db: &Path) -> Result<Self> {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_blkindex-server"))
            .args(["--network", "regtest", "--datadir"])
            .arg(&node.datadir)
            .arg("--db")
            .arg(db)
            .args(["--daemon-rpc-addr", &node.rpc_addr()])
            .args(["--electrum-addr", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server { child, addr })
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
