//! Rows, bytes on disk and bytes per row of each column family of an index, for reports.
//! Usage: index-stats DB_DIR [BLK_BYTES]

use anyhow::Result;
use blkindex_shared::schema::cf;
use blkindex_shared::store::{Mode, Store};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let db = std::path::Path::new(&args[1]);
    let blk_bytes: Option<u64> = args.get(2).map(|s| s.parse()).transpose()?;
    let tmp = std::env::temp_dir().join(format!("index-stats-{}", std::process::id()));
    let store = Store::open(db, Mode::Secondary(tmp.clone()))?;
    let sizes = store.sst_bytes()?;
    let mut total = 0;
    println!("{:<10} {:>12} {:>14} {:>10}", "family", "rows", "sst bytes", "bytes/row");
    for name in cf::ALL {
        let rows = store.db().iterator_cf(store.cf(name), rocksdb::IteratorMode::Start).count() as u64;
        let bytes = sizes.iter().find(|(n, _)| *n == name).map_or(0, |(_, b)| *b);
        total += bytes;
        let per = if rows > 0 { bytes as f64 / rows as f64 } else { 0.0 };
        println!("{name:<10} {rows:>12} {bytes:>14} {per:>10.2}");
    }
    println!("{:<10} {:>12} {total:>14}", "total", "");
    if let Some(b) = blk_bytes {
        println!("index / blk bytes = {:.2} %", 100.0 * total as f64 / b as f64);
    }
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}
