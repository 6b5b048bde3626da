//! The count and volume family: actions, bytes, denials and tokens per window and per span against
//! each measure's tail baseline, and the cumulative (CUSUM) detector for slow rises.

use super::*;

/// The time scales each measure is judged at (the window and the span): a window's tail probability
/// is multiplied by this before it is compared with a detector's p-value, so that judging twice does
/// not double the false findings.
pub(super) const SCALES: f64 = 2.0;
/// How many cooldown periods back the cumulative detector follows an incident it keeps open (a day at
/// the default 15 minutes; see `ongoing_key`). A count of periods, not a time: a short cooldown must
/// not make the search long.
const FOLLOW_PERIODS: i64 = 96;
/// How long a rise goes on, from the start of its incident's period, before it is high (`slow_incident`).
const SLOW_HIGH_MS: i64 = 3_600_000;

/// Sums the window into its span, and judges and learns a span once it is complete (its last window
/// closed, or a window of a later span did): spans aligned on event time, closed in window order, so
/// the result does not depend on arrival order.
pub(super) fn spans(
    cfg: &Compiled,
    id: &str,
    agent: &mut AgentState,
    w: &Window,
    start: i64,
    observed: [u64; MEASURES.len()],
    found: &mut Vec<(Finding, u64)>,
) {
    let current = start.div_euclid(cfg.span_ms).clamp(i64::from(NO_SPAN) + 1, i64::from(i32::MAX)) as i32;
    let pending = agent.levels.pending;
    if pending != NO_SPAN && pending != current {
        close_span(cfg, id, agent, w, pending, found);
    }
    if agent.levels.pending == NO_SPAN {
        let last = agent.levels.last_span;
        let gap = if last == NO_SPAN { 0 } else { (i64::from(current) - i64::from(last) - 1).max(0) as u64 };
        for t in &mut agent.levels.per_span {
            t.learn_zeros(gap, cfg.keep_span);
        }
        // An empty span carries nothing beyond the usual high: each one drains the excess run.
        let run = &mut agent.levels.excess;
        if run.as_mut().is_some_and(|r| !r.drain(gap)) {
            *run = None;
        }
        rhythm_gap(cfg, id, agent, last, gap, found);
        let levels = &mut agent.levels;
        levels.pending = current;
        levels.span_sum = [0; SPANNED.len()];
    }
    for (sum, &m) in agent.levels.span_sum.iter_mut().zip(&SPANNED) {
        *sum = sum.saturating_add(observed[m]);
    }
    if start + cfg.window_ms >= (i64::from(current) + 1) * cfg.span_ms {
        close_span(cfg, id, agent, w, current, found);
    }
}

pub(super) fn close_span(
    cfg: &Compiled,
    id: &str,
    agent: &mut AgentState,
    w: &Window,
    index: i32,
    found: &mut Vec<(Finding, u64)>,
) {
    let base = &cfg.raw.baseline;
    let warm = u64::from(agent.windows) >= base.warmup_windows.saturating_mul(base.span_windows)
        && u64::from(agent.events) >= base.warmup_events;
    let levels = &mut agent.levels;
    let sums = levels.span_sum;
    let mut learned = sums.map(|x| x as f64);
    if warm {
        let from = i64::from(index) * cfg.span_ms;
        let span = (from, from + cfg.span_ms);
        for (s, &m) in SPANNED.iter().enumerate() {
            let q = MEASURES[m];
            let spec = cfg.spike(q.kind());
            let memory = cfg.memory_windows / base.span_windows as f64;
            let x = sums[s] as f64;
            let tail = &levels.per_span[s];
            let mut j = tail.judge(x, base.tail_quantile, spec.p_value, q.counts_actions(), memory);
            // The excess detector reads the reach of the bytes written (a tail fit) when a run may start
            // (a span above the usual high) or goes on (it may report and fix its yardsticks again), which
            // a plain judgement leaves out for an ordinary value; judged again fully, the rest of the
            // judgement is the same. Most spans of most agents need neither.
            let excess = s == EXCESS && cfg.raw.slow.enabled && cfg.raw.slow.excess;
            if excess && (x > j.high || levels.excess.is_some()) && !j.threshold.is_finite() {
                j = tail.judge_fully(x, base.tail_quantile, spec.p_value, q.counts_actions(), memory);
            }
            learned[s] = robust(&j, spec.p_value, learned[s]);
            let key = span_key(cfg, &agent.open, q.kind(), span);
            found.extend(spike(cfg, q, spec, id, w, span, sums[s], &j, None).map(|f| (f, key)));
            // The span's surprise adds to the cumulative sum too: a rise too small to stand out in any
            // one window can stand out in a quarter of an hour's total.
            if let Some(c) = CUMULATIVE.iter().position(|&i| i == m) {
                let f = slow_rise(cfg, q, id, w, (&mut levels.slow, c), 0, sums[s], &j);
                found.extend(f.map(|f| slow_incident(cfg, &agent.open, f, key)));
            }
            if excess {
                found.extend(excess_rise(cfg, id, w, (&mut levels.excess, &agent.open), index, sums[s], &j));
            }
        }
    }
    for (t, x) in levels.per_span.iter_mut().zip(learned) {
        t.learn(x, cfg.keep_span);
    }
    let samples = (w.start.div_euclid(cfg.span_ms) == i64::from(index)).then_some(w);
    rhythm_span(cfg, id, agent, index, sums[0], samples, found);
    let levels = &mut agent.levels;
    levels.last_span = index;
    levels.pending = NO_SPAN;
    levels.span_sum = [0; SPANNED.len()];
}

/// The incident key of a finding on a span: a span reaches over two cooldown periods, so it joins an
/// incident of its kind already open in the period of its first window, else it is keyed by the period
/// of its last window, as a finding on that window would be. A burst seen at both time scales is one
/// incident, whichever scale saw it first.
fn span_key(cfg: &Compiled, open: &[OpenFinding], kind: FindingKind, (from, to): (i64, i64)) -> u64 {
    let first = bucket(cfg, from);
    if open.iter().any(|o| o.kind == kind && o.key == fold_key(first)) {
        first
    } else {
        bucket(cfg, to - cfg.window_ms)
    }
}

/// What a baseline learns from a value it judged: the value itself, or, when it was surprising at the
/// detector's p-value, the threshold it crossed. An outlier is one observation at the edge of the usual,
/// not a lesson that outliers of its size are normal (which would hide the next one); a sustained new
/// level still becomes the baseline, since each window of it raises the edge a little.
pub(super) fn robust(j: &Judgement, p_value: f64, x: f64) -> f64 {
    if surprising(j, p_value) && j.threshold.is_finite() { x.min(j.threshold) } else { x }
}

/// Whether a judged value is surprising at a detector's p-value, counting both time scales it is judged
/// at (`SCALES`).
pub(super) fn surprising(j: &Judgement, p_value: f64) -> bool {
    j.p * SCALES < p_value
}

impl Excess {
    /// `spans` empty spans: each carries nothing, so the run loses one usual high per span. Whether
    /// anything is left.
    pub(super) fn drain(&mut self, spans: u64) -> bool {
        let left = f64::from(self.sum) - f64::from(self.high) * spans as f64;
        self.sum = left.max(0.0) as f32;
        left > 0.0
    }
}

/// The excess detector (Page's CUSUM on the bytes themselves): each span of bytes written or sent adds
/// what it carries beyond the agent's usual high per span (below it, it takes away; the sum never goes
/// under zero, and empty spans drain it). When the sum reaches `slow.excess_interval` times the agent's
/// reach (how far its spans above the usual high go beyond it, on average), a burst's worth of bytes
/// many times over has left, spread thin, and the run is reported.
///
/// The reach, not the one-span threshold, is the unit: the threshold hangs on the tail's fitted shape,
/// which a handful of excesses cannot pin down (see `tail::BOUNDED_EXCESSES`), while the mean excess is
/// the plainest thing those excesses say. At the default of 16 reaches the interval is about what one
/// span would need beyond the usual high to be a finding on its own for a tail known to be bounded, and
/// half of it for an exponential one.
///
/// The yardsticks (the usual high, the interval) are fixed when a run begins, with a span above the
/// usual high: the baseline keeps learning the run's spans, robustly, and a yardstick that moved with
/// every span would chase the trickle instead of measuring it. At each report the interval is taken
/// off the sum and the yardsticks are fixed again from the baseline as it then is, so a trickle that
/// goes on is reported again each time another interval has left, as updates of one incident (high
/// once it has gone on for an hour, as for `slow_rise`), while a new level the baseline has learned
/// drains the run and ends it: it is reported once, then it is the baseline.
///
/// Why bytes and not surprise: an agent whose own writes are large and bursty hides an upload stream
/// under every span's usual high, so no span is surprising and the cumulative surprise stays at zero,
/// but the bytes beyond that high still add up, quarter after quarter.
pub(super) fn excess_rise(
    cfg: &Compiled,
    agent: &str,
    w: &Window,
    (slot, open): (&mut Option<Box<Excess>>, &[OpenFinding]),
    index: i32,
    observed: u64,
    j: &Judgement,
) -> Option<(Finding, u64)> {
    let slow = &cfg.raw.slow;
    let x = observed as f64;
    let fixed = |j: &Judgement| (j.high as f32, (j.reach * slow.excess_interval) as f32);
    let usable = j.high > 0.0 && j.reach > 0.0;
    let run = match slot {
        Some(run) => run,
        None if usable && x > j.high => {
            let (high, interval) = fixed(j);
            slot.insert(Box::new(Excess { sum: 0.0, high, interval, from: index, incident: 0 }))
        }
        None => return None,
    };
    let (high, interval) = (f64::from(run.high), f64::from(run.interval));
    let sum = f64::from(run.sum) + x - high;
    if sum <= 0.0 {
        *slot = None;
        return None;
    }
    run.sum = sum as f32;
    // A trickle is reported on a span that adds to it, and not on its first: one span that carries the
    // interval alone is a spike, the spike detector's to judge with its floors.
    if sum < interval || run.from == index || x <= high {
        return None;
    }
    let (from, to) = (i64::from(run.from) * cfg.span_ms, (i64::from(index) + 1) * cfg.span_ms);
    let spans = i64::from(index) - i64::from(run.from) + 1;
    let mut f = window_finding(cfg, FindingKind::DataSpike, Severity::Medium, agent, w);
    (f.window_start, f.window_end, f.ts) = (from, to, to);
    f.score = round3(sum / interval);
    let per = human_duration(cfg.span_ms / 1000);
    // The reach the run's interval was fixed from.
    let reach = interval / slow.excess_interval;
    f.summary = format!(
        "{agent} wrote or sent {} beyond its usual high of {} per {per} over {} ({spans} spans of {per}): \
         {} times the {} its spans above that high usually carry beyond it",
        human_bytes(sum),
        human_bytes(high),
        human_duration((to - from) / 1000),
        slow.excess_interval,
        human_bytes(reach),
    );
    let e = &mut f.evidence;
    e.insert("detector".into(), json!("excess"));
    e.insert("measure".into(), json!(Quantity::Written.name()));
    e.insert("excess_bytes".into(), json!(sum.round()));
    e.insert("interval_bytes".into(), json!(interval.round()));
    e.insert("reach_bytes".into(), json!(reach.round()));
    e.insert("baseline_high".into(), json!(round3(high)));
    e.insert("observed".into(), json!(observed));
    e.insert("spans".into(), json!(spans));
    e.insert("span_seconds".into(), json!(cfg.span_ms / 1000));
    e.insert("p_value".into(), json!(j.p));
    let reported = run.incident != 0;
    let fresh = if reported { run.incident } else { span_key(cfg, open, FindingKind::DataSpike, (from, to)) };
    let (f, key) = slow_incident(cfg, open, Rise { finding: f, going_on: reported }, fresh);
    run.sum = (sum - interval) as f32;
    if usable {
        (run.high, run.interval) = fixed(j);
    }
    run.incident = key;
    Some((f, key))
}

/// A finding of the cumulative detector, and whether its sum was above the threshold already (the rise
/// it reported goes on) or has just crossed it (a new incident).
pub(super) struct Rise {
    finding: Finding,
    going_on: bool,
}

/// The key of a finding of a rise that goes on: the incident of its kind still open (its latest finding
/// at most two cooldowns before `ts`), else `fresh`. A slow rise lasts longer than a cooldown
/// period, and it is one incident however long: each window that keeps it above the threshold folds
/// into the incident of its first finding, which is updated when its severity rises. An incident is
/// followed back `FOLLOW_PERIODS` periods; a rise still going after that is reported again.
fn ongoing_key(cfg: &Compiled, open: &[OpenFinding], kind: FindingKind, ts: i64, fresh: u64) -> u64 {
    let period = cfg.cooldown_ms.max(1);
    let now = bucket(cfg, ts);
    let recent = |o: &&OpenFinding| o.kind == kind && o.last_ts >= ts.saturating_sub(2 * period);
    let Some(latest) = open.iter().filter(recent).max_by_key(|o| o.last_ts) else { return fresh };
    (0..=FOLLOW_PERIODS)
        .map(|k| now.wrapping_sub((k * period) as u64))
        .find(|&key| fold_key(key) == latest.key)
        .unwrap_or(fresh)
}

/// A finding of the cumulative detector joined to its incident (see `ongoing_key`); a rise that has
/// gone on for an hour since its incident opened is high: a trickle that does not stop is the
/// exfiltration that matters.
pub(super) fn slow_incident(cfg: &Compiled, open: &[OpenFinding], rise: Rise, fresh: u64) -> (Finding, u64) {
    let mut f = rise.finding;
    let key = if rise.going_on { ongoing_key(cfg, open, f.kind, f.ts, fresh) } else { fresh };
    let lasted = f.ts.saturating_sub(key as i64);
    if rise.going_on && lasted >= SLOW_HIGH_MS {
        f.severity = Severity::High;
        f.summary = format!(
            "{}; still rising {} after its incident opened",
            f.summary,
            human_duration(lasted / 1000)
        );
        f.evidence.insert("rising_seconds".into(), json!(lasted / 1000));
    }
    (f, key)
}

/// Adds where a window's value stands among the windows of the agent's role (`peer_percentile`: the
/// percentage of them below it) to a finding's evidence, once the role's baseline has
/// `baseline.peer_min_windows` of history and the value is within what it keeps.
pub(super) fn peer_percentile(cfg: &Compiled, mut f: Finding, peers: Option<&Tail>, x: u64) -> Finding {
    let known = peers.filter(|t| t.weight() >= cfg.raw.baseline.peer_min_windows as f64);
    if let Some(share) = known.and_then(|t| t.share_at_least(x as f64)) {
        f.evidence.insert("peer_percentile".into(), json!(round3(100.0 * (1.0 - share))));
    }
    f
}

/// How surprising `x` is as one window's `q` under `tail` (the agent's own baseline, or its role's);
/// with `fully`, with the threshold worked out even when it is not surprising (see [`Tail::judge`]).
pub(super) fn judge_window(cfg: &Compiled, tail: &Tail, q: Quantity, x: u64, fully: bool) -> Judgement {
    let p_value = cfg.spike(q.kind()).p_value;
    let (quantile, count, memory) = (cfg.raw.baseline.tail_quantile, q.counts_actions(), cfg.memory_windows);
    if fully {
        tail.judge_fully(x as f64, quantile, p_value, count, memory)
    } else {
        tail.judge(x as f64, quantile, p_value, count, memory)
    }
}

/// The empty spans between an agent's last span and its next: each is judged (an agent silent when it
/// is usually busy is one `volume_drop`) and learned as zero by its rhythm. After more than a week of
/// silence the rhythm starts over: it described an agent that is not there any more.
fn rhythm_gap(
    cfg: &Compiled,
    id: &str,
    agent: &mut AgentState,
    last: i32,
    gap: u64,
    found: &mut Vec<(Finding, u64)>,
) {
    if agent.rhythm.is_none() || gap == 0 {
        return;
    }
    if gap as f64 > 7.0 * cfg.rhythm.spans_per_day {
        agent.rhythm = None;
        return;
    }
    for k in 1..=gap as i32 {
        rhythm_span(cfg, id, agent, last.saturating_add(k), 0, None, found);
    }
}

/// Judges one span's actions against the agent's rhythm, then learns them: a drop far below what the
/// hour usually holds is a `volume_drop`, a rise far above it a `volume_spike` (`"detector": "rhythm"`),
/// each said once per episode. An agent gets a rhythm with its first span of at least `volume.min_count`
/// actions once it has been seen for a day: one that never is that busy has no drop worth reporting,
/// and a short-lived one no rhythm.
fn rhythm_span(
    cfg: &Compiled,
    id: &str,
    agent: &mut AgentState,
    index: i32,
    x: u64,
    w: Option<&Window>,
    found: &mut Vec<(Finding, u64)>,
) {
    let rc = &cfg.raw.rhythm;
    if !rc.enabled {
        return;
    }
    let spec = &cfg.rhythm;
    let volume = &cfg.raw.volume;
    let min = volume.min_count.max(1) as f64;
    let from = i64::from(index) * cfg.span_ms;
    let xf = x as f64;
    let day_windows = 86_400_000 / cfg.window_ms.max(1);
    if agent.rhythm.is_none() && xf >= min && i64::from(agent.windows) >= day_windows {
        agent.rhythm = Some(Box::default());
    }
    let Some(r) = agent.rhythm.as_deref_mut() else { return };
    if let Some(v) = r.judge(spec, from, xf) {
        // A drop is judged only against the same hour of the same weekday: before two weeks of
        // history, an agent's first quiet weekend would look like one.
        let eligible = if v.z < 0.0 {
            v.weekly && v.expected >= min && xf <= rc.drop_ratio * v.expected
        } else {
            volume.enabled && xf >= min && xf >= volume.min_ratio * v.expected
        };
        if let Some(episode) = r.episode(spec, &v, eligible) {
            let f = rhythm_finding(cfg, id, episode, (from, from + cfg.span_ms), x, &v, w);
            let key = span_key(cfg, &agent.open, f.kind, (from, from + cfg.span_ms));
            found.push((f, key));
        }
    }
    r.learn(spec, from, xf);
}

fn rhythm_finding(
    cfg: &Compiled,
    agent: &str,
    episode: Episode,
    (from, to): (i64, i64),
    observed: u64,
    v: &crate::rhythm::Verdict,
    w: Option<&Window>,
) -> Finding {
    let ratio = observed as f64 / v.expected.max(1.0);
    let (kind, severity) = match episode {
        Episode::Drop if observed == 0 => (FindingKind::VolumeDrop, Severity::Medium),
        Episode::Drop => (FindingKind::VolumeDrop, Severity::Low),
        Episode::Rise if ratio >= cfg.raw.volume.high_ratio => (FindingKind::VolumeSpike, Severity::High),
        Episode::Rise => (FindingKind::VolumeSpike, Severity::Medium),
    };
    // One-sided normal tail of the residual.
    let p = 0.5 * statrs::function::erf::erfc(v.z.abs() / std::f64::consts::SQRT_2);
    let profile = if v.weekly { "hour of the week" } else { "hour of the day" };
    let span = human_duration((to - from) / 1000);
    let summary = match episode {
        Episode::Drop if observed == 0 => format!(
            "{agent} made no actions in {span} where its {profile} usually holds about {} (z = {:.1})",
            two_digits(v.expected),
            v.z
        ),
        Episode::Drop | Episode::Rise => format!(
            "{agent} made {observed} actions in {span}, {}x what its {profile} usually holds ({}; z = {:.1})",
            two_digits(ratio),
            two_digits(v.expected),
            v.z
        ),
    };
    let mut evidence = Map::new();
    evidence.insert("detector".into(), json!("rhythm"));
    evidence.insert("observed".into(), json!(observed));
    evidence.insert("expected".into(), json!(round3(v.expected)));
    evidence.insert("ratio".into(), json!(round3(ratio)));
    evidence.insert("z".into(), json!(round3(v.z)));
    evidence.insert("threshold_z".into(), json!(cfg.rhythm.z));
    evidence.insert("usual_spread".into(), json!(round3(v.spread)));
    evidence.insert("profile".into(), json!(if v.weekly { "hour_of_week" } else { "hour_of_day" }));
    evidence.insert("span_seconds".into(), json!((to - from) / 1000));
    evidence.insert("p_value".into(), json!(p));
    Finding {
        finding_id: String::new(),
        kind,
        severity,
        agent_id: agent.to_owned(),
        ts: to,
        window_start: from,
        window_end: to,
        score: score(p),
        summary,
        evidence,
        event_ids: w.map(|w| w.samples.event_ids()).unwrap_or_default(),
    }
}

/// The cumulative detector (a CUSUM over event time): each window adds its surprise, `-log10 p` under
/// the agent's own baseline (at most `slow.max_window_score`, so one extreme window cannot raise it
/// alone: that is the per-window judge's work), less `slow.allowance`; the sum never goes below zero,
/// idle windows drain it, and when it reaches `slow.threshold` the rise is a finding and the sum starts
/// again. A stream of windows each only a little unusual (an exfiltration paced to stay under every
/// per-window threshold, a loop that grows slowly) adds up; ordinary traffic, whose windows are
/// surprising about one time in ten at most, drains it.
#[allow(clippy::too_many_arguments)]
pub(super) fn slow_rise(
    cfg: &Compiled,
    q: Quantity,
    agent: &str,
    w: &Window,
    (sums, c): (&mut [f32; CUMULATIVE.len()], usize),
    gap: u64,
    observed: u64,
    j: &Judgement,
) -> Option<Rise> {
    let slow = &cfg.raw.slow;
    if !slow.enabled {
        return None;
    }
    // A rise goes on while this measure's sum was above the threshold already, or another measure of
    // the same kind is above it (the reads and the uploads of one exfiltration are one incident).
    let above = |i: usize| f64::from(sums[i]) >= slow.threshold;
    let same_kind = |i: usize| i != c && MEASURES[CUMULATIVE[i]].kind() == q.kind();
    let going_on = above(c) || (0..CUMULATIVE.len()).any(|i| same_kind(i) && above(i));
    let sum = &mut sums[c];
    let surprise = score(j.p).min(slow.max_window_score);
    let drained = f64::from(*sum) - slow.allowance * gap as f64;
    // Held at twice the threshold: a rise that goes on keeps its incident open (every window above the
    // threshold folds into it), and once it stops the sum drains below the threshold within
    // `threshold / allowance` windows.
    let now = (drained.max(0.0) + surprise - slow.allowance).clamp(0.0, 2.0 * slow.threshold);
    *sum = now as f32;
    if now < slow.threshold {
        return None;
    }
    let mut f = window_finding(cfg, q.kind(), Severity::Medium, agent, w);
    f.score = round3(now);
    let (what, x, high) = match q {
        Quantity::Bytes => ("bytes moved", human_bytes(observed as f64), human_bytes(j.high)),
        Quantity::Written => ("bytes written or sent", human_bytes(observed as f64), human_bytes(j.high)),
        _ => ("actions", observed.to_string(), two_digits(j.high)),
    };
    f.summary = format!(
        "{agent}: a sustained rise in {what}, window after window above its baseline (cumulative surprise \
         {now:.1} >= {}); this window {x}, its usual high {high}",
        slow.threshold
    );
    let e = &mut f.evidence;
    e.insert("detector".into(), json!("cumulative"));
    e.insert("measure".into(), json!(q.name()));
    e.insert("cumulative_score".into(), json!(round3(now)));
    e.insert("threshold".into(), json!(slow.threshold));
    e.insert("allowance".into(), json!(slow.allowance));
    e.insert("observed".into(), json!(observed));
    e.insert("baseline_high".into(), json!(round3(j.high)));
    e.insert("p_value".into(), json!(j.p));
    Some(Rise { finding: f, going_on })
}

/// A window (or span) far in the tail of the agent's own baseline, and big enough to matter: at least
/// the detector's absolute floor (which only suppresses trivia) and `min_ratio` times the agent's usual
/// high. The finding carries the evidence an analyst reads in one glance. `peers` names the role when
/// the baseline is its agents' (for an agent that has none of its own yet).
#[allow(clippy::too_many_arguments)]
pub(super) fn spike(
    cfg: &Compiled,
    q: Quantity,
    spec: &SpikeConfig,
    agent: &str,
    w: &Window,
    (from, to): (i64, i64),
    observed: u64,
    j: &Judgement,
    peers: Option<&str>,
) -> Option<Finding> {
    let x = observed as f64;
    let p = (j.p * SCALES).min(1.0);
    if !spec.enabled || observed == 0 || p >= spec.p_value || observed < spec.min_count {
        return None;
    }
    if x < spec.min_ratio * j.high {
        return None;
    }
    let usual = j.high.max(1.0);
    let ratio = x / usual;
    let severity = if ratio >= spec.high_ratio { Severity::High } else { Severity::Medium };
    let mut f = window_finding(cfg, q.kind(), severity, agent, w);
    (f.window_start, f.window_end, f.ts) = (from, to, to);
    f.score = score(p);
    let span = human_duration((to - from) / 1000);
    let bytes = matches!(q, Quantity::Bytes | Quantity::Written);
    let did = did(q, observed);
    let usual = amount(q, j.high);
    let against = match (peers, j.high > 0.0) {
        (None, true) => format!(", {}x its usual high of {usual}", two_digits(ratio)),
        (None, false) => "; its recent history has none".to_owned(),
        (Some(role), high) => {
            let agent = if role.is_empty() {
                "an agent without a role".to_owned()
            } else {
                format!("a {role} agent")
            };
            let usual = if high {
                format!("{}x the usual high of {agent} ({usual})", two_digits(ratio))
            } else {
                format!("where {agent} usually has none")
            };
            format!(", {usual}; it has no baseline of its own yet")
        }
    };
    f.summary = format!("{agent} {did} in {span}{against} ({})", p_text(p));
    let e = &mut f.evidence;
    if let Some(role) = peers {
        // No baseline of its own yet: judged against what one agent of its role does in a window.
        e.insert("detector".into(), json!("peers"));
        e.insert("peer_group".into(), json!(role));
    }
    e.insert("measure".into(), json!(q.name()));
    e.insert("observed".into(), json!(observed));
    e.insert("span_seconds".into(), json!((to - from) / 1000));
    e.insert("baseline_median".into(), json!(round3(j.median)));
    e.insert("baseline_high".into(), json!(round3(j.high)));
    e.insert("threshold".into(), json!(j.threshold.ceil().min(u64::MAX as f64) as u64));
    e.insert("p_value".into(), json!(p));
    e.insert("ratio".into(), json!(round3(ratio)));
    e.insert("tail_shape".into(), json!(round3(j.shape)));
    if bytes && to - from == cfg.window_ms {
        e.insert("bytes_read".into(), json!(w.bytes_read));
        e.insert("bytes_written".into(), json!(w.bytes_written));
    }
    Some(f)
}

/// What an agent did, in a finding's words: `observed` of measure `q` in a window or span.
fn did(q: Quantity, observed: u64) -> String {
    match q {
        Quantity::Denials => format!("had {observed} actions denied"),
        Quantity::Tokens => format!("used {observed} model tokens"),
        Quantity::Bytes => format!("moved {}", human_bytes(observed as f64)),
        Quantity::Written => format!("wrote or sent {}", human_bytes(observed as f64)),
        Quantity::Actions => format!("made {observed} actions"),
    }
}

/// An amount of measure `q` (a baseline's high, a ceiling), in a finding's words.
fn amount(q: Quantity, x: f64) -> String {
    if matches!(q, Quantity::Bytes | Quantity::Written) { human_bytes(x) } else { two_digits(x) }
}

fn p_text(p: f64) -> String {
    if p < 1e-16 { "p < 1e-16".to_owned() } else { format!("p = {p:.1e}") }
}

/// The ceiling detector (see `CeilingConfig`): a window beyond the most of its measure (`followed`, an
/// index into `CUMULATIVE`) in a window lately, when the agent's baseline holds at least
/// `ceiling.min_windows` windows within a factor of the square root of two (two of its bins) below that
/// most, is a finding of severity low once its tail probability is below `ceiling.p_value`; the volume
/// detector's own floors still apply. Called for a window the volume detector did not report.
#[allow(clippy::too_many_arguments)]
pub(super) fn ceiling(
    cfg: &Compiled,
    q: Quantity,
    spec: &SpikeConfig,
    agent: &str,
    w: &Window,
    observed: u64,
    j: &Judgement,
    (peaks, followed, tail): (&Peaks, usize, &Tail),
) -> Option<Finding> {
    let c = &cfg.raw.ceiling;
    let x = observed as f64;
    // The floors first: they turn away nearly every window, and cheaply.
    if !c.enabled || observed < spec.min_count || x < spec.min_ratio * j.high {
        return None;
    }
    let most = peaks.most(followed);
    if most <= 0.0 || x <= most {
        return None;
    }
    let near = tail.weight_at_least(most / std::f64::consts::SQRT_2)?;
    if near < c.min_windows {
        return None;
    }
    // Kept to within 0.07% above (see `Peaks`); the values are whole numbers.
    let most = most.floor();
    let loose = SpikeConfig { p_value: c.p_value, ..spec.clone() };
    let span = (w.start, w.start + cfg.window_ms);
    let mut f = spike(cfg, q, &loose, agent, w, span, observed, j, None)?;
    f.severity = Severity::Low;
    let ratio = x / most;
    f.summary = format!(
        "{agent} {} in {}, beyond its ceiling: the most in a window lately was {}, and {} windows came \
         within 41% of it ({}x it; {})",
        did(q, observed),
        human_duration(cfg.window_ms / 1000),
        amount(q, most),
        near.round(),
        two_digits(ratio),
        p_text((j.p * SCALES).min(1.0)),
    );
    let e = &mut f.evidence;
    e.insert("detector".into(), json!("ceiling"));
    e.insert("ceiling".into(), json!(round3(most)));
    e.insert("ceiling_windows".into(), json!(round3(near)));
    e.insert("ceiling_ratio".into(), json!(round3(ratio)));
    Some(f)
}
