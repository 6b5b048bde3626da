//! Broker faults, injected with librdkafka's mock cluster (in process, real TCP on loopback): commit
//! requests that fail and a broker that goes down. vigil retries and reconnects; nothing is lost or
//! archived twice. (The happy paths run against a real broker in tests/kafka.rs.)

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use vigil::config::VigilConfig;
use vigil::run::kafka::{KafkaRunOptions, run};
use vigil_ingest::source::kafka::KafkaConfig;

fn produce(bootstrap: &str, from: usize, to: usize) {
    let p: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("producer");
    for i in from..to {
        let agent = format!("agent-{:02}", i % 20);
        let ev = format!(
            r#"{{"event_id":"e{i}","ts":{},"agent_id":"{agent}","action":"api.call","resource":"https://x/{}"}}"#,
            1_767_600_000_000i64 + i as i64 * 50,
            i % 7
        );
        while let Err((e, _)) = p.send(BaseRecord::to("events").key(&agent).payload(&ev)) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    p.flush(Duration::from_secs(30)).expect("acknowledged");
}

/// A mock cluster of `brokers` with every topic vigil uses (it does not create topics on request).
fn cluster(brokers: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(brokers).unwrap();
    for t in ["events", "events.dlq", "vigil.findings", "vigil.control", "vigil.state"] {
        mock.create_topic(t, 4, 1).unwrap();
    }
    mock
}

/// A member's config for `group` on `bootstrap`, consuming `events`, with its archive in a scratch
/// directory (kept alive by the returned guard).
fn member(bootstrap: &str, group: &str) -> (tempfile::TempDir, VigilConfig) {
    let dir = common::scratch();
    let mut cfg = VigilConfig::default();
    cfg.archive.dir = dir.path().join("archive");
    let mut k = KafkaConfig::new(bootstrap, vec!["events".into()]);
    k.group = group.into();
    cfg.kafka = Some(k);
    (dir, cfg)
}

#[test]
fn failing_commits_and_a_broker_outage_lose_nothing() {
    let mock = cluster(3);
    let bootstrap = mock.bootstrap_servers();
    produce(&bootstrap, 0, 20_000);

    let (_dir, mut cfg) = member(&bootstrap, "faults");
    cfg.archive.flush_rows = 2_000;
    cfg.archive.flush_seconds = 0.5;
    let k = cfg.kafka.as_mut().unwrap();
    // Frequent statistics, so the last report comes after the consumer caught up (during the idle wait).
    k.statistics_ms = 500;
    k.options.insert("session.timeout.ms".into(), "6000".into());

    // Offset commits fail a few times, with the errors a coordinator move gives.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            run(&cfg, &KafkaRunOptions { idle_exit: Some(Duration::from_secs(6)) }, &stop)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // A broker goes down mid-stream and comes back; meanwhile more events are produced.
    mock.broker_down(2).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    mock.broker_up(2).unwrap();
    produce(&bootstrap, 20_000, 30_000);
    let (summary, lag) = runner.join().unwrap().expect("the run survives the faults");
    assert!(summary.balanced(), "{summary:?}");

    let counts = common::archive_py("event-counts", &cfg.archive.dir, &[]);
    assert_eq!(
        (counts["rows"].as_u64(), counts["distinct"].as_u64()),
        (Some(30_000), Some(30_000)),
        "{counts}"
    );
    // Lag came in from librdkafka's statistics for the partitions consumed, and ended at zero.
    let lag = lag.snapshot();
    assert!(!lag.is_empty(), "no statistics arrived");
    assert!(lag.values().all(|&l| l == 0), "{lag:?}");
}

/// A commit the coordinator refuses for good (not one librdkafka retries) is sent again by the member
/// with its next flush, so the offsets of partitions that then go quiet still reach their archive's
/// position while the member runs (a refused asynchronous commit used to stay refused until new events
/// came or the member stopped).
#[test]
fn a_refused_commit_is_sent_again_while_the_partitions_are_quiet() {
    let mock = cluster(1);
    let bootstrap = mock.bootstrap_servers();
    produce(&bootstrap, 0, 3_000);

    let (_dir, mut cfg) = member(&bootstrap, "refused");
    cfg.archive.flush_seconds = 0.3;
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE; 4],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::spawn(move || run(&cfg, &KafkaRunOptions { idle_exit: None }, &stop))
    };
    // The group's commits, read as another client sees them, while the member is still running.
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", "refused").create().unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..4 {
        partitions.add_partition("events", p);
    }
    let committed = || -> i64 {
        let at = reader.committed_offsets(partitions.clone(), Duration::from_secs(5)).unwrap();
        at.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
    };
    let started = std::time::Instant::now();
    let mut seen = committed();
    while seen < 3_000 && started.elapsed() < Duration::from_secs(60) && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        seen = committed();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (summary, _) = runner.join().unwrap().expect("the run ends cleanly");
    assert_eq!(summary.lines, 3_000, "{summary:?}");
    assert_eq!(seen, 3_000, "committed while running, after the refused commits");
}

/// A broker slower to answer than the idle exit is long: the member's first fetches come back after the
/// idle time has passed, and quiet is not mistaken for done. It exits only once every partition is read
/// to its end (an idle exit that fired on the clock alone archived nothing here).
#[test]
fn an_idle_exit_waits_for_a_slow_broker_to_deliver_the_backlog() {
    let mock = cluster(1);
    let bootstrap = mock.bootstrap_servers();
    produce(&bootstrap, 0, 5_000);
    mock.broker_round_trip_time(1, Duration::from_millis(400)).unwrap();

    let (_dir, mut cfg) = member(&bootstrap, "slow");
    cfg.kafka.as_mut().unwrap().options.insert("session.timeout.ms".into(), "30000".into());
    let stop = AtomicBool::new(false);
    let (summary, _) = run(&cfg, &KafkaRunOptions { idle_exit: Some(Duration::from_millis(150)) }, &stop)
        .expect("the run ends cleanly");
    assert_eq!(summary.lines, 5_000, "{summary:?}");
    let counts = common::archive_py("event-counts", &cfg.archive.dir, &[]);
    assert_eq!(
        (counts["rows"].as_u64(), counts["distinct"].as_u64()),
        (Some(5_000), Some(5_000)),
        "{counts}"
    );
}

/// The brokers' readiness check (`common::listens`) tells this process's listening socket from a port
/// nobody here listens on, which is how a broker that lost the race for its port is told apart.
#[test]
fn the_readiness_check_sees_whose_socket_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(common::listens(std::process::id(), port));
    drop(listener);
    assert!(!common::listens(std::process::id(), port));
    // A connection this process makes is not a listening socket.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
    assert!(!common::listens(std::process::id(), client.local_addr().unwrap().port()));
}

/// Ports for the test servers (`common::free_port`) come from below the kernel's ephemeral range, so
/// the local port of an outgoing connection cannot take one before its server binds it; picks side by
/// side differ, and each is free when picked.
#[test]
fn free_ports_are_outside_the_range_outgoing_connections_use() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let picks: Vec<u16> = (0..20).map(|_| common::free_port()).collect();
    let distinct: std::collections::BTreeSet<u16> = picks.iter().copied().collect();
    assert_eq!(distinct.len(), picks.len(), "{picks:?}");
    for p in picks {
        assert!((10_000..ephemeral).contains(&p), "{p} (ephemeral from {ephemeral})");
        drop(std::net::TcpListener::bind(("127.0.0.1", p)).expect("free when picked"));
    }
    // The ports outgoing connections get are in the ephemeral range, never among the picks' range.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
    assert!(client.local_addr().unwrap().port() >= ephemeral);
}
