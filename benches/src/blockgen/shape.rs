//! Mainnet's shape, as numbers: block sizes and script types along mainnet's heights, how many
//! inputs and outputs a transaction has, and the hot head of scripts.
//!
//! A generated chain is a time-lapse of mainnet: its block `h` stands for mainnet height `m(h)`,
//! stepping through mainnet's ~950,000 heights so that blocks of mainnet's size at those heights
//! add up to the bytes asked for. So a 1 GB chain has about 1,200 blocks (coinbase-only ones at
//! first, ~1.5 MB ones at the end) and a 40 GB chain about 47,000. The figures are averages read
//! off public block explorers' charts (rounded; see `benches/README.md`), not a fit.

use super::script::Kind;

/// Mainnet's last height the time-lapse reaches.
pub const MAINNET_TIP: f64 = 950_000.0;
/// Heights below this are the coinbase-only era; a chain always has enough of them for its first
/// coinbases to mature (100 blocks) before the first spend.
const EARLY_END: f64 = 100_000.0;
const MIN_EARLY_BLOCKS: f64 = 110.0;

/// Average serialized block size (bytes) at mainnet heights, linear in between.
const BLOCK_BYTES: [(f64, f64); 18] = [
    (0.0, 215.0),
    (60_000.0, 250.0),
    (100_000.0, 1_500.0),
    (130_000.0, 12_000.0),
    (180_000.0, 45_000.0),
    (230_000.0, 160_000.0),
    (280_000.0, 260_000.0),
    (330_000.0, 450_000.0),
    (380_000.0, 750_000.0),
    (420_000.0, 950_000.0),
    (480_000.0, 1_000_000.0),
    (530_000.0, 1_100_000.0),
    (600_000.0, 1_250_000.0),
    (700_000.0, 1_350_000.0),
    (770_000.0, 1_450_000.0),
    (800_000.0, 1_550_000.0),
    (850_000.0, 1_500_000.0),
    (950_000.0, 1_500_000.0),
];

/// BIP-0141 (segwit) and BIP-0341 (taproot) activation heights; BIP-0016 (P2SH) enforcement.
pub const SEGWIT: f64 = 481_824.0;
pub const TAPROOT: f64 = 709_632.0;
const P2SH: f64 = 173_805.0;

/// Shares of fresh output scripts by kind (the order of `Kind::ALL`), linear in between.
const KINDS: [(f64, [f64; 8]); 13] = [
    //            P2pkU  P2pkC  P2pkh  P2sh   P2wpkh P2wsh  P2tr   Multisig
    (0.0, [0.90, 0.0, 0.10, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (100_000.0, [0.20, 0.0, 0.80, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (P2SH, [0.02, 0.01, 0.97, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (250_000.0, [0.005, 0.005, 0.87, 0.10, 0.0, 0.0, 0.0, 0.02]),
    (350_000.0, [0.0, 0.003, 0.80, 0.18, 0.0, 0.0, 0.0, 0.017]),
    (SEGWIT, [0.0, 0.002, 0.64, 0.35, 0.0, 0.0, 0.0, 0.008]),
    (550_000.0, [0.0, 0.001, 0.50, 0.35, 0.13, 0.02, 0.0, 0.001]),
    (650_000.0, [0.0, 0.001, 0.35, 0.30, 0.31, 0.04, 0.0, 0.001]),
    (TAPROOT, [0.0, 0.001, 0.28, 0.22, 0.45, 0.05, 0.0, 0.001]),
    (780_000.0, [0.0, 0.001, 0.18, 0.14, 0.42, 0.05, 0.21, 0.001]),
    (850_000.0, [0.0, 0.001, 0.14, 0.13, 0.40, 0.05, 0.28, 0.001]),
    (950_000.0, [0.0, 0.001, 0.12, 0.12, 0.40, 0.05, 0.31, 0.001]),
    (f64::INFINITY, [0.0, 0.001, 0.12, 0.12, 0.40, 0.05, 0.31, 0.001]),
];

fn interpolate(points: &[(f64, f64)], m: f64) -> f64 {
    let i = points.partition_point(|p| p.0 <= m);
    if i == 0 {
        return points[0].1;
    }
    if i == points.len() {
        return points[i - 1].1;
    }
    let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
    y0 + (y1 - y0) * (m - x0) / (x1 - x0)
}

/// Mainnet's average block size at height `m`.
pub fn block_bytes(m: f64) -> f64 {
    interpolate(&BLOCK_BYTES, m)
}

/// Mainnet's bytes of blocks from `from` to the tip (integrated along the table).
fn bytes_after(from: f64) -> f64 {
    let mut total = 0.0;
    for w in BLOCK_BYTES.windows(2) {
        let (x0, x1) = (w[0].0.max(from), w[1].0);
        if x1 > x0 {
            total += (x1 - x0) * (block_bytes(x0) + block_bytes(x1)) / 2.0;
        }
    }
    total
}

/// The share of the chain's transactions from mainnet height `m` on (as its share of bytes).
pub fn share_after(m: f64) -> f64 {
    bytes_after(m) / bytes_after(0.0)
}

/// The mainnet height each block of a chain of `bytes` stands for, block 0 (genesis) at 0.
pub fn timeline(bytes: f64) -> Vec<f64> {
    let step = bytes_after(0.0) / bytes;
    let early_step = step.min(EARLY_END / MIN_EARLY_BLOCKS);
    let mut m = 0.0;
    let mut out = Vec::new();
    while m <= MAINNET_TIP {
        out.push(m);
        m += if m < EARLY_END { early_step } else { step };
    }
    out
}

/// What the chain looks like at one mainnet height.
#[derive(Clone, Debug)]
pub struct Era {
    pub m: f64,
    /// Cumulative shares of `Kind::ALL` for fresh scripts.
    kinds: [f64; 8],
    /// Chance that a transaction carries an OP_RETURN output.
    pub op_return: f64,
    /// Chance that a P2TR output is spent by its script path with an inscription.
    pub inscription: f64,
    /// Chance that a new P2PKH key is uncompressed.
    pub uncompressed: f64,
    /// Chance that a new P2SH script is a 2-of-3 multisig (else P2SH-P2WPKH, after segwit).
    pub sh_multisig: f64,
    /// Chance that an input signals replaceability (sequence 0xfffffffd).
    pub rbf: f64,
    /// Chance that a transaction is version 2.
    pub tx_v2: f64,
}

impl Era {
    pub fn at(m: f64) -> Self {
        let i = KINDS.partition_point(|p| p.0 <= m).clamp(1, KINDS.len() - 1);
        let ((x0, a), (x1, b)) = (KINDS[i - 1], KINDS[i]);
        let t = if x1.is_finite() { ((m - x0) / (x1 - x0)).clamp(0.0, 1.0) } else { 0.0 };
        let mut kinds = [0.0; 8];
        let mut sum = 0.0;
        for k in 0..8 {
            let mut w = a[k] + (b[k] - a[k]) * t;
            // Nothing pays a kind before its soft fork.
            let too_early = match Kind::ALL[k] {
                Kind::P2sh => m < P2SH,
                Kind::P2wpkh | Kind::P2wsh => m < SEGWIT,
                Kind::P2tr => m < TAPROOT,
                _ => false,
            };
            if too_early {
                w = 0.0;
            }
            sum += w;
            kinds[k] = sum;
        }
        for k in &mut kinds {
            *k /= sum;
        }
        let op_return = match m {
            m if m < 300_000.0 => 0.0,
            m if m < 600_000.0 => 0.015,
            m if m < 840_000.0 => 0.02,
            _ => 0.06, // runes
        };
        Era {
            m,
            kinds,
            op_return,
            inscription: if m >= 767_000.0 { 0.2 } else { 0.0 },
            uncompressed: ((240_000.0 - m) / 100_000.0).clamp(0.0, 0.95),
            sh_multisig: if m < SEGWIT { 1.0 } else { 0.25 },
            rbf: if m < 400_000.0 { 0.0 } else { 0.3 },
            tx_v2: if m < 600_000.0 { 0.05 } else { 0.6 },
        }
    }

    pub fn segwit(&self) -> bool {
        self.m >= SEGWIT
    }

    /// A kind for a fresh script.
    pub fn kind(&self, u: f64) -> Kind {
        Kind::ALL[self.kinds.partition_point(|&c| c <= u).min(7)]
    }

    pub fn block_version(&self, rng: &mut fastrand::Rng) -> i32 {
        match self.m {
            m if m < 227_931.0 => 1,
            m if m < 363_725.0 => 2,
            m if m < 419_328.0 => 4,
            // BIP-0009 version bits, with some miners rolling bits 13–28 (overt ASICBoost).
            _ if rng.u8(..4) == 0 => 0x2000_0000 | (rng.i32(..) & 0x1fff_e000),
            _ => 0x2000_0000,
        }
    }
}

/// How many inputs a transaction has: mostly one or two, some consolidations of hundreds
/// (mean about 2.6, as mainnet's).
pub fn inputs(rng: &mut fastrand::Rng) -> usize {
    let u = rng.f64();
    match u {
        u if u < 0.62 => 1,
        u if u < 0.83 => 2,
        u if u < 0.90 => 3,
        u if u < 0.935 => 4,
        u if u < 0.965 => rng.usize(5..=8),
        u if u < 0.99 => rng.usize(9..=20),
        u if u < 0.999 => rng.usize(21..=80),
        _ => rng.usize(81..=300),
    }
}

/// How many outputs a transaction with `inputs` inputs has: mostly a payment and change, some
/// payout batches of hundreds; consolidations pay one (mean 3.6; small coins are split less, so
/// about 3 in the chain, as on mainnet).
pub fn outputs(rng: &mut fastrand::Rng, inputs: usize) -> usize {
    if inputs > 20 && rng.u8(..10) < 7 {
        return 1;
    }
    let u = rng.f64();
    match u {
        u if u < 0.12 => 1,
        u if u < 0.85 => 2,
        u if u < 0.92 => 3,
        u if u < 0.955 => rng.usize(4..=5),
        u if u < 0.985 => rng.usize(6..=20),
        u if u < 0.997 => rng.usize(21..=80),
        _ => rng.usize(81..=400),
    }
}

/// A block's size: near the era's average, with a spread, and some empty blocks (mined on a
/// header before the block arrived). Late blocks are mostly full.
pub fn block_target(rng: &mut fastrand::Rng, m: f64) -> f64 {
    let avg = block_bytes(m);
    if m < EARLY_END {
        return avg;
    }
    let u = rng.f64();
    let factor = if u < 0.02 {
        0.0
    } else if m >= 400_000.0 && u < 0.8 {
        0.9 + 0.25 * rng.f64()
    } else {
        (normal(rng) * 0.45).exp().clamp(0.05, 2.2)
    };
    (avg * factor).min(3_900_000.0)
}

/// A standard normal deviate (Box–Muller).
pub fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u = rng.f64().max(1e-300);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos()
}

/// Content bytes of an inscription: a median of a few hundred, a long tail to hundreds of KB.
pub fn inscription_len(rng: &mut fastrand::Rng) -> u32 {
    (5.5 + 1.6 * normal(rng)).exp().clamp(20.0, 390_000.0) as u32
}

/// The hot head: a script, the mainnet height it starts being paid at, and its target share of
/// all transactions. Three with about 2% each (10^6+ transactions in a 40 GB chain, a few 10^4
/// in 1 GB), forty from 0.4% down to 0.16% (10^5 at 40 GB); every share, hence every count,
/// grows with the chain. Counts are what they come out as, and reported.
pub struct Hot {
    pub kind: Kind,
    pub start: f64,
    pub share: f64,
}

pub fn hot_head() -> Vec<Hot> {
    let mut v = vec![
        Hot { kind: Kind::P2pkh, start: 150_000.0, share: 0.024 },
        Hot { kind: Kind::P2sh, start: 250_000.0, share: 0.020 },
        Hot { kind: Kind::P2wpkh, start: 500_000.0, share: 0.017 },
    ];
    for k in 0..40 {
        let start = 150_000.0 + 18_000.0 * k as f64;
        // Each takes the era's most common kind among the usual four, in turn.
        let era = Era::at(start);
        let kind = [Kind::P2pkh, Kind::P2sh, Kind::P2wpkh, Kind::P2tr]
            .into_iter()
            .cycle()
            .skip(k)
            .take(4)
            .find(|&kind| era.allows(kind))
            .unwrap_or(Kind::P2pkh);
        v.push(Hot { kind, start, share: 0.004 * 0.9768f64.powi(k as i32) });
    }
    v
}

impl Era {
    fn allows(&self, kind: Kind) -> bool {
        let k = Kind::ALL.iter().position(|&x| x == kind).unwrap();
        let below = if k == 0 { 0.0 } else { self.kinds[k - 1] };
        self.kinds[k] > below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_has_the_blocks_its_bytes_need() {
        for (gb, lo, hi) in [(0.01, 115, 130), (1.0, 1_100, 1_250), (40.0, 45_000, 50_000)] {
            let t = timeline(gb * 1e9);
            assert!((lo..=hi).contains(&t.len()), "{gb} GB: {} blocks", t.len());
            let bytes: f64 = t.iter().map(|&m| block_bytes(m)).sum();
            assert!((bytes / (gb * 1e9) - 1.0).abs() < 0.1, "{gb} GB: {bytes} bytes");
            assert!(t.iter().filter(|&&m| m < EARLY_END).count() >= 110);
        }
    }

    #[test]
    fn eras_pay_only_kinds_that_exist() {
        let at = |m: f64, kind: Kind| Era::at(m).allows(kind);
        assert!(at(0.0, Kind::P2pkU) && !at(0.0, Kind::P2sh) && !at(170_000.0, Kind::P2sh));
        assert!(at(200_000.0, Kind::P2sh) && !at(481_000.0, Kind::P2wpkh) && at(482_000.0, Kind::P2wpkh));
        assert!(!at(709_000.0, Kind::P2tr) && at(720_000.0, Kind::P2tr) && at(940_000.0, Kind::P2tr));
        for m in [0.0, 150_000.0, 500_000.0, 949_999.0, 960_000.0] {
            let e = Era::at(m);
            assert!((e.kinds[7] - 1.0).abs() < 1e-9);
            assert!(Kind::ALL.contains(&e.kind(0.999_999)));
        }
        for h in hot_head() {
            assert!(Era::at(h.start).allows(h.kind), "{:?} at {}", h.kind, h.start);
        }
    }

    #[test]
    fn transaction_shapes_have_mainnets_means() {
        let mut rng = fastrand::Rng::with_seed(5);
        let n = 200_000;
        let (mut ins, mut outs) = (0, 0);
        for _ in 0..n {
            let i = inputs(&mut rng);
            ins += i;
            outs += outputs(&mut rng, i);
        }
        let (ins, outs) = (ins as f64 / n as f64, outs as f64 / n as f64);
        assert!((2.3..2.9).contains(&ins), "{ins} inputs per tx");
        assert!((3.3..3.9).contains(&outs), "{outs} outputs per tx");
    }
}
