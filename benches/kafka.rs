//! Through Kafka: raw librdkafka consumption of a topic (consume and discard) against vigil consuming the
//! same topic end to end into the archive, in one run against one broker. The budget (issue 3): vigil
//! reaches at least 80% of the raw rate.
//!
//! `cargo bench --bench kafka -- [EVENTS]` (default 300,000). Needs tansu (scripts/test.sh installs it
//! into ~/.cache/vigil/tools, or set VIGIL_TANSU).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use vigil::config::VigilConfig;
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

    // vigil: the same topic through decode, detection and the archive, committing as it goes.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = VigilConfig::default();
    cfg.archive.dir = dir.path().join("archive");
    let mut k = KafkaConfig::new(&addr, vec!["bench".into()]);
    k.group = "vigil".into();
    cfg.kafka = Some(k);
    let idle = Duration::from_secs(2);
    let stop = AtomicBool::new(false);
    let (summary, _) =
        vigil::run::kafka::run(&cfg, &vigil::run::kafka::KafkaRunOptions { idle_exit: Some(idle) }, &stop)
            .unwrap();
    assert_eq!(summary.valid, produced, "vigil archived every event");
    // The run ends after `idle` with nothing arriving, and spends a group join first; both are counted
    // against vigil except the idle wait itself.
    let vigil_secs = (summary.elapsed.as_secs_f64() - idle.as_secs_f64()).max(1e-9);
    let mb = bytes as f64 / 1e6;
    println!(
        "raw librdkafka consume+discard: {produced} events in {raw_secs:.2}s = {:.0} events/s ({:.1} MB/s)",
        produced as f64 / raw_secs,
        mb / raw_secs
    );
    println!(
        "vigil consume+decode+detect+archive+commit: {:.2}s = {:.0} events/s ({:.1} MB/s)",
        vigil_secs,
        produced as f64 / vigil_secs,
        mb / vigil_secs
    );
    println!("vigil / raw = {:.2} (budget: at least 0.80)", raw_secs / vigil_secs);
}
