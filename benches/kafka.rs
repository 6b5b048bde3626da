//! Through Kafka: raw librdkafka consumption of a topic (consume and discard) against vigil consuming the
//! same topic end to end into the archive, in one run against one broker, both timed from their first
//! message to their last (vigil's start and end are reported beside). The budget (issue 3): vigil
//! reaches at least 80% of the raw rate.
//!
//! `cargo bench --bench kafka -- [EVENTS]` (default 300,000). Needs tansu (scripts/test.sh installs it
//! into ~/.cache/vigil/tools, or set VIGIL_TANSU).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use vigil::config::VigilConfig;
use vigil::telemetry::Telemetry;
use vigil_ingest::source::kafka::KafkaConfig;

#[path = "support/mod.rs"]
mod support;

fn main() {
    let events: u64 =
        std::env::args().skip(1).find_map(|a| a.replace('_', "").parse().ok()).unwrap_or(300_000);
    let broker = support::Broker::start();
    let addr = broker.addr.clone();

    // The fleet: sized to about `events`, produced keyed by agent over 8 partitions.
    let sim = support::fleet(events);
    let t = Instant::now();
    let produced = vigil::run::kafka::produce_simulated(&sim, &addr, "bench", 8, 0.0, None).unwrap();
    eprintln!("produced {produced} events in {:.1}s", t.elapsed().as_secs_f64());

    // Raw: a consumer group member that reads every message and drops it.
    let raw: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    raw.subscribe(&["bench"]).unwrap();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut started = None;
    while n < produced {
        if let Some(Ok(m)) = raw.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, |p| p.len() as u64);
            n += 1;
        }
    }
    let raw_secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    drop(raw);

    // vigil: the same topic through decode, detection and the archive, committing as it goes. Timed as
    // the raw consumer is, from its first event to its last (a watcher reads the run's counters), so
    // the rates compare consumption; the member's start (output and state topics, the control bus, the
    // group join, state restore) and its end (the idle wait, reading to the log end, the last flush and
    // commit) are reported beside them.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = VigilConfig::default();
    cfg.archive.dir = dir.path().join("archive");
    let mut k = KafkaConfig::new(&addr, vec!["bench".into()]);
    k.group = "vigil".into();
    cfg.kafka = Some(k);
    let idle = Duration::from_secs(2);
    let stop = AtomicBool::new(false);
    let telemetry = Arc::new(Telemetry::new());
    let control = vigil::control::Control::open(&cfg, telemetry.clone()).unwrap();
    let done = AtomicBool::new(false);
    let began = Instant::now();
    let (summary, first, last) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let (mut first, mut last) = (None, None);
            while !done.load(Ordering::Relaxed) {
                let valid = telemetry.summary("bench").valid;
                if valid > 0 {
                    first.get_or_insert_with(Instant::now);
                }
                if valid >= produced {
                    last.get_or_insert_with(Instant::now);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (first, last)
        });
        let opts = vigil::run::kafka::KafkaRunOptions { idle_exit: Some(idle) };
        let run = vigil::run::kafka::run_with(&cfg, &opts, &stop, telemetry.clone(), control);
        done.store(true, Ordering::Relaxed);
        let (first, last) = watch.join().unwrap();
        (run.unwrap().0, first.unwrap(), last.unwrap())
    });
    assert_eq!(summary.valid, produced, "vigil archived every event");
    let vigil_secs = (last - first).as_secs_f64().max(1e-9);
    let mb = bytes as f64 / 1e6;
    println!(
        "raw librdkafka consume+discard: {produced} events in {raw_secs:.2}s = {:.0} events/s ({:.1} MB/s)",
        produced as f64 / raw_secs,
        mb / raw_secs
    );
    println!(
        "vigil consume+decode+detect+archive: {vigil_secs:.2}s = {:.0} events/s ({:.1} MB/s), first event to last",
        produced as f64 / vigil_secs,
        mb / vigil_secs
    );
    println!(
        "vigil start to first event {:.2}s; last event to the end (idle {}s, read to the log end, last flush and commit) {:.2}s; whole run {:.2}s",
        (first - began).as_secs_f64(),
        idle.as_secs(),
        summary.elapsed.as_secs_f64() - (last - began).as_secs_f64(),
        summary.elapsed.as_secs_f64()
    );
    println!("vigil / raw = {:.2} (budget: at least 0.80)", raw_secs / vigil_secs);
}
