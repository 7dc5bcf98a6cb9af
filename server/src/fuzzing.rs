//! The bodies of the server's fuzz targets (`fuzz/fuzz_targets/rpc_line.rs`, `websocket.rs`): a
//! client's JSON-RPC line through request parsing, and a client's bytes through the WebSocket
//! handshake and framing. The unit tests replay the committed corpus through them on stable.
//!
//! This file and the two it uses (`call`, `protocol`) need nothing of the server's state or of
//! RocksDB, so the fuzz crate compiles the three files into its targets with `#[path]` instead of
//! linking this crate: keep `crate::` paths here to `call` and `protocol`.

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use blkindex_shared::Net;

use crate::call::Call;
use crate::protocol::{available, ServerError, BAD_REQUEST, INVALID_PARAMS, METHOD_NOT_FOUND, VERSIONS};

/// A line as a session reads it (text; one request object or a batch of them), each request run
/// through `Call::parse` in every protocol version, on mainnet and regtest (addresses are checked
/// against the network). Parsing never panics; a call parses only in versions that have its method,
/// and a method of the version never fails as unknown; every error is one of the client's, with a
/// code and a message.
pub fn rpc_line(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(msg) = serde_json::from_str::<Value>(text) else { return };
    let requests: Vec<&Value> = match &msg {
        Value::Array(batch) => batch.iter().collect(),
        one => vec![one],
    };
    for req in requests {
        let Some(method) = req.get("method").and_then(Value::as_str) else { continue };
        let params = req.get("params").cloned().unwrap_or(json!([]));
        if !matches!(params, Value::Array(_) | Value::Object(_)) {
            continue; // the session answers these itself, before parsing
        }
        for &v in VERSIONS {
            for net in [Net(bitcoin::Network::Bitcoin), Net(bitcoin::Network::Regtest)] {
                match Call::parse(method, &params, v, net) {
                    Ok(_) => assert!(available(method, v), "{method} parsed in a version without it"),
                    Err(e) => check_error(method, v, &e),
                }
            }
        }
    }
}

fn check_error(method: &str, v: crate::protocol::Version, e: &ServerError) {
    let code = e.code();
    assert!(
        matches!(code, BAD_REQUEST | INVALID_PARAMS | METHOD_NOT_FOUND),
        "{method}: parsing raised {e:?}, not a client's error"
    );
    assert_eq!(code == METHOD_NOT_FOUND, !available(method, v), "{method} in {v:?}: {e:?}");
    assert!(!e.message().is_empty());
}

/// The largest message and frame the WebSocket target's server accepts (the server's own is
/// `--max-request`; a small one lets the fuzzer reach it).
pub const WS_MAX: usize = 4096;

/// A client's bytes after a valid opening handshake, read by a server-side WebSocket stream with
/// the server's configuration (`listen::websocket`: message and frame size both capped) over an
/// in-memory pipe. It must not panic or hang, and never hands over a message above the cap (a
/// longer one is a capacity error, after which the server reads on as it does).
pub fn websocket(data: &[u8]) {
    websocket_read(data);
}

/// The messages handed over and the capacity errors met.
fn websocket_read(data: &[u8]) -> (usize, usize) {
    thread_local! {
        // One runtime for every input (building one is most of an input's time); the pipe needs
        // no I/O or timer driver.
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().unwrap();
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut client_read, mut client_write) = tokio::io::split(client);
            let input = data.to_vec();
            // As a client must (tungstenite refuses bytes behind the request): the request, the
            // server's answer read to its end, then the frames. What the server sends after (pongs, a
            // close) is read and dropped.
            let client = tokio::spawn(async move {
                let handshake =
                    "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
                client_write.write_all(handshake.as_bytes()).await.unwrap();
                // Nothing follows the answer until the client's first frame: read it in chunks.
                let (mut answer, mut buf) = (Vec::new(), [0u8; 512]);
                while !answer.ends_with(b"\r\n\r\n") {
                    match client_read.read(&mut buf).await.unwrap() {
                        0 => return,
                        n => answer.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(answer.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&answer));
                let drain = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while matches!(client_read.read(&mut buf).await, Ok(n) if n > 0) {}
                });
                let _ = client_write.write_all(&input).await;
                let _ = client_write.shutdown().await;
                let _ = drain.await;
            });
            let config =
                WebSocketConfig::default().max_message_size(Some(WS_MAX)).max_frame_size(Some(WS_MAX));
            let (mut messages, mut too_long) = (0, 0);
            let mut ws = tokio_tungstenite::accept_async_with_config(server, Some(config))
                .await
                .expect("a valid opening handshake was refused");
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        assert!(t.len() <= WS_MAX, "a {}-byte text message", t.len());
                        messages += 1;
                    }
                    Ok(Message::Binary(b)) => {
                        assert!(b.len() <= WS_MAX, "a {}-byte binary message", b.len());
                        messages += 1;
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(WsError::Capacity(_)) => too_long += 1,
                    Err(_) => break,
                }
            }
            drop(ws);
            client.await.unwrap();
            (messages, too_long)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use blkindex_shared::fuzzing::replay_corpus as replay;

    #[test]
    fn corpus_rpc_line() {
        replay("rpc_line", rpc_line);
    }

    #[test]
    fn corpus_websocket() {
        replay("websocket", websocket);
    }

    /// The WebSocket target sees messages: a masked text frame of the handshake's stream arrives,
    /// and one over the cap is a capacity error (so the target's checks are not vacuous).
    #[test]
    fn websocket_target_reads_frames() {
        let frame = |payload: &[u8]| {
            let mut f = vec![0x81];
            match payload.len() {
                n if n < 126 => f.push(0x80 | n as u8),
                n => {
                    f.push(0x80 | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            let mask = [1, 2, 3, 4];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let mut data = frame(br#"{"id":1,"method":"server.ping"}"#);
        data.extend(frame(&vec![b'a'; WS_MAX + 1]));
        assert_eq!(websocket_read(&data), (1, 1));
    }
}
