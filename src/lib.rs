//! The `vigil` binary's library: config, the pipeline core and its drivers, the HTTP server, the fleet simulator and the CLI.
//!
//! The crates below do the work: `vigil-schemas` (the event contract), `vigil-ingest` (sources and the
//! archive), `vigil-detect` (the judge). This crate wires them together.

pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod deliver;
pub mod demo;
pub mod eval;
pub mod log;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod responder;
pub mod run;
pub mod server;
pub mod simulate;
pub mod telemetry;
