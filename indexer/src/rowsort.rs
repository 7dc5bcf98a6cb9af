//! Sorting a batch's rows (prefix ‖ txnum) into key order, the bulk pass's one global step.
//!
//! A comparison sort of millions of 9-byte keys was a sixth of the bulk pass's CPU. The prefix
//! bytes are uniformly random, so a counting sort on the first two bytes spreads the rows over
//! 65,536 bins of about a hundred rows each (on mainnet-sized batches, a few thousand), which are
//! then sorted on their own, in cache, in parallel. Each worker histograms and scatters its own
//! contiguous share of the input, so the scatter is parallel too.

use rayon::prelude::*;

use blkindex_shared::schema::RowKey;

const BINS: usize = 1 << 16;

fn bin(row: &RowKey) -> usize {
    u16::from_be_bytes([row[0], row[1]]) as usize
}

/// A pointer the scatter workers share; each writes only the slots its offsets give it.
#[derive(Clone, Copy)]
struct Out(*mut RowKey);
// SAFETY: workers write disjoint slots (see `sort_dedup`), and the buffer outlives the scope.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// (A method, so that closures capture the whole `Out`, not its raw pointer field.)
    fn slot(&self, i: usize) -> *mut RowKey {
        // SAFETY: callers pass slots inside the buffer's capacity.
        unsafe { self.0.add(i) }
    }
}

/// Sorts the rows of all `pieces` (one per block) into key order and removes duplicates. The
/// pieces are scattered straight into the result: they are never concatenated first.
pub fn sort_dedup(pieces: Vec<Vec<RowKey>>) -> Vec<RowKey> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    if total < BINS {
        let mut rows = pieces.concat();
        rows.par_sort_unstable();
        rows.dedup();
        return rows;
    }
    // Each worker takes a run of consecutive pieces holding about an equal share of the rows.
    let workers = rayon::current_num_threads().max(1);
    let mut shares: Vec<&[Vec<RowKey>]> = Vec::with_capacity(workers);
    let (mut from, mut acc) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        acc += p.len();
        if acc * workers >= total * (shares.len() + 1) || i + 1 == pieces.len() {
            shares.push(&pieces[from..=i]);
            from = i + 1;
        }
    }
    let counts: Vec<Vec<u32>> = shares
        .par_iter()
        .map(|share| {
            let mut c = vec![0u32; BINS];
            for r in share.iter().flatten() {
                c[bin(r)] += 1;
            }
            c
        })
        .collect();
    // Where each share's rows of each bin go: bins in order, and within a bin the shares in order.
    let mut starts = vec![vec![0usize; BINS]; shares.len()];
    let mut bin_ends = Vec::with_capacity(BINS);
    let mut at = 0usize;
    for b in 0..BINS {
        for (s, c) in counts.iter().enumerate() {
            starts[s][b] = at;
            at += c[b] as usize;
        }
        bin_ends.push(at);
    }
    let mut out: Vec<RowKey> = Vec::with_capacity(total);
    let ptr = Out(out.as_mut_ptr());
    shares.par_iter().zip(starts.par_iter_mut()).for_each(|(share, next)| {
        for r in share.iter().flatten() {
            let slot = &mut next[bin(r)];
            // SAFETY: the slots of (share, bin) are [starts, starts + count), disjoint from every
            // other pair's and inside the buffer's capacity (the counts sum to `total`).
            unsafe { ptr.slot(*slot).write(*r) };
            *slot += 1;
        }
    });
    // SAFETY: every slot below `total` was written exactly once above.
    unsafe { out.set_len(total) };
    drop(pieces);
    let mut bins: Vec<&mut [RowKey]> = Vec::with_capacity(BINS);
    let mut rest = out.as_mut_slice();
    let mut from = 0;
    for end in bin_ends {
        let (this, tail) = rest.split_at_mut(end - from);
        bins.push(this);
        rest = tail;
        from = end;
    }
    // Within a bin the first two bytes are equal, so bytes 1..9 as one integer order the rows
    // (one comparison instead of a byte-wise memcmp).
    let key = |r: &RowKey| u64::from_be_bytes(r[1..9].try_into().unwrap());
    bins.par_iter_mut().with_min_len(256).for_each(|b| b.sort_unstable_by_key(key));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_plain_sort_with_duplicates_and_skewed_bins() {
        // Pseudo-random prefixes, many duplicates, and one crowded bin.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rows = Vec::new();
        for i in 0..300_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut r = [0u8; 9];
            r[..5].copy_from_slice(&x.to_be_bytes()[..5]);
            if i % 7 == 0 {
                r[..2].copy_from_slice(&[0xab, 0xcd]);
            }
            r[5..].copy_from_slice(&(i / 3).to_be_bytes());
            rows.push(r);
            if i % 5 == 0 {
                rows.push(r);
            }
        }
        let mut want = rows.clone();
        want.sort_unstable();
        want.dedup();
        // In pieces of uneven sizes, some empty, as blocks give them.
        let mut pieces = Vec::new();
        let mut rest = &rows[..];
        for n in (0..).map(|i| (i * 7919) % 5000) {
            let (a, b) = rest.split_at(n.min(rest.len()));
            pieces.push(a.to_vec());
            rest = b;
            if rest.is_empty() {
                break;
            }
        }
        assert_eq!(sort_dedup(pieces), want);
        assert_eq!(sort_dedup(vec![rows]), want);
        let small = vec![vec![[3u8; 9], [1; 9]], vec![], vec![[3; 9]]];
        assert_eq!(sort_dedup(small), vec![[1u8; 9], [3; 9]]);
        assert!(sort_dedup(Vec::new()).is_empty());
    }
}
