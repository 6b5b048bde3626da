//! `vigil eval`: runs detection over a simulated fleet and scores it against the simulator's labels.
//!
//! A finding is *true* when it is about a labelled agent at a time inside that agent's incident (from its
//! start to its end plus a grace period for windows to close). An incident is *detected* when at least
//! one true finding of a kind expected for it exists; its time to detect is from the incident's start to
//! the event time of the first such finding. Everything else is a false finding, and false findings are
//! reported per 100 agent-days, the unit an on-call rota thinks in.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use std::sync::Arc;

use vigil_detect::{Finding, FindingKind, Severity};
use vigil_ingest::source::{Chunk, LineReader, open_input};
use vigil_schemas::timestamp::parse_rfc3339_ms;

use crate::config::VigilConfig;
use crate::pipeline::{Item, Lane, Taken};
use crate::simulate::{IncidentKind, Label, Strength};
use crate::telemetry::Telemetry;

/// The finding kinds that count as catching each kind of incident: the behavioural detector meant for
/// it, and the hard limits that also fit.
pub fn expected_kinds(kind: IncidentKind) -> &'static [FindingKind] {
    match kind {
        IncidentKind::RunawayLoop => &[FindingKind::VolumeSpike, FindingKind::RateLimit],
        IncidentKind::DataExfiltration | IncidentKind::SlowExfiltration => {
            &[FindingKind::DataSpike, FindingKind::SessionLimit]
        }
        IncidentKind::TokenLoop => &[FindingKind::TokenSpike, FindingKind::BudgetLimit],
        IncidentKind::ScopeDrift | IncidentKind::ScopeCreep => &[FindingKind::ScopeDrift],
        IncidentKind::PolicyViolation => &[FindingKind::PolicyViolation],
        IncidentKind::SharedCredential => &[FindingKind::SharedCredential],
        IncidentKind::ModelSwap => &[FindingKind::ModelChange],
        IncidentKind::DeniedBurst => &[FindingKind::DeniedBurst],
        IncidentKind::BadModel => {
            &[FindingKind::PolicyViolation, FindingKind::DeniedBurst, FindingKind::CohortAnomaly]
        }
    }
}

/// What detection over an events file produced.
#[derive(Debug, Default)]
pub struct Detected {
    /// Every finding, updates folded (one per finding_id, at its highest severity and first time).
    pub findings: Vec<Finding>,
    /// Distinct agents seen.
    pub agents: usize,
    /// Valid events judged.
    pub events: u64,
    /// Lines that were not valid events.
    pub invalid: u64,
    /// Event-time span, first to last (ms).
    pub span_ms: i64,
}

/// Detection without an archive: lines in through a detached lane, findings kept (updates folded into
/// one per finding_id, at its highest severity and the time it was first found).
#[derive(Debug)]
pub struct Judge {
    lane: Lane,
    /// Lines taken so far: each line's position.
    position: u64,
    by_id: HashMap<String, usize>,
    detected: Detected,
}

impl Judge {
    /// A judge running `cfg` (its `[detect]` and `[input]` tables).
    pub fn new(cfg: &VigilConfig) -> Result<Judge, String> {
        let telemetry = Arc::new(Telemetry::new());
        let lane = Lane::detached("eval", &cfg.detect, &cfg.input, Vec::new(), telemetry)
            .map_err(|e| e.to_string())?;
        Ok(Judge { lane, position: 0, by_id: HashMap::new(), detected: Detected::default() })
    }

    /// Judges a batch of lines (NDJSON without the newlines).
    pub fn push<L: AsRef<[u8]>>(&mut self, lines: &[L]) -> Result<(), String> {
        let items: Vec<Item<'_>> = lines
            .iter()
            .map(|l| {
                self.position += 1;
                let bytes = l.as_ref();
                Item {
                    bytes,
                    size: bytes.len() as u64,
                    position: self.position,
                    refused_before: None,
                    claim: Default::default(),
                }
            })
            .collect();
        // Offline: the receive time only stamps archive rows, and a detached lane has none.
        let taken = self.lane.take(&items, 0).map_err(|e| e.to_string())?;
        for t in taken {
            match t {
                Taken::Accepted => self.detected.events += 1,
                Taken::Refused(_) => self.detected.invalid += 1,
                Taken::Blank | Taken::Skipped => {}
            }
        }
        self.keep();
        Ok(())
    }

    fn keep(&mut self) {
        let d = &mut self.detected;
        for f in &self.lane.output().findings {
            match self.by_id.get(&f.finding_id) {
                Some(&i) => {
                    // An update raises the severity; the incident was detected when it was first found.
                    if f.severity > d.findings[i].severity {
                        let first = d.findings[i].ts;
                        d.findings[i] = f.clone();
                        d.findings[i].ts = first;
                    }
                }
                None => {
                    self.by_id.insert(f.finding_id.clone(), d.findings.len());
                    d.findings.push(f.clone());
                }
            }
        }
    }

    /// Closes the open windows and returns everything found.
    pub fn finish(mut self) -> Result<Detected, String> {
        self.lane.finish().map_err(|e| e.to_string())?;
        self.keep();
        self.detected.agents = self.lane.agents();
        self.detected.span_ms = self.lane.event_span().map_or(0, |(first, last)| last - first);
        Ok(self.detected)
    }

    /// Events judged so far.
    pub fn events(&self) -> u64 {
        self.detected.events
    }
}

/// Runs detection over an NDJSON file (no archive). `progress` is told bytes read and events judged.
pub fn detect_file(
    cfg: &VigilConfig,
    path: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Detected, String> {
    let opened = open_input(path).map_err(|e| e.to_string())?;
    let consumed = opened.consumed.clone();
    let mut reader = LineReader::new(opened.reader, cfg.input.max_event_bytes, 0);
    let mut judge = Judge::new(cfg)?;
    let mut chunk = Chunk::default();
    loop {
        let more = reader
            .next_chunk(&mut chunk, cfg.input.batch_bytes)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if !more {
            break;
        }
        let lines: Vec<&[u8]> = chunk.lines.iter().map(|l| chunk.bytes(l)).collect();
        judge.push(&lines)?;
        progress(consumed.load(std::sync::atomic::Ordering::Relaxed), judge.events());
    }
    judge.finish()
}

/// Reads a labels file written by `vigil simulate --labels`.
pub fn read_labels(path: &Path) -> Result<Vec<Label>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Label>(l)
                .map_err(|e| format!("{}:{}: not a label: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Recall and timing for one kind of incident.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    /// Incident kind.
    pub kind: &'static str,
    /// Finding kinds that count as catching it.
    pub expected: Vec<&'static str>,
    /// Over every strength.
    #[serde(flatten)]
    pub all: Recall,
    /// Per strength that was injected, weakest first.
    pub by_strength: Vec<StrengthRow>,
}

/// Recall and timing of one kind at one strength.
#[derive(Debug, Clone, Serialize)]
pub struct StrengthRow {
    /// `weak`, `medium` or `strong`.
    pub strength: &'static str,
    /// Its recall and timing.
    #[serde(flatten)]
    pub recall: Recall,
}

/// How many incidents were found, and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct Recall {
    /// Labelled incidents.
    pub incidents: usize,
    /// Of those, detected.
    pub detected: usize,
    /// detected / incidents; none when there were no incidents (not a perfect score).
    pub recall: Option<f64>,
    /// Mean seconds from start to the first expected finding.
    pub mean_seconds_to_detect: Option<f64>,
    /// Worst seconds from start to the first expected finding.
    pub max_seconds_to_detect: Option<f64>,
}

impl Recall {
    /// From the delays of the incidents found, of `incidents` in all.
    fn of(incidents: usize, delays: &[f64]) -> Recall {
        Recall {
            incidents,
            detected: delays.len(),
            recall: (incidents > 0).then(|| delays.len() as f64 / incidents as f64),
            mean_seconds_to_detect: (!delays.is_empty())
                .then(|| delays.iter().sum::<f64>() / delays.len() as f64),
            max_seconds_to_detect: delays.iter().copied().reduce(f64::max),
        }
    }
}

/// Precision of one kind of finding.
#[derive(Debug, Clone, Serialize)]
pub struct FindingRow {
    /// Finding kind.
    pub kind: &'static str,
    /// Findings of the kind.
    pub findings: usize,
    /// Of those, inside a labelled incident.
    pub true_findings: usize,
    /// true / findings.
    pub precision: f64,
    /// False ones of severity high or critical.
    pub false_high: usize,
}

/// The whole score.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per incident kind.
    pub incidents: Vec<IncidentRow>,
    /// Per finding kind.
    pub findings: Vec<FindingRow>,
    /// Agents times days of the span.
    pub agent_days: f64,
    /// Findings outside every incident.
    pub false_findings: usize,
    /// Of those, severity high or critical.
    pub false_high: usize,
    /// False findings per 100 agent-days.
    pub false_per_100_agent_days: f64,
    /// False high-or-critical findings per 100 agent-days.
    pub false_high_per_100_agent_days: f64,
}

/// Scores findings against labels. `grace_ms` extends each incident past its end.
pub fn score(
    findings: &[Finding],
    labels: &[Label],
    agent_days: f64,
    grace_ms: i64,
) -> Result<Report, String> {
    struct Incident {
        kind: IncidentKind,
        strength: Strength,
        start: i64,
        end: i64,
        first: Option<i64>,
    }
    let mut by_agent: HashMap<&str, Vec<Incident>> = HashMap::new();
    for l in labels {
        let t = |s: &str| parse_rfc3339_ms(s).map_err(|e| format!("label for {}: {s:?}: {e}", l.agent_id));
        by_agent.entry(l.agent_id.as_str()).or_default().push(Incident {
            kind: l.kind,
            strength: l.strength,
            start: t(&l.start)?,
            end: t(&l.end)?,
            first: None,
        });
    }
    let mut per_kind: BTreeMap<FindingKind, (usize, usize, usize)> = BTreeMap::new();
    let (mut false_findings, mut false_high) = (0, 0);
    for f in findings {
        let mut matched = false;
        for inc in by_agent.get_mut(f.agent_id.as_str()).into_iter().flatten() {
            if f.ts >= inc.start && f.ts <= inc.end + grace_ms {
                matched = true;
                if expected_kinds(inc.kind).contains(&f.kind) {
                    inc.first = Some(inc.first.map_or(f.ts, |x| x.min(f.ts)));
                }
            }
        }
        let row = per_kind.entry(f.kind).or_default();
        row.0 += 1;
        if matched {
            row.1 += 1;
        } else {
            false_findings += 1;
            if f.severity >= Severity::High {
                false_high += 1;
                row.2 += 1;
            }
        }
    }
    let incidents = IncidentKind::ALL
        .iter()
        .map(|&kind| {
            let all: Vec<&Incident> = by_agent.values().flatten().filter(|i| i.kind == kind).collect();
            let recall = |of: &dyn Fn(&Incident) -> bool| {
                let chosen: Vec<&&Incident> = all.iter().filter(|i| of(i)).collect();
                let delays: Vec<f64> =
                    chosen.iter().filter_map(|i| i.first.map(|t| (t - i.start) as f64 / 1000.0)).collect();
                Recall::of(chosen.len(), &delays)
            };
            IncidentRow {
                kind: kind.as_str(),
                expected: expected_kinds(kind).iter().map(|k| k.as_str()).collect(),
                all: recall(&|_| true),
                by_strength: Strength::ALL
                    .into_iter()
                    .map(|s| StrengthRow { strength: s.as_str(), recall: recall(&|i| i.strength == s) })
                    .filter(|r| r.recall.incidents > 0)
                    .collect(),
            }
        })
        .collect();
    let rows = per_kind
        .into_iter()
        .map(|(kind, (n, t, fh))| FindingRow {
            kind: kind.as_str(),
            findings: n,
            true_findings: t,
            precision: if n == 0 { 1.0 } else { t as f64 / n as f64 },
            false_high: fh,
        })
        .collect();
    let per100 = |n: usize| if agent_days > 0.0 { n as f64 * 100.0 / agent_days } else { 0.0 };
    Ok(Report {
        incidents,
        findings: rows,
        agent_days,
        false_findings,
        false_high,
        false_per_100_agent_days: per100(false_findings),
        false_high_per_100_agent_days: per100(false_high),
    })
}

/// The report as tables for a terminal.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.0}s"));
    let _ = writeln!(
        o,
        "{:<18} {:>9} {:>8} {:>7} {:>10} {:>10}  counted as",
        "incident", "incidents", "detected", "recall", "mean TTD", "max TTD"
    );
    let row = |o: &mut String, name: &str, r: &Recall, counted: &str| {
        let _ = writeln!(
            o,
            "{:<18} {:>9} {:>8} {:>7} {:>10} {:>10}  {}",
            name,
            r.incidents,
            r.detected,
            r.recall.map_or("-".to_owned(), |r| format!("{r:.3}")),
            secs(r.mean_seconds_to_detect),
            secs(r.max_seconds_to_detect),
            counted
        );
    };
    for i in &r.incidents {
        row(&mut o, i.kind, &i.all, &i.expected.join(", "));
        // A kind injected at one strength only needs no breakdown.
        if i.by_strength.len() > 1 {
            for s in &i.by_strength {
                row(&mut o, &format!("  {}", s.strength), &s.recall, "");
            }
        }
    }
    let _ = writeln!(
        o,
        "\n{:<18} {:>9} {:>8} {:>9} {:>11}",
        "finding", "findings", "true", "precision", "false high"
    );
    for f in &r.findings {
        let _ = writeln!(
            o,
            "{:<18} {:>9} {:>8} {:>9.3} {:>11}",
            f.kind, f.findings, f.true_findings, f.precision, f.false_high
        );
    }
    let _ = writeln!(
        o,
        "\n{:.0} agent-days: {} false findings ({:.2} per 100 agent-days), {} of them high or critical ({:.2} per 100 agent-days)",
        r.agent_days,
        r.false_findings,
        r.false_per_100_agent_days,
        r.false_high,
        r.false_high_per_100_agent_days
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_raises_the_severity_and_keeps_the_time_it_was_first_found() {
        // Two days of a read a minute at 100-140 KB, then a minute of 1.2 MB (nine times the usual high: a medium data spike) and,
        // in the same cooldown period, a minute of 60 MB (the incident updated to high).
        let mut cfg = VigilConfig::default();
        cfg.detect.rate_limit_per_minute = 0;
        let mut judge = Judge::new(&cfg).unwrap();
        let lines: Vec<String> = (0..2890i64)
            .map(|m| {
                let bytes = match m {
                    2881 => 1_200_000,
                    2883 => 60_000_000,
                    _ => 100_000 + m % 5 * 10_000,
                };
                format!(
                    r#"{{"event_id":"e{m}","ts":{},"agent_id":"d1","action":"data.read","resource":"s3://a/b","bytes_read":{bytes}}}"#,
                    m * 60_000 + 1_000
                )
            })
            .collect();
        judge.push(&lines).unwrap();
        let found = judge.finish().unwrap().findings;
        assert_eq!(found.len(), 1, "one incident: {found:?}");
        assert_eq!(found[0].severity, Severity::High, "{found:?}");
        assert_eq!(found[0].ts, 2882 * 60_000, "first found at the end of its window: {found:?}");
    }
}
