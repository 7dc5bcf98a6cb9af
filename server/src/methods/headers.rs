//! Headers: the tip subscription (and 1.0's `numblocks`), headers by height with checkpoint
//! proofs, and the 1.0–1.3 forms (`get_header`, `get_chunk`, deserialized headers).

use std::sync::{Arc, Mutex};

use bitcoin::block::Header;
use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use serde_json::{json, Value};

use blkindex_shared::merkle::PrefixTree;
use blkindex_shared::query::IndexReader;

use super::*;

pub use crate::call::MAX_HEADERS;

pub fn header_json(form: HeaderForm, height: u32, header: &Header) -> Value {
    match form {
        HeaderForm::Raw => json!({"hex": hex::encode(serialize(header)), "height": height}),
        HeaderForm::Deserialized => json!({
            "block_height": height,
            "version": header.version.to_consensus(),
            "prev_block_hash": header.prev_blockhash.to_string(),
            "merkle_root": header.merkle_root.to_string(),
            "timestamp": header.time,
            "bits": header.bits.to_consensus(),
            "nonce": header.nonce,
        }),
    }
}

fn header_at(index: &IndexReader, height: u32) -> Result<Header, ServerError> {
    Ok(index
        .chain
        .row(height)
        .ok_or_else(|| ServerError::bad_request(format!("no block at height {height}")))?
        .header)
}

/// `blockchain.headers.subscribe`: the tip, and new tips from now on in `form`.
pub fn subscribe(state: &Arc<State>, s: &mut Session, form: HeaderForm) -> Reply {
    let tip = state.tip().ok_or_else(|| ServerError::bad_request("the index is empty"))?;
    s.headers = Some(form);
    Ok(header_json(form, tip.height, &tip.header))
}

/// 1.0's `blockchain.numblocks.subscribe`: the tip's height, and new heights from now on.
pub fn numblocks_subscribe(state: &Arc<State>, s: &mut Session) -> Reply {
    let tip = state.tip().ok_or_else(|| ServerError::bad_request("the index is empty"))?;
    s.numblocks = true;
    Ok(json!(tip.height))
}

/// 1.0–1.3's `blockchain.block.get_header`: deserialized.
pub async fn get_header(state: &Arc<State>, height: u32) -> Reply {
    let header = state.read(move |i, _| Ok(header_at(i, height)?)).await?;
    Ok(header_json(HeaderForm::Deserialized, height, &header))
}

/// 1.0–1.3's `blockchain.block.get_chunk`: `MAX_HEADERS` headers from `start`, as one hex string.
pub async fn get_chunk(state: &Arc<State>, start: u32) -> Reply {
    let (headers, _) = state.read(move |i, _| Ok(headers_from(i, start, MAX_HEADERS))).await?;
    Ok(json!(headers.concat()))
}

/// Up to `count` headers from `start` as hex, and the height after the last.
fn headers_from(index: &IndexReader, start: u32, count: u32) -> (Vec<String>, u32) {
    let end = (start as u64 + count as u64).min(index.chain.len() as u64).max(start as u64) as u32;
    let headers = (start..end).map(|h| hex::encode(serialize(&index.chain.row(h).unwrap().header))).collect();
    (headers, end)
}

/// The branch and root proving the header at `height` under checkpoint `cp_height`: a merkle tree
/// over the block hashes 0..=cp_height, hashes shown reversed as everywhere in the protocol. From
/// the shared `PrefixTree`: O(log n) hashes per proof, not a tree of the whole chain each time.
pub fn header_proof(
    tree: &Mutex<PrefixTree>,
    index: &IndexReader,
    height: u32,
    cp_height: u32,
) -> Result<(Vec<String>, String), ServerError> {
    let tip = index.chain.len() as u32 - 1;
    if height > cp_height || cp_height > tip {
        return Err(ServerError::bad_request(format!(
            "require header height {height} <= cp_height {cp_height} <= chain height {tip}"
        )));
    }
    let leaf = |h: usize| index.chain.hash(h as u32).unwrap().to_byte_array();
    let n = cp_height as usize + 1;
    let (branch, root) = {
        let mut tree = tree.lock().unwrap();
        tree.sync(n, leaf);
        tree.branch_and_root(n, height as usize, leaf)
    };
    let show = |mut b: [u8; 32]| {
        b.reverse();
        hex::encode(b)
    };
    Ok((branch.into_iter().map(show).collect(), show(root)))
}

/// `blockchain.block.header`: the header as hex, with a proof under `cp_height` if not 0.
pub async fn block_header(state: &Arc<State>, height: u32, cp_height: u32) -> Reply {
    let st = state.clone();
    state
        .read(move |i, _| {
            let hex_header = hex::encode(serialize(&header_at(i, height)?));
            if cp_height == 0 {
                return Ok(json!(hex_header));
            }
            let (branch, root) = header_proof(st.header_tree(), i, height, cp_height)?;
            Ok(json!({"branch": branch, "header": hex_header, "root": root}))
        })
        .await
        .map_err(ServerError::from)
}

/// `blockchain.block.headers`: concatenated hex before 1.6, a list of headers from 1.6; with a
/// checkpoint, the proof is for the last header returned.
pub async fn block_headers(state: &Arc<State>, start: u32, count: u32, cp_height: u32, v: Version) -> Reply {
    let st = state.clone();
    state
        .read(move |i, _| {
            let (headers, end) = headers_from(i, start, count);
            let n = headers.len();
            let mut out = match v >= (1, 6, 0) {
                true => json!({"count": n, "headers": headers, "max": MAX_HEADERS}),
                false => json!({"count": n, "hex": headers.concat(), "max": MAX_HEADERS}),
            };
            if n > 0 && cp_height > 0 {
                let (branch, root) = header_proof(st.header_tree(), i, end - 1, cp_height)?;
                out["branch"] = json!(branch);
                out["root"] = json!(root);
            }
            Ok(out)
        })
        .await
        .map_err(ServerError::from)
}
