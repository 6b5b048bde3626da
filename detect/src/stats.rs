//! Scores: a finding's tail probability `P(X >= observed)` as one number, bigger meaning more surprising.

/// A p-value as a score: `-log10(p)`, capped at 300 where the float underflows.
pub fn score(p: f64) -> f64 {
    if p <= 0.0 { 300.0 } else { (-p.log10()).min(300.0) }
}

/// `x.round()` for a value about to be cast to `u32` or narrower: the same integer after the cast, for
/// every `x` (negative, NaN and infinite ones included), without the libm call `f64::round` is on a CPU
/// target without SSE4.1 (about 25 instructions, paid for every addition to a tail and every key of a
/// closing window). The truncation is exact below 2^63 (and through `i64`, one instruction each way,
/// where `u64` takes a dozen), so is the fraction left, and half rounds up as `round` rounds it away
/// from zero; a negative `x` comes out negative or zero, which the cast saturates to 0 as it does
/// `round`'s, and one past 2^63 saturates high either way.
#[inline]
pub(crate) fn round_unsigned(x: f64) -> f64 {
    let t = x as i64 as f64;
    if x - t >= 0.5 { t + 1.0 } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_unsigned_casts_as_round_does() {
        let half_below = 0.5 - f64::EPSILON / 4.0;
        let mut xs = vec![
            0.0,
            -0.0,
            half_below,
            0.5,
            1.5,
            2.5,
            -0.5,
            -0.7,
            -1.5,
            65_535.4,
            65_535.5,
            65_536.6,
            4_294_967_295.5,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            9_007_199_254_740_993.0,
            1.8e19,
            1.9e19,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        // Every quarter from 0 to 70,000 and the floats either side of each half, where rounding turns.
        for i in 0..280_000u32 {
            let x = f64::from(i) / 4.0;
            xs.extend([x, x.next_up(), x.next_down()]);
        }
        for x in xs {
            let (want, got) = (x.round(), round_unsigned(x));
            assert_eq!((want as u16, want as u32), (got as u16, got as u32), "{x:e}");
            if x.is_sign_positive() && x < 9.2e18 {
                assert_eq!(want.to_bits(), got.to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn scores_are_minus_log10_p_capped_where_the_float_underflows() {
        assert!((score(1e-9) - 9.0).abs() < 1e-9);
        assert_eq!(score(0.0), 300.0);
        assert_eq!(score(1.0), 0.0);
    }
}
