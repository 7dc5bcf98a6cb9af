//! Test chains made by a real node: outputs of every type, address reuse, unconfirmed parents,
//! a reorg that leaves stale blocks in the blk files, and blocks stored out of height order.

use anyhow::{Context, Result};
use bitcoin::absolute::LockTime;

use bitcoin::key::{CompressedPublicKey, PrivateKey};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{
    opcodes, Address, Amount, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, Witness,
};
use serde_json::{json, Value};

use crate::node::Node;

/// Deterministic private keys for scripts the wallet cannot make by itself.
fn key(i: u8) -> PrivateKey {
    let mut b = [0u8; 32];
    b[31] = i;
    b[0] = 0x42;
    PrivateKey::new(SecretKey::from_slice(&b).unwrap(), Network::Regtest)
}

fn with_checksum(node: &Node, desc: &str) -> Result<String> {
    let info = node.call("getdescriptorinfo", json!([desc]))?;
    Ok(format!("{desc}#{}", info["checksum"].as_str().context("checksum")?))
}

pub struct ChainBuilder<'a> {
    pub node: &'a Node,
    pub miner: Address,
}

impl<'a> ChainBuilder<'a> {
    pub fn new(node: &'a Node) -> Result<Self> {
        node.ensure_wallet()?;
        let miner = node.new_address("bech32")?;
        Ok(ChainBuilder { node, miner })
    }

    pub fn mine(&self, n: u64) -> Result<Vec<BlockHash>> {
        self.node.mine(n, &self.miner)
    }

    /// A confirmed wallet coin of at least `min` value.
    fn coin(&self, min: Amount) -> Result<(OutPoint, Amount)> {
        let list = self.node.wallet_call("listunspent", json!([1]))?;
        for u in list.as_array().context("listunspent")? {
            let amount = Amount::from_btc(u["amount"].as_f64().unwrap())?;
            if amount >= min && u["spendable"].as_bool() == Some(true) {
                let txid: Txid = u["txid"].as_str().unwrap().parse()?;
                let vout = u["vout"].as_u64().unwrap() as u32;
                self.node
                    .wallet_call("lockunspent", json!([false, [{"txid": txid.to_string(), "vout": vout}]]))?;
                return Ok((OutPoint { txid, vout }, amount));
            }
        }
        anyhow::bail!("no wallet coin of {min}")
    }

    /// A transaction from `inputs` to `outputs` (the rest, less a fee, back to the miner), signed
    /// by the wallet.
    pub fn raw_tx(
        &self,
        inputs: &[(OutPoint, Amount)],
        outputs: &[(ScriptBuf, Amount)],
        script_sigs: bool,
    ) -> Result<Transaction> {
        let total: Amount = inputs.iter().map(|i| i.1).sum();
        let spent: Amount = outputs.iter().map(|o| o.1).sum();
        let fee = Amount::from_sat(20_000);
        let mut output: Vec<TxOut> =
            outputs.iter().map(|(s, v)| TxOut { value: *v, script_pubkey: s.clone() }).collect();
        output.push(TxOut { value: total - spent - fee, script_pubkey: self.miner.script_pubkey() });
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|(op, _)| TxIn {
                    previous_output: *op,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        };
        if !script_sigs {
            return Ok(tx);
        }
        let hex_tx = bitcoin::consensus::encode::serialize_hex(&tx);
        let signed = self.node.wallet_call("signrawtransactionwithwallet", json!([hex_tx]))?;
        if signed["complete"] != json!(true) {
            anyhow::bail!("wallet could not sign: {signed}");
        }
        Ok(bitcoin::consensus::encode::deserialize_hex(signed["hex"].as_str().unwrap())?)
    }

    /// Mines one block holding exactly `txs` (no policy checks: non-standard is fine).
    pub fn mine_txs(&self, txs: &[Transaction]) -> Result<BlockHash> {
        let hexes: Vec<String> = txs.iter().map(bitcoin::consensus::encode::serialize_hex).collect();
        let v = self.node.call("generateblock", json!([self.miner.to_string(), hexes]))?;
        Ok(v["hash"].as_str().context("generateblock")?.parse()?)
    }

    /// Outputs the wallet cannot make from an address: P2PK, bare 1-of-2 multisig, P2WSH 2-of-3
    /// (all importable so the wallet can spend them), OP_RETURN, and a non-standard script.
    /// Returns the outpoints made, by kind.
    pub fn special_outputs(&self) -> Result<Vec<(&'static str, OutPoint, Amount)>> {
        let secp = Secp256k1::new();
        let pk = |i| CompressedPublicKey::from_private_key(&secp, &key(i)).unwrap();
        let descs = [
            format!("pk({})", key(1).to_wif()),
            format!("wsh(multi(2,{},{},{}))", key(2).to_wif(), key(3).to_wif(), key(4).to_wif()),
        ];
        let import: Vec<Value> = descs
            .iter()
            .map(|d| Ok(json!({"desc": with_checksum(self.node, d)?, "timestamp": "now"})))
            .collect::<Result<_>>()?;
        let r = self.node.wallet_call("importdescriptors", json!([import]))?;
        anyhow::ensure!(
            r.as_array().unwrap().iter().all(|x| x["success"] == json!(true)),
            "importdescriptors: {r}"
        );

        let p2pk = ScriptBuf::new_p2pk(&pk(1).into());
        let bare_multi = Builder::new()
            .push_opcode(opcodes::all::OP_PUSHNUM_1)
            .push_key(&pk(5).into())
            .push_key(&pk(6).into())
            .push_opcode(opcodes::all::OP_PUSHNUM_2)
            .push_opcode(opcodes::all::OP_CHECKMULTISIG)
            .into_script();
        let wsh_addr: Address = {
            let d = with_checksum(self.node, &format!("wsh(multi(2,{},{},{}))", pk(2), pk(3), pk(4)))?;
            let a = self.node.call("deriveaddresses", json!([d]))?;
            a[0].as_str().unwrap().parse::<Address<_>>()?.assume_checked()
        };
        let op_return = ScriptBuf::new_op_return(b"blkindex test");
        let nonstandard = Builder::new()
            .push_opcode(opcodes::all::OP_PUSHNUM_2)
            .push_opcode(opcodes::all::OP_DROP)
            .push_opcode(opcodes::all::OP_PUSHNUM_1)
            .into_script();
        let v = Amount::from_btc(0.5)?;
        let outs = [
            ("p2pk", p2pk, v),
            ("bare-multisig", bare_multi, v),
            ("p2wsh-multisig", wsh_addr.script_pubkey(), v),
            ("op-return", op_return, Amount::ZERO),
            ("nonstandard", nonstandard, v),
        ];
        let input = self.coin(Amount::from_btc(5.0)?)?;
        let outputs: Vec<(ScriptBuf, Amount)> = outs.iter().map(|(_, s, v)| (s.clone(), *v)).collect();
        let tx = self.raw_tx(&[input], &outputs, true)?;
        self.mine_txs(std::slice::from_ref(&tx))?;
        let txid = tx.compute_txid();
        // Keep the wallet's own sends from spending them before `spend_specials` does.
        let locks: Vec<Value> =
            (0..outs.len()).map(|i| json!({"txid": txid.to_string(), "vout": i})).collect();
        self.node.wallet_call("lockunspent", json!([false, locks]))?;
        Ok(outs
            .iter()
            .enumerate()
            .map(|(i, (k, _, v))| (*k, OutPoint { txid, vout: i as u32 }, *v))
            .collect())
    }

    /// Spends the special outputs that can be spent: P2PK and P2WSH by the wallet, the
    /// non-standard one with an empty script, all in one mined block.
    pub fn spend_specials(&self, made: &[(&'static str, OutPoint, Amount)]) -> Result<()> {
        let find = |k: &str| made.iter().find(|m| m.0 == k).map(|m| (m.1, m.2)).unwrap();
        let to = self.node.new_address("bech32")?;
        let spend = self.raw_tx(
            &[find("p2pk"), find("p2wsh-multisig")],
            &[(to.script_pubkey(), Amount::from_btc(0.9)?)],
            true,
        )?;
        let anyone = self.raw_tx(&[find("nonstandard")], &[], false)?;
        self.mine_txs(&[spend, anyone])?;
        Ok(())
    }

    /// Sends of every wallet address type, single-use and heavily reused addresses, and chains of
    /// unconfirmed parents spent before they confirm.
    pub fn wallet_traffic(&self, rounds: usize) -> Result<()> {
        let reused: Vec<Address> = ["legacy", "p2sh-segwit", "bech32", "bech32m"]
            .iter()
            .map(|k| self.node.new_address(k))
            .collect::<Result<_>>()?;
        for round in 0..rounds {
            for kind in ["legacy", "p2sh-segwit", "bech32", "bech32m"] {
                let a = self.node.new_address(kind)?;
                self.node.send(&a, Amount::from_sat(1_000_000 + round as u64))?;
            }
            for a in &reused {
                self.node.send(a, Amount::from_sat(300_000 + round as u64))?;
            }
            // Spend from the unconfirmed change of the sends above.
            let a = self.node.new_address("bech32m")?;
            self.node.send(&a, Amount::from_btc(1.0)?)?;
            if round % 2 == 1 {
                // The wallet may spend reused-address coins too.
                let all = self.node.new_address("bech32")?;
                self.node.send(&all, Amount::from_btc(30.0)?)?;
            }
            self.mine(1)?;
        }
        Ok(())
    }

    /// A reorg of `depth` blocks: the stale branch holds a transaction the new branch replaces by a
    /// conflicting one. Stale blocks stay in the blk files. Returns the stale block hashes.
    pub fn reorg_with_conflict(&self, depth: u64) -> Result<Vec<BlockHash>> {
        let victim = self.coin(Amount::from_btc(1.0)?)?;
        let a = self.node.new_address("bech32")?;
        let original = self.raw_tx(&[victim], &[(a.script_pubkey(), Amount::from_btc(0.25)?)], true)?;
        let mut stale = vec![self.mine_txs(&[original])?];
        for _ in 1..depth {
            let b = self.node.new_address("legacy")?;
            self.node.send(&b, Amount::from_btc(0.1)?)?;
            stale.extend(self.mine(1)?);
        }
        self.node.call("invalidateblock", json!([stale[0].to_string()]))?;
        let c = self.node.new_address("p2sh-segwit")?;
        let conflict = self.raw_tx(&[victim], &[(c.script_pubkey(), Amount::from_btc(0.3)?)], true)?;
        self.mine_txs(&[conflict])?;
        self.mine(depth)?;
        Ok(stale)
    }

    /// A reorg of `depth` blocks whose new branch starts with a lookalike of the stale branch's
    /// first block: one transaction of one input, as there, but spending another coin. The two
    /// siblings' undo records have the same shape and different contents: only the node can say
    /// which is the block's. Returns the stale block hashes.
    pub fn reorg_with_lookalike(&self, depth: u64) -> Result<Vec<BlockHash>> {
        let (first, second) = (self.coin(Amount::from_btc(1.0)?)?, self.coin(Amount::from_btc(1.0)?)?);
        let a = self.node.new_address("bech32")?;
        let original = self.raw_tx(&[first], &[(a.script_pubkey(), Amount::from_btc(0.25)?)], true)?;
        let mut stale = vec![self.mine_txs(&[original])?];
        stale.extend(self.mine(depth - 1)?);
        self.node.call("invalidateblock", json!([stale[0].to_string()]))?;
        let lookalike = self.raw_tx(&[second], &[(a.script_pubkey(), Amount::from_btc(0.25)?)], true)?;
        self.mine_txs(&[lookalike])?;
        self.mine(depth)?;
        Ok(stale)
    }
}

/// The default rich chain of the bulk-indexer tests.
pub fn build_rich_chain(node: &Node) -> Result<()> {
    let b = ChainBuilder::new(node)?;
    b.mine(110)?;
    b.wallet_traffic(4)?;
    let made = b.special_outputs()?;
    b.wallet_traffic(2)?;
    b.spend_specials(&made)?;
    b.reorg_with_conflict(3)?;
    b.wallet_traffic(2)?;
    Ok(())
}

/// Copies `from`'s chain to `to` with every block stored in reverse height order: the headers go
/// first, then the blocks from the tip down, so `to` connects them only when the lowest arrives.
pub fn copy_blocks_reversed(from: &Node, to: &Node, first_height: u64) -> Result<()> {
    let tip = from.height()?;
    let mut blocks = Vec::new();
    for h in first_height..=tip {
        let hash = from.call("getblockhash", json!([h]))?;
        let raw = from.call("getblock", json!([hash, 0]))?;
        blocks.push(raw.as_str().unwrap().to_string());
    }
    for raw in &blocks {
        to.call("submitheader", json!([&raw[..160]]))?;
    }
    for raw in blocks.iter().rev() {
        let r = to.call("submitblock", json!([raw]))?;
        anyhow::ensure!(r.is_null() || r == "inconclusive", "submitblock: {r}");
    }
    anyhow::ensure!(to.best_hash()? == from.best_hash()?, "copy did not reach the same tip");
    Ok(())
}

pub fn hash_of(node: &Node, h: u64) -> Result<BlockHash> {
    Ok(node.call("getblockhash", json!([h]))?.as_str().context("hash")?.parse()?)
}
