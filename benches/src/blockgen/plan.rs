//! The sequential part: which outputs each transaction spends and what it pays, block by block.
//! A plan names scripts by id and previous outputs by txid (or, for a parent earlier in the same
//! block, by its position); `build` turns it into bytes in parallel.

use std::collections::HashMap;
use std::ops::Range;

use super::pool::{Pool, Utxo};
use super::script::{mix, spend_size, stream, Kind, ScriptId, Stream, SH_MULTISIG, THREE_KEYS, UNCOMPRESSED};
use super::shape::{self, Era, Hot};

/// Outputs below this are not made (Core's dust limit for P2PKH).
const DUST: u64 = 546;
/// A transaction can spend an output of one earlier in its block, to this depth; each depth is
/// one round of parallel building.
const MAX_WAVE: u8 = 3;
/// Share of outputs paying a script paid before (besides the hot head and change sent back).
const REUSE: f64 = 0.40;
/// Share of transactions that send their change back to their first input's script.
const CHANGE_BACK: f64 = 0.12;
/// Popular scripts of the long tail (a slot is paid with weight 1/rank) and recently made ones.
const POPULAR: usize = 20_000;
const RECENT: usize = 1 << 18;
/// Mining pools of each generation, paid by coinbases (Zipf among them).
const MINERS: usize = 12;
const MINER_ERAS: [f64; 4] = [130_000.0, 330_000.0, 550_000.0, 780_000.0];
/// Script indexes below this are reserved (hot head, miners); fresh ones count up from here.
pub const RESERVED: u64 = 1_000;
/// Stale branches pay scripts of their own, from this index up.
const STALE_INDEX: u64 = 1 << 55;
/// One in this many ordinary scripts is tracked for the report's sample.
const SAMPLE_ONE_IN: u64 = 1024;
/// A block is at most this many bytes (Core's limit is 4,000,000 bytes with witness).
pub const MAX_BLOCK: f64 = 3_950_000.0;

/// A previous output: by txid, or by position in this block (known once its wave is built).
#[derive(Clone, Copy, Debug)]
pub enum Prev {
    Out { txid: [u8; 32], vout: u32 },
    Local { tx: u32, vout: u32 },
}

/// One input: what it spends, as the undo record stores it.
#[derive(Clone, Copy, Debug)]
pub struct Spend {
    pub prev: Prev,
    pub value: u64,
    pub script: ScriptId,
    pub height: u32,
    pub coinbase: bool,
    /// Content bytes of an inscription in a P2TR script-path spend (0: key path, or not P2TR).
    pub inscription: u32,
}

#[derive(Clone, Copy, Debug)]
pub enum OutScript {
    Pay(ScriptId),
    /// OP_RETURN with this many data bytes.
    Data(u8),
    /// The coinbase's segwit commitment (BIP-0141).
    WitnessCommitment,
}

#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub value: u64,
    pub script: OutScript,
}

#[derive(Clone, Debug)]
pub struct TxPlan {
    pub inputs: Range<usize>,
    pub outputs: Range<usize>,
    /// 0: spends only earlier blocks; n: spends an output of a wave n-1 transaction of its block.
    pub wave: u8,
    pub version: i32,
    pub lock_time: u32,
    pub rbf: bool,
    /// Seeds the bytes nothing checks (signatures, keys in spends, OP_RETURN data).
    pub seed: u64,
}

pub struct BlockPlan {
    pub height: u32,
    pub stale: bool,
    pub segwit: bool,
    pub version: i32,
    pub time: u32,
    pub coinbase: Vec<Out>,
    /// The coinbase's extra nonce.
    pub tag: u64,
    pub txs: Vec<TxPlan>,
    pub spends: Vec<Spend>,
    pub outs: Vec<Out>,
    pub waves: u8,
    /// (tx, vout) of the outputs left unspent in the block, for the pool once txids are known.
    pub unspent: Vec<(u32, u32)>,
}

/// What a tracked script went through on the best chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub txs: u64,
    pub funded: u64,
    pub spent: u64,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub txs: u64,
    pub inputs: u64,
    pub outputs: u64,
    pub op_returns: u64,
    /// Outputs paying each kind of script (`Kind::ALL`'s order).
    pub by_kind: [u64; 8],
    /// Outputs paying a script no output paid before.
    pub fresh: u64,
    /// Inputs spending a P2TR output with an inscription.
    pub inscriptions: u64,
    /// The highest index of a script paid so far.
    last_paid: u64,
}

impl Totals {
    /// Counts outputs by kind, and those paying a script for the first time (fresh scripts are
    /// numbered in the order they are first paid; the reserved ones, a hundred, are not told).
    fn count_outputs(&mut self, outs: &[Out]) {
        for o in outs {
            if let OutScript::Pay(id) = o.script {
                self.by_kind[id.kind() as usize] += 1;
                if id.index() > self.last_paid.max(RESERVED) {
                    self.last_paid = id.index();
                    self.fresh += 1;
                }
            }
        }
    }
}

/// An output of this block not yet spent in it.
#[derive(Clone, Copy)]
struct Local {
    tx: u32,
    vout: u32,
    value: u64,
    script: ScriptId,
    wave: u8,
}

pub struct Planner {
    rng: fastrand::Rng,
    salt: u64,
    pub pool: Pool,
    next_index: u64,
    stale_index: u64,
    recent: Vec<ScriptId>,
    recent_next: usize,
    popular: Vec<Option<ScriptId>>,
    /// The hot head: its scripts and their chance per output once started, by start.
    hot: Vec<(f64, f64, ScriptId)>,
    miners: Vec<Vec<ScriptId>>,
    pub tracked: HashMap<ScriptId, Stats>,
    pub totals: Totals,
    touched: Vec<ScriptId>,
}

/// Rounds down to two significant digits, more often than not.
fn round(rng: &mut fastrand::Rng, v: f64) -> u64 {
    let v = v as u64;
    if v >= 100 && rng.u8(..10) < 6 {
        v - v % 10u64.pow((v as f64).log10() as u32 - 1)
    } else {
        v
    }
}

/// Regtest's block subsidy: 50 BTC halving every 150 blocks.
pub fn subsidy(height: u32) -> u64 {
    let halvings = height / 150;
    if halvings >= 64 {
        0
    } else {
        5_000_000_000 >> halvings
    }
}

impl Planner {
    pub fn new(seed: u64, pool_cap: usize) -> Self {
        let rng = fastrand::Rng::with_seed(stream(seed, Stream::Planner));
        let mut index = 0;
        // P2SH scripts of the hot head and of miners are multisig: they are paid before segwit.
        let mut reserve = |kind: Kind| {
            index += 1;
            ScriptId::new(kind, if kind == Kind::P2sh { SH_MULTISIG } else { 0 }, index)
        };
        // Shares of transactions as chances per output: measured, a chain has about 3.85
        // outputs for each transaction touching a script it pays (2.9 outputs per transaction,
        // and 1.3 transactions per output: the one paying it, and most often one spending it).
        let hot: Vec<(f64, f64, ScriptId)> = shape::hot_head()
            .into_iter()
            .map(|Hot { kind, start, share }| {
                (start, share / (3.85 * shape::share_after(start)), reserve(kind))
            })
            .collect();
        let miners = (0..MINER_ERAS.len())
            .map(|generation| {
                (0..MINERS)
                    .map(|i| {
                        let kind = match (generation, i % 3) {
                            (0, _) | (1, 1..) | (2, 0) => Kind::P2pkh,
                            (1, 0) | (2, 1) | (3.., 1) => Kind::P2sh,
                            (3.., 0) => Kind::P2tr,
                            _ => Kind::P2wpkh,
                        };
                        reserve(kind)
                    })
                    .collect()
            })
            .collect();
        assert!(index < RESERVED);
        Planner {
            rng,
            salt: stream(seed, Stream::Sample),
            pool: Pool::new(pool_cap),
            next_index: RESERVED,
            stale_index: STALE_INDEX,
            recent: Vec::new(),
            recent_next: 0,
            popular: vec![None; POPULAR],
            hot,
            miners,
            tracked: HashMap::new(),
            totals: Totals::default(),
            touched: Vec::new(),
        }
    }

    /// The scripts of the hot head, in order.
    pub fn hot_scripts(&self) -> Vec<ScriptId> {
        self.hot.iter().map(|h| h.2).collect()
    }

    fn tracks(&self, id: ScriptId) -> bool {
        id.index() < RESERVED || mix(id.0 ^ self.salt).is_multiple_of(SAMPLE_ONE_IN)
    }

    fn fresh(&mut self, era: &Era, stale: bool) -> ScriptId {
        let kind = era.kind(self.rng.f64());
        self.fresh_of(kind, era, stale)
    }

    fn fresh_of(&mut self, kind: Kind, era: &Era, stale: bool) -> ScriptId {
        let flags = match kind {
            Kind::P2pkh if self.rng.f64() < era.uncompressed => UNCOMPRESSED,
            Kind::P2sh if self.rng.f64() < era.sh_multisig => SH_MULTISIG,
            Kind::Multisig if self.rng.u8(..10) < 7 => THREE_KEYS,
            _ => 0,
        };
        if stale {
            self.stale_index += 1;
            return ScriptId::new(kind, flags, self.stale_index);
        }
        self.next_index += 1;
        let id = ScriptId::new(kind, flags, self.next_index);
        if self.recent.len() < RECENT {
            self.recent.push(id);
        } else {
            self.recent[self.recent_next] = id;
        }
        self.recent_next = (self.recent_next + 1) % RECENT;
        // Popular scripts come and go: one fresh script in 200 takes a slot.
        if self.rng.u8(..200) == 0 {
            let slot = self.rng.usize(..POPULAR);
            self.popular[slot] = Some(id);
        }
        id
    }

    /// A script paid before: a popular one (Zipf over the slots), else a recent one.
    fn reused(&mut self, era: &Era) -> ScriptId {
        if self.rng.bool() {
            let rank = ((POPULAR as f64 + 1.0).ln() * self.rng.f64()).exp() as usize - 1;
            if let Some(id) = self.popular[rank.min(POPULAR - 1)] {
                return id;
            }
        }
        let n = self.recent.len();
        if n == 0 {
            return self.fresh(era, false);
        }
        let u = self.rng.f64();
        let age = ((n as f64) * u * u * u) as usize;
        self.recent[(self.recent_next + n - 1 - age.min(n - 1)) % n]
    }

    /// Whom an output pays. A stale block pays the hot head as the best chain does (so a count
    /// that took in a stale block would be off), and otherwise scripts of its own.
    fn payee(&mut self, era: &Era, stale: bool) -> ScriptId {
        let mut u = self.rng.f64();
        for &(start, p, id) in &self.hot {
            if era.m >= start {
                if u < p {
                    return id;
                }
                u -= p;
            }
        }
        if stale {
            self.fresh(era, true)
        } else if u < REUSE {
            self.reused(era)
        } else {
            self.fresh(era, false)
        }
    }

    /// Plans block `height` (mainnet height `m`). A stale block spends outputs the best chain
    /// spends too (the caller brackets its branch with `Pool::begin_trial`/`end_trial`) and pays
    /// scripts of its own. `avoid_txs`: a transaction count the block must not have (its stale
    /// sibling's, so that the sibling's undo record cannot be taken for its own).
    pub fn plan_block(&mut self, height: u32, m: f64, stale: bool, avoid_txs: Option<usize>) -> BlockPlan {
        let era = Era::at(m);
        if !stale {
            self.pool.start_block(height);
        }
        let target = shape::block_target(&mut self.rng, m) * if stale { 0.5 } else { 1.0 };
        let mut plan = BlockPlan {
            height,
            stale,
            segwit: era.segwit(),
            version: era.block_version(&mut self.rng),
            time: 1_296_688_602 + height * 600 + self.rng.u32(..600),
            coinbase: Vec::new(),
            tag: self.rng.u64(..),
            txs: Vec::new(),
            spends: Vec::new(),
            outs: Vec::new(),
            waves: 0,
            unspent: Vec::new(),
        };
        let mut local = Vec::new();
        let mut size = 80.0 + 3.0 + 250.0;
        let mut fees = 0;
        while size < target || avoid_txs == Some(plan.txs.len() + 1) {
            let Some((bytes, fee)) = self.plan_tx(&mut plan, &mut local, &era, target, target - size) else {
                break;
            };
            size += bytes;
            fees += fee;
            if size > MAX_BLOCK - 20_000.0 {
                break;
            }
        }
        plan.unspent.extend(local.iter().map(|l| (l.tx, l.vout)));
        self.plan_coinbase(&mut plan, &era, subsidy(height) + fees);
        plan
    }

    fn plan_coinbase(&mut self, plan: &mut BlockPlan, era: &Era, value: u64) {
        let gen = MINER_ERAS.partition_point(|&s| s <= era.m);
        let miner = |rng: &mut fastrand::Rng, miners: &[Vec<ScriptId>]| {
            let rank = ((MINERS as f64 + 1.0).ln() * rng.f64()).exp() as usize - 1;
            miners[gen - 1][rank.min(MINERS - 1)]
        };
        let payees = if gen > 0 && self.rng.u8(..20) == 0 { 2 } else { 1 };
        let mut left = value;
        for i in 0..payees {
            // 2009–2010: every block pays a new key, an uncompressed P2PK one until 2010's end.
            let script = match gen {
                0 if era.m < 100_000.0 => self.fresh_of(Kind::P2pkU, era, plan.stale),
                0 => self.fresh_of(Kind::P2pkh, era, plan.stale),
                _ => miner(&mut self.rng, &self.miners),
            };
            let v = if i + 1 == payees { left } else { left / 100 };
            left -= v;
            plan.coinbase.push(Out { value: v, script: OutScript::Pay(script) });
        }
        if plan.segwit {
            plan.coinbase.push(Out { value: 0, script: OutScript::WitnessCommitment });
        }
        if era.m >= 400_000.0 && self.rng.u8(..10) == 0 {
            plan.coinbase.push(Out { value: 0, script: OutScript::Data(36) }); // merged mining
        }
        if !plan.stale {
            self.touched.clear();
            for o in &plan.coinbase {
                if let OutScript::Pay(id) = o.script {
                    if self.tracks(id) {
                        self.tracked.entry(id).or_default().funded += o.value;
                        self.touched.push(id);
                    }
                }
            }
            self.count_touched();
            self.totals.count_outputs(&plan.coinbase);
            self.totals.txs += 1;
            self.totals.outputs += plan.coinbase.len() as u64;
            self.totals.op_returns +=
                plan.coinbase.iter().filter(|o| !matches!(o.script, OutScript::Pay(_))).count() as u64;
        }
    }

    fn count_touched(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for id in &self.touched {
            self.tracked.entry(*id).or_default().txs += 1;
        }
    }

    /// Plans one transaction into `plan`, a block of about `target` bytes with `room` left (for
    /// an inscription); returns its size (estimated) and fee, or None when nothing is left to
    /// spend.
    fn plan_tx(
        &mut self,
        plan: &mut BlockPlan,
        local: &mut Vec<Local>,
        era: &Era,
        target: f64,
        room: f64,
    ) -> Option<(f64, u64)> {
        let stale = plan.stale;
        let supply = self.pool.live() + local.len();
        if supply == 0 {
            return None;
        }
        // The pool should hold four blocks' worth of inputs. A time-lapse chain grows its blocks
        // far faster than mainnet grew its UTXO set, so while the pool is short of that, more
        // transactions spend one output and pay several (some fan out to many), taking what
        // their input holds.
        let deficit = (1.0 - self.pool.live() as f64 / (4.0 * target / 230.0)).clamp(0.0, 1.0);
        let growing = self.rng.f64() < 0.6 * deficit;
        let (n_in, n_out) = match growing {
            true if self.rng.f64() < 0.3 * deficit => (1, self.rng.usize(20..=200)),
            true => (1, shape::outputs(&mut self.rng, 1).max(2)),
            false => {
                let i = shape::inputs(&mut self.rng);
                (i.min(supply.div_ceil(2)), shape::outputs(&mut self.rng, i))
            }
        };
        let change = self.rng.usize(..n_out);
        let rate = match era.m < 300_000.0 {
            true => 1.0 + 10.0 * self.rng.f64(),
            false => 1.0 + 40.0 * self.rng.f64().powi(2),
        };

        // Inputs: mostly outputs of earlier blocks, some of this block's (more while growing).
        let p_local = 0.06 + 0.4 * deficit;
        let tx = plan.txs.len() as u32;
        let inputs_from = plan.spends.len();
        let mut wave = 0;
        let (mut base, mut witness) = (10usize, 0usize);
        let mut in_value = 0u64;
        for _ in 0..n_in {
            let from_local = !local.is_empty() && (self.rng.f64() < p_local || self.pool.live() == 0);
            let mut spend = if from_local {
                let l = local.swap_remove(self.rng.usize(..local.len()));
                wave = wave.max(l.wave + 1);
                Spend {
                    prev: Prev::Local { tx: l.tx, vout: l.vout },
                    value: l.value,
                    script: l.script,
                    height: plan.height,
                    coinbase: false,
                    inscription: 0,
                }
            } else {
                let Some(Utxo { txid, value, script, vout, height, coinbase }) =
                    self.pool.take(&mut self.rng)
                else {
                    break;
                };
                Spend { prev: Prev::Out { txid, vout }, value, script, height, coinbase, inscription: 0 }
            };
            if spend.script.kind() == Kind::P2tr && self.rng.f64() < era.inscription {
                let room = (room.min(MAX_BLOCK / 4.0) as u32).max(20);
                spend.inscription = shape::inscription_len(&mut self.rng).min(room);
            }
            let (sig, wit) = spend_size(spend.script, spend.inscription);
            base += 40 + sig + (sig >= 253) as usize * 2 + 1;
            witness += wit;
            in_value += spend.value;
            plan.spends.push(spend);
        }
        if plan.spends.len() == inputs_from {
            return None;
        }
        let inputs = inputs_from..plan.spends.len();
        let segwit = plan.spends[inputs.clone()].iter().any(|s| s.script.has_witness());
        if segwit {
            witness += 2 + plan.spends[inputs.clone()].iter().filter(|s| !s.script.has_witness()).count();
        }

        // Whom it pays: the change sometimes goes back to the first input's script.
        let outputs_from = plan.outs.len();
        for i in 0..n_out {
            let script = if i == change && n_out > 1 {
                if !stale && self.rng.f64() < CHANGE_BACK {
                    plan.spends[inputs.start].script
                } else {
                    self.fresh(era, stale)
                }
            } else {
                self.payee(era, stale)
            };
            base += 9 + script.len();
            plan.outs.push(Out { value: 0, script: OutScript::Pay(script) });
        }
        let data = (self.rng.f64() < era.op_return).then(|| self.rng.u8(10..=80));
        if let Some(len) = data {
            base += 11 + len as usize;
        }
        let vsize = base as f64 + witness as f64 / 4.0;
        // Nobody spends a coin for more than a twentieth of it in fees.
        let fee = ((vsize * rate) as u64).min(in_value / 20);
        let available = in_value - fee;
        // The inputs' value less the fee is shared out: payments take shares of 0.3 to 1.3, the
        // change one of 1 to 2 (rounded down to two significant digits more often than not),
        // so value is neither lost nor crumbled; no output is below the dust limit (fewer
        // outputs when the inputs are that small).
        let mut pays = n_out;
        while pays > 1 && available < 2 * DUST * pays as u64 {
            pays -= 1;
        }
        let change = change.min(pays - 1);
        let weights: Vec<f64> =
            (0..pays).map(|i| self.rng.f64() + if i == change { 1.0 } else { 0.3 }).collect();
        let total: f64 = weights.iter().sum();
        let mut amounts: Vec<u64> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| match i == change {
                true => 0,
                false => round(&mut self.rng, available as f64 * w / total).max(DUST),
            })
            .collect();
        let paid: u64 = amounts.iter().sum();
        amounts[change] = available - paid;
        plan.outs.truncate(outputs_from + pays);
        for (o, value) in plan.outs[outputs_from..].iter_mut().zip(amounts) {
            o.value = value;
        }
        if let Some(len) = data {
            plan.outs.push(Out { value: 0, script: OutScript::Data(len) });
        }
        let outputs = outputs_from..plan.outs.len();

        // This block's later transactions may spend these outputs.
        for (vout, o) in plan.outs[outputs.clone()].iter().enumerate() {
            if let OutScript::Pay(script) = o.script {
                let l = Local { tx, vout: vout as u32, value: o.value, script, wave };
                if wave < MAX_WAVE {
                    local.push(l);
                } else {
                    plan.unspent.push((tx, vout as u32));
                }
            }
        }
        plan.waves = plan.waves.max(wave);
        let rbf = self.rng.f64() < era.rbf;
        plan.txs.push(TxPlan {
            inputs: inputs.clone(),
            outputs: outputs.clone(),
            wave,
            version: if self.rng.f64() < era.tx_v2 { 2 } else { 1 },
            lock_time: if rbf || self.rng.u8(..4) == 0 { plan.height - 1 } else { 0 },
            rbf,
            seed: self.rng.u64(..),
        });
        if !stale {
            self.touched.clear();
            for s in &plan.spends[inputs.clone()] {
                if self.tracks(s.script) {
                    self.tracked.entry(s.script).or_default().spent += s.value;
                    self.touched.push(s.script);
                }
            }
            for o in &plan.outs[outputs.clone()] {
                if let OutScript::Pay(id) = o.script {
                    if self.tracks(id) {
                        self.tracked.entry(id).or_default().funded += o.value;
                        self.touched.push(id);
                    }
                }
            }
            self.count_touched();
            self.totals.count_outputs(&plan.outs[outputs.clone()]);
            self.totals.inscriptions +=
                plan.spends[inputs.clone()].iter().filter(|s| s.inscription > 0).count() as u64;
            self.totals.txs += 1;
            self.totals.inputs += inputs.len() as u64;
            self.totals.outputs += outputs.len() as u64;
            self.totals.op_returns +=
                plan.outs[outputs].iter().filter(|o| matches!(o.script, OutScript::Data(_))).count() as u64;
        }
        Some((vsize.max(base as f64 + witness as f64), fee))
    }
}
