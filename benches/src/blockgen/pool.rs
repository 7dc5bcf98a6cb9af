//! The spendable outputs: a bounded pool, oldest first, from which inputs are drawn with a bias
//! to recent outputs (most spends on mainnet are of young coins). Past its capacity the oldest
//! small outputs leave the pool and stay unspent for ever (mainnet's ~180 million UTXOs are
//! mostly such), so memory stays bounded whatever the chain's length. Coinbase outputs join only
//! once mature (100 blocks).

use std::collections::VecDeque;

use super::script::ScriptId;

/// Blocks before a coinbase output can be spent.
pub const COINBASE_MATURITY: u32 = 100;

/// An unspent output: one cache line (a pick from the pool is a random read).
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub struct Utxo {
    pub txid: [u8; 32],
    pub value: u64,
    pub script: ScriptId,
    pub vout: u32,
    pub height: u32,
    pub coinbase: bool,
}

const DEAD: u32 = u32::MAX;

pub struct Pool {
    /// Oldest first; a spent entry has `vout == DEAD` until the next compaction.
    entries: Vec<Utxo>,
    live: usize,
    cap: usize,
    maturing: VecDeque<Utxo>,
    /// Entries taken since `begin_trial`, to be put back.
    trial: Option<Vec<(usize, Utxo)>>,
    /// Outputs dropped for good (never to be spent).
    pub abandoned: u64,
}

impl Pool {
    pub fn new(cap: usize) -> Self {
        Pool { entries: Vec::new(), live: 0, cap, maturing: VecDeque::new(), trial: None, abandoned: 0 }
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn push(&mut self, utxo: Utxo) {
        debug_assert!(self.trial.is_none());
        if utxo.coinbase {
            self.maturing.push_back(utxo);
        } else {
            self.entries.push(utxo);
            self.live += 1;
        }
    }

    /// Before planning block `height`: coinbases old enough join; spent entries are dropped and,
    /// over capacity, the oldest small outputs (else the oldest) leave for good.
    pub fn start_block(&mut self, height: u32) {
        while self.maturing.front().is_some_and(|u| u.height + COINBASE_MATURITY <= height) {
            let u = self.maturing.pop_front().unwrap();
            self.entries.push(u);
            self.live += 1;
        }
        let dead = self.entries.len() - self.live;
        if dead > self.entries.len() / 3 || self.live > self.cap {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.entries.retain(|u| u.vout != DEAD);
        if self.live <= self.cap {
            return;
        }
        // Down to nine tenths, so this runs once per tenth of the capacity.
        let mut excess = self.live - self.cap * 9 / 10;
        let n = self.entries.len();
        let mean = self.entries.iter().map(|u| u.value as f64).sum::<f64>() / n as f64;
        let small = (mean / 4.0) as u64;
        // The oldest half's small outputs first, then the oldest.
        for u in &mut self.entries[..n / 2] {
            if excess == 0 {
                break;
            }
            if u.value < small {
                u.vout = DEAD;
                excess -= 1;
            }
        }
        for u in &mut self.entries {
            if excess == 0 {
                break;
            }
            if u.vout != DEAD {
                u.vout = DEAD;
                excess -= 1;
            }
        }
        let before = self.entries.len();
        self.entries.retain(|u| u.vout != DEAD);
        self.abandoned += (before - self.entries.len()) as u64;
        self.live = self.entries.len();
    }

    /// Takes an output to spend: the age (from the newest) is the pool's length times u⁴, so half
    /// of the picks are among its youngest 6%.
    pub fn take(&mut self, rng: &mut fastrand::Rng) -> Option<Utxo> {
        if self.live == 0 {
            return None;
        }
        let n = self.entries.len();
        for _ in 0..32 {
            let u = rng.f64();
            let age = ((n as f64) * u * u * u * u) as usize;
            let i = n - 1 - age.min(n - 1);
            if self.entries[i].vout != DEAD {
                return Some(self.take_at(i));
            }
        }
        let start = rng.usize(..n);
        let i = (start..n).chain(0..start).find(|&i| self.entries[i].vout != DEAD)?;
        Some(self.take_at(i))
    }

    fn take_at(&mut self, i: usize) -> Utxo {
        let u = self.entries[i];
        self.entries[i].vout = DEAD;
        self.live -= 1;
        if let Some(t) = &mut self.trial {
            t.push((i, u));
        }
        u
    }

    /// From here to `end_trial`, what is taken is put back after (a stale branch spends outputs
    /// that the best chain spends again).
    pub fn begin_trial(&mut self) {
        self.trial = Some(Vec::new());
    }

    pub fn end_trial(&mut self) {
        for (i, u) in self.trial.take().expect("a trial began").into_iter().rev() {
            self.entries[i] = u;
            self.live += 1;
        }
    }

    /// Outputs still unspent: in the pool, maturing, and dropped.
    pub fn unspent(&self) -> u64 {
        (self.live + self.maturing.len()) as u64 + self.abandoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockgen::script::Kind;

    fn utxo(n: u64, value: u64, height: u32, coinbase: bool) -> Utxo {
        let mut txid = [0u8; 32];
        txid[..8].copy_from_slice(&n.to_le_bytes());
        Utxo { txid, value, script: ScriptId::new(Kind::P2wpkh, 0, n), vout: 0, height, coinbase }
    }

    #[test]
    fn each_output_is_taken_once_coinbases_after_maturity() {
        let mut pool = Pool::new(1000);
        let mut rng = fastrand::Rng::with_seed(1);
        pool.push(utxo(0, 50, 1, true));
        for n in 1..=500 {
            pool.push(utxo(n, 1000, 1, false));
        }
        pool.start_block(100);
        let mut seen = std::collections::HashSet::new();
        while let Some(u) = pool.take(&mut rng) {
            assert!(seen.insert(u.txid), "taken twice");
            assert!(!u.coinbase);
        }
        assert_eq!(seen.len(), 500);
        pool.start_block(101);
        assert!(pool.take(&mut rng).unwrap().coinbase);
        assert!(pool.take(&mut rng).is_none());
    }

    #[test]
    fn a_trial_puts_back_what_it_took() {
        let mut pool = Pool::new(1000);
        let mut rng = fastrand::Rng::with_seed(2);
        for n in 0..100 {
            pool.push(utxo(n, 1000, 1, false));
        }
        pool.start_block(2);
        let kept = pool.take(&mut rng).unwrap();
        pool.begin_trial();
        for _ in 0..60 {
            pool.take(&mut rng).unwrap();
        }
        pool.end_trial();
        assert_eq!(pool.live(), 99);
        let mut left = std::collections::HashSet::new();
        while let Some(u) = pool.take(&mut rng) {
            left.insert(u.txid);
        }
        assert_eq!(left.len(), 99);
        assert!(!left.contains(&kept.txid));
    }

    #[test]
    fn over_capacity_small_old_outputs_leave_first() {
        let mut pool = Pool::new(100);
        for n in 0..200 {
            // Every other old output is small.
            let value = if n < 100 && n % 2 == 0 { 10 } else { 100_000 };
            pool.push(utxo(n, value, 1, false));
        }
        pool.start_block(2);
        assert_eq!(pool.live(), 90);
        assert_eq!(pool.abandoned, 110);
        assert_eq!(pool.unspent(), 200);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut values = Vec::new();
        while let Some(u) = pool.take(&mut rng) {
            values.push(u.value);
        }
        assert!(values.iter().all(|&v| v == 100_000), "small outputs kept: {values:?}");
    }
}
