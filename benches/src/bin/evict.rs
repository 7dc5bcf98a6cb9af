//! Drops files from the page cache: `posix_fadvise(POSIX_FADV_DONTNEED)` over every regular file
//! under the paths given (the node's blocks directory, the index), so that the next reads of
//! them go to the disk. For `scripts/bench-cold.sh`, before each phase.
//!
//!   evict PATH...                  once; prints one JSON line (files, bytes, resident before and after)
//!   evict --every-ms 100 PATH...   again and again until killed: the memory limit of a machine
//!                                  without a writable memory cgroup (every file page the server
//!                                  read is dropped within that time)
//!
//! Only clean pages can be dropped, so each file is synced first (a no-op for files written long
//! ago; the follower's copies of the last blk and rev files are new).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use blkindex_shared::config::run_main;

#[derive(Parser)]
#[command(about = "Drops files from the page cache (posix_fadvise DONTNEED)")]
struct Args {
    /// Files or directories (walked recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Evict again every this many milliseconds, until killed (0: once).
    #[arg(long, default_value_t = 0)]
    every_ms: u64,
}

fn main() {
    run_main(run)
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.every_ms == 0 {
        let files = list(&args.paths)?;
        let before = resident(&files);
        let t0 = Instant::now();
        let bytes = evict(&files)?;
        let secs = t0.elapsed().as_secs_f64();
        let after = resident(&files);
        println!(
            "{}",
            json!({"files": files.len(), "bytes": bytes, "resident_before": before, "resident_after": after, "seconds": secs})
        );
        return Ok(());
    }
    let every = Duration::from_millis(args.every_ms);
    loop {
        let next = Instant::now() + every;
        // Listed afresh each time: RocksDB adds and deletes files.
        evict(&list(&args.paths)?)?;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// Every regular file under `paths`.
fn list(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = todo.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", p.display())),
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).with_context(|| format!("cannot list {}", p.display()))? {
                todo.push(entry?.path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// Advises the kernel to drop each file's cached pages; returns the bytes the files hold.
fn evict(files: &[PathBuf]) -> Result<u64> {
    let mut bytes = 0;
    for path in files {
        let Ok(file) = File::open(path) else { continue }; // deleted since it was listed
        bytes += file.metadata()?.len();
        // Dirty pages are not dropped: written back first (nothing, for files long written).
        file.sync_data().with_context(|| format!("cannot sync {}", path.display()))?;
        // SAFETY: a plain syscall on a descriptor this function owns.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .with_context(|| format!("posix_fadvise {}", path.display()));
        }
    }
    Ok(bytes)
}

/// Bytes of the files in the page cache (`mincore` over a map of each), for the report.
fn resident(files: &[PathBuf]) -> u64 {
    files.iter().map(|p| resident_file(p).unwrap_or(0)).sum()
}

fn resident_file(path: &Path) -> Result<u64> {
    let file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: a shared read-only map that is never read through (mincore only asks the kernel
    // which of its pages are cached), unmapped before returning.
    unsafe {
        let addr =
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut vec = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
    }
}
