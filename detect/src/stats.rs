//! Baselines and their scores: exponentially weighted mean and variance of a per-window series, and the
//! tail probability of an observed count under a count model fitted to them.
//!
//! The model is Poisson when the tracked variance is close to the mean, and negative binomial (same mean,
//! the tracked variance) when the series is overdispersed, as bursty agents are. A score is the upper tail
//! probability `P(X >= observed)`: small means surprising.

use serde::{Deserialize, Serialize};
use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

/// Smallest mean a baseline is judged with: an agent idle for hours is not infinitely surprised by one
/// action. Together with each detector's minimum count this keeps quiet agents from paging anyone.
pub const MEAN_FLOOR: f64 = 0.05;

/// An exponentially weighted mean and variance (West's incremental form).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    /// Weighted mean.
    #[serde(rename = "m")]
    pub mean: f64,
    /// Weighted variance.
    #[serde(rename = "v")]
    pub var: f64,
}

impl Ewma {
    /// Folds in one observation with weight `alpha`.
    pub fn update(&mut self, x: f64, alpha: f64) {
        let diff = x - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
    }

    /// Folds in `n` observations of zero (windows in which the agent did nothing) after `seen` earlier
    /// observations, each with weight `max(alpha, 1/count)` (a running mean until `1/alpha`
    /// observations). Once the weight is constant the `n` steps collapse to a closed form:
    /// `mean * (1-a)^k` and `(1-a)^k * (var + mean^2 * (1 - (1-a)^k))`, so a long idle gap costs the
    /// same as a short one.
    pub fn update_zeros(&mut self, n: u64, alpha: f64, seen: u64) {
        let mut left = n;
        // The running-mean steps, one by one (at most 1/alpha of them, once per agent).
        while left > 0 && 1.0 / (seen + (n - left) + 1) as f64 > alpha {
            self.update(0.0, 1.0 / (seen + (n - left) + 1) as f64);
            left -= 1;
        }
        if left == 0 {
            return;
        }
        let keep = (1.0 - alpha).powf(left as f64);
        self.var = keep * (self.var + self.mean * self.mean * (1.0 - keep));
        self.mean *= keep;
    }
}

/// Which count model a tail probability came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Variance close to the mean.
    Poisson,
    /// Variance above the mean: overdispersed.
    NegativeBinomial,
}

impl Model {
    /// Name for evidence.
    pub const fn as_str(self) -> &'static str {
        match self {
            Model::Poisson => "poisson",
            Model::NegativeBinomial => "negative_binomial",
        }
    }
}

/// The fitted model for a baseline: its mean and variance (floored) and the family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fitted {
    /// Expected count.
    pub mean: f64,
    /// Expected variance.
    pub var: f64,
    /// Family used.
    pub model: Model,
}

impl Fitted {
    /// Fits the model to a baseline: negative binomial when the variance exceeds the mean by more than
    /// `overdispersion` (a ratio), Poisson otherwise.
    pub fn new(base: &Ewma, overdispersion: f64) -> Fitted {
        let mean = base.mean.max(MEAN_FLOOR);
        let var = base.var.max(mean);
        let model = if var > mean * overdispersion { Model::NegativeBinomial } else { Model::Poisson };
        Fitted { mean, var, model }
    }

    /// The model's standard deviation (a Poisson's is the square root of its mean, whatever the
    /// tracked variance).
    pub fn sd(&self) -> f64 {
        match self.model {
            Model::Poisson => self.mean.sqrt(),
            Model::NegativeBinomial => self.var.sqrt(),
        }
    }

    /// `P(X >= observed)` under the model. 1 for an observation of zero.
    pub fn tail(&self, observed: u64) -> f64 {
        if observed == 0 {
            return 1.0;
        }
        let x = observed - 1;
        let p = match self.model {
            Model::Poisson => Poisson::new(self.mean).ok().map(|d| d.sf(x)),
            Model::NegativeBinomial => {
                // Mean r(1-p)/p and variance r(1-p)/p^2 give p = mean/var and r = mean^2/(var-mean).
                let p = self.mean / self.var;
                let r = self.mean * self.mean / (self.var - self.mean);
                NegativeBinomial::new(r, p).ok().map(|d| d.sf(x))
            }
        };
        match p {
            Some(p) if p.is_finite() => p.clamp(0.0, 1.0),
            _ => 1.0,
        }
    }

    /// The smallest count whose tail probability is below `p_value`: the threshold shown in evidence.
    /// Found by doubling then bisection, so it costs a few dozen tail evaluations, and only runs when a
    /// finding is made.
    pub fn threshold(&self, p_value: f64) -> u64 {
        let mut hi = (self.mean.ceil() as u64).max(1);
        while self.tail(hi) >= p_value {
            if hi > u64::MAX / 4 {
                return hi;
            }
            hi *= 2;
        }
        let mut lo = hi / 2;
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if self.tail(mid) < p_value { hi = mid } else { lo = mid }
        }
        hi
    }
}

/// A p-value as a score: `-log10(p)`, capped at 300 where the float underflows.
pub fn score(p: f64) -> f64 {
    if p <= 0.0 { 300.0 } else { (-p.log10()).min(300.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_tracks_mean_and_variance() {
        let mut e = Ewma::default();
        for i in 0..2000 {
            e.update(if i % 2 == 0 { 8.0 } else { 12.0 }, 0.05);
        }
        assert!((e.mean - 10.0).abs() < 0.2, "{e:?}");
        assert!((e.var - 4.0).abs() < 0.5, "{e:?}");
        e.update_zeros(10_000, 0.05, 2000);
        assert!(e.mean < 1e-6);
    }

    #[test]
    fn idle_gaps_in_closed_form_match_step_by_step() {
        for (seen, n) in [(0, 5), (3, 40), (19, 2), (25, 1), (100, 300), (5_000, 7)] {
            let mut a = Ewma { mean: 4.0, var: 3.0 };
            let mut b = a;
            a.update_zeros(n, 0.05, seen);
            for i in 0..n {
                b.update(0.0, 0.05f64.max(1.0 / (seen + i + 1) as f64));
            }
            assert!(
                (a.mean - b.mean).abs() < 1e-9 && (a.var - b.var).abs() < 1e-9,
                "{seen} {n}: {a:?} {b:?}"
            );
        }
    }

    #[test]
    fn poisson_tail_matches_the_closed_form() {
        let f = Fitted::new(&Ewma { mean: 2.0, var: 2.0 }, 1.5);
        assert_eq!(f.model, Model::Poisson);
        // P(X >= 1) = 1 - e^-2; P(X >= 3) = 1 - e^-2 (1 + 2 + 2).
        assert!((f.tail(1) - (1.0 - (-2.0f64).exp())).abs() < 1e-12);
        assert!((f.tail(3) - (1.0 - (-2.0f64).exp() * 5.0)).abs() < 1e-12);
        assert_eq!(f.tail(0), 1.0);
    }

    #[test]
    fn overdispersed_baselines_use_a_heavier_tail() {
        let poisson = Fitted::new(&Ewma { mean: 5.0, var: 5.0 }, 1.5);
        let nb = Fitted::new(&Ewma { mean: 5.0, var: 50.0 }, 1.5);
        assert_eq!(nb.model, Model::NegativeBinomial);
        // 30 actions: astonishing for a steady agent, merely unusual for a bursty one.
        assert!(poisson.tail(30) < 1e-10, "{}", poisson.tail(30));
        assert!(nb.tail(30) > 1e-3, "{}", nb.tail(30));
        // NB(r, p) with mean 5 and variance 50: p = 0.1, r = 5/9. P(X >= 1) = 1 - p^r.
        assert!((nb.tail(1) - (1.0 - 0.1f64.powf(5.0 / 9.0))).abs() < 1e-9);
    }

    #[test]
    fn within_three_standard_deviations_the_tail_is_never_below_a_thousandth() {
        // The engine skips the exact tail there; this is the fact it relies on, over the range of
        // baselines it meets.
        let mut mean = 0.001;
        while mean < 5_000.0 {
            for dispersion in [1.0, 1.2, 1.6, 3.0, 10.0, 100.0] {
                let f = Fitted::new(&Ewma { mean, var: mean * dispersion }, 1.5);
                let edge = (f.mean + 3.0 * f.sd()).floor() as u64;
                assert!(f.tail(edge) >= 1e-3, "mean {mean} var {} edge {edge}: {}", f.var, f.tail(edge));
            }
            mean *= 1.37;
        }
    }

    #[test]
    fn thresholds_bracket_the_p_value() {
        for (mean, var) in [(0.05, 0.05), (3.0, 3.0), (40.0, 400.0), (1000.0, 1000.0)] {
            let f = Fitted::new(&Ewma { mean, var }, 1.5);
            let t = f.threshold(1e-6);
            assert!(f.tail(t) < 1e-6 && f.tail(t - 1) >= 1e-6, "{mean} {var} {t}");
        }
        assert!((score(1e-9) - 9.0).abs() < 1e-9);
        assert_eq!(score(0.0), 300.0);
    }
}
