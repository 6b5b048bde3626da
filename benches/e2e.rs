//! End-to-end: a simulated NDJSON file → decode, validate, detect, archive to Parquet, as `vigil run`
//! does it; and, in the same run on the same file, DuckDB converting the NDJSON to zstd Parquet.
//!
//! `cargo bench --bench e2e -- [EVENTS]` (default 1,000,000). Needs the venv of scripts/test.sh (or
//! VIGIL_PYTHON) for the DuckDB comparison. `ROUNDS` (default 3) rounds of a plain run, DuckDB's
//! conversion and a run with `/metrics` served and scraped every second; prints events/s, MB/s, peak RSS,
//! and vigil / DuckDB as the median of the rounds' ratios (each plain run against the DuckDB run after it).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vigil::cli::demo_config;
use vigil::control::Control;
use vigil::pipeline::RunOptions;
use vigil::run::file;
use vigil::simulate::{self, SimConfig};
use vigil::telemetry::Telemetry;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// One `vigil run` of the file, with `/metrics` served and scraped every second when `scrape`: the
/// seconds it took, its summary, and the scrapes answered.
fn run_once(cfg: &vigil::config::VigilConfig, scrape: bool) -> (f64, vigil::pipeline::Summary, u64) {
    let telemetry = Arc::new(Telemetry::new());
    let control = Control::open(cfg, telemetry.clone()).unwrap();
    let mut cfg = cfg.clone();
    cfg.metrics.listen = scrape.then(|| "127.0.0.1:0".to_owned());
    let server = vigil::server::metrics_listener(&cfg, telemetry.clone()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let scraper = server.as_ref().map(|s| {
        let (addr, done) = (s.addr(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut body = Vec::new();
                c.read_to_end(&mut body).unwrap();
                assert!(body.starts_with(b"HTTP/1.1 200"));
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            n
        })
    });
    let t = Instant::now();
    let s = file::run_with(&cfg, &RunOptions::default(), telemetry, control).unwrap();
    let secs = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let scrapes = scraper.map_or(0, |h| h.join().unwrap());
    drop(server);
    (secs, s, scrapes)
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
    let python = std::env::var_os("VIGIL_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vigil/venv/bin/python")
    });
    let script = format!(
        "import duckdb,time\nduckdb.sql(\"SET enable_progress_bar = false\")\nt=time.time()\nduckdb.sql(\"COPY (SELECT * FROM read_json('{}', format='newline_delimited')) TO '{}' (FORMAT parquet, COMPRESSION zstd)\")\nprint(time.time()-t)",
        input.display(),
        dir.path().join("duck.parquet").display()
    );
    let mut duck_missing = None;
    // Rounds of a plain run, DuckDB's conversion and a run with `/metrics` served beside it and scraped
    // every second (as Prometheus would, at a far shorter interval than its usual 15 s), one after the
    // other: on a shared machine whose speed drifts, the ratio of a plain run to the DuckDB run next to
    // it is the figure to trust, not one best against another.
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let (mut plain, mut scraped, mut duck) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for scrape in [false, true] {
            cfg.archive.dir = dir.path().join(format!("archive-{round}-{scrape}"));
            let (secs, s, scrapes) = run_once(&cfg, scrape);
            assert!(s.balanced() && s.valid == n);
            let eps = n as f64 / secs;
            println!(
                "vigil  file → archive{}: {secs:.2}s  {eps:.0} events/s  {:.1} MB/s  archive {:.1} MB  peak RSS {} MiB (before run {} MiB)",
                if scrape {
                    format!(", /metrics scraped every second ({scrapes} scrapes)")
                } else {
                    String::new()
                },
                size as f64 / 1e6 / secs,
                s.archive_bytes as f64 / 1e6,
                peak_rss_kib() / 1024,
                rss_before / 1024
            );
            if scrape {
                scraped.push(eps);
                continue;
            }
            plain.push(eps);
            if duck_missing.is_some() {
                continue;
            }
            match duck_once(&python, &script) {
                Ok(dsecs) => {
                    let duck_eps = n as f64 / dsecs;
                    println!(
                        "duckdb NDJSON → Parquet: {dsecs:.2}s  {duck_eps:.0} events/s  {:.1} MB/s  (vigil / duckdb this round {:.2}x)",
                        size as f64 / 1e6 / dsecs,
                        eps / duck_eps
                    );
                    duck.push(duck_eps);
                }
                Err(why) => duck_missing = Some(why),
            }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "/metrics scraped every second: best {:.0} against {:.0} events/s unscraped ({:+.1}%)",
        best(&scraped),
        best(&plain),
        100.0 * (best(&scraped) / best(&plain) - 1.0)
    );
    if let Some(why) = duck_missing {
        println!("duckdb comparison not run ({python:?}: {why}); run scripts/test.sh once to install it");
        return;
    }
    let mut ratios: Vec<f64> = plain.iter().zip(&duck).map(|(v, d)| v / d).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "vigil / duckdb = {:.2}x, the median of {} rounds (each {}; best against best {:.2}x)   (budget: ≥ 1,000,000 events/s and ≥ 1.5x DuckDB)",
        ratios[ratios.len() / 2],
        ratios.len(),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
        best(&plain) / best(&duck)
    );
}

/// One DuckDB conversion of the file (`script`, run by `python`): the seconds its `COPY` took.
fn duck_once(python: &PathBuf, script: &str) -> Result<f64, String> {
    let out = Command::new(python).arg("-c").arg(script).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("duckdb printed no time: {out:?}"))
}
