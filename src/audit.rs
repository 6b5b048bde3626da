//! `vigil audit`: the least-privilege review a security team runs weekly over the archive.
//!
//! Per agent, from what it actually did in the period against what its policies allow: allow-list
//! entries it never used (candidates to revoke), dimensions its policies leave unrestricted, things it
//! used that no policy covering it declares, credentials it shares with other agents, the humans it acts
//! for, and agents that no policy covers at all. Dimensions (action, resource, scope) are judged one at a
//! time here; the engine's `policy_violation` judges each event's combination.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMillisecondArray};
use serde::Serialize;
use vigil_detect::{DetectConfig, Glob, GlobSet};
use vigil_ingest::archive::scan_table;
use vigil_schemas::timestamp::format_rfc3339_ms;

use crate::policy::printable;
use crate::progress::Progress;

const COLUMNS: &[&str] =
    &["ts", "agent_id", "agent_role", "action", "resource", "scope", "credential_id", "principal"];

/// What one agent did in the period.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// Last role seen.
    pub role: Option<String>,
    /// Events.
    pub events: u64,
    /// Uses per action.
    pub actions: BTreeMap<String, u64>,
    /// Uses per resource.
    pub resources: BTreeMap<String, u64>,
    /// Uses per scope.
    pub scopes: BTreeMap<String, u64>,
    /// Credentials used.
    pub credentials: BTreeSet<String>,
    /// Humans acted for.
    pub principals: BTreeSet<String>,
    /// Distinct values dropped past the per-agent cap.
    pub dropped: u64,
}

/// The period and what was read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Scanned {
    /// Parquet files read.
    pub files: usize,
    /// Events in the period.
    pub events: u64,
    /// First event time in the period (RFC 3339).
    pub first: Option<String>,
    /// Last event time in the period (RFC 3339).
    pub last: Option<String>,
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name)?.as_any().downcast_ref::<StringArray>()
}

fn value(a: Option<&StringArray>, i: usize) -> Option<&str> {
    a.filter(|a| a.is_valid(i)).map(|a| a.value(i))
}

/// Every event of `events/` under `archive` between `since` and `until` (UTC ms, inclusive, exclusive)
/// that names an agent, with a progress display labelled `label` on a terminal: `each(ts, agent,
/// values)`, `values` being the string `columns` after `ts` and `agent_id` (which `columns` starts with).
/// Returns the files read. The scan the least-privilege tools (`audit`, `policy suggest`) share.
pub(crate) fn scan_events(
    archive: &Path,
    columns: &[&str],
    since: Option<i64>,
    until: Option<i64>,
    label: &'static str,
    mut each: impl FnMut(i64, &str, &[Option<&str>]),
) -> Result<usize, String> {
    debug_assert_eq!(columns[..2], ["ts", "agent_id"]);
    let started = std::time::Instant::now();
    let (read, mut bar) = (std::cell::Cell::new(0u64), None);
    let files = scan_table(
        archive,
        "events",
        columns,
        |batch| {
            read.set(read.get() + batch.num_rows() as u64);
            let Some(ts) = batch
                .column_by_name("ts")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            else {
                return;
            };
            let cols: Vec<Option<&StringArray>> = columns[1..].iter().map(|c| strings(batch, c)).collect();
            let mut values: Vec<Option<&str>> = vec![None; cols.len() - 1];
            for i in 0..batch.num_rows() {
                let t = ts.value(i);
                if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                    continue;
                }
                let Some(agent) = value(cols[0], i) else { continue };
                for (v, c) in values.iter_mut().zip(&cols[1..]) {
                    *v = value(*c, i);
                }
                each(t, agent, &values);
            }
        },
        |done, total| Progress::files(&mut bar, label, done, total, read.get(), started.elapsed()),
    )
    .map_err(|e| e.to_string())?;
    if let Some(b) = bar.as_mut() {
        b.finish();
    }
    Ok(files)
}

/// Reads `events/` under `archive` and sums each agent's usage between `since` and `until` (UTC ms,
/// inclusive, exclusive). At most `max_values` distinct values are kept per agent and dimension.
pub fn collect(
    archive: &Path,
    since: Option<i64>,
    until: Option<i64>,
    max_values: usize,
) -> Result<(BTreeMap<String, Usage>, Scanned), String> {
    let mut agents: BTreeMap<String, Usage> = BTreeMap::new();
    let mut scanned = Scanned::default();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let bump = |m: &mut BTreeMap<String, u64>, v: &str, dropped: &mut u64| {
        if let Some(n) = m.get_mut(v) {
            *n += 1;
        } else if m.len() < max_values {
            m.insert(v.to_owned(), 1);
        } else {
            *dropped += 1;
        }
    };
    scanned.files = scan_events(archive, COLUMNS, since, until, "audit", |t, agent, v| {
        first = first.min(t);
        last = last.max(t);
        scanned.events += 1;
        let u = agents.entry(agent.to_owned()).or_default();
        u.events += 1;
        if let Some(role) = v[0]
            && u.role.as_deref() != Some(role)
        {
            u.role = Some(role.to_owned());
        }
        let mut dropped = 0;
        for (value, into) in [(v[1], &mut u.actions), (v[2], &mut u.resources), (v[3], &mut u.scopes)] {
            if let Some(x) = value {
                bump(into, x, &mut dropped);
            }
        }
        u.dropped += dropped;
        if let Some(c) = v[4]
            && !u.credentials.contains(c)
        {
            u.credentials.insert(c.to_owned());
        }
        if let Some(p) = v[5]
            && !u.principals.contains(p)
        {
            u.principals.insert(p.to_owned());
        }
    })?;
    if scanned.events > 0 {
        scanned.first = Some(format_rfc3339_ms(first));
        scanned.last = Some(format_rfc3339_ms(last));
    }
    Ok((agents, scanned))
}

/// One line of the review: something about one agent worth a look.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Item {
    /// The agent.
    pub agent_id: String,
    /// Its role, if any.
    pub agent_role: Option<String>,
    /// `no_policy`, `unused_allowed`, `used_undeclared`, `shared_credential` or `acts_for_human`.
    pub check: &'static str,
    /// The policy concerned, where one is.
    pub policy: Option<String>,
    /// `action`, `resource`, `scope`, `credential` or `principal`.
    pub dimension: Option<&'static str>,
    /// The pattern, value, credential or principal.
    pub value: Option<String>,
    /// Uses in the period, or for a shared credential the other agents using it.
    pub detail: String,
}

/// The whole review.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    /// What was read.
    pub scanned: Scanned,
    /// Agents seen.
    pub agents: usize,
    /// Agents no policy covers.
    pub agents_without_policy: usize,
    /// Allow-list entries an agent never used, one per agent and entry; each item's detail says whether
    /// another agent the policy covers used it (if none did, it is a revoke candidate).
    pub unused_allowed: usize,
    /// Values used that no covering policy declares.
    pub used_undeclared: usize,
    /// Credentials used by more than one agent.
    pub shared_credentials: usize,
    /// Agents acting for at least one human.
    pub agents_acting_for_humans: usize,
    /// Policies that leave a dimension open (an empty list allows any value): (policy, dimension).
    pub unrestricted: Vec<(String, &'static str)>,
    /// Every item, by agent then check.
    pub items: Vec<Item>,
}

/// Compares usage with the policies of `cfg`.
pub fn review(usage: &BTreeMap<String, Usage>, scanned: Scanned, cfg: &DetectConfig) -> Review {
    struct Compiled<'a> {
        name: &'a str,
        agents: GlobSet,
        roles: &'a [String],
        dims: [(&'static str, &'a [String], GlobSet); 3],
    }
    let policies: Vec<Compiled> = cfg
        .policies
        .iter()
        .map(|p| Compiled {
            name: &p.name,
            agents: GlobSet::new(&p.agents),
            roles: &p.roles,
            dims: [
                ("action", &p.actions, GlobSet::new(&p.actions)),
                ("resource", &p.resources, GlobSet::new(&p.resources)),
                ("scope", &p.scopes, GlobSet::new(&p.scopes)),
            ],
        })
        .collect();
    let mut by_credential: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (agent, u) in usage {
        for c in &u.credentials {
            by_credential.entry(c).or_default().push(agent);
        }
    }
    let mut items = Vec::new();
    let mut r = Review {
        scanned,
        agents: usage.len(),
        agents_without_policy: 0,
        unused_allowed: 0,
        used_undeclared: 0,
        shared_credentials: by_credential.values().filter(|a| a.len() > 1).count(),
        agents_acting_for_humans: usage.values().filter(|u| !u.principals.is_empty()).count(),
        unrestricted: policies
            .iter()
            .flat_map(|p| p.dims.iter().filter(|d| d.1.is_empty()).map(|d| (p.name.to_owned(), d.0)))
            .collect(),
        items: Vec::new(),
    };
    let covers = |p: &Compiled, agent: &str, u: &Usage| {
        p.agents.matches(agent) || u.role.as_ref().is_some_and(|r| p.roles.iter().any(|x| x == r))
    };
    let uses = |u: &Usage, dim: &str, glob: &Glob| {
        let values = match dim {
            "action" => &u.actions,
            "resource" => &u.resources,
            _ => &u.scopes,
        };
        values.keys().any(|x| glob.matches(x))
    };
    // Per policy, dimension and entry: how many of the agents it covers used it. An entry one agent
    // never used is a revoke candidate only if none of them did (a role's policy serves them all).
    let mut users: HashMap<(usize, usize, usize), usize> = HashMap::new();
    for (agent, u) in usage {
        for (pi, p) in policies.iter().enumerate().filter(|(_, p)| covers(p, agent, u)) {
            for (di, (dim, _, set)) in p.dims.iter().enumerate() {
                for (gi, glob) in set.iter().enumerate() {
                    if uses(u, dim, glob) {
                        *users.entry((pi, di, gi)).or_default() += 1;
                    }
                }
            }
        }
    }
    for (agent, u) in usage {
        let item = |check, policy: Option<&str>, dimension, value: Option<&str>, detail: String| Item {
            agent_id: agent.clone(),
            agent_role: u.role.clone(),
            check,
            policy: policy.map(str::to_owned),
            dimension,
            value: value.map(str::to_owned),
            detail,
        };
        let covering: Vec<(usize, &Compiled)> =
            policies.iter().enumerate().filter(|(_, p)| covers(p, agent, u)).collect();
        if covering.is_empty() {
            r.agents_without_policy += 1;
            items.push(item("no_policy", None, None, None, format!("{} events", u.events)));
        }
        for &(pi, p) in &covering {
            for (di, (dim, patterns, set)) in p.dims.iter().enumerate() {
                for (gi, (pattern, glob)) in patterns.iter().zip(set.iter()).enumerate() {
                    if !uses(u, dim, glob) {
                        r.unused_allowed += 1;
                        let detail = match users.get(&(pi, di, gi)) {
                            Some(n) => format!("never used; {n} other agent(s) of the policy did"),
                            None => "never used by any agent the policy covers (revoke candidate)".into(),
                        };
                        items.push(item("unused_allowed", Some(p.name), Some(dim), Some(pattern), detail));
                    }
                }
            }
        }
        if !covering.is_empty() {
            let used = [("action", &u.actions), ("resource", &u.resources), ("scope", &u.scopes)];
            for (i, (dim, values)) in used.iter().enumerate() {
                for (v, n) in values.iter() {
                    let allowed =
                        covering.iter().any(|(_, p)| p.dims[i].1.is_empty() || p.dims[i].2.matches(v));
                    if !allowed {
                        r.used_undeclared += 1;
                        items.push(item("used_undeclared", None, Some(dim), Some(v), format!("{n} uses")));
                    }
                }
            }
        }
        for c in &u.credentials {
            let others: Vec<&str> =
                by_credential.get(c.as_str()).into_iter().flatten().copied().filter(|a| a != agent).collect();
            if !others.is_empty() {
                items.push(item("shared_credential", None, Some("credential"), Some(c), others.join(" ")));
            }
        }
        for p in &u.principals {
            items.push(item("acts_for_human", None, Some("principal"), Some(p), String::new()));
        }
    }
    r.items = items;
    r
}

/// The review as text for a terminal.
pub fn render(r: &Review, archive: &Path) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "least-privilege review of {}: {} events from {} agents, {} .. {} ({} files)",
        archive.display(),
        r.scanned.events,
        r.agents,
        r.scanned.first.as_deref().unwrap_or("-"),
        r.scanned.last.as_deref().unwrap_or("-"),
        r.scanned.files
    );
    let _ = writeln!(
        o,
        "  {} agents without a policy, {} allow-list entries never used, {} values used but not declared, \
         {} shared credentials, {} agents acting for humans\n",
        r.agents_without_policy,
        r.unused_allowed,
        r.used_undeclared,
        r.shared_credentials,
        r.agents_acting_for_humans
    );
    for (policy, dim) in &r.unrestricted {
        let _ = writeln!(o, "  policy {policy:?} allows any {dim}: least privilege would list them");
    }
    if !r.unrestricted.is_empty() {
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "{:<24} {:<10} {:<18} {:<16} {:<9} {:<40} detail",
        "agent", "role", "check", "policy", "dimension", "value"
    );
    for i in &r.items {
        let _ = writeln!(
            o,
            "{:<24} {:<10} {:<18} {:<16} {:<9} {:<40} {}",
            printable(&i.agent_id),
            printable(i.agent_role.as_deref().unwrap_or("-")),
            i.check,
            printable(i.policy.as_deref().unwrap_or("-")),
            i.dimension.unwrap_or("-"),
            printable(i.value.as_deref().unwrap_or("-")),
            printable(&i.detail)
        );
    }
    o
}

/// One CSV field. Agent-controlled text that a spreadsheet would take for a formula (`=HYPERLINK(…)`,
/// `+`, `-`, `@`, a leading tab or carriage return) is prefixed with `'`, so it is shown, not run.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// The review's items as CSV with a header row.
pub fn to_csv(r: &Review) -> String {
    let mut o = String::from("agent_id,agent_role,check,policy,dimension,value,detail\n");
    for (policy, dim) in &r.unrestricted {
        let _ = writeln!(o, ",,unrestricted,{},{dim},,allows any value", csv_field(policy));
    }
    for i in &r.items {
        let fields = [
            i.agent_id.as_str(),
            i.agent_role.as_deref().unwrap_or(""),
            i.check,
            i.policy.as_deref().unwrap_or(""),
            i.dimension.unwrap_or(""),
            i.value.as_deref().unwrap_or(""),
            i.detail.as_str(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        o.push_str(&line.join(","));
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, item 17: `vigil audit --format csv` passed an agent id of `=HYPERLINK(…)` through, which
    /// a spreadsheet runs; the table printed terminal escapes raw.
    #[test]
    fn agent_controlled_text_is_shown_not_run_in_csv_and_tables() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("support-agent-0001"), "support-agent-0001");
        assert_eq!(printable("a\u{1b}[31mred"), "a\\u{1b}[31mred");
    }
}
