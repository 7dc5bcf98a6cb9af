//! Keys, bytes on disk and bytes per key of each column family of an index, and what the bucket
//! families hold, for reports.
//! Usage: index-stats DB_DIR [BLK_BYTES]

use anyhow::Result;
use blkindex_shared::bucket;
use blkindex_shared::schema::{cf, TweakInputsRow, TweakRow, TxnumList};
use blkindex_shared::store::{Mode, Store};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let db = std::path::Path::new(&args[1]);
    let blk_bytes: Option<u64> = args.get(2).map(|s| s.parse()).transpose()?;
    let tmp = std::env::temp_dir().join(format!("index-stats-{}", std::process::id()));
    let store = Store::open(db, Mode::Secondary(tmp.clone()))?;
    let sizes = store.sst_bytes()?;
    let mut total = 0;
    println!("{:<10} {:>12} {:>14} {:>10}", "family", "keys", "sst bytes", "bytes/key");
    for name in cf::ALL {
        let rows = store.db().iterator_cf(store.cf(name), rocksdb::IteratorMode::Start).count() as u64;
        let bytes = sizes.iter().find(|(n, _)| *n == name).map_or(0, |(_, b)| *b);
        total += bytes;
        let per = if rows > 0 { bytes as f64 / rows as f64 } else { 0.0 };
        println!("{name:<10} {rows:>12} {bytes:>14} {per:>10.2}");
    }
    println!("{:<10} {:>12} {total:>14}", "total", "");
    // Where the bytes of the list families go: keys, values, filters, index (RocksDB's table
    // properties), and how long their lists are.
    for name in [cf::TXID, cf::SCRIPT] {
        let props = store
            .db()
            .property_value_cf(store.cf(name), "rocksdb.aggregated-table-properties")?
            .unwrap_or_default();
        let pick = |k: &str| {
            props.split(';').find_map(|kv| {
                let (a, b) = kv.split_once('=')?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
        };
        let fields = [
            "# entries",
            "raw key size",
            "raw value size",
            "data block size",
            "filter block size",
            "index block size",
        ];
        let shown: Vec<String> =
            fields.iter().map(|f| format!("{f}={}", pick(f).unwrap_or_default())).collect();
        println!("{name}: {}", shown.join(", "));
        let (mut hist, mut txnums, mut prefixes, mut long) = ([0u64; 6], 0u64, 0u64, 0u64);
        for kv in store.db().iterator_cf(store.cf(name), rocksdb::IteratorMode::Start) {
            let (k, v) = kv?;
            for entry in bucket::entries(&v, bucket::rest_len(&k)?) {
                let list = entry?.1;
                if list.is_empty() {
                    long += 1; // a marker: the list is in the long family
                    continue;
                }
                let n = TxnumList::decode(list)?.len();
                txnums += n as u64;
                prefixes += 1;
                hist[[1, 2, 3, 5, 10].iter().position(|&b| n <= b).unwrap_or(5)] += 1;
            }
        }
        println!(
            "{name}: {prefixes} prefixes, {txnums} txnums (and {long} long lists); prefixes with 1: {}, 2: {}, 3: {}, 4-5: {}, 6-10: {}, >10: {}",
            hist[0], hist[1], hist[2], hist[3], hist[4], hist[5]
        );
    }
    // The silent-payment family: blocks with eligible transactions, those transactions, their
    // taproot outputs, and bytes per transaction.
    let (mut blocks, mut txs, mut outputs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for kv in store.db().iterator_cf(store.cf(cf::TWEAK), rocksdb::IteratorMode::Start) {
        let (_, v) = kv?;
        let row = TweakRow::decode(&v)?;
        blocks += 1;
        txs += row.len() as u64;
        outputs += row.iter().map(|t| t.outputs.len() as u64).sum::<u64>();
        bytes += v.len() as u64;
    }
    let per = if txs > 0 { bytes as f64 / txs as f64 } else { 0.0 };
    println!(
        "tweak: start {:?}, {blocks} blocks, {txs} eligible txs, {outputs} taproot outputs, {per:.1} value bytes/tx",
        store.tweak_start()?.0
    );
    // Rows the tweak pass has not yet turned into `tweak` rows (none once an indexer run ends).
    let (mut blocks, mut txs, mut from) = (0u64, 0u64, None);
    for kv in store.db().iterator_cf(store.cf(cf::TWEAK_INPUTS), rocksdb::IteratorMode::Start) {
        let (k, v) = kv?;
        from = from.or(Some(u32::from_be_bytes(k.as_ref().try_into()?)));
        blocks += 1;
        txs += TweakInputsRow::decode(&v)?.len() as u64;
    }
    match from {
        Some(h) => println!(
            "tweakinputs: {blocks} blocks from height {h}, {txs} candidate txs: tweaks still to compute"
        ),
        None => println!("tweakinputs: none (every tweak computed)"),
    }
    if let Some(b) = blk_bytes {
        println!("index / blk bytes = {:.2} %", 100.0 * total as f64 / b as f64);
    }
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}
