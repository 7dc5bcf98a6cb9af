//! The admin interface, off unless `--admin-addr` or `--admin-socket` is given: newline-delimited
//! JSON-RPC 2.0, for the operator and `blkindex-admin`. It has no authentication, so it listens
//! only where the machine's own users reach it: a loopback TCP address (any local user), or a
//! Unix socket of mode 0600 (the server's user, and root).
//!
//! Methods: `getinfo`, `sessions`, `disconnect [id | ip:port | ip | subnet]`, `ban [subnet]`,
//! `unban [subnet]`, `banlist`, `loglevel [filter]`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, info, warn};

use blkindex_shared::config::LogFilterHandle;

use crate::bans::{Bans, Subnet};
use crate::protocol::{version_string, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, SERVER_ERROR};
use crate::sessions::Which;
use crate::state::State;

/// Longest request line: admin requests are a method and one short argument.
pub const MAX_LINE: usize = 64 * 1024;
/// Admin connections open at once.
const MAX_CONNECTIONS: usize = 8;
/// An admin connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// The request was understood but could not be done (nothing matched, the file not written).
const FAILED: i64 = SERVER_ERROR;

pub struct Admin {
    pub state: Arc<State>,
    pub bans: Arc<Bans>,
    /// None when the process has no reloadable log filter (a server run inside tests).
    pub log_filter: Option<LogFilterHandle>,
    pub started: Instant,
}

type Reply = Result<Value, (i64, String)>;

/// Where the admin interface listens.
pub enum Listener {
    Tcp(TcpListener),
    /// A Unix socket, mode 0600, and the user id whose processes it serves.
    Unix(UnixListener, u32),
}

pub async fn bind(addr: SocketAddr) -> Result<Listener> {
    crate::config::check_admin_addr(addr)?;
    let l =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--admin-addr)"))?;
    info!(addr = %l.local_addr()?, "serving the admin interface over TCP");
    Ok(Listener::Tcp(l))
}

/// Listens on a Unix socket at `path`, mode 0600, replacing a stale socket that no process
/// answers on (never a file of another kind). Call within the runtime.
pub fn bind_unix(path: &Path) -> Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            anyhow::bail!("--admin-socket {}: the file exists and is not a socket", path.display())
        }
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            anyhow::bail!("--admin-socket {}: another process serves on it", path.display())
        }
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("--admin-socket {}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    let uid = std::fs::metadata(path)?.uid();
    info!(path = %path.display(), "serving the admin interface on a Unix socket");
    Ok(Listener::Unix(l, uid))
}

pub async fn accept_loop(listener: Listener, admin: Arc<Admin>) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let failed = match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((stream, _)) => {
                    spawn_connection(stream, &admin, &open);
                    continue;
                }
                Err(e) => e,
            },
            Listener::Unix(l, uid) => match l.accept().await {
                // The mode keeps other users out; the peer is checked too, since a connection
                // can come in between bind and chmod. Root may (it could anyway).
                Ok((stream, _)) if stream.peer_cred().is_ok_and(|c| c.uid() == *uid || c.uid() == 0) => {
                    spawn_connection(stream, &admin, &open);
                    continue;
                }
                Ok(_) => {
                    warn!("refused an admin connection from another user");
                    continue;
                }
                Err(e) => e,
            },
        };
        warn!("admin accept failed: {failed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_connection<S>(mut stream: S, admin: &Arc<Admin>, open: &Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = open.clone().try_acquire_owned() else {
        let line = error(&Value::Null, FAILED, "too many admin connections") + "\n";
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes())).await;
        });
        return;
    };
    let admin = admin.clone();
    tokio::spawn(async move {
        connection(stream, &admin).await;
        debug!("admin connection closed");
        drop(permit);
    });
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, admin: &Admin) {
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE));
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next()).await {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let reply =
                    error(&Value::Null, INVALID_REQUEST, &format!("request longer than {MAX_LINE} bytes"));
                let _ = w.write_all((reply + "\n").as_bytes()).await;
                return;
            }
            _ => return, // closed, a read error, or idle
        };
        if line.trim().is_empty() {
            continue;
        }
        // A line that is not JSON ends the connection: a web page can make a browser send an
        // HTTP request to a loopback port, whose header lines are not JSON but whose body could
        // be an admin request. Nothing after a bad line is read.
        let parsed = serde_json::from_str::<Value>(&line);
        let reply = handle(admin, &line) + "\n";
        if w.write_all(reply.as_bytes()).await.is_err() || parsed.is_err() {
            return;
        }
    }
}

/// One request line → one reply line (a request without an id is answered too, with id null).
fn handle(admin: &Admin, line: &str) -> String {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(&Value::Null, -32700, &format!("invalid JSON: {e}")),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return error(&id, INVALID_REQUEST, "not a JSON-RPC request (one object with a method)");
    };
    let params = req.get("params").cloned().unwrap_or(json!([]));
    if !(params.is_array() || params.is_object()) {
        return error(&id, INVALID_REQUEST, "params must be an array or an object");
    }
    debug!(method, %params, "admin request");
    match call(admin, method, &params) {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}).to_string(),
        Err((code, message)) => error(&id, code, &message),
    }
}

fn error(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}).to_string()
}

fn call(admin: &Admin, method: &str, params: &Value) -> Reply {
    let state = &admin.state;
    match method {
        "getinfo" => Ok(getinfo(admin)),
        "sessions" => Ok(sessions(state)),
        "disconnect" => {
            let which = match arg(params, 0, "target")? {
                Value::Number(n) => {
                    Which::Id(n.as_u64().ok_or_else(|| bad("a session id is a positive integer"))?)
                }
                Value::String(s) => match (s.parse::<u64>(), s.parse::<SocketAddr>()) {
                    (Ok(id), _) => Which::Id(id),
                    (_, Ok(peer)) => Which::Peer(peer),
                    _ => Which::Subnet(s.parse().map_err(bad)?),
                },
                _ => return Err(bad("target: a session id, a client ip:port, an IP address or a subnet")),
            };
            let closed = state.sessions().close(&which);
            if closed.is_empty() {
                return Err((FAILED, "no open session matches".into()));
            }
            Ok(json!({"disconnected": closed}))
        }
        "ban" => {
            let subnet = subnet_arg(params)?;
            let new = admin.bans.ban(subnet).map_err(failed)?;
            // After the ban is in force, so no new session from it starts.
            let closed = state.sessions().close(&Which::Subnet(subnet));
            // A connection admitted just before may still be in its TLS and WebSocket
            // handshakes, and registers only after them: close those once they are done.
            let (state, bans) = (state.clone(), admin.bans.clone());
            tokio::spawn(async move {
                tokio::time::sleep(2 * crate::listen::HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
                if bans.list().contains(&subnet) {
                    state.sessions().close(&Which::Subnet(subnet));
                }
            });
            info!(%subnet, disconnected = closed.len(), "banned");
            Ok(json!({"banned": subnet.to_string(), "new": new, "disconnected": closed}))
        }
        "unban" => {
            let subnet = subnet_arg(params)?;
            match admin.bans.unban(subnet).map_err(failed)? {
                true => {
                    info!(%subnet, "unbanned");
                    Ok(json!({"unbanned": subnet.to_string()}))
                }
                false => Err((FAILED, format!("{subnet} is not banned"))),
            }
        }
        "banlist" => Ok(json!(admin.bans.list().iter().map(Subnet::to_string).collect::<Vec<_>>())),
        "loglevel" => {
            let Value::String(filter) = arg(params, 0, "filter")? else {
                return Err(bad("filter must be a string, e.g. \"debug\" or \"info,blkindex_server=debug\""));
            };
            let parsed = tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| bad(format!("invalid log filter {filter:?}: {e}")))?;
            let handle = admin
                .log_filter
                .as_ref()
                .ok_or((FAILED, "this process's log filter is fixed".to_string()))?;
            handle.reload(parsed).map_err(|e| (FAILED, format!("{e}")))?;
            info!(filter, "log filter changed");
            Ok(json!({"filter": filter}))
        }
        _ => Err((
            METHOD_NOT_FOUND,
            format!(
                "unknown method {method:?}: getinfo, sessions, disconnect, ban, unban, banlist or \
                 loglevel"
            ),
        )),
    }
}

fn getinfo(admin: &Admin) -> Value {
    let state = &admin.state;
    let s = crate::stats::summary(state);
    json!({
        "version": crate::protocol::software(),
        "network": state.settings().net.to_string(),
        "tip": s.tip.map(|t| json!({"height": t.height, "hash": t.header.block_hash().to_string()})),
        "node": s.node.name(),
        "uptime_secs": admin.started.elapsed().as_secs(),
        "sessions": s.sessions,
        "requests": state.sessions().requests(),
        "requests_per_sec": (state.sessions().rate() * 10.0).round() / 10.0,
        "mempool_txs": s.mempool_txs,
        "script_cache": {
            "entries": s.script_cache_entries,
            "bytes": s.script_cache_bytes,
            "capacity_bytes": s.script_cache_capacity,
        },
        "send_buffers_bytes": s.send_buffers_bytes,
        "banned": admin.bans.list().len(),
    })
}

fn sessions(state: &State) -> Value {
    let list: Vec<Value> = state
        .sessions()
        .list()
        .iter()
        .map(|l| {
            let seen = l.seen.lock().unwrap().clone();
            json!({
                "id": l.id,
                "peer": l.peer.to_string(),
                "transport": l.transport.name(),
                // null: never negotiated (served as 1.4.2)
                "protocol": seen.version.map(version_string),
                "client": seen.client,
                "subscriptions": {"scripts": seen.scripts, "outpoints": seen.outpoints, "silent_payments": seen.silent},
                "requests": seen.requests,
                "busy_ms": seen.busy.as_millis() as u64,
                "bytes_in": seen.bytes_in,
                "bytes_out": seen.bytes_out,
                "queued_bytes": seen.queued,
                "cost": seen.cost.round(),
                "age_secs": l.opened.elapsed().as_secs(),
            })
        })
        .collect();
    Value::Array(list)
}

/// Positional parameter `i` or named parameter `name`.
fn arg<'a>(params: &'a Value, i: usize, name: &str) -> Result<&'a Value, (i64, String)> {
    match params {
        Value::Array(a) => a.get(i),
        Value::Object(o) => o.get(name),
        _ => None,
    }
    .ok_or_else(|| bad(format!("missing parameter {name}")))
}

fn subnet_arg(params: &Value) -> Result<Subnet, (i64, String)> {
    match arg(params, 0, "subnet")? {
        Value::String(s) => s.parse().map_err(bad),
        _ => Err(bad("subnet must be a string: an IP address or a CIDR subnet")),
    }
}

fn bad(message: impl Into<String>) -> (i64, String) {
    (INVALID_PARAMS, message.into())
}

fn failed(e: anyhow::Error) -> (i64, String) {
    (FAILED, format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_unix_socket_is_private_and_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A socket nobody serves on (a server killed before it could clean up) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind_unix(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        // One that is served on is not taken over.
        let e = bind_unix(&path).err().unwrap().to_string();
        assert!(e.contains("another process"), "{e}");
        drop(listener);
        // Nor is a file of another kind removed.
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind_unix(&file).err().unwrap().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
