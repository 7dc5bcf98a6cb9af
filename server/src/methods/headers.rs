//! Headers: the tip subscription (and 1.0's `numblocks`), headers by height with checkpoint
//! proofs, and the 1.0–1.3 forms (`get_header`, `get_chunk`, deserialized headers).

use std::sync::Arc;

use bitcoin::block::Header;
use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use serde_json::{json, Value};

use blkindex_shared::merkle;
use blkindex_shared::query::Index;

use super::*;

/// `blockchain.block.headers` returns at most this many, and `get_chunk` returns this many.
pub const MAX_HEADERS: u32 = 2016;

/// How a session wants headers: `{hex, height}`, or deserialized (before 1.4 without `raw`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderForm {
    Raw,
    Deserialized,
}

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

fn header_at(index: &Index, height: u32) -> anyhow::Result<Header> {
    Ok(index.chain.row(height).ok_or_else(|| anyhow::anyhow!("no block at height {height}"))?.header)
}

pub async fn call(state: &Arc<State>, s: &mut Session, method: &str, params: &Value) -> Reply {
    let v = s.version();
    match method {
        "blockchain.headers.subscribe" => {
            // 1.2 added `raw` (default false), 1.3 made true the default, 1.4 removed it.
            let form = match v {
                v if v < (1, 2, 0) => HeaderForm::Deserialized,
                v if v < (1, 4, 0) => match arg(params, 0, "raw") {
                    Some(r) => {
                        match r.as_bool().ok_or_else(|| err(INVALID_PARAMS, "raw must be a boolean"))? {
                            true => HeaderForm::Raw,
                            false => HeaderForm::Deserialized,
                        }
                    }
                    None if v < (1, 3, 0) => HeaderForm::Deserialized,
                    None => HeaderForm::Raw,
                },
                _ => HeaderForm::Raw,
            };
            let tip = state.tip().ok_or_else(|| err(BAD_REQUEST, "the index is empty"))?;
            s.headers = Some(form);
            Ok(header_json(form, tip.height, &tip.header))
        }
        "blockchain.numblocks.subscribe" => {
            let tip = state.tip().ok_or_else(|| err(BAD_REQUEST, "the index is empty"))?;
            s.numblocks = true;
            Ok(json!(tip.height))
        }
        "blockchain.block.get_header" => {
            let height = u32_arg(params, 0, "height", None)?;
            let header = state.read(move |i, _| header_at(i, height)).await?;
            Ok(header_json(HeaderForm::Deserialized, height, &header))
        }
        "blockchain.block.get_chunk" => {
            let index = u32_arg(params, 0, "index", None)?;
            let start =
                index.checked_mul(MAX_HEADERS).ok_or_else(|| err(INVALID_PARAMS, "index too large"))?;
            let (headers, _) = state.read(move |i, _| Ok(headers_from(i, start, MAX_HEADERS))).await?;
            Ok(json!(headers.concat()))
        }
        "blockchain.block.header" => block_header(state, params, v).await,
        "blockchain.block.headers" => block_headers(state, params, v).await,
        _ => unreachable!("{method} is routed here by its family"),
    }
}

/// Up to `count` headers from `start` as hex, and the height after the last.
fn headers_from(index: &Index, start: u32, count: u32) -> (Vec<String>, u32) {
    let end = (start as u64 + count as u64).min(index.chain.len() as u64).max(start as u64) as u32;
    let headers = (start..end).map(|h| hex::encode(serialize(&index.chain.row(h).unwrap().header))).collect();
    (headers, end)
}

/// The branch and root proving the header at `height` under checkpoint `cp_height`: a merkle tree
/// over the block hashes 0..=cp_height, hashes shown reversed as everywhere in the protocol.
pub fn header_proof(index: &Index, height: u32, cp_height: u32) -> anyhow::Result<(Vec<String>, String)> {
    let tip = index.chain.len() as u32 - 1;
    if height > cp_height || cp_height > tip {
        anyhow::bail!("require header height {height} <= cp_height {cp_height} <= chain height {tip}");
    }
    let leaves = (0..=cp_height).map(|h| index.chain.hash(h).unwrap().to_byte_array()).collect();
    let (branch, root) = merkle::branch_and_root(leaves, height as usize);
    let show = |mut b: [u8; 32]| {
        b.reverse();
        hex::encode(b)
    };
    Ok((branch.into_iter().map(show).collect(), show(root)))
}

/// `cp_height` arrived in 1.4; before that the header alone is served.
fn cp_height_arg(params: &Value, i: usize, v: Version) -> Result<u32, ErrorReply> {
    match v >= (1, 4, 0) {
        true => u32_arg(params, i, "cp_height", Some(0)),
        false => Ok(0),
    }
}

async fn block_header(state: &Arc<State>, params: &Value, v: Version) -> Reply {
    let height = u32_arg(params, 0, "height", None)?;
    let cp_height = cp_height_arg(params, 1, v)?;
    state
        .read(move |i, _| {
            let hex_header = hex::encode(serialize(&header_at(i, height)?));
            if cp_height == 0 {
                return Ok(json!(hex_header));
            }
            let (branch, root) = header_proof(i, height, cp_height)?;
            Ok(json!({"branch": branch, "header": hex_header, "root": root}))
        })
        .await
        .map_err(ErrorReply::from)
}

/// `blockchain.block.headers`: concatenated hex before 1.6, a list of headers from 1.6; with a
/// checkpoint, the proof is for the last header returned.
async fn block_headers(state: &Arc<State>, params: &Value, v: Version) -> Reply {
    let start = u32_arg(params, 0, "start_height", None)?;
    let count = u32_arg(params, 1, "count", None)?.min(MAX_HEADERS);
    let cp_height = cp_height_arg(params, 2, v)?;
    state
        .read(move |i, _| {
            let (headers, end) = headers_from(i, start, count);
            let n = headers.len();
            let mut out = match v >= (1, 6, 0) {
                true => json!({"count": n, "headers": headers, "max": MAX_HEADERS}),
                false => json!({"count": n, "hex": headers.concat(), "max": MAX_HEADERS}),
            };
            if n > 0 && cp_height > 0 {
                let (branch, root) = header_proof(i, end - 1, cp_height)?;
                out["branch"] = json!(branch);
                out["root"] = json!(root);
            }
            Ok(out)
        })
        .await
        .map_err(ErrorReply::from)
}
