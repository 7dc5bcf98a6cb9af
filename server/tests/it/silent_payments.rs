//! Silent payments (BIP352) end to end on a regtest node: payments built by an independent
//! implementation (the `silentpayments` crate's sender side), signed here with rust-bitcoin and
//! mined, to a wallet's address, its label 1 and its change (label 0), beside payments to
//! another wallet and one reorged out before the index is read; two left in the mempool. A
//! client subscribed through our server must receive exactly the wallet's, each confirmed by the
//! crate's receiver side on the transactions (and their parents) fetched from our server; then a
//! new block, a new mempool transaction and a reorg notify as Frigate's proposal says. The
//! limits (labels, subscriptions, CPU per scan) are checked on the same index, and the log is
//! searched for the keys.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    absolute, transaction, Address, Amount, BlockHash, CompressedPublicKey, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use serde_json::{json, Value};
use silentpayments::receiving::{Label, Receiver};
use silentpayments::utils::receiving::{
    calculate_ecdh_shared_secret, calculate_tweak_data, get_pubkey_from_input,
};
use silentpayments::{SilentPaymentCode, SpVersion};

use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexer_bin, Conn, Server};
use blkindex_testkit::verify::{Indexer, PausePoint};

/// How long a notification may take: the indexer's poll, the server's catch-up and mempool read.
const WAIT: Duration = Duration::from_secs(30);

/// The indexer's flags for its silent-payment index: none, it is on by default (from height 0 on
/// regtest).
const SP_INDEX: &[&str] = &[];

/// A key the test holds, and how its coins are locked.
#[derive(Clone, Copy)]
enum Kind {
    P2wpkh,
    /// BIP86 key path: the output key is the internal key tweaked with no script tree.
    P2tr,
    /// Legacy: the key in the scriptSig.
    P2pkh,
    /// P2WPKH nested in P2SH: the key in the witness, the program in the scriptSig.
    P2shP2wpkh,
}

/// A coin the test can spend.
#[derive(Clone)]
struct Coin {
    outpoint: OutPoint,
    txout: TxOut,
    key: SecretKey,
    kind: Kind,
}

fn secret(n: u8) -> SecretKey {
    SecretKey::from_slice(&[n; 32]).unwrap()
}

fn address_of(key: &SecretKey, kind: Kind) -> Address {
    let secp = Secp256k1::new();
    match kind {
        Kind::P2wpkh => Address::p2wpkh(&CompressedPublicKey(key.public_key(&secp)), Network::Regtest),
        Kind::P2tr => {
            let (internal, _) = Keypair::from_secret_key(&secp, key).x_only_public_key();
            Address::p2tr(&secp, internal, None, Network::Regtest)
        }
        Kind::P2pkh => Address::p2pkh(CompressedPublicKey(key.public_key(&secp)), Network::Regtest),
        Kind::P2shP2wpkh => Address::p2shwpkh(&CompressedPublicKey(key.public_key(&secp)), Network::Regtest),
    }
}

/// The node's wallet pays 1 BTC to a key of ours; mined.
fn fund(node: &Node, key: SecretKey, kind: Kind) -> Result<Coin> {
    let to = address_of(&key, kind);
    let txid = node.send(&to, Amount::from_btc(1.0)?)?;
    let tx = get_tx(node, &txid)?;
    let vout = tx.output.iter().position(|o| o.script_pubkey == to.script_pubkey()).context("no output")?;
    Ok(Coin { outpoint: OutPoint { txid, vout: vout as u32 }, txout: tx.output[vout].clone(), key, kind })
}

fn get_tx(node: &Node, txid: &Txid) -> Result<Transaction> {
    let hex = node.call("getrawtransaction", json!([txid.to_string()]))?;
    Ok(bitcoin::consensus::encode::deserialize_hex(hex.as_str().context("hex")?)?)
}

/// The secret key BIP352's sender sums for `coin` (for taproot: the output key's).
fn input_secret(coin: &Coin) -> (SecretKey, bool) {
    let secp = Secp256k1::new();
    match coin.kind {
        Kind::P2wpkh | Kind::P2pkh | Kind::P2shP2wpkh => (coin.key, false),
        Kind::P2tr => {
            let tweaked = Keypair::from_secret_key(&secp, &coin.key).tap_tweak(&secp, None);
            (tweaked.to_keypair().secret_key(), true)
        }
    }
}

/// A transaction spending `coins` to the silent-payment `to` (1000 sat each... the rest split
/// evenly) and to `plain` addresses, its outputs made by the crate's sender side; signed.
fn sp_payment(coins: &[Coin], to: &[SilentPaymentCode], plain: &[Address]) -> Result<Transaction> {
    let secp = Secp256k1::new();
    let keys: Vec<(SecretKey, bool)> = coins.iter().map(input_secret).collect();
    let outpoints: Vec<silentpayments::utils::OutPoint> = coins
        .iter()
        .map(|c| {
            silentpayments::utils::OutPoint::from_txid_and_vout(&c.outpoint.txid.to_string(), c.outpoint.vout)
        })
        .collect::<Result<_, _>>()?;
    let partial = silentpayments::utils::sending::calculate_partial_secret(&keys, &outpoints)?;
    let made = silentpayments::sending::generate_recipient_pubkeys(to.iter().copied(), partial)?;
    let total: u64 = coins.iter().map(|c| c.txout.value.to_sat()).sum();
    let n = (to.len() + plain.len()) as u64;
    let each = Amount::from_sat((total - 10_000) / n);
    let mut output = Vec::new();
    for code in to {
        // The same code twice gets two keys (k = 0, 1): take them in turn.
        let key = made[code][output.iter().filter(|(c, _)| c == code).count()];
        output.push((*code, key));
    }
    let mut outs: Vec<TxOut> =
        output.iter().map(|(_, key)| TxOut { value: each, script_pubkey: p2tr_script(key) }).collect();
    outs.extend(plain.iter().map(|a| TxOut { value: each, script_pubkey: a.script_pubkey() }));
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: coins
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..TxIn::default()
            })
            .collect(),
        output: outs,
    };
    let prevouts: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
    let mut witnesses = Vec::new();
    {
        let mut cache = SighashCache::new(&tx);
        let pk = |c: &Coin| CompressedPublicKey(c.key.public_key(&secp));
        let ecdsa = |digest: [u8; 32], c: &Coin| bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&Message::from_digest(digest), &c.key),
            sighash_type: EcdsaSighashType::All,
        };
        for (i, c) in coins.iter().enumerate() {
            witnesses.push(match c.kind {
                Kind::P2wpkh => {
                    let h = cache.p2wpkh_signature_hash(
                        i,
                        &c.txout.script_pubkey,
                        c.txout.value,
                        EcdsaSighashType::All,
                    )?;
                    (ScriptBuf::new(), Witness::p2wpkh(&ecdsa(h.to_byte_array(), c), &pk(c).0))
                }
                Kind::P2shP2wpkh => {
                    let program = ScriptBuf::new_p2wpkh(&pk(c).wpubkey_hash());
                    let h = cache.p2wpkh_signature_hash(i, &program, c.txout.value, EcdsaSighashType::All)?;
                    let push = bitcoin::script::PushBytesBuf::try_from(program.to_bytes())?;
                    let script_sig = ScriptBuf::builder().push_slice(push).into_script();
                    (script_sig, Witness::p2wpkh(&ecdsa(h.to_byte_array(), c), &pk(c).0))
                }
                Kind::P2pkh => {
                    let h = cache.legacy_signature_hash(
                        i,
                        &c.txout.script_pubkey,
                        EcdsaSighashType::All.to_u32(),
                    )?;
                    let sig = bitcoin::script::PushBytesBuf::try_from(ecdsa(h.to_byte_array(), c).to_vec())?;
                    let script_sig =
                        ScriptBuf::builder().push_slice(sig).push_key(&pk(c).into()).into_script();
                    (script_sig, Witness::new())
                }
                Kind::P2tr => {
                    let h = cache.taproot_key_spend_signature_hash(
                        i,
                        &Prevouts::All(&prevouts),
                        TapSighashType::Default,
                    )?;
                    let kp = Keypair::from_secret_key(&secp, &c.key).tap_tweak(&secp, None).to_keypair();
                    let sig = secp.sign_schnorr(&Message::from_digest(h.to_byte_array()), &kp);
                    let w = Witness::p2tr_key_spend(&bitcoin::taproot::Signature {
                        signature: sig,
                        sighash_type: TapSighashType::Default,
                    });
                    (ScriptBuf::new(), w)
                }
            });
        }
    }
    for (input, (script_sig, w)) in tx.input.iter_mut().zip(witnesses) {
        input.script_sig = script_sig;
        input.witness = w;
    }
    Ok(tx)
}

fn p2tr_script(key: &XOnlyPublicKey) -> ScriptBuf {
    ScriptBuf::new_p2tr_tweaked(bitcoin::key::TweakedPublicKey::dangerous_assume_tweaked(*key))
}

fn hex_of(tx: &Transaction) -> String {
    bitcoin::consensus::encode::serialize_hex(tx)
}

/// Mines a block holding exactly `txs` (which need not have been in the mempool).
fn block_with(node: &Node, txs: &[&Transaction]) -> Result<BlockHash> {
    let hexes: Vec<String> = txs.iter().map(|t| hex_of(t)).collect();
    let to = node.new_address("bech32")?.to_string();
    let v = node.call("generateblock", json!([to, hexes]))?;
    Ok(v["hash"].as_str().context("generateblock")?.parse()?)
}

fn broadcast(node: &Node, tx: &Transaction) -> Result<Txid> {
    Ok(node.call("sendrawtransaction", json!([hex_of(tx)]))?.as_str().context("txid")?.parse()?)
}

/// The wallet under test: its keys, and the crate's receiver for them (labels 0 and 1).
struct Wallet {
    scan: SecretKey,
    spend: PublicKey,
    receiver: Receiver,
}

impl Wallet {
    fn new(scan: u8, spend: u8) -> Wallet {
        let secp = Secp256k1::new();
        let (scan, spend) = (secret(scan), secret(spend).public_key(&secp));
        let mut receiver = Receiver::new(
            SpVersion::ZERO,
            scan.public_key(&secp),
            spend,
            Label::new(scan, 0),
            silentpayments::Network::Regtest,
        )
        .unwrap();
        receiver.add_label(Label::new(scan, 1)).unwrap();
        Wallet { scan, spend, receiver }
    }

    fn code(&self) -> SilentPaymentCode {
        self.receiver.receiving_code()
    }

    fn labeled(&self) -> SilentPaymentCode {
        self.receiver.receiving_code_for_label(&Label::new(self.scan, 1)).unwrap()
    }

    fn change(&self) -> SilentPaymentCode {
        self.receiver.change_code()
    }

    fn keys(&self) -> (String, String) {
        (hex::encode(self.scan.secret_bytes()), self.spend.to_string())
    }
}

/// What the crate's receiver side finds in `txid` as our server serves it (the transaction and
/// its parents, for the spent scripts): the tweak (`input_hash·A`) and how many outputs pay the
/// wallet.
fn crate_scan(c: &mut Conn, w: &Wallet, txid: &str) -> (String, usize) {
    let fetch = |c: &mut Conn, txid: &str| -> Transaction {
        let hex = c.result("blockchain.transaction.get", json!([txid]));
        bitcoin::consensus::encode::deserialize_hex(hex.as_str().unwrap()).unwrap()
    };
    let tx = fetch(c, txid);
    let mut keys = Vec::new();
    let mut outpoints = Vec::new();
    for input in &tx.input {
        let prev = input.previous_output;
        let parent = fetch(c, &prev.txid.to_string());
        let spk = &parent.output[prev.vout as usize].script_pubkey;
        let witness: Vec<Vec<u8>> = input.witness.to_vec();
        if let Some(k) = get_pubkey_from_input(input.script_sig.as_bytes(), &witness, spk.as_bytes()).unwrap()
        {
            keys.push(k);
        }
        outpoints.push(
            silentpayments::utils::OutPoint::from_txid_and_vout(&prev.txid.to_string(), prev.vout).unwrap(),
        );
    }
    let refs: Vec<&PublicKey> = keys.iter().collect();
    let tweak = calculate_tweak_data(&refs, &outpoints).unwrap();
    let shared = calculate_ecdh_shared_secret(&tweak, &w.scan);
    let outputs: Vec<XOnlyPublicKey> = tx
        .output
        .iter()
        .filter(|o| o.script_pubkey.is_p2tr())
        .map(|o| XOnlyPublicKey::from_slice(&o.script_pubkey.as_bytes()[2..]).unwrap())
        .collect();
    let found = w.receiver.scan_transaction(&shared, &outputs).unwrap();
    (tweak.to_string(), found.values().map(HashMap::len).sum())
}

/// The silent-payment notifications received so far, and their history entries as
/// (txid, height), in order.
fn sp_notifications(c: &Conn) -> Vec<&Value> {
    c.notifications.iter().filter(|n| n["method"] == "blockchain.silentpayments.subscribe").collect()
}

fn entries(ns: &[&Value]) -> Vec<(String, i64, String)> {
    ns.iter()
        .flat_map(|n| n["params"]["history"].as_array().unwrap().iter())
        .map(|e| {
            (
                e["tx_hash"].as_str().unwrap().to_string(),
                e["height"].as_i64().unwrap(),
                e["tweak_key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The entries of the silent-payment notifications among `ns` after the first `skip` of them.
fn sp_after(ns: &[Value], skip: usize) -> Vec<(String, i64, String)> {
    let sp: Vec<&Value> =
        ns.iter().filter(|n| n["method"] == "blockchain.silentpayments.subscribe").collect();
    entries(&sp[skip.min(sp.len())..])
}

/// Waits until the server's tip is at `height`.
fn wait_tip(c: &mut Conn, height: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let tip = c.result("blockchain.headers.subscribe", json!([]));
        if tip["height"].as_u64() == Some(height) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the server's tip stays at {tip}, not {height}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a notification with progress 1.0 came: the scan of the past is done.
fn scan_ended(ns: &[Value]) -> bool {
    ns.iter().any(|n| n["params"]["progress"] == json!(1.0))
}

/// A regtest node whose wallet has mature coins (110 blocks mined to it), and its mining address.
fn node_with_coins() -> Result<(Node, Address)> {
    let node = Node::start(NodeOptions::default())?;
    node.ensure_wallet()?;
    let miner = node.new_address("bech32")?;
    node.mine(110, &miner)?;
    Ok((node, miner))
}

/// Waits until the server's mempool holds `txid`.
fn wait_mempool(c: &mut Conn, txid: &Txid) {
    let deadline = std::time::Instant::now() + WAIT;
    while c
        .call("blockchain.transaction.get", json!([txid.to_string()]))
        .get("error")
        .is_some_and(|e| !e.is_null())
    {
        assert!(std::time::Instant::now() < deadline, "{txid} never reached the server's mempool");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn silent_payments_found_by_subscription_exactly_and_live() -> Result<()> {
    let (node, miner) = node_with_coins()?;
    let (w, other) = (Wallet::new(1, 2), Wallet::new(3, 4));

    let mut coins = Vec::new();
    for n in 0..14u8 {
        coins.push(fund(&node, secret(100 + n), if n % 2 == 0 { Kind::P2wpkh } else { Kind::P2tr })?);
    }
    // The other two input types BIP352 reads a key from, spent together below.
    coins.push(fund(&node, secret(114), Kind::P2pkh)?);
    coins.push(fund(&node, secret(115), Kind::P2shP2wpkh)?);
    node.mine(1, &miner)?;
    let plain = node.new_address("bech32")?;

    // Mined: to the wallet (P2WPKH input), to its label 1 (P2TR input), to its change and the
    // other wallet (both kinds of input), to the other wallet only, and to the wallet from a
    // P2PKH and a P2SH-P2WPKH input.
    let to_w = sp_payment(&coins[0..1], &[w.code()], std::slice::from_ref(&plain))?;
    let to_label = sp_payment(&coins[1..2], &[w.labeled()], &[])?;
    let to_change = sp_payment(&coins[2..4], &[w.change(), other.code()], &[])?;
    let to_other = sp_payment(&coins[4..5], &[other.code()], std::slice::from_ref(&plain))?;
    let legacy_and_nested = sp_payment(&coins[14..16], &[w.code()], &[])?;
    let mut expected: BTreeSet<(String, i64)> = BTreeSet::new();
    for tx in [&to_w, &to_label, &to_change, &to_other, &legacy_and_nested] {
        block_with(&node, &[tx])?;
        if !std::ptr::eq(tx, &to_other) {
            expected.insert((tx.compute_txid().to_string(), node.height()? as i64));
        }
    }
    // Reorged out: mined, then its block invalidated and a conflicting spend mined on two blocks.
    let reorged = sp_payment(&coins[5..6], &[w.code()], &[])?;
    let stale = block_with(&node, &[&reorged])?;
    node.call("invalidateblock", json!([stale.to_string()]))?;
    let conflict = sp_payment(&coins[5..6], &[], std::slice::from_ref(&plain))?;
    block_with(&node, &[&conflict])?;
    block_with(&node, &[])?;
    // Left in the mempool: to the wallet, and to its label with a plain output beside.
    let pending = sp_payment(&coins[6..7], &[w.code()], &[])?;
    let pending_label = sp_payment(&coins[7..8], &[w.labeled(), w.code()], std::slice::from_ref(&plain))?;
    for tx in [&pending, &pending_label] {
        broadcast(&node, tx)?;
        expected.insert((tx.compute_txid().to_string(), 0));
    }

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut indexer = Indexer::follow(&indexer_bin(), &node, &db, SP_INDEX)?;
    indexer.wait_synced(&node, &db)?;
    // A new block's batch makes its tweak tables from one member on (the default is 128), so
    // that this test's live scans go through them.
    let server = Server::start_with(&node, &db, &["--sp-table-from", "1"])?;
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["sp-test", "1.4"]));
    assert_eq!(c.result("server.features", json!([]))["silent_payments"], json!([0]));
    wait_tip(&mut c, node.height()?);
    wait_mempool(&mut c, &pending_label.compute_txid());

    let (scan, spend) = w.keys();
    let sub = c.result("blockchain.silentpayments.subscribe", json!([scan, spend, 0, [1]]));
    assert_eq!(sub["labels"], json!([0, 1]));
    assert_eq!(sub["start_height"], json!(0));
    let address = sub["address"].as_str().context("address")?.to_string();
    // The address is the independent implementation's for the same keys.
    assert_eq!(address, w.code().to_string());
    assert!(c.wait_until(WAIT, scan_ended), "the historical scan never finished: {:?}", c.notifications);
    // A mempool payment the server had not yet looked at would come live, just after: wait.
    c.wait_until(Duration::from_secs(2), |_| false);
    let ns = sp_notifications(&c);
    for n in &ns {
        assert_eq!(n["params"]["subscription"], sub, "every notification carries the reply's subscription");
        assert!(n["params"]["history"].as_array().unwrap().len() <= 100);
    }
    let progress: Vec<f64> = ns.iter().map(|n| n["params"]["progress"].as_f64().unwrap()).collect();
    assert!(progress.windows(2).all(|p| p[0] <= p[1]) && *progress.last().unwrap() == 1.0, "{progress:?}");
    let found = entries(&ns);
    let got: BTreeSet<(String, i64)> = found.iter().map(|(t, h, _)| (t.clone(), *h)).collect();
    assert_eq!(got, expected, "exactly the wallet's payments, at their heights (0: mempool)");
    assert_eq!(found.len(), expected.len(), "each once");
    // The crate's receiver side agrees on each, from what our server serves.
    for (txid, _, tweak) in &found {
        let (crate_tweak, paid) = crate_scan(&mut c, &w, txid);
        assert_eq!(&crate_tweak, tweak, "{txid}'s tweak");
        assert!(paid > 0, "{txid} pays the wallet by the crate's scan");
    }
    assert_eq!(crate_scan(&mut c, &w, &to_other.compute_txid().to_string()).1, 0);
    let seen_before = sp_notifications(&c).len();
    // The other wallet, live beside it: the new blocks' batches hold both, and each gets its own.
    let mut c2 = Conn::open(&server.addr);
    let (scan2, spend2) = other.keys();
    c2.result("blockchain.silentpayments.subscribe", json!([scan2, spend2, 0]));
    assert!(c2.wait_until(WAIT, scan_ended), "the other wallet's historical scan never finished");
    let got2: BTreeSet<String> = entries(&sp_notifications(&c2)).into_iter().map(|e| e.0).collect();
    let want2: BTreeSet<String> = [&to_change, &to_other].map(|t| t.compute_txid().to_string()).into();
    assert_eq!(got2, want2, "the other wallet's payments");
    let seen2 = sp_notifications(&c2).len();

    // A new block with a payment never in the mempool, and the two mempool ones: only the new
    // one is sent (a mempool transaction is sent once, and not again when mined).
    let in_block = sp_payment(&coins[8..9], &[w.change()], &[])?;
    block_with(&node, &[&in_block, &pending, &pending_label])?;
    let h = node.height()? as i64;
    let want = in_block.compute_txid().to_string();
    let newest = |ns: &[Value]| sp_after(ns, seen_before);
    assert!(c.wait_until(WAIT, |ns| !newest(ns).is_empty()), "no notification for the new block");
    wait_tip(&mut c, h as u64);
    std::thread::sleep(Duration::from_secs(1));
    c.wait_until(Duration::from_millis(500), |_| false);
    assert_eq!(
        newest(&c.notifications).iter().map(|e| (e.0.clone(), e.1)).collect::<Vec<_>>(),
        vec![(want, h)]
    );
    c2.wait_until(Duration::from_millis(500), |_| false);
    assert!(sp_after(&c2.notifications, seen2).is_empty(), "the block pays the other wallet nothing");
    let last = sp_notifications(&c).last().unwrap()["params"].clone();
    assert_eq!((last["progress"].clone(), last["subscription"].clone()), (json!(1.0), sub.clone()));

    // A new mempool payment: sent once, at height 0.
    let seen_before = sp_notifications(&c).len();
    let mempool_tx = sp_payment(&coins[9..10], &[w.code()], &[])?;
    broadcast(&node, &mempool_tx)?;
    let newest = |ns: &[Value]| sp_after(ns, seen_before);
    assert!(c.wait_until(WAIT, |ns| !newest(ns).is_empty()), "no notification for the mempool payment");
    assert_eq!(
        newest(&c.notifications).iter().map(|e| (e.0.clone(), e.1)).collect::<Vec<_>>(),
        vec![(mempool_tx.compute_txid().to_string(), 0)]
    );

    // A reorg: a payment mined (notified), its block replaced by one with another payment
    // spending the same coin: the rescan from the fork sends the new one at its height.
    let seen_before = sp_notifications(&c).len();
    let first = sp_payment(&coins[10..11], &[w.code()], &[])?;
    let replaced = block_with(&node, &[&first])?;
    let fork_height = node.height()? as i64;
    let newest = |ns: &[Value]| sp_after(ns, seen_before);
    let first_id = first.compute_txid().to_string();
    assert!(
        c.wait_until(WAIT, |ns| newest(ns).iter().any(|e| e.0 == first_id)),
        "no notification for the block"
    );
    wait_tip(&mut c, fork_height as u64);
    let seen_before = sp_notifications(&c).len();
    node.call("invalidateblock", json!([replaced.to_string()]))?;
    let second = sp_payment(&coins[10..11], &[w.labeled()], &[])?;
    block_with(&node, &[&second])?;
    block_with(&node, &[])?;
    let second_id = second.compute_txid().to_string();
    let newest = |ns: &[Value]| sp_after(ns, seen_before);
    assert!(
        c.wait_until(WAIT, |ns| newest(ns).iter().any(|e| e.0 == second_id)),
        "no notification after the reorg: {:?}",
        sp_after(&c.notifications, seen_before)
    );
    let after = newest(&c.notifications);
    assert!(after.iter().any(|e| (e.0.as_str(), e.1) == (second_id.as_str(), fork_height)), "{after:?}");
    // The replaced payment is not reported mined again (it may show at height 0: the
    // invalidated block put it back in the mempool for a moment).
    assert!(!after.iter().any(|e| e.0 == first_id && e.1 > 0), "{after:?}");

    // Unsubscribing answers the address; no more notifications for it.
    assert_eq!(c.result("blockchain.silentpayments.unsubscribe", json!([scan, spend])), json!(address));
    let seen_before = sp_notifications(&c).len();
    let late = sp_payment(&coins[11..12], &[w.code()], &[])?;
    block_with(&node, &[&late])?;
    wait_tip(&mut c, node.height()?);
    c.wait_until(Duration::from_secs(2), |_| false);
    assert_eq!(sp_notifications(&c).len(), seen_before, "a notification after unsubscribing");

    // A "FROM-TO" range is scanned once: exactly the payments of its blocks, at 1.0, and nothing
    // live after it (a payment in a new block is not sent).
    let to_w_id = to_w.compute_txid().to_string();
    let to_w_height = expected.iter().find(|(t, _)| *t == to_w_id).unwrap().1;
    let mut r = Conn::open(&server.addr);
    r.result("server.version", json!(["sp-test", "1.4"]));
    let range = r.result(
        "blockchain.silentpayments.subscribe",
        json!([scan, spend, format!("{to_w_height}-{to_w_height}")]),
    );
    assert_eq!(range["start_height"], json!(to_w_height));
    assert!(r.wait_until(WAIT, scan_ended), "the range's scan never finished");
    let got: Vec<(String, i64)> =
        entries(&sp_notifications(&r)).into_iter().map(|(t, h, _)| (t, h)).collect();
    assert_eq!(got, vec![(to_w_id, to_w_height)], "the range's payments only");
    let seen_in_range = sp_notifications(&r).len();
    block_with(&node, &[&sp_payment(&coins[13..14], &[w.code()], &[])?])?;
    wait_tip(&mut r, node.height()?);
    r.wait_until(Duration::from_secs(2), |_| false);
    assert_eq!(sp_notifications(&r).len(), seen_in_range, "a range subscription has no live part");
    // A start given as a time (above 500,000,000) is the first block of at least that time.
    let time_of = |c: &mut Conn, h: i64| -> u32 {
        let hex = c.result("blockchain.block.header", json!([h]));
        bitcoin::consensus::encode::deserialize_hex::<bitcoin::block::Header>(hex.as_str().unwrap())
            .unwrap()
            .time
    };
    let t = time_of(&mut r, to_w_height);
    let mut tc = Conn::open(&server.addr);
    tc.result("server.version", json!(["sp-test", "1.4"]));
    let by_time = tc.result("blockchain.silentpayments.subscribe", json!([scan, spend, t]));
    let h = by_time["start_height"].as_i64().context("start_height")?;
    assert!(h <= to_w_height && time_of(&mut tc, h) >= t, "{by_time}");
    assert!(h == 0 || time_of(&mut tc, h - 1) < t, "{by_time}: an earlier block is as late");

    // Client-side scanning: the tweaks of the first payment's block, with its position and the
    // prefixes of its taproot outputs.
    let (block_txid, block_height) =
        expected.iter().find(|(t, _)| *t == to_w.compute_txid().to_string()).unwrap();
    let r = c.result("blockchain.silentpayments.tweaks", json!([block_height, 1]));
    let blocks = r["blocks"].as_array().context("blocks")?;
    assert_eq!(blocks.len(), 1, "{r}");
    assert_eq!(blocks[0]["height"], json!(block_height));
    let hash = c.result("blockchain.block.header", json!([block_height]));
    let hash = bitcoin::consensus::encode::deserialize_hex::<bitcoin::block::Header>(hash.as_str().unwrap())?;
    assert_eq!(blocks[0]["hash"], json!(hash.block_hash().to_string()));
    let t = &blocks[0]["tweaks"].as_array().unwrap()[0];
    let pos = t["pos"].as_u64().unwrap();
    assert_eq!(c.result("blockchain.transaction.id_from_pos", json!([block_height, pos])), json!(block_txid));
    assert_eq!(t["tweak"].as_str().unwrap(), crate_scan(&mut c, &w, block_txid).0);
    let prefixes: Vec<String> = to_w
        .output
        .iter()
        .filter(|o| o.script_pubkey.is_p2tr())
        .map(|o| hex::encode(&o.script_pubkey.as_bytes()[2..10]))
        .collect();
    assert_eq!(t["outputs"], json!(prefixes));
    assert_eq!(r["next"], json!(block_height + 1));
    let all = c.result("blockchain.silentpayments.tweaks", json!([0, 100_000]));
    assert_eq!(all["next"], Value::Null, "the whole chain in one page on regtest");
    let listed: usize =
        all["blocks"].as_array().unwrap().iter().map(|b| b["tweaks"].as_array().unwrap().len()).sum();
    assert!(listed >= 7, "every eligible transaction mined: {all}");

    // Limits, checked before any work: labels, subscriptions per session.
    let e = c
        .call("blockchain.silentpayments.subscribe", json!([scan, spend, 0, (1..=11).collect::<Vec<u32>>()]));
    assert_eq!(e["error"]["code"], json!(-101), "{e}");
    let (oscan, ospend) = other.keys();
    let again = c.result("blockchain.silentpayments.subscribe", json!([scan, spend, 5]));
    assert_eq!(again["start_height"], json!(5));
    let narrower = c.result("blockchain.silentpayments.subscribe", json!([scan, spend, 9]));
    assert_eq!(narrower["start_height"], json!(5), "a re-subscribe never narrows the start");
    drop(c);
    let server2 = Server::start_with(&node, &db, &["--sp-max-subscriptions", "1"])?;
    let mut c2 = Conn::open(&server2.addr);
    c2.result("server.version", json!(["sp-test", "1.4"]));
    let e = c2.call("blockchain.silentpayments.subscribe", json!([scan, spend, 0]));
    assert!(e["result"].is_object(), "{e}");
    let e = c2.call("blockchain.silentpayments.subscribe", json!([oscan, ospend, 0]));
    assert_eq!(e["error"]["code"], json!(-101), "a second subscription past --sp-max-subscriptions 1: {e}");
    // Subscribing again to the same address is not a new subscription.
    let e = c2.call("blockchain.silentpayments.subscribe", json!([scan, spend, 3]));
    assert!(e["result"].is_object(), "{e}");
    // A scan over its CPU budget at its first chunk: the session is told (-101) and closed.
    let server3 = Server::start_with(&node, &db, &["--sp-scan-cpu-secs", "0.000001"])?;
    let sub =
        crate::common::req(1, "blockchain.silentpayments.subscribe", json!([scan, spend, 0])).to_string();
    let lines = crate::common::raw(&server3.addr, &[&sub], 3);
    assert_eq!(lines.len(), 2, "the reply, the error, then the end: {lines:?}");
    let error: Value = serde_json::from_str(&lines[1])?;
    assert_eq!(error["error"]["code"], json!(-101), "{error}");
    assert!(server3.log().contains("a silent-payments scan over its CPU limit"), "{}", server3.log());
    // A live rescan has a scan's budget too: subscribed above the tip (no past block to scan,
    // so within it; the look at the mempool is part of the scan of the past, so the mempool is
    // mined first and a server started on an empty one), then the new block's scan is over it.
    node.mine(1, &miner)?;
    anyhow::ensure!(node.call("getrawmempool", json!([]))? == json!([]), "the node's mempool is not empty");
    let server4 = Server::start_with(&node, &db, &["--sp-scan-cpu-secs", "0.000001"])?;
    {
        use std::io::{BufRead, Write};
        let s = std::net::TcpStream::connect(&server4.addr)?;
        s.set_read_timeout(Some(WAIT))?;
        let mut lines = std::io::BufReader::new(s.try_clone()?).lines();
        let tip = node.height()?;
        let sub = crate::common::req(1, "blockchain.silentpayments.subscribe", json!([scan, spend, tip + 1]));
        (&s).write_all(format!("{sub}\n").as_bytes())?;
        let reply: Value = serde_json::from_str(&lines.next().context("no reply")??)?;
        assert!(reply["result"].is_object(), "{reply}");
        let done: Value = serde_json::from_str(&lines.next().context("no progress page")??)?;
        assert_eq!(done["params"]["progress"], json!(1.0), "nothing to scan before the tip: {done}");
        block_with(&node, &[&sp_payment(&coins[12..13], &[w.code()], &[])?])?;
        let error: Value = serde_json::from_str(&lines.next().context("no error after the block")??)?;
        assert_eq!(error["error"]["code"], json!(-101), "{error}");
        assert!(lines.next().is_none(), "the session is closed after it");
    }

    // No key in the logs (the server logs every request at debug level here).
    for log in [server.log(), server2.log(), server3.log(), server4.log()] {
        assert!(!log.contains(&scan) && !log.contains(&oscan), "a scan key in the log");
        assert!(!log.contains(&spend), "a spend key in the log");
    }
    Ok(())
}

/// A `gen-blocks` chain of `gb` GB from `seed` in `<dir>/chain` (no node can validate it: its
/// signatures are made up), and where its index goes, `<dir>/db`.
fn generated_chain(
    dir: &std::path::Path,
    gb: &str,
    seed: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let datadir = dir.join("chain");
    let generated = std::process::Command::new(crate::common::workspace_bin("gen-blocks"))
        .args(["--gb", gb, "--seed", seed, "--datadir"])
        .arg(&datadir)
        .output()?;
    anyhow::ensure!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    Ok((datadir, dir.join("db")))
}

/// `generated_chain`, indexed by `index_offline` to its end.
fn indexed_chain(
    dir: &std::path::Path,
    gb: &str,
    seed: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (datadir, db) = generated_chain(dir, gb, seed)?;
    let indexed = index_offline(&datadir, &db, None)?;
    anyhow::ensure!(indexed.status.success(), "{}", String::from_utf8_lossy(&indexed.stderr));
    Ok((datadir, db))
}

/// The indexer's whole job on `datadir` without a node (`--offline --no-follow`), with
/// `BLKINDEX_FAILPOINT` set to `failpoint` if given.
fn index_offline(
    datadir: &std::path::Path,
    db: &std::path::Path,
    failpoint: Option<&str>,
) -> Result<std::process::Output> {
    let mut cmd = std::process::Command::new(indexer_bin());
    cmd.args(["--network", "regtest", "--offline", "--no-follow", "--progress", "none", "--datadir"])
        .arg(datadir)
        .arg("--db")
        .arg(db);
    if let Some(f) = failpoint {
        cmd.env("BLKINDEX_FAILPOINT", f);
    }
    Ok(cmd.output()?)
}

/// Scan slots: `--sp-max-scans` over the server and `--sp-max-scans-per-ip` per client address
/// (here 2 and 1, loopback counted: 127.0.0.2 is another client than 127.0.0.1). A subscription
/// made again takes over its own scan's slot; one past either limit is refused (-101, each with
/// its own message, nothing queued) and accepted once a scan is done. On a chain `gen-blocks`
/// makes (no node: its signatures are made up), whose 36,450 eligible transactions keep the one
/// scan thread busy for about two seconds a scan.
#[test]
fn scan_slots_are_capped_per_server_and_per_address_until_a_scan_ends() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (datadir, db) = indexed_chain(dir.path(), "0.3", "5")?;
    let args =
        ["--sp-max-scans", "2", "--sp-max-scans-per-ip", "1", "--limit-loopback", "--sp-scan-threads", "1"];
    let server = Server::start_no_node_on(&datadir, &db, &args)?;
    let (first, second) = (Wallet::new(1, 2).keys(), Wallet::new(3, 4).keys());
    let subscribe = |c: &mut Conn, keys: &(String, String)| {
        c.call("blockchain.silentpayments.subscribe", json!([keys.0, keys.1, 0]))
    };
    let refused = |reply: &Value, why: &str| {
        reply["error"]["code"] == json!(-101)
            && reply["error"]["message"].as_str().is_some_and(|m| m.contains(why))
    };
    let mut a = Conn::open_from(&server.addr, "127.0.0.1");
    let t = std::time::Instant::now();
    assert!(subscribe(&mut a, &first)["result"].is_object());
    let again = subscribe(&mut a, &first);
    assert!(again["result"].is_object(), "the same subscription again, in its own slot: {again}");
    let mut b = Conn::open_from(&server.addr, "127.0.0.1");
    let one_address = subscribe(&mut b, &second);
    assert!(refused(&one_address, "from your address"), "a second scan from 127.0.0.1: {one_address}");
    let mut c = Conn::open_from(&server.addr, "127.0.0.2");
    let other = subscribe(&mut c, &second);
    assert!(other["result"].is_object(), "another address's first scan: {other}");
    let mut d = Conn::open_from(&server.addr, "127.0.0.3");
    let full = subscribe(&mut d, &second);
    assert!(refused(&full, "server is busy"), "a third scan past --sp-max-scans 2: {full}");
    assert!(a.wait_until(Duration::from_secs(300), scan_ended), "the first scan did not end");
    eprintln!("the first scan took {:.1} s", t.elapsed().as_secs_f64());
    let accepted = subscribe(&mut b, &second);
    assert!(accepted["result"].is_object(), "127.0.0.1's slot is free again: {accepted}");
    assert!(b.wait_until(Duration::from_secs(300), scan_ended), "the second scan did not end");
    assert!(c.wait_until(Duration::from_secs(300), scan_ended), "the third scan did not end");
    // A refused subscription left nothing behind: no notification came to its connection.
    d.result("server.ping", json!([]));
    assert!(d.notifications.is_empty(), "{:?}", d.notifications);
    Ok(())
}

/// Live subscriptions: `--sp-max-live` over the server and `--sp-max-live-per-ip` per client
/// address (here 3 and 2, loopback counted), apart from the scan slots. A subscription made
/// again keeps its place; a range (`"FROM-TO"`) needs none; one past either cap is refused
/// (-101) and leaves what the session held as it was (a range refused its live part still
/// scans to its end); places come free when a subscription is dropped or its session closes.
#[test]
fn live_subscriptions_are_capped_per_server_and_per_address_until_dropped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (datadir, db) = indexed_chain(dir.path(), "0.05", "6")?;
    let args =
        ["--sp-max-live", "3", "--sp-max-live-per-ip", "2", "--sp-max-scans-per-ip", "8", "--limit-loopback"];
    let server = Server::start_no_node_on(&datadir, &db, &args)?;
    let w: Vec<(String, String)> = (1..=5u8).map(|i| Wallet::new(2 * i, 2 * i + 1).keys()).collect();
    let mut a = Conn::open_from(&server.addr, "127.0.0.1");
    let tip = a.result("blockchain.headers.subscribe", json!([]))["height"].as_u64().context("tip")?;
    let subscribe = |c: &mut Conn, k: &(String, String), start: Value| {
        c.call("blockchain.silentpayments.subscribe", json!([k.0, k.1, start]))
    };
    let live = |c: &mut Conn, k: &(String, String)| subscribe(c, k, json!(tip + 1));
    let refused = |reply: &Value, why: &str| {
        reply["error"]["code"] == json!(-101)
            && reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("live silent-payment subscriptions") && m.contains(why))
    };
    let accepted = |reply: &Value| reply["result"].is_object();

    assert!(accepted(&live(&mut a, &w[0])) && accepted(&live(&mut a, &w[1])), "two from 127.0.0.1");
    assert!(accepted(&live(&mut a, &w[0])), "one made again keeps its place");
    let mut b = Conn::open_from(&server.addr, "127.0.0.1");
    let third = live(&mut b, &w[2]);
    assert!(refused(&third, "from your address"), "a third live one from 127.0.0.1: {third}");
    let range = subscribe(&mut b, &w[2], json!(format!("0-{tip}")));
    assert!(accepted(&range), "a range takes no live place: {range}");
    let widened = live(&mut b, &w[2]);
    assert!(refused(&widened, "from your address"), "the range made live: {widened}");
    assert!(b.wait_until(WAIT, scan_ended), "the range's scan did not end after a refusal");

    let mut c = Conn::open_from(&server.addr, "127.0.0.2");
    assert!(accepted(&live(&mut c, &w[3])), "another address's first");
    let mut d = Conn::open_from(&server.addr, "127.0.0.3");
    let full = live(&mut d, &w[4]);
    assert!(refused(&full, "server is busy"), "a fourth past --sp-max-live 3: {full}");
    a.result("blockchain.silentpayments.unsubscribe", json!([w[1].0, w[1].1]));
    assert!(accepted(&live(&mut d, &w[4])), "a place freed by unsubscribing");
    assert!(refused(&live(&mut b, &w[2]), "server is busy"), "full again");

    // A closed session's places come free once the server has seen it go.
    drop(c);
    let deadline = std::time::Instant::now() + WAIT;
    let reply = loop {
        let reply = live(&mut b, &w[2]);
        if accepted(&reply) || std::time::Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(accepted(&reply), "127.0.0.2's place after its session closed: {reply}");
    Ok(())
}

/// The tweak pass (a bulk pass's tweaks, computed after its other rows): while it has not run, a
/// server on the index serves no tweak it lacks (the client method stops at the first height
/// still to do and refuses it; a subscription's scan of past blocks waits, its progress below
/// 1.0); once the
/// indexer runs again, finishes the pass and exits, the running server takes it in (no new tip
/// tells it) and the scan ends. On a small `gen-blocks` chain, the pass killed before its first
/// write (`BLKINDEX_FAILPOINT=tweaks:1`).
#[test]
fn scans_wait_for_the_tweak_pass_and_end_after_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (datadir, db) = generated_chain(dir.path(), "0.05", "6")?;
    let killed = index_offline(&datadir, &db, Some("tweaks:1"))?;
    let stderr = String::from_utf8_lossy(&killed.stderr);
    assert!(!killed.status.success() && stderr.contains("failpoint tweaks:1"), "{stderr}");

    let server = Server::start_no_node_on(&datadir, &db, &[])?;
    let mut c = Conn::open(&server.addr);
    let tip = c.result("blockchain.headers.subscribe", json!([]))["height"].as_u64().context("tip")?;
    // Below the heights still to do, an answer that points at the first of them; there, an error.
    let below = c.result("blockchain.silentpayments.tweaks", json!([0, 100_000]));
    let pending = below["next"].as_u64().context("a next height while the pass is to do")?;
    assert!(pending <= tip && below["blocks"].as_array().is_some_and(|b| b.is_empty()), "{below}");
    let early = c.call("blockchain.silentpayments.tweaks", json!([pending, 1]));
    let message = early["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("tweaks of heights {pending} to")), "{early}");
    let (scan, spend) = Wallet::new(1, 2).keys();
    c.result("blockchain.silentpayments.subscribe", json!([scan, spend, 0]));
    assert!(
        !c.wait_until(Duration::from_secs(3), scan_ended),
        "a scan ended before the tweaks were computed"
    );

    let finished = index_offline(&datadir, &db, None)?;
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert!(finished.status.success() && stdout.contains("silent-payment tweaks of"), "{stdout}");
    assert!(c.wait_until(WAIT, scan_ended), "the scan did not end once the tweak pass was done");
    let late = c.result("blockchain.silentpayments.tweaks", json!([tip, 1]));
    assert!(late["blocks"].is_array(), "{late}");
    Ok(())
}

/// More hits than a page: 101 payments to the wallet in one block are sent as a page of 100
/// (progress below 1.0) and then the last one with progress 1.0, each once.
#[test]
fn more_payments_than_a_page_come_in_pages_of_at_most_100() -> Result<()> {
    let (node, miner) = node_with_coins()?;
    // 101 coins of 101 keys, from one transaction of the node's wallet.
    let keys: Vec<SecretKey> = (0..101u8).map(|i| secret(150 + i)).collect();
    let amounts: serde_json::Map<String, Value> =
        keys.iter().map(|k| (address_of(k, Kind::P2wpkh).to_string(), json!(0.01))).collect();
    let txid: Txid = node.wallet_call("sendmany", json!(["", amounts]))?.as_str().context("txid")?.parse()?;
    let funding = get_tx(&node, &txid)?;
    node.mine(1, &miner)?;
    let coins: Vec<Coin> = keys
        .iter()
        .map(|k| {
            let spk = address_of(k, Kind::P2wpkh).script_pubkey();
            let vout = funding.output.iter().position(|o| o.script_pubkey == spk).unwrap();
            Coin {
                outpoint: OutPoint { txid, vout: vout as u32 },
                txout: funding.output[vout].clone(),
                key: *k,
                kind: Kind::P2wpkh,
            }
        })
        .collect();
    let w = Wallet::new(1, 2);
    let payments: Vec<Transaction> =
        coins.iter().map(|c| sp_payment(std::slice::from_ref(c), &[w.code()], &[])).collect::<Result<_>>()?;
    block_with(&node, &payments.iter().collect::<Vec<_>>())?;
    let height = node.height()? as i64;

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let mut indexer = Indexer::follow(&indexer_bin(), &node, &db, SP_INDEX)?;
    indexer.wait_synced(&node, &db)?;
    let server = Server::start(&node, &db)?;
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["sp-test", "1.4"]));
    wait_tip(&mut c, height as u64);
    let (scan, spend) = w.keys();
    c.result("blockchain.silentpayments.subscribe", json!([scan, spend, 0]));
    assert!(c.wait_until(WAIT, scan_ended), "the scan never finished");
    let ns = sp_notifications(&c);
    let sizes: Vec<usize> = ns.iter().map(|n| n["params"]["history"].as_array().unwrap().len()).collect();
    let progress: Vec<f64> = ns.iter().map(|n| n["params"]["progress"].as_f64().unwrap()).collect();
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert!(sizes.iter().filter(|&&n| n > 0).count() >= 2, "{sizes:?}");
    assert!(progress.windows(2).all(|p| p[0] <= p[1]) && *progress.last().unwrap() == 1.0, "{progress:?}");
    assert!(progress[sizes.iter().position(|&n| n == 100).unwrap()] < 1.0, "{progress:?}");
    let got: BTreeSet<(String, i64)> = entries(&ns).into_iter().map(|(t, h, _)| (t, h)).collect();
    let want: BTreeSet<(String, i64)> =
        payments.iter().map(|t| (t.compute_txid().to_string(), height)).collect();
    assert_eq!(got, want);
    assert_eq!(entries(&ns).len(), 101, "each once");
    Ok(())
}

/// The tweak pass beside the follower: while it is held (a pause point) on a bulk pass's heights,
/// a subscription that starts above them, at a block the follower indexed since, is served at
/// once, to its end; one from height 0 waits below 1.0 and ends once the pass is let go.
#[test]
fn a_subscription_above_the_tweaks_still_to_do_is_served_while_the_pass_runs() -> Result<()> {
    let (node, miner) = node_with_coins()?;
    let (first, second) = (fund(&node, secret(90), Kind::P2wpkh)?, fund(&node, secret(91), Kind::P2tr)?);
    node.mine(1, &miner)?;
    let w = Wallet::new(1, 2);
    let early = sp_payment(&[first], &[w.code()], &[])?;
    block_with(&node, &[&early])?;
    let early_height = node.height()? as i64;

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let pause = PausePoint::new(dir.path(), "tweaks");
    let mut indexer = Indexer::follow_with_env(&indexer_bin(), &node, &db, SP_INDEX, &[pause.env()])?;
    indexer.wait_synced(&node, &db)?;
    pause.wait_reached(WAIT)?;
    let server = Server::start(&node, &db)?;

    // A payment in a block the follower indexes: its tweaks are computed at once.
    let late = sp_payment(&[second], &[w.code()], &[])?;
    block_with(&node, &[&late])?;
    let late_height = node.height()? as i64;
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["sp-test", "1.4"]));
    wait_tip(&mut c, late_height as u64);
    let (scan, spend) = w.keys();
    c.result("blockchain.silentpayments.subscribe", json!([scan, spend, late_height]));
    assert!(c.wait_until(WAIT, scan_ended), "a scan above the heights still to do did not end");
    let late_entry = (late.compute_txid().to_string(), late_height);
    let got: Vec<(String, i64)> =
        entries(&sp_notifications(&c)).into_iter().map(|(t, h, _)| (t, h)).collect();
    assert_eq!(got, vec![late_entry.clone()]);
    assert!(!pause.released(), "the pass is still held");

    // From height 0 the scan waits at the heights still to do.
    let mut c0 = Conn::open(&server.addr);
    c0.result("server.version", json!(["sp-test", "1.4"]));
    c0.result("blockchain.silentpayments.subscribe", json!([scan, spend, 0]));
    assert!(!c0.wait_until(Duration::from_secs(3), scan_ended), "a scan ended through heights still to do");
    pause.release()?;
    assert!(c0.wait_until(WAIT, scan_ended), "the scan did not end once the pass was let go");
    let got: BTreeSet<(String, i64)> =
        entries(&sp_notifications(&c0)).into_iter().map(|(t, h, _)| (t, h)).collect();
    let want: BTreeSet<(String, i64)> = [(early.compute_txid().to_string(), early_height), late_entry].into();
    assert_eq!(got, want);
    drop(indexer);
    Ok(())
}

/// A scan that fails (here on a `tweak` row corrupted on disk after indexing: a point off the
/// curve) tells its wallet with an error and closes the session, rather than leaving it waiting
/// for notifications that will not come; the server logs why, the session's places come free,
/// and the blocks below the bad row still serve other wallets.
#[test]
fn a_failed_scan_tells_its_wallet_and_frees_its_places() -> Result<()> {
    use blkindex_shared::schema::{cf, height_key};
    use blkindex_shared::store::{Mode, Store};
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir()?;
    let (datadir, db) = indexed_chain(dir.path(), "0.05", "6")?;
    let bad = {
        let store = Store::open(&db, Mode::Bulk)?;
        let (tip, _) = store.tip()?.context("a tip")?;
        // A block in the middle with eligible transactions (those without have no row).
        let (bad, value) = (tip / 2..tip)
            .find_map(|h| {
                store.db().get_cf(store.cf(cf::TWEAK), height_key(h)).ok().flatten().map(|v| (h, v))
            })
            .context("no block with eligible transactions above the middle")?;
        // The last byte of the first tweak's y: after its txnum's LEB128 bytes, then 63.
        let at = value.iter().position(|b| b & 0x80 == 0).context("a txnum")? + 1 + 63;
        let mut corrupt = value.to_vec();
        corrupt[at] ^= 1;
        store.db().put_cf(store.cf(cf::TWEAK), height_key(bad), corrupt)?;
        store.flush()?;
        bad
    };
    let server = Server::start_no_node_on(&datadir, &db, &["--sp-max-live", "1", "--limit-loopback"])?;

    // From height 0 the scan meets the bad row: the reply, then the error, then the close.
    let (scan, spend) = Wallet::new(7, 8).keys();
    let mut s = std::net::TcpStream::connect(&server.addr)?;
    s.set_read_timeout(Some(WAIT))?;
    let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "blockchain.silentpayments.subscribe",
        "params": [scan, spend, 0]});
    s.write_all(format!("{subscribe}\n").as_bytes())?;
    let lines: Vec<Value> = std::io::BufReader::new(&s)
        .lines()
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect::<Result<_>>()
        .context("the session was not closed")?;
    assert!(lines.first().is_some_and(|r| r["id"] == json!(1) && r["result"].is_object()), "{lines:?}");
    let last = lines.last().context("nothing")?;
    assert!(
        last["id"].is_null()
            && last["error"]["code"] == json!(-32000)
            && last["error"]["message"].as_str().is_some_and(|m| m.contains("scan failed")),
        "the error before the close: {lines:?}"
    );
    assert!(!last.to_string().contains(&scan), "no key in the error");
    assert!(server.logged_within(&format!("tweak row of block {bad}"), WAIT), "{}", server.log());
    assert!(server.logged_within(r#"reason="a silent-payments scan failed""#, WAIT), "{}", server.log());
    assert!(!server.log().contains(&scan), "no key in the log");

    // Its live place (the only one, `--sp-max-live 1`) is free, and blocks below the bad row scan.
    let mut c = Conn::open(&server.addr);
    let range =
        c.result("blockchain.silentpayments.subscribe", json!([scan, spend, format!("0-{}", bad - 1)]));
    assert!(range.is_object(), "{range}");
    assert!(c.wait_until(WAIT, scan_ended), "the scan below the bad row did not end");
    let other = Wallet::new(9, 10).keys();
    let deadline = std::time::Instant::now() + WAIT;
    let live = loop {
        let reply = c.call("blockchain.silentpayments.subscribe", json!([other.0, other.1, bad + 1]));
        if reply["result"].is_object() || std::time::Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(live["result"].is_object(), "the failed session's live place came free: {live}");
    Ok(())
}
