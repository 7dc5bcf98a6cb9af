//! Why the indexer walks block bytes itself: the zero-copy walk (txids + output scripts) against
//! `bitcoin::Block` deserialization plus `compute_txid` on the same blocks.
//!
//! Input: blocks of a real node's blk files, named by $BLKINDEX_BENCH_BLOCKS (a blocks directory);
//! without it, a synthetic block made of copies of a segwit transaction.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use blkindex_shared::blkfile::{list_files, scan_records, BlockFiles, FileKind};
use blkindex_shared::parse::for_each_tx;
use blkindex_shared::varint::DecodeError;

fn sample_blocks() -> Vec<Vec<u8>> {
    if let Some(dir) = std::env::var_os("BLKINDEX_BENCH_BLOCKS") {
        let files = BlockFiles::open(std::path::Path::new(&dir)).unwrap();
        let num = list_files(files.dir(), FileKind::Blk).unwrap()[0];
        let bytes = files.file_bytes(FileKind::Blk, num).unwrap();
        let (recs, _) =
            scan_records(bytes.bytes(), &files.xor_key(), [0xfa, 0xbf, 0xb5, 0xda], FileKind::Blk);
        return recs
            .iter()
            .rev()
            .take(20)
            .map(|r| files.read(FileKind::Blk, num, r.offset, r.len as usize).unwrap())
            .collect();
    }
    // BIP143's native P2WPKH example, 2000 times behind a header and a count.
    let tx = hex::decode("01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f00000000494830450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000").unwrap();
    let mut block = vec![0u8; 80];
    block.extend_from_slice(&[0xfd, 0xd0, 0x07]);
    for _ in 0..2000 {
        block.extend_from_slice(&tx);
    }
    vec![block]
}

fn parse(c: &mut Criterion) {
    let blocks = sample_blocks();
    let bytes: usize = blocks.iter().map(|b| b.len()).sum();
    let mut g = c.benchmark_group("block parse + txids + output scripts");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("zero-copy walk (blkindex)", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for block in &blocks {
                for_each_tx::<DecodeError>(block, |_, tx| {
                    n += tx.outputs.iter().map(|o| o.script.len()).sum::<usize>() + tx.txid[0] as usize;
                    Ok(())
                })
                .unwrap();
            }
            n
        })
    });
    g.bench_function("bitcoin::Block decode + compute_txid", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for block in &blocks {
                let mut r = &block[80..];
                let txs: Vec<bitcoin::Transaction> =
                    bitcoin::consensus::Decodable::consensus_decode(&mut r).unwrap();
                for tx in &txs {
                    let txid = tx.compute_txid();
                    n += tx.output.iter().map(|o| o.script_pubkey.len()).sum::<usize>()
                        + bitcoin::hashes::Hash::as_byte_array(&txid)[0] as usize;
                }
            }
            n
        })
    });
    g.finish();
}

/// Why `shared/src/hashes.rs` drives sha2's compression function itself: the bulk pass hashes tens
/// of millions of short messages, where bitcoin_hashes' streaming engine (the same SHA-NI
/// compression underneath) spends as long buffering and padding as compressing.
fn hashes(c: &mut Criterion) {
    use bitcoin::hashes::{sha256, sha256d, Hash, HashEngine};
    use blkindex_shared::hashes as ours;
    let script = [0x51u8; 22]; // a P2WPKH-sized script
    let tx: Vec<u8> = (0..250u32).map(|i| i as u8).collect(); // a txid's three pieces
    let (a, b, d) = (&tx[..4], &tx[4..246], &tx[246..]);
    let (l, r) = ([1u8; 32], [2u8; 32]);
    let mut g = c.benchmark_group("hashes");
    g.bench_function("script hash: bitcoin_hashes", |x| {
        x.iter(|| sha256::Hash::hash(std::hint::black_box(&script)))
    });
    g.bench_function("script hash: blkindex", |x| x.iter(|| ours::sha256(&[std::hint::black_box(&script)])));
    g.bench_function("txid of 250 B in 3 parts: bitcoin_hashes", |x| {
        x.iter(|| {
            let mut e = sha256d::Hash::engine();
            e.input(a);
            e.input(std::hint::black_box(b));
            e.input(d);
            sha256d::Hash::from_engine(e)
        })
    });
    g.bench_function("txid of 250 B in 3 parts: blkindex", |x| {
        x.iter(|| ours::sha256d(&[a, std::hint::black_box(b), d]))
    });
    g.bench_function("merkle node: bitcoin_hashes", |x| {
        x.iter(|| {
            let mut e = sha256d::Hash::engine();
            e.input(std::hint::black_box(&l));
            e.input(&r);
            sha256d::Hash::from_engine(e)
        })
    });
    g.bench_function("merkle node: blkindex", |x| x.iter(|| ours::sha256d_64(std::hint::black_box(&l), &r)));
    g.finish();
}

criterion_group!(benches, parse, hashes);
criterion_main!(benches);
