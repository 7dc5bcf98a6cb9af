//! `gen-blocks` at a tiny size: the files pass a validator built on the `bitcoin` crate and the
//! indexer's undo decoder (links, proof of work, merkle roots and witness commitments, every
//! input spending an existing unspent output once, coinbase maturity, amounts, undo records
//! holding exactly the spent outputs), the indexer indexes them offline, and the index answers
//! what the generator reported; the same seed makes the same bytes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, OutPoint, Target};

use blkindex_benches::blockgen::{check_index, extend, generate, read_extension, Appender, Params, Report};
use blkindex_indexer::{Args, Shutdown};
use blkindex_shared::blkfile::{list_files, scan_records, FileKind, XorKey, UNDO_CHECKSUM_LEN};
use blkindex_shared::parse::is_unspendable;
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::undo::{checksum, BlockUndo};
use blkindex_shared::Net;

const MAX_FILE: u64 = 1 << 20;

#[test]
fn a_generated_chain_is_valid_and_indexes_to_what_was_generated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let datadir = dir.path().join("chain");
    // A pool smaller than the chain's unspent outputs, so that some leave it for good.
    let params = Params { max_file_size: MAX_FILE, pool_cap: 8_000, ..Params::new(0.008, 3) };
    let report = generate(&datadir, &params)?;
    eprintln!(
        "{} blocks ({} stale, {} before their parent, {} in an earlier file), {} txs, {} blk bytes in {} files",
        report.blocks,
        report.stale_blocks,
        report.blocks_before_parent,
        report.blocks_in_file_before_parent,
        report.txs,
        report.blk_bytes,
        report.blk_files
    );
    let saved: Report = serde_json::from_str(&std::fs::read_to_string(datadir.join("gen-blocks.json"))?)?;
    assert_eq!(saved.best_hash, report.best_hash);
    assert!(report.blk_files >= 5, "{} blk files", report.blk_files);
    assert!(report.stale_blocks >= 3, "{} stale blocks", report.stale_blocks);
    assert!(report.blocks_before_parent > report.blocks_in_file_before_parent);
    assert!(report.blocks_in_file_before_parent > 0);
    assert!(
        report.abandoned > 0 && report.utxos > report.abandoned,
        "{} of {}",
        report.abandoned,
        report.utxos
    );
    assert_eq!(report.hot.len(), 43);
    assert!(report.hot[0].txs > 100 && !report.sample.is_empty());

    validate(&datadir.join("regtest/blocks"), &report)?;

    let db = dir.path().join("db");
    let args = Args::from_args([
        "blkindex-indexer".as_ref(),
        "--network".as_ref(),
        "regtest".as_ref(),
        "--datadir".as_ref(),
        datadir.as_os_str(),
        "--db".as_ref(),
        db.as_os_str(),
        "--offline".as_ref(),
        "--no-follow".as_ref(),
        "--progress".as_ref(),
        "none".as_ref(),
    ])?;
    blkindex_indexer::run(args, Shutdown::Flag(Arc::new(AtomicBool::new(false))))?;
    let checked = check_index(&datadir, &db, &report)?;
    assert_eq!(checked.txs, report.txs);
    assert_eq!(checked.scripts, report.hot.len() + report.sample.len());

    // The same seed and size make the same bytes; another seed, others.
    let again = dir.path().join("again");
    generate(&again, &params)?;
    let first = file_digests(&datadir)?;
    assert_eq!(first.len() as u32, 2 * report.blk_files + 1, "{first:?}");
    assert!(file_digests(&again)? == first, "the same seed made other bytes");
    let other = dir.path().join("other");
    generate(&other, &Params { seed: 4, ..params })?;
    assert!(file_digests(&other)? != first, "another seed made the same bytes");
    Ok(())
}

/// The blocks `extend` makes after a chain's tip, appended as a node appends them, continue it:
/// the whole passes the validator, and an offline index of it ends at the last of them.
#[test]
fn blocks_made_after_a_generated_chain_continue_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let datadir = dir.path().join("chain");
    // `extend` replays the default pool; the file size does not change what is planned.
    let params = Params { max_file_size: MAX_FILE, ..Params::new(0.004, 5) };
    let report = generate(&datadir, &params)?;
    let out = dir.path().join("extension");
    let ext = extend(&report, 3, &out)?;
    assert_eq!(ext.blocks, 3);
    assert!(ext.txs > 3 * 1000, "{} txs", ext.txs);
    assert!(ext.blocks_touching_top3 == 3 && ext.top3_outputs > 0, "{ext:?}");
    let blocks_dir = datadir.join("regtest/blocks");
    let net: Net = "regtest".parse().unwrap();
    let mut appender = Appender::open(&blocks_dir, net.magic(), MAX_FILE)?;
    let files_before = list_files(&blocks_dir, FileKind::Blk)?.len();
    for b in read_extension(&out)? {
        appender.append(&b)?;
    }
    // Blocks of 1.5 MB take a file each at this file size.
    assert_eq!(list_files(&blocks_dir, FileKind::Blk)?.len(), files_before + 3);
    let grown = Report {
        best_hash: ext.tip.clone(),
        best_height: report.best_height + 3,
        blocks: report.blocks + 3,
        txs: report.txs + ext.txs,
        utxos: ext.utxos,
        ..report.clone()
    };
    validate(&blocks_dir, &grown)?;

    let db = dir.path().join("db");
    let args = Args::from_args([
        "blkindex-indexer".as_ref(),
        "--network".as_ref(),
        "regtest".as_ref(),
        "--datadir".as_ref(),
        datadir.as_os_str(),
        "--db".as_ref(),
        db.as_os_str(),
        "--offline".as_ref(),
        "--no-follow".as_ref(),
        "--progress".as_ref(),
        "none".as_ref(),
    ])?;
    blkindex_indexer::run(args, Shutdown::Flag(Arc::new(AtomicBool::new(false))))?;
    let store = Store::open(&db, Mode::Secondary(dir.path().join("secondary")))?;
    let (height, hash) = store.tip()?.context("an empty index")?;
    assert_eq!((height, hash.to_string()), (grown.best_height, grown.best_hash));
    Ok(())
}

/// A generator that has been told it already wrote here refuses to write over it.
#[test]
fn a_data_directory_with_blocks_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let params = Params { max_file_size: MAX_FILE, ..Params::new(0.0001, 1) };
    generate(dir.path(), &params)?;
    let err = generate(dir.path(), &params).unwrap_err();
    assert!(format!("{err:#}").contains("already holds blk files"), "{err:#}");
    Ok(())
}

/// The generated files (blk, rev, xor.dat; not the lock file the indexer leaves) and their
/// digests.
fn file_digests(datadir: &Path) -> Result<Vec<(String, bitcoin::hashes::sha256::Hash)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(datadir.join("regtest/blocks"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dat") {
            out.push((name, bitcoin::hashes::sha256::Hash::hash(&std::fs::read(e.path())?)));
        }
    }
    out.sort();
    Ok(out)
}

/// A block as stored: its blk file, and its decoded form.
struct Stored {
    file: u32,
    block: Block,
}

/// A rev record's payload and checksum.
type UndoRecord = (Vec<u8>, [u8; 32]);

/// An unspent output as a node's chainstate holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Coin {
    height: u32,
    coinbase: bool,
    value: u64,
    script: Vec<u8>,
}

/// What a node would check, signatures aside.
fn validate(blocks_dir: &Path, report: &Report) -> Result<()> {
    let net: Net = "regtest".parse().unwrap();
    let key = XorKey::read(blocks_dir)?;
    assert!(!key.is_zero() && key.0.iter().all(|&b| b != 0), "xor key {:?}", key.0);
    let mut stored: HashMap<BlockHash, Stored> = HashMap::new();
    let (mut before_parent, mut early) = (0, Vec::new());
    for num in list_files(blocks_dir, FileKind::Blk)? {
        let mut bytes = std::fs::read(blocks_dir.join(FileKind::Blk.file_name(num)))?;
        let (records, notes) = scan_records(&bytes, &key, net.magic(), FileKind::Blk);
        assert_eq!(notes.skipped, 0, "blk file {num} has garbage");
        let end = records.last().map_or(0, |r| r.offset + r.len as u64);
        // Core starts a new file for a block that would take this one to the limit (a block
        // bigger than the limit has a file to itself).
        ensure!(end < MAX_FILE || records.len() == 1, "blk file {num} holds {end} bytes");
        // After the last record only the preallocated zeros of the file being written.
        ensure!(bytes[end as usize..].iter().all(|&b| b == 0), "blk file {num}: bytes after its last record");
        key.apply(&mut bytes, 0);
        for r in records {
            let payload = &bytes[r.offset as usize..(r.offset + r.len as u64) as usize];
            let block: Block = bitcoin::consensus::deserialize(payload).context("a block")?;
            let hash = block.block_hash();
            let parent = block.header.prev_blockhash;
            if hash != net.genesis_hash() && !stored.contains_key(&parent) {
                before_parent += 1;
                early.push((num, parent));
            }
            ensure!(stored.insert(hash, Stored { file: num, block }).is_none(), "block {hash} stored twice");
        }
    }
    assert_eq!(before_parent, report.blocks_before_parent);
    let in_earlier_file = early.iter().filter(|(file, parent)| stored[parent].file > *file).count() as u64;
    assert_eq!(in_earlier_file, report.blocks_in_file_before_parent);

    // Undo records by the block file they belong to, with their checksums.
    let mut undo: HashMap<u32, Vec<UndoRecord>> = HashMap::new();
    for num in list_files(blocks_dir, FileKind::Rev)? {
        let mut bytes = std::fs::read(blocks_dir.join(FileKind::Rev.file_name(num)))?;
        let (records, _) = scan_records(&bytes, &key, net.magic(), FileKind::Rev);
        key.apply(&mut bytes, 0);
        for r in records {
            let at = (r.offset + r.len as u64) as usize;
            let sum: [u8; 32] = bytes[at..at + UNDO_CHECKSUM_LEN].try_into().unwrap();
            undo.entry(num).or_default().push((bytes[r.offset as usize..at].to_vec(), sum));
        }
    }
    let undo_of = |hash: &BlockHash| -> Result<BlockUndo> {
        let s = &stored[hash];
        let prev = s.block.header.prev_blockhash;
        let fits: Vec<&Vec<u8>> = undo
            .get(&s.file)
            .into_iter()
            .flatten()
            .filter(|(p, sum)| {
                checksum(&prev, p) == *sum && BlockUndo::tx_count(p).ok() == Some(s.block.txdata.len() - 1)
            })
            .map(|(p, _)| p)
            .collect();
        ensure!(fits.len() == 1, "block {hash}: {} undo records fit", fits.len());
        Ok(BlockUndo::decode(fits[0])?)
    };

    // The best chain, from the reported tip down to genesis.
    let mut chain = vec![report.best_hash.parse::<BlockHash>()?];
    while let Some(s) = stored.get(chain.last().unwrap()) {
        if s.block.header.prev_blockhash == BlockHash::all_zeros() {
            break;
        }
        chain.push(s.block.header.prev_blockhash);
    }
    chain.reverse();
    assert_eq!(chain[0], net.genesis_hash());
    assert_eq!(chain.len() as u64, report.blocks);
    let best: HashSet<BlockHash> = chain.iter().copied().collect();
    let stale: Vec<BlockHash> = stored.keys().filter(|h| !best.contains(*h)).copied().collect();
    assert_eq!(stale.len() as u64, report.stale_blocks);
    let regtest = Target::from_compact(bitcoin::CompactTarget::from_consensus(0x207f_ffff));
    for (hash, s) in &stored {
        ensure!(s.block.check_merkle_root(), "block {hash}: merkle root");
        ensure!(s.block.check_witness_commitment(), "block {hash}: witness commitment");
        ensure!(
            s.block.header.target() == regtest && s.block.header.validate_pow(regtest).is_ok(),
            "block {hash}: pow"
        );
    }
    let height_of: HashMap<BlockHash, u32> = chain.iter().enumerate().map(|(h, b)| (*b, h as u32)).collect();
    let stale_height = |hash: &BlockHash| {
        let mut n = 0;
        let mut cur = *hash;
        while !best.contains(&cur) {
            cur = stored[&cur].block.header.prev_blockhash;
            n += 1;
        }
        height_of[&cur] + n
    };

    // Every block connected to the chainstate before it: the best chain in order, and each stale
    // branch on a copy of the chainstate at its fork.
    let mut utxos: HashMap<OutPoint, Coin> = HashMap::new();
    let mut txs = 1u64;
    for (height, hash) in chain.iter().enumerate().skip(1) {
        for s in stale.iter().filter(|s| stored[*s].block.header.prev_blockhash == chain[height - 1]) {
            let mut branch = utxos.clone();
            let mut tip = *s;
            loop {
                connect(&stored[&tip].block, stale_height(&tip), &undo_of(&tip)?, &mut branch)?;
                match stale.iter().find(|c| stored[*c].block.header.prev_blockhash == tip) {
                    Some(child) => tip = *child,
                    None => break,
                }
            }
        }
        let block = &stored[hash].block;
        connect(block, height as u32, &undo_of(hash)?, &mut utxos)?;
        txs += block.txdata.len() as u64;
    }
    assert_eq!(txs, report.txs);
    // The generator does not count coinbase outputs of no value (a block with neither subsidy
    // nor fees) among the unspent.
    assert_eq!(utxos.values().filter(|c| c.value > 0).count() as u64, report.utxos);
    Ok(())
}

/// Connects `block` at `height` to `utxos`, checking it as a node would (signatures aside) and
/// its undo record against what it spends.
fn connect(block: &Block, height: u32, undo: &BlockUndo, utxos: &mut HashMap<OutPoint, Coin>) -> Result<()> {
    ensure!(block
        .bip34_block_height()
        .map_or(block.header.version.to_consensus() < 2, |h| h == height as u64));
    let mut coins = undo.coins.iter();
    let mut fees = 0u64;
    for (i, tx) in block.txdata.iter().enumerate().skip(1) {
        ensure!(undo.tx_inputs[i - 1] as usize == tx.input.len(), "tx {i}: undo shape");
        let mut value_in = 0u64;
        for input in &tx.input {
            let Some(coin) = utxos.remove(&input.previous_output) else {
                bail!("height {height} tx {i}: {} is not an unspent output", input.previous_output);
            };
            if coin.coinbase {
                ensure!(height >= coin.height + 100, "an immature coinbase spent at {height}");
            }
            let u = coins.next().context("undo too short")?;
            let from_undo = Coin {
                height: u.height,
                coinbase: u.coinbase,
                value: u.value,
                script: undo.script(u).to_vec(),
            };
            ensure!(from_undo == coin, "height {height} tx {i}: undo {from_undo:?} for {coin:?}");
            value_in += coin.value;
        }
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        ensure!(value_out <= value_in, "height {height} tx {i}: pays {value_out} from {value_in}");
        fees += value_in - value_out;
        add_outputs(tx, height, false, utxos);
    }
    ensure!(coins.next().is_none(), "undo too long");
    let coinbase = &block.txdata[0];
    ensure!(coinbase.is_coinbase());
    let subsidy = 5_000_000_000u64.checked_shr(height / 150).unwrap_or(0);
    let claimed: u64 = coinbase.output.iter().map(|o| o.value.to_sat()).sum();
    ensure!(claimed <= subsidy + fees, "height {height}: coinbase claims {claimed} of {}", subsidy + fees);
    add_outputs(coinbase, height, true, utxos);
    Ok(())
}

fn add_outputs(tx: &bitcoin::Transaction, height: u32, coinbase: bool, utxos: &mut HashMap<OutPoint, Coin>) {
    let txid = tx.compute_txid();
    for (vout, o) in tx.output.iter().enumerate() {
        if is_unspendable(o.script_pubkey.as_bytes()) {
            continue; // never in the chainstate
        }
        let coin = Coin { height, coinbase, value: o.value.to_sat(), script: o.script_pubkey.to_bytes() };
        let previous = utxos.insert(OutPoint { txid, vout: vout as u32 }, coin);
        assert!(previous.is_none(), "{txid}:{vout} created twice");
    }
}
