//! `blockchain.transaction.get(txid, verbose=true)`: the JSON bitcoind's `getrawtransaction`
//! returns, built from our own data so that no txindex is needed. Script assembly follows
//! Core's `ScriptToAsmStr` (small pushes as numbers, signatures with their sighash type), so
//! clients that parse it see what they would see from the node; each output's `desc` is the
//! descriptor Core infers without keys (checksum by the `miniscript` crate).

use bitcoin::blockdata::opcodes::all as op;
use bitcoin::script::Instruction;
use bitcoin::{Address, BlockHash, Network, Script, Transaction};
use serde_json::{json, Value};

/// Where a confirmed transaction is.
pub struct Place {
    pub hash: BlockHash,
    pub time: u32,
    pub confirmations: u32,
}

pub fn tx_json(tx: &Transaction, raw: &[u8], net: Network, place: Option<Place>) -> Value {
    let weight = tx.weight().to_wu();
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|input| {
            let mut v = match tx.is_coinbase() {
                true => json!({"coinbase": hex::encode(input.script_sig.as_bytes())}),
                false => json!({
                    "txid": input.previous_output.txid.to_string(),
                    "vout": input.previous_output.vout,
                    "scriptSig": {"asm": asm(&input.script_sig, true), "hex": hex::encode(input.script_sig.as_bytes())},
                }),
            };
            if !input.witness.is_empty() {
                v["txinwitness"] = input.witness.iter().map(hex::encode).collect();
            }
            v["sequence"] = json!(input.sequence.0);
            v
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            let script = &o.script_pubkey;
            let kind = script_type(script);
            let address = address(script, kind, net);
            let mut spk = json!({
                "asm": asm(script, false),
                "desc": descriptor(script, kind, address.as_deref()),
                "hex": hex::encode(script.as_bytes()),
                "type": kind,
            });
            if let Some(a) = address {
                spk["address"] = json!(a);
            }
            json!({"value": o.value.to_btc(), "n": n, "scriptPubKey": spk})
        })
        .collect();
    let mut out = json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": raw.len(),
        "vsize": weight.div_ceil(4),
        "weight": weight,
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": hex::encode(raw),
    });
    if let Some(p) = place {
        out["blockhash"] = json!(p.hash.to_string());
        out["confirmations"] = json!(p.confirmations);
        out["time"] = json!(p.time);
        out["blocktime"] = json!(p.time);
    }
    out
}

/// The address Core shows for an output of type `kind`: none for bare public keys, multisig
/// and the like.
fn address(script: &Script, kind: &str, net: Network) -> Option<String> {
    if matches!(kind, "pubkey" | "multisig" | "nonstandard") {
        return None;
    }
    Address::from_script(script, net).ok().map(|a| a.to_string())
}

/// The output descriptor Core infers for a script it has no keys or scripts for (`InferDescriptor`
/// with an empty provider), with its checksum: the public keys a script shows (`pk`, `multi`,
/// `rawtr`), else the address (`addr`), else the bytes (`raw`).
fn descriptor(script: &Script, kind: &str, address: Option<&str>) -> String {
    let b = script.as_bytes();
    let pushes = || -> Vec<Vec<u8>> {
        script
            .instructions()
            .filter_map(|i| match i {
                Ok(bitcoin::script::Instruction::PushBytes(p)) => Some(p.as_bytes().to_vec()),
                _ => None,
            })
            .collect()
    };
    let body = match kind {
        "pubkey" => format!("pk({})", hex::encode(&pushes()[0])),
        "multisig" => {
            let keys = pushes();
            let valid = keys.iter().all(|k| bitcoin::PublicKey::from_slice(k).is_ok());
            // OP_1..OP_16 hold the threshold.
            let k = b[0] - op::OP_PUSHNUM_1.to_u8() + 1;
            match valid {
                true => format!("multi({k},{})", keys.iter().map(hex::encode).collect::<Vec<_>>().join(",")),
                false => format!("raw({})", hex::encode(b)),
            }
        }
        "witness_v1_taproot" if bitcoin::key::XOnlyPublicKey::from_slice(&b[2..]).is_ok() => {
            format!("rawtr({})", hex::encode(&b[2..]))
        }
        _ => match address {
            Some(a) => format!("addr({a})"),
            None => format!("raw({})", hex::encode(b)),
        },
    };
    let checksum = miniscript::descriptor::checksum::desc_checksum(&body).expect("descriptor characters");
    format!("{body}#{checksum}")
}

/// Core's name for an output script's template (`GetTxnOutputType`).
pub fn script_type(s: &Script) -> &'static str {
    let b = s.as_bytes();
    if b.len() == 4 && b[0] == op::OP_PUSHNUM_1.to_u8() && b[1] == 2 && b[2..] == [0x4e, 0x73] {
        return "anchor";
    }
    if let Some(version) = s.witness_version() {
        let program = b.len() - 2;
        return match (version.to_num(), program) {
            (0, 20) => "witness_v0_keyhash",
            (0, 32) => "witness_v0_scripthash",
            (0, _) => "nonstandard",
            (1, 32) => "witness_v1_taproot",
            _ => "witness_unknown",
        };
    }
    if s.is_p2sh() {
        "scripthash"
    } else if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2pk() {
        "pubkey"
    } else if s.is_multisig() {
        "multisig"
    } else if b.first() == Some(&op::OP_RETURN.to_u8()) && Script::from_bytes(&b[1..]).is_push_only() {
        "nulldata"
    } else {
        "nonstandard"
    }
}

/// Core's `ScriptToAsmStr`.
pub fn asm(s: &Script, decode_sighash: bool) -> String {
    let unspendable = s.as_bytes().first() == Some(&op::OP_RETURN.to_u8()) || s.len() > 10_000;
    let mut parts = Vec::new();
    for ins in s.instructions() {
        match ins {
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
            Ok(Instruction::PushBytes(p)) => {
                let data = p.as_bytes();
                if data.len() <= 4 {
                    parts.push(script_num(data).to_string());
                } else if decode_sighash && !unspendable && is_strict_signature(data) {
                    let (sig, ty) = data.split_at(data.len() - 1);
                    parts.push(format!("{}[{}]", hex::encode(sig), sighash_name(ty[0]).unwrap()));
                } else {
                    parts.push(hex::encode(data));
                }
            }
            Ok(Instruction::Op(o)) => parts.push(op_name(o)),
        }
    }
    parts.join(" ")
}

/// A push of up to 4 bytes read as Core's `CScriptNum`: little-endian, sign in the top bit.
fn script_num(data: &[u8]) -> i64 {
    let Some(&last) = data.last() else { return 0 };
    let mut n: i64 = 0;
    for (i, b) in data.iter().enumerate() {
        n |= (*b as i64) << (8 * i);
    }
    match last & 0x80 {
        0 => n,
        _ => -(n & !(0x80i64 << (8 * (data.len() - 1)))),
    }
}

fn op_name(o: bitcoin::Opcode) -> String {
    let code = o.to_u8();
    match code {
        0x4f => "-1".into(),
        0x51..=0x60 => (code - 0x50).to_string(),
        0xb1 => "OP_CHECKLOCKTIMEVERIFY".into(),
        0xb2 => "OP_CHECKSEQUENCEVERIFY".into(),
        0xbb..=0xfe => "OP_UNKNOWN".into(),
        _ => o.to_string(),
    }
}

fn sighash_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "ALL",
        0x02 => "NONE",
        0x03 => "SINGLE",
        0x81 => "ALL|ANYONECANPAY",
        0x82 => "NONE|ANYONECANPAY",
        0x83 => "SINGLE|ANYONECANPAY",
        _ => return None,
    })
}

/// BIP66 strict DER plus a defined sighash byte: Core's `CheckSignatureEncoding` with STRICTENC.
fn is_strict_signature(sig: &[u8]) -> bool {
    let n = sig.len();
    if !(9..=73).contains(&n) || sig[0] != 0x30 || sig[1] as usize != n - 3 {
        return false;
    }
    let len_r = sig[3] as usize;
    if 5 + len_r >= n {
        return false;
    }
    let len_s = sig[5 + len_r] as usize;
    if len_r + len_s + 7 != n || sig[2] != 0x02 || len_r == 0 || sig[4] & 0x80 != 0 {
        return false;
    }
    if len_r > 1 && sig[4] == 0 && sig[5] & 0x80 == 0 {
        return false;
    }
    if sig[len_r + 4] != 0x02 || len_s == 0 || sig[len_r + 6] & 0x80 != 0 {
        return false;
    }
    if len_s > 1 && sig[len_r + 6] == 0 && sig[len_r + 7] & 0x80 == 0 {
        return false;
    }
    sighash_name(sig[n - 1]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::ScriptBuf;

    fn script(h: &str) -> ScriptBuf {
        ScriptBuf::from_hex(h).unwrap()
    }

    #[test]
    fn asm_reads_like_cores() {
        // P2PKH output.
        assert_eq!(
            asm(&script("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"), false),
            "OP_DUP OP_HASH160 62e907b15cbf27d5425399ebf6f0fb50ebb88f18 OP_EQUALVERIFY OP_CHECKSIG"
        );
        // Small pushes and OP_n are numbers; OP_0 is 0; CLTV by Core's name.
        assert_eq!(
            asm(&script("00516002ff7f4f03808080b1"), false),
            "0 1 16 32767 -1 -32896 OP_CHECKLOCKTIMEVERIFY"
        );
        // A truncated push.
        assert_eq!(asm(&script("4c05ab"), false), "[error]");
        // A DER signature with SIGHASH_ALL in a scriptSig, then a public key.
        let sig = "3044022079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f8179802205cd6b5f6b9c1a7c1f79a1b7fb7c2f3f4a8d1e2c3b4a5968778695a4b3c2d1e0f01";
        let key = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        let sig_script = script(&format!("47{sig}21{key}"));
        assert_eq!(asm(&sig_script, true), format!("{}[ALL] {key}", &sig[..sig.len() - 2]));
        assert_eq!(asm(&sig_script, false), format!("{sig} {key}"));
    }

    #[test]
    fn output_types_have_cores_names() {
        assert_eq!(script_type(&script("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac")), "pubkeyhash");
        assert_eq!(
            script_type(&script("0014751e76e8199196d454941c45d1b3a323f1433bd6")),
            "witness_v0_keyhash"
        );
        assert_eq!(script_type(&script("51024e73")), "anchor");
        assert_eq!(script_type(&script("6a0401020304")), "nulldata");
        assert_eq!(script_type(&script("6a61")), "nonstandard");
        assert_eq!(script_type(&script("5202abcd")), "witness_unknown");
    }
}
