//! Every counter, gauge and histogram vigil keeps, declared once, on the `prometheus` crate.
//!
//! One `Telemetry` per running pipeline (a file run, a Kafka member, `vigil serve`), shared by its
//! lanes, which update it once per batch. The run summary and the status line read from it, and
//! `/metrics` will expose its registry as it is. A registry per instance, not the process-wide default,
//! so that several pipelines in one process (the tests, the benches) keep separate books.
//!
//! Names follow Prometheus practice: `vigil_` prefix, `_total` for counters, base units (`_seconds`,
//! `_bytes`). No label carries an agent id: that cardinality belongs in the Parquet archive. Labels whose
//! values are known in advance (dead-letter reasons, finding kinds and severities, outcomes) are created
//! at zero, so a rate over them exists before the first occurrence and alert rules need no `absent()`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use vigil_detect::{FindingKind, Severity};
use vigil_schemas::Invalid;
use vigil_schemas::rows::{Action, Delivery, Mode, Transition};

use crate::pipeline::{Moved, Summary};

/// What became of an input line, the `outcome` label of `vigil_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid event: judged and archived.
    Accepted,
    /// A blank line: nothing to keep.
    Blank,
    /// Refused by the contract and dead-lettered.
    DeadLettered,
    /// Already archived by an earlier run (at or before the checkpoint), not taken again.
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Accepted, Outcome::Blank, Outcome::DeadLettered, Outcome::Skipped];

    const fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Blank => "blank",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Skipped => "skipped",
        }
    }
}

/// A stage of the per-batch loop, the `stage` label of `vigil_stage_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decode, validate and dedup.
    Classify,
    /// The detection engine.
    Detect,
    /// Rows into the archive's Arrow builders, and the fan-out of findings and decisions.
    Archive,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::Classify, Stage::Detect, Stage::Archive];

    const fn as_str(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::Detect => "detect",
            Stage::Archive => "archive",
        }
    }
}

/// Counts one lane gathered over one batch, added to the shared metrics in one go.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchCounts {
    /// Lines by outcome, in `Outcome::ALL` order.
    pub outcomes: [u64; 4],
    /// Dead letters by reason.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Events too late for their window.
    pub late: u64,
    /// Events of agents beyond `detect.max_agents`, not judged.
    pub overflow: u64,
    /// Agents forgotten after `detect.forget_idle_hours` idle.
    pub forgotten: u64,
}

impl BatchCounts {
    /// Counts one line.
    pub fn count(&mut self, outcome: Outcome) {
        self.outcomes[outcome as usize] += 1;
    }

    /// Counts one dead letter with its reason.
    pub fn dead_letter(&mut self, reason: &Invalid) {
        self.count(Outcome::DeadLettered);
        *self.reasons.entry(reason.code()).or_default() += 1;
    }
}

/// The metrics of one pipeline.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    recovered: IntCounter,
    input_bytes: IntCounter,
    late: IntCounter,
    overflow: IntCounter,
    forgotten: IntCounter,
    findings: IntCounterVec,
    transitions: IntCounterVec,
    deliveries: IntCounterVec,
    delivery_seconds: Histogram,
    owed: IntGaugeVec,
    attempts: IntCounterVec,
    halts: IntGaugeVec,
    checks: IntCounterVec,
    unauthorized: IntCounter,
    commands: IntCounterVec,
    lag: IntGaugeVec,
    batch_events: Histogram,
    stage_seconds: HistogramVec,
    archive_files: IntCounter,
    archive_bytes: IntCounter,
    flush_seconds: Histogram,
    uncovered: IntCounter,
    /// The first agents found covered by no policy (a few, for the summary).
    uncovered_names: Mutex<Vec<String>>,
    state_bytes: IntGauge,
    agents: IntGauge,
    /// Breaker transitions of this run, for the summary: not a metric, an agent is a label Prometheus
    /// must never see.
    moved: Mutex<Vec<Moved>>,
    /// Hashes of the distinct finding ids and of the agents that have one, for the summary ("45 findings
    /// on 8 agents": an incident that grows is archived once per update, and counted once here).
    found: Mutex<(HashSet<u64>, HashSet<u64>)>,
}

/// Registers `m` and hands it back; the names are fixed and distinct, so registration cannot fail.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry.register(Box::new(m.clone())).expect("metric names are unique and valid");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(r, IntCounter::new(name, help).expect("valid metric name"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

/// Buckets for per-batch stage latencies: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for events per batch: 1 to 100k.
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0];

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// Declares every metric, with the known label values at zero.
    pub fn new() -> Telemetry {
        let r = Registry::new();
        let events = counter_vec(
            &r,
            "vigil_events_total",
            "Input lines by what became of them: accepted (judged and archived), blank, dead_lettered, \
             skipped (archived by an earlier run)",
            &["outcome"],
        );
        for o in Outcome::ALL {
            events.with_label_values(&[o.as_str()]);
        }
        let dead_letters = counter_vec(
            &r,
            "vigil_dead_letters_total",
            "Lines refused by the event contract, by reason",
            &["reason"],
        );
        for code in Invalid::CODES {
            dead_letters.with_label_values(&[*code]);
        }
        let findings = counter_vec(
            &r,
            "vigil_findings_total",
            "Findings raised or raised in severity, by kind and severity",
            &["kind", "severity"],
        );
        for k in FindingKind::ALL {
            for s in Severity::ALL {
                findings.with_label_values(&[k.as_str(), s.as_str()]);
            }
        }
        let stage_seconds = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new("vigil_stage_seconds", "Time per batch in each stage of the pipeline")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["stage"],
            )
            .expect("valid metric name"),
        );
        for s in Stage::ALL {
            stage_seconds.with_label_values(&[s.as_str()]);
        }
        let transitions = counter_vec(
            &r,
            "vigil_breaker_transitions_total",
            "Breaker transitions (agent, cohort, fleet), by action, mode (shadow ones are only recorded) and \
             actor (a rule, or an operator through the API)",
            &["action", "mode", "actor"],
        );
        for a in Action::ALL {
            for m in Mode::ALL {
                for actor in ["rule", "operator"] {
                    transitions.with_label_values(&[a.as_str(), m.as_str(), actor]);
                }
            }
        }
        let deliveries = counter_vec(
            &r,
            "vigil_webhook_deliveries_total",
            "Webhook deliveries ended, by endpoint and outcome: delivered, failed (given up), disabled (410), \
             refused",
            &["endpoint", "outcome"],
        );
        let halts = registered(
            &r,
            IntGaugeVec::new(
                Opts::new("vigil_halts_in_force", "Halts in force (enforce mode), by scope"),
                &["scope"],
            )
            .expect("valid metric name"),
        );
        for sc in ["agent", "cohort", "fleet"] {
            halts.with_label_values(&[sc]);
        }
        let checks = counter_vec(
            &r,
            "vigil_check_requests_total",
            "Gateway checks answered, by verdict: allow, halted, bad_request",
            &["verdict"],
        );
        for v in ["allow", "halted", "bad_request"] {
            checks.with_label_values(&[v]);
        }
        let commands = counter_vec(
            &r,
            "vigil_control_commands_total",
            "Operator commands, by verb, scope and result: applied, unchanged, refused",
            &["verb", "scope", "result"],
        );
        for verb in ["halt", "resume"] {
            for scope in ["agent", "cohort", "fleet"] {
                for result in ["applied", "unchanged", "refused"] {
                    commands.with_label_values(&[verb, scope, result]);
                }
            }
        }
        let lag = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "vigil_kafka_consumer_lag",
                    "Kafka messages behind the partition's end, per assigned topic partition (librdkafka statistics)",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric name"),
        );
        let build = registered(
            &r,
            IntGaugeVec::new(
                Opts::new("vigil_build_info", "The running vigil's version, always 1"),
                &["version"],
            )
            .expect("valid metric name"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Telemetry {
            events,
            dead_letters,
            recovered: counter(
                &r,
                "vigil_recovered_events_total",
                "Items an interrupted run had journaled (answered) but not archived, judged again on start",
            ),
            input_bytes: counter(&r, "vigil_input_bytes_total", "Decompressed input bytes read"),
            late: counter(
                &r,
                "vigil_late_events_total",
                "Events behind the watermark: archived and checked per event, too late for their window",
            ),
            overflow: counter(
                &r,
                "vigil_agent_overflow_events_total",
                "Events of agents beyond detect.max_agents: archived, not judged (an agent_overflow finding says so)",
            ),
            forgotten: counter(
                &r,
                "vigil_agents_forgotten_total",
                "Agents whose state was freed after detect.forget_idle_hours without an event",
            ),
            findings,
            transitions,
            deliveries,
            delivery_seconds: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vigil_webhook_delivery_seconds",
                        "From a transition entering the outbox to its webhook answered 2xx",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric name"),
            ),
            owed: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vigil_webhook_owed",
                        "Webhook deliveries in the outbox not yet ended, by endpoint",
                    ),
                    &["endpoint"],
                )
                .expect("valid metric name"),
            ),
            attempts: counter_vec(
                &r,
                "vigil_webhook_attempts_total",
                "Webhook attempts of deliveries that ended, by endpoint (attempts beyond one are retries)",
                &["endpoint"],
            ),
            halts,
            checks,
            unauthorized: counter(
                &r,
                "vigil_api_unauthorized_total",
                "Requests refused for a missing or wrong token: control API, checks and event intake",
            ),
            commands,
            lag,
            batch_events: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("vigil_batch_events", "Input lines per batch taken by a lane")
                        .buckets(BATCH_BUCKETS.to_vec()),
                )
                .expect("valid metric name"),
            ),
            stage_seconds,
            archive_files: counter(&r, "vigil_archive_files_total", "Parquet files written to the archive"),
            archive_bytes: counter(&r, "vigil_archive_bytes_total", "Parquet bytes written to the archive"),
            flush_seconds: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vigil_archive_flush_seconds",
                        "Time to make one flush durable: encode, write, fsync, rename, checkpoint",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric name"),
            ),
            agents: registered(
                &r,
                IntGauge::new("vigil_agents_tracked", "Agents whose state the detection engine holds")
                    .expect("valid metric name"),
            ),
            uncovered: counter(
                &r,
                "vigil_agents_without_policy_total",
                "Agents seen that no policy covers: the allow-list checks are off for them",
            ),
            uncovered_names: Mutex::new(Vec::new()),
            state_bytes: registered(
                &r,
                IntGauge::new(
                    "vigil_state_bytes",
                    "Bytes of per-agent detector state in memory (as of each lane's last flush)",
                )
                .expect("valid metric name"),
            ),
            moved: Mutex::new(Vec::new()),
            found: Mutex::new((HashSet::new(), HashSet::new())),
            registry: r,
        }
    }

    /// Adds one batch's line counts.
    pub fn add_batch(&self, c: &BatchCounts) {
        let lines: u64 = c.outcomes.iter().sum();
        if lines == 0 {
            return;
        }
        for o in Outcome::ALL {
            let n = c.outcomes[o as usize];
            if n > 0 {
                self.events.with_label_values(&[o.as_str()]).inc_by(n);
            }
        }
        for (reason, n) in &c.reasons {
            self.dead_letters.with_label_values(&[*reason]).inc_by(*n);
        }
        self.late.inc_by(c.late);
        self.overflow.inc_by(c.overflow);
        self.forgotten.inc_by(c.forgotten);
        self.batch_events.observe(lines as f64);
    }

    /// Counts items an interrupted run had journaled and this one judged again.
    pub fn add_recovered(&self, n: u64) {
        self.recovered.inc_by(n);
    }

    /// Adds decompressed input bytes.
    pub fn add_input_bytes(&self, n: u64) {
        self.input_bytes.inc_by(n);
    }

    /// Counts a finding (new, or raised in severity).
    pub fn finding(&self, kind: FindingKind, severity: Severity, finding_id: &str, agent_id: &str) {
        self.findings.with_label_values(&[kind.as_str(), severity.as_str()]).inc();
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.0.insert(vigil_detect::stable_hash(&[finding_id.as_bytes()]));
        found.1.insert(vigil_detect::stable_hash(&[agent_id.as_bytes()]));
    }

    /// Counts a breaker transition, keeping what it moved for the run summary.
    pub fn transition(&self, t: &Transition) {
        let actor = match t.actor {
            vigil_schemas::rows::Actor::Rule(_) => "rule",
            vigil_schemas::rows::Actor::Operator(_) => "operator",
        };
        self.transitions.with_label_values(&[t.action.as_str(), t.mode.as_str(), actor]).inc();
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        // The summary lists a bounded number; the archive has them all.
        if moved.len() < 10_000 {
            moved.push(Moved {
                key: t.key(),
                action: t.action.as_str(),
                mode: t.mode.as_str(),
                actor: t.actor.wire(),
            });
        }
    }

    /// Sets the halts in force.
    pub fn halts_in_force(&self, agents: usize, cohorts: usize, fleet: bool) {
        self.halts.with_label_values(&["agent"]).set(agents as i64);
        self.halts.with_label_values(&["cohort"]).set(cohorts as i64);
        self.halts.with_label_values(&["fleet"]).set(i64::from(fleet));
    }

    /// Declares a webhook endpoint's series at zero (endpoints come from the config: bounded).
    pub fn endpoint(&self, name: &str) {
        for d in [Delivery::Delivered, Delivery::Failed, Delivery::Disabled, Delivery::Refused] {
            self.deliveries.with_label_values(&[name, d.as_str()]);
        }
        self.attempts.with_label_values(&[name]);
        self.owed.with_label_values(&[name]).set(0);
    }

    /// Counts a webhook delivery that ended after `attempts`, and how long a successful one took.
    pub fn delivery(&self, endpoint: &str, outcome: Delivery, attempts: u32, seconds: f64) {
        self.deliveries.with_label_values(&[endpoint, outcome.as_str()]).inc();
        self.attempts.with_label_values(&[endpoint]).inc_by(u64::from(attempts));
        if outcome == Delivery::Delivered {
            self.delivery_seconds.observe(seconds);
        }
    }

    /// Moves an endpoint's deliveries owed by `by`.
    pub fn owed(&self, endpoint: &str, by: i64) {
        self.owed.with_label_values(&[endpoint]).add(by);
    }

    /// Sum of a labelled metric's samples whose `label` is (or, with `not`, is not) `value`.
    fn sum_where(c: &dyn prometheus::core::Collector, label: &str, value: &str, not: bool) -> f64 {
        c.collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                let hit = m.get_label().iter().any(|l| l.name() == label && l.value() == value);
                hit != not
            })
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }

    /// Counts a gateway check by verdict (`allow`, `halted`, `bad_request`).
    pub fn check(&self, verdict: &str) {
        self.checks.with_label_values(&[verdict]).inc();
    }

    /// Counts a request refused for its token.
    pub fn unauthorized(&self) {
        self.unauthorized.inc();
    }

    /// Sets the consumer lag of the partitions this member owns (others are removed).
    pub fn consumer_lag(&self, lag: &BTreeMap<(String, i32), i64>) {
        self.lag.reset();
        for ((topic, partition), n) in lag {
            self.lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(*n);
        }
    }

    /// Counts an operator command.
    pub fn command(&self, verb: &str, scope: &str, result: &str) {
        self.commands.with_label_values(&[verb, scope, result]).inc();
    }

    /// Records the time a stage took over one batch.
    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.stage_seconds.with_label_values(&[stage.as_str()]).observe(seconds);
    }

    /// Records a durable flush.
    pub fn flushed(&self, files: u64, bytes: u64, seconds: f64) {
        self.archive_files.inc_by(files);
        self.archive_bytes.inc_by(bytes);
        self.flush_seconds.observe(seconds);
    }

    /// Moves the tracked-agents gauge by a lane's change.
    pub fn agents_changed(&self, by: i64) {
        self.agents.add(by);
    }

    /// An agent no policy covers: counted, the first few named in the summary, the first of all said
    /// once, loudly, in the log.
    pub fn uncovered(&self, agent: &str) {
        self.uncovered.inc();
        let mut names = self.uncovered_names.lock().unwrap_or_else(|p| p.into_inner());
        if names.is_empty() {
            tracing::warn!(
                agent_id = agent,
                "no policy covers agent {agent}: the allow-list checks are OFF for it and every agent like it \
                 (counted in vigil_agents_without_policy_total); declare [[detect.policy]], or let `vigil policy \
                 suggest` write them from an archive"
            );
        }
        if names.len() < 5 {
            names.push(agent.to_owned());
        }
    }

    /// Moves the state-bytes gauge by a lane's change.
    pub fn state_bytes_changed(&self, by: i64) {
        self.state_bytes.add(by);
    }

    /// Every metric in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }

    /// The run summary as these counters have it (elapsed time and lag are the driver's to add).
    pub fn summary(&self, source: &str) -> Summary {
        let outcome = |o: Outcome| self.events.with_label_values(&[o.as_str()]).get();
        let mut s = Summary { source: source.to_owned(), ..Summary::default() };
        s.valid = outcome(Outcome::Accepted);
        s.blank = outcome(Outcome::Blank);
        s.skipped = outcome(Outcome::Skipped);
        s.lines = s.valid + s.blank + s.skipped + outcome(Outcome::DeadLettered);
        for code in Invalid::CODES {
            let n = self.dead_letters.with_label_values(&[*code]).get();
            if n > 0 {
                s.dead_letters.insert(code, n);
            }
        }
        for k in FindingKind::ALL {
            for sev in Severity::ALL {
                let n = self.findings.with_label_values(&[k.as_str(), sev.as_str()]).get();
                if n > 0 {
                    s.findings.insert((*k, *sev), n);
                }
            }
        }
        s.recovered = self.recovered.get();
        s.late = self.late.get();
        s.overflow = self.overflow.get();
        s.forgotten = self.forgotten.get();
        s.bytes = self.input_bytes.get();
        s.files = self.archive_files.get();
        s.archive_bytes = self.archive_bytes.get();
        s.agents = self.agents.get().max(0) as usize;
        s.moved = self.moved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.agents_without_policy = self.uncovered.get();
        s.uncovered_sample = self.uncovered_names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        {
            let found = self.found.lock().unwrap_or_else(|p| p.into_inner());
            (s.distinct_findings, s.agents_with_findings) = (found.0.len() as u64, found.1.len() as u64);
        }
        let delivered = Delivery::Delivered.as_str();
        s.delivered = Self::sum_where(&self.deliveries, "outcome", delivered, false) as u64;
        s.undelivered = Self::sum_where(&self.deliveries, "outcome", delivered, true) as u64;
        s.owed = Self::sum_where(&self.owed, "endpoint", "", true).max(0.0) as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_what_batches_added_and_the_exposition_names_it() {
        let t = Telemetry::new();
        let mut c = BatchCounts::default();
        c.count(Outcome::Accepted);
        c.count(Outcome::Accepted);
        c.count(Outcome::Blank);
        c.dead_letter(&Invalid::NotJson { detail: "x".into() });
        t.add_batch(&c);
        t.add_input_bytes(100);
        t.finding(FindingKind::RateLimit, Severity::High, "f1", "a1");
        t.finding(FindingKind::RateLimit, Severity::High, "f1", "a1");
        t.finding(FindingKind::PolicyViolation, Severity::Critical, "f2", "a1");
        let s = t.summary("src");
        assert_eq!((s.lines, s.valid, s.blank, s.dead_lettered(), s.bytes), (4, 2, 1, 1, 100));
        assert!(s.balanced());
        // Rows per update in the counter; each finding and agent once in the summary.
        assert_eq!(s.findings.get(&(FindingKind::RateLimit, Severity::High)), Some(&2));
        assert_eq!((s.distinct_findings, s.agents_with_findings), (2, 1));
        let text = t.render();
        assert!(text.contains("vigil_events_total{outcome=\"accepted\"} 2"), "{text}");
        assert!(text.contains("vigil_dead_letters_total{reason=\"not_json\"} 1"), "{text}");
        // Known label values exist at zero before they first occur.
        assert!(text.contains("vigil_dead_letters_total{reason=\"too_large\"} 0"), "{text}");
        assert!(!text.contains("agent_id"), "no agent label: {text}");
    }
}
