//! The server run in-process through `blkindex_server::run`, where a subprocess adds nothing:
//! bound on a port the test reads from `Listeners::addrs`, stopped by a future the test completes.

use anyhow::Result;
use serde_json::json;

use blkindex_server::{Config, Listeners};
use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, session};

#[test]
fn runs_in_process_and_stops_when_told() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(7)?;
    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    let config = Config::from_args([
        "blkindex-server".into(),
        "--network".into(),
        "regtest".into(),
        "--datadir".into(),
        node.datadir.clone().into_os_string(),
        "--db".into(),
        db.into_os_string(),
        "--secondary-dir".into(),
        dir.path().join("in-process").into_os_string(),
        "--daemon-rpc-addr".into(),
        node.rpc_addr().into(),
        "--electrum-addr".into(),
        "127.0.0.1:0".into(),
    ])?;
    let rt = tokio::runtime::Runtime::new()?;
    let listeners = rt.block_on(Listeners::bind(&config))?;
    let addr = listeners.addrs()?[0].0.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(blkindex_server::run(config, listeners, None, async {
        let _ = stopped.await;
    }));
    let replies = session(&addr, &[req(1, "blockchain.headers.subscribe", json!([]))]);
    assert_eq!(replies[0]["result"]["height"], json!(node.height()?), "{}", replies[0]);
    stop.send(()).unwrap();
    rt.block_on(server)??;
    Ok(())
}
