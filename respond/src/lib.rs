//! vigil's hand: what findings and operators do to agents.
//!
//! **This crate does no I/O and never awaits.** Findings, events and operator commands go in;
//! breaker transitions (per agent, cohort and fleet, each in the mode its rule says), findings of its
//! own (`halted_agent_activity`, `cohort_anomaly`) and the halts a gateway's check must see come out.
//! Its only clock is event time and a command's stamp, so a replay decides the same.
//!
//! - [`breaker`]: one agent's breaker as types (`Closed → Open → HalfOpen → Closed`);
//! - [`Board`]: every breaker, the trip rules, the flap guard, operator commands;
//! - [`View`]: the halts in force, for the check endpoint;
//! - [`webhook`]: Standard Webhooks payloads and signatures.

mod board;
pub mod breaker;
mod config;
mod view;
pub mod webhook;

pub use board::{Board, Command, Response, Target, Unchanged, Verb};
pub use config::{
    CohortConfig, ConfigError, FleetConfig, HardLimitRule, RepeatedRule, RespondConfig, Rules, SimpleRule,
};
pub use view::{Factors, Halt, View, factor_of};

#[cfg(test)]
mod tests;
