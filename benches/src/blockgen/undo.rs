//! Core's undo records, written: the mirror of `blkindex_shared::undo`, which reads them.
//!
//! CBlockUndo = CompactSize(n) × CTxUndo (one per non-coinbase transaction); CTxUndo =
//! CompactSize(m) × Coin (one per input); Coin = VARINT(height·2 + coinbase) ‖ [0x00 if height >
//! 0] ‖ VARINT(CompressAmount(value)) ‖ ScriptCompression(script) (Core's compressor.cpp,
//! undo.h). The record's checksum is `blkindex_shared::undo::checksum`.

use bitcoin::secp256k1::PublicKey;

/// Core's VARINT (serialize.h WriteVarInt): base-128, most significant group first, each
/// group but the last one less than it says.
pub fn put_core_varint(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 10];
    let mut len = 0;
    loop {
        tmp[len] = (n & 0x7f) as u8 | if len > 0 { 0x80 } else { 0 };
        if n <= 0x7f {
            break;
        }
        n = (n >> 7) - 1;
        len += 1;
    }
    out.extend(tmp[..=len].iter().rev());
}

/// Core's CompressAmount: trailing decimal zeros folded into the exponent.
pub fn compress_amount(n: u64) -> u64 {
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

/// Core's ScriptCompression: P2PKH, P2SH and P2PK (a compressed key, or an uncompressed one on
/// the curve) as a template byte and 20 or 32 bytes; anything else as VARINT(length + 6) and the
/// script.
pub fn put_compressed_script(out: &mut Vec<u8>, s: &[u8]) {
    match s {
        [0x76, 0xa9, 20, hash @ .., 0x88, 0xac] if hash.len() == 20 => {
            out.push(0x00);
            out.extend_from_slice(hash);
        }
        [0xa9, 20, hash @ .., 0x87] if hash.len() == 20 => {
            out.push(0x01);
            out.extend_from_slice(hash);
        }
        [33, key @ .., 0xac] if key.len() == 33 && (key[0] == 2 || key[0] == 3) => {
            out.extend_from_slice(key);
        }
        [65, key @ .., 0xac] if key.len() == 65 && key[0] == 4 && PublicKey::from_slice(key).is_ok() => {
            out.push(0x04 | (key[64] & 1));
            out.extend_from_slice(&key[1..33]);
        }
        _ => {
            put_core_varint(out, s.len() as u64 + 6);
            out.extend_from_slice(s);
        }
    }
}

/// One spent output as CTxUndo stores it.
pub fn put_coin(out: &mut Vec<u8>, height: u32, coinbase: bool, value: u64, script: &[u8]) {
    put_core_varint(out, height as u64 * 2 + coinbase as u64);
    if height > 0 {
        out.push(0); // the transaction version old nodes kept here
    }
    put_core_varint(out, compress_amount(value));
    put_compressed_script(out, script);
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkindex_shared::undo::{decompress_amount, BlockUndo};
    use blkindex_shared::varint::Reader;

    use crate::blockgen::script::{put_compact_size, Kind, ScriptId, Scripts, SH_MULTISIG, THREE_KEYS};

    #[test]
    fn varints_are_cores() {
        // Core's serialize_tests (varints_bitpatterns).
        for (n, hex) in [
            (0u64, "00"),
            (0x7f, "7f"),
            (0x80, "8000"),
            (0x1234, "a334"),
            (0xffff, "82fe7f"),
            (0x12_3456, "c7e756"),
            (0x8012_3456, "86ffc7e756"),
            (0xffff_ffff, "8efefefe7f"),
            (0x7fff_ffff_ffff_ffff, "fefefefefefefefe7f"),
            (u64::MAX, "80fefefefefefefefe7f"),
        ] {
            let mut out = Vec::new();
            put_core_varint(&mut out, n);
            assert_eq!(hex::encode(&out), hex, "{n:#x}");
            assert_eq!(Reader::new(&out).core_varint().unwrap(), n);
        }
    }

    #[test]
    fn amounts_are_cores() {
        // Core's compress_tests: 0, 1 sat, 0.01 BTC, 1 BTC, 50 BTC, 21M BTC.
        for (amount, compressed) in [
            (0u64, 0u64),
            (1, 1),
            (1_000_000, 7),
            (100_000_000, 9),
            (5_000_000_000, 50),
            (2_100_000_000_000_000, 21_000_000),
        ] {
            assert_eq!(compress_amount(amount), compressed);
        }
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100_000 {
            let n = rng.u64(..=2_100_000_000_000_000) / 10u64.pow(rng.u32(..10));
            assert_eq!(decompress_amount(compress_amount(n)), n);
        }
    }

    /// Undo records written here read back, coin by coin, through the indexer's decoder: every
    /// script template (compressed or not), heights with and without the version byte,
    /// coinbase flags, amounts from zero to all the coins there are.
    #[test]
    fn block_undo_round_trips_through_the_decoder() {
        let scripts = Scripts::new(11);
        let mut all: Vec<Vec<u8>> = Vec::new();
        for (i, kind) in Kind::ALL.iter().enumerate() {
            for flags in [0, SH_MULTISIG, THREE_KEYS] {
                all.push(scripts.bytes(ScriptId::new(*kind, flags, i as u64 * 7 + 1)));
            }
        }
        // An uncompressed key off the curve stays raw; so do an empty script, a 1-byte one and
        // almost-templates.
        let mut off_curve = vec![65u8, 4];
        off_curve.extend_from_slice(&[0x5a; 64]);
        off_curve.push(0xac);
        assert!(PublicKey::from_slice(&off_curve[1..66]).is_err());
        all.extend([off_curve, vec![], vec![0x51], vec![0x76, 0xa9, 20, 0x88, 0xac], vec![0x6a; 300]]);

        let mut rng = fastrand::Rng::with_seed(2);
        let mut want = Vec::new();
        let mut payload = Vec::new();
        let txs = 40;
        put_compact_size(&mut payload, txs);
        for _ in 0..txs {
            let n = rng.usize(1..6);
            put_compact_size(&mut payload, n as u64);
            let mut coins = Vec::new();
            for _ in 0..n {
                let script = all[rng.usize(..all.len())].clone();
                let height = [0, 1, 127, 128, 16_383, 1_000_000, u32::MAX >> 1][rng.usize(..7)];
                let coinbase = rng.bool();
                let value =
                    [0, 1, 546, 5_000_000_000, 2_100_000_000_000_000, rng.u64(..1 << 40)][rng.usize(..6)];
                put_coin(&mut payload, height, coinbase, value, &script);
                coins.push((height, coinbase, value, script));
            }
            want.push(coins);
        }
        let undo = BlockUndo::decode(&payload).unwrap();
        assert_eq!(undo.tx_inputs, want.iter().map(|c| c.len() as u32).collect::<Vec<_>>());
        let got: Vec<_> =
            undo.coins.iter().map(|c| (c.height, c.coinbase, c.value, undo.script(c).to_vec())).collect();
        assert_eq!(got, want.concat());
        // Templates do compress: a P2PKH coin is 1 + 1 + 1 + 21 bytes, not 25 of script.
        let mut p2pkh = Vec::new();
        put_coin(&mut p2pkh, 1, false, 100_000_000, &scripts.bytes(ScriptId::new(Kind::P2pkh, 0, 3)));
        assert_eq!(p2pkh.len(), 24);
        let mut p2pk = Vec::new();
        put_coin(&mut p2pk, 1, true, 5_000_000_000, &scripts.bytes(ScriptId::new(Kind::P2pkU, 0, 3)));
        assert_eq!(p2pk.len(), 3 + 33);
    }
}
