//! A zero-copy walk over a serialized block: each transaction's bytes, txid, inputs and outputs as
//! slices of the block, with no allocation per transaction.
//!
//! `bitcoin::Block` deserialization allocates every script and witness; on the bulk path that is most
//! of the cost (see `benches/benches/parse.rs`), so the indexer walks the bytes instead. Cold paths
//! (headers, the server's verbose transactions) use the `bitcoin` crate.

use bitcoin::hashes::Hash;

use crate::hashes::sha256d;
use bitcoin::Txid;

use crate::varint::{DecodeError, Reader};

pub const HEADER_LEN: usize = 80;

/// An input's previous output, as bytes of the block.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub prev_txid: &'a [u8; 32],
    pub prev_vout: u32,
}

impl Input<'_> {
    pub fn is_coinbase(&self) -> bool {
        self.prev_vout == u32::MAX && self.prev_txid == &[0u8; 32]
    }

    pub fn prev_txid(&self) -> Txid {
        Txid::from_byte_array(*self.prev_txid)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Output<'a> {
    pub value: u64,
    pub script: &'a [u8],
}

/// One transaction, reused from one transaction to the next by [`for_each_tx`].
pub struct Tx<'a> {
    /// The whole serialization, witness included.
    pub raw: &'a [u8],
    pub txid: Txid,
    pub inputs: Vec<Input<'a>>,
    pub outputs: Vec<Output<'a>>,
}

impl Default for Tx<'_> {
    fn default() -> Self {
        Tx { raw: &[], txid: Txid::all_zeros(), inputs: Vec::new(), outputs: Vec::new() }
    }
}

impl Tx<'_> {
    pub fn is_coinbase(&self) -> bool {
        self.inputs.len() == 1 && self.inputs[0].is_coinbase()
    }
}

/// Parses one transaction at the reader's position into `tx`.
pub fn parse_tx<'a>(r: &mut Reader<'a>, buf: &'a [u8], tx: &mut Tx<'a>) -> Result<(), DecodeError> {
    let start = r.pos();
    tx.inputs.clear();
    tx.outputs.clear();
    r.skip(4)?; // version
    let mut io_start = r.pos();
    let mut n_in = r.length(r.remaining() / 41)?;
    let segwit = n_in == 0;
    if segwit {
        let flag = r.u8()?;
        if flag != 1 {
            return Err(DecodeError::Invalid { what: "bad segwit flag", at: r.pos() - 1 });
        }
        io_start = r.pos();
        n_in = r.length(r.remaining() / 41)?;
        if n_in == 0 {
            return Err(DecodeError::Invalid { what: "segwit transaction without inputs", at: io_start });
        }
    }
    for _ in 0..n_in {
        let prev_txid: &[u8; 32] = r.take(32)?.try_into().unwrap();
        let prev_vout = r.u32_le()?;
        let script_len = r.length(r.remaining())?;
        r.skip(script_len + 4)?; // scriptSig, sequence
        tx.inputs.push(Input { prev_txid, prev_vout });
    }
    let n_out = r.length(r.remaining() / 9)?;
    for _ in 0..n_out {
        let value = r.u64_le()?;
        let script_len = r.length(r.remaining())?;
        let script = r.take(script_len)?;
        tx.outputs.push(Output { value, script });
    }
    let io_end = r.pos();
    if segwit {
        for _ in 0..n_in {
            let items = r.length(r.remaining())?;
            for _ in 0..items {
                let len = r.length(r.remaining())?;
                r.skip(len)?;
            }
        }
    }
    let lock_at = r.pos();
    r.skip(4)?;
    tx.raw = &buf[start..r.pos()];
    // The txid commits to the serialization without marker, flag and witness.
    let txid = if io_start == start + 4 && io_end == lock_at {
        sha256d(&[tx.raw]) // no witness: the serialization is contiguous
    } else {
        sha256d(&[&buf[start..start + 4], &buf[io_start..io_end], &buf[lock_at..lock_at + 4]])
    };
    tx.txid = Txid::from_byte_array(txid);
    Ok(())
}

/// The header and transaction count at the start of a block.
pub fn block_prefix(block: &[u8]) -> Result<(&[u8; HEADER_LEN], usize, usize), DecodeError> {
    let mut r = Reader::new(block);
    let header: &[u8; HEADER_LEN] = r.take(HEADER_LEN)?.try_into().unwrap();
    let ntx = r.length(block.len() / 60)?;
    Ok((header, ntx, r.pos()))
}

/// Calls `f(index, tx)` for each transaction of a block, in order. Fails on any malformed byte,
/// trailing bytes included.
pub fn for_each_tx<'a, E: From<DecodeError>>(
    block: &'a [u8],
    mut f: impl FnMut(usize, &Tx<'a>) -> Result<(), E>,
) -> Result<usize, E> {
    let (_, ntx, txs_at) = block_prefix(block)?;
    if ntx == 0 {
        return Err(DecodeError::Invalid { what: "block without transactions", at: HEADER_LEN }.into());
    }
    let mut r = Reader::new(block);
    r.skip(txs_at)?;
    let mut tx = Tx::default();
    for i in 0..ntx {
        parse_tx(&mut r, block, &mut tx)?;
        f(i, &tx)?;
    }
    if r.remaining() != 0 {
        return Err(
            DecodeError::Invalid { what: "trailing bytes after the last transaction", at: r.pos() }.into()
        );
    }
    Ok(ntx)
}

/// The outpoints a serialized transaction's inputs spend, read without hashing or allocating
/// (for transactions already checked by `parse_tx`: a malformed one ends the walk early).
pub fn prevouts(raw: &[u8]) -> impl Iterator<Item = Input<'_>> + '_ {
    let mut r = Reader::new(raw);
    let count = (|| {
        r.skip(4)?; // version
        match r.length(r.remaining() / 41)? {
            0 => {
                r.skip(1)?; // segwit flag
                r.length(r.remaining() / 41)
            }
            n => Ok(n),
        }
    })();
    (0..count.unwrap_or(0)).map_while(move |_| {
        let prev_txid: &[u8; 32] = r.take(32).ok()?.try_into().ok()?;
        let prev_vout = r.u32_le().ok()?;
        let script_len = r.length(r.remaining()).ok()?;
        r.skip(script_len + 4).ok()?; // scriptSig, sequence
        Some(Input { prev_txid, prev_vout })
    })
}

/// What a silent-payment key is read from in a transaction, as slices of its bytes: each input's
/// outpoint, scriptSig and witness (its item count and last two items), each output's script.
#[derive(Default)]
pub struct Spends<'a> {
    pub inputs: Vec<SpendingInput<'a>>,
    pub outputs: Vec<&'a [u8]>,
}

#[derive(Clone, Copy, Debug)]
pub struct SpendingInput<'a> {
    /// txid ‖ vout, as serialized.
    pub outpoint: &'a [u8; 36],
    pub script_sig: &'a [u8],
    pub witness_items: usize,
    pub witness_last: Option<&'a [u8]>,
    pub witness_before_last: Option<&'a [u8]>,
}

/// Reads the transaction `raw` into `out` (its vectors reused from one transaction to the next):
/// what `bitcoin::Transaction` deserialization would give BIP352's rules, without copying a
/// script or a witness.
pub fn spends<'a>(raw: &'a [u8], out: &mut Spends<'a>) -> Result<(), DecodeError> {
    out.inputs.clear();
    out.outputs.clear();
    let mut r = Reader::new(raw);
    r.skip(4)?; // version
    let mut n_in = r.length(r.remaining() / 41)?;
    let segwit = n_in == 0;
    if segwit {
        r.skip(1)?; // flag (checked by `parse_tx` when the block was verified)
        n_in = r.length(r.remaining() / 41)?;
    }
    for _ in 0..n_in {
        let outpoint: &[u8; 36] = r.take(36)?.try_into().unwrap();
        let script_len = r.length(r.remaining())?;
        let script_sig = r.take(script_len)?;
        r.skip(4)?; // sequence
        out.inputs.push(SpendingInput {
            outpoint,
            script_sig,
            witness_items: 0,
            witness_last: None,
            witness_before_last: None,
        });
    }
    let n_out = r.length(r.remaining() / 9)?;
    for _ in 0..n_out {
        r.skip(8)?; // value
        let script_len = r.length(r.remaining())?;
        out.outputs.push(r.take(script_len)?);
    }
    if segwit {
        for input in out.inputs.iter_mut() {
            input.witness_items = r.length(r.remaining())?;
            for _ in 0..input.witness_items {
                let len = r.length(r.remaining())?;
                input.witness_before_last = input.witness_last;
                input.witness_last = Some(r.take(len)?);
            }
        }
    }
    r.skip(4)?; // lock time
    if r.remaining() != 0 {
        return Err(DecodeError::Invalid { what: "trailing bytes after a transaction", at: r.pos() });
    }
    Ok(())
}

/// Script classes the index treats specially.
pub fn is_unspendable(script: &[u8]) -> bool {
    // Provably unspendable: OP_RETURN first, or longer than the consensus script limit.
    script.first() == Some(&0x6a) || script.len() > 10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::consensus::{deserialize, serialize};
    use bitcoin::Block;

    fn genesis_bytes() -> Vec<u8> {
        serialize(&bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Bitcoin))
    }

    #[test]
    fn genesis_matches_the_bitcoin_crate() {
        let bytes = genesis_bytes();
        let block: Block = deserialize(&bytes).unwrap();
        let mut seen = 0;
        for_each_tx::<DecodeError>(&bytes, |i, tx| {
            let want = &block.txdata[i];
            assert_eq!(tx.txid, want.compute_txid());
            assert_eq!(tx.raw, serialize(want).as_slice());
            assert!(tx.is_coinbase());
            assert_eq!(crate::merkle::tx_root(&[tx.txid]), block.header.merkle_root);
            assert_eq!(tx.outputs[0].value, want.output[0].value.to_sat());
            assert_eq!(tx.outputs[0].script, want.output[0].script_pubkey.as_bytes());
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn segwit_txid_skips_witness() {
        // A segwit spend from BIP143's examples (native P2WPKH), signed.
        let hex_tx = "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f00000000494830450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000";
        let bytes = hex::decode(hex_tx).unwrap();
        let want: bitcoin::Transaction = deserialize(&bytes).unwrap();
        let mut tx = Tx::default();
        let mut r = Reader::new(&bytes);
        parse_tx(&mut r, &bytes, &mut tx).unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(tx.txid, want.compute_txid());
        assert_eq!(tx.inputs.len(), 2);
        assert_eq!(tx.outputs.len(), 2);
        assert_eq!(tx.inputs[1].prev_vout, 1);
        let walked: Vec<(Txid, u32)> = prevouts(&bytes).map(|i| (i.prev_txid(), i.prev_vout)).collect();
        let want_prevouts: Vec<(Txid, u32)> =
            want.input.iter().map(|i| (i.previous_output.txid, i.previous_output.vout)).collect();
        assert_eq!(walked, want_prevouts);
        let legacy = serialize(&bitcoin::Transaction { input: want.input[..1].to_vec(), ..want.clone() });
        assert_eq!(prevouts(&legacy[..legacy.len() - 40]).count(), 1, "a cut one still has its inputs");
        assert_eq!(prevouts(&bytes[..50]).count(), 0, "cut in its first input");
    }

    #[test]
    fn corrupt_blocks_error_without_panicking() {
        let bytes = genesis_bytes();
        // Every truncation and every single-byte flip must return, never panic.
        for cut in 0..bytes.len() {
            let _ = for_each_tx::<DecodeError>(&bytes[..cut], |_, _| Ok(()));
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0xff;
            let _ = for_each_tx::<DecodeError>(&b, |_, _| Ok(()));
        }
        assert!(for_each_tx::<DecodeError>(&bytes[..100], |_, _| Ok(())).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(for_each_tx::<DecodeError>(&long, |_, _| Ok(())).is_err());
    }
}
