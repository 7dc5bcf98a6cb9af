//! A mempool larger than one batch of the server's node calls (500 transactions): read whole by
//! a server started into it, followed by events as more arrive, and let go block by block; at
//! each step the server's view of it is the node's (fees, heights, balance), chains of
//! unconfirmed parents included.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::key::CompressedPublicKey;
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Address, Amount, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;
use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, Conn, Server};

/// A key outside the node's wallet, whose coins the test spends itself.
struct Key {
    secp: Secp256k1<All>,
    sk: SecretKey,
    pk: CompressedPublicKey,
    spk: ScriptBuf,
}

impl Key {
    fn new() -> Key {
        let secp = Secp256k1::new();
        let sk = SecretKey::from_slice(&[0x5a; 32]).unwrap();
        let pk = CompressedPublicKey(sk.public_key(&secp));
        let spk = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
        Key { secp, sk, pk, spk }
    }

    /// `prevout` (worth `value`) to `outputs` outputs of ours, 300 sat less, signed.
    fn spend(&self, prevout: OutPoint, value: u64, outputs: u64) -> Transaction {
        let each = (value - 300) / outputs;
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: prevout,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: (0..outputs)
                .map(|_| TxOut { value: Amount::from_sat(each), script_pubkey: self.spk.clone() })
                .collect(),
        };
        let h = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &self.spk, Amount::from_sat(value), EcdsaSighashType::All)
            .unwrap();
        let sig = self.secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &self.sk);
        let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
        tx.input[0].witness = Witness::p2wpkh(&sig, &self.pk.0);
        tx
    }
}

/// Sends `txs` in one batch; every one accepted.
fn send(node: &Node, txs: &[Transaction]) -> Result<()> {
    let calls: Vec<(&str, Value)> =
        txs.iter().map(|t| ("sendrawtransaction", json!([serialize_hex(t)]))).collect();
    for (t, r) in txs.iter().zip(node.rpc().batch(&calls)?) {
        r.with_context(|| format!("sending {}", t.compute_txid()))?;
    }
    Ok(())
}

/// The script's unconfirmed history as the node's mempool makes it: every transaction with its
/// fee, at height -1 when it spends another unconfirmed one; sorted by txid.
fn node_view(node: &Node) -> Result<Vec<Value>> {
    let pool = node.call("getrawmempool", json!([true]))?;
    let mut out: Vec<Value> = pool
        .as_object()
        .unwrap()
        .iter()
        .map(|(txid, e)| {
            let fee = (e["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64;
            let height = if e["depends"].as_array().unwrap().is_empty() { 0 } else { -1 };
            json!({"tx_hash": txid, "height": height, "fee": fee})
        })
        .collect();
    out.sort_by_key(|v| v["tx_hash"].as_str().unwrap().to_string());
    Ok(out)
}

/// Waits until the server's unconfirmed history of `sh` is `want` (sorted by txid).
fn wait_view(c: &mut Conn, sh: &ScriptHash, want: &[Value], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = c.result("blockchain.scripthash.get_mempool", json!([sh.to_string()]));
        let got = got.as_array_mut().unwrap();
        got.sort_by_key(|v| v["tx_hash"].as_str().unwrap().to_string());
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the server has {} unconfirmed, the node {}; first differences: {:?}",
            got.len(),
            want.len(),
            got.iter().zip(want).find(|(a, b)| a != b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_mempool_of_many_batches_is_read_followed_and_let_go_as_the_node_has_it() -> Result<()> {
    // The default regtest check of the whole mempool after each transaction is quadratic.
    let opts = NodeOptions { extra_args: vec!["-checkmempool=0".into()], ..Default::default() };
    let node = Node::start(opts)?;
    let b = ChainBuilder::new(&node)?;
    b.mine(101)?;
    let key = Key::new();
    let address = Address::p2wpkh(&key.pk, Network::Regtest);
    let sh = ScriptHash::of(key.spk.as_bytes());
    let funding = node.send(&address, Amount::from_btc(10.0)?)?;
    b.mine(1)?;
    let raw = node.wallet_call("gettransaction", json!([funding.to_string()]))?["hex"].clone();
    let funding_tx: Transaction = bitcoin::consensus::encode::deserialize_hex(raw.as_str().unwrap())?;
    let vout = funding_tx.output.iter().position(|o| o.script_pubkey == key.spk).unwrap() as u32;
    // 2,000 coins of ours, confirmed.
    let fan_out = key.spend(OutPoint { txid: funding, vout }, 1_000_000_000, 2000);
    let each = fan_out.output[0].value.to_sat();
    b.mine_txs(std::slice::from_ref(&fan_out))?;
    let coin = |i: u32| OutPoint { txid: fan_out.compute_txid(), vout: i };
    // 1,200 independent spends, and a chain of 20 unconfirmed parents and children.
    let mut first: Vec<Transaction> = (0..1200).map(|i| key.spend(coin(i), each, 2)).collect();
    let mut link = key.spend(coin(1200), each, 1);
    for _ in 0..20 {
        let next =
            key.spend(OutPoint { txid: link.compute_txid(), vout: 0 }, link.output[0].value.to_sat(), 1);
        first.push(std::mem::replace(&mut link, next));
    }
    send(&node, &first)?;
    let (dir, _indexer) = indexed(&node)?;

    // Started into it: one whole read, in batches.
    let server = Server::start(&node, &dir.path().join("db"))?;
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["big-mempool", "1.4"]));
    let want = node_view(&node)?;
    assert_eq!(want.len(), 1220);
    assert_eq!(want.iter().filter(|v| v["height"] == -1).count(), 19, "the chain's children");
    wait_view(&mut c, &sh, &want, "after start-up");
    let log = server.log();
    assert!(log.contains("mempool view complete: 1220 txs"), "{log}");

    // More arrive while it runs: followed by events, in batches too.
    let more: Vec<Transaction> = (1201..2000).map(|i| key.spend(coin(i), each, 3)).collect();
    send(&node, &more)?;
    let want = node_view(&node)?;
    assert_eq!(want.len(), 2019);
    wait_view(&mut c, &sh, &want, "after 799 more arrived");
    let balance = c.result("blockchain.scripthash.get_balance", json!([sh.to_string()]));
    let fees: u64 = want.iter().map(|v| v["fee"].as_u64().unwrap()).sum();
    assert_eq!(balance["unconfirmed"], json!(-(fees as i64)), "each pays its fee out of our coins");

    // A block mines 1,001 of them, the chain's root among them: they leave, and the root's
    // child is at height 0 now.
    let mined: Vec<String> = first[..1200]
        .iter()
        .step_by(2)
        .chain(&more[..400])
        .chain([&first[1200]])
        .map(|t| t.compute_txid().to_string())
        .collect();
    node.call("generateblock", json!([b.miner.to_string(), mined]))?;
    let want = node_view(&node)?;
    assert_eq!(want.len(), 2019 - 1001);
    wait_view(&mut c, &sh, &want, "after a block of 1,001");
    // The driver logs the block's round once it is applied, just after clients can see it.
    assert!(
        server.logged_within("mined transactions left the mempool: 1001", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let child = first[1201].compute_txid().to_string();
    assert!(want.iter().any(|v| v["tx_hash"] == json!(child) && v["height"] == 0), "{want:?}");
    assert!(!server.log().contains("ERROR"), "{}", server.log());
    Ok(())
}
