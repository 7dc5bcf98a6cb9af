//! BIP352's own test vectors (`shared/tests/data/bip352/`, see its README), sending and receiving,
//! and the rules the vectors of that commit do not exercise.

use std::collections::HashMap;
use std::str::FromStr;

use bitcoin::secp256k1::{Parity, PublicKey, Scalar, Secp256k1, SecretKey};
use bitcoin::{
    absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use serde_json::Value;

use super::*;

const VECTORS: &str = include_str!("../../tests/data/bip352/vectors.jsonl");

/// The vectors' cases with every `"$name"` replaced by its definition.
fn cases() -> Vec<Value> {
    let mut lines = VECTORS.lines();
    let defs: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let defs = defs["defs"].as_object().unwrap().clone();
    fn resolve(v: Value, defs: &serde_json::Map<String, Value>) -> Value {
        match v {
            Value::String(s) if s.starts_with('$') => defs[&s[1..]].clone(),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| resolve(v, defs)).collect()),
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, resolve(v, defs))).collect()),
            v => v,
        }
    }
    let cases: Vec<Value> = lines.map(|l| resolve(serde_json::from_str(l).unwrap(), &defs)).collect();
    assert_eq!(cases.len(), 26, "every case the vectors' README lists");
    cases
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn p2tr(xonly: &[u8]) -> ScriptBuf {
    let mut s = vec![0x51, 0x20];
    s.extend_from_slice(xonly);
    ScriptBuf::from_bytes(s)
}

/// A transaction with the case's inputs and a P2TR output for each x-only key, and the scripts
/// its inputs spend.
fn tx_of(vin: &[Value], outputs: &[Vec<u8>]) -> (Transaction, Vec<ScriptBuf>) {
    let input = vin
        .iter()
        .map(|v| {
            let w = hex(&v[3]);
            TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_str(v[0].as_str().unwrap()).unwrap(),
                    vout: v[1].as_u64().unwrap() as u32,
                },
                script_sig: ScriptBuf::from_bytes(hex(&v[2])),
                sequence: Sequence::MAX,
                witness: if w.is_empty() {
                    Witness::new()
                } else {
                    bitcoin::consensus::deserialize(&w).unwrap()
                },
            }
        })
        .collect();
    let output =
        outputs.iter().map(|x| TxOut { value: Amount::from_sat(1000), script_pubkey: p2tr(x) }).collect();
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input,
        output,
    };
    (tx, vin.iter().map(|v| ScriptBuf::from_bytes(hex(&v[4]))).collect())
}

fn refs(scripts: &[ScriptBuf]) -> Vec<&Script> {
    scripts.iter().map(|s| s.as_script()).collect()
}

/// (B_scan, B_m) of an address, read back from its bech32m data (checksum not checked: the
/// receiving side checks that our encoder makes the vectors' addresses).
fn decode_address(addr: &str) -> (PublicKey, PublicKey) {
    const CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let data = &addr[addr.find('1').unwrap() + 1..];
    let fes: Vec<u32> = data.chars().map(|c| CHARSET.find(c).unwrap() as u32).collect();
    let fes = &fes[1..fes.len() - 6]; // version, checksum
    let (mut acc, mut bits, mut bytes) = (0u32, 0u32, Vec::new());
    for f in fes {
        acc = (acc << 5) | f;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    (PublicKey::from_slice(&bytes[..33]).unwrap(), PublicKey::from_slice(&bytes[33..66]).unwrap())
}

fn xonly(p: &PublicKey) -> Vec<u8> {
    p.serialize()[1..].to_vec()
}

#[test]
fn sending_vectors_eligibility_and_tweak() {
    let secp = Secp256k1::new();
    for case in cases() {
        let name = case["comment"].as_str().unwrap();
        let vin = case["vin"].as_array().unwrap();
        let sent: Vec<Vec<Vec<u8>>> = case["sent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|set| set.as_array().unwrap().iter().map(hex).collect())
            .collect();
        let eligible = !sent[0].is_empty();
        // Any taproot output makes the transaction a candidate; the inputs decide.
        let (tx, spent) = tx_of(vin, &[vec![0x79; 32]]);
        let got = tweak(&tx, &refs(&spent));
        // The indexer reads the transaction's bytes in place: the same inputs to the tweak.
        let raw = bitcoin::consensus::serialize(&tx);
        let mut view = crate::parse::Spends::default();
        crate::parse::spends(&raw, &mut view).unwrap();
        assert_eq!(
            TweakInputs::of(&view, &refs(&spent)),
            TweakInputs::of(&tx, &refs(&spent)),
            "{name}: in place"
        );
        assert_eq!(output_prefixes(&view), output_prefixes(&tx), "{name}: in place");
        assert_eq!(got.is_some(), eligible, "{name}: eligibility");
        // The tweak the vectors' receiving side expects (input_hash·A, null when none).
        let want = case["tweak"].as_str().map(|t| PublicKey::from_slice(&hex::decode(t).unwrap()).unwrap());
        assert_eq!(got, want, "{name}: the vectors' tweak");
        let Some(got) = got else { continue };

        // The sender's side, from the private keys: a = Σ a_i (a taproot key negated when its
        // point has odd Y) over the inputs that carry a key, its tweak, and the outputs it makes.
        let mut a: Option<SecretKey> = None;
        for (i, v) in vin.iter().enumerate() {
            if input_key(&tx, i, &spent[i]).and_then(|k| PublicKey::from_slice(&k).ok()).is_none() {
                continue;
            }
            let mut k = SecretKey::from_slice(&hex(&v[5])).unwrap();
            if spent[i].is_p2tr() && k.x_only_public_key(&secp).1 == Parity::Odd {
                k = k.negate();
            }
            a = Some(match a {
                None => k,
                Some(s) => s.add_tweak(&Scalar::from(k)).unwrap(),
            });
        }
        let a = a.unwrap();
        let a_pub = a.public_key(&secp);
        let input_hash = tagged(Tag::Inputs, &[&smallest_outpoint(&tx), &a_pub.serialize()]);
        let ia = a.mul_tweak(&Scalar::from_be_bytes(input_hash).unwrap()).unwrap();
        assert_eq!(got, ia.public_key(&secp), "{name}: tweak = input_hash·a·G");

        // Outputs as the sender makes them: recipients grouped by scan key, k counting within a
        // group, in the order given; the vectors list every acceptable set.
        let mut groups: Vec<(PublicKey, Vec<PublicKey>)> = Vec::new();
        for r in case["recipients"].as_array().unwrap() {
            let (scan, b_m) = decode_address(r.as_str().unwrap());
            match groups.iter_mut().find(|(s, _)| *s == scan) {
                Some((_, ms)) => ms.push(b_m),
                None => groups.push((scan, vec![b_m])),
            }
        }
        let mut made: Vec<Vec<u8>> = Vec::new();
        for (scan, ms) in &groups {
            let shared = scan.mul_tweak(&secp, &Scalar::from(ia)).unwrap().serialize();
            for (k, b_m) in ms.iter().enumerate() {
                made.push(xonly(&output_key(b_m, &shared, k as u32).unwrap()));
            }
        }
        made.sort();
        let ok = sent.iter().any(|set| {
            let mut set = set.clone();
            set.sort();
            set == made
        });
        assert!(ok, "{name}: the outputs made from the tweak's keys are none of the vectors' sets");
    }
}

#[test]
fn receiving_vectors_find_exactly_the_outputs() {
    let secp = Secp256k1::new();
    let mut found_any = 0;
    for case in cases() {
        let name = case["comment"].as_str().unwrap();
        for r in case["receiving"].as_array().unwrap() {
            let outputs: Vec<Vec<u8>> = r["outputs"].as_array().unwrap().iter().map(hex).collect();
            let (tx, spent) = tx_of(case["vin"].as_array().unwrap(), &outputs);
            let scan = SecretKey::from_slice(&hex(&r["scan"])).unwrap();
            let spend = SecretKey::from_slice(&hex(&r["spend"])).unwrap().public_key(&secp);
            let labels: Vec<u32> =
                r["labels"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as u32).collect();
            let receiver = Receiver::new(scan, spend, &labels);

            let addresses: Vec<&str> =
                r["addresses"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            assert_eq!(receiver.address(Net(bitcoin::Network::Bitcoin)), addresses[0], "{name}: address");
            for (m, want) in labels.iter().zip(&addresses[1..]) {
                let t = tagged(Tag::Label, &[&scan.secret_bytes(), &m.to_be_bytes()]);
                let b_m = spend.add_exp_tweak(&secp, &Scalar::from_be_bytes(t).unwrap()).unwrap();
                assert_eq!(
                    address("sp", &scan.public_key(&secp), &b_m),
                    *want,
                    "{name}: label {m}'s address"
                );
            }

            let found: HashMap<Vec<u8>, Vec<u8>> =
                r["found"].as_array().unwrap().iter().map(|f| (hex(&f[0]), hex(&f[1]))).collect();
            let Some(t) = tweak(&tx, &refs(&spent)) else {
                assert!(found.is_empty(), "{name}: not eligible, yet the vectors find outputs");
                continue;
            };
            let paid: Vec<Vec<u8>> = receiver
                .paid_outputs(&t, &tx)
                .into_iter()
                .map(|i| tx.output[i as usize].script_pubkey.as_bytes()[2..].to_vec())
                .collect();
            let mut want: Vec<Vec<u8>> = found.keys().cloned().collect();
            let mut got = paid.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name}: outputs found");
            // The prefix check is a hit exactly when the full check finds something (P_0, or
            // P_0 with a label, is always among the outputs then).
            assert_eq!(receiver.matches(&t, &output_prefixes(&tx)), !found.is_empty(), "{name}: matches");
            found_any += found.len();
        }
    }
    assert!(found_any > 30, "the vectors pay {found_any} outputs");
}

/// A P2WPKH input spending a key `k`, as a case's vin entry would have it.
fn p2wpkh_input(k: &SecretKey, vout: u32) -> (TxIn, ScriptBuf) {
    let secp = Secp256k1::new();
    let pk = bitcoin::CompressedPublicKey(k.public_key(&secp));
    let mut w = Witness::new();
    w.push([0x30; 71]);
    w.push(pk.to_bytes());
    let txin = TxIn {
        previous_output: OutPoint { txid: Txid::from_byte_array([7; 32]), vout },
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: w,
    };
    (txin, ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()))
}

fn tx_with(inputs: Vec<TxIn>) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: inputs,
        output: vec![TxOut { value: Amount::from_sat(1000), script_pubkey: p2tr(&[0x79; 32]) }],
    }
}

#[test]
fn skipped_transactions() {
    let k = SecretKey::from_slice(&[0x11; 32]).unwrap();
    let (a, sa) = p2wpkh_input(&k, 0);
    let one = tx_with(vec![a.clone()]);
    assert!(tweak(&one, &[&sa]).is_some());

    // No taproot output: not a candidate at all.
    let mut no_p2tr = one.clone();
    no_p2tr.output[0].script_pubkey = sa.clone();
    assert!(tweak(&no_p2tr, &[&sa]).is_none());

    // An input spending a witness program of version 2 skips the whole transaction, even with
    // an eligible input beside it; version 1 that is not P2TR (an anchor) is only ignored.
    let (b, _) = p2wpkh_input(&k, 1);
    let v2 = ScriptBuf::from_bytes([&[0x52, 0x20][..], &[5; 32]].concat());
    assert!(tweak(&tx_with(vec![a.clone(), b.clone()]), &[&sa, &v2]).is_none());
    let anchor = ScriptBuf::from_bytes(vec![0x51, 0x02, 0x4e, 0x73]);
    assert!(tweak(&tx_with(vec![a.clone(), b.clone()]), &[&sa, &anchor]).is_some());

    // Keys that sum to the point at infinity: skipped.
    let (neg, sneg) = p2wpkh_input(&k.negate(), 1);
    assert!(tweak(&tx_with(vec![a.clone(), neg]), &[&sa, &sneg]).is_none());

    // Taproot inputs and the annex (a last item starting 0x50, when there are two or more):
    // a script-path spend from the NUMS point gives no key, with an annex after its control
    // block as without; a key-path spend with an annex does, even one whose bytes look like a
    // NUMS control block. Each alone in its transaction, read both ways (rust-bitcoin's
    // transaction and the indexer's in-place reading).
    let x = SecretKey::from_slice(&[0x22; 32]).unwrap().x_only_public_key(&Secp256k1::new()).0.serialize();
    let nums_control = [&[0xc0][..], &NUMS_H[..]].concat();
    let annex_like_nums = [&[0x50][..], &NUMS_H[..]].concat();
    for (witness, gives_key) in [
        (vec![vec![0x51], nums_control.clone()], false),
        (vec![vec![0x51], nums_control.clone(), vec![0x50, 1]], false),
        (vec![vec![0x30; 64], annex_like_nums], true),
        (vec![vec![0x30; 64]], true),
        (vec![vec![0x51], [&[0xc0][..], &[9; 32]].concat(), vec![0x50]], true),
    ] {
        let tx = tx_with(vec![TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&witness),
        }]);
        let spent = p2tr(&x);
        let raw = bitcoin::consensus::serialize(&tx);
        let mut view = crate::parse::Spends::default();
        crate::parse::spends(&raw, &mut view).unwrap();
        assert_eq!(tweak(&tx, &[&spent]).is_some(), gives_key, "{witness:x?}");
        assert_eq!(tweak(&view, &[&spent]), tweak(&tx, &[&spent]), "{witness:x?}");
    }

    // Wrong number of spent scripts, and a coinbase.
    assert!(tweak(&tx_with(vec![a.clone(), b]), &[&sa]).is_none());
    let mut cb = one.clone();
    cb.input[0].previous_output = OutPoint::null();
    assert!(tweak(&cb, &[&sa]).is_none());
}

#[test]
fn testnet_address_and_prefixes() {
    let secp = Secp256k1::new();
    let scan = SecretKey::from_slice(&[0x21; 32]).unwrap();
    let spend = SecretKey::from_slice(&[0x22; 32]).unwrap().public_key(&secp);
    let r = Receiver::new(scan, spend, &[]);
    assert!(r.address(Net(bitcoin::Network::Regtest)).starts_with("sprt1q"));
    assert!(r.address(Net(bitcoin::Network::Signet)).starts_with("tsp1q"));
    assert!(r.address(Net(bitcoin::Network::Testnet)).starts_with("tsp1q"));
    assert!(r.address(Net(bitcoin::Network::Bitcoin)).starts_with("sp1q"));
    let mut tx = tx_with(vec![p2wpkh_input(&scan, 0).0]);
    tx.output.insert(0, TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return([1, 2]) });
    tx.output.push(TxOut { value: Amount::ZERO, script_pubkey: p2tr(&[0x33; 32]) });
    assert_eq!(output_prefixes(&tx), vec![[0x79; 8], [0x33; 8]]);
}

/// The byte table's `p + t·G` against libsecp256k1's own `add_exp_tweak`, for scalars with zero
/// bytes, 0xff bytes, one byte, the largest scalar n − 1, and hashes; and its one failure, the point
/// at infinity.
#[test]
fn byte_table_adds_t_times_g_exactly() {
    let secp = Secp256k1::new();
    let p = SecretKey::from_slice(&[0x42; 32]).unwrap().public_key(&secp);
    let n_minus_1 = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140";
    let mut ff = [0xff; 32];
    ff[0] = 0x7f; // 0xff bytes everywhere else, and below the curve order
    let mut scalars: Vec<[u8; 32]> =
        vec![ff, [0x01; 32], hex::decode(n_minus_1).unwrap().try_into().unwrap()];
    let mut one_byte = [0u8; 32];
    one_byte[31] = 7;
    scalars.push(one_byte);
    let mut sparse = [0u8; 32];
    sparse[0] = 0x80;
    sparse[17] = 0xff;
    scalars.push(sparse);
    scalars.extend((0u32..200).map(|i| tagged(Tag::SharedSecret, &[&i.to_be_bytes()])));
    for bytes in scalars {
        let t = SecretKey::from_slice(&bytes).expect("a scalar below the curve order");
        let want = p.add_exp_tweak(&secp, &Scalar::from(t)).unwrap();
        assert_eq!(plus_times_g(&p, &t), Some(want), "t = {}", t.display_secret());
    }
    let t = SecretKey::from_slice(&[0x42; 32]).unwrap();
    assert_eq!(plus_times_g(&p.negate(&secp), &t), None, "p = −t·G sums to infinity");
}

#[test]
fn a_tweak_table_multiplies_as_mul_tweak_and_matches_alike() {
    let secp = Secp256k1::new();
    let t = SecretKey::from_slice(&[0x42; 32]).unwrap().public_key(&secp);
    let table = TweakTable::new(&t);
    let n_minus_1 = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140";
    let mut scalars: Vec<[u8; 32]> =
        vec![[0x01; 32], [0x10; 32], hex::decode(n_minus_1).unwrap().try_into().unwrap()];
    let mut ff = [0xff; 32];
    ff[0] = 0x7f;
    scalars.push(ff);
    for (at, v) in [(31, 1), (31, 0x10), (0, 0x0f), (0, 0xf0), (16, 0x0f)] {
        let mut one = [0u8; 32];
        one[at] = v;
        scalars.push(one);
    }
    scalars.extend((0u32..200).map(|i| tagged(Tag::SharedSecret, &[&i.to_be_bytes()])));
    for bytes in &scalars {
        let s = SecretKey::from_slice(bytes).expect("a scalar below the curve order");
        let want = t.mul_tweak(&secp, &Scalar::from(s)).unwrap();
        assert_eq!(table.times(bytes), Some(want), "s = {}", s.display_secret());
    }
    assert_eq!(table.times(&[0; 32]), None, "0·T is infinity");

    // The receiving vectors give the same answer either way (hits and misses, labels among them).
    let (mut hits, mut misses) = (0, 0);
    for case in cases() {
        for r in case["receiving"].as_array().unwrap() {
            let outputs: Vec<Vec<u8>> = r["outputs"].as_array().unwrap().iter().map(hex).collect();
            let (tx, spent) = tx_of(case["vin"].as_array().unwrap(), &outputs);
            let Some(tweak) = tweak(&tx, &refs(&spent)) else { continue };
            let scan = SecretKey::from_slice(&hex(&r["scan"])).unwrap();
            let spend = SecretKey::from_slice(&hex(&r["spend"])).unwrap().public_key(&secp);
            let labels: Vec<u32> =
                r["labels"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as u32).collect();
            let receiver = Receiver::new(scan, spend, &labels);
            let prefixes = output_prefixes(&tx);
            let table = TweakTable::new(&tweak);
            let m = receiver.matches(&tweak, &prefixes);
            assert_eq!(receiver.matches_by(&table, &prefixes), m, "{}", case["comment"]);
            // Another receiver's keys miss with the table too.
            let other = Receiver::new(SecretKey::from_slice(&[7; 32]).unwrap(), spend, &labels);
            assert!(!other.matches_by(&table, &prefixes) && !other.matches(&tweak, &prefixes));
            if m {
                hits += 1
            } else {
                misses += 1
            }
        }
    }
    assert!(hits > 20 && misses > 0, "{hits} hits, {misses} misses");
}
