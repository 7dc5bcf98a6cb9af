//! Bitcoin Core's undo data (`revNNNNN.dat`): for every non-coinbase transaction of a block, the
//! outputs its inputs spent, in input order. This is how the bulk pass learns the script of every
//! spent output without looking anything up.
//!
//! Record: `magic ‖ size ‖ CBlockUndo ‖ checksum`, where checksum = SHA256d(previous block hash ‖
//! CBlockUndo). CBlockUndo = CompactSize(n) × CTxUndo; CTxUndo = CompactSize(m) × Coin;
//! Coin = VARINT(height·2 + coinbase) ‖ [VARINT(0) if height > 0] ‖ VARINT(compressed amount) ‖
//! compressed script (all VARINTs are Core's, see `varint::Reader::core_varint`).

use std::ops::Range;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

use crate::varint::{DecodeError, Reader};

/// Core's MAX_SCRIPT_SIZE: longer scripts are stored as their length only and read back as OP_RETURN.
const MAX_SCRIPT_SIZE: usize = 10_000;

/// One spent output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coin {
    pub height: u32,
    pub coinbase: bool,
    pub value: u64,
    /// Range of the decompressed script in [`BlockUndo::scripts`].
    pub script: Range<u32>,
}

/// The decoded undo data of one block.
#[derive(Default, Debug)]
pub struct BlockUndo {
    /// For each non-coinbase transaction (block position 1, 2, …): its number of inputs.
    pub tx_inputs: Vec<u32>,
    /// Every spent output, transaction by transaction, input by input.
    pub coins: Vec<Coin>,
    /// Decompressed scripts, back to back.
    pub scripts: Vec<u8>,
}

impl BlockUndo {
    pub fn script(&self, coin: &Coin) -> &[u8] {
        &self.scripts[coin.script.start as usize..coin.script.end as usize]
    }

    /// The spent outputs of the block's transaction at position `pos` (≥ 1), given the running
    /// index of its first coin.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let mut undo = BlockUndo::default();
        let ntx = r.length(payload.len())?;
        undo.tx_inputs.reserve(ntx);
        for _ in 0..ntx {
            let ncoins = r.length(r.remaining())?;
            undo.tx_inputs.push(ncoins as u32);
            for _ in 0..ncoins {
                let coin = read_coin(&mut r, &mut undo.scripts)?;
                undo.coins.push(coin);
            }
        }
        if r.remaining() != 0 {
            return Err(DecodeError::Invalid { what: "trailing bytes in undo record", at: r.pos() });
        }
        Ok(undo)
    }

    /// The number of transactions (besides the coinbase) the record describes, read cheaply.
    pub fn tx_count(payload: &[u8]) -> Result<usize, DecodeError> {
        Reader::new(payload).length(payload.len())
    }
}

/// The checksum bitcoind stores after an undo record.
pub fn checksum(prev_block: &BlockHash, payload: &[u8]) -> [u8; 32] {
    crate::hashes::sha256d(&[prev_block.as_byte_array(), payload])
}

fn read_coin(r: &mut Reader, scripts: &mut Vec<u8>) -> Result<Coin, DecodeError> {
    let at = r.pos();
    let code = r.core_varint()?;
    let height = u32::try_from(code >> 1).map_err(|_| DecodeError::BadInt(at))?;
    if height > 0 {
        r.core_varint()?; // a version number old nodes kept; always 0 since
    }
    let value = decompress_amount(r.core_varint()?);
    let start = scripts.len();
    decompress_script(r, scripts)?;
    Ok(Coin { height, coinbase: code & 1 == 1, value, script: start as u32..scripts.len() as u32 })
}

/// Inverse of Core's CompressAmount (compressor.cpp).
pub fn decompress_amount(mut x: u64) -> u64 {
    if x == 0 {
        return 0;
    }
    x -= 1;
    let mut e = x % 10;
    x /= 10;
    let mut n = if e < 9 {
        let d = (x % 9) + 1;
        x /= 9;
        x.wrapping_mul(10).wrapping_add(d)
    } else {
        x.wrapping_add(1)
    };
    while e > 0 {
        n = n.wrapping_mul(10);
        e -= 1;
    }
    n
}

/// Core's ScriptCompression: sizes 0–5 are templates (P2PKH, P2SH, P2PK), larger ones raw scripts.
fn decompress_script(r: &mut Reader, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let at = r.pos();
    let size = r.core_varint()?;
    match size {
        0 => {
            out.extend_from_slice(&[0x76, 0xa9, 20]);
            out.extend_from_slice(r.take(20)?);
            out.extend_from_slice(&[0x88, 0xac]);
        }
        1 => {
            out.extend_from_slice(&[0xa9, 20]);
            out.extend_from_slice(r.take(20)?);
            out.push(0x87);
        }
        2 | 3 => {
            out.extend_from_slice(&[33, size as u8]);
            out.extend_from_slice(r.take(32)?);
            out.push(0xac);
        }
        4 | 5 => {
            let mut compressed = [0u8; 33];
            compressed[0] = size as u8 - 2;
            compressed[1..].copy_from_slice(r.take(32)?);
            let key = bitcoin::secp256k1::PublicKey::from_slice(&compressed)
                .map_err(|_| DecodeError::Invalid { what: "invalid compressed public key", at })?;
            out.push(65);
            out.extend_from_slice(&key.serialize_uncompressed());
            out.push(0xac);
        }
        n => {
            let len = usize::try_from(n - 6).map_err(|_| DecodeError::BadInt(at))?;
            if len > r.remaining() {
                return Err(DecodeError::Eof(at));
            }
            if len > MAX_SCRIPT_SIZE {
                r.skip(len)?;
                out.push(0x6a); // as Core reads it back: unspendable
            } else {
                out.extend_from_slice(r.take(len)?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress_amount(n: u64) -> u64 {
        // compressor.cpp CompressAmount, for the round trip.
        if n == 0 {
            return 0;
        }
        let (mut n, mut e) = (n, 0);
        while n % 10 == 0 && e < 9 {
            n /= 10;
            e += 1;
        }
        if e < 9 {
            let d = n % 10;
            n /= 10;
            1 + (n * 9 + d - 1) * 10 + e
        } else {
            1 + (n - 1) * 10 + 9
        }
    }

    #[test]
    fn amounts_round_trip() {
        // Vectors from Core's compress_tests: 0→0, 1→1, 1 BTC→9, 50 BTC→50, 21M BTC→21000000.
        for (amount, compressed) in
            [(0u64, 0u64), (1, 1), (100_000_000, 9), (5_000_000_000, 50), (2_100_000_000_000_000, 21_000_000)]
        {
            assert_eq!(compress_amount(amount), compressed);
            assert_eq!(decompress_amount(compressed), amount);
        }
        for n in [12345u64, 999, 1000, 1_000_000_007, 2_099_999_997_690_000] {
            assert_eq!(decompress_amount(compress_amount(n)), n);
        }
    }

    #[test]
    fn decodes_a_hand_built_record() {
        // One tx spending two coins: a P2PKH at height 100 (coinbase, 50 BTC) and a raw 3-byte
        // script at height 7 (1 sat); then one tx spending an uncompressed P2PK.
        let pk = bitcoin::secp256k1::PublicKey::from_slice(
            &hex::decode("0250863ad64a87ae8a2fe83c1af1a8403cb53f53e486d8511dad8a04887e5b2352").unwrap(),
        )
        .unwrap();
        let mut rec = vec![2u8, 2];
        rec.extend_from_slice(&[0x80, 0x49]); // VARINT(201) = height 100, coinbase
        rec.push(0); // version dummy
        rec.push(50); // compressed 50 BTC
        rec.push(0); // P2PKH template
        rec.extend_from_slice(&[0x11; 20]);
        rec.push(14); // VARINT(7·2)
        rec.push(0);
        rec.push(1); // 1 sat
        rec.push(9); // raw script of 3 bytes
        rec.extend_from_slice(&[0x51, 0x75, 0x51]);
        rec.push(1); // second tx: one coin
        rec.push(4); // height 2
        rec.push(0);
        rec.push(9);
        rec.push(4); // uncompressed key, even y
        rec.extend_from_slice(&pk.serialize()[1..]);
        let undo = BlockUndo::decode(&rec).unwrap();
        assert_eq!(undo.tx_inputs, vec![2, 1]);
        assert_eq!(undo.coins[0].height, 100);
        assert!(undo.coins[0].coinbase);
        assert_eq!(undo.coins[0].value, 5_000_000_000);
        let p2pkh = [&[0x76, 0xa9, 20][..], &[0x11; 20], &[0x88, 0xac]].concat();
        assert_eq!(undo.script(&undo.coins[0]), p2pkh.as_slice());
        assert_eq!(undo.script(&undo.coins[1]), &[0x51, 0x75, 0x51]);
        assert_eq!(undo.coins[1].value, 1);
        let p2pk = [&[65u8][..], &pk.serialize_uncompressed(), &[0xac]].concat();
        assert_eq!(undo.script(&undo.coins[2]), p2pk.as_slice());
        assert_eq!(BlockUndo::tx_count(&rec).unwrap(), 2);

        for cut in 0..rec.len() {
            assert!(BlockUndo::decode(&rec[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = rec.clone();
        long.push(0);
        assert!(BlockUndo::decode(&long).is_err());
    }
}
