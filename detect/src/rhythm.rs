//! The daily and weekly rhythm of one agent's actions: what a span of its work is expected to hold at
//! this hour of this day, and how far the span is from that.
//!
//! Why. The tail baselines (`tail.rs`) judge a span against everything the agent did, whatever the
//! hour: an agent busy by day and idle by night has its daytime peaks inside its tail, so three times
//! its usual 01:00 load at 01:00 is not news to them, and a day on which it does half its usual work is
//! invisible, since only the upper tail is judged. A rhythm says what is usual *now*.
//!
//! The model works on `ln(1 + actions per span)`, where a multiplicative rhythm is additive and a single
//! burst cannot drag a profile far. Expected = the hour-of-week profile once two weeks are learned (a
//! working Monday morning is not a Sunday morning), the hour-of-day profile before that. The residual
//! (observed minus expected) has a mean and a variance learned per agent, to which the Poisson noise of
//! the expected count is added (on a log scale `1 / (1 + expected)`): a quiet hour's handful of actions
//! is not held to the precision of a busy hour's thousands. A span whose residual is `z` standard
//! deviations below (above) that, and that is at most `drop_ratio` (at least the rise ratio) of the
//! expected count, is a drop (a rise) relative to the rhythm. Each episode is reported once: no new
//! finding of the same direction until the residual is back within half of `z`.
//!
//! Robust to what it reports: a span's residual is clipped to three standard deviations before anything
//! learns from it, so an outage teaches the profile a little, not a zero. A sustained new level moves
//! the profile within the memory (a week per hour of day, four weeks per hour of week), so it is
//! reported once, then becomes the rhythm.
//!
//! Everything here is arithmetic on the state: no clock, no I/O, deterministic.

use serde::{Deserialize, Serialize};

/// Profile values are `ln(1 + x)` in units of 1/2048 (`u16`: up to `ln(1 + x) = 32`, beyond any count).
const UNIT: f64 = 2048.0;
/// Hours in the day profile, then in the week profile.
const DAY: usize = 24;
const WEEK: usize = 24 * 7;
/// A residual is clipped to this many standard deviations before it is learned.
const CLIP: f64 = 3.0;
/// Smallest variance of the residual beyond the Poisson noise (a perfectly regular agent's 1%).
const VAR_FLOOR: f64 = 1e-4;

/// How the rhythm is learned and judged (from `[detect.rhythm]` and the span length).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RhythmSpec {
    /// Spans per day.
    pub spans_per_day: f64,
    /// Memory of the day profile, in spans per hour slot (days × spans per hour).
    pub day_memory: f64,
    /// Memory of the week profile, in spans per hour slot (weeks × spans per hour).
    pub week_memory: f64,
    /// Memory of the residual's mean and variance, in spans.
    pub residual_memory: f64,
    /// Standard deviations from the expected residual that make a drop or a rise.
    pub z: f64,
}

/// A span judged against the rhythm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Actions the rhythm expects in this span (`exp(expected) - 1`).
    pub expected: f64,
    /// How many standard deviations the span's residual is from the usual one (negative: below).
    pub z: f64,
    /// Which profile the expectation came from.
    pub weekly: bool,
    /// The residual's usual spread, as a ratio: the span is usually within `expected ×/÷ spread`.
    pub spread: f64,
}

/// What one span was, relative to the rhythm, when it starts an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Episode {
    Drop,
    Rise,
}

/// One agent's rhythm: about 600 bytes, allocated only for agents busy for a day or more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rhythm {
    /// `ln(1 + actions per span)` by hour of day (UTC), then by hour of week (Monday 00:00 first).
    #[serde(rename = "p")]
    profile: Box<[u16]>,
    /// Spans each profile slot has learned (saturating): the running mean's count until the memory is
    /// reached, so every slot is an honest mean of its own spans, however young.
    #[serde(rename = "c")]
    visits: Box<[u8]>,
    /// Spans learned.
    #[serde(rename = "n")]
    spans: u32,
    /// Mean and variance of the residual beyond Poisson noise.
    #[serde(rename = "m")]
    mean: f32,
    #[serde(rename = "v")]
    var: f32,
    /// The episode being reported (-1 drop, 1 rise, 0 none).
    #[serde(rename = "e", default)]
    episode: i8,
}

impl Default for Rhythm {
    fn default() -> Self {
        Rhythm {
            profile: vec![0; DAY + WEEK].into_boxed_slice(),
            visits: vec![0; DAY + WEEK].into_boxed_slice(),
            spans: 0,
            mean: 0.0,
            var: 0.0,
            episode: 0,
        }
    }
}

fn load(v: u16) -> f64 {
    f64::from(v) / UNIT
}

fn store(x: f64) -> u16 {
    (x * UNIT).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// The variance, on the log scale, of a Poisson count whose `ln(1 + mean)` is `e`: `1 / (1 + mean)`.
fn poisson(e: f64) -> f64 {
    1.0 / (1.0 + e.exp_m1())
}

/// Hour of day and hour of week (Monday 00:00 = 0) of an epoch-millisecond instant, in UTC.
fn hours(start_ms: i64) -> (usize, usize) {
    let hour = start_ms.div_euclid(3_600_000);
    // 1970-01-01 was a Thursday: hour 0 of the epoch is hour 72 of its week.
    ((hour.rem_euclid(24)) as usize, ((hour + 72).rem_euclid(WEEK as i64)) as usize)
}

impl Rhythm {
    /// Days learned.
    pub fn days(&self, spec: &RhythmSpec) -> f64 {
        f64::from(self.spans) / spec.spans_per_day
    }

    /// The expectation (`ln(1 + actions)`) for a span starting at `start_ms` and whether it is the week
    /// profile's: the week profile after two weeks, the day profile after `from_days`, else none.
    fn expected(&self, spec: &RhythmSpec, start_ms: i64, from_days: f64) -> Option<(f64, bool)> {
        let days = self.days(spec);
        let (h, w) = hours(start_ms);
        if days >= 14.0 && self.visits[DAY + w] > 0 {
            Some((load(self.profile[DAY + w]), true))
        } else if days >= from_days && self.visits[h] > 0 {
            Some((load(self.profile[h]), false))
        } else {
            None
        }
    }

    /// The residual's spread around an expectation `e`: its own variance plus the Poisson noise of
    /// the expected count.
    fn sd(&self, e: f64) -> f64 {
        (f64::from(self.var) + VAR_FLOOR + poisson(e)).sqrt()
    }

    /// Judges a span of `x` actions starting at `start_ms` (before it is learned), or `None` while the
    /// rhythm is too young to say.
    pub fn judge(&self, spec: &RhythmSpec, start_ms: i64, x: f64) -> Option<Verdict> {
        // The residual's spread is learned from the second day on, so judge from the third.
        if self.days(spec) < 3.0 {
            return None;
        }
        let (e, weekly) = self.expected(spec, start_ms, 2.0)?;
        let z = ((1.0 + x).ln() - e - f64::from(self.mean)) / self.sd(e);
        let spread = (f64::from(self.var) + VAR_FLOOR).sqrt().exp();
        Some(Verdict { expected: e.exp_m1(), z, weekly, spread })
    }

    /// Whether a verdict starts an episode worth reporting, and records it: a drop or rise is said once,
    /// and the next of the same direction only after a span back within half of `z`. A span beyond `z`
    /// that is not `eligible` (too small to matter) neither starts nor ends an episode.
    pub fn episode(&mut self, spec: &RhythmSpec, v: &Verdict, eligible: bool) -> Option<Episode> {
        if v.z.abs() >= spec.z && !eligible {
            return None;
        }
        let now = if v.z <= -spec.z {
            -1
        } else if v.z >= spec.z {
            1
        } else if v.z.abs() < spec.z / 2.0 {
            0
        } else {
            // Between half and all of z: an episode under way goes on, none starts.
            return None;
        };
        let was = std::mem::replace(&mut self.episode, now);
        match now {
            -1 if was != -1 => Some(Episode::Drop),
            1 if was != 1 => Some(Episode::Rise),
            _ => None,
        }
    }

    /// Learns a span of `x` actions starting at `start_ms`.
    pub fn learn(&mut self, spec: &RhythmSpec, start_ms: i64, x: f64) {
        let lx = (1.0 + x).ln();
        let (h, w) = hours(start_ms);
        // The residual's mean and variance, against the expectation judged by, from the first day on.
        if let Some((e, _)) = self.expected(spec, start_ms, 1.0) {
            let sd = self.sd(e);
            let mean = f64::from(self.mean);
            let r = mean + (lx - e - mean).clamp(-CLIP * sd, CLIP * sd);
            let b = 1.0
                / (self.days(spec) - 1.0).mul_add(spec.spans_per_day, 1.0).clamp(1.0, spec.residual_memory);
            let new_mean = mean + b * (r - mean);
            let dev = (r - new_mean).powi(2) - poisson(e);
            self.mean = new_mean as f32;
            self.var = (f64::from(self.var) + b * (dev - f64::from(self.var))).max(0.0) as f32;
        }
        // Each profile learns the span clipped to CLIP spreads around its own value (an outage or a
        // burst teaches little), a running mean of its own spans until its memory is reached.
        for (slot, memory) in [(h, spec.day_memory), (DAY + w, spec.week_memory)] {
            let seen = self.visits[slot];
            let d = load(self.profile[slot]);
            let target = if seen == 0 {
                lx
            } else {
                let sd = self.sd(d);
                d + (lx - d).clamp(-CLIP * sd, CLIP * sd)
            };
            let a = 1.0 / (f64::from(seen) + 1.0).min(memory);
            self.profile[slot] = store(d + a * (target - d));
            self.visits[slot] = seen.saturating_add(1);
        }
        self.spans = self.spans.saturating_add(1);
    }

    /// Bytes this rhythm holds.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Rhythm>() + self.profile.len() * 2 + self.visits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN_MS: i64 = 16 * 60_000;

    fn spec() -> RhythmSpec {
        let per_hour = 3_600_000.0 / SPAN_MS as f64;
        RhythmSpec {
            spans_per_day: 86_400_000.0 / SPAN_MS as f64,
            day_memory: 7.0 * per_hour,
            week_memory: 4.0 * per_hour,
            residual_memory: 3.0 * 86_400_000.0 / SPAN_MS as f64,
            z: 5.0,
        }
    }

    /// A day-and-night agent: `busy` actions per span from 08:00 to 20:00 UTC on weekdays, `quiet` at
    /// night and on weekends, with a deterministic wobble of ±10%.
    fn usual(start: i64, busy: f64, quiet: f64) -> f64 {
        let (h, w) = hours(start);
        let weekend = w >= 5 * 24;
        let base = if (8..20).contains(&h) && !weekend { busy } else { quiet };
        let wobble = ((start / SPAN_MS) % 7) as f64 / 30.0 - 0.1;
        (base * (1.0 + wobble)).round()
    }

    /// Learns `days` of the usual traffic from a Monday 00:00, returning the next span's start.
    fn learned(days: i64) -> (Rhythm, i64) {
        let s = spec();
        let mut r = Rhythm::default();
        // 2024-01-01 was a Monday.
        let mut t = 1_704_067_200_000;
        let end = t + days * 86_400_000;
        while t < end {
            let x = usual(t, 200.0, 10.0);
            if let Some(v) = r.judge(&s, t, x) {
                r.episode(&s, &v, true);
            }
            r.learn(&s, t, x);
            t += SPAN_MS;
        }
        (r, t)
    }

    #[test]
    fn hours_of_the_week_start_on_monday() {
        // 2024-01-01 00:00 UTC, a Monday; 2024-01-07 23:00, the Sunday after.
        assert_eq!(hours(1_704_067_200_000), (0, 0));
        assert_eq!(hours(1_704_067_200_000 + 6 * 86_400_000 + 23 * 3_600_000), (23, 167));
    }

    #[test]
    fn a_young_rhythm_says_nothing() {
        let (r, t) = learned(2);
        assert_eq!(r.judge(&spec(), t, 0.0), None);
    }

    #[test]
    fn usual_days_are_not_news_and_a_quiet_working_hour_is() {
        let s = spec();
        let (mut r, t) = learned(21);
        // Monday of the fourth week, 10:00: the usual load is ordinary, a tenth of it a drop.
        let ten = t + 10 * 3_600_000;
        let v = r.judge(&s, ten, 200.0).unwrap();
        assert!(v.weekly && v.z.abs() < 2.0, "{v:?}");
        assert!((v.expected - 200.0).abs() < 40.0, "{v:?}");
        let v = r.judge(&s, ten, 20.0).unwrap();
        assert!(v.z < -s.z, "{v:?}");
        assert_eq!(r.episode(&s, &v, true), Some(Episode::Drop));
        // Said once: the next span as low starts nothing; a usual one ends the episode.
        assert_eq!(r.episode(&s, &v, true), None);
        let ok = r.judge(&s, ten + SPAN_MS, 200.0).unwrap();
        assert_eq!(r.episode(&s, &ok, true), None);
        assert_eq!(r.episode(&s, &v, true), Some(Episode::Drop));
    }

    #[test]
    fn the_weekend_and_the_night_are_judged_against_their_own_hours() {
        let s = spec();
        let (r, t) = learned(21);
        // Saturday 10:00 at the quiet level is ordinary; the weekday load then is a rise.
        let saturday = t + 5 * 86_400_000 + 10 * 3_600_000;
        let v = r.judge(&s, saturday, 10.0).unwrap();
        assert!(v.z.abs() < 2.0, "{v:?}");
        let v = r.judge(&s, saturday, 200.0).unwrap();
        assert!(v.z > s.z, "{v:?}");
        // 03:00 on a weekday: a few more actions than usual is noise, not news.
        let night = t + 3 * 3_600_000;
        let v = r.judge(&s, night, 16.0).unwrap();
        assert!(v.z.abs() < s.z, "{v:?}");
    }

    #[test]
    fn an_outage_teaches_little_and_a_new_level_is_learned() {
        let s = spec();
        let (mut r, mut t) = learned(21);
        let before = r.judge(&s, t + 10 * 3_600_000, 200.0).unwrap().expected;
        // A working day with nothing at all: clipped, so the next Monday still expects about as much.
        for _ in 0..(86_400_000 / SPAN_MS) {
            r.learn(&s, t, 0.0);
            t += SPAN_MS;
        }
        let after = r.judge(&s, t + 6 * 86_400_000 + 10 * 3_600_000, 200.0).unwrap().expected;
        assert!(after > 0.6 * before, "{before} then {after}");
        // Four weeks at half the load: that is the rhythm now.
        let end = t + 28 * 86_400_000;
        while t < end {
            let x = (usual(t, 200.0, 10.0) / 2.0).round();
            r.learn(&s, t, x);
            t += SPAN_MS;
        }
        let v = r.judge(&s, t + 10 * 3_600_000, 100.0).unwrap();
        assert!(v.z.abs() < 2.5, "{v:?}");
    }

    #[test]
    fn the_rhythm_survives_a_snapshot() {
        let (r, t) = learned(15);
        let back: Rhythm = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.judge(&spec(), t, 50.0), r.judge(&spec(), t, 50.0));
    }
}
