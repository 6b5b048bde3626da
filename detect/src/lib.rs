//! vigil's judge: per-agent state, detectors, and findings.
//!
//! **This crate does no I/O and never awaits.** It takes decoded events and returns findings, so the
//! same engine runs in replay, in tests, in benchmarks and in production. Its only clock is event time.

mod budget;
mod config;
mod engine;
mod finding;
mod glob;
mod keys;
mod rhythm;
mod stats;
mod tail;

pub use config::{
    BaselineConfig, BudgetConfig, CeilingConfig, Compiled, ConfigError, DataConfig, DetectConfig,
    IdentityConfig, Period, PolicyConfig, RhythmConfig, ScopeConfig, SlowConfig, SpikeConfig,
};
pub use engine::{Baseline, Engine, Frozen, Measure, Output, Snapshot, Stats};
pub use finding::{Finding, FindingKind, Severity, finding_id};
pub use glob::{Glob, GlobSet};
pub use keys::{generalise, stable_hash};

#[cfg(test)]
mod tests;
