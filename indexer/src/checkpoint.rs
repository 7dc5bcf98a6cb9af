//! `blkindex-indexer checkpoint DIR`: a RocksDB checkpoint of the index (SST files hard-linked,
//! the memtables flushed first), to start a replica elsewhere.
//!
//! Who takes it: the process holding the primary. RocksDB's lock lets one primary open the DB,
//! and a checkpoint needs a primary (a secondary cannot stop the primary deleting the files it is
//! linking). So a running indexer takes it on request: it listens on `<db>/checkpoint.sock`
//! (mode 0600) once it follows the node, and its follower thread, the only writer of blocks,
//! takes the checkpoint between two syncs, where the index is at a block boundary with nothing
//! half written. (A tweak pass beside it writes whole batches, each one atomic, so a copy holds
//! the tweaks done and the `tweakinputs` rows left, and its indexer resumes the pass.) With no
//! indexer running, the command opens the primary itself. An indexer in its
//! bulk pass holds the lock and does not listen yet, so the command says that instead.
//!
//! A checkpoint is refused mid-bulk-load (`meta/pending` or `meta/staged` present, or
//! `meta/compacted` absent): its rows would be a load's half, and the copy's first start would
//! have to finish a load whose staging files it does not have. The checkpoint is then opened once
//! to read the tip it holds and to stamp `meta/checkpoint` (the block locations in it are this
//! node's blk files; see `replica.rs`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bitcoin::BlockHash;
use crossbeam_channel::{Receiver, Sender};
use tracing::{info, warn};

use blkindex_shared::schema::{self, meta, Height};
use blkindex_shared::store::{Mode, Store};

/// Where a following indexer takes checkpoint requests.
pub fn socket_path(db: &Path) -> PathBuf {
    db.join("checkpoint.sock")
}

/// A request from the command: the directory to create, and where the answer goes.
pub struct Request {
    pub dir: PathBuf,
    pub reply: Sender<Result<(Height, BlockHash), String>>,
}

/// Why a store cannot be checkpointed now, if it cannot.
fn mid_load(store: &Store) -> Result<Option<String>> {
    if let Some(p) = store.pending()? {
        return Ok(Some(format!(
            "a bulk batch is being loaded (meta/pending: heights {}..={})",
            p.first, p.last
        )));
    }
    if let Some(s) = store.staged()? {
        return Ok(Some(format!(
            "a staged bulk load is under way (meta/staged: staged up to height {})",
            s.last
        )));
    }
    if store.tip()?.is_none() {
        return Ok(Some("the index is empty".into()));
    }
    if store.get_meta(meta::COMPACTED)?.is_none() {
        return Ok(Some("a bulk load has not finished (no meta/compacted)".into()));
    }
    Ok(None)
}

/// Takes the checkpoint of `store` (a primary) in `dir`, stamps it and returns its tip. The caller
/// makes sure no block is written meanwhile (the follower's own thread, or a primary only we
/// opened); a tweak pass's atomic batches may be.
pub fn create(store: &Store, dir: &Path) -> Result<(Height, BlockHash)> {
    if let Some(why) = mid_load(store)? {
        bail!(
            "no checkpoint of {} mid bulk load: {why}; take it once the indexer follows the node",
            store.path().display()
        );
    }
    if dir.exists() {
        bail!("{} exists: a checkpoint goes into a directory it creates", dir.display());
    }
    rocksdb::checkpoint::Checkpoint::new(store.db())?
        .create_checkpoint(dir)
        .with_context(|| format!("cannot create a checkpoint in {}", dir.display()))?;
    // Opened as a primary of its own (the copy, not the index): its SST files are hard links
    // shared with the index but never written (RocksDB never modifies an SST file).
    let copy = Store::open(dir, Mode::Bulk)?;
    let (height, hash) = copy.tip()?.context("the checkpoint has no tip")?;
    copy.put_meta(&[(meta::CHECKPOINT, Some(&schema::encode_tip(height, &hash)))])?;
    copy.flush()?;
    info!(dir = %dir.display(), height, %hash, "checkpoint taken");
    Ok((height, hash))
}

/// The command: asks the indexer following on `db`, or takes the checkpoint itself if none runs.
pub fn command(db: &Path, dir: &Path) -> Result<(Height, BlockHash)> {
    if !db.join("CURRENT").exists() {
        bail!("{}: no index there", db.display());
    }
    let dir = std::path::absolute(dir)?;
    match UnixStream::connect(socket_path(db)) {
        Ok(stream) => return ask(stream, &dir),
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", socket_path(db).display())),
    }
    let store = match Store::open(db, Mode::Bulk) {
        Ok(s) => s,
        Err(e) if format!("{e:#}").contains("lock") => {
            // Held by an indexer that does not listen: it is in its bulk pass (or just starting).
            let secondary = tempfile_dir(db)?;
            let why =
                Store::open(db, Mode::Secondary(secondary.clone())).and_then(|s| mid_load(&s)).ok().flatten();
            let _ = std::fs::remove_dir_all(&secondary);
            bail!(
                "{}: a running indexer holds the index and takes checkpoint requests only once it follows the \
                 node (this one is in its bulk pass, or runs with --no-follow){}; try again then",
                db.display(),
                why.map_or(String::new(), |w| format!(" (now: {w})"))
            );
        }
        Err(e) => return Err(e),
    };
    create(&store, &dir)
}

/// A fresh directory beside the index for a short-lived secondary.
fn tempfile_dir(db: &Path) -> Result<PathBuf> {
    let d = db.with_extension(format!("checkpoint-probe-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// One request over the socket: the directory's path, one line; the answer, one line.
fn ask(stream: UnixStream, dir: &Path) -> Result<(Height, BlockHash)> {
    let mut w = stream.try_clone()?;
    let path = dir.to_str().context("the checkpoint directory's path is not UTF-8")?;
    writeln!(w, "{path}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ok ") {
        let (h, hash) = rest.split_once(' ').context("bad answer from the indexer")?;
        return Ok((h.parse()?, hash.parse()?));
    }
    match line.strip_prefix("error ") {
        Some(why) => bail!("the running indexer refused: {why}"),
        None => bail!("the running indexer closed the connection without an answer"),
    }
}

/// Listens on `<db>/checkpoint.sock` for the follower: each request is handed over `requests`,
/// and `wake` wakes the follower, which answers between two syncs. A socket file left by an
/// earlier run is stale (we hold the DB's lock, so no other indexer runs on it) and replaced.
pub fn listen(db: &Path, wake: Sender<()>, stop: Arc<AtomicBool>) -> Result<Receiver<Request>> {
    let path = socket_path(db);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Whoever may connect can make the indexer write a directory anywhere it may: owner only.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new().name("checkpoint-requests".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (tx, wake) = (tx.clone(), wake.clone());
                    std::thread::spawn(move || serve(stream, &tx, &wake));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => warn!("checkpoint socket: {e}"),
            }
        }
        let _ = std::fs::remove_file(&path);
    })?;
    Ok(rx)
}

fn serve(stream: UnixStream, requests: &Sender<Request>, wake: &Sender<()>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() || !line.ends_with('\n') {
        return;
    }
    let (reply, answer) = crossbeam_channel::bounded(1);
    let dir = PathBuf::from(line.trim_end());
    if requests.send(Request { dir, reply }).is_err() {
        return;
    }
    let _ = wake.send(());
    let text = match answer.recv() {
        Ok(Ok((h, hash))) => format!("ok {h} {hash}\n"),
        Ok(Err(why)) => format!("error {}\n", why.replace('\n', " ")),
        Err(_) => "error the indexer stopped\n".into(),
    };
    let _ = (&stream).write_all(text.as_bytes());
}

/// The follower's side: every request waiting, answered now.
pub fn answer(store: &Store, requests: &Receiver<Request>) {
    while let Ok(r) = requests.try_recv() {
        let result = create(store, &r.dir).map_err(|e| format!("{e:#}"));
        if let Err(e) = &result {
            warn!("checkpoint refused: {e}");
        }
        let _ = r.reply.send(result);
    }
}
