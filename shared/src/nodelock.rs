//! bitcoind's data-directory lock, taken from outside the node: while blkindex holds it, no
//! bitcoind can start on that data dir, so none can append to, rewrite or truncate its blk files.
//!
//! bitcoind locks `<datadir>/<network>/.lock` (and recent versions `<blocksdir>/.lock` too) with
//! `fsbridge::FileLock::TryLock`: `fcntl(F_SETLK)` with a whole-file write lock (`F_WRLCK`,
//! `l_start = 0`, `l_len = 0`) on the file opened `O_RDWR`. A node that cannot take it exits at
//! start with "Cannot obtain a lock on directory ...". A `flock` lock would not stop it (on Linux
//! the two kinds do not interact); an fcntl lock of either kind does. So this takes a whole-file
//! fcntl *read* lock: it conflicts with the node's write lock both ways (the node running: ours
//! fails; ours held: the node's fails), and needs the file open only for reading, so an indexer
//! with read access to the node's files can take it. On Linux it is an open-file-description lock
//! (`F_OFD_SETLK`): it belongs to this open file, not to the process, so it is not dropped when
//! some other descriptor of the same file in this process is closed, and it conflicts with
//! another lock taken in this process too (traditional fcntl locks of one process never conflict
//! with each other). OFD locks and the node's traditional locks do conflict with each other.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held data-directory locks; released when dropped (the files are closed).
#[derive(Debug)]
pub struct NodeLock {
    files: Vec<(PathBuf, File)>,
}

#[cfg(target_os = "linux")]
const SETLK: libc::c_int = libc::F_OFD_SETLK;
#[cfg(not(target_os = "linux"))]
const SETLK: libc::c_int = libc::F_SETLK;

/// A whole-file lock of `l_type` (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`) on `file`, without waiting.
fn set_lock(file: &File, l_type: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `flock` is plain data (all-zero is valid: whole file from offset 0, and `l_pid` must
    // be 0 for OFD locks); `fcntl` reads the struct and nothing else, and the descriptor is open
    // for as long as `file` is borrowed.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    let r = unsafe { libc::fcntl(file.as_raw_fd(), SETLK, &fl) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `<dir>/.lock` for reading, creating it if it is missing (as bitcoind would).
fn open_lock_file(dir: &Path) -> std::io::Result<File> {
    let path = dir.join(".lock");
    match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            OpenOptions::new().read(true).append(true).create(true).open(&path)
        }
        r => r,
    }
}

/// Why a lock was not taken.
#[derive(Debug)]
pub struct NotTaken {
    /// Another process holds a conflicting lock: a node runs on that directory.
    pub held: bool,
    /// Which file, and the system's error.
    pub reason: String,
}

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for NotTaken {}

impl NodeLock {
    /// Takes the lock of every directory in `dirs` (a node's `<datadir>/<network>` and its blocks
    /// directory), or none: `Err` says which one could not be taken and why (a node holds it:
    /// "Resource temporarily unavailable"; or the file cannot be opened, e.g. a missing one in a
    /// directory this process cannot write).
    pub fn try_take(dirs: &[&Path]) -> Result<NodeLock, NotTaken> {
        let mut files = Vec::new();
        for dir in dirs {
            let path = dir.join(".lock");
            if files.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let file = open_lock_file(dir).map_err(|e| NotTaken {
                held: false,
                reason: format!("cannot open {}: {e}", path.display()),
            })?;
            set_lock(&file, libc::F_RDLCK).map_err(|e| NotTaken {
                held: matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)),
                reason: format!("cannot lock {}: {e}", path.display()),
            })?;
            files.push((path, file));
        }
        Ok(NodeLock { files })
    }

    /// The lock files held.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        for (_, f) in &self.files {
            let _ = set_lock(f, libc::F_UNLCK); // closing the file releases it too
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's own attempt, as `fsbridge::FileLock::TryLock` makes it: open `O_RDWR`, then a
    /// process-associated whole-file write lock with `F_SETLK`.
    fn node_try_lock(dir: &Path) -> std::io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).open(dir.join(".lock"))?;
        // SAFETY: as in `set_lock`.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }

    #[test]
    fn a_held_lock_refuses_the_node_and_a_node_refuses_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = dir.path().join("blocks");
        std::fs::create_dir(&blocks).unwrap();
        let lock = NodeLock::try_take(&[dir.path(), &blocks]).unwrap();
        assert_eq!(lock.paths().count(), 2);
        assert!(blocks.join(".lock").exists(), "a missing lock file is created");
        // The node's way, from this process (an OFD lock conflicts with it here too) and from a
        // child process (as a real node would be).
        let err = node_try_lock(dir.path()).unwrap_err();
        assert!(matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)), "{err}");
        assert!(node_try_lock(&blocks).is_err());
        let child_tries = |dir: &Path| {
            // flock(1) takes flock locks; python's fcntl.lockf is fcntl(F_SETLK), as the node's.
            std::process::Command::new("python3")
                .arg("-c")
                .arg(
                    "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)",
                )
                .arg(dir.join(".lock"))
                .stderr(std::process::Stdio::null())
                .status()
        };
        if let Ok(status) = child_tries(dir.path()) {
            assert!(!status.success(), "another process took the write lock while it was held");
        }
        // Another reader's lock is compatible (a second indexer).
        let second = NodeLock::try_take(&[dir.path()]).unwrap();
        drop(second);
        drop(lock);
        if let Ok(status) = child_tries(dir.path()) {
            assert!(status.success(), "the lock was not released");
        }
        // A running node: taking the lock fails and says which file.
        let node = node_try_lock(dir.path()).unwrap();
        let err = NodeLock::try_take(&[dir.path(), &blocks]).unwrap_err();
        assert!(err.held && err.reason.contains("cannot lock") && err.reason.contains(".lock"), "{err}");
        // A lock file that cannot be opened is not a running node.
        let err = NodeLock::try_take(&[&dir.path().join("missing")]).unwrap_err();
        assert!(!err.held && err.reason.contains("cannot open"), "{err}");
        drop(node);
        NodeLock::try_take(&[dir.path(), &blocks]).unwrap();
    }
}
