//! Scores: a finding's tail probability `P(X >= observed)` as one number, bigger meaning more surprising.

/// A p-value as a score: `-log10(p)`, capped at 300 where the float underflows.
pub fn score(p: f64) -> f64 {
    if p <= 0.0 { 300.0 } else { (-p.log10()).min(300.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_minus_log10_p_capped_where_the_float_underflows() {
        assert!((score(1e-9) - 9.0).abs() < 1e-9);
        assert_eq!(score(0.0), 300.0);
        assert_eq!(score(1.0), 0.0);
    }
}
