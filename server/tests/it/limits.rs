//! `--max-connections` and `--max-batch` at their boundaries: exactly the limit is served, one
//! more is refused with a clear error, and the server goes on serving.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, Server};

fn read_line(s: &TcpStream) -> Option<String> {
    crate::common::read_line(s, Duration::from_secs(10))
}

fn ask(s: &mut TcpStream, msg: &Value) -> Value {
    writeln!(s, "{msg}").unwrap();
    serde_json::from_str(&read_line(s).expect("a reply")).unwrap()
}

#[test]
fn max_connections_and_max_batch_at_their_boundaries() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    ChainBuilder::new(&node)?.mine(5)?;
    let (dir, _indexer) = indexed(&node)?;
    let server =
        Server::start_with(&node, &dir.path().join("db"), &["--max-connections", "3", "--max-batch", "5"])?;

    // Three connections are served; a fourth is told the server is full and closed.
    let mut open: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    for s in &mut open {
        assert_eq!(ask(s, &req(1, "server.ping", json!([])))["result"], Value::Null);
    }
    let fourth = TcpStream::connect(&server.addr)?;
    let refusal = read_line(&fourth).expect("an error line");
    assert!(refusal.contains("the server is full"), "{refusal}");
    assert!(read_line(&fourth).is_none(), "then closed");
    // A place freed is taken again.
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(&server.addr)?;

    // A batch of exactly --max-batch requests is answered whole, in order.
    let batch: Vec<Value> = (1..=5).map(|i| req(i, "blockchain.block.header", json!([i - 1]))).collect();
    let replies = ask(&mut s, &Value::Array(batch));
    let ids: Vec<u64> = replies.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "{replies}");
    assert!(replies.as_array().unwrap().iter().all(|r| r["result"].is_string()), "{replies}");
    // One more is refused whole, with JSON-RPC's invalid-request code, and so is an empty batch.
    let batch: Vec<Value> = (1..=6).map(|i| req(i, "server.ping", json!([]))).collect();
    let reply = ask(&mut s, &Value::Array(batch));
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("1 to 5 requests"), "{reply}");
    let reply = ask(&mut s, &json!([]));
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    // The connection still serves.
    assert_eq!(ask(&mut s, &req(7, "server.ping", json!([])))["result"], Value::Null);
    Ok(())
}
