//! The fleet simulator: a realistic fleet of agents as NDJSON in the event contract, with labelled
//! incidents. Same seed and parameters, same bytes.
//!
//! Five roles (coding, support, sales, data, ops) each have their own actions, resources, scopes, models
//! and volumes. Agents follow a daily and weekly rhythm (busy in working hours, quiet at night and at
//! weekends); most work in bursts (sessions of a few times their average rate, idle between), the rest
//! steadily; every agent's level shifts now and then and stays shifted; a share of the fleet joins
//! part-way through. They move heavy-tailed byte volumes, carry their own credentials, and a share of
//! them act for a human. Incidents of graded strength are injected on chosen agents and written to a
//! labels file.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use vigil_detect::PolicyConfig;
use vigil_schemas::timestamp::format_rfc3339_ms;
use vigil_schemas::{Event, Outcome};

/// SplitMix64: tiny, fast, and fixed forever, so a seed means the same fleet in every version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_5EED_5EED_5EED)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.f64() * n as f64) as usize % n.max(1)
    }
    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
    /// Log-normal: `exp(N(mu, sigma))`.
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        let (u1, u2) = (1.0 - self.f64(), self.f64());
        let n = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (mu + sigma * n).exp()
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// One element of a slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn hex(&mut self, digits: usize) -> String {
        let mut s = String::with_capacity(digits);
        while s.len() < digits {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(digits);
        s
    }
}

/// A role: what its agents do and touch.
#[derive(Debug)]
pub struct Role {
    /// Role name (`agent_role`).
    pub name: &'static str,
    /// Actions, with weights.
    pub actions: &'static [(&'static str, u32)],
    /// Resources its agents touch in normal work.
    pub resources: &'static [&'static str],
    /// Globs the role's policy allows (cover `resources`).
    pub allow: &'static [&'static str],
    /// Scopes, with the globs its policy allows.
    pub scopes: &'static [&'static str],
    /// Models: (model, provider).
    pub models: &'static [(&'static str, &'static str)],
    /// Median bytes read per read action.
    pub read_median: f64,
    /// Reasons agents of this role act.
    pub intents: &'static [&'static str],
    /// The emitting service.
    pub service: &'static str,
}

/// The simulated organisation.
pub const ROLES: &[Role] = &[
    Role {
        name: "coding",
        actions: &[
            ("file.read", 40),
            ("file.write", 15),
            ("tool.call", 20),
            ("model.call", 20),
            ("api.call", 5),
        ],
        resources: &[
            "file:///repo/src/lib.rs",
            "file:///repo/src/main.rs",
            "file:///repo/src/api/handlers.rs",
            "file:///repo/tests/integration.rs",
            "file:///repo/Cargo.toml",
            "mcp://github/create_pull_request",
            "mcp://github/list_issues",
            "https://api.github.com/repos/acme/app/pulls",
            "https://ci.acme.internal/api/builds",
        ],
        allow: &[
            "file:///repo/**",
            "mcp://github/*",
            "https://api.github.com/**",
            "https://ci.acme.internal/**",
        ],
        scopes: &["repo:read", "repo:write", "ci:read"],
        models: &[("claude-sonnet-4", "anthropic"), ("gpt-5", "openai")],
        read_median: 8_000.0,
        intents: &["fix failing test", "implement feature request", "refactor module", "review pull request"],
        service: "agent-gateway",
    },
    Role {
        name: "support",
        actions: &[("data.read", 45), ("api.call", 25), ("message.send", 15), ("model.call", 15)],
        resources: &[
            "postgres://support/tickets",
            "postgres://support/customers",
            "https://api.zendesk.com/v2/tickets",
            "https://api.zendesk.com/v2/users",
            "mcp://slack/post_message",
            "s3://kb-articles/faq",
        ],
        allow: &[
            "postgres://support/*",
            "https://api.zendesk.com/**",
            "mcp://slack/*",
            "s3://kb-articles/**",
        ],
        scopes: &["tickets:read", "tickets:write", "customers:read", "chat:write"],
        models: &[("claude-haiku-4", "anthropic")],
        read_median: 4_000.0,
        intents: &["answer customer ticket", "summarise conversation", "escalate refund request"],
        service: "support-bot",
    },
    Role {
        name: "sales",
        actions: &[
            ("data.read", 35),
            ("data.write", 15),
            ("api.call", 25),
            ("message.send", 15),
            ("model.call", 10),
        ],
        resources: &[
            "postgres://crm/accounts",
            "postgres://crm/opportunities",
            "postgres://crm/contacts",
            "https://api.hubspot.com/crm/v3/objects/deals",
            "mcp://gmail/send_email",
        ],
        allow: &["postgres://crm/*", "https://api.hubspot.com/**", "mcp://gmail/*"],
        scopes: &["crm:read", "crm:write", "email:send"],
        models: &[("gpt-5-mini", "openai")],
        read_median: 6_000.0,
        intents: &["draft follow-up email", "update deal stage", "research account"],
        service: "sales-assistant",
    },
    Role {
        name: "data",
        actions: &[("data.read", 55), ("data.write", 15), ("tool.call", 15), ("model.call", 15)],
        resources: &[
            "postgres://warehouse/events",
            "postgres://warehouse/orders",
            "postgres://warehouse/daily_revenue",
            "s3://analytics-exports/reports",
            "s3://analytics-exports/tmp",
            "mcp://jupyter/run_cell",
        ],
        allow: &["postgres://warehouse/*", "s3://analytics-exports/**", "mcp://jupyter/*"],
        scopes: &["warehouse:read", "warehouse:write", "exports:write"],
        models: &[("claude-sonnet-4", "anthropic")],
        read_median: 400_000.0,
        intents: &["build weekly revenue report", "answer analyst question", "refresh dashboard extract"],
        service: "data-agent",
    },
    Role {
        name: "ops",
        actions: &[
            ("api.call", 35),
            ("tool.call", 25),
            ("config.change", 5),
            ("deploy", 5),
            ("data.read", 30),
        ],
        resources: &[
            "https://k8s.acme.internal/api/v1/namespaces/staging/pods",
            "https://k8s.acme.internal/api/v1/namespaces/prod/pods",
            "https://grafana.acme.internal/api/alerts",
            "mcp://pagerduty/acknowledge",
            "s3://ops-logs/app",
        ],
        allow: &[
            "https://k8s.acme.internal/**",
            "https://grafana.acme.internal/**",
            "mcp://pagerduty/*",
            "s3://ops-logs/**",
        ],
        scopes: &["k8s:read", "k8s:write", "alerts:write", "logs:read"],
        models: &[("gpt-5", "openai")],
        read_median: 20_000.0,
        intents: &["triage alert", "restart crashed pod", "roll out release"],
        service: "ops-agent",
    },
];

/// Resources no role may touch: where scope drift, policy violations and exfiltration go.
const FORBIDDEN: &[&str] = &[
    "postgres://hr/salaries",
    "postgres://prod/payments",
    "s3://finance-ledger/2026",
    "vault://secrets/prod/db-password",
];
const EXFIL_SINKS: &[&str] = &["https://paste.example.net/upload", "s3://external-share-91/dump"];

/// Glob patterns of resources whose touch raises severity (used by the demo's config).
pub const SENSITIVE: &[&str] = &["postgres://hr/**", "postgres://prod/**", "s3://finance-*/**", "vault://**"];

/// The allow-list policies matching [`ROLES`]: one per role.
pub fn policies() -> Vec<PolicyConfig> {
    ROLES
        .iter()
        .map(|r| PolicyConfig {
            name: format!("{}-agents", r.name),
            agents: Vec::new(),
            roles: vec![r.name.to_owned()],
            actions: Vec::new(),
            resources: r.allow.iter().map(|s| s.to_string()).collect(),
            scopes: Vec::new(),
        })
        .collect()
}

/// Kinds of injected incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The agent repeats one tool call in a tight loop.
    RunawayLoop,
    /// The agent reads far more than usual and ships it outside.
    DataExfiltration,
    /// The agent drifts into resources no agent of its role touches.
    ScopeDrift,
    /// The agent does what its policy forbids.
    PolicyViolation,
    /// The agent acts with another agent's credential.
    SharedCredential,
    /// The model behind the agent changes to an unknown one.
    ModelSwap,
    /// The agent probes and is denied, many times.
    DeniedBurst,
    /// Over most of a day the agent drifts, more and more often, into another role's resources.
    ScopeCreep,
    /// The agent calls its model in a loop, each call with a prompt several times the usual size: the
    /// API budget burns (the incident users fear most).
    TokenLoop,
    /// Over two hours the agent reads a little more than usual, minute after minute, and ships it out:
    /// no single minute stands out, the hours do.
    SlowExfiltration,
    /// The upstream model turns bad for every agent behind it at once: they all reach for forbidden
    /// resources and are often denied (a poisoned or hijacked model). Injected once with
    /// `SimConfig::bad_model`, labelled for every agent behind the model; not in the cycle of [`ALL`].
    ///
    /// [`ALL`]: IncidentKind::ALL
    BadModel,
}

impl IncidentKind {
    /// All kinds, in the order incidents are assigned.
    pub const ALL: [IncidentKind; 10] = [
        IncidentKind::RunawayLoop,
        IncidentKind::DataExfiltration,
        IncidentKind::ScopeDrift,
        IncidentKind::PolicyViolation,
        IncidentKind::SharedCredential,
        IncidentKind::ModelSwap,
        IncidentKind::DeniedBurst,
        IncidentKind::ScopeCreep,
        IncidentKind::TokenLoop,
        IncidentKind::SlowExfiltration,
    ];

    /// The wire name (as in the labels file).
    pub const fn as_str(self) -> &'static str {
        match self {
            IncidentKind::RunawayLoop => "runaway_loop",
            IncidentKind::DataExfiltration => "data_exfiltration",
            IncidentKind::ScopeDrift => "scope_drift",
            IncidentKind::PolicyViolation => "policy_violation",
            IncidentKind::SharedCredential => "shared_credential",
            IncidentKind::ModelSwap => "model_swap",
            IncidentKind::DeniedBurst => "denied_burst",
            IncidentKind::ScopeCreep => "scope_creep",
            IncidentKind::TokenLoop => "token_loop",
            IncidentKind::SlowExfiltration => "slow_exfiltration",
            IncidentKind::BadModel => "bad_model",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<IncidentKind> {
        IncidentKind::ALL.iter().chain(&[IncidentKind::BadModel]).copied().find(|k| k.as_str() == name)
    }

    /// (events per second during the incident, duration in seconds).
    const fn shape(self) -> (f64, f64) {
        match self {
            IncidentKind::RunawayLoop => (25.0, 600.0),
            IncidentKind::DataExfiltration => (0.5, 1200.0),
            IncidentKind::ScopeDrift => (0.05, 3600.0),
            IncidentKind::PolicyViolation => (0.02, 600.0),
            IncidentKind::SharedCredential => (0.1, 1800.0),
            IncidentKind::ModelSwap => (0.2, 3600.0),
            IncidentKind::DeniedBurst => (0.5, 300.0),
            IncidentKind::ScopeCreep => (0.02, 72_000.0),
            IncidentKind::TokenLoop => (0.2, 1200.0),
            IncidentKind::SlowExfiltration => (0.03, 7200.0),
            IncidentKind::BadModel => (0.3, 1200.0),
        }
    }
}

/// How strong an injected incident is: a weak one is half as intense as a medium one, a strong one
/// twice (events per second, and how much each event moves or burns). Speed is the kind's own: a data
/// exfiltration is fast, a slow exfiltration slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// Half the intensity of a medium one.
    Weak,
    /// The kind's usual intensity (labels written before strengths existed are medium).
    #[default]
    Medium,
    /// Twice the intensity of a medium one.
    Strong,
}

impl Strength {
    /// Every strength, weakest first.
    pub const ALL: [Strength; 3] = [Strength::Weak, Strength::Medium, Strength::Strong];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strength::Weak => "weak",
            Strength::Medium => "medium",
            Strength::Strong => "strong",
        }
    }

    /// How many times a medium incident's intensity.
    const fn factor(self) -> f64 {
        match self {
            Strength::Weak => 0.5,
            Strength::Medium => 1.0,
            Strength::Strong => 2.0,
        }
    }

    /// The strength of the `k`-th incident: each round of every kind has one strength, medium first,
    /// then strong, then weak, so a fleet with a round of each holds every kind at every strength.
    const fn of_incident(k: usize) -> Strength {
        match (k / IncidentKind::ALL.len()) % 3 {
            0 => Strength::Medium,
            1 => Strength::Strong,
            _ => Strength::Weak,
        }
    }
}

/// One injected incident, as written to the labels file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The agent it happened to.
    pub agent_id: String,
    /// What it was.
    pub kind: IncidentKind,
    /// How strong it was.
    #[serde(default)]
    pub strength: Strength,
    /// When it began (RFC 3339).
    pub start: String,
    /// When it ended (RFC 3339).
    pub end: String,
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Agents in the fleet.
    pub agents: usize,
    /// Simulated span, in milliseconds.
    pub duration_ms: i64,
    /// Start of the span, UTC epoch ms.
    pub start_ms: i64,
    /// Seed.
    pub seed: u64,
    /// Average events per second, fleet-wide.
    pub rate: f64,
    /// Incidents to inject (kinds cycle through [`IncidentKind::ALL`], strengths through medium,
    /// strong and weak, one per round of kinds).
    pub incidents: usize,
    /// Also inject one [`IncidentKind::BadModel`]: every agent behind one model turns bad together.
    pub bad_model: bool,
}

struct Agent {
    id: String,
    role: &'static Role,
    habits: Vec<&'static str>,
    credential: String,
    principal: Option<String>,
    model: (&'static str, &'static str),
    rate_per_ms: f64,
    session: u32,
    last_ms: i64,
    /// When it starts working (after the fleet's start for the agents that join part-way).
    joined_ms: i64,
    /// The share of time it works in bursts (1: steadily); in a burst its rate is `1 / duty` times its
    /// average.
    duty: f64,
    /// Whether it is in a burst, and until when.
    bursting: bool,
    phase_end_ms: i64,
    /// Its level: a multiplier of its rate that shifts now and then and stays shifted.
    level: f64,
    next_shift_ms: i64,
    /// Whether its next turn in the generator is the end of a phase, not a candidate event.
    wake: bool,
}

/// Mean length of a burst of work, for agents that work in bursts.
const BURST_MEAN_MS: f64 = 20.0 * 60_000.0;
/// Mean time between an agent's level shifts, and the spread of one shift (log scale); the level stays
/// within `LEVEL_RANGE` of the agent's first.
const SHIFT_MEAN_MS: f64 = 4.0 * 86_400_000.0;
const SHIFT_SIGMA: f64 = 0.3;
const LEVEL_RANGE: (f64, f64) = (0.5, 2.0);
/// Share of the fleet that joins part-way, within the first quarter of the span.
const JOINING: f64 = 0.1;

impl Agent {
    /// Brings the agent's bursts and level up to `t`.
    fn advance(&mut self, rng: &mut Rng, t: i64) {
        if self.duty >= 1.0 {
            (self.bursting, self.phase_end_ms) = (true, i64::MAX);
        }
        while t >= self.phase_end_ms {
            self.bursting = !self.bursting;
            let mean =
                if self.bursting { BURST_MEAN_MS } else { BURST_MEAN_MS * (1.0 - self.duty) / self.duty };
            self.phase_end_ms = self.phase_end_ms.saturating_add(rng.exp(mean).round().max(1.0) as i64);
        }
        while t >= self.next_shift_ms {
            self.level = (self.level * rng.lognormal(0.0, SHIFT_SIGMA)).clamp(LEVEL_RANGE.0, LEVEL_RANGE.1);
            self.next_shift_ms = self.next_shift_ms.saturating_add(rng.exp(SHIFT_MEAN_MS).round() as i64);
        }
    }

    /// The rate at which candidate events come while the agent is in its current phase (thinned by
    /// the rhythm): zero between bursts.
    fn candidate_rate(&self) -> f64 {
        if self.bursting { self.rate_per_ms * self.level / self.duty * RHYTHM_MAX } else { 0.0 }
    }

    /// Its next turn after `t`: a candidate event, or the end of its phase when that comes first (a
    /// wake-up that emits nothing; rates are memoryless, so drawing again from there is exact).
    fn next_turn(&mut self, rng: &mut Rng, t: i64) -> i64 {
        let r = self.candidate_rate();
        let next =
            if r > 0.0 { t.saturating_add(rng.exp(1.0 / r).round().max(1.0) as i64) } else { i64::MAX };
        self.wake = next >= self.phase_end_ms;
        next.min(self.phase_end_ms)
    }
}

struct Incident {
    agent: usize,
    kind: IncidentKind,
    start_ms: i64,
    end_ms: i64,
    mean_gap_ms: f64,
    /// For shared credentials: whose credential.
    other: usize,
    /// How strong it is.
    strength: Strength,
}

/// Activity multiplier by hour of day (UTC): quiet nights, busy working hours.
fn rhythm(ts_ms: i64) -> f64 {
    let hour = (ts_ms.rem_euclid(86_400_000) as f64) / 3_600_000.0;
    let day = (ts_ms.div_euclid(86_400_000) + 3).rem_euclid(7); // 0 = Monday (1970-01-01 was a Thursday)
    let weekday = if day >= 5 { 0.4 } else { 1.0 };
    let work = (-((hour - 13.0) / 3.5).powi(2)).exp();
    weekday * (0.15 + 0.85 * work) / 0.55
}

const RHYTHM_MAX: f64 = 1.0 / 0.55;

/// Generates the fleet's events in time order, calling `emit` with each encoded line (no newline);
/// returns the labels. `progress` is told the simulated time reached, now and then.
pub fn simulate(
    cfg: &SimConfig,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
    mut progress: impl FnMut(i64),
) -> std::io::Result<Vec<Label>> {
    let mut rng = Rng::new(cfg.seed);
    let weights: Vec<f64> = (0..cfg.agents).map(|_| rng.lognormal(0.0, 0.6)).collect();
    let total: f64 = weights.iter().sum::<f64>().max(1e-9);
    let mut agents: Vec<Agent> = (0..cfg.agents)
        .map(|i| {
            let role = &ROLES[i % ROLES.len()];
            let mut habits: Vec<&'static str> =
                role.resources.iter().copied().filter(|_| rng.chance(0.7)).collect();
            if habits.is_empty() {
                habits.push(role.resources[0]);
            }
            Agent {
                id: format!("{}-agent-{:04}", role.name, i),
                role,
                habits,
                credential: format!("key_{}", rng.hex(12)),
                principal: rng.chance(0.3).then(|| format!("user{:03}@acme.example", rng.below(400))),
                model: *rng.pick(role.models),
                rate_per_ms: cfg.rate * weights[i] / total / 1000.0,
                session: 0,
                last_ms: cfg.start_ms,
                joined_ms: cfg.start_ms,
                duty: 1.0,
                bursting: false,
                phase_end_ms: cfg.start_ms,
                level: 1.0,
                next_shift_ms: i64::MAX,
                wake: true,
            }
        })
        .collect();
    // Bursts, joins and level shifts, drawn after everything above so that those draws stay as they were.
    let quarter = cfg.duration_ms / 4;
    for a in &mut agents {
        // Four agents in ten work steadily (services, pipelines), the rest in bursts (sessions).
        a.duty = if rng.chance(0.4) { 1.0 } else { 0.25 + 0.45 * rng.f64() };
        if rng.chance(JOINING) {
            a.joined_ms = cfg.start_ms + (rng.f64() * quarter as f64) as i64;
        }
        // Before its first turn an agent is between bursts, a phase that ends when it joins; whether
        // it starts in a burst follows its duty.
        a.bursting = !rng.chance(a.duty);
        a.phase_end_ms = a.joined_ms;
        a.last_ms = a.joined_ms;
        a.next_shift_ms = a.joined_ms + rng.exp(SHIFT_MEAN_MS).round() as i64;
    }
    let end_ms = cfg.start_ms + cfg.duration_ms;
    let mut incidents = Vec::new();
    let mut labels = Vec::new();
    if cfg.agents > 1 {
        for k in 0..cfg.incidents {
            let kind = IncidentKind::ALL[k % IncidentKind::ALL.len()];
            let strength = Strength::of_incident(k);
            let (rate, secs) = kind.shape();
            let len = ((secs * 1000.0) as i64).min(cfg.duration_ms / 2).max(1);
            let agent = (k * 7919 + rng.below(cfg.agents)) % cfg.agents;
            // Incidents start a quarter of the span after the fleet's start and the agent's, so a
            // detector has seen the agent first.
            let earliest = cfg.start_ms.max(agents[agent].joined_ms) + quarter;
            let start_ms = earliest + (rng.f64() * (end_ms - len - earliest).max(1) as f64) as i64;
            let other = (agent + 1 + rng.below(cfg.agents - 1)) % cfg.agents;
            labels.push(Label {
                agent_id: agents[agent].id.clone(),
                kind,
                strength,
                start: format_rfc3339_ms(start_ms),
                end: format_rfc3339_ms(start_ms + len),
            });
            incidents.push(Incident {
                agent,
                kind,
                start_ms,
                end_ms: start_ms + len,
                mean_gap_ms: 1000.0 / (rate * strength.factor()),
                other,
                strength,
            });
        }
    }
    if cfg.bad_model && cfg.agents > 1 {
        let (rate, secs) = IncidentKind::BadModel.shape();
        let len = ((secs * 1000.0) as i64).min(cfg.duration_ms / 2).max(1);
        let earliest = cfg.start_ms + cfg.duration_ms / 2;
        let start_ms = earliest + (rng.f64() * (end_ms - len - earliest).max(1) as f64) as i64;
        let model = agents[rng.below(cfg.agents)].model;
        for (i, a) in agents.iter().enumerate().filter(|(_, a)| a.model == model) {
            labels.push(Label {
                agent_id: a.id.clone(),
                kind: IncidentKind::BadModel,
                strength: Strength::Medium,
                start: format_rfc3339_ms(start_ms),
                end: format_rfc3339_ms(start_ms + len),
            });
            incidents.push(Incident {
                agent: i,
                kind: IncidentKind::BadModel,
                start_ms,
                end_ms: start_ms + len,
                mean_gap_ms: 1000.0 / rate,
                other: i,
                strength: Strength::Medium,
            });
        }
    }
    // The heap holds (next time, generator): generators 0..agents are agents' normal work, the rest
    // incidents. Normal work uses thinning against the rhythm's peak; each agent's first turn is a
    // wake-up when it joins.
    let mut heap = BinaryHeap::new();
    for (i, a) in agents.iter().enumerate() {
        heap.push(Reverse((a.joined_ms, i)));
    }
    for (j, inc) in incidents.iter().enumerate() {
        heap.push(Reverse((inc.start_ms, cfg.agents + j)));
    }
    let mut seq: u64 = 0;
    let mut line = String::with_capacity(1024);
    let mut last_progress = cfg.start_ms;
    while let Some(Reverse((t, g))) = heap.pop() {
        if t >= end_ms {
            continue;
        }
        if t - last_progress > 60_000 {
            progress(t);
            last_progress = t;
        }
        let (agent_idx, incident) = if g < cfg.agents {
            let a = &mut agents[g];
            let woke = a.wake;
            a.advance(&mut rng, t);
            let next = a.next_turn(&mut rng, t);
            if next < end_ms {
                heap.push(Reverse((next, g)));
            }
            if woke || !rng.chance(rhythm(t) / RHYTHM_MAX) {
                continue;
            }
            (g, None)
        } else {
            let inc = &incidents[g - cfg.agents];
            let next = t + rng.exp(inc.mean_gap_ms).round().max(1.0) as i64;
            if next < inc.end_ms {
                heap.push(Reverse((next, g)));
            }
            // A creep starts as a trickle and grows: its events are thinned by how far along it is.
            if inc.kind == IncidentKind::ScopeCreep
                && !rng.chance((t - inc.start_ms) as f64 / (inc.end_ms - inc.start_ms).max(1) as f64)
            {
                continue;
            }
            (inc.agent, Some(g - cfg.agents))
        };
        seq += 1;
        line.clear();
        let ev =
            make_event(&mut rng, &mut agents, agent_idx, incident.map(|j| &incidents[j]), t, cfg.seed, seq);
        ev.write_json(&mut line);
        emit(&line)?;
    }
    Ok(labels)
}

fn make_event<'a>(
    rng: &mut Rng,
    agents: &'a mut [Agent],
    idx: usize,
    incident: Option<&Incident>,
    t: i64,
    seed: u64,
    seq: u64,
) -> Event<'a> {
    // A model swap lasts past its incident: the agent keeps the new model from then on.
    let swapped = incident.is_some_and(|i| i.kind == IncidentKind::ModelSwap);
    let other_credential = incident
        .filter(|i| i.kind == IncidentKind::SharedCredential)
        .map(|i| agents[i.other].credential.clone());
    let a = &mut agents[idx];
    if swapped {
        a.model = ("unknown-model-7b", "shadow-ai");
    }
    if t - a.last_ms > 30 * 60_000 || rng.chance(0.002) {
        a.session += 1;
    }
    a.last_ms = t;
    let role = a.role;
    let (mut action, mut resource, mut outcome) = {
        let total: u32 = role.actions.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total as usize) as u32;
        let action = role
            .actions
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map_or("api.call", |(a, _)| a);
        (action, *rng.pick(&a.habits), if rng.chance(0.01) { Outcome::Failure } else { Outcome::Success })
    };
    let mut bytes_read = None;
    let mut bytes_written = None;
    if action.ends_with(".read") || action == "api.call" {
        bytes_read = Some(rng.lognormal(role.read_median.ln(), 1.2) as u64);
    } else if action.ends_with(".write") {
        bytes_written = Some(rng.lognormal((role.read_median / 4.0).ln(), 1.0) as u64);
    }
    if let Some(inc) = incident {
        match inc.kind {
            IncidentKind::RunawayLoop => {
                action = "tool.call";
                resource = role.resources[0];
            }
            IncidentKind::DataExfiltration | IncidentKind::SlowExfiltration => {
                // A fast one moves hundreds of megabytes a step; a slow one reads about twice the role's
                // usual size, each step on its own unremarkable (the usual reads are heavy-tailed).
                let f = inc.strength.factor();
                let (read, shipped, sigma) = if inc.kind == IncidentKind::DataExfiltration {
                    (200e6 * f, 150e6 * f, 0.5)
                } else {
                    (2.0 * role.read_median * f, 2.0 * role.read_median * f, 0.4)
                };
                // Half the steps read, half ship what was read to a sink.
                if rng.chance(0.5) {
                    action = "data.read";
                    bytes_read = Some(rng.lognormal(f64::ln(read), sigma) as u64);
                    bytes_written = None;
                } else {
                    action = "api.call";
                    resource = *rng.pick(EXFIL_SINKS);
                    bytes_written = Some(rng.lognormal(f64::ln(shipped), sigma) as u64);
                    bytes_read = None;
                }
            }
            IncidentKind::ScopeDrift => {
                let other =
                    &ROLES[(ROLES.iter().position(|r| r.name == role.name).unwrap_or(0) + 1) % ROLES.len()];
                resource = if rng.chance(0.2) { *rng.pick(FORBIDDEN) } else { *rng.pick(other.resources) };
            }
            IncidentKind::PolicyViolation => {
                action = *rng.pick(&["data.delete", "config.change", "data.read"]);
                resource = *rng.pick(FORBIDDEN);
            }
            IncidentKind::DeniedBurst => {
                resource = *rng.pick(FORBIDDEN);
                outcome = Outcome::Denied;
                bytes_read = None;
            }
            IncidentKind::BadModel => {
                action = *rng.pick(&["data.read", "data.read", "file.read", "api.call"]);
                resource = *rng.pick(FORBIDDEN);
                if rng.chance(0.5) {
                    outcome = Outcome::Denied;
                    bytes_read = None;
                }
            }
            IncidentKind::ScopeCreep => {
                // Two roles over, so creep and drift do not borrow from the same neighbour.
                let me = ROLES.iter().position(|r| r.name == role.name).unwrap_or(0);
                let other = &ROLES[(me + 2) % ROLES.len()];
                resource = *rng.pick(other.resources);
            }
            IncidentKind::TokenLoop => {
                action = "model.call";
                resource = role.resources[0];
                bytes_read = None;
                bytes_written = None;
            }
            IncidentKind::SharedCredential | IncidentKind::ModelSwap => {}
        }
    }
    let model_call = action == "model.call";
    // A looping agent sends its whole growing context every time: several times the usual prompt.
    let looping = incident.filter(|i| i.kind == IncidentKind::TokenLoop);
    let prompt = looping.map_or(7.5, |i| 9.5 + i.strength.factor().ln());
    let input_tokens = model_call.then(|| rng.lognormal(prompt, 0.8) as u64);
    let output_tokens = model_call.then(|| rng.lognormal(6.0, 0.7) as u64);
    let cost_usd =
        input_tokens.zip(output_tokens).map(|(i, o)| ((i * 3 + o * 15) as f64 / 1e6 * 1e4).round() / 1e4);
    let scope = rng.pick(role.scopes);
    Event {
        event_id: format!("evt-{seed}-{seq:010}").into(),
        ts_ms: t,
        agent_id: a.id.as_str().into(),
        action: action.into(),
        resource: resource.into(),
        scope: Some((*scope).into()),
        outcome,
        bytes_read,
        bytes_written,
        records: bytes_read.map(|b| b / 512 + 1),
        session_id: Some(format!("sess-{idx}-{}", a.session).into()),
        agent_role: Some(role.name.into()),
        principal: a.principal.as_deref().map(Into::into),
        credential_id: Some(other_credential.unwrap_or_else(|| a.credential.clone()).into()),
        model: Some(a.model.0.into()),
        model_provider: Some(a.model.1.into()),
        input_tokens,
        output_tokens,
        cost_usd,
        intent: Some((*rng.pick(role.intents)).into()),
        trace_id: Some(rng.hex(32).into()),
        span_id: Some(rng.hex(16).into()),
        source: Some(role.service.into()),
        attributes: None,
    }
}

/// Parses a duration like `90s`, `30m`, `2h`, `7d`.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (num, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let n: f64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 2h or 7d"))?;
    let scale = match unit {
        "ms" => 1.0,
        "s" | "" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use s, m, h or d")),
    };
    let ms = n * scale;
    if !(ms.is_finite() && ms >= 1.0) {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(ms as i64)
}

/// Writes labels as NDJSON.
pub fn write_labels(labels: &[Label], w: &mut impl Write) -> std::io::Result<()> {
    for l in labels {
        serde_json::to_writer(&mut *w, l)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64) -> (Vec<u8>, Vec<Label>) {
        let cfg = SimConfig {
            agents: 20,
            duration_ms: 2 * 3_600_000,
            start_ms: 1_767_571_200_000,
            seed,
            rate: 5.0,
            incidents: 8,
            bad_model: false,
        };
        let mut out = Vec::new();
        let labels = simulate(
            &cfg,
            |l| {
                out.extend_from_slice(l.as_bytes());
                out.push(b'\n');
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        (out, labels)
    }

    #[test]
    fn same_seed_same_bytes_and_every_line_is_a_valid_event() {
        let (a, la) = run(7);
        let (b, lb) = run(7);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        assert_ne!(a, run(8).0);
        let mut last = 0;
        let mut n = 0;
        for line in a.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let ev = vigil_schemas::decode(line, 1 << 20).unwrap();
            assert!(ev.ts_ms >= last, "time order");
            last = ev.ts_ms;
            n += 1;
        }
        // 5 events/s for 2 h is 36k on average; the rhythm and incidents move it, not by 2x.
        assert!((18_000..72_000).contains(&n), "{n} events");
        assert_eq!(la.len(), 8);
        let kinds: std::collections::HashSet<_> = la.iter().map(|l| l.kind).collect();
        assert_eq!(kinds.len(), 8);
    }

    #[test]
    fn normal_work_stays_inside_the_role_policies() {
        let cfg = SimConfig {
            agents: 25,
            duration_ms: 3_600_000,
            start_ms: 1_767_614_400_000,
            seed: 1,
            rate: 10.0,
            incidents: 0,
            bad_model: false,
        };
        let detect = vigil_detect::DetectConfig { policies: policies(), ..Default::default() };
        let mut engine = vigil_detect::Engine::new(&detect).unwrap();
        let mut out = vigil_detect::Output::default();
        simulate(
            &cfg,
            |l| {
                engine.process(&[vigil_schemas::decode_str(l).unwrap()], &mut out);
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert!(out.findings.is_empty(), "{:?}", out.findings.first());
        assert!(engine.stats().events > 10_000);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1.5d"), Ok(129_600_000));
        assert!(parse_duration_ms("2 weeks").is_err());
        assert!(parse_duration_ms("0s").is_err());
    }
}
