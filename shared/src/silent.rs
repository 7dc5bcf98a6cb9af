//! Silent payments (BIP352): which transactions a receiver must look at, the tweak each one
//! carries, and a receiver's check of a transaction against its keys.
//!
//! The index keeps, per block, every eligible transaction as a [`TweakedTx`]: its number, its
//! tweak `input_hash·A` and the first 8 bytes of each taproot output key. A scan for a receiver
//! computes `P_0` (and `P_0` plus each label) from the tweak and its scan key and looks for its
//! prefix among the outputs ([`Receiver::matches`]); a candidate is then checked on the
//! transaction itself ([`Receiver::paid_outputs`]).

use crate::network::Net;
use crate::schema::TxNum;

/// The compressed point `input_hash·A` of an eligible transaction (BIP352).
pub type Tweak = [u8; 33];
/// The first 8 bytes of a taproot output's x-only key.
pub type OutputPrefix = [u8; 8];

/// An eligible transaction as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TweakedTx {
    pub txnum: TxNum,
    pub tweak: Tweak,
    pub outputs: Vec<OutputPrefix>,
}

/// BIP352's tweak of `tx`, or None if it is not eligible. `spent[i]` is the scriptPubKey input i
/// spends.
pub fn tweak(tx: &bitcoin::Transaction, spent: &[&bitcoin::Script]) -> Option<Tweak> {
    let _ = (tx, spent);
    todo!()
}

/// Prefixes of the tx's taproot output keys, in output order.
pub fn output_prefixes(tx: &bitcoin::Transaction) -> Vec<OutputPrefix> {
    let _ = tx;
    todo!()
}

/// A receiver's keys, held in memory only (no `Debug`: it would print the scan key).
pub struct Receiver {
    _private: (),
}

impl Receiver {
    /// Label 0 (change) is always included; `labels` are extra m values.
    pub fn new(
        scan: bitcoin::secp256k1::SecretKey,
        spend: bitcoin::secp256k1::PublicKey,
        labels: &[u32],
    ) -> Self {
        let _ = (scan, spend, labels);
        todo!()
    }

    /// The silent-payment address (sp1q… on mainnet, tsp1q… on test networks and regtest;
    /// version 0, bech32m), without labels.
    pub fn address(&self, net: Net) -> String {
        let _ = net;
        todo!()
    }

    /// Whether P_0 (or P_0 plus any label point) has its prefix among `outputs`: a candidate hit.
    pub fn matches(&self, tweak: &Tweak, outputs: &[OutputPrefix]) -> bool {
        let _ = (tweak, outputs);
        todo!()
    }

    /// The full check on the transaction itself, k = 0, 1, … as BIP352 scans: the output indexes
    /// that pay this receiver.
    pub fn paid_outputs(&self, tweak: &Tweak, tx: &bitcoin::Transaction) -> Vec<u32> {
        let _ = (tweak, tx);
        todo!()
    }
}
