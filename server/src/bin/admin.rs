//! `blkindex-admin`: asks a running `blkindex-server` something through its admin interface
//! (`--admin-addr` or `--admin-socket`), prints the result as indented JSON, and exits 1 with the server's message
//! on an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// Administers a running blkindex-server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's --admin-addr.
    #[arg(
        long,
        env = "BLKINDEX_ADMIN_ADDR",
        required_unless_present = "admin_socket",
        conflicts_with = "admin_socket"
    )]
    admin_addr: Option<String>,
    /// The server's --admin-socket.
    #[arg(long, env = "BLKINDEX_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Version, tip, uptime, sessions, requests per second, mempool, script cache.
    Getinfo,
    /// Every open session: peer, transport, protocol, client, subscriptions, requests.
    Sessions,
    /// Closes sessions: by id, by client ip:port, or all from an IP address or subnet.
    Disconnect { target: String },
    /// Refuses an IP address or subnet (CIDR) from now on, and closes its open sessions.
    Ban { subnet: String },
    /// Lifts a ban (the subnet as banlist shows it, or an address of one).
    Unban { subnet: String },
    /// The banned subnets.
    Banlist,
    /// Replaces the log filter, e.g. "debug" or "info,blkindex_server=debug".
    Loglevel { filter: String },
}

fn main() {
    blkindex_shared::config::run_main(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let (method, params) = match &args.command {
        Command::Getinfo => ("getinfo", json!([])),
        Command::Sessions => ("sessions", json!([])),
        // A number is a session id; anything else an address or subnet.
        Command::Disconnect { target } => match target.parse::<u64>() {
            Ok(id) => ("disconnect", json!([id])),
            Err(_) => ("disconnect", json!([target])),
        },
        Command::Ban { subnet } => ("ban", json!([subnet])),
        Command::Unban { subnet } => ("unban", json!([subnet])),
        Command::Banlist => ("banlist", json!([])),
        Command::Loglevel { filter } => ("loglevel", json!([filter])),
    };
    let timeout = Some(Duration::from_secs(args.timeout));
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let reply = match (&args.admin_addr, &args.admin_socket) {
        (Some(addr), _) => {
            let s = TcpStream::connect(addr)
                .with_context(|| format!("cannot reach the admin interface at {addr}"))?;
            s.set_read_timeout(timeout)?;
            s.set_write_timeout(timeout)?;
            call(s, &request)?
        }
        (None, Some(path)) => {
            let s = UnixStream::connect(path)
                .with_context(|| format!("cannot reach the admin interface at {}", path.display()))?;
            s.set_read_timeout(timeout)?;
            s.set_write_timeout(timeout)?;
            call(s, &request)?
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    if let Some(e) = reply.get("error").filter(|e| !e.is_null()) {
        anyhow::bail!("{}", e["message"].as_str().unwrap_or("the server answered an error"));
    }
    let result = reply.get("result").context("the server's reply has no result")?;
    println!("{}", serde_json::to_string_pretty(result)?);
    Ok(())
}

/// Sends one request line and reads the reply line.
fn call(mut stream: impl Read + Write, request: &Value) -> Result<Value> {
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("reading the server's reply")?;
    anyhow::ensure!(!line.is_empty(), "the server closed the connection without a reply");
    serde_json::from_str(&line).with_context(|| format!("the server's reply is not JSON: {line:?}"))
}
