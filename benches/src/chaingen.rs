//! Builds blocks of realistic transactions for a regtest chain, fast: transactions are built and
//! signed here with the `bitcoin` crate (wallet RPC is far too slow); callers hand the blocks to a
//! node with `submitblock`.
//!
//! Mix, shaped after mainnet's averages (about 2.6 inputs and 3 outputs per transaction): P2WPKH,
//! P2TR key-path, P2PKH and P2SH-P2WPKH coins; 1 to 20 inputs; change, small batches and payouts
//! of 10–30 outputs; 70% of outputs to fresh keys, 30% to 20,000 reused keys with a heavy head (a
//! few very popular addresses); spends of parents earlier in the same block. Deterministic for a
//! seed. The node must start at height 0.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak, TweakedKeypair};
use bitcoin::script::PushBytesBuf;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxMerkleNode, TxOut, Witness, WitnessMerkleNode,
};
use rayon::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wpkh,
    Tr,
    Pkh,
    ShWpkh,
}

struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
    tweaked: TweakedKeypair,
    kind: Kind,
    spk: ScriptBuf,
}

#[derive(Clone)]
struct Coin {
    outpoint: OutPoint,
    value: u64,
    key: Arc<Key>,
}

/// Keys that receive again and again.
const REUSED_KEYS: u64 = 20_000;
/// Fresh keys are made in parallel, this many at a time.
const KEY_BATCH: u64 = 50_000;

fn make_keys(secp: &Secp256k1<bitcoin::secp256k1::All>, from: u64, n: u64) -> Vec<Arc<Key>> {
    (from..from + n)
        .into_par_iter()
        .map(|i| {
            let mut b = [0x11u8; 32];
            b[..8].copy_from_slice(&(i + 1).to_be_bytes());
            let sk = SecretKey::from_slice(&b).unwrap();
            let pk = CompressedPublicKey(sk.public_key(secp));
            let kind = match (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59) % 20 {
                0..=9 => Kind::Wpkh,
                10..=14 => Kind::Tr,
                15..=17 => Kind::Pkh,
                _ => Kind::ShWpkh,
            };
            let keypair = Keypair::from_secret_key(secp, &sk);
            let tweaked = keypair.tap_tweak(secp, None);
            let spk = match kind {
                Kind::Wpkh => ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()),
                Kind::Tr => ScriptBuf::new_p2tr(secp, keypair.x_only_public_key().0, None),
                Kind::Pkh => ScriptBuf::new_p2pkh(&pk.pubkey_hash()),
                Kind::ShWpkh => ScriptBuf::new_p2sh(&ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()).script_hash()),
            };
            Arc::new(Key { sk, pk, tweaked, kind, spk })
        })
        .collect()
}

impl Key {
    /// The scriptSig that does not depend on a signature: the P2WPKH redeem script of P2SH-P2WPKH.
    fn nested_script_sig(&self) -> ScriptBuf {
        if self.kind != Kind::ShWpkh {
            return ScriptBuf::new();
        }
        let mut push = PushBytesBuf::new();
        push.extend_from_slice(ScriptBuf::new_p2wpkh(&self.pk.wpubkey_hash()).as_bytes()).unwrap();
        bitcoin::script::Builder::new().push_slice(push).into_script()
    }
}

fn input_vsize(kind: Kind) -> u64 {
    match kind {
        Kind::Wpkh => 68,
        Kind::Tr => 58,
        Kind::Pkh => 148,
        Kind::ShWpkh => 91,
    }
}

fn input_size(kind: Kind) -> u64 {
    match kind {
        Kind::Wpkh => 41 + 108,
        Kind::Tr => 41 + 66,
        Kind::Pkh => 41 + 107,
        Kind::ShWpkh => 41 + 23 + 108,
    }
}

/// A transaction waiting for signatures, with the keys and amounts of what it spends.
struct Unsigned {
    tx: Transaction,
    spent: Vec<(Arc<Key>, TxOut)>,
}

fn sign(secp: &Secp256k1<bitcoin::secp256k1::All>, u: &mut Unsigned) {
    let prevouts: Vec<TxOut> = u.spent.iter().map(|(_, o)| o.clone()).collect();
    let mut sigs: Vec<(ScriptBuf, Witness)> = Vec::with_capacity(u.spent.len());
    {
        let mut cache = SighashCache::new(&u.tx);
        for (i, (key, out)) in u.spent.iter().enumerate() {
            let wpkh = ScriptBuf::new_p2wpkh(&key.pk.wpubkey_hash());
            let ecdsa = |hash: [u8; 32]| {
                let sig = secp.sign_ecdsa(&Message::from_digest(hash), &key.sk);
                bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All }
            };
            match key.kind {
                Kind::Wpkh | Kind::ShWpkh => {
                    let h = cache.p2wpkh_signature_hash(i, &wpkh, out.value, EcdsaSighashType::All).unwrap();
                    let w = Witness::p2wpkh(&ecdsa(h.to_byte_array()), &key.pk.0);
                    sigs.push((key.nested_script_sig(), w));
                }
                Kind::Tr => {
                    let h = cache
                        .taproot_key_spend_signature_hash(
                            i,
                            &Prevouts::All(&prevouts),
                            TapSighashType::Default,
                        )
                        .unwrap();
                    let sig = secp.sign_schnorr_no_aux_rand(
                        &Message::from_digest(h.to_byte_array()),
                        &key.tweaked.to_keypair(),
                    );
                    let sig =
                        bitcoin::taproot::Signature { signature: sig, sighash_type: TapSighashType::Default };
                    sigs.push((ScriptBuf::new(), Witness::p2tr_key_spend(&sig)));
                }
                Kind::Pkh => {
                    let h = cache
                        .legacy_signature_hash(i, &out.script_pubkey, EcdsaSighashType::All.to_u32())
                        .unwrap();
                    let sig = ecdsa(h.to_byte_array());
                    let ss = bitcoin::script::Builder::new()
                        .push_slice(sig.serialize())
                        .push_key(&key.pk.into())
                        .into_script();
                    sigs.push((ss, Witness::new()));
                }
            }
        }
    }
    for (input, (ss, w)) in u.tx.input.iter_mut().zip(sigs) {
        input.script_sig = ss;
        input.witness = w;
    }
}

struct Gen {
    rng: fastrand::Rng,
    secp: Secp256k1<bitcoin::secp256k1::All>,
    reused: Vec<Arc<Key>>,
    fresh: Vec<Arc<Key>>,
    next_key: u64,
    pool: Vec<Coin>,
    /// Coinbase coins by the height at which they mature.
    maturing: std::collections::VecDeque<(u32, Coin)>,
}

impl Gen {
    fn fresh_key(&mut self) -> Arc<Key> {
        if self.fresh.is_empty() {
            self.fresh = make_keys(&self.secp, self.next_key, KEY_BATCH);
            self.next_key += KEY_BATCH;
        }
        self.fresh.pop().unwrap()
    }

    /// 30% to a reused key (u⁴ puts a heavy head on the first few), else a fresh one.
    fn pick_key(&mut self) -> Arc<Key> {
        if self.rng.u32(0..10) < 3 {
            let u = self.rng.f64();
            self.reused[((u * u * u * u) * REUSED_KEYS as f64) as usize].clone()
        } else {
            self.fresh_key()
        }
    }

    /// Builds one transaction from the pool; returns it with its estimated size and the keys of
    /// its outputs.
    fn build_tx(&mut self) -> Option<(Unsigned, u64, Vec<Arc<Key>>)> {
        if self.pool.is_empty() {
            return None;
        }
        let want_in = match self.rng.u32(0..100) {
            0..=49 => 1,
            50..=74 => 2,
            75..=91 => self.rng.usize(3..6),
            _ => self.rng.usize(6..21),
        };
        let mut inputs = Vec::new();
        let mut total = 0u64;
        while (inputs.len() < want_in || total < 20_000) && !self.pool.is_empty() {
            let i = self.rng.usize(0..self.pool.len());
            let c = self.pool.swap_remove(i);
            total += c.value;
            inputs.push(c);
        }
        let n_out = if total < 50_000 {
            1
        } else {
            match self.rng.u32(0..100) {
                0..=9 => 1,
                10..=79 => 2,
                80..=94 => self.rng.usize(3..6),
                _ => self.rng.usize(10..31),
            }
        };
        let vsize: u64 = 11 + inputs.iter().map(|c| input_vsize(c.key.kind)).sum::<u64>() + 34 * n_out as u64;
        let fee = vsize * self.rng.u64(1..6);
        if total <= fee + 1000 * n_out as u64 {
            // Too small to split: keep the coins for a consolidation later.
            self.pool.extend(inputs);
            return None;
        }
        let mut remaining = total - fee;
        let mut outputs = Vec::with_capacity(n_out);
        for j in 0..n_out {
            // Never more than an even share, so every later output keeps at least 1000 sats.
            let left = (n_out - j) as u64;
            let v = if left == 1 { remaining } else { self.rng.u64(546..=(remaining / left).max(546)) };
            remaining -= v;
            let key = self.pick_key();
            outputs.push((key, v));
        }
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|c| TxIn {
                    previous_output: c.outpoint,
                    // P2SH-P2WPKH's scriptSig is known before signing, so its txid is too.
                    script_sig: c.key.nested_script_sig(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs
                .iter()
                .map(|(k, v)| TxOut { value: Amount::from_sat(*v), script_pubkey: k.spk.clone() })
                .collect(),
        };
        let size = 10
            + inputs.iter().map(|c| input_size(c.key.kind)).sum::<u64>()
            + tx.output.iter().map(|o| 9 + o.script_pubkey.len() as u64).sum::<u64>();
        let spent = inputs
            .into_iter()
            .map(|c| {
                let out = TxOut { value: Amount::from_sat(c.value), script_pubkey: c.key.spk.clone() };
                (c.key, out)
            })
            .collect();
        let out_keys = outputs.into_iter().map(|(k, _)| k).collect();
        Some((Unsigned { tx, spent }, size, out_keys))
    }

    fn is_legacy(&self, u: &Unsigned) -> bool {
        u.spent.iter().any(|(k, _)| k.kind == Kind::Pkh)
    }

    fn add_outputs(&mut self, tx: &Transaction, keys_of: &[Arc<Key>]) {
        let txid = tx.compute_txid();
        for (vout, (out, key)) in tx.output.iter().zip(keys_of).enumerate() {
            let outpoint = OutPoint { txid, vout: vout as u32 };
            self.pool.push(Coin { outpoint, value: out.value.to_sat(), key: key.clone() });
        }
    }
}

fn coinbase(height: u32, value: u64, spk: &ScriptBuf, commitment: Option<[u8; 32]>) -> Transaction {
    let script_sig =
        bitcoin::script::Builder::new().push_int(height as i64).push_slice(b"blkindex-bench").into_script();
    let mut output = vec![TxOut { value: Amount::from_sat(value), script_pubkey: spk.clone() }];
    let mut witness = Witness::new();
    if let Some(c) = commitment {
        let mut data = vec![0xaa, 0x21, 0xa9, 0xed];
        data.extend_from_slice(&c);
        let mut push = PushBytesBuf::new();
        push.extend_from_slice(&data).unwrap();
        output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(push) });
        witness.push([0u8; 32]);
    }
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn { previous_output: OutPoint::null(), script_sig, sequence: Sequence::MAX, witness }],
        output,
    }
}

fn subsidy(height: u32) -> u64 {
    let halvings = height / 150;
    if halvings >= 64 {
        0
    } else {
        5_000_000_000u64 >> halvings
    }
}

/// Makes the blocks of a chain from genesis, one after another.
pub struct ChainGen {
    g: Gen,
    prev: BlockHash,
    height: u32,
    time0: u32,
}

impl ChainGen {
    /// A generator for the chain on top of `genesis` (the node must be at height 0).
    pub fn new(seed: u64, genesis: BlockHash) -> Self {
        let secp = Secp256k1::new();
        let reused = make_keys(&secp, 1 << 40, REUSED_KEYS);
        let g = Gen {
            rng: fastrand::Rng::with_seed(seed),
            secp,
            reused,
            fresh: Vec::new(),
            next_key: 0,
            pool: Vec::new(),
            maturing: Default::default(),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32;
        ChainGen { g, prev: genesis, height: 0, time0: now - 7200 }
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Spendable coins the generator holds.
    pub fn pool_len(&self) -> usize {
        self.g.pool.len()
    }

    /// The next block, of about `block_target` serialized bytes (fewer while coins are scarce).
    pub fn next_block(&mut self, block_target: u64) -> Result<Block> {
        self.height += 1;
        let height = self.height;
        let g = &mut self.g;
        while g.maturing.front().is_some_and(|(h, _)| *h <= height) {
            let (_, c) = g.maturing.pop_front().unwrap();
            g.pool.push(c);
        }
        // Build: segwit-only transactions' outputs are spendable later in the same block.
        let mut txs: Vec<(Unsigned, Vec<Arc<Key>>)> = Vec::new();
        let mut later: Vec<usize> = Vec::new();
        let mut size = 200u64;
        let mut misses = 0;
        while size < block_target && misses < 50 {
            let Some((u, s, out_keys)) = g.build_tx() else {
                misses += 1;
                continue;
            };
            if g.is_legacy(&u) {
                later.push(txs.len());
            } else {
                g.add_outputs(&u.tx, &out_keys);
            }
            size += s;
            txs.push((u, out_keys));
        }
        let secp = &g.secp;
        txs.par_iter_mut().for_each(|(u, _)| sign(secp, u));
        for &i in &later {
            let (u, keys_of) = &txs[i];
            let (tx, keys_of) = (u.tx.clone(), keys_of.clone());
            g.add_outputs(&tx, &keys_of);
        }
        let fees: u64 = txs
            .iter()
            .map(|(u, _)| {
                u.spent.iter().map(|(_, o)| o.value.to_sat()).sum::<u64>()
                    - u.tx.output.iter().map(|o| o.value.to_sat()).sum::<u64>()
            })
            .sum();
        let cb_key = g.fresh_key();
        let mut body: Vec<Transaction> = txs.into_iter().map(|(u, _)| u.tx).collect();
        let has_witness = !body.is_empty();
        let mut block_txs = vec![coinbase(height, subsidy(height) + fees, &cb_key.spk, None)];
        block_txs.append(&mut body);
        if has_witness {
            let mut probe = Block {
                header: Header {
                    version: BlockVersion::from_consensus(0x2000_0000),
                    prev_blockhash: self.prev,
                    merkle_root: TxMerkleNode::all_zeros(),
                    time: 0,
                    bits: CompactTarget::from_consensus(0x207f_ffff),
                    nonce: 0,
                },
                txdata: block_txs,
            };
            probe.txdata[0] = coinbase(height, subsidy(height) + fees, &cb_key.spk, Some([0; 32]));
            let root: WitnessMerkleNode = probe.witness_root().context("witness root")?;
            let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
            probe.txdata[0] =
                coinbase(height, subsidy(height) + fees, &cb_key.spk, Some(commitment.to_byte_array()));
            block_txs = probe.txdata;
        }
        let cb = &block_txs[0];
        g.maturing.push_back((
            height + 100,
            Coin {
                outpoint: OutPoint { txid: cb.compute_txid(), vout: 0 },
                value: cb.output[0].value.to_sat(),
                key: cb_key,
            },
        ));
        let mut block = Block {
            header: Header {
                version: BlockVersion::from_consensus(0x2000_0000),
                prev_blockhash: self.prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time: self.time0 + height,
                bits: CompactTarget::from_consensus(0x207f_ffff),
                nonce: 0,
            },
            txdata: block_txs,
        };
        block.header.merkle_root = block.compute_merkle_root().context("merkle root")?;
        let target_value = block.header.target();
        while target_value.is_met_by(block.header.block_hash()).then_some(()).is_none() {
            block.header.nonce += 1;
        }
        self.prev = block.block_hash();
        Ok(block)
    }
}
