//! A fault-injecting HTTP proxy in front of a real node's RPC port: what an overloaded or failing
//! node does that a real one cannot be made to do on cue (HTTP 503 "Work queue depth exceeded",
//! slow answers, connections reset before or in the middle of a reply). Every other request is
//! forwarded to the node and its real answer returned.
//!
//! Faults are a test-controlled plan: request number `i` (counted from the last `set`) gets
//! `plan[i % plan.len()]`, so a test knows what was injected and can count it. A test can also
//! hold every call of one RPC method until it releases them, to change the node's chain at an
//! exact point of the client's work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the node.
    Pass,
    /// `HTTP/1.1 503 Service Unavailable`, body "Work queue depth exceeded" (bitcoind's answer
    /// when its `-rpcworkqueue` is full).
    Busy,
    /// Wait, then forward.
    Delay(Duration),
    /// Close the connection without an answer (RST, as a node that crashed).
    Reset,
    /// Forward, then send the node's status line, headers and half the body, and close.
    CutShort,
}

#[derive(Default)]
struct Plan {
    faults: Vec<Fault>,
    next: usize,
    /// How many requests met each fault other than `Pass`, in the order of `Fault`'s variants.
    injected: [u64; 4],
    /// Calls of this method wait until it is cleared.
    hold: Option<String>,
    /// Calls waiting on `hold`, by method: a call held for an earlier method still counts
    /// until it has gone on, which must not look like a call of the new one being held.
    held: std::collections::HashMap<String, usize>,
}

struct Shared {
    plan: Mutex<Plan>,
    changed: Condvar,
}

impl Plan {
    fn take(&mut self) -> Fault {
        if self.faults.is_empty() {
            return Fault::Pass;
        }
        let f = self.faults[self.next % self.faults.len()];
        self.next += 1;
        let slot = match f {
            Fault::Pass => None,
            Fault::Busy => Some(0),
            Fault::Delay(_) => Some(1),
            Fault::Reset => Some(2),
            Fault::CutShort => Some(3),
        };
        if let Some(i) = slot {
            self.injected[i] += 1;
        }
        f
    }
}

/// Counts of injected faults: busy (503), delayed, reset, cut short.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub busy: u64,
    pub delayed: u64,
    pub reset: u64,
    pub cut_short: u64,
}

/// The proxy, on `127.0.0.1:<free port>`, until dropped.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy forwarding to `target` (`host:port`, the node's RPC), injecting nothing yet.
    pub fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared { plan: Mutex::default(), changed: Condvar::new() });
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, target) = (shared.clone(), stop.clone(), target.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (p, s, target) = (p.clone(), s.clone(), target.clone());
                        std::thread::spawn(move || {
                            let _ = client.set_nonblocking(false);
                            let _ = serve(client, &target, &p, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Proxy { addr, shared, stop })
    }

    /// `127.0.0.1:port`, for `--daemon-rpc-addr`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// From now on, request `i` meets `faults[i % len]`; an empty plan forwards everything.
    pub fn set(&self, faults: &[Fault]) {
        let mut p = self.shared.plan.lock().unwrap();
        p.faults = faults.to_vec();
        p.next = 0;
    }

    /// Calls of `method` wait (after their fault, if any) until `release`.
    pub fn hold(&self, method: &str) {
        self.shared.plan.lock().unwrap().hold = Some(method.to_string());
        // Calls held for another method go on.
        self.shared.changed.notify_all();
    }

    /// Waits until a call is held, for at most `within`.
    pub fn wait_held(&self, within: Duration) -> Result<()> {
        let p = self.shared.plan.lock().unwrap();
        let none = |p: &Plan| p.hold.as_ref().is_none_or(|m| p.held.get(m).copied().unwrap_or(0) == 0);
        let (p, _) = self.shared.changed.wait_timeout_while(p, within, |p| none(p)).unwrap();
        if none(&p) {
            bail!("no {:?} call reached the proxy within {within:?}", p.hold);
        }
        Ok(())
    }

    /// Lets held calls (and later ones) through.
    pub fn release(&self) {
        self.shared.plan.lock().unwrap().hold = None;
        self.shared.changed.notify_all();
    }

    /// Every request meets `fault`.
    pub fn always(&self, fault: Fault) {
        self.set(&[fault])
    }

    /// Forwards everything again.
    pub fn heal(&self) {
        self.set(&[])
    }

    pub fn injected(&self) -> Injected {
        let [busy, delayed, reset, cut_short] = self.shared.plan.lock().unwrap().injected;
        Injected { busy, delayed, reset, cut_short }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.release();
    }
}

/// One HTTP message: head (start line and headers, with the blank line) and body.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// Reads one message; None at a clean end of the stream. A body without Content-Length is read
/// to the end of the stream when `to_eof` (replies), else taken as empty (requests).
fn read_message(r: &mut BufReader<TcpStream>, to_eof: bool) -> Result<Option<Message>> {
    let mut head = Vec::new();
    let mut length = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            bail!("stream ended inside a message's head");
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<usize>().context("bad Content-Length")?);
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if to_eof => {
            r.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(Some(Message { head, body }))
}

/// Closes with a reset rather than an orderly FIN: SO_LINGER with a zero timeout.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// The node's answer to one request (a fresh connection each time: simple, and a node that
/// restarted is found again).
fn forward(target: &str, req: &Message) -> Result<Message> {
    let node = TcpStream::connect(target)?;
    node.set_read_timeout(Some(Duration::from_secs(300)))?;
    (&node).write_all(&req.head)?;
    (&node).write_all(&req.body)?;
    read_message(&mut BufReader::new(node), true)?.context("the node closed without an answer")
}

/// Holds a call of the held method until it is released.
fn wait_if_held(shared: &Shared, body: &[u8]) {
    let method = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["method"].as_str().map(str::to_string));
    let is_held = |p: &Plan| p.hold.is_some() && p.hold == method;
    let mut p = shared.plan.lock().unwrap();
    if !is_held(&p) {
        return;
    }
    let name = method.clone().unwrap_or_default();
    *p.held.entry(name.clone()).or_default() += 1;
    shared.changed.notify_all();
    let mut p = shared.changed.wait_while(p, |p| is_held(p)).unwrap();
    *p.held.entry(name).or_default() -= 1;
}

/// Serves one client connection, request after request (keep-alive), until it closes.
fn serve(client: TcpStream, target: &str, shared: &Shared, stop: &AtomicBool) -> Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut out = client;
    while let Some(req) = read_message(&mut reader, false)? {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let fault = shared.plan.lock().unwrap().take();
        wait_if_held(shared, &req.body);
        match fault {
            Fault::Pass | Fault::Delay(_) => {
                if let Fault::Delay(d) = fault {
                    std::thread::sleep(d);
                }
                match forward(target, &req) {
                    Ok(reply) => {
                        out.write_all(&reply.head)?;
                        out.write_all(&reply.body)?;
                    }
                    // A node that is down: the client sees its connection dropped.
                    Err(_) => {
                        reset(out);
                        return Ok(());
                    }
                }
            }
            Fault::Busy => {
                let body = "Work queue depth exceeded";
                write!(
                    out,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; charset=ISO-8859-1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            Fault::Reset => {
                reset(out);
                return Ok(());
            }
            Fault::CutShort => {
                if let Ok(reply) = forward(target, &req) {
                    out.write_all(&reply.head)?;
                    out.write_all(&reply.body[..reply.body.len() / 2])?;
                    out.flush()?;
                }
                // An orderly close: the client surely reads the head and meets the end midway.
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}
