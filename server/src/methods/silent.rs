//! `blockchain.silentpayments.*`: Frigate's proposed subscription (the scan itself is
//! `crate::silent`'s) and, for wallets that scan themselves, the tweaks of a range of blocks.

use blkindex_shared::schema::Height;
use blkindex_shared::silent::Receiver;

use super::*;
use crate::call::{SpKeys, SpStart};
use crate::silent::{height_at_time, Wanted};

/// A `tweaks` reply stops after the block that takes it past this many bytes (the client asks
/// again from `next`).
const MAX_TWEAKS_REPLY: usize = 1 << 20;

fn not_indexed() -> ServerError {
    ServerError::MethodNotFound("silent payments are not served: the index has no tweaks".into())
}

/// `blockchain.silentpayments.subscribe(scan_private_key, spend_public_key, start, labels)`: the
/// subscription object; the scan's notifications follow the reply.
pub async fn subscribe(
    state: &Arc<State>,
    s: &mut Session,
    keys: SpKeys,
    start: SpStart,
    labels: Vec<u32>,
) -> Result<Answer, ServerError> {
    let first = state.tweaks().start().ok_or_else(not_indexed)?;
    let max_labels = state.tweaks().limits().max_labels;
    let mut labels: Vec<u32> = labels.into_iter().filter(|l| *l != 0).collect();
    labels.sort_unstable();
    labels.dedup();
    // Each label costs a point addition per transaction scanned: counted before anything.
    if labels.len() > max_labels {
        return Err(ServerError::ExcessiveUsage(format!(
            "too many labels: at most {max_labels} besides change (0)"
        )));
    }
    let tip = state.tip().map_or(0, |t| t.height);
    let (from, to) = match start {
        SpStart::From(h) => (h, None),
        SpStart::Range(_, b) if b > tip => {
            return Err(ServerError::bad_request(format!("start range ends at {b}, beyond the tip {tip}")))
        }
        SpStart::Range(a, b) => (a, Some(b)),
        SpStart::Time(t) => (state.read(move |i, _| Ok(height_at_time(i, t))).await?, None),
    };
    let receiver = Receiver::new(keys.scan, keys.spend, &labels);
    let address = receiver.address(state.settings().net);
    let w = Wanted { receiver, address, labels, from: from.max(first), to };
    Ok(Answer::Text(s.silent.subscribe(state, w, s.peer_addr.map(|a| a.ip()))?))
}

/// `blockchain.silentpayments.unsubscribe(scan_private_key, spend_public_key)`: the address
/// (subscribed or not, as Frigate answers); its scan stops.
pub fn unsubscribe(state: &Arc<State>, s: &mut Session, keys: SpKeys) -> Reply {
    state.tweaks().start().ok_or_else(not_indexed)?;
    let address = Receiver::new(keys.scan, keys.spend, &[]).address(state.settings().net);
    s.silent.unsubscribe(&address);
    Ok(json!(address))
}

/// `blockchain.silentpayments.tweaks(start_height, count)`: for wallets that scan on their own
/// (BIP352's light clients), the tweak of each eligible transaction of `count` blocks from
/// `start_height`, with the first 8 bytes (hex) of each of its taproot output keys, so that a
/// wallet computes `P_0` per tweak and fetches only the transactions it matches (by
/// `blockchain.transaction.id_from_pos(height, pos)`). Blocks with none are left out; each block
/// comes with its hash; `next` is the height to ask from next (null: the tip was reached).
pub async fn tweaks(state: &Arc<State>, start: Height, count: u32) -> Result<Answer, ServerError> {
    let first = state.tweaks().start().ok_or_else(not_indexed)?;
    let max = MAX_TWEAKS_REPLY.min(state.send_budget().max_message() / 2);
    let text = state
        .read(move |i, _| {
            if start < first {
                Err(ServerError::bad_request(format!("tweaks are indexed from height {first}")))?;
            }
            let tip = i.chain.len() as i64 - 1;
            if start as i64 > tip {
                Err(ServerError::bad_request(format!("start_height {start} is beyond the tip {tip}")))?;
            }
            // While the indexer's tweak pass runs, the heights it has still to do have none yet.
            let Some(computed) = i.tweaks_computed_to(start, tip as Height)? else {
                let pending = i.tweaks_pending()?.unwrap_or(start..=start);
                Err(ServerError::bad_request(format!(
                    "tweaks of heights {} to {} are still being computed by the indexer: ask from height {}",
                    pending.start(),
                    pending.end(),
                    pending.end() + 1
                )))?
            };
            // `next` is null only at the chain's tip: a reply cut short by heights still to do
            // points at the first of them, which answers the error above.
            let end = (start as i64 + count as i64 - 1).min(computed as i64);
            let mut out = String::from(r#"{"blocks":["#);
            let mut next = (end < tip).then_some(end + 1);
            let mut h = start as i64;
            'blocks: while h <= end {
                let last = (h + 15).min(end);
                for (height, txs) in i.tweaks(h as Height..=last as Height)? {
                    let base = i.chain.row(height).map_or(0, |r| r.first_txnum);
                    if !out.ends_with('[') {
                        out.push(',');
                    }
                    out.push_str(r#"{"height":"#);
                    out.push_str(itoa::Buffer::new().format(height));
                    // The block's hash: a wallet paging through a reorg sees its blocks change.
                    out.push_str(r#","hash":""#);
                    if let Some(hash) = i.chain.hash(height) {
                        out.push_str(&hash.to_string());
                    }
                    out.push_str(r#"","tweaks":["#);
                    for (n, t) in txs.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        out.push_str(r#"{"pos":"#);
                        out.push_str(itoa::Buffer::new().format(t.txnum - base));
                        out.push_str(r#","tweak":""#);
                        out.push_str(&hex::encode(t.tweak.serialize()));
                        out.push_str(r#"","outputs":["#);
                        for (k, o) in t.outputs.iter().enumerate() {
                            out.push_str(if k > 0 { r#",""# } else { r#"""# });
                            out.push_str(&hex::encode(o));
                            out.push('"');
                        }
                        out.push_str("]}");
                    }
                    out.push_str("]}");
                    if out.len() > max {
                        next = ((height as i64) < tip).then_some(height as i64 + 1);
                        break 'blocks;
                    }
                }
                h = last + 1;
            }
            out.push_str(r#"],"next":"#);
            match next {
                Some(n) => out.push_str(itoa::Buffer::new().format(n)),
                None => out.push_str("null"),
            }
            out.push('}');
            Ok(out)
        })
        .await?;
    Ok(Answer::Text(text))
}
