//! The live sessions, for the admin interface: one entry per open connection (so no more than
//! the connection limit), added when its session starts and removed when it ends. Each entry
//! holds what the session last reported about itself and a token that asks it to close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bans::Subnet;
use crate::config::Transport;
use crate::protocol::Version;

pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Live>>>,
    /// Requests answered since the server started, by all sessions.
    requests: AtomicU64,
    /// Requests per second over the last measured window (f64 bits), set by `stats::run`.
    rate: AtomicU64,
}

/// One open session.
pub struct Live {
    pub id: u64,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub opened: Instant,
    /// Cancelled to close the session (the admin's `disconnect` and `ban`).
    pub close: CancellationToken,
    pub seen: Mutex<Seen>,
}

/// What a session reports about itself after each message it handles.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The name it gave in `server.version`, and the version negotiated.
    pub client: Option<String>,
    pub version: Option<Version>,
    pub scripts: usize,
    pub outpoints: usize,
    /// Silent-payment subscriptions.
    pub silent: usize,
    pub requests: u64,
    /// Time spent answering its requests: what it has cost us.
    pub busy: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes queued for it, not yet written; its cost budget's units (see `cost`).
    pub queued: usize,
    pub cost: f64,
}

/// A session's place in the registry; dropping it removes the entry.
pub struct Registered<'a> {
    sessions: &'a Sessions,
    pub live: Arc<Live>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.sessions.live.lock().unwrap().remove(&self.live.id);
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            next_id: AtomicU64::new(1),
            live: Mutex::default(),
            requests: AtomicU64::new(0),
            rate: AtomicU64::new(0),
        }
    }
}

impl Sessions {
    pub fn register(&self, peer: SocketAddr, transport: Transport) -> Registered<'_> {
        let live = Arc::new(Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            transport,
            opened: Instant::now(),
            close: CancellationToken::new(),
            seen: Mutex::default(),
        });
        self.live.lock().unwrap().insert(live.id, live.clone());
        Registered { sessions: self, live }
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    pub fn set_rate(&self, per_sec: f64) {
        self.rate.store(per_sec.to_bits(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// The open sessions, oldest first.
    pub fn list(&self) -> Vec<Arc<Live>> {
        let mut all: Vec<Arc<Live>> = self.live.lock().unwrap().values().cloned().collect();
        all.sort_by_key(|l| l.id);
        all
    }

    /// Asks every session `which` selects to close; returns their ids.
    pub fn close(&self, which: &Which) -> Vec<u64> {
        self.list()
            .into_iter()
            .filter(|l| which.selects(l))
            .map(|l| {
                l.close.cancel();
                l.id
            })
            .collect()
    }
}

/// Sessions to close: one by id, the one from a client address and port, or all from a subnet.
pub enum Which {
    Id(u64),
    Peer(SocketAddr),
    Subnet(Subnet),
}

impl Which {
    fn selects(&self, l: &Live) -> bool {
        match self {
            Which::Id(id) => l.id == *id,
            Which::Peer(p) => l.peer == *p,
            Which::Subnet(s) => s.contains(l.peer.ip()),
        }
    }
}
