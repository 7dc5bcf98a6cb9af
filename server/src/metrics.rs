//! Prometheus metrics: requests and latency by method, connections, index tip, mempool size;
//! served as text on `--metrics-addr` by a small HTTP server on its own thread, with `/health`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub connections: IntGaugeVec,
    pub rejected: IntCounterVec,
    pub tip: IntGauge,
    pub mempool_txs: IntGauge,
    /// Script-cache lookups by outcome: used as is, brought forward, computed.
    pub script_cache: IntCounterVec,
    pub script_cache_bytes: IntGauge,
    /// Mempool updates: whole reads of the node's mempool, and ZMQ events applied.
    pub mempool_updates: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("blkindex_requests_total", "Electrum requests by method and outcome"),
            &["method", "outcome"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("blkindex_request_seconds", "Time to answer an Electrum request, by method")
                .buckets(vec![0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]),
            &["method"],
        )
        .unwrap();
        let connections =
            IntGaugeVec::new(Opts::new("blkindex_connections", "Open client connections"), &["transport"])
                .unwrap();
        let rejected = IntCounterVec::new(
            Opts::new("blkindex_connections_rejected_total", "Connections refused, by reason"),
            &["reason"],
        )
        .unwrap();
        let tip =
            IntGauge::new("blkindex_index_height", "Height of the indexed tip the server sees").unwrap();
        let mempool_txs =
            IntGauge::new("blkindex_mempool_txs", "Transactions in the tracked mempool").unwrap();
        let script_cache = IntCounterVec::new(
            Opts::new(
                "blkindex_script_cache_lookups_total",
                "Scripts' confirmed sides asked for, by outcome (hit, extended, computed)",
            ),
            &["outcome"],
        )
        .unwrap();
        let script_cache_bytes =
            IntGauge::new("blkindex_script_cache_bytes", "Approximate bytes held by the script cache")
                .unwrap();
        let mempool_updates = IntCounterVec::new(
            Opts::new(
                "blkindex_mempool_updates_total",
                "Mempool updates: whole reads of the node's mempool (resync), ZMQ events applied (event)",
            ),
            &["kind"],
        )
        .unwrap();
        let registry = Registry::new();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(latency.clone())).unwrap();
        registry.register(Box::new(connections.clone())).unwrap();
        registry.register(Box::new(rejected.clone())).unwrap();
        registry.register(Box::new(tip.clone())).unwrap();
        registry.register(Box::new(mempool_txs.clone())).unwrap();
        registry.register(Box::new(script_cache.clone())).unwrap();
        registry.register(Box::new(script_cache_bytes.clone())).unwrap();
        registry.register(Box::new(mempool_updates.clone())).unwrap();
        Metrics {
            registry,
            requests,
            latency,
            connections,
            rejected,
            tip,
            mempool_txs,
            script_cache,
            script_cache_bytes,
            mempool_updates,
        }
    }

    pub fn request(&self, method: &str, ok: bool, took: Duration) {
        // Only known names become labels, so hostile clients cannot grow the series.
        let method = if crate::protocol::known(method) { method } else { "unknown" };
        self.requests.with_label_values(&[method, if ok { "ok" } else { "error" }]).inc();
        self.latency.with_label_values(&[method]).observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What `/health` answers: Ok (200) or the reason not (503), as a line of text.
pub type Health = Box<dyn Fn() -> Result<String, String> + Send>;

/// Serves `GET /health` (for a balancer: `health`'s answer) and the metrics on any other path,
/// on `addr`; returns the bound address.
pub fn serve(metrics: std::sync::Arc<Metrics>, addr: SocketAddr, health: Health) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = server.server_addr().to_ip().context("metrics address")?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for request in server.incoming_requests() {
            if request.url() == "/health" {
                let (code, body) = match health() {
                    Ok(ok) => (200, ok),
                    Err(reason) => (503, reason),
                };
                let _ = request.respond(tiny_http::Response::from_string(body + "\n").with_status_code(code));
                continue;
            }
            let header = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4").unwrap();
            let _ = request.respond(tiny_http::Response::from_string(metrics.render()).with_header(header));
        }
    })?;
    Ok(bound)
}
