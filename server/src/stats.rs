//! The server at a glance: what the admin's `getinfo` reports and the status line logged every
//! `--log-stats-secs` (sessions, requests per second, tip, the node, mempool, script cache), so an
//! operator sees the load without a line per client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use crate::state::{NodeLink, State, Tip};

/// The window `getinfo`'s requests per second are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

pub struct Summary {
    pub sessions: usize,
    /// The node as the last call to it found it (`none` with `--no-node`).
    pub node: NodeLink,
    pub tip: Option<Tip>,
    pub mempool_txs: usize,
    pub script_cache_entries: usize,
    pub script_cache_bytes: u64,
    pub script_cache_capacity: u64,
    /// Bytes queued for clients, over all sessions.
    pub send_buffers_bytes: usize,
}

pub fn summary(state: &State) -> Summary {
    let (script_cache_entries, script_cache_bytes, script_cache_capacity) = state.scripts().usage();
    Summary {
        sessions: state.sessions().len(),
        node: state.node_link(),
        tip: state.tip(),
        mempool_txs: state.mempool().read().unwrap().txs.len(),
        script_cache_entries,
        script_cache_bytes,
        script_cache_capacity,
        send_buffers_bytes: state.send_budget().queued(),
    }
}

/// Whether a balancer should send this server clients (`/health`): Ok while it keeps level
/// with the indexer (caught up within `max_lag`) and its node answers (or it has none, with
/// `--no-node`); the reason otherwise. A node not asked yet is not known to be up.
pub fn health(since_caught_up: Duration, max_lag: Duration, node: NodeLink) -> Result<String, String> {
    let lag = since_caught_up.as_secs_f64();
    if since_caught_up > max_lag {
        return Err(format!(
            "behind the index: not caught up for {lag:.1} s (at most {} s)",
            max_lag.as_secs()
        ));
    }
    match node {
        NodeLink::Up | NodeLink::None => Ok(format!("ok: caught up {lag:.1} s ago, node {}", node.name())),
        NodeLink::Down | NodeLink::Unknown => Err(format!("node {}", node.name())),
    }
}

/// `health` of the running server, with its tip.
pub fn health_of(state: &State, max_lag: Duration) -> Result<String, String> {
    let tip = state.tip().map_or("none".to_string(), |t| t.height.to_string());
    health(state.since_caught_up(), max_lag, state.node_link())
        .map(|ok| format!("{ok}, tip {tip}"))
        .map_err(|e| format!("{e}, tip {tip}"))
}

/// Measures the request rate every `RATE_WINDOW` for `getinfo`, and logs the status line every
/// `log_every` (never if None) with the rate since the previous line.
pub async fn run(state: Arc<State>, log_every: Option<Duration>) {
    let mut window = tokio::time::interval(RATE_WINDOW);
    // The first status line comes after a period, not at start.
    let mut log = log_every.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    let mut measured = (Instant::now(), state.sessions().requests());
    let mut logged = measured;
    loop {
        let log_tick = async {
            match log.as_mut() {
                Some(l) => l.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = window.tick() => {
                let now = (Instant::now(), state.sessions().requests());
                state.sessions().set_rate(per_sec(measured, now));
                measured = now;
            }
            _ = log_tick => {
                let now = (Instant::now(), state.sessions().requests());
                let s = summary(&state);
                info!(
                    sessions = s.sessions,
                    req_per_sec = %format!("{:.1}", per_sec(logged, now)),
                    height = s.tip.map(|t| t.height),
                    node = s.node.name(),
                    mempool_txs = s.mempool_txs,
                    script_cache_entries = s.script_cache_entries,
                    script_cache_mib = %format!("{:.1}", s.script_cache_bytes as f64 / (1 << 20) as f64),
                    send_buffers_mib = %format!("{:.1}", s.send_buffers_bytes as f64 / (1 << 20) as f64),
                    "status"
                );
                logged = now;
            }
        }
    }
}

fn per_sec((t0, n0): (Instant, u64), (t1, n1): (Instant, u64)) -> f64 {
    let secs = t1.duration_since(t0).as_secs_f64();
    if secs > 0.0 {
        n1.saturating_sub(n0) as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_the_index_level_and_the_node_up() {
        let (s, max) = (Duration::from_secs, Duration::from_secs(10));
        let check = |since: Duration, node: NodeLink, expected: Result<&str, &str>| {
            let expected = expected.map(String::from).map_err(String::from);
            assert_eq!(health(since, max, node), expected, "{since:?} {node:?}");
        };
        check(s(0), NodeLink::Up, Ok("ok: caught up 0.0 s ago, node up"));
        check(s(10), NodeLink::Up, Ok("ok: caught up 10.0 s ago, node up"));
        check(s(0), NodeLink::None, Ok("ok: caught up 0.0 s ago, node none"));
        check(
            Duration::from_millis(10_001),
            NodeLink::Up,
            Err("behind the index: not caught up for 10.0 s (at most 10 s)"),
        );
        check(s(60), NodeLink::None, Err("behind the index: not caught up for 60.0 s (at most 10 s)"));
        check(s(0), NodeLink::Down, Err("node down"));
        check(s(0), NodeLink::Unknown, Err("node unknown"));
        // Behind the index is told first: it holds whatever the node does.
        check(s(11), NodeLink::Down, Err("behind the index: not caught up for 11.0 s (at most 10 s)"));
    }
}
