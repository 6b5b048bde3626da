//! End-to-end: a simulated NDJSON file → decode, validate, detect, archive to Parquet, as `vigil run`
//! does it; and, in the same run on the same file, DuckDB converting the NDJSON to zstd Parquet.
//!
//! `cargo bench --bench e2e -- [EVENTS]` (default 1,000,000). Needs the venv of scripts/test.sh (or
//! VIGIL_PYTHON) for the DuckDB comparison. Prints events/s, MB/s, peak RSS and the ratio.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use vigil::cli::demo_config;
use vigil::pipeline::RunOptions;
use vigil::run::file;
use vigil::simulate::{self, SimConfig};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let target: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fleet.ndjson");
    // 1000 agents over a working day; the rate is set so the file holds about `target` events.
    let sim = SimConfig {
        agents: 1000,
        duration_ms: 8 * 3_600_000,
        start_ms: 1_767_600_000_000,
        seed: 77,
        rate: target as f64 / (8.0 * 3600.0) / 1.25,
        incidents: 7,
        bad_model: false,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut n = 0u64;
    simulate::simulate(
        &sim,
        |l| {
            n += 1;
            std::io::Write::write_all(&mut w, l.as_bytes())?;
            std::io::Write::write_all(&mut w, b"\n")
        },
        |_| {},
    )
    .unwrap();
    std::io::Write::flush(&mut w).unwrap();
    drop(w);
    let size = std::fs::metadata(&input).unwrap().len();
    println!("input: {n} events, {:.1} MB, {:.0} bytes/event", size as f64 / 1e6, size as f64 / n as f64);

    let mut cfg = demo_config(dir.path());
    cfg.input.path = Some(input.clone());
    cfg.output.findings = None;
    let rss_before = peak_rss_kib();
    let t = Instant::now();
    let s = file::run(&cfg, &RunOptions::default()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(s.balanced() && s.valid == n);
    let vigil_eps = n as f64 / secs;
    println!(
        "vigil  file → archive: {secs:.2}s  {vigil_eps:.0} events/s  {:.1} MB/s  archive {:.1} MB  peak RSS {} MiB (before run {} MiB)",
        size as f64 / 1e6 / secs,
        s.archive_bytes as f64 / 1e6,
        peak_rss_kib() / 1024,
        rss_before / 1024
    );

    let python = std::env::var_os("VIGIL_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vigil/venv/bin/python")
    });
    let script = format!(
        "import duckdb,time\nduckdb.sql(\"SET enable_progress_bar = false\")\nt=time.time()\nduckdb.sql(\"COPY (SELECT * FROM read_json('{}', format='newline_delimited')) TO '{}' (FORMAT parquet, COMPRESSION zstd)\")\nprint(time.time()-t)",
        input.display(),
        dir.path().join("duck.parquet").display()
    );
    match Command::new(&python).arg("-c").arg(&script).output() {
        Ok(out) if out.status.success() => {
            let Ok(dsecs) = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>() else {
                println!("duckdb printed no time: {out:?}");
                return;
            };
            let duck_eps = n as f64 / dsecs;
            println!(
                "duckdb NDJSON → Parquet: {dsecs:.2}s  {duck_eps:.0} events/s  {:.1} MB/s",
                size as f64 / 1e6 / dsecs
            );
            println!(
                "vigil / duckdb = {:.2}x   (budget: ≥ 1,000,000 events/s and ≥ 1.5x DuckDB)",
                vigil_eps / duck_eps
            );
        }
        other => println!(
            "duckdb comparison not run ({python:?}: {other:?}); run scripts/test.sh once to install it"
        ),
    }
}
