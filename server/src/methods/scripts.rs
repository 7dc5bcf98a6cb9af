//! A script's history, balance, unspent outputs, status and subscription, whichever way the
//! client names the script: an address (1.0–1.2), a script hash (1.1–1.6) or the script itself
//! (1.7). Also 1.0's `blockchain.utxo.get_address`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Transaction};
use serde_json::{json, Value};

use blkindex_shared::query::{Index, ScriptState};
use blkindex_shared::{Net, ScriptHash};

use super::*;
use crate::mempool::{Mempool, ScriptMempool};

/// The script a request names, and how its notifications name it.
struct Named {
    sh: ScriptHash,
    /// The notification's method and first parameter.
    notify_as: (&'static str, String),
}

fn named(net: Net, method: &str, params: &Value) -> Result<Named, RpcError> {
    Ok(match family_and_name(method).0 {
        "blockchain.address" => {
            let text = str_arg(params, 0, "address")?;
            let address = Address::from_str(text)
                .and_then(|a| a.require_network(net.0))
                .map_err(|e| err(INVALID_PARAMS, format!("invalid address {text:?}: {e}")))?;
            let sh = ScriptHash::of(address.script_pubkey().as_bytes());
            Named { sh, notify_as: ("blockchain.address.subscribe", text.to_string()) }
        }
        "blockchain.scriptpubkey" => {
            let script = hex::decode(str_arg(params, 0, "scriptpubkey")?)
                .map_err(|_| err(INVALID_PARAMS, "scriptpubkey must be hex"))?;
            let sh = ScriptHash::of(&script);
            // As ElectrumX does, notifications name the script by its hash.
            Named { sh, notify_as: ("blockchain.scriptpubkey.subscribe", sh.to_string()) }
        }
        _ => {
            let sh: ScriptHash =
                str_arg(params, 0, "scripthash")?.parse().map_err(|e: String| err(INVALID_PARAMS, e))?;
            Named { sh, notify_as: ("blockchain.scripthash.subscribe", sh.to_string()) }
        }
    })
}

pub async fn call(state: &Arc<State>, s: &mut Session, method: &str, params: &Value) -> Reply {
    if method == "blockchain.utxo.get_address" {
        return utxo_address(state, params).await;
    }
    let script = named(state.net, method, params)?;
    let sh = script.sh;
    let wrap = s.version() >= (1, 7, 0); // 1.7 wraps lists in objects
    let max = state.info.max_history;
    match family_and_name(method).1 {
        "get_history" => {
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            if v.confirmed.history.len() + v.mempool.history.len() > max {
                return Err(too_large(max));
            }
            let confirmed = v
                .confirmed
                .history
                .iter()
                .map(|h| json!({"tx_hash": h.txid.to_string(), "height": h.height}));
            let history: Vec<Value> = confirmed.chain(mempool_entries(&v.mempool)).collect();
            Ok(if wrap { json!({ "history": history }) } else { json!(history) })
        }
        "get_mempool" => {
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            let history: Vec<Value> = mempool_entries(&v.mempool).collect();
            Ok(if wrap { json!({ "history": history }) } else { json!(history) })
        }
        "get_balance" => {
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            Ok(json!({"confirmed": v.confirmed.balance(), "unconfirmed": v.mempool.delta}))
        }
        "listunspent" => {
            let v = state.read(move |i, m| script_view(i, m, &sh)).await?;
            if v.confirmed.utxos.len() + v.mempool.unspent.len() > max {
                return Err(too_large(max));
            }
            // Confirmed outputs no mempool transaction spends, then unconfirmed ones (height 0).
            let confirmed = v.confirmed.utxos.iter().filter(|u| !v.mempool.spent.contains(&u.outpoint)).map(|u| {
                json!({"tx_hash": u.outpoint.txid.to_string(), "tx_pos": u.outpoint.vout, "height": u.height, "value": u.value})
            });
            let unconfirmed = v.mempool.unspent.iter().map(|(op, value)| {
                json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": 0, "value": value})
            });
            let utxos: Vec<Value> = confirmed.chain(unconfirmed).collect();
            Ok(if wrap { json!({ "utxos": utxos }) } else { json!(utxos) })
        }
        "subscribe" => {
            let status = state.read(move |i, m| status(i, m, &sh)).await?;
            let sub = s.scripts.entry(sh).or_default();
            sub.status = status.clone();
            if !sub.names.contains(&script.notify_as) {
                sub.names.push(script.notify_as);
            }
            Ok(json!(status))
        }
        "unsubscribe" => {
            let Some(sub) = s.scripts.get_mut(&sh) else { return Ok(json!(false)) };
            let before = sub.names.len();
            sub.names.retain(|n| *n != script.notify_as);
            let removed = sub.names.len() < before;
            if sub.names.is_empty() {
                s.scripts.remove(&sh);
            }
            Ok(json!(removed))
        }
        _ => unreachable!("{method} is routed here by its family"),
    }
}

fn too_large(max: usize) -> RpcError {
    err(HISTORY_TOO_LARGE, format!("history too large: more than {max} entries"))
}

fn mempool_entries(m: &ScriptMempool) -> impl Iterator<Item = Value> + '_ {
    m.history.iter().map(|(t, h, fee)| json!({"tx_hash": t.to_string(), "height": h, "fee": fee}))
}

/// 1.0's `blockchain.utxo.get_address(tx_hash, index)`: the address an output pays, spent or
/// not; null when the output has no address form or does not exist.
async fn utxo_address(state: &Arc<State>, params: &Value) -> Reply {
    let txid = txid_arg(params, 0)?;
    let vout = u32_arg(params, 1, "index", None)? as usize;
    let net = state.net;
    state
        .read(move |i, m| {
            let tx: Option<Transaction> = match i.txs_by_txid(&txid)?.pop() {
                Some(t) => Some(deserialize(&t.raw)?),
                None => m.txs.get(&txid).map(|e| e.tx.clone()),
            };
            let address = tx
                .and_then(|tx| tx.output.get(vout).cloned())
                .and_then(|o| Address::from_script(&o.script_pubkey, net.0).ok());
            Ok(json!(address.map(|a| a.to_string())))
        })
        .await
        .map_err(RpcError::from)
}

/// A script's confirmed and unconfirmed sides, seen together. A transaction found on both sides
/// (mined since the mempool was last read) counts as confirmed.
pub struct ScriptView {
    pub confirmed: ScriptState,
    pub mempool: ScriptMempool,
}

pub fn script_view(index: &Index, mempool: &Mempool, sh: &ScriptHash) -> anyhow::Result<ScriptView> {
    let confirmed = index.script_state(sh)?;
    let mined: HashSet<Txid> = confirmed.history.iter().map(|h| h.txid).collect();
    let mempool = mempool.script(sh, &mined);
    Ok(ScriptView { confirmed, mempool })
}

/// Electrum's status: sha256 of "txid:height:" for every transaction of the history (confirmed
/// in chain order, then unconfirmed in 1.6's order), or None for no history.
pub fn status(index: &Index, mempool: &Mempool, sh: &ScriptHash) -> anyhow::Result<Option<String>> {
    let v = script_view(index, mempool, sh)?;
    Ok(status_of(&v))
}

fn status_of(v: &ScriptView) -> Option<String> {
    if v.confirmed.history.is_empty() && v.mempool.history.is_empty() {
        return None;
    }
    let mut text: String = v.confirmed.history.iter().map(|h| format!("{}:{}:", h.txid, h.height)).collect();
    text.extend(v.mempool.history.iter().map(|(t, h, _)| format!("{t}:{h}:")));
    Some(hex::encode(sha256::Hash::hash(text.as_bytes()).to_byte_array()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blkindex_shared::query::HistoryItem;

    /// The protocol docs' worked example (protocol-basics, "Status Example"): a regtest address,
    /// its script hash, and the status of three confirmed and three unconfirmed transactions,
    /// the unconfirmed ones given here out of order.
    #[test]
    fn status_matches_the_protocol_docs_example() {
        let net = Net(bitcoin::Network::Regtest);
        let named = named(
            net,
            "blockchain.address.subscribe",
            &json!(["bcrt1qn7d2x7272lznt5hhk9s07q3cqnrqljnwladrd3"]),
        )
        .unwrap();
        assert_eq!(named.sh.to_string(), "f04bf26fc16a27abaa2f10540da7a24e369e6ec408f2d901202a7c0cd4a6112d");
        let t = |s: &str| s.parse::<Txid>().unwrap();
        let item = |txid: &str, height, txnum| HistoryItem { txid: t(txid), height, txnum };
        let confirmed = ScriptState {
            history: vec![
                item("a6c9c361bd0bc536d6a22648efbf8f9b200e425ef6c3a7a9669dc444c532a347", 2472, 0),
                item("9c42f84b2fcdaff676ba25d9d4941741cc0d1a01cce0c23fdc4c0b2afa38431c", 2473, 1),
                item("770f2d4371b3fabb902dd9a103e2dd005fcd3971181078fca4a2a1d6ff127b30", 2473, 2),
            ],
            utxos: vec![],
        };
        let mut history = vec![
            (t("bb4c8ab438c13b89ca80d1d5bee25b0b6b7f55673f4d801998ba97db161d9e85"), -1, 200),
            (t("e02a1dadfa83b996b24175df807b271ea5d02937ef5b35c195fac1e1bdc3198f"), 0, 300),
            (t("80b19848aed792565ab7c5a79b7c2a00fbf985741579396ebe0ab6098e607311"), 0, 200),
        ];
        crate::mempool::electrum_order(&mut history);
        let view = ScriptView { confirmed, mempool: ScriptMempool { history, ..Default::default() } };
        assert_eq!(
            status_of(&view).as_deref(),
            Some("78e96c6562cafa71c115503b9411fdfdc595a45031e2ab76ff75162fe1b0590d")
        );
        let empty = ScriptView { confirmed: ScriptState::default(), mempool: ScriptMempool::default() };
        assert_eq!(status_of(&empty), None);
    }
}
