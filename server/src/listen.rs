//! Listeners and transports: TCP and TLS carry newline-framed JSON, WebSocket (ws, and wss over
//! TLS) carries one JSON message per frame. Each accepted connection is admitted against the
//! connection limits, then handed to `session::run` with a writer task that owns the socket. A
//! listener told to (`--proxy-protocol`) first reads each connection's PROXY v2 header (`proxy`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, warn};

use crate::bans::{client_group, Bans};
use crate::config::Transport;
use crate::outbox::{Inbox, Queued};
use crate::protocol::ServerError;
use crate::proxy;
use crate::session::{self, error_reply, Incoming};
use crate::state::State;

/// Initial read buffer of a line-framed connection.
const READ_BUFFER: usize = 1024;
/// Queued messages joined into one write, up to about this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;
/// Time allowed for the TLS and WebSocket handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is let in: no banned address, and connection limits in all and per client address
/// (loopback exempt unless asked). IPv6 clients are counted by /64: one host is given a whole
/// /64, so counting single addresses would let it open 50 connections per address it picks.
pub struct Admission {
    pub max_total: usize,
    pub max_per_ip: usize,
    pub limit_loopback: bool,
    pub bans: Arc<Bans>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; dropping it frees its place.
pub struct Admitted {
    admission: Arc<Admission>,
    /// What the per-address limit counted it under (`client_group`).
    group: IpAddr,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, limit_loopback: bool, bans: Arc<Bans>) -> Arc<Self> {
        let open = Mutex::new((0, HashMap::new()));
        Arc::new(Admission { max_total, max_per_ip, limit_loopback, bans, open })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        if self.bans.is_banned(ip) {
            return Err("your address is banned");
        }
        let mut open = self.open.lock().unwrap();
        if open.0 >= self.max_total {
            return Err("the server is full");
        }
        let group = client_group(ip);
        let per_ip = open.1.entry(group).or_default();
        if *per_ip >= self.max_per_ip && (self.limit_loopback || !ip.to_canonical().is_loopback()) {
            return Err("too many connections from your address");
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(Admitted { admission: self.clone(), group })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap();
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.group);
            }
        }
    }
}

/// A listener on `addr`; with `reuse_port` (SO_REUSEPORT), other processes that ask for the
/// same may listen on the same port, and the kernel spreads new connections among them.
pub fn bind(addr: SocketAddr, transport: Transport, reuse_port: bool) -> Result<TcpListener> {
    let bind = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted server can listen while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().with_context(|| format!("cannot listen on {} ({})", addr, transport.name()))
}

/// Longest a connection on a PROXY protocol listener may take to send its header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections on `listener`. With `proxy`, each must start with a PROXY protocol v2
/// header (from the balancer in front), and its client is the one the header names: the
/// connection limits and bans apply to that address. Connections still sending their header
/// are bounded in number (the total limit) and in time (`PROXY_HEADER_TIMEOUT`).
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    proxy: bool,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    admission: Arc<Admission>,
) {
    let headers_pending = Arc::new(tokio::sync::Semaphore::new(admission.max_total));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if !proxy {
            admit(stream, peer, transport, tls.clone(), state.clone(), &admission);
            continue;
        }
        let Ok(permit) = headers_pending.clone().try_acquire_owned() else {
            state.metrics().rejected.with_label_values(&["too many PROXY headers pending"]).inc();
            continue; // dropped: closed
        };
        let (tls, state, admission) = (tls.clone(), state.clone(), admission.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let header = tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut stream)).await;
            drop(permit);
            match header {
                Ok(Ok(client)) => {
                    let client = client.unwrap_or(peer);
                    debug!(%client, proxy = %peer, "PROXY header read");
                    admit(stream, client, transport, tls, state, &admission);
                }
                Ok(Err(e)) => {
                    debug!(%peer, "refused: {e:#}");
                    state.metrics().rejected.with_label_values(&["bad PROXY header"]).inc();
                }
                Err(_) => {
                    debug!(%peer, "refused: no PROXY header within {PROXY_HEADER_TIMEOUT:?}");
                    state.metrics().rejected.with_label_values(&["bad PROXY header"]).inc();
                }
            }
        });
    }
}

/// Reads a PROXY protocol v2 header, no byte beyond it: the prefix, checked (the length capped)
/// before the rest is read. Its client: None when the balancer speaks for itself (LOCAL).
async fn read_proxy_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>> {
    let mut prefix = [0; proxy::PREFIX_LEN];
    stream.read_exact(&mut prefix).await.context("reading the PROXY header")?;
    let len = proxy::body_len(&prefix)?;
    let mut body = [0; proxy::MAX_BODY];
    stream.read_exact(&mut body[..len]).await.context("reading the PROXY header")?;
    Ok(proxy::source(&prefix, &body[..len])?)
}

/// Admits the connection of `peer` (the client's address) against the limits and serves it, or
/// refuses it.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    admission: &Arc<Admission>,
) {
    match admission.admit(peer.ip()) {
        Ok(admitted) => {
            tokio::spawn(connection(stream, peer, transport, tls, state, admitted));
        }
        Err(reason) => {
            debug!(%peer, "refused: {reason}");
            state.metrics().rejected.with_label_values(&[reason]).inc();
            tokio::spawn(refuse(stream, transport, reason));
        }
    }
}

/// Tells a refused TCP client why (others get the connection closed).
async fn refuse(mut stream: TcpStream, transport: Transport, reason: &str) {
    if transport == Transport::Tcp {
        let line = error_reply(&serde_json::Value::Null, true, &ServerError::Closing(reason.into())) + "\n";
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes())).await;
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    _admitted: Admitted,
) {
    let gauge = state.metrics().connections.with_label_values(&[transport.name()]);
    gauge.inc();
    let result = async {
        match transport {
            Transport::Tcp => {
                let (r, w) = stream.into_split();
                serve_lines(r, w, state.clone(), peer, transport).await;
            }
            Transport::Tls => {
                let tls_stream = handshake(tls.unwrap().accept(stream)).await?;
                let (r, w) = tokio::io::split(tls_stream);
                serve_lines(r, w, state.clone(), peer, transport).await;
            }
            Transport::Ws => {
                let ws = handshake(websocket(stream, &state)).await?;
                serve_websocket(ws, state.clone(), peer, transport).await;
            }
            Transport::Wss => {
                let tls_stream = handshake(tls.unwrap().accept(stream)).await?;
                let ws = handshake(websocket(tls_stream, &state)).await?;
                serve_websocket(ws, state.clone(), peer, transport).await;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        debug!(%peer, "{} handshake failed: {e:#}", transport.name());
    }
    gauge.dec();
}

async fn handshake<T, E: std::error::Error + Send + Sync + 'static>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    Ok(tokio::time::timeout(HANDSHAKE_TIMEOUT, f).await.context("timed out")??)
}

fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &State,
) -> impl std::future::Future<Output = Result<tokio_tungstenite::WebSocketStream<S>, tungstenite::Error>> {
    let max = state.settings().limits.max_request;
    let config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
    tokio_tungstenite::accept_async_with_config(stream, Some(config))
}

/// Newline-framed JSON over a byte stream (TCP, TLS).
async fn serve_lines<R, W>(r: R, w: W, state: Arc<State>, peer: SocketAddr, transport: Transport)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, rx) = state.send_budget().outbox();
    let limits = &state.settings().limits;
    let writer = tokio::spawn(write_lines(w, rx, limits.send_timeout));
    // A small read buffer to start with (it grows for long requests, up to the limit): most
    // connections are idle wallets, and thousands of them each holding the default 8 KiB add up.
    let codec = LinesCodec::new_with_max_length(limits.max_request);
    let lines = FramedRead::with_capacity(r, codec, READ_BUFFER);
    let input = Box::pin(lines_with_deadline(lines, limits.request_timeout));
    session::run(input, out, state, peer, transport).await;
    let _ = writer.await;
}

/// The requests of a line-framed connection. A line must be finished within `limit` of its
/// first bytes being seen (checked every `limit`, so within twice that): a client holding a
/// partial line ties up a buffer of up to the request limit, and is cut off. A read error ends
/// the stream.
fn lines_with_deadline<R: AsyncRead + Unpin>(
    lines: FramedRead<R, LinesCodec>,
    limit: Duration,
) -> impl futures::Stream<Item = Incoming> {
    futures::stream::unfold(
        (lines, None::<tokio::time::Instant>, false),
        move |(mut lines, mut since, done)| async move {
            if done {
                return None;
            }
            loop {
                // Cancelling `next` loses nothing: the bytes read so far stay in the buffer.
                match tokio::time::timeout(limit, lines.next()).await {
                    Ok(Some(Ok(line))) => {
                        // Bytes after the newline are the next request's start: their clock runs.
                        since = (!lines.read_buffer().is_empty()).then(tokio::time::Instant::now);
                        return Some((Incoming::Message(line), (lines, since, false)));
                    }
                    Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                        return Some((Incoming::TooLong, (lines, since, true)))
                    }
                    Ok(Some(Err(LinesCodecError::Io(_)))) | Ok(None) => return None,
                    Err(_) if lines.read_buffer().is_empty() => since = None,
                    Err(_) => match since {
                        Some(t) if t.elapsed() >= limit => {
                            return Some((Incoming::Stalled, (lines, since, true)))
                        }
                        Some(_) => {}
                        None => since = Some(tokio::time::Instant::now()),
                    },
                }
            }
        },
    )
}

/// Writes each queued message and a newline, with the messages queued behind it in the same
/// write (a batch of notifications goes out at once), and gives up on a client that does not
/// take a write within `timeout`. A message's bytes are freed once written.
async fn write_lines<W: AsyncWrite + Unpin>(mut w: W, mut rx: Inbox, timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut taken = vec![first];
        let mut len = taken[0].text.len() + 1;
        while len < COALESCE_BYTES {
            let Some(next) = rx.try_recv() else { break };
            len += next.text.len() + 1;
            taken.push(next);
        }
        let write = async {
            match taken.as_mut_slice() {
                // One message: written from where it lies (a long reply is not copied).
                [one] => {
                    w.write_all(one.text.as_bytes()).await?;
                    if one.end {
                        w.write_all(b"\n").await?;
                    }
                }
                several => {
                    let mut joined = String::with_capacity(len);
                    for q in several.iter() {
                        joined.push_str(&q.text);
                        if q.end {
                            joined.push('\n');
                        }
                    }
                    w.write_all(joined.as_bytes()).await?;
                }
            }
            w.flush().await // TLS holds written bytes until flushed
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return rx.stop("write failed"),
            Err(_) => return rx.stop("not reading its replies"),
        }
    }
    let _ = w.shutdown().await;
}

/// One JSON message per WebSocket text (or binary) frame, no newlines. A partial message is
/// bounded in bytes by the frame and message limits, and in time by the idle timeout (only
/// whole messages count as requests).
async fn serve_websocket<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    state: Arc<State>,
    peer: SocketAddr,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = ws.split();
    let (out, mut rx) = state.send_budget().outbox();
    let timeout = state.settings().limits.send_timeout;
    let writer = tokio::spawn(async move {
        // A batch's pieces are joined into one frame; their bytes stay held until it is sent.
        let mut pieces: Vec<Queued> = Vec::new();
        while let Some(q) = rx.recv().await {
            let end = q.end;
            pieces.push(q);
            if !end {
                continue;
            }
            let text: String = match pieces.len() {
                1 => std::mem::take(&mut pieces[0].text),
                _ => pieces.iter().map(|p| p.text.as_str()).collect(),
            };
            let send = sink.send(Message::text(text));
            match tokio::time::timeout(timeout, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return rx.stop("write failed"),
                Err(_) => return rx.stop("not reading its replies"),
            }
            pieces.clear();
        }
        let _ = sink.close().await;
    });
    // `scan` ends the stream at the first None: a close frame or an error ends the session.
    let input = stream
        .scan((), |_, m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(Some(Incoming::Message(t.to_string()))),
                Ok(Message::Binary(b)) => {
                    Some(Some(Incoming::Message(String::from_utf8_lossy(&b).into_owned())))
                }
                Ok(Message::Close(_)) => None,
                Ok(_) => Some(None), // ping, pong, raw frames: tungstenite answers pings itself
                Err(tungstenite::Error::Capacity(_)) => Some(Some(Incoming::TooLong)),
                Err(_) => None,
            })
        })
        .filter_map(std::future::ready);
    session::run(Box::pin(input), out, state, peer, transport).await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_address_limit_counts_ipv6_by_64() {
        let dir = tempfile::tempdir().unwrap();
        let bans = Arc::new(Bans::load(&dir.path().join("banned.json")).unwrap());
        let admission = Admission::new(100, 2, false, bans);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = admission.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = admission.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        // A third address of the same /64 is the same client; another /64 is not.
        assert!(admission.admit(ip("2001:db8:1:2::77")).is_err());
        assert!(admission.admit(ip("2001:db8:1:3::1")).is_ok());
        // IPv4 by address, mapped or not.
        let _c = admission.admit(ip("192.0.2.1")).unwrap();
        let _d = admission.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(admission.admit(ip("192.0.2.1")).is_err());
        assert!(admission.admit(ip("192.0.2.2")).is_ok());
        // A place freed is free for the whole /64 again.
        drop(a);
        assert!(admission.admit(ip("2001:db8:1:2::77")).is_ok());
    }
}
