//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` calls them) over this crate's decoders:
//! each takes arbitrary bytes, must not panic, and checks what the decoder promises. The unit tests
//! below replay the committed corpus (`fuzz/corpus/<target>/`) through the same functions on stable,
//! and proptest the merge operator's associativity.
//!
//! Nothing here needs RocksDB: the fuzz crate builds this crate without the `store` feature.

use bitcoin::consensus::{deserialize, deserialize_partial, serialize};
use bitcoin::{Block, Transaction};

use crate::blkfile::{scan_records, FileKind, XorKey, MAX_BLOCK_SIZE, MAX_UNDO_SIZE, UNDO_CHECKSUM_LEN};
use crate::bucket;
use crate::parse::{block_prefix, for_each_tx, parse_tx, Tx};
use crate::schema::{TxNum, TxnumList, PREFIX_LEN};
use crate::undo::BlockUndo;
use crate::varint::{put_leb128, DecodeError, Reader};

/// The blk-file magic the framing target looks for (regtest's; the scan takes any).
const MAGIC: [u8; 4] = [0xfa, 0xbf, 0xb5, 0xda];

/// `data[0]`: bit 0 picks a rev file, bit 1 an obfuscated one (key `data[1..9]`); the rest is the
/// file. The records found are in order, apart, inside the file, framed by the magic and their own
/// length; and de-obfuscating the file first finds the same records.
pub fn blk_framing(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let kind = if mode & 1 == 0 { FileKind::Blk } else { FileKind::Rev };
    let (key, file) = match (mode & 2 != 0, rest.split_first_chunk::<8>()) {
        (true, Some((k, file))) => (XorKey(*k), file),
        _ => (XorKey::default(), rest),
    };
    let (records, notes) = scan_records(file, &key, MAGIC, kind);
    let (max, trailer) = match kind {
        FileKind::Blk => (MAX_BLOCK_SIZE, 0),
        FileKind::Rev => (MAX_UNDO_SIZE, UNDO_CHECKSUM_LEN as u64),
    };
    let plain: Vec<u8> = file.iter().enumerate().map(|(i, b)| b ^ key.0[i % 8]).collect();
    let mut end = 0u64;
    for r in &records {
        assert!(r.len > 0 && r.len <= max, "record length {} out of bounds", r.len);
        assert!(r.offset >= end + 8, "record at {} overlaps the one ending at {end}", r.offset);
        end = r.offset + r.len as u64 + trailer;
        assert!(end <= file.len() as u64, "record at {} runs past the file", r.offset);
        let head = &plain[r.offset as usize - 8..r.offset as usize];
        assert_eq!(head[..4], MAGIC);
        assert_eq!(u32::from_le_bytes(head[4..].try_into().unwrap()), r.len);
    }
    assert!(notes.skipped <= file.len() as u64);
    let (again, _) = scan_records(&plain, &XorKey::default(), MAGIC, kind);
    assert_eq!(records, again, "obfuscation changed the framing");
}

/// The bytes as a block and, separately, as a transaction: the zero-copy walk must agree with
/// rust-bitcoin's decoder (same bytes, txids, inputs, outputs) wherever both accept the input, and
/// accept what rust-bitcoin accepts, bar the differences listed in [`walk_differs`].
pub fn block(data: &[u8]) {
    check_block(data);
    check_transaction(data);
}

/// What the walk read of one transaction: its bytes, txid, input count, outputs (value, script).
type Walked = (Vec<u8>, bitcoin::Txid, usize, Vec<(u64, Vec<u8>)>);

fn check_block(data: &[u8]) {
    let mut ours: Vec<Walked> = Vec::new();
    let walked = for_each_tx::<DecodeError>(data, |i, tx| {
        assert_eq!(i, ours.len());
        ours.push((tx.raw.to_vec(), tx.txid, tx.inputs.len(), outputs(tx)));
        Ok(())
    });
    let theirs = deserialize::<Block>(data);
    match (&walked, &theirs) {
        (Ok(n), Ok(block)) => {
            assert_eq!(*n, block.txdata.len());
            let (header, ntx, _) = block_prefix(data).unwrap();
            assert_eq!(&header[..], &serialize(&block.header)[..]);
            assert_eq!(ntx, *n);
            for ((raw, txid, n_in, outs), tx) in ours.iter().zip(&block.txdata) {
                compare_tx(raw, *txid, *n_in, outs, tx);
            }
        }
        (Ok(_), Err(e)) => assert!(empty_witnesses(e), "rust-bitcoin rejects a block the walk accepts: {e}"),
        (Err(e), Ok(block)) => {
            assert!(
                block.txdata.is_empty() || block.txdata.iter().any(walk_differs),
                "the walk rejects a block rust-bitcoin accepts: {e}"
            );
        }
        (Err(_), Err(_)) => {}
    }
}

fn check_transaction(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut tx = Tx::default();
    let ours = parse_tx(&mut r, data, &mut tx);
    let theirs = deserialize_partial::<Transaction>(data);
    match (&ours, &theirs) {
        (Ok(()), Ok((btx, used))) => {
            assert_eq!(r.pos(), *used, "the walk and rust-bitcoin end the transaction apart");
            compare_tx(tx.raw, tx.txid, tx.inputs.len(), &outputs(&tx), btx);
            for (i, input) in tx.inputs.iter().zip(&btx.input) {
                assert_eq!(i.prev_txid(), input.previous_output.txid);
                assert_eq!(i.prev_vout, input.previous_output.vout);
            }
        }
        (Ok(()), Err(e)) => {
            assert!(empty_witnesses(e), "rust-bitcoin rejects a transaction the walk accepts: {e}")
        }
        (Err(e), Ok((btx, _))) => {
            assert!(walk_differs(btx), "the walk rejects a transaction rust-bitcoin accepts: {e}")
        }
        (Err(_), Err(_)) => {}
    }
}

fn outputs(tx: &Tx) -> Vec<(u64, Vec<u8>)> {
    tx.outputs.iter().map(|o| (o.value, o.script.to_vec())).collect()
}

fn compare_tx(raw: &[u8], txid: bitcoin::Txid, n_in: usize, outs: &[(u64, Vec<u8>)], tx: &Transaction) {
    assert_eq!(raw, &serialize(tx)[..], "the walk's bytes of a transaction are not rust-bitcoin's");
    assert_eq!(txid, tx.compute_txid());
    assert_eq!(n_in, tx.input.len());
    assert_eq!(outs.len(), tx.output.len());
    for ((value, script), o) in outs.iter().zip(&tx.output) {
        assert_eq!(*value, o.value.to_sat());
        assert_eq!(&script[..], o.script_pubkey.as_bytes());
    }
}

/// rust-bitcoin refuses a segwit serialization (marker 0, flag 1) whose witnesses are all empty;
/// the walk takes it (Core refuses it too, but such a transaction is never in a block that
/// connected, and the walk only reads blocks bitcoind stored).
fn empty_witnesses(e: &bitcoin::consensus::encode::Error) -> bool {
    matches!(e, bitcoin::consensus::encode::Error::ParseFailed(m) if m.contains("no witnesses"))
}

/// What rust-bitcoin accepts and the walk refuses, by design (besides a block of no transactions,
/// which has no coinbase): a segwit transaction without inputs
/// (rust-bitcoin reads one; Core's serialization never writes one, as a legacy transaction with no
/// inputs reads as the segwit marker), and, in a block, transactions without outputs or inputs,
/// which consensus forbids and whose sizes (under 60 bytes) the walk's count bound does not allow
/// for.
fn walk_differs(tx: &Transaction) -> bool {
    tx.input.is_empty() || tx.output.is_empty()
}

/// Undo record payloads: decoded, every coin's script range lies in the scripts and follows the one
/// before, the per-transaction counts add up to the coins, no script is over the consensus limit,
/// and the cheap count agrees.
pub fn undo(data: &[u8]) {
    let Ok(undo) = BlockUndo::decode(data) else { return };
    assert_eq!(BlockUndo::tx_count(data), Ok(undo.tx_inputs.len()));
    assert_eq!(undo.tx_inputs.iter().map(|&n| n as usize).sum::<usize>(), undo.coins.len());
    let mut end = 0;
    for coin in &undo.coins {
        assert_eq!(coin.script.start, end);
        end = coin.script.end;
        let script = undo.script(coin);
        // Over the consensus limit a script is kept as OP_RETURN alone, as Core reads it back.
        assert!(script.len() <= 10_000 || script == [0x6a]);
    }
    assert_eq!(end as usize, undo.scripts.len());
}

/// `data[0]` picks the bucket width (1–5), `data[1..5]` a txnum to truncate from, the rest is a
/// bucket value. Its entries, lists, lookups and truncation must agree with one another, and a
/// decoded txnum list re-encodes to one that decodes the same.
pub fn bucket(data: &[u8]) {
    let Some((&w, rest)) = data.split_first() else { return };
    let rest_len = PREFIX_LEN - (1 + w as usize % PREFIX_LEN);
    let Some((from, value)) = rest.split_first_chunk::<4>() else { return };
    let from = TxNum::from_be_bytes(*from);
    txnum_list(value);
    let Some(decoded) = decode_bucket(value, rest_len) else {
        // Not a bucket: still no panic anywhere.
        let _ = bucket::truncate(value, rest_len, from, |_| false);
        let _ = bucket::merge(rest_len, [value, value]);
        return;
    };
    for (rest, list) in bucket::entries(value, rest_len).map(Result::unwrap) {
        txnum_list(list);
        // `find` stops at the first rest above the one sought: it finds an entry of a sorted bucket.
        if decoded.windows(2).all(|p| p[0].0 < p[1].0) {
            assert_eq!(bucket::find(value, rest).unwrap(), Some(list));
        }
    }
    let truncated = bucket::truncate(value, rest_len, from, |_| false).unwrap();
    // Markers of long lists (empty lists) stay; other lists lose their txnums from `from` on.
    let kept: Vec<(Vec<u8>, Vec<TxNum>)> = decoded
        .iter()
        .filter_map(|(r, l)| match l.is_empty() {
            true => Some((r.clone(), vec![])),
            false => Some((r.clone(), l.iter().copied().filter(|&n| n < from).collect::<Vec<_>>()))
                .filter(|(_, l)| !l.is_empty()),
        })
        .collect();
    assert_eq!(decode_bucket(&truncated, rest_len).unwrap(), kept);
}

/// A txnum list: decoding gives non-decreasing txnums whose encoding decodes to them again.
fn txnum_list(list: &[u8]) {
    let Ok(txnums) = TxnumList::decode(list) else { return };
    assert_eq!(TxnumList::count(list), txnums.len(), "a list's count without decoding it");
    assert!(txnums.windows(2).all(|p| p[0] <= p[1]));
    assert_eq!(TxnumList::decode(&TxnumList::encode(&txnums)).unwrap(), txnums);
}

/// A bucket's entries with their lists decoded; None if any part fails to decode.
fn decode_bucket(value: &[u8], rest_len: usize) -> Option<Vec<(Vec<u8>, Vec<TxNum>)>> {
    bucket::entries(value, rest_len)
        .map(|e| {
            let (rest, list) = e.ok()?;
            Some((rest.to_vec(), TxnumList::decode(list).ok()?))
        })
        .collect()
}

/// Whether `value` is a bucket as the indexer writes it: entries strictly sorted by rest, each
/// list strictly ascending, every number in its shortest LEB128.
fn canonical(value: &[u8], rest_len: usize) -> bool {
    let Some(decoded) = decode_bucket(value, rest_len) else { return false };
    decoded.windows(2).all(|p| p[0].0 < p[1].0)
        && decoded.iter().all(|(_, l)| l.windows(2).all(|p| p[0] < p[1]))
        && encode_bucket(&decoded) == value
}

fn encode_bucket(entries: &[(Vec<u8>, Vec<TxNum>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (rest, txnums) in entries {
        let list = TxnumList::encode(txnums);
        out.extend_from_slice(rest);
        put_leb128(&mut out, list.len() as u64);
        out.extend_from_slice(&list);
    }
    out
}

/// The operands a merge input holds: `data[0]` picks the width, `data[1]` where to split the
/// operands in two groups, then operands each as a length byte and that many bytes (a length of
/// 255: the rest of the input).
fn merge_operands(data: &[u8]) -> Option<(usize, usize, Vec<&[u8]>)> {
    let (&w, data) = data.split_first()?;
    let (&split, mut data) = data.split_first()?;
    let rest_len = PREFIX_LEN - (1 + w as usize % PREFIX_LEN);
    let mut operands = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = if len == 255 { rest.len() } else { (len as usize).min(rest.len()) };
        operands.push(&rest[..len]);
        data = &rest[len..];
    }
    let split = split as usize % (operands.len() + 1);
    Some((rest_len, split, operands))
}

/// The merge operator (`bucket::merge`, RocksDB's full and partial merge alike) over any operands:
/// no panic. Over buckets as the indexer writes them: the result is one too, holds exactly the
/// union of the operands' (rest, txnum) pairs, and merging the two groups first, then their results,
/// gives the same bytes (so RocksDB may fold operands in any grouping).
pub fn merge(data: &[u8]) {
    let Some((rest_len, split, operands)) = merge_operands(data) else { return };
    let all = bucket::merge(rest_len, operands.iter().copied());
    if !operands.iter().all(|o| canonical(o, rest_len)) {
        return;
    }
    let all = all.expect("merging valid buckets failed");
    assert!(canonical(&all, rest_len), "a merge of valid buckets is not one");
    let mut union: Vec<(Vec<u8>, TxNum)> = Vec::new();
    for o in &operands {
        for (rest, list) in decode_bucket(o, rest_len).unwrap() {
            union.extend(list.into_iter().map(|n| (rest.clone(), n)));
        }
    }
    union.sort();
    union.dedup();
    let merged: Vec<(Vec<u8>, TxNum)> = decode_bucket(&all, rest_len)
        .unwrap()
        .into_iter()
        .flat_map(|(rest, list)| list.into_iter().map(move |n| (rest.clone(), n)))
        .collect();
    assert_eq!(merged, union, "the merge lost or invented txnums");
    let (left, right) = operands.split_at(split);
    let left = bucket::merge(rest_len, left.iter().copied()).unwrap();
    let right = bucket::merge(rest_len, right.iter().copied()).unwrap();
    let grouped = bucket::merge(rest_len, [&left[..], &right[..]]).unwrap();
    assert_eq!(grouped, all, "merging in groups differs from merging at once");
}

/// For the crates' tests: every file of the committed `fuzz/corpus/<target>/` through `f`; the
/// corpus must be there, so a missing or empty one fails rather than passing on nothing.
pub fn replay_corpus(target: &str, f: fn(&[u8])) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| f(&data)) {
            std::panic::resume_unwind(Box::new(format!("{}: {e:?}", path.display())));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn replay(target: &str, f: fn(&[u8])) {
        super::replay_corpus(target, f)
    }

    #[test]
    fn corpus_blk_framing() {
        replay("blk_framing", blk_framing);
    }

    #[test]
    fn corpus_block() {
        replay("block", block);
    }

    #[test]
    fn corpus_undo() {
        replay("undo", undo);
    }

    #[test]
    fn corpus_bucket() {
        replay("bucket", bucket);
    }

    #[test]
    fn corpus_merge() {
        replay("merge", merge);
    }

    /// A bucket as the indexer writes it: distinct rests, each with a set of txnums.
    fn a_bucket(rest_len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), rest_len),
            prop::collection::btree_set(0u32..2000, 1..6),
            0..6,
        )
        .prop_map(|m| {
            let entries: Vec<(Vec<u8>, Vec<TxNum>)> =
                m.into_iter().map(|(r, s)| (r, s.into_iter().collect())).collect();
            encode_bucket(&entries)
        })
    }

    fn operands() -> impl Strategy<Value = (usize, Vec<Vec<u8>>)> {
        // Narrow rests (0 or 1 byte) so that operands share prefixes often.
        (0usize..=1)
            .prop_flat_map(|rest_len| (Just(rest_len), prop::collection::vec(a_bucket(rest_len), 0..6)))
    }

    proptest! {
        /// RocksDB folds a key's operands in whatever groups it meets them (partial merges in
        /// compactions, a full merge on read): any grouping gives the full merge's bytes.
        #[test]
        fn merge_is_associative((rest_len, ops) in operands(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let all = bucket::merge(rest_len, ops.iter().map(|o| &o[..])).unwrap();
            prop_assert!(canonical(&all, rest_len));
            // Cut the operands at the chosen points, merge each run, then merge the results.
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(ops.len() + 1)).collect();
            at.push(0);
            at.push(ops.len());
            at.sort_unstable();
            let partial: Vec<Vec<u8>> = at
                .windows(2)
                .map(|w| bucket::merge(rest_len, ops[w[0]..w[1]].iter().map(|o| &o[..])).unwrap())
                .collect();
            let grouped = bucket::merge(rest_len, partial.iter().map(|o| &o[..])).unwrap();
            prop_assert_eq!(&grouped, &all);
            // Nested the other way too: ((a·b)·c) against (a·(b·c)).
            if ops.len() >= 3 {
                let ab = bucket::merge(rest_len, [&ops[0][..], &ops[1][..]]).unwrap();
                let left = bucket::merge(rest_len, [&ab[..], &ops[2][..]]).unwrap();
                let bc = bucket::merge(rest_len, [&ops[1][..], &ops[2][..]]).unwrap();
                let right = bucket::merge(rest_len, [&ops[0][..], &bc[..]]).unwrap();
                prop_assert_eq!(left, right);
            }
        }

        /// The fuzz target's own checks hold for every operand set the strategy makes (so a
        /// regression shows without the fuzzer).
        #[test]
        fn merge_target_accepts_valid_operands((rest_len, ops) in operands(), split in any::<u8>()) {
            let mut data = vec![(PREFIX_LEN - 1 - rest_len) as u8, split];
            for o in &ops {
                prop_assume!(o.len() < 255);
                data.push(o.len() as u8);
                data.extend_from_slice(o);
            }
            merge(&data);
        }
    }
}
