//! Output scripts named by compact ids, and the bytes that spend them.
//!
//! A `ScriptId` is 64 bits: the kind (4 bits), flags (4 bits) and an index (56 bits). A script's
//! bytes (hashes, keys) are derived from its id and the run's salt, so no script is stored
//! anywhere: a pool entry or a plan carries the id, and the bytes are made where they are written.
//! Spends carry signatures and keys of the right sizes with made-up bytes: nothing here verifies,
//! and a P2PKH key does not hash to its script's hash.

use bitcoin::secp256k1::PublicKey;

/// What a script is. The order is that of the weights in `shape::Era::kinds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Pay to an uncompressed public key (the coinbases of 2009).
    P2pkU,
    /// Pay to a compressed public key.
    P2pkC,
    P2pkh,
    P2sh,
    P2wpkh,
    P2wsh,
    P2tr,
    /// Bare 1-of-2 or 1-of-3 multisig with compressed keys (2014's data-carrying outputs).
    Multisig,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::P2pkU,
        Kind::P2pkC,
        Kind::P2pkh,
        Kind::P2sh,
        Kind::P2wpkh,
        Kind::P2wsh,
        Kind::P2tr,
        Kind::Multisig,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::P2pkU => "p2pk-uncompressed",
            Kind::P2pkC => "p2pk",
            Kind::P2pkh => "p2pkh",
            Kind::P2sh => "p2sh",
            Kind::P2wpkh => "p2wpkh",
            Kind::P2wsh => "p2wsh",
            Kind::P2tr => "p2tr",
            Kind::Multisig => "multisig",
        }
    }
}

/// A P2PKH script whose key is uncompressed (spends show 65-byte keys).
pub const UNCOMPRESSED: u8 = 1;
/// A P2SH script whose redeem script is a 2-of-3 multisig (else P2SH-P2WPKH).
pub const SH_MULTISIG: u8 = 2;
/// A bare multisig of three keys (else two).
pub const THREE_KEYS: u8 = 4;

const INDEX_BITS: u32 = 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptId(pub u64);

impl ScriptId {
    pub fn new(kind: Kind, flags: u8, index: u64) -> Self {
        debug_assert!(index < 1 << INDEX_BITS && flags < 16);
        ScriptId((kind as u64) << 60 | (flags as u64) << INDEX_BITS | index)
    }

    pub fn kind(self) -> Kind {
        Kind::ALL[(self.0 >> 60) as usize]
    }

    pub fn has(self, flag: u8) -> bool {
        (self.0 >> INDEX_BITS) as u8 & flag != 0
    }

    pub fn index(self) -> u64 {
        self.0 & ((1 << INDEX_BITS) - 1)
    }

    /// Whether spending it puts data in the witness.
    pub fn has_witness(self) -> bool {
        match self.kind() {
            Kind::P2wpkh | Kind::P2wsh | Kind::P2tr => true,
            Kind::P2sh => !self.has(SH_MULTISIG),
            _ => false,
        }
    }

    /// The script's length in bytes.
    pub fn len(self) -> usize {
        match self.kind() {
            Kind::P2pkU => 67,
            Kind::P2pkC => 35,
            Kind::P2pkh => 25,
            Kind::P2sh => 23,
            Kind::P2wpkh => 22,
            Kind::P2wsh | Kind::P2tr => 34,
            Kind::Multisig => 3 + 34 * self.keys(),
        }
    }

    fn keys(self) -> usize {
        if self.has(THREE_KEYS) {
            3
        } else {
            2
        }
    }
}

/// The splitmix64 finalizer: a bijection of u64 that mixes every input bit into every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a run draws for one purpose (`Stream`) from its seed: the streams are independent, so
/// a change in how one is used leaves the others' draws as they were.
pub fn stream(seed: u64, purpose: Stream) -> u64 {
    mix(mix(seed) ^ (purpose as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[derive(Clone, Copy)]
pub enum Stream {
    ScriptBytes,
    Planner,
    Sample,
    Arrival,
    Forks,
    XorKey,
}

/// Derives the bytes of scripts and spends for one run.
#[derive(Clone, Copy, Debug)]
pub struct Scripts {
    salt: u64,
}

impl Scripts {
    pub fn new(seed: u64) -> Self {
        Scripts { salt: stream(seed, Stream::ScriptBytes) }
    }

    /// 32 bytes that stand for a hash or key of `id` (`lane` tells several apart). Distinct ids
    /// give distinct first words (`mix` is a bijection), so scripts never collide.
    fn body(&self, id: ScriptId, lane: u64) -> [u8; 32] {
        let base = mix(id.0 ^ self.salt).wrapping_add(lane.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(base ^ (i as u64) << 58).to_le_bytes());
        }
        out
    }

    /// A compressed public key's 33 bytes (not necessarily on the curve).
    fn compressed_key(&self, id: ScriptId, lane: u64) -> [u8; 33] {
        let mut k = [0u8; 33];
        let b = self.body(id, lane);
        k[0] = 2 + (b[31] & 1);
        k[1..].copy_from_slice(&b);
        k
    }

    /// A valid uncompressed key: Core compresses a P2PK script only when its key is on the curve,
    /// and the undo decoder decompresses it, so this one must be.
    fn uncompressed_key(&self, id: ScriptId) -> [u8; 65] {
        for lane in 100.. {
            let candidate = self.compressed_key(id, lane);
            if let Ok(key) = PublicKey::from_slice(&candidate) {
                return key.serialize_uncompressed();
            }
        }
        unreachable!("half of all x coordinates are on the curve")
    }

    /// Appends the script's bytes.
    pub fn put(&self, id: ScriptId, out: &mut Vec<u8>) {
        let body = self.body(id, 0);
        match id.kind() {
            Kind::P2pkU => {
                out.push(65);
                out.extend_from_slice(&self.uncompressed_key(id));
                out.push(0xac);
            }
            Kind::P2pkC => {
                out.push(33);
                out.extend_from_slice(&self.compressed_key(id, 0));
                out.push(0xac);
            }
            Kind::P2pkh => {
                out.extend_from_slice(&[0x76, 0xa9, 20]);
                out.extend_from_slice(&body[..20]);
                out.extend_from_slice(&[0x88, 0xac]);
            }
            Kind::P2sh => {
                out.extend_from_slice(&[0xa9, 20]);
                out.extend_from_slice(&body[..20]);
                out.push(0x87);
            }
            Kind::P2wpkh => {
                out.extend_from_slice(&[0x00, 20]);
                out.extend_from_slice(&body[..20]);
            }
            Kind::P2wsh => {
                out.extend_from_slice(&[0x00, 32]);
                out.extend_from_slice(&body);
            }
            Kind::P2tr => {
                out.extend_from_slice(&[0x51, 32]);
                out.extend_from_slice(&body);
            }
            Kind::Multisig => {
                let n = id.keys();
                out.push(0x51);
                for lane in 0..n {
                    out.push(33);
                    out.extend_from_slice(&self.compressed_key(id, lane as u64 + 1));
                }
                out.push(0x50 + n as u8);
                out.push(0xae);
            }
        }
    }

    pub fn bytes(&self, id: ScriptId) -> Vec<u8> {
        let mut v = Vec::with_capacity(id.len());
        self.put(id, &mut v);
        v
    }

    /// Appends the scriptSig of a spend of `id` (without its length).
    pub fn put_script_sig(&self, id: ScriptId, rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
        match id.kind() {
            Kind::P2pkU | Kind::P2pkC => put_ecdsa_push(rng, out),
            Kind::P2pkh => {
                put_ecdsa_push(rng, out);
                if id.has(UNCOMPRESSED) {
                    let mut key = [0u8; 65];
                    key[0] = 4;
                    key[1..33].copy_from_slice(&self.body(id, 1));
                    key[33..].copy_from_slice(&self.body(id, 2));
                    out.push(65);
                    out.extend_from_slice(&key);
                } else {
                    out.push(33);
                    out.extend_from_slice(&self.compressed_key(id, 1));
                }
            }
            Kind::P2sh if id.has(SH_MULTISIG) => {
                out.push(0x00);
                put_ecdsa_push(rng, out);
                put_ecdsa_push(rng, out);
                out.extend_from_slice(&[0x4c, 105]);
                self.put_multisig_2_of_3(id, out);
            }
            Kind::P2sh => {
                // P2SH-P2WPKH: the push of the witness program.
                out.extend_from_slice(&[22, 0x00, 20]);
                out.extend_from_slice(&self.body(id, 3)[..20]);
            }
            Kind::Multisig => {
                out.push(0x00);
                put_ecdsa_push(rng, out);
            }
            Kind::P2wpkh | Kind::P2wsh | Kind::P2tr => {}
        }
    }

    fn put_wpkh_witness(&self, id: ScriptId, rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
        out.push(2);
        put_ecdsa_push(rng, out);
        out.push(33);
        out.extend_from_slice(&self.compressed_key(id, 1));
    }

    fn put_multisig_2_of_3(&self, id: ScriptId, out: &mut Vec<u8>) {
        out.push(0x52);
        for lane in 0..3 {
            out.push(33);
            out.extend_from_slice(&self.compressed_key(id, lane + 4));
        }
        out.extend_from_slice(&[0x53, 0xae]);
    }

    /// Appends the witness of a spend of `id` (item count, then items). `inscription` > 0 spends
    /// a P2TR output by its script path with an ordinals-style envelope of that many content bytes.
    pub fn put_witness(&self, id: ScriptId, inscription: u32, rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
        match id.kind() {
            Kind::P2wpkh => self.put_wpkh_witness(id, rng, out),
            Kind::P2sh if !id.has(SH_MULTISIG) => self.put_wpkh_witness(id, rng, out),
            Kind::P2wsh => {
                out.extend_from_slice(&[4, 0]);
                put_ecdsa_push(rng, out);
                put_ecdsa_push(rng, out);
                out.push(105);
                self.put_multisig_2_of_3(id, out);
            }
            Kind::P2tr if inscription > 0 => {
                out.push(3);
                out.push(64);
                put_random(rng, out, 64);
                let script_len = envelope_len(inscription);
                put_compact_size(out, script_len as u64);
                let start = out.len();
                out.push(32);
                out.extend_from_slice(&self.body(id, 5));
                out.extend_from_slice(&[0xac, 0x00, 0x63, 3, b'o', b'r', b'd', 1, 1, 10]);
                out.extend_from_slice(b"text/plain");
                out.push(0x00);
                let mut left = inscription as usize;
                while left > 0 {
                    let n = left.min(520);
                    put_push_len(out, n);
                    put_random(rng, out, n);
                    left -= n;
                }
                out.push(0x68);
                debug_assert_eq!(out.len() - start, script_len);
                out.push(33);
                out.push(0xc0 | (rng.u8(..) & 1));
                out.extend_from_slice(&self.body(id, 6));
            }
            Kind::P2tr => {
                out.push(1);
                out.push(64);
                put_random(rng, out, 64);
            }
            _ => out.push(0),
        }
    }
}

/// Bytes of a spend of `id`: (its scriptSig, its witness with the item count), with 72-byte
/// signatures (the builder makes 71 or 72). The input outside the witness is 40 bytes more than
/// the scriptSig and its length.
pub fn spend_size(id: ScriptId, inscription: u32) -> (usize, usize) {
    const SIG: usize = 73; // push + signature
    let script_sig = match id.kind() {
        Kind::P2pkU | Kind::P2pkC => SIG,
        Kind::P2pkh if id.has(UNCOMPRESSED) => SIG + 66,
        Kind::P2pkh => SIG + 34,
        Kind::P2sh if id.has(SH_MULTISIG) => 1 + 2 * SIG + 2 + 105,
        Kind::P2sh => 23,
        Kind::Multisig => 1 + SIG,
        Kind::P2wpkh | Kind::P2wsh | Kind::P2tr => 0,
    };
    let witness = match id.kind() {
        Kind::P2wpkh => 1 + SIG + 34,
        Kind::P2sh if !id.has(SH_MULTISIG) => 1 + SIG + 34,
        Kind::P2wsh => 2 + 2 * SIG + 106,
        Kind::P2tr if inscription > 0 => {
            let s = envelope_len(inscription);
            1 + 65 + compact_size_len(s) + s + 34
        }
        Kind::P2tr => 66,
        _ => 1,
    };
    (script_sig, witness)
}

/// Length of an inscription's tapscript: key, OP_CHECKSIG, the envelope with its header, the
/// content in pushes of at most 520 bytes.
fn envelope_len(content: u32) -> usize {
    let content = content as usize;
    let pushes = content.div_ceil(520);
    let last = content - (pushes - 1) * 520;
    33 + 10 + 10 + 1 + (pushes - 1) * (520 + 3) + last + push_len_len(last) + 1
}

fn push_len_len(n: usize) -> usize {
    match n {
        0..=75 => 1,
        76..=255 => 2,
        _ => 3,
    }
}

fn put_push_len(out: &mut Vec<u8>, n: usize) {
    match n {
        0..=75 => out.push(n as u8),
        76..=255 => out.extend_from_slice(&[0x4c, n as u8]),
        _ => {
            out.push(0x4d);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
    }
}

/// A push of a DER-shaped ECDSA signature with SIGHASH_ALL: 71 or 72 bytes (a high R takes a
/// leading zero).
fn put_ecdsa_push(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    let long_r = rng.bool();
    let rlen = 32 + long_r as u8;
    out.push(rlen + 39); // push length: 30 len 02 rlen r 02 20 s sighash
    out.extend_from_slice(&[0x30, rlen + 36, 0x02, rlen]);
    if long_r {
        out.push(0);
    }
    let r_at = out.len();
    put_random(rng, out, 32);
    out[r_at] = if long_r { out[r_at] | 0x80 } else { (out[r_at] & 0x7f) | 1 };
    out.extend_from_slice(&[0x02, 32]);
    let s_at = out.len();
    put_random(rng, out, 32);
    out[s_at] = (out[s_at] & 0x7f) | 1; // low S
    out.push(0x01);
}

pub fn put_random(rng: &mut fastrand::Rng, out: &mut Vec<u8>, n: usize) {
    let at = out.len();
    out.resize(at + n, 0);
    rng.fill(&mut out[at..]);
}

pub fn put_compact_size(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub fn compact_size_len(n: usize) -> usize {
    blkindex_shared::varint::compact_size_len(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::ScriptBuf;

    fn ids() -> Vec<ScriptId> {
        let mut v = Vec::new();
        for (i, kind) in Kind::ALL.iter().enumerate() {
            for flags in [0, UNCOMPRESSED, SH_MULTISIG, THREE_KEYS] {
                v.push(ScriptId::new(*kind, flags, 1000 + i as u64));
            }
        }
        v
    }

    #[test]
    fn scripts_are_the_templates_the_bitcoin_crate_recognizes() {
        let s = Scripts::new(7);
        for id in ids() {
            let bytes = s.bytes(id);
            assert_eq!(bytes.len(), id.len(), "{id:?}");
            let script = ScriptBuf::from_bytes(bytes);
            let recognized = match id.kind() {
                Kind::P2pkU | Kind::P2pkC => script.is_p2pk(),
                Kind::P2pkh => script.is_p2pkh(),
                Kind::P2sh => script.is_p2sh(),
                Kind::P2wpkh => script.is_p2wpkh(),
                Kind::P2wsh => script.is_p2wsh(),
                Kind::P2tr => script.is_p2tr(),
                Kind::Multisig => script.is_multisig(),
            };
            assert!(recognized, "{id:?}: {script}");
        }
        // Another salt, other bytes; the same salt, the same bytes.
        let id = ScriptId::new(Kind::P2wpkh, 0, 5);
        assert_ne!(Scripts::new(8).bytes(id), s.bytes(id));
        assert_eq!(Scripts::new(7).bytes(id), s.bytes(id));
    }

    #[test]
    fn spend_sizes_are_what_is_written() {
        let s = Scripts::new(1);
        let mut rng = fastrand::Rng::with_seed(3);
        for id in ids() {
            for inscription in [0u32, 1, 75, 76, 520, 521, 5000, 100_000] {
                if inscription > 0 && id.kind() != Kind::P2tr {
                    continue;
                }
                let (mut sig, mut wit) = (Vec::new(), Vec::new());
                s.put_script_sig(id, &mut rng, &mut sig);
                s.put_witness(id, inscription, &mut rng, &mut wit);
                let (script_sig, witness) = spend_size(id, inscription);
                // Signatures are 71 or 72 bytes; the estimate takes 72 for each (two at most).
                assert!(
                    sig.len().abs_diff(script_sig) <= 2,
                    "{id:?} scriptSig {} vs {script_sig}",
                    sig.len()
                );
                assert!(wit.len().abs_diff(witness) <= 2, "{id:?} witness {} vs {witness}", wit.len());
                assert_eq!(id.has_witness(), wit != [0], "{id:?}");
            }
        }
    }
}
