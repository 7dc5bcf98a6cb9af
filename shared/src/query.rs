//! What the index answers: a script's confirmed history, unspent outputs and balance; transactions
//! by txid or txnum; the spender of an outpoint; block bytes and txids. Everything comes
//! from the index and the blk files alone; no node round-trip.
//!
//! Rows carry 5-byte hash prefixes, so every candidate a prefix scan yields is checked against the
//! transaction itself: a funding output must hash to the script hash exactly, and a spending input
//! must spend an output already found to fund it. Prefix collisions therefore cost a read, never a
//! wrong answer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::{BlockHash, OutPoint, Txid};

use crate::blkfile::{BlockFiles, FileKind};
use crate::chain::Chain;
use crate::hashes::ScriptHash;
use crate::parse::{self, is_unspendable, Tx};
use crate::schema::{self, cf, BlockLoc, HeaderRow, Height, Prefix, TxNum, TxPos};
use crate::store::Store;
use crate::varint::Reader;

/// A confirmed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxInfo {
    pub txid: Txid,
    pub txnum: TxNum,
    pub height: Height,
    /// Position in its block.
    pub pos: u32,
    pub raw: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    pub txid: Txid,
    pub height: Height,
    pub txnum: TxNum,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utxo {
    pub outpoint: OutPoint,
    pub value: u64,
    pub height: Height,
    pub txnum: TxNum,
}

/// A script's confirmed history and what of it is unspent, from one pass over its transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptState {
    pub history: Vec<HistoryItem>,
    pub utxos: Vec<Utxo>,
}

impl ScriptState {
    pub fn balance(&self) -> u64 {
        self.utxos.iter().map(|u| u.value).sum()
    }
}

impl From<ScriptState> for ScriptScan {
    /// A state with no tip (as of an empty chain), as tests build them.
    fn from(state: ScriptState) -> Self {
        ScriptScan { state, ..Default::default() }
    }
}

/// A script's state as of a chain tip, with what it takes to bring it forward to a later tip
/// without reading its older transactions again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptScan {
    pub state: ScriptState,
    /// The tip the state is complete up to (None: an empty chain).
    pub tip: Option<(Height, BlockHash)>,
    /// The first txnum after that tip.
    end_txnum: TxNum,
    /// The script's bytes, once an output paying it has been found.
    script: Option<Vec<u8>>,
}

pub use crate::bucket::TooManyRows;

/// A transaction read by number: (txnum, bytes, height, position in its block).
type NumberedTx = (TxNum, Vec<u8>, Height, u32);

/// Where a transaction's bytes are: its block, its position and byte range in it.
#[derive(Clone)]
struct Place {
    txnum: TxNum,
    height: Height,
    row: HeaderRow,
    pos: u32,
    offset: u32,
    len: u32,
}

/// Threads that make the reads of long scans, shared by all of them: the reads in flight at
/// once, whatever the number of requests. Reads block their thread, so there are more of them
/// than cores: an SSD serves tens of reads at once in about the time of one.
pub const DEFAULT_READERS: u16 = 32;
static READERS: AtomicUsize = AtomicUsize::new(DEFAULT_READERS as usize);
/// Reads one thread makes of a fan-out (a block's transactions, or bytes), one after another.
const PER_READER: usize = 8;
/// The first window of a scan, in transactions; each next is twice the last, up to `MAX_WINDOW`.
const FIRST_WINDOW: usize = 8;
const MAX_WINDOW: usize = 512;
/// Bytes of transactions a window holds at most (one larger transaction is read alone).
const WINDOW_BYTES: u64 = 4 << 20;

/// Sets the number of read threads; effective only before the first long scan starts them.
pub fn set_readers(n: usize) {
    READERS.store(n.max(1), Ordering::Relaxed);
}

/// How many of these lengths, from the first, fit in `budget` bytes; at least one.
fn fitting(lens: impl Iterator<Item = u32>, budget: u64) -> usize {
    let mut bytes = 0u64;
    lens.take_while(|&len| {
        bytes += len as u64;
        bytes <= budget
    })
    .count()
    .max(1)
}

type Job = Box<dyn FnOnce() + Send>;

/// The read threads' work: one queue of jobs per fan-out in flight, served in turn, one job of
/// each at a time. A request's fan-out of 512 reads thus delays the 10 reads of a request that
/// arrives after it by a job or so, not by all 512 (as one first-come queue did: that wait was the
/// cold mix's p99). A request has one fan-out in flight at a time, so this is fair per request.
struct ReadQueue {
    flows: Mutex<VecDeque<VecDeque<Job>>>,
    ready: Condvar,
}

impl ReadQueue {
    fn push(&self, jobs: VecDeque<Job>) {
        if jobs.is_empty() {
            return;
        }
        let n = jobs.len();
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).push_back(jobs);
        // As many idle threads woken as there are jobs, not all of them for a fan-out of two.
        for _ in 0..n.min(READERS.load(Ordering::Relaxed)) {
            self.ready.notify_one();
        }
    }

    /// The next job: the first of the flow whose turn it is; that flow goes to the back.
    fn next(&self) -> Job {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(mut flow) = flows.pop_front() {
                let job = flow.pop_front().expect("no empty flow is queued");
                if !flow.is_empty() {
                    flows.push_back(flow);
                }
                return job;
            }
            flows = self.ready.wait(flows).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The read threads, started at the first fan-out. They block on the queue when idle: threads that
/// spin looking for work (as rayon's do) would take the two cores from the requests whose reads
/// they wait for.
fn read_queue() -> &'static ReadQueue {
    static QUEUE: OnceLock<Arc<ReadQueue>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let queue = Arc::new(ReadQueue { flows: Default::default(), ready: Default::default() });
        for i in 0..READERS.load(Ordering::Relaxed) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("blkindex-read-{i}"))
                .spawn(move || loop {
                    let job = queue.next();
                    // Jobs catch their own panics (as an error answer); this keeps the thread
                    // whatever else a job might do.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })
                .expect("cannot start a read thread");
        }
        queue
    })
}

/// `f` over `items`, answers in order; on the read threads when there is more than one item. It
/// returns once every item is answered, with the error of the first item (in order) that failed.
fn fan_out<T, R>(items: Vec<T>, f: impl Fn(T) -> Result<R> + Send + Sync + 'static) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let n = items.len();
    let f = Arc::new(f);
    let answers =
        Arc::new(Answers { slots: Mutex::new(((0..n).map(|_| None).collect(), n)), done: Condvar::new() });
    let jobs = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let (f, answers) = (f.clone(), answers.clone());
            Box::new(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)))
                    .unwrap_or_else(|_| Err(anyhow!("a read thread panicked")));
                answers.put(i, r);
            }) as Job
        })
        .collect();
    read_queue().push(jobs);
    let mut slots = answers.slots.lock().unwrap_or_else(|e| e.into_inner());
    while slots.1 > 0 {
        slots = answers.done.wait(slots).unwrap_or_else(|e| e.into_inner());
    }
    std::mem::take(&mut slots.0).into_iter().map(|r| r.expect("every answer arrived")).collect()
}

/// A fan-out's answers, by item, and how many are still to come. Its caller is woken once, by the
/// last: a wake-up per answer cost more CPU than a cold read's parsing.
struct Answers<R> {
    slots: Mutex<(Vec<Option<Result<R>>>, usize)>,
    done: Condvar,
}

impl<R> Answers<R> {
    fn put(&self, i: usize, r: Result<R>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.0[i] = Some(r);
        slots.1 -= 1;
        if slots.1 == 0 {
            self.done.notify_one();
        }
    }
}

/// A reader of the index: a store (the server's secondary instance, or a test's), the node's blk
/// files for transaction bytes, and the indexed chain in memory, up to the tip the reader has
/// caught up to.
pub struct IndexReader {
    /// Shared with the read threads' jobs.
    pub store: Arc<Store>,
    pub blocks: BlockFiles,
    pub chain: Chain,
}

impl IndexReader {
    pub fn new(store: Store, blocks: BlockFiles) -> Result<Self> {
        let chain = Chain::load(&store)?;
        Ok(IndexReader { store: Arc::new(store), blocks, chain })
    }

    /// Catches a secondary up with the indexer, to a tip all of whose rows it sees; true when the
    /// chain changed. A bulk batch's SST files are ingested (recorded in the MANIFEST) before its
    /// tip is written (to the WAL), but a catch-up reads the MANIFEST first and the WAL after: one
    /// catch-up can show a tip whose files it has not seen. So the tip read after one catch-up is
    /// used only after a second, which sees every file ingested before that tip was written.
    pub fn catch_up(&mut self) -> Result<bool> {
        self.catch_up_store()?;
        let tip = self.store.tip()?;
        self.catch_up_store()?;
        self.chain.sync_to(&self.store, tip)
    }

    fn catch_up_store(&mut self) -> Result<()> {
        if let Err(e) = self.store.catch_up() {
            // The primary deleted a file (after a compaction) this instance had not caught up to.
            tracing::debug!("catch-up failed ({e:#}); reopening the secondary");
            self.store = Arc::new(self.store.reopen()?);
        }
        Ok(())
    }

    fn row(&self, height: Height) -> Result<&HeaderRow> {
        self.chain.row(height).ok_or_else(|| anyhow!("no block at height {height}"))
    }

    /// Bytes `offset..offset+len` of the block at `height`.
    fn block_range(&self, height: Height, offset: u32, len: u32) -> Result<Vec<u8>> {
        block_range(&self.store, &self.blocks, self.row(height)?, height, offset, len)
    }

    pub fn block_bytes(&self, height: Height) -> Result<Vec<u8>> {
        let len = self.row(height)?.loc.size();
        self.block_range(height, 0, len)
    }

    /// The height of the block holding `txnum`.
    fn height_of(&self, txnum: TxNum) -> Result<Height> {
        self.chain.height_of_txnum(txnum).ok_or_else(|| anyhow!("txnum {txnum} is beyond the indexed chain"))
    }

    /// The `txpos` row (where each transaction sits) of the block at `height`.
    fn txpos_row(&self, height: Height) -> Result<Vec<u8>> {
        txpos_row(&self.store, height)
    }

    /// The raw transaction with number `txnum`, with its height and position.
    pub fn tx_by_num(&self, txnum: TxNum) -> Result<(Vec<u8>, Height, u32)> {
        let height = self.height_of(txnum)?;
        let pos = txnum - self.row(height)?.first_txnum;
        let (offset, size) = TxPos::locate(&self.txpos_row(height)?, pos)?;
        let raw = self.block_range(height, offset, size)?;
        Ok((raw, height, pos))
    }

    /// Transactions by number (ascending), read in windows: the first small (a spender is often
    /// found early, and a short history needs no fan-out), each next one twice the last, up to
    /// [`MAX_WINDOW`] transactions and [`WINDOW_BYTES`]: (txnum, bytes, height, position).
    fn txs_by_nums<'a>(&'a self, txnums: &'a [TxNum]) -> impl Iterator<Item = Result<NumberedTx>> + 'a {
        let mut rest = txnums;
        let mut window = FIRST_WINDOW;
        let mut read = Vec::new().into_iter();
        std::iter::from_fn(move || loop {
            if let Some(tx) = read.next() {
                return Some(Ok(tx));
            }
            if rest.is_empty() {
                return None;
            }
            match self.fetch(&rest[..window.min(rest.len())]) {
                Ok(txs) => {
                    rest = &rest[txs.len()..];
                    read = txs.into_iter();
                }
                Err(e) => {
                    rest = &[];
                    return Some(Err(e));
                }
            }
            window = (window * 2).min(MAX_WINDOW);
        })
    }

    /// A first part (at least one) of these transactions, no more than [`WINDOW_BYTES`] of them
    /// but for a single larger one. Their places (each block's `txpos` row) and then their bytes
    /// are read as many at a time as there are read threads ([`set_readers`]): cold, each is a
    /// disk read, and a disk serves many at once in about the time of one.
    fn fetch(&self, txnums: &[TxNum]) -> Result<Vec<NumberedTx>> {
        let mut blocks = Vec::new();
        let mut rest = txnums;
        while let Some(&first) = rest.first() {
            let height = self.height_of(first)?;
            let row = *self.row(height)?;
            let n = rest.partition_point(|&t| t < row.first_txnum + row.tx_count).clamp(1, PER_READER);
            blocks.push((height, row, rest[..n].to_vec()));
            rest = &rest[n..];
        }
        let store = self.store.clone();
        let places = fan_out(blocks, move |(height, row, txnums)| places(&store, height, &row, &txnums))?;
        let mut places: Vec<Place> = places.into_iter().flatten().collect();
        places.truncate(fitting(places.iter().map(|p| p.len), WINDOW_BYTES));
        let chunks: Vec<Vec<Place>> = places.chunks(PER_READER).map(<[Place]>::to_vec).collect();
        let (store, blocks) = (self.store.clone(), self.blocks.clone());
        let txs = fan_out(chunks, move |chunk| {
            chunk
                .iter()
                .map(|p| {
                    let raw = block_range(&store, &blocks, &p.row, p.height, p.offset, p.len)?;
                    Ok((p.txnum, raw, p.height, p.pos))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(txs.into_iter().flatten().collect())
    }

    /// The txnums stored under this prefix, ascending, up to the indexed tip.
    fn scan(&self, family: &str, prefix: Prefix) -> Result<Vec<TxNum>> {
        self.scan_at_most(family, prefix, usize::MAX)
    }

    /// As `scan`, refusing a list of more than `max_rows` rows from its length alone.
    fn scan_at_most(&self, family: &str, prefix: Prefix, max_rows: usize) -> Result<Vec<TxNum>> {
        let mut out = match self.store.txnums_at_most(family, &prefix, max_rows)? {
            Ok(txnums) => txnums,
            Err(rows) => return Err(TooManyRows { rows, max: max_rows }.into()),
        };
        // Txnums past the indexed tip belong to a batch not yet committed: not visible.
        let end = self.chain.next_txnum();
        out.truncate(out.partition_point(|&n| n < end));
        Ok(out)
    }

    /// Every confirmed transaction with this txid (two for BIP30's duplicate coinbases), oldest first.
    pub fn txs_by_txid(&self, txid: &Txid) -> Result<Vec<TxInfo>> {
        let mut out = Vec::new();
        for txnum in self.scan(cf::TXID, schema::txid_prefix(txid))? {
            let (raw, height, pos) = self.tx_by_num(txnum)?;
            if compute_txid(&raw)? == *txid {
                out.push(TxInfo { txid: *txid, txnum, height, pos, raw });
            }
        }
        Ok(out)
    }

    /// History and unspent outputs of a script, in chain order.
    pub fn script_state(&self, sh: &ScriptHash) -> Result<ScriptState> {
        Ok(self.script_scan(sh, None, usize::MAX)?.state)
    }

    /// A script's state at this index's tip. Given an earlier scan whose tip block is still in
    /// the chain, only the transactions after it are read (a reorg below it means a full scan).
    /// A script with more than `max_rows` rows is `TooManyRows`, known from its buckets alone.
    pub fn script_scan(
        &self,
        sh: &ScriptHash,
        earlier: Option<&ScriptScan>,
        max_rows: usize,
    ) -> Result<ScriptScan> {
        let txnums = self.scan_at_most(cf::SCRIPT, schema::script_prefix(sh), max_rows)?;
        if txnums.len() > max_rows {
            return Err(TooManyRows { rows: txnums.len(), max: max_rows }.into());
        }
        let tip = self.chain.tip();
        let mut scan = match earlier.filter(|e| self.extends(e)) {
            Some(e) => ScriptScan { tip, ..e.clone() },
            None => ScriptScan { tip, ..ScriptScan::default() },
        };
        let new = &txnums[txnums.partition_point(|&n| n < scan.end_txnum)..];
        scan.end_txnum = self.chain.next_txnum();
        if new.is_empty() {
            return Ok(scan);
        }
        let state = &mut scan.state;
        let mut unspent: Vec<Option<Utxo>> = std::mem::take(&mut state.utxos).into_iter().map(Some).collect();
        let mut funded: HashMap<OutPoint, usize> =
            unspent.iter().enumerate().map(|(i, u)| (u.as_ref().unwrap().outpoint, i)).collect();
        for numbered in self.txs_by_nums(new) {
            let (txnum, raw, height, _) = numbered?;
            let mut tx = Tx::default();
            parse::parse_tx(&mut Reader::new(&raw), &raw, &mut tx)
                .with_context(|| format!("corrupt transaction {txnum} at height {height}"))?;
            let mut touches = false;
            for input in &tx.inputs {
                let op = OutPoint { txid: input.prev_txid(), vout: input.prev_vout };
                if let Some(i) = funded.remove(&op) {
                    unspent[i] = None;
                    touches = true;
                }
            }
            for (vout, out) in tx.outputs.iter().enumerate() {
                // Once one output is known to pay the script, others are compared by bytes, not hashed.
                let pays = match &scan.script {
                    Some(known) => known.as_slice() == out.script,
                    None => ScriptHash::of(out.script) == *sh,
                };
                if !pays || is_unspendable(out.script) {
                    continue;
                }
                scan.script.get_or_insert_with(|| out.script.to_vec());
                let outpoint = OutPoint { txid: tx.txid, vout: vout as u32 };
                // A BIP30 duplicate replaces the earlier, now unspendable, output.
                if let Some(i) = funded.insert(outpoint, unspent.len()) {
                    unspent[i] = None;
                }
                unspent.push(Some(Utxo { outpoint, value: out.value, height, txnum }));
                touches = true;
            }
            if touches {
                state.history.push(HistoryItem { txid: tx.txid, height, txnum });
            }
        }
        state.utxos = unspent.into_iter().flatten().collect();
        Ok(scan)
    }

    /// Whether `scan` is this index's state of its script: its tip is this chain's tip.
    pub fn is_current(&self, scan: &ScriptScan) -> bool {
        scan.tip == self.chain.tip() && scan.end_txnum == self.chain.next_txnum()
    }

    /// Whether `scan` can be brought up to this index's tip by reading only later transactions:
    /// its tip block is in this chain (no reorg below it since).
    fn extends(&self, scan: &ScriptScan) -> bool {
        match scan.tip {
            Some((height, hash)) => {
                self.chain.hash(height) == Some(hash) && scan.end_txnum <= self.chain.next_txnum()
            }
            None => scan.end_txnum == 0,
        }
    }

    /// The confirmed transaction spending `outpoint`, found through the spent output's script.
    pub fn spender(&self, outpoint: &OutPoint) -> Result<Option<TxInfo>> {
        let Some(funding) = self.txs_by_txid(&outpoint.txid)?.pop() else {
            return Ok(None);
        };
        let mut tx = Tx::default();
        parse::parse_tx(&mut Reader::new(&funding.raw), &funding.raw, &mut tx)?;
        let Some(out) = tx.outputs.get(outpoint.vout as usize) else {
            return Ok(None);
        };
        self.spender_after(outpoint, funding.txnum, &ScriptHash::of(out.script), usize::MAX)
    }

    /// As [`IndexReader::spender`], for a caller that already has the funding transaction's number and
    /// the script hash of the output.
    pub fn spender_after(
        &self,
        outpoint: &OutPoint,
        funding: TxNum,
        sh: &ScriptHash,
        max_rows: usize,
    ) -> Result<Option<TxInfo>> {
        let txnums = self.scan_at_most(cf::SCRIPT, schema::script_prefix(sh), max_rows)?;
        if txnums.len() > max_rows {
            return Err(TooManyRows { rows: txnums.len(), max: max_rows }.into());
        }
        // Only transactions after the funding one can spend its output.
        let later = &txnums[txnums.partition_point(|&n| n <= funding)..];
        for numbered in self.txs_by_nums(later) {
            let (txnum, raw, height, pos) = numbered?;
            let mut tx = Tx::default();
            parse::parse_tx(&mut Reader::new(&raw), &raw, &mut tx)?;
            if tx.inputs.iter().any(|i| i.prev_txid() == outpoint.txid && i.prev_vout == outpoint.vout) {
                return Ok(Some(TxInfo { txid: tx.txid, txnum, height, pos, raw }));
            }
        }
        Ok(None)
    }

    /// The txids of a block, in order.
    pub fn block_txids(&self, height: Height) -> Result<Vec<Txid>> {
        let block = self.block_bytes(height)?;
        let mut txids = Vec::new();
        parse::for_each_tx::<anyhow::Error>(&block, |_, tx| {
            txids.push(tx.txid);
            Ok(())
        })?;
        Ok(txids)
    }
}

/// Bytes `offset..offset+len` of the block at `height`, whose header row is `row`.
fn block_range(
    store: &Store,
    blocks: &BlockFiles,
    row: &HeaderRow,
    height: Height,
    offset: u32,
    len: u32,
) -> Result<Vec<u8>> {
    if offset as u64 + len as u64 > row.loc.size() as u64 {
        bail!("range {offset}+{len} is outside block {height}");
    }
    match row.loc {
        BlockLoc::File { file, offset: at, .. } => {
            blocks.read(FileKind::Blk, file, at as u64 + offset as u64, len as usize)
        }
        BlockLoc::Db { .. } => {
            let raw = store
                .db()
                .get_cf(store.cf(cf::RAWBLOCK), row.hash())?
                .ok_or_else(|| anyhow!("block {height} missing from the rawblock family"))?;
            Ok(raw[offset as usize..(offset + len) as usize].to_vec())
        }
    }
}

/// The `txpos` row (where each transaction sits) of the block at `height`.
fn txpos_row(store: &Store, height: Height) -> Result<Vec<u8>> {
    store
        .db()
        .get_cf(store.cf(cf::TXPOS), schema::height_key(height))?
        .ok_or_else(|| anyhow!("no txpos row at height {height}"))
}

/// Where transactions `txnums`, all of the block at `height` (header row `row`), sit in it.
fn places(store: &Store, height: Height, row: &HeaderRow, txnums: &[TxNum]) -> Result<Vec<Place>> {
    let index = |txnum: TxNum| txnum.checked_sub(row.first_txnum).filter(|&i| i < row.tx_count);
    let indexes = txnums
        .iter()
        .map(|&txnum| {
            index(txnum).ok_or_else(|| {
                anyhow!("txnum {txnum} is not among the {} transactions of block {height}", row.tx_count)
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let ranges = TxPos::locate_all(&txpos_row(store, height)?, &indexes)
        .with_context(|| format!("the txpos row of block {height}"))?;
    Ok(txnums
        .iter()
        .zip(indexes)
        .zip(ranges)
        .map(|((&txnum, pos), (offset, len))| Place { txnum, height, row: *row, pos, offset, len })
        .collect())
}

/// The silent-payment index (BIP352 tweaks, `cf::TWEAK`), read through an [`IndexReader`]: like
/// every other answer, only blocks of the reader's chain (at or below its tip) are seen.
impl IndexReader {
    /// Heights from which the index holds tweaks (None: the silent-payment index is off).
    pub fn tweak_start(&self) -> Result<Option<Height>> {
        Ok(self.store.tweak_start()?.0)
    }

    /// The heights whose tweaks the indexer's tweak pass may not have computed yet, while it
    /// turns a bulk pass's `cf::TWEAK_INPUTS` rows into `tweak` rows: from the first such row's
    /// height to the last's (it works up from the first, each batch atomically). None once it is
    /// done. Every other height's tweaks are computed: below, by the pass; above, by the
    /// follower, which computes each new block's at once.
    pub fn tweaks_pending(&self) -> Result<Option<std::ops::RangeInclusive<Height>>> {
        let height = |k: &[u8]| -> Result<Height> {
            Ok(Height::from_be_bytes(k.try_into().context("bad tweak inputs key")?))
        };
        let family = self.store.cf(cf::TWEAK_INPUTS);
        let Some((first, _)) =
            self.store.db().iterator_cf(family, rocksdb::IteratorMode::Start).next().transpose()?
        else {
            return Ok(None);
        };
        let last = match self.store.db().iterator_cf(family, rocksdb::IteratorMode::End).next().transpose()? {
            Some((k, _)) => height(&k)?,
            None => height(&first)?,
        };
        Ok(Some(height(&first)?..=last))
    }

    /// The last height of `from..=to` (and of the reader's chain) up to which every block's
    /// tweaks are computed, or None if `from`'s are not (it is in [`Self::tweaks_pending`]).
    pub fn tweaks_computed_to(&self, from: Height, to: Height) -> Result<Option<Height>> {
        let Some((tip, _)) = self.chain.tip() else { return Ok(None) };
        let to = to.min(tip);
        Ok(match self.tweaks_pending()? {
            Some(p) if p.contains(&from) => None,
            Some(p) if from < *p.start() => Some(to.min(p.start() - 1)),
            _ => Some(to),
        })
    }

    /// The eligible transactions of each block in `heights` that has any, in height order.
    /// Caller bounds the range; blocks with none are omitted. The range is cut at the first
    /// height not to serve: above the reader's tip (rows of a block not yet committed, or of
    /// one being undone, are not seen), or whose tweaks are not computed yet
    /// ([`Self::tweaks_computed_to`]).
    pub fn tweaks(
        &self,
        heights: std::ops::RangeInclusive<Height>,
    ) -> Result<Vec<(Height, Vec<crate::silent::TweakedTx>)>> {
        let from = *heights.start();
        let Some(to) = self.tweaks_computed_to(from, *heights.end())? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mut ro = rocksdb::ReadOptions::default();
        // Keys are 4 bytes: `to ‖ 0` sorts after `to` and before `to + 1`.
        let mut upper = schema::height_key(to).to_vec();
        upper.push(0);
        ro.set_iterate_upper_bound(upper);
        let from_key = schema::height_key(from);
        let it = self.store.db().iterator_cf_opt(
            self.store.cf(cf::TWEAK),
            ro,
            rocksdb::IteratorMode::From(&from_key, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let h = Height::from_be_bytes(k.as_ref().try_into().context("bad tweak key")?);
            let txs = schema::TweakRow::decode(&v).with_context(|| format!("tweak row of block {h}"))?;
            out.push((h, txs));
        }
        Ok(out)
    }
}

pub fn compute_txid(raw: &[u8]) -> Result<Txid> {
    let mut tx = Tx::default();
    let mut r = Reader::new(raw);
    parse::parse_tx(&mut r, raw, &mut tx)?;
    Ok(tx.txid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::consensus::deserialize;

    #[test]
    fn a_window_holds_what_fits_its_bytes_and_at_least_one_transaction() {
        assert_eq!(fitting([10, 20, 30].into_iter(), 30), 2);
        assert_eq!(fitting([10, 20, 30].into_iter(), 60), 3);
        assert_eq!(fitting([100, 1].into_iter(), 30), 1);
        assert_eq!(fitting(std::iter::empty(), 30), 1);
    }

    #[test]
    fn read_jobs_are_served_one_per_fan_out_in_turn() {
        let queue = ReadQueue { flows: Default::default(), ready: Default::default() };
        let ran = Arc::new(Mutex::new(Vec::new()));
        let flow = |name: &'static str, n: usize| -> VecDeque<Job> {
            (0..n)
                .map(|i| {
                    let ran = ran.clone();
                    Box::new(move || ran.lock().unwrap().push(format!("{name}{i}"))) as Job
                })
                .collect()
        };
        queue.push(flow("long", 4));
        queue.next()();
        queue.push(flow("short", 1));
        queue.push(VecDeque::new());
        queue.push(flow("mid", 2));
        while !queue.flows.lock().unwrap().is_empty() {
            queue.next()();
        }
        // The one-job fan-out that came after the long one's first read waits for one job of it,
        // not for its three others.
        assert_eq!(*ran.lock().unwrap(), ["long0", "long1", "short0", "mid0", "long2", "mid1", "long3"]);
    }

    #[test]
    fn compute_txid_matches_bitcoin_crate() {
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Bitcoin);
        let raw = bitcoin::consensus::serialize(&genesis.txdata[0]);
        let tx: bitcoin::Transaction = deserialize(&raw).unwrap();
        assert_eq!(compute_txid(&raw).unwrap(), tx.compute_txid());
        assert!(compute_txid(&raw[..raw.len() - 1]).is_err());
    }
}
