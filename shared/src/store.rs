//! The RocksDB that holds the index: how it is opened (the indexer's primary, or the server's
//! secondary that follows it), its tuning, and the identity checks done at every open.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::bucket;
use crate::network::Net;
use crate::schema::{self, cf, meta, HeaderRow, Height, Pending};

#[derive(Clone, Debug)]
pub enum Mode {
    /// The indexer loading from blk files: SST ingestion, no automatic compactions.
    Bulk,
    /// The indexer following the tip: WAL on, automatic compactions on.
    Follow,
    /// A read-only follower of the indexer's DB (the server), with its own info-log directory.
    Secondary(PathBuf),
}

pub struct Store {
    db: DB,
    path: PathBuf,
    mode: Mode,
    /// `meta/bucket`, read once.
    bucket_width: std::sync::OnceLock<usize>,
}

/// Options of the bucket families (`script`, `txid`): the union merge operator, no Bloom filter
/// (bucket keys are dense: nearly every one exists, so a filter would only cost space), and no
/// compression: a bucket is random hash bytes and txnum deltas, and zstd-3 saved 0.2% on the
/// 1.1 GB bench chain for 8% of the bulk pass's CPU and a decompression on every read.
pub fn list_cf_options() -> Options {
    let mut o = Options::default();
    o.set_merge_operator_associative("blkindex.bucket_union.v2", merge_buckets);
    let mut t = BlockBasedOptions::default();
    // Values are hundreds of bytes (mainnet: about 2 KB), so a block holds a few dozen keys and
    // its size is what a cold lookup reads from disk; 16 KiB costs 0.1% more index than 64 KiB.
    t.set_block_size(16 << 10);
    t.set_cache_index_and_filter_blocks(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    o.set_block_based_table_factory(&t);
    o.set_compression_type(DBCompressionType::None);
    o.set_bottommost_compression_type(DBCompressionType::None);
    o.set_target_file_size_base(256 << 20);
    o
}

/// RocksDB's merge callback for buckets. Returning None marks corrupt data as a failed merge
/// (reads of that key then fail) instead of silently dropping txnums.
fn merge_buckets(key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let rest_len = bucket::rest_len(key).ok()?;
    bucket::merge(rest_len, existing.into_iter().chain(operands.iter())).ok()
}

/// Options of the `long` family: txnum lists merged by union, few keys (the hot scripts).
fn long_cf_options() -> Options {
    let mut o = Options::default();
    o.set_merge_operator_associative("blkindex.list_union.v1", merge_lists);
    o.set_compression_type(DBCompressionType::None);
    o.set_bottommost_compression_type(DBCompressionType::None);
    o
}

fn merge_lists(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    schema::TxnumList::merge(existing.into_iter().chain(operands.iter())).ok()
}

/// Options of the silent-payment families: no compression, for they are curve points, outpoints
/// and key prefixes, random bytes (zstd spent 6 % of a bulk pass's CPU on `tweakinputs` rows for
/// nothing).
fn random_bytes_cf_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    o.set_bottommost_compression_type(DBCompressionType::None);
    o
}

fn plain_cf_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    o
}

pub fn cf_options(name: &str) -> Options {
    match name {
        cf::SCRIPT | cf::TXID => list_cf_options(),
        cf::LONG => long_cf_options(),
        cf::TWEAK | cf::TWEAK_INPUTS => random_bytes_cf_options(),
        _ => plain_cf_options(),
    }
}

impl Store {
    pub fn open(path: &Path, mode: Mode) -> Result<Self> {
        let mut opts = Options::default();
        let cpus = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2);
        opts.increase_parallelism(cpus.max(2));
        opts.set_max_subcompactions(cpus.max(1) as u32);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(16 << 20);
        // No SstFileManager deletion throttling: a secondary cannot read truncated SSTs.
        let cfs = |bulk: bool| {
            cf::ALL.iter().map(move |name| {
                let mut o = cf_options(name);
                o.set_disable_auto_compactions(bulk);
                ColumnFamilyDescriptor::new(*name, o)
            })
        };
        let db = match &mode {
            Mode::Bulk | Mode::Follow => {
                opts.create_if_missing(true);
                opts.create_missing_column_families(true);
                opts.set_max_open_files(1024);
                // Families are flushed together so that a crash never leaves one ahead of another.
                opts.set_atomic_flush(true);
                let bulk = matches!(mode, Mode::Bulk);
                DB::open_cf_descriptors(&opts, path, cfs(bulk)).with_context(|| {
                    format!("cannot open index {} (is another indexer running?)", path.display())
                })?
            }
            Mode::Secondary(secondary) => {
                opts.set_max_open_files(-1);
                std::fs::create_dir_all(secondary)?;
                // Only the families the index has (see the check below), so that an older format's
                // index reaches its format refusal instead of failing to open.
                let present = DB::list_cf(&opts, path).unwrap_or_default();
                // An index being created has its families added one by one: without `meta` yet,
                // it is not one to read (and every read would look for it).
                if !present.is_empty() && !present.iter().any(|p| p == cf::META) {
                    bail!(
                        "{}: no `meta` column family: not a blkindex index, or one still being created",
                        path.display()
                    );
                }
                let cfs = cfs(false).filter(|d| present.is_empty() || present.iter().any(|p| p == d.name()));
                DB::open_cf_descriptors_as_secondary(&opts, path, secondary, cfs)
                    .with_context(|| format!("cannot open index {} as secondary", path.display()))?
            }
        };
        let store =
            Store { db, path: path.to_path_buf(), mode: mode.clone(), bucket_width: Default::default() };
        if let Mode::Secondary(_) = mode {
            // Opened with fewer families than this build has: an older format's index (refused by
            // its format stamp), or one of this format whose families are still being added.
            // Neither is one to read: every read assumes all the families.
            if let Some(missing) = cf::ALL.iter().find(|name| store.db.cf_handle(name).is_none()) {
                if let Some(v) = store.get_meta(meta::FORMAT)? {
                    store.check_format_version(&v)?;
                }
                bail!("{}: index still being created (no `{missing}` column family yet)", path.display());
            }
        }
        Ok(store)
    }

    /// Refuses an index stamped with another format than this build's.
    fn check_format_version(&self, stamp: &[u8]) -> Result<()> {
        let version = u32::from_be_bytes(stamp.try_into().unwrap_or([0xff; 4]));
        if version != schema::FORMAT_VERSION {
            bail!(
                "{}: index format {version}, this build reads format {}; delete it and re-index",
                self.path.display(),
                schema::FORMAT_VERSION
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family opened with the DB")
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf::META), key)?)
    }

    /// Writes meta values durably (WAL on, synced).
    pub fn put_meta(&self, items: &[(&[u8], Option<&[u8]>)]) -> Result<()> {
        let mut b = WriteBatch::default();
        for (k, v) in items {
            match v {
                Some(v) => b.put_cf(self.cf(cf::META), k, v),
                None => b.delete_cf(self.cf(cf::META), k),
            }
        }
        self.write_sync(b)
    }

    pub fn write_sync(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Stamps an empty DB with the format, network, genesis and bucket width (`width`, else the
    /// network's); refuses a DB made for anything else, or of another width than `width` asks.
    pub fn check_identity(&self, net: Net, writable: bool, width: Option<usize>) -> Result<()> {
        if let Some(w) = width {
            anyhow::ensure!(
                bucket::WIDTHS.contains(&w),
                "bucket width {w}: must be one of {:?}",
                bucket::WIDTHS
            );
        }
        let genesis = net.genesis_hash();
        if !writable {
            // A secondary opened while the indexer flushed can miss the WAL that held the stamp
            // (RocksDB deletes a WAL once it is flushed; seen when a server started as the tweak
            // pass ended): caught up, it reads the flushed files. An index that truly has none
            // is refused after about a second.
            for _ in 0..20 {
                if self.get_meta(meta::FORMAT)?.is_some() {
                    break;
                }
                self.catch_up()?;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        match self.get_meta(meta::FORMAT)? {
            None if writable => {
                let has_rows =
                    self.db.iterator_cf(self.cf(cf::HEADERS), rocksdb::IteratorMode::Start).next().is_some();
                if has_rows {
                    bail!(
                        "{}: index has rows but no format stamp; delete it and re-index",
                        self.path.display()
                    );
                }
                self.put_meta(&[
                    (meta::FORMAT, Some(&schema::FORMAT_VERSION.to_be_bytes())),
                    (meta::NETWORK, Some(net.name().as_bytes())),
                    (meta::GENESIS, Some(genesis.as_byte_array())),
                    (meta::BUCKET, Some(&[width.unwrap_or(schema::bucket_width(net)) as u8])),
                ])?;
            }
            None => bail!("{}: not a blkindex index (no format stamp)", self.path.display()),
            Some(v) => {
                self.check_format_version(&v)?;
                let stored_net = self.get_meta(meta::NETWORK)?.unwrap_or_default();
                if stored_net != net.name().as_bytes() {
                    bail!(
                        "{}: index was built for {}, not {net}",
                        self.path.display(),
                        String::from_utf8_lossy(&stored_net)
                    );
                }
                let stored_genesis = self.get_meta(meta::GENESIS)?.unwrap_or_default();
                if stored_genesis != genesis.as_byte_array() {
                    bail!(
                        "{}: index was built for a {net} chain with another genesis block",
                        self.path.display()
                    );
                }
                let stored = self.bucket_width()?;
                if width.is_some_and(|w| w != stored) {
                    bail!(
                        "{}: index was created with bucket width {stored}; a bucket width is chosen only \
                         when an index is created",
                        self.path.display()
                    );
                }
            }
        }
        Ok(())
    }

    pub fn tip(&self) -> Result<Option<(Height, BlockHash)>> {
        self.get_meta(meta::TIP)?.map(|v| Ok(schema::decode_tip(&v)?)).transpose()
    }

    pub fn pending(&self) -> Result<Option<Pending>> {
        self.get_meta(meta::PENDING)?.map(|v| Ok(Pending::decode(&v)?)).transpose()
    }

    pub fn staged(&self) -> Result<Option<schema::Staged>> {
        self.get_meta(meta::STAGED)?.map(|v| Ok(schema::Staged::decode(&v)?)).transpose()
    }

    pub fn header_row(&self, height: Height) -> Result<Option<HeaderRow>> {
        let v = self.db.get_cf(self.cf(cf::HEADERS), schema::height_key(height))?;
        v.map(|v| Ok(HeaderRow::decode(&v)?)).transpose()
    }

    /// All header rows up to and including `tip`, in height order.
    pub fn header_rows(&self, tip: Height) -> Result<Vec<HeaderRow>> {
        let mut rows = Vec::with_capacity(tip as usize + 1);
        let it = self.db.iterator_cf(self.cf(cf::HEADERS), rocksdb::IteratorMode::Start);
        for item in it {
            let (k, v) = item?;
            let h = u32::from_be_bytes(k.as_ref().try_into().context("bad header key")?);
            if h > tip {
                break;
            }
            if h as usize != rows.len() {
                bail!("header rows have a gap at height {}", rows.len());
            }
            rows.push(HeaderRow::decode(&v)?);
        }
        if rows.len() != tip as usize + 1 {
            bail!("header rows end at {} but the tip is {tip}", rows.len() as i64 - 1);
        }
        Ok(rows)
    }

    /// Stamps a new index with the length over which lists move to the `long` family (`bytes`,
    /// else the default); refuses another length for an index that has one.
    pub fn check_long_list_bytes(&self, bytes: Option<usize>) -> Result<()> {
        match (self.get_meta(meta::LONG_LIST)?, bytes) {
            (None, _) => {
                let n = bytes.unwrap_or(bucket::LONG_LIST_BYTES);
                anyhow::ensure!((1..=1 << 30).contains(&n), "long list length {n}: must be 1 to 2^30 bytes");
                self.put_meta(&[(meta::LONG_LIST, Some(&(n as u32).to_be_bytes()))])
            }
            (Some(_), Some(n)) if n != self.long_list_bytes()? => bail!(
                "{}: index was created with long lists over {} bytes; that length is chosen only when an \
                 index is created",
                self.path.display(),
                self.long_list_bytes()?
            ),
            _ => Ok(()),
        }
    }

    /// Stamps a new index with its silent-payment setting (`wanted`, else the network's default:
    /// on from taproot's activation on mainnet, from 0 elsewhere); refuses another setting for an
    /// index that has one. Returns the index's setting.
    pub fn check_tweak_start(
        &self,
        net: Net,
        wanted: Option<schema::TweakStart>,
    ) -> Result<schema::TweakStart> {
        let have = self.get_meta(meta::TWEAK_START)?.map(|v| schema::TweakStart::decode(&v)).transpose()?;
        match (have, wanted) {
            (None, _) => {
                let t = wanted.unwrap_or(schema::TweakStart::default_for(net));
                self.put_meta(&[(meta::TWEAK_START, Some(&t.encode()))])?;
                Ok(t)
            }
            (Some(have), Some(w)) if w != have => bail!(
                "{}: index was created with the silent-payment index {}; it is chosen only when an index \
                 is created",
                self.path.display(),
                match have.0 {
                    None => "off".to_string(),
                    Some(h) => format!("from height {h}"),
                }
            ),
            (Some(have), _) => Ok(have),
        }
    }

    /// The index's silent-payment setting (`meta/tweakstart`; an index without one has none).
    pub fn tweak_start(&self) -> Result<schema::TweakStart> {
        match self.get_meta(meta::TWEAK_START)? {
            Some(v) => Ok(schema::TweakStart::decode(&v)?),
            None => Ok(schema::TweakStart(None)),
        }
    }

    /// Lists longer than this many bytes are in the `long` family (`meta/longlist`).
    pub fn long_list_bytes(&self) -> Result<usize> {
        match self.get_meta(meta::LONG_LIST)?.as_deref() {
            Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d]) as usize),
            Some(_) => bail!("{}: bad long-list length in the index's meta", self.path.display()),
            None => Ok(bucket::LONG_LIST_BYTES),
        }
    }

    /// Bytes of a hash prefix in `txid` and `script` keys (`meta/bucket`, fixed when the index
    /// was created).
    pub fn bucket_width(&self) -> Result<usize> {
        if let Some(w) = self.bucket_width.get() {
            return Ok(*w);
        }
        let v = self.get_meta(meta::BUCKET)?.with_context(|| {
            format!(
                "{}: index has no bucket width (not stamped yet, or not a blkindex index)",
                self.path.display()
            )
        })?;
        let w = match v[..] {
            [w] if bucket::WIDTHS.contains(&(w as usize)) => w as usize,
            _ => bail!("{}: bad bucket width in the index's meta", self.path.display()),
        };
        Ok(*self.bucket_width.get_or_init(|| w))
    }

    /// The txnums stored for `prefix` in a bucket family (`script` or `txid`).
    pub fn txnums(&self, family: &str, prefix: &schema::Prefix) -> Result<Vec<schema::TxNum>> {
        Ok(self.txnums_at_most(family, prefix, usize::MAX)?.unwrap_or_default())
    }

    /// As [`Store::txnums`], but a list of more than `max` txnums is only counted (its length
    /// read from its bytes, nothing decoded or allocated): `Err(count)`. A hot script's list is
    /// megabytes.
    pub fn txnums_at_most(
        &self,
        family: &str,
        prefix: &schema::Prefix,
        max: usize,
    ) -> Result<std::result::Result<Vec<schema::TxNum>, usize>> {
        let (key, rest) = prefix.split_at(self.bucket_width()?);
        let Some(v) = self.db.get_pinned_cf(self.cf(family), key)? else {
            return Ok(Ok(Vec::new()));
        };
        let decode = |list: &[u8]| -> Result<std::result::Result<Vec<schema::TxNum>, usize>> {
            match schema::TxnumList::count(list) {
                n if n > max => Ok(Err(n)),
                _ => Ok(Ok(schema::TxnumList::decode(list)?)),
            }
        };
        match bucket::find(&v, rest)? {
            Some([]) => {
                let long = self.db.get_pinned_cf(self.cf(cf::LONG), schema::long_key(family, prefix))?;
                decode(&long.context("a bucket's marker has no list in the long family")?)
            }
            Some(list) => decode(list),
            None => Ok(Ok(Vec::new())),
        }
    }

    /// The prefixes of a bucket family whose lists are in the `long` family.
    pub fn long_prefixes(&self, family: &str) -> Result<std::collections::HashSet<schema::Prefix>> {
        let tag = [schema::long_tag(family)];
        let mut out = std::collections::HashSet::new();
        let it = self.db.prefix_iterator_cf(self.cf(cf::LONG), tag);
        for item in it {
            let (k, _) = item?;
            if k[0] != tag[0] {
                break;
            }
            out.insert(k[1..].try_into().context("bad key in the long family")?);
        }
        Ok(out)
    }

    /// Adds to `batch` what removes every txnum ≥ `from` from the buckets of these prefixes of a
    /// bucket family. Undoing blocks always removes a suffix of the chain, so this is exactly
    /// what they added.
    pub fn truncate_txnums(
        &self,
        family: &str,
        prefixes: &std::collections::BTreeSet<schema::Prefix>,
        from: schema::TxNum,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let handle = self.cf(family);
        let width = self.bucket_width()?;
        let keys: std::collections::BTreeSet<&[u8]> = prefixes.iter().map(|p| &p[..width]).collect();
        for key in keys {
            let Some(v) = self.db.get_pinned_cf(handle, key)? else {
                continue;
            };
            // Long lists of this bucket's touched prefixes: cut too; one left empty goes, with
            // its marker.
            let mut gone = Vec::new();
            for entry in bucket::entries(&v, schema::PREFIX_LEN - width) {
                let (rest, list) = entry?;
                let prefix = bucket::prefix(key, rest);
                if !list.is_empty() || !prefixes.contains(&prefix) {
                    continue;
                }
                let lk = schema::long_key(family, &prefix);
                let long = self
                    .db
                    .get_pinned_cf(self.cf(cf::LONG), lk)?
                    .context("a marker without its long list")?;
                let txnums = schema::TxnumList::decode(&long)?;
                match txnums.partition_point(|&n| n < from) {
                    0 => {
                        batch.delete_cf(self.cf(cf::LONG), lk);
                        gone.push(rest.to_vec());
                    }
                    k if k == txnums.len() => {}
                    k => batch.put_cf(self.cf(cf::LONG), lk, schema::TxnumList::encode(&txnums[..k])),
                }
            }
            let kept = bucket::truncate(&v, schema::PREFIX_LEN - width, from, |rest| {
                gone.iter().any(|g| g == rest)
            })?;
            if kept.len() == v.len() {
                continue;
            }
            match kept.is_empty() {
                true => batch.delete_cf(handle, key),
                false => batch.put_cf(handle, key, kept),
            }
        }
        Ok(())
    }

    /// Lets automatic compactions run again (after the bulk load).
    pub fn enable_auto_compactions(&self) -> Result<()> {
        for name in cf::ALL {
            self.db.set_options_cf(self.cf(name), &[("disable_auto_compactions", "false")])?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<_> = cf::ALL.iter().map(|n| self.cf(n)).collect();
        Ok(self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?)
    }

    pub fn catch_up(&self) -> Result<()> {
        Ok(self.db.try_catch_up_with_primary()?)
    }

    /// The same DB opened afresh. A secondary whose catch-up failed needs this: when the primary
    /// deletes an SST (after a compaction) that the secondary had not yet caught up to, catching
    /// up fails with "No such file"; a new instance starts from the primary's current files.
    pub fn reopen(&self) -> Result<Store> {
        Store::open(&self.path, self.mode.clone())
    }

    /// Live bytes of SST files per family, for reports.
    pub fn sst_bytes(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for name in cf::ALL {
            let v =
                self.db.property_int_value_cf(self.cf(name), "rocksdb.total-sst-files-size")?.unwrap_or(0);
            out.push((name, v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's secondary on an index lacking one of this build's families: an older format's
    /// gets its format refusal, one of this format (still being created) is not read yet; neither
    /// panics at its first read of the missing family.
    #[test]
    fn a_secondary_refuses_an_index_missing_a_family() {
        for (stamp, want) in [
            (schema::FORMAT_VERSION - 1, "delete it and re-index"),
            (schema::FORMAT_VERSION, "index still being created (no `tweak` column family yet)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("db");
            {
                let mut opts = Options::default();
                opts.create_if_missing(true);
                opts.create_missing_column_families(true);
                let some: Vec<&str> = cf::ALL.iter().copied().filter(|n| *n != cf::TWEAK).collect();
                let raw = DB::open_cf(&opts, &db, some).unwrap();
                raw.put_cf(raw.cf_handle(cf::META).unwrap(), meta::FORMAT, stamp.to_be_bytes()).unwrap();
            }
            let err = Store::open(&db, Mode::Secondary(dir.path().join("secondary"))).err().unwrap();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
    }
}
