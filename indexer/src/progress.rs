//! Progress of a phase: an indicatif bar on a terminal, periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    None,
}

pub struct Progress {
    mode: ProgressMode,
    bar: Mutex<Option<ProgressBar>>,
    phase: Mutex<(String, String, Instant, Instant)>,
    bytes: AtomicU64,
    items: AtomicU64,
    totals: Mutex<(u64, u64)>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            m => m,
        };
        Progress {
            mode,
            bar: Mutex::new(None),
            phase: Mutex::new((String::new(), String::new(), Instant::now(), Instant::now())),
            bytes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            totals: Mutex::new((0, 0)),
        }
    }

    /// Starts a phase of `total_bytes` over `total_items` (blocks, files).
    pub fn start(&self, phase: &str, total_bytes: u64, total_items: u64, unit: &str) {
        self.bytes.store(0, Ordering::Relaxed);
        self.items.store(0, Ordering::Relaxed);
        *self.totals.lock().unwrap() = (total_bytes, total_items);
        *self.phase.lock().unwrap() = (phase.to_string(), unit.to_string(), Instant::now(), Instant::now());
        match self.mode {
            ProgressMode::Bar => {
                let bar =
                    ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr_with_hz(5));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>18} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix(phase.to_string());
                bar.set_message(format!("0/{total_items} {unit}"));
                *self.bar.lock().unwrap() = Some(bar);
            }
            ProgressMode::Log => {
                info!(phase, total = %HumanBytes(total_bytes), items = total_items, "{unit}")
            }
            _ => {}
        }
    }

    pub fn inc(&self, bytes: u64, items: u64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let n = self.items.fetch_add(items, Ordering::Relaxed) + items;
        let (tb, tn) = *self.totals.lock().unwrap();
        match self.mode {
            ProgressMode::Bar => {
                if let Some(bar) = &*self.bar.lock().unwrap() {
                    bar.set_position(b);
                    let unit = self.phase.lock().unwrap().1.clone();
                    bar.set_message(format!("{n}/{tn} {unit}"));
                }
            }
            ProgressMode::Log => {
                let mut p = self.phase.lock().unwrap();
                if p.3.elapsed() >= Duration::from_secs(5) {
                    p.3 = Instant::now();
                    let secs = p.2.elapsed().as_secs_f64().max(1e-3);
                    let rate = b as f64 / secs;
                    let eta = if rate > 0.0 { (tb.saturating_sub(b)) as f64 / rate } else { 0.0 };
                    info!(
                        phase = %p.0,
                        done = %format!("{}/{}", HumanBytes(b), HumanBytes(tb)),
                        items = %format!("{n}/{tn} {}", p.1),
                        rate = %format!("{}/s", HumanBytes(rate as u64)),
                        eta = %format!("{eta:.0}s"),
                        "progress"
                    );
                }
            }
            ProgressMode::None | ProgressMode::Auto => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap().take() {
            bar.finish();
        }
        let p = self.phase.lock().unwrap();
        if !p.0.is_empty() {
            info!(phase = %p.0, secs = %format!("{:.1}", p.2.elapsed().as_secs_f64()), "done");
        }
    }
}
