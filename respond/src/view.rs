//! What a gateway's check needs, and nothing else: the halts in force (enforce mode only) by agent,
//! cohort and fleet, and which cohorts each agent belongs to. The board keeps one; the edge keeps a copy
//! behind a lock for the check endpoint, fed the same transitions and factor changes, so a check never
//! waits on the judge.

use std::collections::HashMap;

use serde::Serialize;
use vigil_schemas::rows::{Action, Factor, Mode, Scope, Transition};

/// The factors one agent was last seen with, in [`Factor::ALL`] order.
pub type Factors = [Option<String>; 3];

/// A halt in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Halt {
    /// Agent, cohort or fleet.
    pub scope: Scope,
    /// For a cohort: the factor and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<(Factor, String)>,
    /// Since when (UTC ms).
    pub since: i64,
    /// `rule:NAME` or `operator:NAME`.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The halt's transition (its webhook-id).
    pub transition_id: String,
}

/// The halts in force; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// aHash (keyed afresh per process), as the board's agent map: `verdict` looks an agent up for every
    /// event once anything is halted, and every gateway check does.
    agents: HashMap<String, Halt, ahash::RandomState>,
    cohorts: HashMap<(Factor, String), Halt, ahash::RandomState>,
    fleet: Option<Halt>,
    factors: HashMap<String, Factors, ahash::RandomState>,
}

/// Where `f` sits in [`Factors`] (and in the board's inline copies).
pub(crate) fn factor_index(f: Factor) -> usize {
    match f {
        Factor::Model => 0,
        Factor::Provider => 1,
        Factor::Issuer => 2,
    }
}

/// The value of `factor` among `factors`.
pub fn factor_of(factors: &Factors, factor: Factor) -> Option<&str> {
    factors[factor_index(factor)].as_deref()
}

pub(crate) fn set_factor(factors: &mut Factors, factor: Factor, value: Option<String>) {
    factors[factor_index(factor)] = value;
}

impl View {
    /// Applies one transition: an enforced halt is put in force, anything else about the same breaker
    /// takes it out.
    pub fn apply(&mut self, t: &Transition) {
        let halt = |scope| Halt {
            scope,
            cohort: t.factor.zip(t.value.clone()),
            since: t.ts,
            actor: t.actor.wire(),
            reason: t.reason.clone(),
            transition_id: t.transition_id.clone(),
        };
        let enforced = t.mode == Mode::Enforce
            && matches!(t.action, Action::AgentHalt | Action::CohortHalt | Action::FleetHalt);
        match t.scope() {
            Scope::Agent => {
                let Some(agent) = &t.agent_id else { return };
                if enforced {
                    self.agents.insert(agent.clone(), halt(Scope::Agent));
                } else if t.mode == Mode::Enforce || t.action == Action::AgentResume {
                    self.agents.remove(agent);
                }
            }
            Scope::Cohort => {
                let Some(key) = t.factor.zip(t.value.clone()) else { return };
                if enforced {
                    self.cohorts.insert(key, halt(Scope::Cohort));
                } else if t.action == Action::CohortResume {
                    self.cohorts.remove(&key);
                }
            }
            Scope::Fleet => {
                if enforced {
                    self.fleet = Some(halt(Scope::Fleet));
                } else if t.action == Action::FleetResume {
                    self.fleet = None;
                }
            }
        }
    }

    /// Records the factors an agent was last seen with.
    pub fn set_factors(&mut self, agent: &str, factors: Factors) {
        match self.factors.get_mut(agent) {
            Some(f) => *f = factors,
            None => {
                self.factors.insert(agent.to_owned(), factors);
            }
        }
    }

    /// The factors an agent was last seen with.
    pub fn factors(&self, agent: &str) -> Option<&Factors> {
        self.factors.get(agent)
    }

    /// Whether nothing is halted at all (the common case: callers skip per-event work).
    pub fn is_clear(&self) -> bool {
        self.fleet.is_none() && self.agents.is_empty() && self.cohorts.is_empty()
    }

    /// The halt that stops `agent`, if any: the fleet's first, then its own, then its cohorts'.
    pub fn verdict(&self, agent: &str) -> Option<&Halt> {
        if let Some(h) = &self.fleet {
            return Some(h);
        }
        if let Some(h) = self.agents.get(agent) {
            return Some(h);
        }
        if self.cohorts.is_empty() {
            return None;
        }
        let factors = self.factors.get(agent)?;
        Factor::ALL.iter().find_map(|&f| {
            let v = factor_of(factors, f)?;
            self.cohorts.get(&(f, v.to_owned()))
        })
    }

    /// Every agent known behind `factor = value`, sorted.
    pub fn members(&self, factor: Factor, value: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .factors
            .iter()
            .filter(|(_, f)| factor_of(f, factor) == Some(value))
            .map(|(a, _)| a.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// The halts in force: agents (sorted), cohorts (sorted), the fleet.
    pub fn halts(&self) -> (Vec<(&str, &Halt)>, Vec<&Halt>, Option<&Halt>) {
        let mut agents: Vec<(&str, &Halt)> = self.agents.iter().map(|(a, h)| (a.as_str(), h)).collect();
        agents.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut cohorts: Vec<&Halt> = self.cohorts.values().collect();
        cohorts.sort_unstable_by(|a, b| a.cohort.cmp(&b.cohort));
        (agents, cohorts, self.fleet.as_ref())
    }

    /// The ids of the agents known, in no order.
    pub fn agent_ids(&self) -> impl Iterator<Item = &str> {
        self.factors.keys().map(String::as_str)
    }
}
