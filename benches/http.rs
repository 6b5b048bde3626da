//! HTTP ingest end to end: client threads POST NDJSON bodies over keep-alive connections to `vigil
//! serve` in this process, and every answer is awaited (so every event counted is synced to the intake
//! journal, or acknowledged by the broker). Two runs: the embedded pipeline, then producing to a tansu
//! broker. Each reports the rate until the last answer and until the server stopped with everything
//! archived (embedded) or flushed (Kafka). Between them, a trickle (50 requests of 10 events, 10 a
//! second) reports answer latency and the Parquet files it made.
//!
//! `cargo bench --bench http -- [EVENTS] [EVENTS_PER_REQUEST] [CLIENTS]` (defaults 200,000, 1,000, 4).
//! The Kafka run needs tansu (scripts/test.sh installs it, or set VIGIL_TANSU).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vigil::config::VigilConfig;
use vigil_ingest::source::kafka::KafkaConfig;

#[path = "support/mod.rs"]
mod support;

use support::Conn;

fn main() {
    let mut nums = std::env::args().skip(1).filter_map(|a| a.replace('_', "").parse::<usize>().ok());
    let events = nums.next().unwrap_or(200_000);
    let per_request = nums.next().unwrap_or(1_000);
    let clients = nums.next().unwrap_or(4);
    let lines = support::fleet_lines(events as u64);
    let bodies: Vec<Vec<u8>> = lines.chunks(per_request).map(|c| c.join("\n").into_bytes()).collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!("{} events in {} requests of {per_request}, {clients} clients", lines.len(), bodies.len());

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = VigilConfig::default();
    cfg.archive.dir = dir.path().join("archive");
    cfg.http.listen = "127.0.0.1:0".into();
    report(
        "embedded (judged, answered when journaled, archived)",
        drive(&cfg, &bodies, clients),
        lines.len(),
        bytes,
    );

    let mut quiet = cfg.clone();
    quiet.archive.dir = dir.path().join("trickle");
    let small: Vec<Vec<u8>> = lines[..500].chunks(10).map(|c| c.join("\n").into_bytes()).collect();
    trickle(&quiet, &small, Duration::from_millis(100));

    let broker = support::Broker::start();
    cfg.kafka = Some(KafkaConfig::new(&broker.addr, vec!["http-bench".into()]));
    report("kafka (produced, answered when acknowledged)", drive(&cfg, &bodies, clients), lines.len(), bytes);
}

fn report(what: &str, (secs, stopped, retries): (f64, f64, u64), events: usize, bytes: usize) {
    println!(
        "{what}: {events} events answered in {secs:.2}s = {:.0} events/s ({:.1} MB/s), {retries} requests \
         answered 429; stopped with everything written after {stopped:.2}s = {:.0} events/s",
        events as f64 / secs,
        bytes as f64 / 1e6 / secs,
        events as f64 / stopped,
    );
}

/// Serves `cfg` on a thread while `work` runs against its address, then stops it. Returns what `work`
/// returned, the server's summary, and the seconds from the start of `work` to the server stopped.
fn with_server<R: Send>(
    cfg: &VigilConfig,
    work: impl FnOnce(SocketAddr) -> R + Send,
) -> (R, vigil::pipeline::Summary, f64) {
    let stop = AtomicBool::new(false);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            vigil::server::serve(cfg, &stop, move |a| {
                let _ = addr_tx.send(a);
            })
        });
        let addr = addr_rx.recv().expect("the server started");
        let started = Instant::now();
        let r = work(addr);
        stop.store(true, Ordering::Relaxed);
        let summary = server.join().unwrap().expect("serve ran");
        (r, summary, started.elapsed().as_secs_f64())
    })
}

/// Posts every body from `clients` threads; returns the seconds from the first request to the last
/// answer, to the server stopped with everything written, and how many 429s were met (and retried).
fn drive(cfg: &VigilConfig, bodies: &[Vec<u8>], clients: usize) -> (f64, f64, u64) {
    let (next, retries) = (&AtomicUsize::new(0), &AtomicU64::new(0));
    let (secs, summary, stopped) = with_server(cfg, |addr| {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(move || {
                    let mut conn = Conn::open(addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else { break };
                        loop {
                            match conn.post(body) {
                                200 => break,
                                429 => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                other => panic!("request {i} answered {other}"),
                            }
                        }
                    }
                });
            }
        });
        started.elapsed().as_secs_f64()
    });
    let sent: usize = bodies.iter().map(|b| b.split(|c| *c == b'\n').count()).sum();
    assert_eq!(summary.valid as usize, sent, "every event taken");
    (secs, stopped, retries.load(Ordering::Relaxed))
}

/// A trickle: `bodies` posted one at a time, `every` apart, to a fresh embedded archive. Prints the
/// answer latency and how many Parquet files the archive got.
fn trickle(cfg: &VigilConfig, bodies: &[Vec<u8>], every: Duration) {
    let (mut latency, summary, _) = with_server(cfg, |addr| {
        let mut conn = Conn::open(addr);
        let mut latency = Vec::new();
        for body in bodies {
            let sent = Instant::now();
            assert_eq!(conn.post(body), 200);
            latency.push(sent.elapsed());
            std::thread::sleep(every.saturating_sub(sent.elapsed()));
        }
        latency
    });
    latency.sort();
    let at = |q: f64| latency[((latency.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "trickle ({} requests of {} events, one per {} ms): answered in p50 {:.1} / p90 {:.1} / max {:.1} \
         ms; {} Parquet files of events",
        bodies.len(),
        summary.valid as usize / bodies.len(),
        every.as_millis(),
        at(0.5),
        at(0.9),
        at(1.0),
        support::common::parquet_files(&cfg.archive.dir.join("events"))
    );
}
