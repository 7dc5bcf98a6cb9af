//! The value under a `txid` or `script` key: a bucket of txnum lists.
//!
//! A key is the first `width` bytes (the DB's bucket width, `meta/bucket`) of a 5-byte hash
//! prefix. Its value holds every prefix that starts with those bytes, sorted by the rest of the
//! prefix, each once:
//!
//! ```text
//! entry = rest (PREFIX_LEN − width bytes) ‖ LEB128(byte length of the list) ‖ TxnumList
//! ```
//!
//! A list longer than [`LONG_LIST_BYTES`] (a hot script's: mainnet's busiest have millions of
//! transactions) lives in the `long` family under its whole prefix instead, and its entry here is
//! a marker, a list of length 0. Otherwise every lookup of the bucket's other prefixes would read
//! past it, and every merge into the bucket rewrite it.
//!
//! Why buckets: RocksDB spends about four bytes on every entry (key and value lengths, shared key
//! bytes, an 8-byte sequence/type trailer that compresses to about one) and a Bloom filter ten
//! bits more. With one entry per prefix that (with the filters) was a fifth of the index; with tens of prefixes per
//! key it is nothing, and a dense key space needs no filter (every key exists). A lookup reads one
//! bucket (tens of entries) and walks it; the length field lets it step over lists unread.

use std::collections::HashSet;

use crate::schema::{key_prefix, key_txnum, Prefix, RowKey, TxNum, TxnumList, PREFIX_LEN};
use crate::varint::{get_leb128, put_leb128, DecodeError, Reader};

/// Lists longer than this (bytes) move to the `long` family: a quarter of the 16 KiB block a
/// lookup reads (about 1,400 transactions spread over the chain). The default of an index's
/// `meta/longlist`, fixed when it is created.
pub const LONG_LIST_BYTES: usize = 4096;

/// Bucket widths a DB may have (bytes of the prefix in the key).
pub const WIDTHS: std::ops::RangeInclusive<usize> = 1..=PREFIX_LEN;

/// Bytes of the prefix after the key, for a key of this length.
pub fn rest_len(key: &[u8]) -> Result<usize, DecodeError> {
    match key.len() {
        n if WIDTHS.contains(&n) => Ok(PREFIX_LEN - n),
        _ => Err(DecodeError::Invalid { what: "bucket key of the wrong length", at: 0 }),
    }
}

/// The entries (rest of prefix, txnum list) of a bucket value, in order. An empty list is the
/// marker of a list kept in the `long` family.
pub struct Entries<'a> {
    r: Reader<'a>,
    rest_len: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.r.remaining() == 0 {
            return None;
        }
        let entry = (|| {
            let rest = self.r.take(self.rest_len)?;
            let len = get_leb128(&mut self.r)?;
            let len = usize::try_from(len).map_err(|_| DecodeError::BadInt(self.r.pos()))?;
            Ok((rest, self.r.take(len)?))
        })();
        if entry.is_err() {
            // Stop after the first error instead of reading garbage as entries.
            self.r = Reader::new(&[]);
        }
        Some(entry)
    }
}

pub fn entries(value: &[u8], rest_len: usize) -> Entries<'_> {
    Entries { r: Reader::new(value), rest_len }
}

/// The txnum list stored for `rest` in a bucket value, if any (empty: it is in the `long` family).
pub fn find<'a>(value: &'a [u8], rest: &[u8]) -> Result<Option<&'a [u8]>, DecodeError> {
    for entry in entries(value, rest.len()) {
        let (r, list) = entry?;
        match r.cmp(rest) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => return Ok(Some(list)),
            std::cmp::Ordering::Greater => break,
        }
    }
    Ok(None)
}

/// The whole 5-byte prefix of an entry: its bucket's key, then its rest.
pub fn prefix(key: &[u8], rest: &[u8]) -> Prefix {
    let mut p = [0u8; PREFIX_LEN];
    p[..key.len()].copy_from_slice(key);
    p[key.len()..].copy_from_slice(rest);
    p
}

/// Appends an entry (an empty `list`: a long list's marker).
pub fn put_entry(out: &mut Vec<u8>, rest: &[u8], list: &[u8]) {
    out.extend_from_slice(rest);
    put_leb128(out, list.len() as u64);
    out.extend_from_slice(list);
}

/// Which prefixes' lists a writer sends to the `long` family.
#[derive(Clone, Copy)]
pub enum Long<'a> {
    /// Lists over this many bytes (the index's `meta/longlist`), each with its marker: buckets
    /// written whole (plain values into an empty index).
    Promote(usize),
    /// The prefixes already long (their markers are in place): merge operands onto an index.
    /// Such an operand never turns an inline list long, as it cannot move what is stored.
    Known(&'a HashSet<Prefix>),
}

/// Calls `bucket(key, value)` for each bucket of sorted, deduplicated rows (prefix ‖ txnum), and
/// `long(prefix, list)` for each list that `long` sends to the `long` family (in prefix order),
/// reusing two buffers: the bulk writer's hot loop. A bucket left with no entries is not given.
pub fn for_each_bucket<E>(
    rows: &[RowKey],
    width: usize,
    long: Long,
    mut bucket: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    mut long_list: impl FnMut(&Prefix, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let (mut value, mut list) = (Vec::new(), Vec::new());
    for rows in rows.chunk_by(|a, b| a[..width] == b[..width]) {
        value.clear();
        for group in rows.chunk_by(|a, b| a[..PREFIX_LEN] == b[..PREFIX_LEN]) {
            list.clear();
            TxnumList::encode_into(&mut list, group.iter().map(|r| key_txnum(r)));
            let rest = &group[0][width..PREFIX_LEN];
            match long {
                Long::Promote(threshold) if list.len() > threshold => {
                    long_list(&key_prefix(&group[0]), &list)?;
                    put_entry(&mut value, rest, &[]);
                }
                Long::Known(set) if set.contains(&key_prefix(&group[0])) => {
                    long_list(&key_prefix(&group[0]), &list)?
                }
                _ => put_entry(&mut value, rest, &list),
            }
        }
        if !value.is_empty() {
            bucket(&rows[0][..width], &value)?;
        }
    }
    Ok(())
}

/// Merge operands of sorted, deduplicated rows onto an index whose long lists are `known`: one
/// (key, value) per bucket, and one (prefix, list) per known long prefix.
pub type Grouped = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(Prefix, Vec<u8>)>);

pub fn group(rows: &[RowKey], width: usize, known: &HashSet<Prefix>) -> Grouped {
    let (mut buckets, mut long) = (Vec::new(), Vec::new());
    for_each_bucket::<std::convert::Infallible>(
        rows,
        width,
        Long::Known(known),
        |k, v| {
            buckets.push((k.to_vec(), v.to_vec()));
            Ok(())
        },
        |p, l| {
            long.push((*p, l.to_vec()));
            Ok(())
        },
    )
    .unwrap_or_else(|never| match never {});
    (buckets, long)
}

/// The union of several bucket values (RocksDB's merge: the stored value, then the operands in
/// order): entries of the same prefix have their lists merged by [`TxnumList::merge`].
pub fn merge<'a>(
    rest_len: usize,
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, DecodeError> {
    let values: Vec<&[u8]> = values.into_iter().filter(|v| !v.is_empty()).collect();
    if let [one] = values[..] {
        return Ok(one.to_vec());
    }
    let mut all: Vec<(&[u8], &[u8])> = Vec::new();
    for v in &values {
        for entry in entries(v, rest_len) {
            all.push(entry?);
        }
    }
    // Stable: lists of one prefix stay in operand order, which is usually txnum order.
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(values.iter().map(|v| v.len()).sum());
    for same in all.chunk_by(|a, b| a.0 == b.0) {
        match same {
            [(rest, list)] => put_entry(&mut out, rest, list),
            // Markers of a long list: one stays. A marker beside an inline list of the same
            // prefix is not something any writer makes.
            _ if same.iter().all(|e| e.1.is_empty()) => put_entry(&mut out, same[0].0, &[]),
            _ if same.iter().any(|e| e.1.is_empty()) => {
                return Err(DecodeError::Invalid { what: "a prefix both long and inline in a bucket", at: 0 })
            }
            _ => put_entry(&mut out, same[0].0, &TxnumList::merge(same.iter().map(|e| e.1))?),
        }
    }
    Ok(out)
}

/// A bucket value without the txnums ≥ `from` (undoing blocks removes a suffix of the chain);
/// entries left empty go. Markers of long lists stay unless `gone(rest)` (the caller truncates the
/// long lists). An empty result means the key should be deleted.
pub fn truncate(
    value: &[u8],
    rest_len: usize,
    from: TxNum,
    gone: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(value.len());
    for entry in entries(value, rest_len) {
        let (rest, list) = entry?;
        if list.is_empty() {
            if !gone(rest) {
                put_entry(&mut out, rest, &[]);
            }
            continue;
        }
        let txnums = TxnumList::decode(list)?;
        let keep = txnums.partition_point(|&n| n < from);
        match keep {
            0 => {}
            k if k == txnums.len() => put_entry(&mut out, rest, list),
            k => put_entry(&mut out, rest, &TxnumList::encode(&txnums[..k])),
        }
    }
    Ok(out)
}

/// A script with more index rows than a caller allows: refused before any of its transactions
/// is read. Rows are candidates (5-byte prefixes), so the count can exceed the true history by
/// the rare prefix collision, never fall short of it.
#[derive(Debug, thiserror::Error)]
#[error("the script has {rows} index rows, more than the limit of {max}")]
pub struct TooManyRows {
    pub rows: usize,
    pub max: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::row_key;

    fn rows(items: &[([u8; 5], TxNum)]) -> Vec<RowKey> {
        let mut v: Vec<RowKey> = items.iter().map(|(p, n)| row_key(*p, *n)).collect();
        v.sort_unstable();
        v
    }

    fn plain(rows: &[RowKey], width: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        group(rows, width, &HashSet::new()).0
    }

    fn decoded(value: &[u8], rest_len: usize) -> Vec<(Vec<u8>, Vec<TxNum>)> {
        entries(value, rest_len)
            .map(|e| {
                let (r, l) = e.unwrap();
                (r.to_vec(), TxnumList::decode(l).unwrap())
            })
            .collect()
    }

    #[test]
    fn rows_group_into_buckets_and_are_found() {
        let rs =
            rows(&[([1, 2, 3, 4, 5], 7), ([1, 2, 3, 4, 5], 9), ([1, 2, 9, 9, 9], 3), ([1, 3, 0, 0, 0], 4)]);
        let buckets = plain(&rs, 2);
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].0, vec![1, 2]);
        assert_eq!(decoded(&buckets[0].1, 3), vec![(vec![3, 4, 5], vec![7, 9]), (vec![9, 9, 9], vec![3])]);
        let list = find(&buckets[0].1, &[3, 4, 5]).unwrap().unwrap();
        assert_eq!(TxnumList::decode(list).unwrap(), vec![7, 9]);
        assert_eq!(find(&buckets[0].1, &[3, 4, 6]).unwrap(), None);
        assert_eq!(find(&buckets[0].1, &[0, 0, 0]).unwrap(), None);
        assert_eq!(
            find(&buckets[1].1, &[0, 0, 0]).unwrap().map(|l| TxnumList::decode(l).unwrap()),
            Some(vec![4])
        );
        // Width 5: the key is the whole prefix, entries have an empty rest.
        let whole = plain(&rs, 5);
        assert_eq!(whole.len(), 3);
        assert_eq!(decoded(&whole[0].1, 0), vec![(vec![], vec![7, 9])]);
    }

    #[test]
    fn merge_unions_entries_and_lists() {
        let a = plain(&rows(&[([0, 0, 1, 1, 1], 1), ([0, 0, 5, 5, 5], 2)]), 2).remove(0).1;
        let b = plain(&rows(&[([0, 0, 3, 3, 3], 10), ([0, 0, 5, 5, 5], 11)]), 2).remove(0).1;
        let m = merge(3, [&a[..], &b[..]]).unwrap();
        assert_eq!(
            decoded(&m, 3),
            vec![(vec![1, 1, 1], vec![1]), (vec![3, 3, 3], vec![10]), (vec![5, 5, 5], vec![2, 11])]
        );
        // Any order, and an operand seen twice (a batch ingested again), give the same union.
        assert_eq!(merge(3, [&b[..], &a[..], &b[..]]).unwrap(), m);
        assert_eq!(merge(3, [&a[..]]).unwrap(), a);
        assert!(merge(3, [&a[..], &[1, 2][..]]).is_err());
    }

    #[test]
    fn truncate_drops_a_chain_suffix() {
        let v =
            plain(&rows(&[([0, 0, 1, 1, 1], 1), ([0, 0, 1, 1, 1], 8), ([0, 0, 2, 2, 2], 9)]), 2).remove(0).1;
        assert_eq!(decoded(&truncate(&v, 3, 8, |_| false).unwrap(), 3), vec![(vec![1, 1, 1], vec![1])]);
        assert_eq!(truncate(&v, 3, 10, |_| false).unwrap(), v);
        assert!(truncate(&v, 3, 0, |_| false).unwrap().is_empty());
    }

    #[test]
    fn long_lists_leave_markers_that_merge_and_truncate() {
        // 5,000 transactions of one prefix (1-byte deltas: over LONG_LIST_BYTES) beside a small one.
        let mut items: Vec<([u8; 5], TxNum)> = (0..5000).map(|n| ([0, 0, 9, 9, 9], n)).collect();
        items.push(([0, 0, 1, 1, 1], 5));
        let rs = rows(&items);
        let (mut buckets, mut longs) = (Vec::new(), Vec::new());
        for_each_bucket::<()>(
            &rs,
            2,
            Long::Promote(LONG_LIST_BYTES),
            |k, v| {
                buckets.push((k.to_vec(), v.to_vec()));
                Ok(())
            },
            |p, l| {
                longs.push((*p, l.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(longs.len(), 1);
        assert_eq!(longs[0].0, [0, 0, 9, 9, 9]);
        assert_eq!(TxnumList::decode(&longs[0].1).unwrap(), (0..5000).collect::<Vec<_>>());
        let value = &buckets[0].1;
        assert_eq!(find(value, &[9, 9, 9]).unwrap(), Some(&[][..]), "a marker");
        assert_eq!(TxnumList::decode(find(value, &[1, 1, 1]).unwrap().unwrap()).unwrap(), vec![5]);
        assert!(value.len() < 16, "the neighbour's bucket stays small: {} bytes", value.len());
        // Operands onto that index: the known long prefix goes to `long`, no marker is repeated.
        let known = HashSet::from([[0, 0, 9, 9, 9]]);
        let (more, more_long) = group(&rows(&[([0, 0, 9, 9, 9], 6000), ([0, 0, 2, 2, 2], 6000)]), 2, &known);
        assert_eq!(more_long, vec![([0, 0, 9, 9, 9], TxnumList::encode(&[6000]))]);
        let merged = merge(3, [&value[..], &more[0].1[..]]).unwrap();
        assert_eq!(find(&merged, &[9, 9, 9]).unwrap(), Some(&[][..]));
        assert_eq!(merge(3, [&merged[..], &merged[..]]).unwrap(), merged, "markers merge into one");
        // A marker and an inline list of one prefix are corrupt.
        let inline = plain(&rows(&[([0, 0, 9, 9, 9], 1)]), 2).remove(0).1;
        assert!(merge(3, [&merged[..], &inline[..]]).is_err());
        // Truncation keeps a marker unless its long list went.
        assert_eq!(find(&truncate(&merged, 3, 6000, |_| false).unwrap(), &[9, 9, 9]).unwrap(), Some(&[][..]));
        assert_eq!(find(&truncate(&merged, 3, 6000, |r| r == [9, 9, 9]).unwrap(), &[9, 9, 9]).unwrap(), None);
    }

    #[test]
    fn corrupt_buckets_are_errors() {
        let v = plain(&rows(&[([0, 0, 1, 1, 1], 1)]), 2).remove(0).1;
        assert!(find(&v[..v.len() - 1], &[2, 2, 2]).is_err());
        assert_eq!(entries(&[1, 1, 1, 0], 3).next().unwrap().unwrap(), (&[1, 1, 1][..], &[][..]), "a marker");
        assert!(entries(&[1, 1], 3).next().unwrap().is_err(), "short rest");
        assert!(rest_len(&[0; 6]).is_err() && rest_len(&[]).is_err());
        assert_eq!(rest_len(&[0; 2]).unwrap(), 3);
    }
}
