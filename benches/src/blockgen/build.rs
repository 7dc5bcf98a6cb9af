//! Plans into bytes: transactions serialized, hashed (txid, wtxid) and their undo data encoded in
//! parallel, wave by wave (a wave's inputs name txids of earlier waves); then the coinbase with
//! its segwit commitment, the merkle root, the header with its nonce ground to regtest's target,
//! and the block's undo record.

use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::BlockHash;
use rayon::prelude::*;

use blkindex_shared::hashes::sha256d;
use blkindex_shared::merkle;

use super::plan::{BlockPlan, OutScript, Prev, TxPlan};
use super::script::{put_compact_size, put_random, Scripts};
use super::undo::put_coin;

/// Regtest's proof-of-work limit, the `bits` of every block.
pub const REGTEST_BITS: u32 = 0x207f_ffff;

/// A built transaction.
pub struct Built {
    pub raw: Vec<u8>,
    pub txid: [u8; 32],
    pub wtxid: [u8; 32],
    /// Its CTxUndo: the outputs it spends.
    pub undo: Vec<u8>,
}

/// A built block, and its undo record (payload ‖ checksum; none for genesis).
pub struct BuiltBlock {
    pub height: u32,
    pub hash: BlockHash,
    pub bytes: Vec<u8>,
    pub undo: Option<Vec<u8>>,
    /// The coinbase's first.
    pub txids: Vec<[u8; 32]>,
}

/// Builds every transaction of the plan but the coinbase, in block order.
pub fn build_txs(plan: &BlockPlan, scripts: &Scripts) -> Vec<Built> {
    let mut built: Vec<Option<Built>> = (0..plan.txs.len()).map(|_| None).collect();
    for wave in 0..=plan.waves {
        let done = &built;
        let made: Vec<(usize, Built)> = plan
            .txs
            .par_iter()
            .enumerate()
            .filter(|(_, t)| t.wave == wave)
            .map(|(i, t)| (i, build_tx(plan, t, done, scripts)))
            .collect();
        for (i, b) in made {
            built[i] = Some(b);
        }
    }
    built.into_iter().map(|b| b.expect("every wave was built")).collect()
}

fn build_tx(plan: &BlockPlan, tx: &TxPlan, done: &[Option<Built>], scripts: &Scripts) -> Built {
    let mut rng = fastrand::Rng::with_seed(tx.seed);
    let spends = &plan.spends[tx.inputs.clone()];
    let outs = &plan.outs[tx.outputs.clone()];
    let segwit = spends.iter().any(|s| s.script.has_witness());
    let mut raw = Vec::with_capacity(64 + spends.len() * 150 + outs.len() * 40);
    raw.extend_from_slice(&tx.version.to_le_bytes());
    if segwit {
        raw.extend_from_slice(&[0, 1]);
    }
    let io_start = raw.len();
    put_compact_size(&mut raw, spends.len() as u64);
    let mut sig = Vec::with_capacity(300);
    for s in spends {
        let (txid, vout) = match s.prev {
            Prev::Out { txid, vout } => (txid, vout),
            Prev::Local { tx, vout } => {
                (done[tx as usize].as_ref().expect("parents are built in an earlier wave").txid, vout)
            }
        };
        raw.extend_from_slice(&txid);
        raw.extend_from_slice(&vout.to_le_bytes());
        sig.clear();
        scripts.put_script_sig(s.script, &mut rng, &mut sig);
        put_compact_size(&mut raw, sig.len() as u64);
        raw.extend_from_slice(&sig);
        let sequence: u32 = if tx.rbf { 0xffff_fffd } else { 0xffff_ffff };
        raw.extend_from_slice(&sequence.to_le_bytes());
    }
    put_outputs(&mut raw, outs.iter().map(|o| (o.value, o.script)), scripts, &mut rng, None);
    let io_end = raw.len();
    if segwit {
        for s in spends {
            scripts.put_witness(s.script, s.inscription, &mut rng, &mut raw);
        }
    }
    let lock_at = raw.len();
    raw.extend_from_slice(&tx.lock_time.to_le_bytes());
    let (txid, wtxid) = hash_tx(&raw, segwit, io_start, io_end, lock_at);

    let mut undo = Vec::with_capacity(spends.len() * 40);
    put_compact_size(&mut undo, spends.len() as u64);
    let mut script = Vec::with_capacity(80);
    for s in spends {
        script.clear();
        scripts.put(s.script, &mut script);
        put_coin(&mut undo, s.height, s.coinbase, s.value, &script);
    }
    Built { raw, txid, wtxid, undo }
}

fn put_outputs(
    raw: &mut Vec<u8>,
    outs: impl ExactSizeIterator<Item = (u64, OutScript)>,
    scripts: &Scripts,
    rng: &mut fastrand::Rng,
    commitment: Option<&[u8; 32]>,
) {
    put_compact_size(raw, outs.len() as u64);
    for (value, script) in outs {
        raw.extend_from_slice(&value.to_le_bytes());
        match script {
            OutScript::Pay(id) => {
                raw.push(id.len() as u8);
                scripts.put(id, raw);
            }
            OutScript::Data(len) if len <= 75 => {
                raw.extend_from_slice(&[len + 2, 0x6a, len]);
                put_random(rng, raw, len as usize);
            }
            OutScript::Data(len) => {
                raw.extend_from_slice(&[len + 3, 0x6a, 0x4c, len]);
                put_random(rng, raw, len as usize);
            }
            OutScript::WitnessCommitment => {
                raw.extend_from_slice(&[38, 0x6a, 36, 0xaa, 0x21, 0xa9, 0xed]);
                raw.extend_from_slice(commitment.expect("a commitment for the coinbase"));
            }
        }
    }
}

/// (txid, wtxid) of a serialized transaction: the txid leaves out marker, flag and witness.
fn hash_tx(raw: &[u8], segwit: bool, io_start: usize, io_end: usize, lock_at: usize) -> ([u8; 32], [u8; 32]) {
    if !segwit {
        let id = sha256d(&[raw]);
        return (id, id);
    }
    (sha256d(&[&raw[..4], &raw[io_start..io_end], &raw[lock_at..]]), sha256d(&[raw]))
}

/// The coinbase: BIP-0034 height and the extra nonce in its scriptSig, the plan's payouts, and
/// in a segwit block the commitment to the wtxids (with the witness reserved value, zeros).
fn build_coinbase(plan: &BlockPlan, txs: &[Built], scripts: &Scripts) -> ([u8; 32], Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(plan.tag);
    let mut raw = Vec::with_capacity(300);
    let version: i32 = if plan.segwit { 2 } else { 1 };
    raw.extend_from_slice(&version.to_le_bytes());
    if plan.segwit {
        raw.extend_from_slice(&[0, 1]);
    }
    let io_start = raw.len();
    raw.push(1);
    raw.extend_from_slice(&[0; 32]);
    raw.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut sig = Vec::with_capacity(40);
    put_script_num(&mut sig, plan.height as i64);
    sig.push(8);
    sig.extend_from_slice(&plan.tag.to_le_bytes());
    sig.push(12);
    sig.extend_from_slice(b"/gen-blocks/");
    raw.push(sig.len() as u8);
    raw.extend_from_slice(&sig);
    raw.extend_from_slice(&u32::MAX.to_le_bytes());
    let commitment = plan.segwit.then(|| {
        let mut leaves = Vec::with_capacity(txs.len() + 1);
        leaves.push([0u8; 32]); // the coinbase's wtxid
        leaves.extend(txs.iter().map(|t| t.wtxid));
        sha256d(&[&merkle::root(leaves), &[0u8; 32]])
    });
    put_outputs(
        &mut raw,
        plan.coinbase.iter().map(|o| (o.value, o.script)),
        scripts,
        &mut rng,
        commitment.as_ref(),
    );
    let io_end = raw.len();
    if plan.segwit {
        raw.extend_from_slice(&[1, 32]);
        raw.extend_from_slice(&[0; 32]);
    }
    let lock_at = raw.len();
    raw.extend_from_slice(&0u32.to_le_bytes());
    (hash_tx(&raw, plan.segwit, io_start, io_end, lock_at).0, raw)
}

/// A number as a script push (CScriptNum): OP_0, OP_1–OP_16, else minimal little-endian bytes.
fn put_script_num(out: &mut Vec<u8>, n: i64) {
    match n {
        0 => out.push(0x00),
        1..=16 => out.push(0x50 + n as u8),
        _ => {
            let mut bytes = Vec::new();
            let mut a = n.unsigned_abs();
            while a > 0 {
                bytes.push(a as u8);
                a >>= 8;
            }
            if bytes.last().unwrap() & 0x80 != 0 {
                bytes.push(if n < 0 { 0x80 } else { 0 });
            } else if n < 0 {
                *bytes.last_mut().unwrap() |= 0x80;
            }
            out.push(bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
    }
}

/// The block of a plan and its built transactions, on top of `prev`.
pub fn assemble(plan: &BlockPlan, txs: Vec<Built>, prev: BlockHash, scripts: &Scripts) -> BuiltBlock {
    let (coinbase_txid, coinbase) = build_coinbase(plan, &txs, scripts);
    let mut txids = Vec::with_capacity(txs.len() + 1);
    txids.push(coinbase_txid);
    txids.extend(txs.iter().map(|t| t.txid));
    let (root, undo) = rayon::join(|| merkle::root(txids.clone()), || undo_record(&txs, &prev));
    let mut header = [0u8; 80];
    header[..4].copy_from_slice(&plan.version.to_le_bytes());
    header[4..36].copy_from_slice(prev.as_byte_array());
    header[36..68].copy_from_slice(&root);
    header[68..72].copy_from_slice(&plan.time.to_le_bytes());
    header[72..76].copy_from_slice(&REGTEST_BITS.to_le_bytes());
    let hash = grind(&mut header);
    let size = 80 + 5 + coinbase.len() + txs.iter().map(|t| t.raw.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&header);
    put_compact_size(&mut bytes, txids.len() as u64);
    bytes.extend_from_slice(&coinbase);
    for t in &txs {
        bytes.extend_from_slice(&t.raw);
    }
    BuiltBlock { height: plan.height, hash, bytes, undo: Some(undo), txids }
}

/// CBlockUndo of the block's transactions, and its checksum.
fn undo_record(txs: &[Built], prev: &BlockHash) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + txs.iter().map(|t| t.undo.len()).sum::<usize>() + 32);
    put_compact_size(&mut payload, txs.len() as u64);
    for t in txs {
        payload.extend_from_slice(&t.undo);
    }
    let sum = blkindex_shared::undo::checksum(prev, &payload);
    payload.extend_from_slice(&sum);
    payload
}

/// Sets the nonce so the header meets regtest's target (every other hash does) and returns the
/// block hash. The indexer does not check proof of work; a node would.
fn grind(header: &mut [u8; 80]) -> BlockHash {
    let target = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS));
    for nonce in 0u32.. {
        header[76..].copy_from_slice(&nonce.to_le_bytes());
        let hash = BlockHash::from_byte_array(sha256d(&[header.as_slice()]));
        if target.is_met_by(hash) {
            return hash;
        }
    }
    unreachable!("a nonce meets regtest's target within a few tries")
}

/// Regtest's genesis block as Core stores it.
pub fn genesis() -> BuiltBlock {
    let block = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
    let txid = block.txdata[0].compute_txid().to_byte_array();
    BuiltBlock {
        height: 0,
        hash: block.block_hash(),
        bytes: bitcoin::consensus::serialize(&block),
        undo: None,
        txids: vec![txid],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockgen::plan::Planner;

    /// Blocks of the builder decode with the bitcoin crate to what was meant: txids and wtxids,
    /// the merkle root and the witness commitment, proof of work, values, and the heights in
    /// coinbases.
    #[test]
    fn built_blocks_are_valid_for_the_bitcoin_crate() {
        let scripts = Scripts::new(9);
        let mut planner = Planner::new(9, 100_000);
        let mut prev = genesis().hash;
        let mut seen_segwit = false;
        for height in 1..=140u32 {
            // Mainnet heights through every era, in 140 blocks, small ones early.
            let m = if height < 110 {
                height as f64 * 900.0
            } else {
                100_000.0 + (height - 110) as f64 * 28_000.0
            };
            let plan = planner.plan_block(height, m, false, None);
            let built = build_txs(&plan, &scripts);
            let block = assemble(&plan, built, prev, &scripts);
            // The pool gets the block's outputs, as the generator does.
            super::super::register(&mut planner, &plan, &block.txids);
            let decoded: bitcoin::Block = bitcoin::consensus::deserialize(&block.bytes).unwrap();
            assert_eq!(decoded.block_hash(), block.hash);
            assert_eq!(decoded.header.prev_blockhash, prev);
            assert!(decoded.check_merkle_root(), "height {height}");
            assert!(decoded.check_witness_commitment(), "height {height}");
            decoded.header.validate_pow(decoded.header.target()).unwrap();
            if plan.version >= 2 {
                assert_eq!(decoded.bip34_block_height().unwrap(), height as u64);
            }
            for (tx, txid) in decoded.txdata.iter().zip(&block.txids) {
                assert_eq!(tx.compute_txid().to_byte_array(), *txid);
                seen_segwit |= tx.input.iter().any(|i| !i.witness.is_empty()) && !tx.is_coinbase();
            }
            let value: u64 = decoded.txdata[0].output.iter().map(|o| o.value.to_sat()).sum();
            assert!(value >= super::super::plan::subsidy(height));
            prev = block.hash;
        }
        assert!(seen_segwit);
    }

    #[test]
    fn script_numbers_are_minimal() {
        for (n, hex) in [
            (0i64, "00"),
            (1, "51"),
            (16, "60"),
            (17, "0111"),
            (127, "017f"),
            (128, "028000"),
            (255, "02ff00"),
            (256, "020001"),
            (-1, "0181"),
            (500_000, "0320a107"),
        ] {
            let mut out = Vec::new();
            put_script_num(&mut out, n);
            assert_eq!(hex::encode(&out), hex, "{n}");
        }
    }
}
