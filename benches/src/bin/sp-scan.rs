//! Silent-payment scanning over an index's `tweak` family, as a server scans for its clients:
//!
//! 1. historical scan, one receiver: every block's tweak rows read and each eligible transaction
//!    checked with `Receiver::matches` (tweak rows read and decoded, then `b_scan·tweak`,
//!    `t_0`, `P_0 = B_spend + t_0·G`, and `P_0` plus the change label), on one thread and on every
//!    core; eligible transactions per second, per core;
//! 2. one block (the one with the most eligible transactions) scanned for N receivers (default
//!    1,000) on every core: each receiver on its own, and with a tweak table per transaction shared
//!    by all of them (what the server does for a new block), alternating;
//! 3. where the time of one check goes: each step on its own over the same tweaks, and the
//!    alternatives (constant-time ECDH point; `t·G` by the generator comb then an addition;
//!    `t·G` as a sum of byte-table points, what `Receiver` uses).
//!
//! Usage: sp-scan DB_DIR BLOCKS_DIR [RECEIVERS]

use std::time::Instant;

use anyhow::{Context, Result};
use bitcoin::secp256k1::{ecdh, PublicKey, Scalar, Secp256k1, SecretKey};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::query::IndexReader;
use blkindex_shared::schema::Height;
use blkindex_shared::silent::{plus_times_g, Receiver, TweakTable, TweakedTx};
use blkindex_shared::store::{Mode, Store};

fn key(i: u64) -> SecretKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i + 1).to_be_bytes());
    b[31] = 1;
    SecretKey::from_slice(&Sha256::digest(b)).unwrap()
}

fn receiver(i: u64) -> Receiver {
    let secp = Secp256k1::new();
    Receiver::new(key(2 * i), key(2 * i + 1).public_key(&secp), &[])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let db = std::path::Path::new(args.get(1).context("usage: sp-scan DB_DIR BLOCKS_DIR [RECEIVERS]")?);
    let blocks = std::path::Path::new(args.get(2).context("BLOCKS_DIR")?);
    let n_receivers: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let tmp = std::env::temp_dir().join(format!("sp-scan-{}", std::process::id()));
    let index = IndexReader::new(Store::open(db, Mode::Secondary(tmp.clone()))?, BlockFiles::open(blocks)?)?;
    let (tip, _) = index.chain.tip().context("empty index")?;
    let start = index.tweak_start()?.context("the index has no silent-payment family")?;
    let cores = rayon::current_num_threads();
    println!("index {}: tip {tip}, tweaks from {start}, {cores} threads", db.display());

    // 1. Historical scan, one receiver, chunks of 100 blocks as a server pages through them.
    let chunks: Vec<(Height, Height)> = (start..=tip).step_by(100).map(|a| (a, (a + 99).min(tip))).collect();
    let r = receiver(0);
    let t = Instant::now();
    let mut all: Vec<(Height, Vec<TweakedTx>)> = Vec::new();
    for &(a, b) in &chunks {
        all.extend(index.tweaks(a..=b)?);
    }
    let read_secs = t.elapsed().as_secs_f64();
    let txs: usize = all.iter().map(|(_, t)| t.len()).sum();
    let outputs: usize = all.iter().flat_map(|(_, t)| t.iter().map(|x| x.outputs.len())).sum();
    let t = Instant::now();
    let hits = all.iter().flat_map(|(_, t)| t).filter(|x| r.matches(&x.tweak, &x.outputs)).count();
    let match_secs = t.elapsed().as_secs_f64();
    println!(
        "scan, 1 thread: {txs} eligible txs ({outputs} taproot outputs) in {} blocks; read {read_secs:.3} s, \
         matches {match_secs:.3} s ({hits} hits): {:.0} tx/s per core ({:.0} tx/s counting the reads)",
        all.len(),
        txs as f64 / match_secs,
        txs as f64 / (match_secs + read_secs)
    );
    let t = Instant::now();
    let hits_par: usize = chunks
        .par_iter()
        .map(|&(a, b)| -> Result<usize> {
            let rows = index.tweaks(a..=b)?;
            Ok(rows.iter().flat_map(|(_, t)| t).filter(|x| r.matches(&x.tweak, &x.outputs)).count())
        })
        .sum::<Result<usize>>()?;
    let par_secs = t.elapsed().as_secs_f64();
    assert_eq!(hits_par, hits);
    println!(
        "scan, {cores} threads (reads included): {par_secs:.3} s, {:.0} tx/s, {:.0} tx/s per core",
        txs as f64 / par_secs,
        txs as f64 / par_secs / cores as f64
    );

    // 2. The block with the most eligible transactions, for many receivers.
    let (h, block) = all.iter().max_by_key(|(_, t)| t.len()).context("no eligible transaction")?;
    let receivers: Vec<Receiver> = (1..=n_receivers).map(receiver).collect();
    let per_check = |secs: f64| secs * cores as f64 * 1e6 / (block.len() as f64 * n_receivers as f64);
    // Each receiver on its own (`matches`), and each transaction's tweak table shared by all of
    // them (`matches_by`, as the server scans a new block for its live subscriptions), alternating.
    for round in 0..2 {
        let t = Instant::now();
        let hits: usize = receivers
            .par_iter()
            .map(|r| block.iter().filter(|x| r.matches(&x.tweak, &x.outputs)).count())
            .sum();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "block {h} ({} eligible txs) for {n_receivers} receivers on {cores} threads, each on its own (round {round}): {secs:.3} s ({hits} hits, {:.1} µs per check per core)",
            block.len(),
            per_check(secs)
        );
        let t = Instant::now();
        let shared: usize = block
            .par_iter()
            .map(|x| {
                let table = TweakTable::new(&x.tweak);
                receivers.iter().filter(|r| r.matches_by(&table, &x.outputs)).count()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(shared == hits, "the shared tables found {shared} hits, the receivers alone {hits}");
        println!(
            "block {h} for {n_receivers} receivers on {cores} threads, a tweak table per transaction shared by all (round {round}): {secs:.3} s ({shared} hits, {:.1} µs per check per core)",
            per_check(secs)
        );
    }

    // 3. Where one check's time goes, step by step over the same (up to 20,000) tweaks.
    let sample: Vec<&TweakedTx> = all.iter().flat_map(|(_, t)| t).take(20_000).collect();
    let n = sample.len() as f64;
    let secp = Secp256k1::verification_only();
    let scan = key(0);
    let scan_scalar = Scalar::from(scan);
    let spend = key(1).public_key(&Secp256k1::new());
    let time = |name: &str, f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        let x = f();
        let us = t.elapsed().as_secs_f64() * 1e6 / n;
        println!("  {name:<58} {us:>7.2} µs   (check {x})");
    };
    let points: Vec<PublicKey> = sample.iter().map(|x| x.tweak).collect();
    let stored: Vec<[u8; 65]> = points.iter().map(|p| p.serialize_uncompressed()).collect();
    let compressed: Vec<[u8; 33]> = points.iter().map(|p| p.serialize()).collect();
    let shared: Vec<PublicKey> = points.iter().map(|p| p.mul_tweak(&secp, &scan_scalar).unwrap()).collect();
    let shared_ser: Vec<[u8; 33]> = shared.iter().map(|p| p.serialize()).collect();
    let tagged = |s: &[u8; 33]| -> [u8; 32] {
        let tag = Sha256::digest(b"BIP0352/SharedSecret");
        let mut h = Sha256::new();
        h.update(tag);
        h.update(tag);
        h.update(s);
        h.update(0u32.to_be_bytes());
        h.finalize().into()
    };
    let t0: Vec<Scalar> = shared_ser.iter().map(|s| Scalar::from_be_bytes(tagged(s)).unwrap()).collect();
    println!("one check's steps, {} tweaks, 1 thread:", sample.len());
    time("tweak row bytes (x ‖ y) → point, checked on the curve", &mut || {
        stored.iter().filter(|p| PublicKey::from_slice(*p).is_ok()).count()
    });
    time("  alternative: compressed bytes → point (a square root)", &mut || {
        compressed.iter().filter(|p| PublicKey::from_slice(*p).is_ok()).count()
    });
    time("b_scan·tweak: PublicKey::mul_tweak (ecmult, variable time)", &mut || {
        points.iter().filter(|p| p.mul_tweak(&secp, &scan_scalar).is_ok()).count()
    });
    time("  alternative: ecdh::shared_secret_point (constant time)", &mut || {
        points.iter().map(|p| ecdh::shared_secret_point(p, &scan)[0] as usize).sum()
    });
    time("shared secret → 33 bytes (serialize: an inversion)", &mut || {
        shared.iter().map(|p| p.serialize()[1] as usize).sum()
    });
    time("t_0 = tagged hash(secret ‖ 0)", &mut || shared_ser.iter().map(|s| tagged(s)[0] as usize).sum());
    time("P_0 = B_spend + t_0·G: add_exp_tweak (generator tables)", &mut || {
        t0.iter().filter(|t| spend.add_exp_tweak(&secp, t).is_ok()).count()
    });
    time("  alternative: t_0·G (from_secret_key) then combine", &mut || {
        let s = Secp256k1::signing_only();
        t0.iter()
            .filter(|t| {
                let k = SecretKey::from_slice(&t.to_be_bytes()).unwrap();
                PublicKey::from_secret_key(&s, &k).combine(&spend).is_ok()
            })
            .count()
    });
    time("  what Receiver does: t_0·G as a sum of byte-table points (plus_times_g)", &mut || {
        t0.iter()
            .filter(|t| plus_times_g(&spend, &SecretKey::from_slice(&t.to_be_bytes()).unwrap()).is_some())
            .count()
    });
    let p0: Vec<PublicKey> = t0.iter().map(|t| spend.add_exp_tweak(&secp, t).unwrap()).collect();
    time("P_0 → 8-byte prefix (serialize) and compare", &mut || {
        p0.iter()
            .zip(&sample)
            .filter(|(p, x)| x.outputs.contains(&p.serialize()[1..9].try_into().unwrap()))
            .count()
    });
    time("P_0 + change label (combine), prefix, compare", &mut || {
        p0.iter()
            .zip(&sample)
            .filter(|(p, x)| {
                let q = p.combine(&spend).unwrap();
                x.outputs.contains(&q.serialize()[1..9].try_into().unwrap())
            })
            .count()
    });
    let r = receiver(0);
    time("the whole Receiver::matches", &mut || {
        sample.iter().filter(|x| r.matches(&x.tweak, &x.outputs)).count()
    });
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}
