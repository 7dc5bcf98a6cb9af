//! Hashes the index is keyed by.

use std::fmt;
use std::str::FromStr;

use sha2::digest::generic_array::GenericArray;

/// Electrum's script hash: SHA256 of the output script. Stored in SHA256's own byte order; shown
/// (hex) reversed, as the Electrum protocol does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptHash(pub [u8; 32]);

impl ScriptHash {
    pub fn of(script: &[u8]) -> Self {
        ScriptHash(sha256(&[script]))
    }
}

// SHA-256 on the bare compression function (sha2's `compress256`, SHA-NI when the CPU has it).
// The bulk pass hashes tens of millions of short messages (scripts, transactions, merkle nodes);
// a streaming engine copies each one into its buffer block by block and pads it in pieces, which
// cost as much as the compressions (benches/benches/hash.rs). Here full blocks are compressed
// straight from the input and only the last partial block is copied, once, with its padding.

const IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

fn compress(state: &mut [u32; 8], block: &[u8]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

fn digest_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut state = IV;
    let mut buf = [0u8; 128];
    let mut held = 0usize;
    let mut total = 0u64;
    for part in parts {
        let mut data = *part;
        total += data.len() as u64;
        if held > 0 {
            let take = data.len().min(64 - held);
            buf[held..held + take].copy_from_slice(&data[..take]);
            held += take;
            data = &data[take..];
            if held < 64 {
                continue;
            }
            compress(&mut state, &buf[..64]);
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            compress(&mut state, block);
        }
        let rest = blocks.remainder();
        buf[..rest.len()].copy_from_slice(rest);
        held = rest.len();
    }
    // Padding: 0x80, zeros, and the bit length in the last 8 bytes of a block (two blocks when
    // fewer than 9 bytes are left in this one).
    buf[held] = 0x80;
    let end = if held < 56 { 64 } else { 128 };
    buf[held + 1..end - 8].fill(0);
    buf[end - 8..end].copy_from_slice(&(total * 8).to_be_bytes());
    compress(&mut state, &buf[..64]);
    if end == 128 {
        compress(&mut state, &buf[64..128]);
    }
    digest_bytes(&state)
}

/// SHA-256 of a 32-byte hash: one block.
fn sha256_of_32(h: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(h);
    block[32] = 0x80;
    block[62] = 0x01; // 256 bits
    let mut state = IV;
    compress(&mut state, &block);
    digest_bytes(&state)
}

/// SHA256d of the concatenation of `parts` (txids, block hashes, rev-record checksums).
pub fn sha256d(parts: &[&[u8]]) -> [u8; 32] {
    sha256_of_32(&sha256(parts))
}

/// SHA256d of two 32-byte hashes: a merkle tree node. The first hash's second block is all
/// padding, the same for every node.
pub fn sha256d_64(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    const PAD: [u8; 64] = {
        let mut p = [0u8; 64];
        p[0] = 0x80;
        p[62] = 0x02; // 512 bits
        p
    };
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(left);
    block[32..].copy_from_slice(right);
    let mut state = IV;
    compress(&mut state, &block);
    compress(&mut state, &PAD);
    sha256_of_32(&digest_bytes(&state))
}

impl fmt::Display for ScriptHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut rev = self.0;
        rev.reverse();
        f.write_str(&hex::encode(rev))
    }
}

impl fmt::Debug for ScriptHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ScriptHash({self})")
    }
}

impl FromStr for ScriptHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut b: [u8; 32] = hex::decode(s)
            .map_err(|e| format!("bad script hash hex: {e}"))?
            .try_into()
            .map_err(|_| "script hash must be 32 bytes".to_string())?;
        b.reverse();
        Ok(ScriptHash(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::{sha256 as bh_sha256, sha256d as bh_sha256d, Hash};

    #[test]
    fn compression_hashes_equal_the_bitcoin_crates_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let msg = &data[..len];
            assert_eq!(sha256(&[msg]), bh_sha256::Hash::hash(msg).to_byte_array(), "len {len}");
            assert_eq!(sha256d(&[msg]), bh_sha256d::Hash::hash(msg).to_byte_array(), "len {len}");
            // Split into three parts at varying points: same digest.
            let (a, rest) = msg.split_at(len / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            assert_eq!(
                sha256d(&[a, b, c]),
                bh_sha256d::Hash::hash(msg).to_byte_array(),
                "len {len} in parts"
            );
        }
        let (l, r) = ([0x11u8; 32], [0xeeu8; 32]);
        let joined: Vec<u8> = l.iter().chain(&r).copied().collect();
        assert_eq!(sha256d_64(&l, &r), bh_sha256d::Hash::hash(&joined).to_byte_array());
    }

    #[test]
    fn genesis_address_vector() {
        // The seed's example: P2PKH of the genesis address 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa.
        let script = hex::decode("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac").unwrap();
        assert_eq!(
            ScriptHash::of(&script).to_string(),
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
        );
        let parsed: ScriptHash =
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161".parse().unwrap();
        assert_eq!(parsed, ScriptHash::of(&script));
    }
}
