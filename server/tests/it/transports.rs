//! Transports and limits against a real node and indexer: TLS, WebSocket and WebSocket over TLS
//! speak the same protocol as TCP; metrics count what happened; per-address limits, the idle
//! timeout (which also ends slowloris clients), the history cap and thousands of connections
//! leave the server serving others; SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::expect::expected;
use blkindex_testkit::verify::Indexer;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{http_get, indexed, raw, read_line, req, session, Server};

fn indexed_node() -> Result<(Node, tempfile::TempDir, Indexer)> {
    let node = Node::start(NodeOptions::default())?;
    let chain = ChainBuilder::new(&node)?;
    chain.mine(110)?;
    chain.wallet_traffic(2)?;
    let (dir, indexer) = indexed(&node)?;
    Ok((node, dir, indexer))
}

/// A self-signed certificate for localhost, written as PEM files; returns the client config that
/// trusts it.
pub(crate) fn certificate(dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn version_request() -> String {
    req(1, "server.version", json!(["t", "1.6"])).to_string()
}

#[test]
fn tls_and_websockets_speak_the_protocol_and_metrics_count_it() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let client_tls = certificate(dir.path())?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let server = Server::start_with(
        &node,
        &dir.path().join("db"),
        &[
            "--tls-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
            "--wss-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )?;
    let tip = node.height()?;

    // TLS: newline-framed, as TCP.
    let tls_addr = server.addr_of("serving Electrum over TLS");
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(client_tls.clone(), name.clone())?;
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(&tls_addr)?);
    writeln!(tls, "{}", version_request())?;
    writeln!(tls, "{}", req(2, "blockchain.headers.subscribe", json!([])))?;
    let mut lines = BufReader::new(tls).lines();
    let v: Value = serde_json::from_str(&lines.next().unwrap()?)?;
    assert_eq!(v["result"][1], "1.6");
    let h: Value = serde_json::from_str(&lines.next().unwrap()?)?;
    assert_eq!(h["result"]["height"], json!(tip));

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // WebSocket: one message per frame, no newline.
        let ws_addr = server.addr_of("serving Electrum over WS");
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{ws_addr}")).await?;
        ws.send(Message::text(version_request())).await?;
        let reply = ws.next().await.unwrap()?.into_text()?;
        assert!(!reply.ends_with('\n'), "WebSocket messages carry no newline");
        assert_eq!(serde_json::from_str::<Value>(&reply)?["result"][1], "1.6");
        ws.send(Message::text(req(2, "blockchain.headers.subscribe", json!([])).to_string())).await?;
        let reply: Value = serde_json::from_str(&ws.next().await.unwrap()?.into_text()?)?;
        assert_eq!(reply["result"]["height"], json!(tip));
        // A new block arrives as a notification frame.
        node.mine(1, &node.new_address("bech32")?)?;
        let note: Value = serde_json::from_str(
            &tokio::time::timeout(Duration::from_secs(20), ws.next()).await?.unwrap()?.into_text()?,
        )?;
        assert_eq!(note["method"], "blockchain.headers.subscribe");
        assert_eq!(note["params"][0]["height"], json!(tip + 1));

        // WebSocket over TLS.
        let wss_addr = server.addr_of("serving Electrum over WSS");
        let tcp = tokio::net::TcpStream::connect(&wss_addr).await?;
        let tls = tokio_rustls::TlsConnector::from(client_tls.clone()).connect(name.clone(), tcp).await?;
        let (mut wss, _) = tokio_tungstenite::client_async("wss://localhost/", tls).await?;
        wss.send(Message::text(version_request())).await?;
        let reply: Value = serde_json::from_str(&wss.next().await.unwrap()?.into_text()?)?;
        assert_eq!(reply["result"][1], "1.6");
        anyhow::Ok(())
    })?;

    // server.features names every listener's port.
    let features = session(&server.addr, &[req(1, "server.features", json!([]))]);
    let ports = features[0]["result"]["hosts"]["127.0.0.1"].clone();
    for (key, what) in
        [("tcp_port", "over TCP"), ("ssl_port", "over TLS"), ("ws_port", "over WS"), ("wss_port", "over WSS")]
    {
        let addr = server.addr_of(&format!("serving Electrum {what}"));
        assert_eq!(ports[key].to_string(), addr.rsplit(':').next().unwrap(), "{key} in {features:?}");
    }

    // Metrics: requests by method, connections by transport, the tip, the script cache (a script
    // asked for twice at one tip is computed once).
    let sh = "00".repeat(32);
    session(
        &server.addr,
        &[
            req(1, "blockchain.scripthash.get_balance", json!([sh])),
            req(2, "blockchain.scripthash.get_history", json!([sh])),
        ],
    );
    let metrics = http_get(&server.addr_of("serving metrics"))?;
    assert!(metrics.contains(r#"blkindex_script_cache_lookups_total{outcome="computed"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"blkindex_script_cache_lookups_total{outcome="hit"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"blkindex_requests_total{method="server.version",outcome="ok"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"blkindex_request_seconds_count{method="blockchain.headers.subscribe"} 2"#));
    assert!(metrics.contains(&format!("blkindex_index_height {}", tip + 1)), "{metrics}");
    assert!(metrics.contains(r#"blkindex_connections{transport="tcp"}"#));
    // A made-up method is counted as "unknown", not as a label of its own.
    session(&server.addr, &[req(1, "made.up", json!([]))]);
    let metrics = http_get(&server.addr_of("serving metrics"))?;
    assert!(metrics.contains(r#"blkindex_requests_total{method="unknown",outcome="error"} 1"#), "{metrics}");
    assert!(!metrics.contains("made.up"));
    Ok(())
}

/// Reads one line, or None when the server closes (or after `wait`).
fn ping(s: &mut TcpStream) -> bool {
    writeln!(s, "{}", req(9, "server.ping", json!([]))).is_ok()
        && read_line(s, Duration::from_secs(10)).is_some_and(|l| l.contains(r#""result":null"#))
}

#[test]
fn limits_refuse_or_close_with_clear_errors_and_the_server_keeps_serving() -> Result<()> {
    let (node, dir, _indexer) = indexed_node()?;
    let mut server = Server::start_with(
        &node,
        &dir.path().join("db"),
        &["--limit-loopback", "--max-connections-per-ip", "5", "--idle-timeout", "2", "--max-history", "3"],
    )?;
    // Five connections from one address are served, a sixth is told why and closed.
    let mut open: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    for s in &mut open {
        assert!(ping(s));
    }
    let sixth = TcpStream::connect(&server.addr)?;
    let refusal = read_line(&sixth, Duration::from_secs(5)).expect("an error line");
    assert!(refusal.contains("too many connections from your address"), "{refusal}");
    assert!(read_line(&sixth, Duration::from_secs(5)).is_none(), "then closed");
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = TcpStream::connect(&server.addr)?;
    assert!(ping(&mut again), "a freed place is taken again");
    drop(open);
    drop(again);
    std::thread::sleep(Duration::from_millis(200));

    // A slowloris client trickles a request that never ends: closed after the idle timeout,
    // while a well-behaved client is served all along.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&server.addr)?;
    let mut good = TcpStream::connect(&server.addr)?;
    slow.write_all(br#"{"id":1,"method":"#)?;
    let mut closed = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        if slow.write_all(b" ").is_err() {
            closed = true;
            break;
        }
        assert!(ping(&mut good), "served while another client dawdles");
        let mut buf = [0u8; 512];
        slow.set_read_timeout(Some(Duration::from_millis(1)))?;
        if matches!(slow.read(&mut buf), Ok(0)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slowloris connection is closed");
    assert!(started.elapsed() < Duration::from_secs(8));
    // An idle connection is told, then closed.
    let idle = TcpStream::connect(&server.addr)?;
    let notice = read_line(&idle, Duration::from_secs(10)).expect("an idle notice");
    assert!(notice.contains("no request for 2 s"), "{notice}");
    drop((slow, good));

    // A history longer than --max-history is an error with 1.7's code, never a cut list.
    let want = expected(&node)?;
    let (big, _) = want.history.iter().find(|(_, h)| h.len() > 3).expect("a script with a long history");
    let (small, h) = want.history.iter().find(|(_, h)| h.len() <= 3).expect("a short history");
    let replies = session(
        &server.addr,
        &[
            req(1, "blockchain.scripthash.get_history", json!([big.to_string()])),
            req(2, "blockchain.scripthash.get_history", json!([small.to_string()])),
        ],
    );
    assert_eq!(replies[0]["error"]["code"], 10001, "{}", replies[0]);
    assert_eq!(replies[1]["result"].as_array().unwrap().len(), h.len());

    // SIGTERM: a clean exit.
    let status = server.terminate()?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn thousands_of_connections_are_held_and_served() -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (node, dir, _indexer) = indexed_node()?;
    let server = Server::start_with(&node, &dir.path().join("db"), &["--metrics-addr", "127.0.0.1:0"])?;
    const N: usize = 3000;
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = TcpStream::connect(&server.addr)?;
        writeln!(s, "{}", req(i as u32, "blockchain.headers.subscribe", json!([])))?;
        conns.push(s);
    }
    for s in &conns {
        let line = read_line(s, Duration::from_secs(30)).expect("a reply on every connection");
        assert!(line.contains(r#""height""#), "{line}");
    }
    let metrics = http_get(&server.addr_of("serving metrics"))?;
    assert!(metrics.contains(&format!(r#"blkindex_connections{{transport="tcp"}} {N}"#)), "{metrics}");
    // Every one of them hears of a new block.
    node.mine(1, &node.new_address("bech32")?)?;
    for s in &conns {
        let line = read_line(s, Duration::from_secs(30)).expect("a notification on every connection");
        assert!(line.contains("blockchain.headers.subscribe"), "{line}");
    }
    // And a newcomer is served at once.
    let replies = raw(&server.addr, &[&req(1, "server.ping", json!([])).to_string()], 1);
    assert_eq!(replies.len(), 1);
    Ok(())
}
