//! The `vigil` binary's library: config, the pipeline core and its drivers, the HTTP server, the fleet simulator and the CLI.
//!
//! The crates below do the work: `vigil-schemas` (the event contract), `vigil-ingest` (sources and the
//! archive), `vigil-detect` (the judge). This crate wires them together.

/// The allocator of every program built on this crate (the binary, its tests and benchmarks, so they
/// measure what ships): mimalloc. Parquet's writer, Arrow's builders and the engine's windows allocate
/// and free many small buffers per file and per window, and glibc's malloc spent a third of a sparse
/// replay's CPU in itself (docs/PERFORMANCE.md, 2026-12-03). Built with `no_thp`: mimalloc otherwise
/// asks for transparent huge pages on its arenas, and each page it purges and touches again is a fresh
/// 2 MiB page the kernel zeroes (a fifth of a sparse replay's samples; docs/PERFORMANCE.md, eighth entry).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
