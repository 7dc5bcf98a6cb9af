//! Silent payments (BIP352): which transactions a receiver must look at, the tweak each one
//! carries, and a receiver's check of a transaction against its keys.
//!
//! The index keeps, per block, every eligible transaction as a [`TweakedTx`]: its number, its
//! tweak `input_hash·A` (stored uncompressed, so that a scan does not pay a square root per
//! transaction to lift it) and the first 8 bytes of each taproot output key. A scan for a receiver
//! computes `P_0` (and `P_0` plus each label) from the tweak and its scan key and looks for its
//! prefix among the outputs ([`Receiver::matches`]); a candidate is then checked on the
//! transaction itself ([`Receiver::paid_outputs`]).
//!
//! Curve arithmetic is libsecp256k1's (the `secp256k1` crate `bitcoin` re-exports):
//! `PublicKey::mul_tweak` for a point times a scalar (libsecp256k1's `ecmult`, variable time) and,
//! for `P + t·G`, a sum of table points (`plus_times_g`): one precomputed `d·256^i·G` per non-zero
//! byte of `t`, added in one `PublicKey::combine_keys` (additions, then one inversion). That is
//! about half the cost of the generator comb (`from_secret_key`) and of `add_exp_tweak`, whose
//! `ecmult` doubles its way through `t` (`scripts/bench-sp-scan.sh` times all three).
//!
//! Both are variable time in secrets of the receiver's (the scan key, `t_k`), as a scan must be to
//! be fast: a process sharing the server's CPU could time them. The server holds the scan keys it
//! is given in memory, so it is trusted with them in any case.

use std::sync::LazyLock;

use bitcoin::hashes::{hash160, Hash};
use bitcoin::secp256k1::{PublicKey, Scalar, Secp256k1, SecretKey, SignOnly, VerifyOnly};
use bitcoin::{Script, Transaction};
use sha2::{Digest, Sha256};

use crate::network::Net;
use crate::parse;
use crate::schema::TxNum;

/// The point `input_hash·A` of an eligible transaction (BIP352), compressed: as the protocol
/// sends it.
pub type Tweak = [u8; 33];
/// The first 8 bytes of a taproot output's x-only key.
pub type OutputPrefix = [u8; 8];

/// An eligible transaction as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TweakedTx {
    pub txnum: TxNum,
    pub tweak: PublicKey,
    pub outputs: Vec<OutputPrefix>,
}

/// Point tweaks and additions.
static SECP: LazyLock<Secp256k1<VerifyOnly>> = LazyLock::new(Secp256k1::verification_only);
/// `t·G` through the generator comb (output keys, label points, the address's scan key).
static GEN: LazyLock<Secp256k1<SignOnly>> = LazyLock::new(Secp256k1::signing_only);

/// BIP341's NUMS point H, the x-only internal key of a taproot output with no key path: a
/// script-path spend from it proves no key, so it contributes nothing to `A`.
const NUMS_H: [u8; 32] = [
    0x50, 0x92, 0x9b, 0x74, 0xc1, 0xa0, 0x49, 0x54, 0xb7, 0x8b, 0x4b, 0x60, 0x35, 0xe9, 0x7a, 0x5e, 0x07,
    0x8a, 0x5a, 0x0f, 0x28, 0xec, 0x96, 0xd5, 0x47, 0xbf, 0xee, 0x9a, 0xce, 0x80, 0x3a, 0xc0,
];

/// A receiver stops looking for further outputs of one transaction after this many (BIP352's
/// per-group recipient limit in its reference code).
const K_MAX: u32 = 1000;

/// The three BIP340-style tagged hashes BIP352 uses; each hasher starts from the state after
/// `sha256(tag) ‖ sha256(tag)` (one block), computed once.
#[derive(Clone, Copy)]
enum Tag {
    Inputs,
    SharedSecret,
    Label,
}

fn tagged(tag: Tag, parts: &[&[u8]]) -> [u8; 32] {
    static STATES: LazyLock<[Sha256; 3]> = LazyLock::new(|| {
        ["BIP0352/Inputs", "BIP0352/SharedSecret", "BIP0352/Label"].map(|t| {
            let h = Sha256::digest(t.as_bytes());
            let mut s = Sha256::new();
            s.update(h);
            s.update(h);
            s
        })
    });
    let mut s = STATES[tag as usize].clone();
    for p in parts {
        s.update(p);
    }
    s.finalize().into()
}

/// Witness programs of version 2 to 16 (OP_2..OP_16, then a 2–40-byte push): BIP352 skips a
/// transaction spending one, since a future version's keys cannot be known.
fn is_future_witness(script: &[u8]) -> bool {
    let n = script.len();
    (4..=42).contains(&n) && (0x52..=0x60).contains(&script[0]) && script[1] as usize == n - 2
}

/// The 33 bytes of what may be a compressed public key (uncompressed keys are not used by
/// BIP352): whether they are a point is checked by [`TweakInputs::tweak`].
fn compressed(bytes: &[u8]) -> Option<[u8; 33]> {
    bytes.try_into().ok()
}

/// Whether an input spending `spent` can give a key: the types [`input_key`] reads one from. A
/// transaction none of whose inputs can is not eligible, which needs no decoding to know.
pub fn may_give_key(spent: &Script) -> bool {
    spent.is_p2pkh() || spent.is_p2sh() || spent.is_p2wpkh() || spent.is_p2tr()
}

/// What BIP352 reads of a spending transaction: implemented by `bitcoin::Transaction` (the
/// server's mempool, the tests) and by [`parse::Spends`], a transaction's bytes read in place (the
/// indexer's, which would otherwise spend most of its candidates' time deserializing them).
pub trait Spending {
    fn input_count(&self) -> usize;
    /// Input i's outpoint, serialized (txid as stored ‖ vout little-endian).
    fn outpoint(&self, i: usize) -> [u8; 36];
    fn script_sig(&self, i: usize) -> &[u8];
    /// Input i's number of witness items, its last item and the one before it.
    fn witness_tail(&self, i: usize) -> (usize, Option<&[u8]>, Option<&[u8]>);
    fn output_scripts(&self) -> impl Iterator<Item = &Script>;

    fn is_coinbase(&self) -> bool {
        let mut null = [0u8; 36];
        null[32..].copy_from_slice(&u32::MAX.to_le_bytes());
        self.input_count() == 1 && self.outpoint(0) == null
    }
}

impl Spending for Transaction {
    fn input_count(&self) -> usize {
        self.input.len()
    }

    fn outpoint(&self, i: usize) -> [u8; 36] {
        let mut o = [0u8; 36];
        o[..32].copy_from_slice(self.input[i].previous_output.txid.as_byte_array());
        o[32..].copy_from_slice(&self.input[i].previous_output.vout.to_le_bytes());
        o
    }

    fn script_sig(&self, i: usize) -> &[u8] {
        self.input[i].script_sig.as_bytes()
    }

    fn witness_tail(&self, i: usize) -> (usize, Option<&[u8]>, Option<&[u8]>) {
        let w = &self.input[i].witness;
        (w.len(), w.last(), w.second_to_last())
    }

    fn output_scripts(&self) -> impl Iterator<Item = &Script> {
        self.output.iter().map(|o| o.script_pubkey.as_script())
    }
}

impl Spending for parse::Spends<'_> {
    fn input_count(&self) -> usize {
        self.inputs.len()
    }

    fn outpoint(&self, i: usize) -> [u8; 36] {
        *self.inputs[i].outpoint
    }

    fn script_sig(&self, i: usize) -> &[u8] {
        self.inputs[i].script_sig
    }

    fn witness_tail(&self, i: usize) -> (usize, Option<&[u8]>, Option<&[u8]>) {
        let input = &self.inputs[i];
        (input.witness_items, input.witness_last, input.witness_before_last)
    }

    fn output_scripts(&self) -> impl Iterator<Item = &Script> {
        self.outputs.iter().map(|s| Script::from_bytes(s))
    }
}

/// The key input `i` contributes to `A`, compressed, if its type is one BIP352 reads one from;
/// not yet checked to be a point (bytes only, no curve arithmetic).
fn input_key(tx: &impl Spending, i: usize, spent: &Script) -> Option<[u8; 33]> {
    let spk = spent.as_bytes();
    let (items, last, before_last) = tx.witness_tail(i);
    if spent.is_p2pkh() {
        // The key is the last push of a standard scriptSig, but a malleated one can hold it
        // anywhere: any 33 bytes of the scriptSig that hash to the spent hash, from the end.
        let sig = tx.script_sig(i);
        let want = &spk[3..23];
        return (33..=sig.len())
            .rev()
            .map(|end| &sig[end - 33..end])
            .find(|w| hash160::Hash::hash(w).as_byte_array() == want)
            .and_then(compressed);
    }
    if spent.is_p2sh() {
        // P2SH-P2WPKH: the scriptSig is one push of the 22-byte v0 key-hash program.
        let sig = tx.script_sig(i);
        let wrapped_p2wpkh = sig.len() == 23 && sig[0] == 22 && sig[1] == 0x00 && sig[2] == 0x14;
        return if wrapped_p2wpkh { last.and_then(compressed) } else { None };
    }
    if spent.is_p2wpkh() {
        return last.and_then(compressed);
    }
    if spent.is_p2tr() {
        let last = last?;
        // Without the annex (a last item starting 0x50, when there are two or more), the stack's
        // size and its last item.
        let (items, top) = match items > 1 && last.first() == Some(&0x50) {
            true => (items - 1, before_last.unwrap_or_default()),
            false => (items, last),
        };
        // A script-path spend: the last item is the control block, whose bytes 1..33 are the
        // internal key.
        if items > 1 && top.get(1..33) == Some(&NUMS_H[..]) {
            return None;
        }
        // Key path or script path alike, the output key (x-only, even Y) is the input's key:
        // as the compressed key 02 ‖ x, lifted with one square root when parsed
        // (`XOnlyPublicKey::from_slice` then `public_key(Even)` would lift it twice; a square
        // root is a fifth of a tweak's time, measured with perf).
        let mut even = [0x02u8; 33];
        even[1..].copy_from_slice(&spk[2..34]);
        return Some(even);
    }
    None
}

/// The smallest outpoint by its serialization (txid as stored, then vout little-endian).
fn smallest_outpoint(tx: &impl Spending) -> [u8; 36] {
    (0..tx.input_count()).map(|i| tx.outpoint(i)).min().expect("a transaction has inputs")
}

/// What a transaction's tweak is computed from, read from its bytes and spent scripts alone:
/// the bulk pass keeps these and computes the tweaks after the rest of the index is written
/// (their curve arithmetic is most of its time), the follower computes them at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TweakInputs {
    /// The smallest outpoint, serialized.
    pub outpoint: [u8; 36],
    /// The eligible inputs' keys, compressed (a taproot key as `02 ‖ x`), in input order; bytes
    /// that are no point are skipped when the tweak is computed, as BIP352 skips such an input.
    pub keys: Vec<[u8; 33]>,
}

impl TweakInputs {
    /// The inputs of `tx`'s tweak, or None if it is not eligible whatever its keys turn out to
    /// be. `spent[i]` is the scriptPubKey input i spends (a coinbase, or a `spent` of the wrong
    /// length, is not eligible).
    pub fn of(tx: &impl Spending, spent: &[&Script]) -> Option<TweakInputs> {
        if tx.input_count() == 0
            || tx.is_coinbase()
            || spent.len() != tx.input_count()
            || !tx.output_scripts().any(|s| s.is_p2tr())
        {
            return None;
        }
        if spent.iter().any(|s| is_future_witness(s.as_bytes())) {
            return None;
        }
        let keys: Vec<[u8; 33]> = (0..tx.input_count()).filter_map(|i| input_key(tx, i, spent[i])).collect();
        if keys.is_empty() {
            return None;
        }
        Some(TweakInputs { outpoint: smallest_outpoint(tx), keys })
    }

    /// BIP352's tweak `input_hash·A`, or None if the transaction is not eligible after all (no
    /// key is a point, or they sum to the point at infinity).
    pub fn tweak(&self) -> Option<PublicKey> {
        let keys: Vec<PublicKey> = self.keys.iter().filter_map(|k| PublicKey::from_slice(k).ok()).collect();
        if keys.is_empty() {
            return None;
        }
        let refs: Vec<&PublicKey> = keys.iter().collect();
        // The sum is the point at infinity: no shared secret exists, the transaction is skipped.
        let a = PublicKey::combine_keys(&refs).ok()?;
        let input_hash = tagged(Tag::Inputs, &[&self.outpoint, &a.serialize()]);
        // A hash at or above the curve order (probability ~2^-128) is no scalar: not eligible.
        let scalar = Scalar::from_be_bytes(input_hash).ok()?;
        a.mul_tweak(&SECP, &scalar).ok()
    }
}

/// BIP352's tweak of `tx`, or None if it is not eligible. `spent[i]` is the scriptPubKey input i
/// spends (a coinbase, or a `spent` of the wrong length, is not eligible).
pub fn tweak(tx: &impl Spending, spent: &[&Script]) -> Option<PublicKey> {
    TweakInputs::of(tx, spent)?.tweak()
}

/// Prefixes of the tx's taproot output keys, in output order.
pub fn output_prefixes(tx: &impl Spending) -> Vec<OutputPrefix> {
    tx.output_scripts().filter(|s| s.is_p2tr()).map(|s| s.as_bytes()[2..10].try_into().unwrap()).collect()
}

/// `t_k`: the tagged hash of the shared secret and k, as a secret key for `t_k·G` (None: zero or
/// not below the curve order, ~2^-128).
fn output_tweak(shared: &[u8; 33], k: u32) -> Option<SecretKey> {
    SecretKey::from_slice(&tagged(Tag::SharedSecret, &[shared, &k.to_be_bytes()])).ok()
}

/// `B_m + t_k·G`, the output key a sender makes for the k-th output to the (labelled) spend key
/// `b_m`. Shared with the tests' sending side.
pub(crate) fn output_key(b_m: &PublicKey, shared: &[u8; 33], k: u32) -> Option<PublicKey> {
    plus_times_g(b_m, &output_tweak(shared, k)?)
}

/// `d·(m+1)^i·base` at `[i·m + d − 1]`, for window i < `windows` and digit 1 ≤ d ≤ m, by
/// additions: the tables of `t·G` (bytes) and of a tweak's multiples (nibbles). No sum is
/// infinity while m·(m+1)^(windows−1) < n, the group's prime order, as for both.
fn window_multiples(base: PublicKey, windows: usize, m: usize) -> Vec<PublicKey> {
    let mut table = Vec::with_capacity(windows * m);
    let mut base = base;
    for i in 0..windows {
        let mut p = base;
        table.push(p);
        for _ in 1..m {
            p = p.combine(&base).expect("d·(m+1)^i·base, d ≤ m, is not infinity");
            table.push(p);
        }
        if i + 1 < windows {
            base = p.combine(&base).expect("(m+1)^(i+1)·base is not infinity");
        }
    }
    table
}

/// `d·256^i·G` at `[i·255 + d − 1]`, for byte position i (0 the least significant) and byte
/// value d ≥ 1: 8,160 points, 510 KiB, built once by additions (about 20 ms).
static G_BYTES: LazyLock<Vec<PublicKey>> = LazyLock::new(|| {
    let mut one = [0u8; 32];
    one[31] = 1;
    window_multiples(SecretKey::from_slice(&one).expect("1 is a scalar").public_key(&GEN), 32, 255)
});

/// `p + t·G`: p plus one `G_BYTES` point per non-zero byte of t (t < n, so the bytes are t's
/// digits exactly), at most 33 points summed in one `combine_keys`. None only if the sum is the
/// point at infinity (p = −t·G).
pub fn plus_times_g(p: &PublicKey, t: &SecretKey) -> Option<PublicKey> {
    let table = &*G_BYTES;
    let mut terms = [p; 33];
    let mut n = 1;
    for (i, &d) in t.secret_bytes().iter().rev().enumerate() {
        if d != 0 {
            terms[n] = &table[i * 255 + d as usize - 1];
            n += 1;
        }
    }
    PublicKey::combine_keys(&terms[..n]).ok()
}

/// Multiples of one transaction's tweak T, for checking it against many receivers at once (a new
/// block, a server's live subscriptions): `d·16^i·T` at `[i·15 + d − 1]` for nibble position i
/// and value d ≥ 1, 960 points (60 KiB). Built by additions (about 2.3 ms), it makes
/// `b_scan·T` a sum of at most 64 of them in one `combine_keys` (about 12 µs, against about 21–30
/// for `mul_tweak`'s `ecmult`, on the machine measured), so it pays from about 130 receivers on.
pub struct TweakTable(Vec<PublicKey>);

impl TweakTable {
    pub fn new(tweak: &PublicKey) -> TweakTable {
        TweakTable(window_multiples(*tweak, 64, 15))
    }

    /// `s·T` for a scalar s (big-endian, below n): one table point per non-zero nibble. None only
    /// for s = 0.
    fn times(&self, s: &[u8; 32]) -> Option<PublicKey> {
        let mut terms = [&self.0[0]; 64];
        let mut n = 0;
        for (i, &b) in s.iter().rev().enumerate() {
            for (at, d) in [(2 * i, b & 15), (2 * i + 1, b >> 4)] {
                if d != 0 {
                    terms[n] = &self.0[at * 15 + d as usize - 1];
                    n += 1;
                }
            }
        }
        PublicKey::combine_keys(&terms[..n]).ok()
    }
}

fn prefix_of(p: &PublicKey) -> OutputPrefix {
    p.serialize()[1..9].try_into().unwrap()
}

/// One label: m, its tweak `hash(b_scan ‖ m)` and its point `tweak·G`.
struct Label {
    point: PublicKey,
}

/// A receiver's keys, held in memory only (no `Debug`: it would print the scan key).
pub struct Receiver {
    scan: SecretKey,
    /// The scan key as a scalar, for `b_scan·tweak`.
    scan_scalar: Scalar,
    spend: PublicKey,
    labels: Vec<Label>,
}

impl Receiver {
    /// Label 0 (change) is always included; `labels` are extra m values.
    pub fn new(scan: SecretKey, spend: PublicKey, labels: &[u32]) -> Self {
        let mut ms = vec![0u32];
        for &m in labels {
            if !ms.contains(&m) {
                ms.push(m);
            }
        }
        let labels = ms
            .into_iter()
            .filter_map(|m| {
                let t = tagged(Tag::Label, &[&scan.secret_bytes(), &m.to_be_bytes()]);
                let t = SecretKey::from_slice(&t).ok()?;
                Some(Label { point: t.public_key(&GEN) })
            })
            .collect();
        Receiver { scan_scalar: Scalar::from(scan), scan, spend, labels }
    }

    /// The silent-payment address (version 0, bech32m), without labels: sp1q… on mainnet,
    /// tsp1q… on testnet and signet (BIP352), sprt1q… on regtest (BIP352 names none; this is
    /// what the `silentpayments` crate and the wallets built on it use).
    pub fn address(&self, net: Net) -> String {
        let hrp = match net.0 {
            bitcoin::Network::Bitcoin => "sp",
            bitcoin::Network::Regtest => "sprt",
            _ => "tsp",
        };
        address(hrp, &self.scan.public_key(&GEN), &self.spend)
    }

    /// `b_scan·tweak`, compressed: the input to every `t_k`.
    fn shared_secret(&self, tweak: &PublicKey) -> Option<[u8; 33]> {
        Some(tweak.mul_tweak(&SECP, &self.scan_scalar).ok()?.serialize())
    }

    /// Whether P_0 (or P_0 plus any label point) has its prefix among `outputs`: a candidate hit.
    pub fn matches(&self, tweak: &PublicKey, outputs: &[OutputPrefix]) -> bool {
        self.p0_among(self.shared_secret(tweak), outputs)
    }

    /// The first output key (k = 0, no label) a sender paying this receiver makes with `tweak`:
    /// what tests and benchmarks put among a transaction's outputs to make a hit.
    pub fn first_output_key(&self, tweak: &PublicKey) -> Option<PublicKey> {
        output_key(&self.spend, &self.shared_secret(tweak)?, 0)
    }

    /// The prefix of [`Receiver::first_output_key`], as the index keeps it.
    pub fn first_output_prefix(&self, tweak: &PublicKey) -> Option<OutputPrefix> {
        Some(prefix_of(&self.first_output_key(tweak)?))
    }

    /// [`Receiver::matches`] with `b_scan·T` from the transaction's table of T.
    pub fn matches_by(&self, table: &TweakTable, outputs: &[OutputPrefix]) -> bool {
        self.p0_among(table.times(&self.scan.secret_bytes()).map(|p| p.serialize()), outputs)
    }

    fn p0_among(&self, shared: Option<[u8; 33]>, outputs: &[OutputPrefix]) -> bool {
        let Some(shared) = shared else { return false };
        let Some(p0) = output_key(&self.spend, &shared, 0) else { return false };
        if outputs.contains(&prefix_of(&p0)) {
            return true;
        }
        // x-only comparison covers an output of either parity: x(P_0 + L) = x(-(P_0 + L)).
        self.labels.iter().any(|l| p0.combine(&l.point).is_ok_and(|p| outputs.contains(&prefix_of(&p))))
    }

    /// The full check on the transaction itself, k = 0, 1, … as BIP352 scans: the output indexes
    /// that pay this receiver.
    pub fn paid_outputs(&self, tweak: &PublicKey, tx: &Transaction) -> Vec<u32> {
        let Some(shared) = self.shared_secret(tweak) else { return Vec::new() };
        let mut left: Vec<(u32, [u8; 32])> = tx
            .output
            .iter()
            .enumerate()
            .filter(|(_, o)| o.script_pubkey.is_p2tr())
            .map(|(i, o)| (i as u32, o.script_pubkey.as_bytes()[2..34].try_into().unwrap()))
            .collect();
        let mut paid = Vec::new();
        for k in 0..K_MAX {
            let Some(pk) = output_key(&self.spend, &shared, k) else { break };
            let x = |p: &PublicKey| -> [u8; 32] { p.serialize()[1..].try_into().unwrap() };
            let mut candidates = vec![x(&pk)];
            candidates.extend(self.labels.iter().filter_map(|l| pk.combine(&l.point).ok()).map(|p| x(&p)));
            match left.iter().position(|(_, key)| candidates.contains(key)) {
                Some(at) => paid.push(left.swap_remove(at).0),
                None => break,
            }
        }
        paid.sort_unstable();
        paid
    }
}

/// A silent-payment address: bech32m of version 0 then `B_scan ‖ B_spend`, compressed.
pub(crate) fn address(hrp: &str, scan: &PublicKey, spend: &PublicKey) -> String {
    let mut bytes = scan.serialize().to_vec();
    bytes.extend_from_slice(&spend.serialize());
    let mut data = vec![0u8]; // version 0, one 5-bit symbol
    data.extend(to_5bit(&bytes));
    bech32m(hrp, &data)
}

fn to_5bit(bytes: &[u8]) -> Vec<u8> {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(((acc >> bits) & 31) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (5 - bits)) & 31) as u8);
    }
    out
}

/// BIP350's bech32m over 5-bit `data`, without bech32's 90-character limit (BIP352 lifts it).
fn bech32m(hrp: &str, data: &[u8]) -> String {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    fn polymod(values: impl Iterator<Item = u8>) -> u32 {
        const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
        let mut chk = 1u32;
        for v in values {
            let top = chk >> 25;
            chk = ((chk & 0x1ffffff) << 5) ^ v as u32;
            for (i, g) in GEN.iter().enumerate() {
                if (top >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk
    }
    let hrp_expanded = hrp.bytes().map(|c| c >> 5).chain([0]).chain(hrp.bytes().map(|c| c & 31));
    let check = polymod(hrp_expanded.chain(data.iter().copied()).chain([0; 6])) ^ 0x2bc830a3;
    let mut s = String::with_capacity(hrp.len() + 1 + data.len() + 6);
    s.push_str(hrp);
    s.push('1');
    for &d in data {
        s.push(CHARSET[d as usize] as char);
    }
    for i in 0..6 {
        s.push(CHARSET[((check >> (5 * (5 - i))) & 31) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests;

/// Points for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// `n·G`, compressed.
    pub fn generator_multiple(n: u8) -> [u8; 33] {
        let mut b = [0u8; 32];
        b[31] = n;
        PublicKey::from_secret_key(&GEN, &SecretKey::from_slice(&b).unwrap()).serialize()
    }
}
