//! `vigil policy suggest`: least privilege from evidence.
//!
//! Reads `events/` of an archive and writes the allow-lists the agents' own successful actions justify,
//! as `[[detect.policy]]` TOML for a person to review and commit: per role (or per agent), the actions
//! and scopes used, and the resources generalised to the prefixes the detector already keys on
//! (`detect.scope.resource_depth` path segments, then `/**`). Denied and failed actions are not usage:
//! a refused attempt must never become a grant. Every entry carries its evidence as a comment (events,
//! agents, first and last use), so a reviewer can see why it is there and strike what looks wrong.
//!
//! `--against CONFIG` compares the same evidence with the policies a config declares instead: grants
//! never used (revoke candidates) and uses never granted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use vigil_detect::{DetectConfig, Glob, GlobSet, generalise};
use vigil_schemas::timestamp::format_rfc3339_ms;

use crate::audit::{self, Scanned, Usage};

const COLUMNS: &[&str] = &["ts", "agent_id", "agent_role", "action", "resource", "scope", "outcome"];
const DIMENSIONS: [&str; 3] = ["actions", "resources", "scopes"];

/// How suggested policies are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One policy per `agent_role` (agents whose events name no role get one each).
    Role,
    /// One policy per agent.
    Agent,
}

/// Why one allow-list entry is suggested.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Successful events it covers.
    pub events: u64,
    /// Agents that used it.
    pub agents: BTreeSet<String>,
    /// First and last use (UTC ms).
    pub first: i64,
    /// Last use.
    pub last: i64,
}

impl Evidence {
    fn add(&mut self, agent: &str, ts: i64) {
        if self.events == 0 {
            (self.first, self.last) = (ts, ts);
        }
        self.events += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
        if !self.agents.contains(agent) {
            self.agents.insert(agent.to_owned());
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} events, {} agent{}, {} .. {}",
            self.events,
            self.agents.len(),
            if self.agents.len() == 1 { "" } else { "s" },
            format_rfc3339_ms(self.first),
            format_rfc3339_ms(self.last)
        )
    }
}

/// What is grouped into one suggested policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Every agent acting under this role.
    Role(String),
    /// One agent (by `--by agent`, or its events named no role).
    Agent(String),
}

/// The evidence for one suggested policy.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// All of the group's successful events.
    pub total: Evidence,
    /// Per dimension (actions, resources, scopes): entry → its evidence.
    pub entries: [BTreeMap<String, Evidence>; 3],
    /// Distinct entries left out past `max_values` (the policy would be incomplete: said in the file).
    pub dropped: u64,
    /// The last role its events named.
    pub role: Option<String>,
}

/// Everything read from the archive.
#[derive(Debug, Default)]
pub struct Observed {
    /// The groups, in order.
    pub groups: BTreeMap<Key, Group>,
    /// What was read (successful events only are counted in `events`).
    pub scanned: Scanned,
    /// Denied and failed events in the period, left out.
    pub not_usage: u64,
    /// Agents with no successful event at all (no policy can be suggested for them).
    pub without_usage: BTreeSet<String>,
}

/// The allow-list entry a resource justifies: the resource itself when it has no more than `depth`
/// path segments, else its first `depth` segments and everything under them.
pub fn resource_entry(resource: &str, depth: usize) -> String {
    let g = generalise(resource, depth);
    let plain = resource.split(['?', '#']).next().unwrap_or(resource);
    if g.eq_ignore_ascii_case(plain) && plain.len() == resource.len() {
        return resource.to_owned();
    }
    // `generalise` lower-cases scheme and authority; the entry keeps the resource's own spelling, which
    // is what the policy check compares.
    let kept = &resource[..g.len().min(resource.len())];
    match resource[kept.len()..].chars().next() {
        Some('/') => format!("{kept}/**"),
        _ => format!("{kept}**"),
    }
}

/// Reads the successful events between `since` and `until` (UTC ms, inclusive, exclusive) and groups
/// their evidence; at most `max_values` distinct entries per group and dimension.
pub fn collect(
    archive: &Path,
    since: Option<i64>,
    until: Option<i64>,
    by: By,
    depth: usize,
    max_values: usize,
) -> Result<Observed, String> {
    let mut e = Observed::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    e.scanned.files = audit::scan_events(archive, COLUMNS, since, until, "policy", |t, agent, v| {
        // An empty value names nothing.
        let v: [Option<&str>; 5] = std::array::from_fn(|i| v[i].filter(|x| !x.is_empty()));
        if !seen.contains(agent) {
            seen.insert(agent.to_owned());
        }
        // Archives written before `outcome` was a column hold successful events only.
        if v[4].is_some_and(|o| o != "success") {
            e.not_usage += 1;
            return;
        }
        if !used.contains(agent) {
            used.insert(agent.to_owned());
        }
        first = first.min(t);
        last = last.max(t);
        e.scanned.events += 1;
        let key = match (by, v[0]) {
            (By::Role, Some(role)) => Key::Role(role.to_owned()),
            _ => Key::Agent(agent.to_owned()),
        };
        let g = e.groups.entry(key).or_default();
        g.total.add(agent, t);
        if let Some(role) = v[0]
            && g.role.as_deref() != Some(role)
        {
            g.role = Some(role.to_owned());
        }
        let values =
            [v[1].map(str::to_owned), v[2].map(|r| resource_entry(r, depth)), v[3].map(str::to_owned)];
        for (dim, value) in values.into_iter().enumerate() {
            let Some(value) = value else { continue };
            let entries = &mut g.entries[dim];
            if let Some(ev) = entries.get_mut(&value) {
                ev.add(agent, t);
            } else if entries.len() < max_values {
                entries.entry(value).or_default().add(agent, t);
            } else {
                g.dropped += 1;
            }
        }
    })?;
    if e.scanned.events > 0 {
        e.scanned.first = Some(format_rfc3339_ms(first));
        e.scanned.last = Some(format_rfc3339_ms(last));
    }
    e.without_usage = seen.difference(&used).cloned().collect();
    Ok(e)
}

/// Agent-controlled text made safe for a terminal and for a TOML comment: control characters (a newline
/// that would end the comment and inject a line, a terminal escape) are written as `\u{..}`.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04X}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The suggested policies as TOML, every entry with its evidence.
pub fn render(e: &Observed, archive: &Path, depth: usize, sensitive: &GlobSet) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Suggested by `vigil policy suggest` from {}: {} successful events, {} .. {}.\n\
         # Denied and failed actions ({}) are not usage and grant nothing. Resources are generalised to {depth}\n\
         # path segments. Review every entry (strike what should not be there) before you commit it; an agent\n\
         # covered by a policy may only do what one of its policies allows.",
        printable(&archive.display().to_string()),
        e.scanned.events,
        e.scanned.first.as_deref().unwrap_or("-"),
        e.scanned.last.as_deref().unwrap_or("-"),
        e.not_usage,
    );
    if !e.without_usage.is_empty() {
        let names: Vec<&str> = e.without_usage.iter().take(10).map(String::as_str).collect();
        let _ = writeln!(
            o,
            "# {} agent(s) had no successful action, so nothing is suggested for them (they stay uncovered): {}{}",
            e.without_usage.len(),
            printable(&names.join(", ")),
            if e.without_usage.len() > names.len() { ", …" } else { "" }
        );
    }
    for (key, g) in &e.groups {
        o.push('\n');
        let (name, selector) = match key {
            Key::Role(r) => (format!("role-{r}"), format!("roles = [{}]", quoted(r))),
            Key::Agent(a) => (format!("agent-{a}"), format!("agents = [{}]", quoted(a))),
        };
        let _ = writeln!(o, "# {}", g.total.describe());
        if g.dropped > 0 {
            let _ = writeln!(
                o,
                "# INCOMPLETE: {} uses of values past --max-values were left out; raise it or review by agent",
                g.dropped
            );
        }
        let _ = writeln!(o, "[[detect.policy]]\nname = {}\n{selector}", quoted(&name));
        if let Key::Role(_) = key {
            let agents: Vec<&str> = g.total.agents.iter().take(20).map(String::as_str).collect();
            let more = g.total.agents.len() - agents.len();
            let _ = writeln!(
                o,
                "# agents: {}{}",
                printable(&agents.join(", ")),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            );
        }
        for (dim, entries) in DIMENSIONS.iter().zip(&g.entries) {
            if entries.is_empty() {
                let _ = writeln!(
                    o,
                    "# {dim}: none of its events named one, so this policy leaves them unrestricted"
                );
                continue;
            }
            let _ = writeln!(o, "{dim} = [");
            let width = entries.keys().map(|k| quoted(k).len()).max().unwrap_or(0) + 1;
            for (v, ev) in entries {
                let glob = if *dim != "resources" && v.contains(['*', '?']) {
                    "  (holds a glob character: matches more than itself)"
                } else {
                    ""
                };
                // An entry only one agent of a role used is the kind a reviewer should look at twice.
                let lone = match key {
                    Key::Role(_) if ev.agents.len() == 1 && g.total.agents.len() >= 5 => {
                        format!("  <- one agent of {}: look twice", g.total.agents.len())
                    }
                    _ => String::new(),
                };
                // A grant to a sensitive resource deserves a second look whoever used it.
                let marked = if *dim == "resources" && sensitive.matches(v) { "  <- SENSITIVE" } else { "" };
                let _ = writeln!(
                    o,
                    "  {:<width$} # {}{glob}{lone}{marked}",
                    format!("{},", quoted(v)),
                    ev.describe()
                );
            }
            o.push_str("]\n");
        }
    }
    o
}

/// The evidence as the audit's per-agent usage, for comparing it with declared policies.
fn usage(
    archive: &Path,
    since: Option<i64>,
    until: Option<i64>,
    max_values: usize,
) -> Result<(BTreeMap<String, Usage>, Scanned), String> {
    let by_agent = collect(archive, since, until, By::Agent, usize::MAX, max_values)?;
    let mut out = BTreeMap::new();
    for (key, g) in by_agent.groups {
        let Key::Agent(agent) = key else { continue };
        let count = |m: &BTreeMap<String, Evidence>| m.iter().map(|(k, e)| (k.clone(), e.events)).collect();
        out.insert(
            agent,
            Usage {
                role: g.role,
                events: g.total.events,
                actions: count(&g.entries[0]),
                resources: count(&g.entries[1]),
                scopes: count(&g.entries[2]),
                dropped: g.dropped,
                ..Usage::default()
            },
        );
    }
    Ok((out, by_agent.scanned))
}

/// One dimension of an agent's usage.
type Used = fn(&Usage) -> &BTreeMap<String, u64>;

/// `--against`: the declared policies against the successful actions, as text. A grant is a revoke
/// candidate when no agent the policy covers used it (a role's policy is judged over the role, not per
/// agent); a use is never granted when no policy covering that agent allows it.
pub fn against(
    archive: &Path,
    since: Option<i64>,
    until: Option<i64>,
    max_values: usize,
    cfg: &DetectConfig,
) -> Result<String, String> {
    let (usage, scanned) = usage(archive, since, until, max_values)?;
    let mut unused: Vec<String> = Vec::new();
    for p in &cfg.policies {
        let agents = GlobSet::new(&p.agents);
        let covered: Vec<&Usage> = usage
            .iter()
            .filter(|(a, u)| agents.matches(a) || u.role.as_ref().is_some_and(|r| p.roles.contains(r)))
            .map(|(_, u)| u)
            .collect();
        let dims: [(&str, &[String], Used); 3] = [
            ("action", &p.actions, |u| &u.actions),
            ("resource", &p.resources, |u| &u.resources),
            ("scope", &p.scopes, |u| &u.scopes),
        ];
        for (dim, patterns, used) in dims {
            for pattern in patterns {
                let glob = Glob::new(pattern);
                if !covered.iter().any(|u| used(u).keys().any(|v| glob.matches(v))) {
                    unused.push(format!(
                        "- policy {} {dim} {}: never used by the {} agent(s) it covers (revoke candidate)",
                        p.name,
                        quoted(pattern),
                        covered.len()
                    ));
                }
            }
        }
    }
    let review = audit::review(&usage, scanned, cfg);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} against {} policies: {} successful events of {} agents, {} .. {}",
        archive.display(),
        cfg.policies.len(),
        review.scanned.events,
        review.agents,
        review.scanned.first.as_deref().unwrap_or("-"),
        review.scanned.last.as_deref().unwrap_or("-"),
    );
    let _ = writeln!(
        o,
        "  {} grants never used (revoke candidates), {} uses never granted, {} agents without a policy\n",
        unused.len(),
        review.used_undeclared,
        review.agents_without_policy
    );
    let mut lines = unused;
    for i in &review.items {
        let line = match i.check {
            "used_undeclared" => format!(
                "+ agent {}{} {} {}: {}, never granted",
                i.agent_id,
                i.agent_role.as_deref().map(|r| format!(" (role {r})")).unwrap_or_default(),
                i.dimension.unwrap_or("?"),
                quoted(i.value.as_deref().unwrap_or("")),
                i.detail
            ),
            "no_policy" => format!("! agent {}: no policy covers it ({})", i.agent_id, i.detail),
            _ => continue,
        };
        lines.push(line);
    }
    for l in lines {
        o.push_str(&printable(&l));
        o.push('\n');
    }
    Ok(o)
}
