//! Event-time parsing and formatting: RFC 3339 strings and epoch milliseconds, both to UTC milliseconds.
//!
//! Hand-written rather than pulled from a date crate because the hot path needs exactly one thing (an
//! RFC 3339 string to epoch milliseconds, no allocation) and the archive needs exactly one other (epoch
//! milliseconds to a civil date and hour for the hive partition).

use std::fmt::Write as _;

/// The latest instant the contract accepts: 9999-12-31T23:59:59.999Z.
pub const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// Why a timestamp was refused; the text is shown to whoever sent the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The string is not of the form `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`.
    #[error("not an RFC 3339 timestamp (expected YYYY-MM-DDTHH:MM:SS[.fff]Z or ±HH:MM offset)")]
    Syntax,
    /// A part is out of its range (month 13, 31 February, hour 24, ...).
    #[error("{part} out of range")]
    Range {
        /// Which part of the timestamp: `month`, `day`, `hour`, ...
        part: &'static str,
    },
    /// Epoch milliseconds below zero or past year 9999.
    #[error("epoch milliseconds {0} outside 0..=253402300799999")]
    EpochRange(i128),
    /// Before 1973 as milliseconds, on a live intake: epoch seconds, most likely.
    #[error(
        "{0} as epoch milliseconds is before 1973: it looks like epoch seconds (send milliseconds or RFC 3339)"
    )]
    LooksLikeSeconds(i64),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

const fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

const fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(bytes: &[u8], at: usize, n: usize) -> Result<u32, TimestampError> {
    let part = bytes.get(at..at + n).ok_or(TimestampError::Syntax)?;
    part.iter().try_fold(0u32, |acc, &b| {
        if b.is_ascii_digit() { Ok(acc * 10 + u32::from(b - b'0')) } else { Err(TimestampError::Syntax) }
    })
}

fn expect(bytes: &[u8], at: usize, what: &[u8]) -> Result<(), TimestampError> {
    match bytes.get(at) {
        Some(b) if what.contains(b) => Ok(()),
        _ => Err(TimestampError::Syntax),
    }
}

/// Parses an RFC 3339 timestamp to UTC epoch milliseconds. Fractions finer than a millisecond are
/// truncated (the archive stores milliseconds); a leap second (`:60`) is folded into the second before it.
///
/// ```
/// use vigil_schemas::timestamp::parse_rfc3339_ms;
/// assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Ok(1500));
/// assert_eq!(parse_rfc3339_ms("2026-11-25T12:00:00+01:00"), parse_rfc3339_ms("2026-11-25T11:00:00Z"));
/// ```
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, TimestampError> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    expect(b, 4, b"-")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-")?;
    let day = digits(b, 8, 2)?;
    expect(b, 10, b"Tt ")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":")?;
    let second = digits(b, 17, 2)?;
    let mut at = 19;
    let mut millis = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 3 {
                millis = millis * 10 + u32::from(b[at] - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return Err(TimestampError::Syntax);
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, at + 1, 2)?;
            expect(b, at + 3, b":")?;
            let om = digits(b, at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimestampError::Range { part: "offset" });
            }
            at += 6;
            let total = i64::from(oh * 60 + om);
            if sign == b'+' { total } else { -total }
        }
        _ => return Err(TimestampError::Syntax),
    };
    if at != b.len() {
        return Err(TimestampError::Syntax);
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month) {
        return Err(TimestampError::Range { part: "month" });
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimestampError::Range { part: "day" });
    }
    if hour > 23 {
        return Err(TimestampError::Range { part: "hour" });
    }
    if minute > 59 {
        return Err(TimestampError::Range { part: "minute" });
    }
    if second > 60 {
        return Err(TimestampError::Range { part: "second" });
    }
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
    let ms = secs * 1000 + i64::from(millis);
    check_epoch_ms(i128::from(ms))
}

/// Accepts an integer epoch-milliseconds value if it lies inside the contract's range.
pub fn check_epoch_ms(ms: i128) -> Result<i64, TimestampError> {
    if (0..=i128::from(MAX_EPOCH_MS)).contains(&ms) {
        Ok(ms as i64)
    } else {
        Err(TimestampError::EpochRange(ms))
    }
}

/// The UTC civil date and hour of an epoch-milliseconds instant: `(year, month, day, hour)`.
pub const fn civil_hour(ms: i64) -> (i64, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, (secs.rem_euclid(86_400) / 3600) as u32)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision: `2026-11-25T10:54:37.000Z`.
///
/// ```
/// use vigil_schemas::timestamp::{format_rfc3339_ms, parse_rfc3339_ms};
/// let s = format_rfc3339_ms(1_764_067_277_123);
/// assert_eq!(s, "2025-11-25T10:41:17.123Z");
/// assert_eq!(parse_rfc3339_ms(&s), Ok(1_764_067_277_123));
/// ```
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, ms);
    out
}

/// Appends the RFC 3339 form of `ms` to `out` (see [`format_rfc3339_ms`]).
pub fn write_rfc3339_ms(out: &mut String, ms: i64) {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms.rem_euclid(1000)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (-200_000..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_the_forms_agents_send() {
        let base = parse_rfc3339_ms("2026-03-01T00:00:00Z").unwrap();
        assert_eq!(base, 1_772_323_200_000);
        assert_eq!(parse_rfc3339_ms("2026-03-01T00:00:00.123456789Z"), Ok(base + 123));
        assert_eq!(parse_rfc3339_ms("2026-03-01t00:00:00.1z"), Ok(base + 100));
        assert_eq!(parse_rfc3339_ms("2026-03-01 01:30:00+01:30"), Ok(base));
        assert_eq!(parse_rfc3339_ms("2026-02-28T23:00:00-01:00"), Ok(base));
        assert_eq!(parse_rfc3339_ms("2016-12-31T23:59:60Z"), parse_rfc3339_ms("2016-12-31T23:59:59Z"));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        use TimestampError::*;
        for (text, want) in [
            ("2026-03-01", Syntax),
            ("2026-03-01T00:00:00", Syntax),
            ("2026-03-01T00:00:00.Z", Syntax),
            ("2026-03-01T00:00:00Zjunk", Syntax),
            ("26-03-01T00:00:00Z", Syntax),
            ("2026-13-01T00:00:00Z", Range { part: "month" }),
            ("2026-02-29T00:00:00Z", Range { part: "day" }),
            ("2026-04-31T00:00:00Z", Range { part: "day" }),
            ("2026-01-01T24:00:00Z", Range { part: "hour" }),
            ("2026-01-01T00:60:00Z", Range { part: "minute" }),
            ("2026-01-01T00:00:00+24:00", Range { part: "offset" }),
            ("1969-12-31T23:59:59Z", EpochRange(-1000)),
            ("", Syntax),
            ("2026-01-01T00:00:00Z\u{e9}", Syntax),
        ] {
            assert_eq!(parse_rfc3339_ms(text), Err(want), "{text:?}");
        }
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    }

    #[test]
    fn civil_hour_splits_utc() {
        let ms = parse_rfc3339_ms("2026-11-25T23:59:59.999Z").unwrap();
        assert_eq!(civil_hour(ms), (2026, 11, 25, 23));
        assert_eq!(civil_hour(ms + 1), (2026, 11, 26, 0));
    }
}
