//! A script's history, balance, unspent outputs, status and subscription, whichever way the
//! client names the script: an address (1.0–1.2), a script hash (1.1–1.6) or the script itself
//! (1.7). Also 1.0's `blockchain.utxo.get_address`.

use std::sync::Arc;

use bitcoin::consensus::deserialize;
use bitcoin::{Address, Transaction};
use serde_json::{json, Value};

use blkindex_shared::ScriptHash;

use super::*;
use crate::mempool::ScriptMempool;
use crate::status::{script_view, ScriptView};

/// The lists of 1.7 are wrapped in objects.
fn wrapped(v: Version, key: &str, list: String) -> String {
    match v >= (1, 7, 0) {
        true => format!("{{\"{key}\":{list}}}"),
        false => list,
    }
}

/// `get_history`: confirmed, then unconfirmed in 1.6's order; an error past `--max-history`.
pub async fn history(state: &Arc<State>, version: Version, script: &Named) -> Result<Answer, ServerError> {
    let max = state.settings().info.max_history;
    let v = view(state, script.sh).await?;
    if v.confirmed.history().len() + v.mempool.history.len() > max {
        return Err(too_large(max));
    }
    let mut list = String::with_capacity(80 * (v.confirmed.history().len() + v.mempool.history.len()) + 2);
    list.push('[');
    for h in v.confirmed.history() {
        history_entry(&mut list, &h.txid, h.height as i64, None);
    }
    mempool_entries(&mut list, &v.mempool);
    close_list(&mut list);
    Ok(Answer::Text(wrapped(version, "history", list)))
}

/// `get_mempool`: the unconfirmed part of the history.
pub async fn mempool(state: &Arc<State>, version: Version, script: &Named) -> Result<Answer, ServerError> {
    let v = view(state, script.sh).await?;
    let mut list = String::from("[");
    mempool_entries(&mut list, &v.mempool);
    close_list(&mut list);
    Ok(Answer::Text(wrapped(version, "history", list)))
}

pub async fn balance(state: &Arc<State>, script: &Named) -> Reply {
    let v = view(state, script.sh).await?;
    Ok(json!({"confirmed": v.confirmed.balance, "unconfirmed": v.mempool.delta}))
}

/// `listunspent`: confirmed outputs no mempool transaction spends, then unconfirmed ones
/// (height 0); an error past `--max-history`.
pub async fn unspent(state: &Arc<State>, version: Version, script: &Named) -> Result<Answer, ServerError> {
    let max = state.settings().info.max_history;
    let v = view(state, script.sh).await?;
    let utxos = &v.confirmed.scan.state.utxos;
    if utxos.len() + v.mempool.unspent.len() > max {
        return Err(too_large(max));
    }
    let mut list = String::with_capacity(110 * (utxos.len() + v.mempool.unspent.len()) + 2);
    list.push('[');
    for u in utxos.iter().filter(|u| !v.mempool.spent.contains(&u.outpoint)) {
        utxo_entry(&mut list, &u.outpoint, u.height, u.value);
    }
    for (op, value) in &v.mempool.unspent {
        utxo_entry(&mut list, op, 0, *value);
    }
    close_list(&mut list);
    Ok(Answer::Text(wrapped(version, "utxos", list)))
}

/// `subscribe`: the status, and changes to it from now on, notified under the name given.
pub async fn subscribe(state: &Arc<State>, s: &mut Session, script: Named) -> Reply {
    if !s.scripts.contains_key(&script.sh) {
        s.room_for_subscription()?;
    }
    let v = view(state, script.sh).await?;
    let status = v.status();
    let sub = s.scripts.entry(script.sh).or_default();
    sub.status = status.clone();
    if !sub.names.contains(&script.notify_as) {
        sub.names.push(script.notify_as);
    }
    Ok(json!(status))
}

/// `unsubscribe`: whether the script was subscribed under this name.
pub fn unsubscribe(s: &mut Session, script: &Named) -> Value {
    let Some(sub) = s.scripts.get_mut(&script.sh) else { return json!(false) };
    let before = sub.names.len();
    sub.names.retain(|n| *n != script.notify_as);
    let removed = sub.names.len() < before;
    if sub.names.is_empty() {
        s.scripts.remove(&script.sh);
    }
    json!(removed)
}

async fn view(state: &Arc<State>, sh: ScriptHash) -> anyhow::Result<ScriptView> {
    let st = state.clone();
    state.read(move |i, m| script_view(st.scripts(), i, m, &sh)).await
}

fn too_large(max: usize) -> ServerError {
    ServerError::HistoryTooLarge(max)
}

/// `{"tx_hash":…,"height":…[,"fee":…]},` (lists are written as text: a long history as a tree
/// of JSON values costs far more time and memory than the data itself).
fn history_entry(out: &mut String, txid: &Txid, height: i64, fee: Option<u64>) {
    out.push_str("{\"tx_hash\":\"");
    push_txid(out, txid);
    out.push_str("\",\"height\":");
    out.push_str(itoa::Buffer::new().format(height));
    if let Some(fee) = fee {
        out.push_str(",\"fee\":");
        out.push_str(itoa::Buffer::new().format(fee));
    }
    out.push_str("},");
}

fn utxo_entry(out: &mut String, op: &OutPoint, height: u32, value: u64) {
    out.push_str("{\"tx_hash\":\"");
    push_txid(out, &op.txid);
    out.push_str("\",\"tx_pos\":");
    out.push_str(itoa::Buffer::new().format(op.vout));
    out.push_str(",\"height\":");
    out.push_str(itoa::Buffer::new().format(height));
    out.push_str(",\"value\":");
    out.push_str(itoa::Buffer::new().format(value));
    out.push_str("},");
}

/// Ends a list begun with '[' whose entries each end with a comma.
fn close_list(list: &mut String) {
    if list.ends_with(',') {
        list.pop();
    }
    list.push(']');
}

fn mempool_entries(out: &mut String, m: &ScriptMempool) {
    for (t, h, fee) in &m.history {
        history_entry(out, t, *h as i64, Some(*fee));
    }
}

/// 1.0's `blockchain.utxo.get_address(tx_hash, index)`: the address an output pays, spent or
/// not; null when the output has no address form or does not exist.
pub async fn utxo_address(state: &Arc<State>, outpoint: OutPoint) -> Reply {
    let (txid, vout) = (outpoint.txid, outpoint.vout as usize);
    let net = state.settings().net;
    state
        .read(move |i, m| {
            let tx: Option<Transaction> = match i.txs_by_txid(&txid)?.pop() {
                Some(t) => Some(deserialize(&t.raw)?),
                None => match m.with(|m| m.txs.get(&txid).map(|e| e.raw().to_vec())) {
                    Some(raw) => Some(deserialize(&raw)?),
                    None => None,
                },
            };
            let address = tx
                .and_then(|tx| tx.output.get(vout).cloned())
                .and_then(|o| Address::from_script(&o.script_pubkey, net.0).ok());
            Ok(json!(address.map(|a| a.to_string())))
        })
        .await
        .map_err(ServerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script_cache::Confirmed;
    use blkindex_shared::query::{HistoryItem, ScriptState};

    /// The protocol docs' worked example (protocol-basics, "Status Example"): a regtest address,
    /// its script hash, and the status of three confirmed and three unconfirmed transactions,
    /// the unconfirmed ones given here out of order.
    #[test]
    fn status_matches_the_protocol_docs_example() {
        let net = blkindex_shared::Net(bitcoin::Network::Regtest);
        let params = json!(["bcrt1qn7d2x7272lznt5hhk9s07q3cqnrqljnwladrd3"]);
        let Ok(Call::Subscribe(named)) = Call::parse("blockchain.address.subscribe", &params, (1, 2, 0), net)
        else {
            panic!("an address subscription")
        };
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
        let confirmed = Arc::new(Confirmed::new(confirmed.into(), None));
        let view = ScriptView { confirmed, mempool: ScriptMempool { history, ..Default::default() } };
        assert_eq!(
            view.status().as_deref(),
            Some("78e96c6562cafa71c115503b9411fdfdc595a45031e2ab76ff75162fe1b0590d")
        );
        let empty = ScriptView {
            confirmed: Arc::new(Confirmed::new(ScriptState::default().into(), None)),
            mempool: ScriptMempool::default(),
        };
        assert_eq!(empty.status(), None);
    }
}
