//! Runs a command and reports its wall time and peak resident memory as one JSON line.
//!
//!   measure [--log FILE] [--until TEXT] [--timeout SECS] [--watch-dir DIR] -- COMMAND [ARGS...]
//!
//! Also reported: the peak of the command's anonymous resident memory (RssAnon: its heap, without
//! the file pages it maps), and with --watch-dir the peak disk use of DIR (allocated blocks of
//! every file under it), both sampled every 50 ms.
//!
//! With --until, the run ends when TEXT appears in the command's output (written to --log), and
//! the command is then stopped: electrs never exits after its initial sync, so its sync time is
//! the time to its "finished full compaction" line.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes allocated on disk to the files under `dir` (files that vanish meanwhile count as 0; a
/// file with several names, as RocksDB's ingestion links them, counts once).
fn disk_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let mut sum = 0;
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => sum += walk(&e.path(), seen),
                Ok(m) if seen.insert((m.dev(), m.ino())) => sum += m.blocks() * 512,
                _ => {}
            }
        }
        sum
    }
    walk(dir, &mut Default::default())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut log, mut until, mut timeout, mut watch) = (None, None, 24 * 3600u64, None);
    let mut cmd = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--log" => log = args.next(),
            "--until" => until = args.next(),
            "--timeout" => timeout = args.next().context("--timeout SECS")?.parse()?,
            "--watch-dir" => watch = args.next().map(std::path::PathBuf::from),
            "--" => {
                cmd.extend(args.by_ref());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if cmd.is_empty() {
        bail!("usage: measure [--log FILE] [--until TEXT] [--timeout SECS] -- COMMAND [ARGS...]");
    }
    let log_path = log.unwrap_or_else(|| format!("/tmp/measure-{}.log", std::process::id()));
    let out = std::fs::File::create(&log_path)?;
    let t0 = Instant::now();
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", cmd[0]))?;
    let pid = child.id();
    let mut peak = 0u64;
    let (mut peak_anon, mut peak_disk) = (0u64, 0u64);
    let mut reached = false;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        peak_anon = peak_anon.max(status_kb(pid, "RssAnon:").unwrap_or(0));
        if let Some(dir) = &watch {
            peak_disk = peak_disk.max(disk_bytes(dir));
        }
        // wait4 gives the exact peak (ru_maxrss) of a child that exits by itself.
        let mut st = 0i32;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid as i32, &mut st, libc::WNOHANG, &mut ru) };
        if r == pid as i32 {
            peak = peak.max(ru.ru_maxrss as u64);
            break Some(st);
        }
        if let Some(text) = &until {
            let mut s = String::new();
            std::fs::File::open(&log_path)?.read_to_string(&mut s)?;
            if s.contains(text.as_str()) {
                reached = true;
                if let Some(kb) = vm_hwm_kb(pid) {
                    peak = peak.max(kb);
                }
                break None;
            }
        }
        if t0.elapsed() > Duration::from_secs(timeout) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = t0.elapsed().as_secs_f64();
    if status.is_none() {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let exit = status.map(|st| if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { -1 });
    println!(
        "{{\"wall_secs\": {wall:.2}, \"peak_rss_mb\": {:.1}, \"peak_anon_mb\": {:.1}, \"peak_disk_mb\": {:.1}, \"exit\": {}, \"until_reached\": {}, \"log\": \"{log_path}\"}}",
        peak as f64 / 1024.0,
        peak_anon as f64 / 1024.0,
        peak_disk as f64 / 1e6,
        exit.map_or("null".to_string(), |e| e.to_string()),
        reached
    );
    Ok(())
}
