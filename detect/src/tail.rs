//! The baseline of one per-window measure (actions, bytes, denials, tokens, cost): a decayed histogram
//! on a logarithmic scale whose upper tail is extrapolated by a generalized Pareto distribution.
//!
//! Why this shape. Real agent traffic is not Poisson: it is bursty (long idle stretches, then bursts),
//! heavy-tailed (byte volumes span six orders of magnitude), and it shifts level. A mean and a variance
//! cannot describe "idle 94% of the time, 150 MB when it writes": the variance is all burst, so a burst
//! three times larger than any before still looks ordinary, while a quiet agent's first burst looks
//! infinitely surprising. A histogram keeps the shape whatever it is (zeros, several modes, a long tail);
//! its memory decays, so a sustained new level becomes the baseline within `memory` windows, while one
//! outlier adds one window's weight and barely moves it.
//!
//! A histogram alone cannot say how surprising a value beyond everything it holds is: its resolution is
//! one window in `memory`. So above a high quantile the tail is modelled as extreme value theory says
//! tails above a high threshold behave, a generalized Pareto distribution (the peaks-over-threshold
//! approach, as in Siffer et al., "Anomaly detection in streams with extreme value theory", KDD 2017),
//! fitted by the method of moments to the histogram's own excesses. Its shape adapts per agent: a
//! bounded tail (shape < 0) for an agent whose bursts are all alike, an exponential one for noisy counts,
//! a power law for byte volumes that really are heavy-tailed.
//!
//! Everything here is arithmetic on the state: no clock, no I/O, deterministic.

use serde::{Deserialize, Serialize};
use statrs::distribution::{DiscreteCDF, Poisson};

use crate::stats::round_unsigned;

/// Histogram bins per doubling of the value: a bin is 19% wide. (Three per octave lost a third of the
/// NAB score: the tail fit reads excesses at bin centres, and coarser bins blur them.)
const BINS_PER_OCTAVE: f64 = 4.0;
/// Bins kept per histogram: a window of consecutive bins (two octaves) that slides up to hold the
/// largest values seen. Only the upper tail is judged, so what falls below the window merges into
/// `below`, with the zeros.
const BINS: usize = 8;
/// The quantum of a weight: weights are stored as `u16` fractions of the largest one (see [`Tail`]).
const QUANTA: f64 = 65_535.0;
/// The window slides down to a smaller value only once everything in it has decayed to less than half an
/// observation: a high that the agent reached even a few times is remembered for days.
const FORGET_BELOW: f64 = 0.5;
/// Pseudo-observation added above every value, so an empty tail is not infinitely surprising.
const PRIOR: f64 = 1.0;
/// The fitted tail's shape is kept within these bounds: below -0.3 a handful of identical bursts would
/// make anything slightly larger impossible; above 1 the mean of the excesses is not even defined.
const SHAPE_MIN: f64 = -0.3;
const SHAPE_MAX: f64 = 1.0;
/// A moment-fitted shape from which the tail counts as heavy (see `Gpd::tail`): a quarter, where the
/// excesses' fourth moment stops existing and the moment estimate grows unreliable.
const HEAVY_SHAPE: f64 = 0.25;
/// A young baseline's tail is not to be trusted: a few hours of history say little about how far an
/// agent's busiest windows reach, and moments of a handful of excesses cut off at the largest value seen
/// look bounded. So the fitted shape is the average of the moment estimate and a prior shape, weighted
/// by how full the histogram is (its weight over its memory): for volumes (bytes, tokens, cost)
/// `PRIOR_SHAPE`, a Pareto tail of index 2, so a young agent's first big transfer is judged as "could be
/// a heavy tail" and only one far beyond its history is news; for counts of actions 0, the exponential
/// tail of a count, with the Poisson floor below. A mature baseline is judged by its own tail.
const PRIOR_SHAPE: f64 = 0.5;
/// Smallest spread of the excesses, relative to the threshold: identical bursts still leave room.
const SPREAD_FLOOR: f64 = 0.05;
/// How many windows' worth of excesses a bounded tail needs before it is believed in full. The moment
/// estimate of the shape is biased low on few excesses (a handful, cut off at the largest value seen,
/// always looks bounded), and a bounded tail is the one claim a fit can make that rules values out: a
/// burst a little beyond a few alike would be judged impossible. So a negative shape is shrunk toward
/// the exponential tail (shape 0) in proportion to the excesses behind it, and holds in full only from
/// this many on.
const BOUNDED_EXCESSES: f64 = 30.0;

/// How surprising a value is, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// `P(X >= observed)` under the baseline.
    pub p: f64,
    /// The agent's usual high: the value its `quantile` upper tail starts at.
    pub high: f64,
    /// The median of the baseline.
    pub median: f64,
    /// The smallest value whose tail probability is below the detector's p-value (for evidence). Worked
    /// out for a value in the fitted tail or below that p-value, or by [`Tail::judge_fully`]; infinite
    /// otherwise.
    pub threshold: f64,
    /// The fitted tail's shape (negative: bounded, 0: exponential, positive: power law); worked out when
    /// `threshold` is, 0 otherwise.
    pub shape: f64,
    /// How far the values above `high` reach beyond it on average (the mean excess, at least a twentieth
    /// of `high`): a yardstick of the agent's own bursts that does not depend on the tail's fitted
    /// shape. Worked out when `threshold` is, 0 otherwise.
    pub reach: f64,
}

/// A decayed histogram of one measure per window, on a log scale (see the module docs), in 24 bytes.
///
/// Every weight decays by the same factor per window, so the weights are stored in block floating
/// point: `u16` fractions of one shared `scale`. Decay multiplies `scale` alone and is exact; adding an
/// observation changes one slot, and only when a slot would overflow are all halved and the scale
/// doubled. A weight is known to 1/65,535 of the scale (at most twice the largest weight), far finer
/// than the tail's own noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tail {
    /// The weight that a slot of 65,535 stands for (at most twice the largest weight).
    #[serde(rename = "s")]
    scale: f32,
    /// The bin index of `slots[1]`; bin `b` holds values in `[2^(b/4), 2^((b+1)/4))`. `i16::MIN` while
    /// nothing but zeros was seen.
    #[serde(rename = "l")]
    lowest: i16,
    /// `slots[0]`: zeros and values below the window; `slots[1..]`: the window's bins, ascending.
    #[serde(rename = "w")]
    slots: [u16; BINS + 1],
}

impl Default for Tail {
    fn default() -> Self {
        Tail { scale: 0.0, lowest: i16::MIN, slots: [0; BINS + 1] }
    }
}

fn bin_of(x: f64) -> Option<i16> {
    // Not negative, so the cast's truncation is the floor (without `floor`'s libm call).
    (x >= 1.0).then(|| (BINS_PER_OCTAVE * x.log2()).min(f64::from(i16::MAX - BINS as i16)) as i16)
}

fn lower_edge(b: i16) -> f64 {
    (f64::from(b) / BINS_PER_OCTAVE).exp2()
}

fn centre(b: i16) -> f64 {
    ((f64::from(b) + 0.5) / BINS_PER_OCTAVE).exp2()
}

impl Tail {
    /// A value read from the tail's bytes (the engine reads ahead: `AgentState::warm_close`).
    pub(crate) fn warm(&self) -> u64 {
        u64::from(self.slots[0]) ^ self.lowest as u64
    }

    fn weight_of(&self, slot: usize) -> f64 {
        f64::from(self.scale) * f64::from(self.slots[slot]) / QUANTA
    }

    /// Total weight of the observations remembered.
    pub fn weight(&self) -> f64 {
        (0..=BINS).map(|i| self.weight_of(i)).sum()
    }

    /// The kept bins, ascending, with their weights (none while only zeros were seen).
    fn bins(&self) -> impl DoubleEndedIterator<Item = (i16, f64)> + '_ {
        let live = self.lowest != i16::MIN;
        (1..=BINS).filter(move |_| live).map(|i| (self.lowest + i as i16 - 1, self.weight_of(i)))
    }

    /// Adds `w` to a slot. When the slot would overflow, the scale doubles (as often as needed) and
    /// every slot is halved: a rare, exact-but-for-one-rounding step, so small slots keep decaying with
    /// the scale instead of being re-rounded at every addition.
    fn add(&mut self, slot: usize, w: f64) {
        let mut scale = f64::from(self.scale);
        if scale <= 0.0 || !scale.is_finite() {
            // Empty, or decayed to nothing: start over with room to grow.
            self.slots = [0; BINS + 1];
            scale = 2.0 * w.max(f64::MIN_POSITIVE);
        }
        let mut m = f64::from(self.slots[slot]) + w / scale * QUANTA;
        while m > QUANTA {
            scale *= 2.0;
            m /= 2.0;
            // Half of each, rounded half up as `round` would: (x + 1) / 2 in integers, exactly.
            for x in &mut self.slots {
                *x = ((u32::from(*x) + 1) >> 1) as u16;
            }
        }
        self.scale = scale as f32;
        self.slots[slot] = round_unsigned(m) as u16;
    }

    /// Moves the window of bins up by `k` (what leaves it merges into `below`) or down by `-k` (what
    /// leaves it is forgotten).
    fn shift(&mut self, k: i32) {
        let n = BINS as i32;
        if k > 0 {
            let gone: f64 = (1..=k.min(n) as usize).map(|i| self.weight_of(i)).sum();
            for i in 1..=BINS {
                let from = i as i32 + k;
                self.slots[i] = if from <= n { self.slots[from as usize] } else { 0 };
            }
            self.add(0, gone);
        } else {
            for i in (1..=BINS).rev() {
                let from = i as i32 + k;
                self.slots[i] = if from >= 1 { self.slots[from as usize] } else { 0 };
            }
        }
        self.lowest = (i32::from(self.lowest) + k).clamp(i32::from(i16::MIN) + 1, i32::from(i16::MAX)) as i16;
    }

    /// Forgets a little (each weight times `keep`), then adds one observation.
    pub fn learn(&mut self, x: f64, keep: f64) {
        self.scale = (f64::from(self.scale) * keep) as f32;
        let Some(b) = bin_of(x) else {
            self.add(0, 1.0);
            return;
        };
        if self.lowest == i16::MIN {
            // The first non-zero value: near the top of the window, with room for a little more.
            self.lowest = b - BINS as i16 + 3;
        }
        let top = i32::from(self.lowest) + BINS as i32 - 1;
        let (b32, low) = (i32::from(b), i32::from(self.lowest));
        if b32 > top {
            self.shift(b32 - top);
        } else if b32 < low {
            let kept: f64 = (1..=BINS).map(|i| self.weight_of(i)).sum();
            if kept >= FORGET_BELOW {
                self.add(0, 1.0);
                return;
            }
            self.shift(b32 - low);
        }
        self.add((i32::from(b) - i32::from(self.lowest)) as usize + 1, 1.0);
    }

    /// `n` observations of zero (windows in which the agent did nothing), each after a decay by
    /// `keep`: in closed form, so a long idle gap costs the same as a short one.
    pub fn learn_zeros(&mut self, n: u64, keep: f64) {
        if n == 0 {
            return;
        }
        let k = keep.powf(n as f64);
        self.scale = (f64::from(self.scale) * k) as f32;
        // The zeros' own weights: 1 + keep + keep^2 + ... (n terms).
        let added = if keep < 1.0 { (1.0 - k) / (1.0 - keep) } else { n as f64 };
        self.add(0, added);
    }

    /// Where the upper tail starts: the bin in which the top `q` of the weight starts, or the lowest
    /// kept bin when all of them hold less than that (an agent that is mostly idle: its few non-zero
    /// windows are its tail); `None` when it never had a non-zero window.
    fn threshold_bin(&self, q: f64, total: f64) -> Option<i16> {
        let need = q * total;
        let mut acc = 0.0;
        for (b, w) in self.bins().rev() {
            acc += w;
            if acc >= need {
                return Some(b);
            }
        }
        (self.lowest != i16::MIN).then_some(self.lowest)
    }

    /// The median (0 when at least half of the weight is zeros or below the kept bins).
    fn median(&self, total: f64) -> f64 {
        let half = total / 2.0;
        let mut acc = self.weight_of(0);
        if acc >= half {
            return 0.0;
        }
        for (b, w) in self.bins() {
            acc += w;
            if acc >= half {
                return centre(b);
            }
        }
        0.0
    }

    /// The share of the remembered weight at or above `x` (the bin holding `x` counted half), or `None`
    /// when `x` is below the kept bins, where the histogram no longer knows the order of its values.
    pub fn share_at_least(&self, x: f64) -> Option<f64> {
        let above = self.weight_at_least(x)?;
        let total = self.weight();
        (total > 0.0).then(|| above / total)
    }

    /// The weight remembered at or above `x` (the bin holding `x` counted half), or `None` when `x` is
    /// below the kept bins.
    pub fn weight_at_least(&self, x: f64) -> Option<f64> {
        let bx = bin_of(x).filter(|&b| b >= self.lowest && self.lowest != i16::MIN)?;
        Some(self.weight_above(bx))
    }

    /// The weight of the kept bins above bin `bx`, and half of bin `bx`'s.
    fn weight_above(&self, bx: i16) -> f64 {
        self.bins()
            .map(|(b, w)| match b.cmp(&bx) {
                std::cmp::Ordering::Greater => w,
                std::cmp::Ordering::Equal => w / 2.0,
                std::cmp::Ordering::Less => 0.0,
            })
            .sum()
    }

    /// How surprising `x` is: the empirical tail probability, or beyond the `1 - q` quantile the
    /// generalized Pareto tail fitted to the excesses over it, whichever is smaller. `p_value` is the
    /// detector's own, for the threshold reported in the evidence.
    ///
    /// For a `count` of independent actions the answer is never more surprising than a Poisson count
    /// whose mean is the agent's usual high: a perfectly regular agent's histogram has no spread at all,
    /// but a few more actions in one window is ordinary noise, not news.
    ///
    /// `memory` is the weight a full histogram holds (`1 / (1 - keep)`): how mature this one is.
    ///
    /// The tail is fitted only when `x` lies in it or is surprising: every window of every agent is
    /// judged, nearly all are ordinary, and the fit (a logarithm per bin) was about a third of judging.
    pub fn judge(&self, x: f64, q: f64, p_value: f64, count: bool, memory: f64) -> Judgement {
        self.judge_as(x, q, p_value, count, memory, false)
    }

    /// [`Tail::judge`] with the threshold and shape worked out whatever `x` is (a baseline's report).
    pub fn judge_fully(&self, x: f64, q: f64, p_value: f64, count: bool, memory: f64) -> Judgement {
        self.judge_as(x, q, p_value, count, memory, true)
    }

    fn judge_as(&self, x: f64, q: f64, p_value: f64, count: bool, memory: f64, fully: bool) -> Judgement {
        let total = self.weight();
        let median = self.median(total);
        let bx = bin_of(x);
        let above: f64 = match bx {
            // Zero, or below every kept bin: not in the tail, so not surprising at all.
            None => total,
            Some(bx) if bx < self.lowest => total,
            Some(bx) => self.weight_above(bx),
        };
        let empirical = ((above + PRIOR) / (total + PRIOR)).min(1.0);
        let Some(t) = self.threshold_bin(q, total) else {
            // Never anything but zero: the rate is below one in `total` windows. Judged as a Poisson
            // count at that rate (the largest the history allows), so a first burst of several is news
            // and a first single action is not.
            let never = Poisson::new(1.0 / (total + PRIOR)).ok();
            let p = match (&never, x >= 1.0) {
                (Some(d), true) => empirical.min(d.sf(x as u64 - 1)),
                _ => empirical,
            };
            // The threshold is only evidence for a finding; most windows of most agents come this way
            // (no denials, no tokens), so the search runs only for a surprising one.
            let threshold = match never {
                Some(d) if p < p_value => (1..64).find(|&k| d.sf(k - 1) < p_value).unwrap_or(64) as f64,
                _ => f64::INFINITY,
            };
            return Judgement { p, high: 0.0, median, threshold, shape: 0.0, reach: 0.0 };
        };
        let high = lower_edge(t);
        let maturity = (total / memory).min(1.0);
        let prior = if count { 0.0 } else { PRIOR_SHAPE };
        let fit = || Gpd::fit(self.bins().filter(|&(b, _)| b >= t), high, total, maturity, prior);
        let in_tail = bx.is_some_and(|b| b > t);
        let fitted = (in_tail || fully).then(fit);
        let mut p = match fitted {
            Some(gpd) if in_tail => empirical.min(gpd.tail(x)),
            _ => empirical,
        };
        let noise = if count { Poisson::new(high).ok() } else { None };
        if let Some(noise) = &noise {
            p = p.max(if x >= 1.0 { noise.sf(x as u64 - 1) } else { 1.0 });
        }
        // Only a finding (or a report) needs the threshold for its evidence.
        let Some(gpd) = fitted.or_else(|| (p < p_value).then(fit)) else {
            return Judgement { p, high, median, threshold: f64::INFINITY, shape: 0.0, reach: 0.0 };
        };
        let mut threshold = gpd.inverse(p_value).max(high);
        if let Some(noise) = &noise
            && p < p_value
        {
            // A search over the CDF: computing it for every window cost a quarter of the detect stage.
            threshold = threshold.max(noise.inverse_cdf(1.0 - p_value) as f64 + 1.0);
        }
        Judgement { p, high, median, threshold, shape: gpd.shape, reach: gpd.reach }
    }
}

/// A generalized Pareto tail above `high`, holding `share` of the weight.
#[derive(Debug, Clone, Copy)]
struct Gpd {
    high: f64,
    share: f64,
    shape: f64,
    scale: f64,
    /// Hill's estimate of the tail index: the mean log-excess over `high`.
    hill: f64,
    /// The mean excess over `high` (floored at `SPREAD_FLOOR` of it).
    reach: f64,
}

impl Gpd {
    /// Method of moments on the excesses over `high`, each bin standing at its centre: with excess mean
    /// `m` and variance `v`, shape `(1 - m²/v) / 2` and scale `m (1 + m²/v) / 2`.
    fn fit(bins: impl Iterator<Item = (i16, f64)>, high: f64, total: f64, maturity: f64, prior: f64) -> Gpd {
        let (mut w0, mut s1, mut s2, mut logs) = (0.0f64, 0.0, 0.0, 0.0);
        for (b, w) in bins {
            let e = centre(b) - high;
            w0 += w;
            s1 += w * e;
            s2 += w * e * e;
            logs += w * (centre(b) / high).ln();
        }
        let floor = SPREAD_FLOOR * high;
        let w0 = w0.max(f64::MIN_POSITIVE);
        let m = (s1 / w0).max(floor);
        let v = (s2 / w0 - (s1 / w0).powi(2)).max(floor * floor);
        // Shape (1 - r) / 2 and scale m (1 + r) / 2, with r = m²/v held to the shapes allowed: a
        // degenerate fit (one bin of excesses, so almost no variance) must not give a bounded shape with
        // an enormous scale.
        let r = (m * m / v).clamp(1.0 - 2.0 * SHAPE_MAX, 1.0 - 2.0 * SHAPE_MIN);
        let mut moments = 0.5 * (1.0 - r);
        if moments < 0.0 {
            moments *= (w0 / BOUNDED_EXCESSES).min(1.0);
        }
        Gpd {
            high,
            share: w0 / total.max(w0),
            shape: maturity * moments + (1.0 - maturity) * prior,
            scale: 0.5 * m * (1.0 + r),
            hill: logs / w0,
            reach: m,
        }
    }

    fn heavy(&self) -> bool {
        self.shape >= HEAVY_SHAPE && self.hill > 0.0
    }

    /// `P(X >= x)` for `x` above `high`. The moments are sharp for light and bounded tails but cannot
    /// measure a heavy one (they assume a finite variance, so their shape never passes 1/2, and is
    /// biased low well before). So once the moments say the tail is heavy (shape at least
    /// `HEAVY_SHAPE`), a Pareto tail with Hill's index, made for heavy tails, is consulted too, and
    /// whichever finds the value more plausible wins: a heavy-tailed agent's ordinary big window is not
    /// news, and a bounded one's burst three times its largest still is.
    fn tail(&self, x: f64) -> f64 {
        let e = (x - self.high).max(0.0) / self.scale;
        let sf = if self.shape.abs() < 1e-9 {
            (-e).exp()
        } else {
            let z = 1.0 + self.shape * e;
            if z <= 0.0 { 0.0 } else { z.powf(-1.0 / self.shape) }
        };
        let pareto = if self.heavy() { (x / self.high).max(1.0).powf(-1.0 / self.hill) } else { 0.0 };
        self.share * sf.max(pareto)
    }

    /// The value whose tail probability is `p` (the larger of the two fits' answers).
    fn inverse(&self, p: f64) -> f64 {
        if p >= self.share {
            return self.high;
        }
        let r = p / self.share;
        let e = if self.shape.abs() < 1e-9 { -r.ln() } else { (r.powf(-self.shape) - 1.0) / self.shape };
        let pareto = if self.heavy() { self.high * r.powf(-self.hill) } else { self.high };
        (self.high + self.scale * e).max(pareto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_a_slot_in_integers_rounds_as_round_does() {
        for x in 0..=u16::MAX {
            assert_eq!(((u32::from(x) + 1) >> 1) as u16, (f64::from(x) / 2.0).round() as u16, "{x}");
        }
    }

    /// SplitMix64: deterministic test data with no dependency.
    struct Rng(u64);
    impl Rng {
        fn f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    const MEMORY: f64 = 4320.0;
    const KEEP: f64 = 1.0 - 1.0 / MEMORY;

    #[test]
    fn a_burst_far_beyond_every_earlier_one_is_surprising_and_one_alike_is_not() {
        // Idle 94% of the time, bursts of 40-60 MB: what a disk writer looks like.
        let mut r = Rng(7);
        let mut t = Tail::default();
        for _ in 0..5000 {
            let x = if r.f64() < 0.06 { 40e6 + 20e6 * r.f64() } else { 0.0 };
            t.learn(x, KEEP);
        }
        let usual = t.judge(55e6, 0.02, 1e-5, false, MEMORY);
        let triple = t.judge(150e6, 0.02, 1e-5, false, MEMORY);
        assert!(usual.p > 1e-3, "{usual:?}");
        assert!(triple.p < 1e-6, "{triple:?}");
        assert!(triple.threshold > 60e6 && triple.threshold < 150e6, "{triple:?}");
        assert_eq!(usual.median, 0.0);
    }

    #[test]
    fn the_weight_at_or_above_a_value_counts_its_own_bin_half() {
        // No decay: 20 windows of 400, 10 of 1,000, 70 of nothing.
        let mut t = Tail::default();
        for x in [400.0; 20].into_iter().chain([1000.0; 10]).chain([0.0; 70]) {
            t.learn(x, 1.0);
        }
        let near = |x: f64| t.weight_at_least(x).map(|w| (w * 100.0).round() / 100.0);
        // 1,000 falls in its own bin: half of its ten; anything between the two bins, all ten.
        assert_eq!(near(1000.0), Some(5.0));
        assert_eq!(near(1000.0 / std::f64::consts::SQRT_2), Some(10.0));
        assert_eq!(near(400.0), Some(20.0));
        assert_eq!(near(5000.0), Some(0.0));
        // Below the kept bins (two octaves under the largest) the order of values is not known.
        assert_eq!(near(100.0), None);
        assert_eq!(t.share_at_least(400.0).map(|s| (s * 100.0).round() / 100.0), Some(0.2));
    }

    #[test]
    fn a_bounded_tail_rules_a_value_out_only_on_many_excesses() {
        // Values spread log-uniformly over 1-8 MB, never more: a bounded tail. Remembered over 270
        // windows (a baseline of quarter-hours), about 16 windows' worth lie above the usual high; over
        // 4,320 (of minutes), about 260. A value a quarter beyond every one seen is ruled out only by
        // the many; both find one half beyond.
        let judged = |memory: f64, x: f64| {
            let mut r = Rng(11);
            let mut t = Tail::default();
            for _ in 0..20_000 {
                t.learn(1e6 * (3.0 * r.f64()).exp2(), 1.0 - 1.0 / memory);
            }
            t.judge_fully(x, 0.02, 1e-5, false, memory)
        };
        let (few, many) = (judged(270.0, 10e6), judged(4320.0, 10e6));
        assert!(few.p > 1e-4, "{few:?}");
        assert!(many.p < 1e-5, "{many:?}");
        assert!(
            many.shape < few.shape && few.shape < 0.0,
            "shrunk toward 0, still bounded: {few:?} {many:?}"
        );
        assert!(judged(270.0, 12e6).p < 1e-5);
        // The reach is the mean excess whatever the shape: the same for both memories.
        assert!((few.reach / many.reach - 1.0).abs() < 0.05, "{few:?} {many:?}");
    }

    #[test]
    fn noisy_counts_get_an_exponential_like_tail() {
        // Counts around 100 with a spread of about 40 (gamma-like), as request counts are.
        let mut r = Rng(3);
        let mut t = Tail::default();
        for _ in 0..5000 {
            let x: f64 = (0..4).map(|_| -25.0 * r.f64().max(1e-12).ln()).sum();
            t.learn(x.round(), KEEP);
        }
        assert!(
            t.judge(200.0, 0.02, 1e-5, true, MEMORY).p > 1e-5,
            "{:?}",
            t.judge(200.0, 0.02, 1e-5, true, MEMORY)
        );
        assert!(
            t.judge(600.0, 0.02, 1e-5, true, MEMORY).p < 1e-6,
            "{:?}",
            t.judge(600.0, 0.02, 1e-5, true, MEMORY)
        );
        let m = t.judge(1.0, 0.02, 1e-5, true, MEMORY).median;
        assert!((70.0..110.0).contains(&m), "{m}");
    }

    #[test]
    fn a_sustained_new_level_becomes_the_baseline() {
        let mut t = Tail::default();
        for _ in 0..3000 {
            t.learn(10.0, KEEP);
        }
        assert!(t.judge(100.0, 0.02, 1e-5, false, MEMORY).p < 1e-5);
        // A day and a half at ten times the level.
        for _ in 0..2000 {
            t.learn(100.0, KEEP);
        }
        assert!(
            t.judge(100.0, 0.02, 1e-5, false, MEMORY).p > 0.1,
            "{:?}",
            t.judge(100.0, 0.02, 1e-5, false, MEMORY)
        );
    }

    #[test]
    fn one_outlier_does_not_teach_that_outliers_are_normal() {
        let mut t = Tail::default();
        for i in 0..3000 {
            t.learn(if i % 500 == 499 { 10_000.0 } else { 10.0 + f64::from(i % 5) }, KEEP);
        }
        // Six earlier outliers of 10,000 make 10,000 plausible, not normal, and 100,000 stays surprising.
        assert!(
            t.judge(100_000.0, 0.02, 1e-5, false, MEMORY).p < 1e-3,
            "{:?}",
            t.judge(100_000.0, 0.02, 1e-5, false, MEMORY)
        );
        assert!(t.judge(12.0, 0.02, 1e-5, false, MEMORY).p > 0.1);
    }

    #[test]
    fn idle_gaps_in_closed_form_match_one_by_one() {
        let (mut a, mut b) = (Tail::default(), Tail::default());
        for x in [5.0, 50.0, 500.0] {
            a.learn(x, KEEP);
            b.learn(x, KEEP);
        }
        a.learn_zeros(1000, KEEP);
        for _ in 0..1000 {
            b.learn(0.0, KEEP);
        }
        // Equal up to the rounding of a thousand re-quantizations (see `Tail`).
        assert!((a.weight() / b.weight() - 1.0).abs() < 1e-2, "{} {}", a.weight(), b.weight());
        let (pa, pb) =
            (a.judge(400.0, 0.02, 1e-5, false, MEMORY).p, b.judge(400.0, 0.02, 1e-5, false, MEMORY).p);
        assert!((pa - pb).abs() < 1e-4, "{pa} {pb}");
    }

    #[test]
    fn a_perfectly_regular_counter_is_still_allowed_poisson_noise() {
        let mut t = Tail::default();
        for _ in 0..30_000 {
            t.learn(5.0, KEEP);
        }
        // As a mature histogram, 14 is impossible; as a count of actions around 5, merely unusual.
        assert!(t.judge(14.0, 0.02, 1e-5, false, MEMORY).p < 1e-9);
        assert!(t.judge(14.0, 0.02, 1e-5, true, MEMORY).p > 1e-5);
        // A runaway loop is news either way.
        assert!(t.judge(60.0, 0.02, 1e-5, true, MEMORY).p < 1e-20);
    }

    #[test]
    fn a_young_baseline_allows_a_heavy_tail_and_a_mature_one_its_own() {
        let mut young = Tail::default();
        for i in 0..60 {
            young.learn(if i % 7 == 0 { 2e6 } else { 1e6 }, KEEP);
        }
        // An hour of history: four times its largest window could be an ordinary heavy-tailed day.
        assert!(
            young.judge(8e6, 0.02, 1e-5, false, MEMORY).p > 1e-4,
            "{:?}",
            young.judge(8e6, 0.02, 1e-5, false, MEMORY)
        );
        // A thousand times its largest is news even so.
        assert!(young.judge(2e9, 0.02, 1e-5, false, MEMORY).p < 1e-6);
        let mut mature = young.clone();
        for i in 0..20_000 {
            mature.learn(if i % 7 == 0 { 2e6 } else { 1e6 }, KEEP);
        }
        assert!(mature.judge(8e6, 0.02, 1e-5, false, MEMORY).p < 1e-6);
    }

    #[test]
    fn a_first_burst_after_nothing_but_zeros_is_news_and_a_first_single_action_is_not() {
        let mut t = Tail::default();
        t.learn_zeros(100, KEEP);
        assert!(t.judge(12.0, 0.02, 1e-4, false, MEMORY).p < 1e-15);
        assert!(t.judge(1.0, 0.02, 1e-4, false, MEMORY).p > 1e-3);
        // The threshold, evidence for a finding, is reported with a surprising value.
        assert_eq!(t.judge(12.0, 0.02, 1e-4, false, MEMORY).threshold, 2.0);
    }

    #[test]
    fn the_histogram_stays_small_whatever_it_sees() {
        let mut t = Tail::default();
        let mut x = 1.0;
        for _ in 0..200 {
            t.learn(x, KEEP);
            x *= 1.5;
        }
        assert_eq!(std::mem::size_of::<Tail>(), 24);
        assert!(t.judge(x * 10.0, 0.02, 1e-5, false, MEMORY).p < 0.05);
    }

    #[test]
    fn the_tail_is_fitted_only_when_a_value_needs_it_and_judged_the_same() {
        let mut t = Tail::default();
        let mut rng = 0x243F_6A88_85A3_08D3u64;
        for _ in 0..3_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // A heavy-tailed measure: most windows small, some ten or a hundred times larger.
            let x =
                [3.0, 5.0, 8.0, 40.0, 600.0][(rng % 23).min(4) as usize] * (1.0 + (rng >> 40) as f64 / 1e7);
            t.learn(x, KEEP);
        }
        let (mut plain, mut surprising) = (0, 0);
        for count in [false, true] {
            for x in [0.0, 1.0, 4.0, 9.0, 45.0, 300.0, 700.0, 2e3, 1e4, 1e6] {
                let (lazy, full) =
                    (t.judge(x, 0.02, 1e-4, count, MEMORY), t.judge_fully(x, 0.02, 1e-4, count, MEMORY));
                assert_eq!((lazy.p, lazy.high, lazy.median), (full.p, full.high, full.median), "{x}");
                if lazy.p < 1e-4 {
                    surprising += 1;
                    assert_eq!((lazy.threshold, lazy.shape), (full.threshold, full.shape), "{x}");
                } else if lazy.threshold == f64::INFINITY {
                    // Not surprising and not in the tail: not fitted.
                    plain += 1;
                    assert!(full.threshold.is_finite(), "{x}");
                } else {
                    // In the tail though not surprising: fitted for its p, so the same.
                    assert_eq!((lazy.threshold, lazy.shape), (full.threshold, full.shape), "{x}");
                }
            }
        }
        assert!(plain > 0 && surprising > 0, "{plain} ordinary and {surprising} surprising values");
    }
}
