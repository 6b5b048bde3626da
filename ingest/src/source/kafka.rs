//! Kafka: the typed `[kafka]` config and the librdkafka clients built from it. The consume loop itself
//! lives with the pipeline (it wires detection and the archive together); this module knows Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicU64, Ordering};

use std::future::Future;
use std::task::{Context, Poll, Wake};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// What keeps vigil from setting up its Kafka side: config, clients, topics, the state topic.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A `[kafka]` value is unusable.
    #[error("kafka.{key} {problem}")]
    Config {
        /// The key, below `kafka.`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// librdkafka refused to create a client.
    #[error("creating {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The cluster's metadata could not be read (brokers unreachable, …).
    #[error("reading the cluster's topics from {brokers}: {source} (is a broker listening there?)")]
    Metadata {
        /// The bootstrap brokers asked.
        brokers: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The admin request to create topics failed as a whole.
    #[error("creating {topics}: {source}")]
    Admin {
        /// The topics asked for.
        topics: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The cluster refused to create a topic.
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The state topic could not be read.
    #[error("reading {topic}: {source}")]
    StateRead {
        /// The state topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The state topic's end was not reached in time.
    #[error("reading {topic} did not reach its end within {seconds}s (state partitions left: {left:?})")]
    StateTimeout {
        /// The state topic.
        topic: String,
        /// The time allowed.
        seconds: u64,
        /// Its partitions not read to the end.
        left: Vec<i32>,
    },
    /// A state record on the state topic is damaged.
    #[error("state of {of} at {at}: {problem}")]
    BadState {
        /// `topic/partition` whose state it is.
        of: String,
        /// `state partition/offset` of the record.
        at: String,
        /// Why it cannot be read.
        problem: StateDecodeError,
    },
}

/// Why a state record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    /// The bytes are not zstd.
    #[error("not zstd: {0}")]
    NotZstd(std::io::Error),
    /// The JSON inside is not a state record.
    #[error("not a state record: {0}")]
    NotRecord(serde_json::Error),
    /// A piece of a state too big for one record has no valid header.
    #[error("not a piece of a state (no header)")]
    NotPiece,
}

/// `[kafka]`: where events come from when vigil runs as a consumer group.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics to consume (events keyed by agent_id, one JSON object per message).
    pub topics: Vec<String>,
    /// Consumer group: instances in one group split the partitions.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where bad records go; `{topic}` is replaced by the source topic.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Every finding is also produced here as JSON keyed by agent_id; empty turns it off.
    #[serde(default = "default_findings_topic")]
    pub findings_topic: String,
    /// Every breaker transition (a rule's or an operator's) is produced here as JSON keyed by its breaker
    /// (`agent:ID`, `cohort:F=V`, `fleet`); every member reads it to share halts. Compacted when vigil
    /// creates it. Empty keeps each member's breakers to itself.
    #[serde(default = "default_control_topic")]
    pub control_topic: String,
    /// Compacted topic holding each partition's detector state (zstd JSON keyed by
    /// `{group}/{topic}/{partition}`), produced at every commit, so a member on any machine resumes a
    /// partition with its baselines. Empty turns it off: state then lives only in the archive checkpoint,
    /// which members share only if they share the archive root.
    #[serde(default = "default_state_topic")]
    pub state_topic: String,
    /// Largest state record in bytes, compressed (the state topic's `max.message.bytes`, the producer's
    /// `message.max.bytes`). A partition whose state outgrows it goes in pieces of this size, each
    /// acknowledged on its own (see `StateRecord::to_messages`).
    #[serde(default = "default_state_max_bytes")]
    pub state_max_bytes: usize,
    /// Most messages taken per poll batch.
    #[serde(default = "default_batch_messages")]
    pub batch_messages: usize,
    /// How long a poll waits for the batch to fill, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long to wait for the producer to acknowledge dead letters and findings before a commit, ms.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long starting up waits for the cluster (its metadata, creating topics, reading the control
    /// topic to its end) before it gives up naming the brokers, ms.
    #[serde(default = "default_setup_timeout_ms")]
    pub setup_timeout_ms: u64,
    /// How long a member waits for a newly assigned partition's archive lock, ms, when another process
    /// still holds it: the member the group took the partition from, when it shares this archive root
    /// and has not yet noticed (a stall past the session timeout). It lets go at its next poll; a
    /// member still refused after this long stops with the holder named, as before.
    #[serde(default = "default_lock_wait_ms")]
    pub lock_wait_ms: u64,
    /// How often librdkafka reports statistics (consumer lag per partition), in milliseconds.
    #[serde(default = "default_statistics_ms")]
    pub statistics_ms: u64,
    /// Create the dead-letter, findings and control topics at start when they are missing (with the
    /// partition count of the first source topic), so a fresh cluster works without an admin step.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Passed to librdkafka as is, for consumer and producer: `security.protocol`, `sasl.*`, `ssl.*`…
    /// Defaults vigil sets (`auto.offset.reset = earliest`, no auto-commit) can be overridden here,
    /// except `enable.auto.commit`: offsets move only after the archive is durable.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

const fn default_true() -> bool {
    true
}
fn default_group() -> String {
    "vigil".into()
}
fn default_dlq_topic() -> String {
    "{topic}.dlq".into()
}
fn default_findings_topic() -> String {
    "vigil.findings".into()
}
fn default_control_topic() -> String {
    "vigil.control".into()
}
fn default_state_topic() -> String {
    "vigil.state".into()
}
/// 16 MiB: tens of thousands of agents' state per partition, compressed.
const fn default_state_max_bytes() -> usize {
    16 << 20
}
const fn default_batch_messages() -> usize {
    10_000
}
const fn default_poll_ms() -> u64 {
    100
}
const fn default_ack_timeout_ms() -> u64 {
    30_000
}
const fn default_setup_timeout_ms() -> u64 {
    30_000
}
/// Longer than librdkafka's default `session.timeout.ms` (45 s): a stalled member that the group gave up
/// on is given about as long again to notice and let go.
const fn default_lock_wait_ms() -> u64 {
    60_000
}
const fn default_statistics_ms() -> u64 {
    5_000
}

impl KafkaConfig {
    /// How long starting up waits for the cluster.
    pub fn setup_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.setup_timeout_ms)
    }

    /// A config with defaults for everything but the brokers and topics.
    pub fn new(brokers: &str, topics: Vec<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            topics,
            group: default_group(),
            dlq_topic: default_dlq_topic(),
            findings_topic: default_findings_topic(),
            control_topic: default_control_topic(),
            batch_messages: default_batch_messages(),
            poll_ms: default_poll_ms(),
            ack_timeout_ms: default_ack_timeout_ms(),
            setup_timeout_ms: default_setup_timeout_ms(),
            lock_wait_ms: default_lock_wait_ms(),
            statistics_ms: default_statistics_ms(),
            create_topics: true,
            state_topic: default_state_topic(),
            state_max_bytes: default_state_max_bytes(),
            options: BTreeMap::new(),
        }
    }

    /// Checks values; the error names the key.
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        let bad = |key: &'static str, problem: String| Err(KafkaSetupError::Config { key, problem });
        if self.brokers.trim().is_empty() {
            return bad("brokers", "is empty".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return bad("topics", "must name at least one topic".into());
        }
        if self.group.is_empty() {
            return bad("group", "is empty".into());
        }
        if self.state_max_bytes < 1024 {
            return bad("state_max_bytes", format!("must be at least 1024, got {}", self.state_max_bytes));
        }
        if self.batch_messages == 0 {
            return bad("batch_messages", "must be at least 1".into());
        }
        if self.options.get("enable.auto.commit").is_some_and(|v| v != "false") {
            return bad(
                "options.enable.auto.commit",
                "must be false: vigil commits offsets itself, after the archive is durable; auto-commit \
                 would lose events on a crash"
                    .into(),
            );
        }
        Ok(())
    }

    /// The dead-letter topic for a source topic.
    pub fn dlq_for(&self, topic: &str) -> String {
        self.dlq_topic.replace("{topic}", topic)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// The consumer's librdkafka settings.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", self.statistics_ms.to_string());
        for (k, v) in &self.options {
            c.set(k, v);
        }
        // Never auto-commit, whatever the options say (validate refuses it; this is the belt).
        c.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
        c
    }

    /// The topics vigil produces to, for the source topics.
    pub fn output_topics(&self) -> Vec<String> {
        let mut out: Vec<String> = self.topics.iter().map(|t| self.dlq_for(t)).collect();
        out.extend(
            [self.findings_topic.clone(), self.control_topic.clone()].into_iter().filter(|t| !t.is_empty()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// Creates the output topics that do not exist yet, with as many partitions as the first source
    /// topic (so findings keyed by agent spread like the events). Existing topics are left alone.
    pub fn ensure_output_topics(&self, timeout: std::time::Duration) -> Result<(), KafkaSetupError> {
        let admin = self.admin()?;
        let first = self.topics.first().map_or("", String::as_str);
        let partitions = topic_partitions(&admin, &self.brokers, first, timeout)?.max(1);
        let names: Vec<String> =
            self.output_topics().into_iter().filter(|t| *t != self.control_topic).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        create_missing(&admin, &self.brokers, &names, partitions, timeout)?;
        if self.control_topic.is_empty() {
            return Ok(());
        }
        // The control topic is the members' breaker state: compacted, so the last transition of every
        // breaker is kept for as long as the cluster lives, not for the retention time.
        let meta = admin
            .inner()
            .fetch_metadata(Some(&self.control_topic), timeout)
            .map_err(|source| KafkaSetupError::Metadata { brokers: self.brokers.clone(), source })?;
        if meta.topics().iter().any(|t| t.name() == self.control_topic && !t.partitions().is_empty()) {
            return Ok(());
        }
        let topic = NewTopic::new(&self.control_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results = block_on(admin.create_topics(&[topic], &opts))
            .map_err(|source| KafkaSetupError::Admin { topics: self.control_topic.clone(), source })?;
        created(results)
    }

    /// Creates those of `topics` that do not exist yet, with `partitions` partitions each.
    pub fn ensure_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        timeout: std::time::Duration,
    ) -> Result<(), KafkaSetupError> {
        create_missing(&self.admin()?, &self.brokers, topics, partitions, timeout)
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
        self.client().create().map_err(|source| KafkaSetupError::Client { what: "an admin client", source })
    }

    /// A producer for dead letters, findings and decisions: idempotent, acknowledged by all replicas,
    /// counting every delivery that failed so a commit can refuse to move past it.
    pub fn producer(&self) -> Result<ThreadedProducer<AckContext>, KafkaError> {
        self.producer_config().create_with_context(AckContext::default())
    }

    /// The producer's librdkafka settings: `[kafka.options]`, then idempotence and acknowledgement by
    /// all replicas, which the options cannot weaken.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client();
        c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "20");
        if !self.state_topic.is_empty() {
            c.set("message.max.bytes", self.state_max_bytes.max(1_000_000).to_string());
        }
        c
    }

    /// Partitions of `topic` (0 when it does not exist).
    pub fn partitions(&self, topic: &str, timeout: std::time::Duration) -> Result<i32, KafkaSetupError> {
        topic_partitions(&self.admin()?, &self.brokers, topic, timeout)
    }

    /// The key of a partition's state on the state topic.
    pub fn state_key(&self, topic: &str, partition: i32) -> String {
        format!("{}/{}/{}", self.group, topic, partition)
    }

    /// Creates the state topic when missing (compacted, as many partitions as the first source topic, so
    /// a source partition's state lives in state partition `partition % n`); returns its partition count.
    pub fn ensure_state_topic(&self, timeout: std::time::Duration) -> Result<i32, KafkaSetupError> {
        let admin = self.admin()?;
        let existing = topic_partitions(&admin, &self.brokers, &self.state_topic, timeout)?;
        if existing > 0 {
            return Ok(existing);
        }
        let first = self.topics.first().map_or("", String::as_str);
        let partitions = topic_partitions(&admin, &self.brokers, first, timeout)?.max(1);
        let max_bytes = self.state_max_bytes.to_string();
        let topic = NewTopic::new(&self.state_topic, partitions, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact")
            .set("max.message.bytes", &max_bytes)
            // Compaction only cleans closed segments: short ones keep the log a restore reads small.
            .set("segment.ms", "600000")
            .set("min.cleanable.dirty.ratio", "0.1");
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results = block_on(admin.create_topics([&topic], &opts))
            .map_err(|source| KafkaSetupError::Admin { topics: self.state_topic.clone(), source })?;
        created(results)?;
        Ok(topic_partitions(&admin, &self.brokers, &self.state_topic, timeout)?.max(partitions))
    }

    /// The newest complete state on the state topic of each `(topic, partition)` asked for (whole, or
    /// put together from its pieces; see [`StateRecord::to_messages`]), and the generation its next
    /// pieces go to. Reads each state partition concerned from its beginning to its end as of now.
    pub fn read_states(
        &self,
        wanted: &[(String, i32)],
        state_partitions: i32,
        timeout: std::time::Duration,
    ) -> Result<HashMap<(String, i32), StoredState>, KafkaSetupError> {
        let mut found: HashMap<(String, i32), Gathered> = HashMap::new();
        if wanted.is_empty() || self.state_topic.is_empty() || state_partitions <= 0 {
            return Ok(HashMap::new());
        }
        let keys: HashMap<String, (String, i32)> =
            wanted.iter().map(|(t, p)| (self.state_key(t, *p), (t.clone(), *p))).collect();
        let mut c = self.client();
        // The end of each partition is learnt from librdkafka's end-of-partition events, which also come
        // for an empty partition: no separate watermark query that a cold client might fail.
        // A short fetch wait: the broker holds a fetch of a partition with nothing new for up to this
        // long before it answers, and only that answer says the end is reached (the default, 500 ms, cost
        // a second and a half before a member's first event).
        c.set("group.id", format!("{}.state-reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS);
        let consumer: BaseConsumer =
            c.create().map_err(|source| KafkaSetupError::Client { what: "the state reader", source })?;
        let mut pending: std::collections::BTreeSet<i32> =
            wanted.iter().map(|(_, p)| p.rem_euclid(state_partitions)).collect();
        let mut tpl = TopicPartitionList::new();
        for sp in &pending {
            tpl.add_partition_offset(&self.state_topic, *sp, Offset::Beginning)
                .map_err(|source| KafkaSetupError::StateRead { topic: self.state_topic.clone(), source })?;
        }
        // The topic's leaders first: a partition assigned before its leader is known waits for
        // librdkafka's offset query timer (half a second) before its first fetch.
        consumer
            .fetch_metadata(Some(&self.state_topic), timeout)
            .map_err(|source| KafkaSetupError::StateRead { topic: self.state_topic.clone(), source })?;
        consumer
            .assign(&tpl)
            .map_err(|source| KafkaSetupError::StateRead { topic: self.state_topic.clone(), source })?;
        let deadline = std::time::Instant::now() + timeout;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(KafkaSetupError::StateTimeout {
                    topic: self.state_topic.clone(),
                    seconds: timeout.as_secs(),
                    left: pending.into_iter().collect(),
                });
            }
            let m = match consumer.poll(left.min(std::time::Duration::from_millis(200))) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(sp))) => {
                    pending.remove(&sp);
                    continue;
                }
                // Transport errors are retried by librdkafka until the deadline.
                Some(Err(_)) => continue,
                Some(Ok(m)) => m,
            };
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
            // A whole state under the partition's key, or a piece under `{key}#{generation}.{index}`.
            let (which, piece) = match keys.get(key) {
                Some(which) => (which, None),
                None => {
                    match key.rsplit_once('#').and_then(|(base, at)| Some((keys.get(base)?, piece_at(at)?))) {
                        Some((which, at)) => (which, Some(at)),
                        None => continue,
                    }
                }
            };
            let bad = |problem| bad_state(which, format!("{}/{}", m.partition(), m.offset()), problem);
            let g = found.entry(which.clone()).or_default();
            match (piece, m.payload()) {
                // A tombstone: the state was withdrawn.
                (None, None) => g.whole = None,
                (None, Some(bytes)) => g.whole = Some(StateRecord::decode(bytes).map_err(bad)?),
                (Some((generation, index)), None) => {
                    g.pieces[generation].remove(&index);
                }
                (Some((generation, index)), Some(bytes)) => {
                    let piece = Piece::decode(bytes).ok_or_else(|| bad(StateDecodeError::NotPiece))?;
                    g.pieces[generation].insert(index, piece);
                }
            }
        }
        found
            .into_iter()
            .map(|(which, g)| match g.newest() {
                Ok(stored) => Ok((which, stored)),
                Err(problem) => Err(bad_state(&which, "its pieces".into(), problem)),
            })
            .collect()
    }
}

/// A state on the state topic that cannot be read: whose (`topic/partition`), where, and why.
fn bad_state(which: &(String, i32), at: String, problem: StateDecodeError) -> KafkaSetupError {
    KafkaSetupError::BadState { of: format!("{}/{}", which.0, which.1), at, problem }
}

/// What the state topic holds for one partition.
#[derive(Debug, Default)]
pub struct StoredState {
    /// Its newest complete state, if any.
    pub record: Option<StateRecord>,
    /// The generation the next state written in pieces goes to: not the one holding the newest complete
    /// pieced state, so that a writer stopped half way never leaves the topic without a whole state.
    pub next_generation: usize,
}

/// A partition's records met while reading the state topic: the newest of each key.
#[derive(Debug, Default)]
struct Gathered {
    whole: Option<StateRecord>,
    /// By generation, the pieces by index.
    pieces: [std::collections::BTreeMap<u32, Piece>; 2],
}

impl Gathered {
    /// The newest of the whole record and the complete generations of pieces (by position, then
    /// commit time).
    fn newest(self) -> Result<StoredState, StateDecodeError> {
        let mut newest = self.whole;
        let mut newest_pieced: Option<(usize, (u64, i64))> = None;
        for (generation, mut pieces) in self.pieces.into_iter().enumerate() {
            // Pieces past the count of piece 0 are left from an older, bigger state.
            let Some(first) = pieces.get(&0) else { continue };
            let id = (first.position, first.committed_at, first.count);
            if !(0..id.2).all(|i| pieces.get(&i).is_some_and(|p| (p.position, p.committed_at, p.count) == id))
            {
                continue;
            }
            let bytes: Vec<u8> = (0..id.2).filter_map(|i| pieces.remove(&i)).flat_map(|p| p.bytes).collect();
            let record = StateRecord::decode(&bytes)?;
            let id = (id.0, id.1);
            if newest_pieced.is_none_or(|(_, n)| n < id) {
                newest_pieced = Some((generation, id));
            }
            if newest.as_ref().is_none_or(|n| (n.position, n.committed_at) < id) {
                newest = Some(record);
            }
        }
        Ok(StoredState { record: newest, next_generation: newest_pieced.map_or(0, |(g, _)| 1 - g) })
    }
}

/// `{generation}.{index}` of a piece's key.
fn piece_at(suffix: &str) -> Option<(usize, u32)> {
    let (generation, index) = suffix.split_once('.')?;
    let generation = match generation {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    Some((generation, index.parse().ok()?))
}

/// One piece of a compressed state record too big for one Kafka record.
#[derive(Debug)]
struct Piece {
    /// Of the state it belongs to: all its pieces carry the same.
    position: u64,
    committed_at: i64,
    /// How many pieces the state has.
    count: u32,
    /// Its part of the compressed record.
    bytes: Vec<u8>,
}

/// Starts every piece: `PIECE_MAGIC | position u64 | committed_at i64 | count u32` (little-endian).
const PIECE_MAGIC: &[u8; 8] = b"vigil.p1";
const PIECE_HEADER: usize = 8 + 8 + 8 + 4;
/// Room left in a record for its key and Kafka's framing.
const RECORD_OVERHEAD: usize = 512;

impl Piece {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PIECE_HEADER + self.bytes.len());
        out.extend_from_slice(PIECE_MAGIC);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.committed_at.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Piece> {
        let header = bytes.get(..PIECE_HEADER)?;
        if &header[..8] != PIECE_MAGIC {
            return None;
        }
        Some(Piece {
            position: u64::from_le_bytes(header[8..16].try_into().ok()?),
            committed_at: i64::from_le_bytes(header[16..24].try_into().ok()?),
            count: u32::from_le_bytes(header[24..28].try_into().ok()?),
            bytes: bytes[PIECE_HEADER..].to_vec(),
        })
    }
}

/// One partition's detector state as it travels on the state topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRecord {
    /// Format version.
    pub version: u32,
    /// The consumer group whose state it is.
    pub group: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The next offset to read: everything before it is judged and archived, and this state reflects it.
    pub position: u64,
    /// Wall time of the commit, UTC ms.
    pub committed_at: i64,
    /// The detector state.
    pub state: crate::archive::State,
}

impl StateRecord {
    /// zstd-compressed JSON: state is repetitive text and compresses about tenfold.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        zstd::encode_all(&serde_json::to_vec(self)?[..], 3)
    }

    /// Reads a record written by [`StateRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<StateRecord, StateDecodeError> {
        let json = zstd::decode_all(bytes).map_err(StateDecodeError::NotZstd)?;
        serde_json::from_slice(&json).map_err(StateDecodeError::NotRecord)
    }

    /// The state topic's records (key, value) that carry this state under `key`, none over `max_bytes`:
    /// one whole record when it fits, else pieces keyed `{key}#{generation}.{index}`, each holding a
    /// slice of the compressed record and saying which state it belongs to and how many pieces it has.
    /// Pieces go to the generation [`KafkaConfig::read_states`] said (then alternate): the other one
    /// keeps the newest complete state while these are written, and compaction keeps the newest of each
    /// key, so a reader always finds one complete state.
    pub fn to_messages(
        &self,
        key: &str,
        max_bytes: usize,
        generation: usize,
    ) -> std::io::Result<StateMessages> {
        let whole = self.encode()?;
        if whole.len() + key.len() + RECORD_OVERHEAD <= max_bytes {
            return Ok(StateMessages { records: vec![(key.to_owned(), whole)], pieced: false });
        }
        let room = max_bytes.saturating_sub(key.len() + 16 + RECORD_OVERHEAD + PIECE_HEADER).max(1);
        let count = u32::try_from(whole.len().div_ceil(room))
            .map_err(|_| std::io::Error::other("a state of more than 4 billion pieces"))?;
        let records = whole
            .chunks(room)
            .enumerate()
            .map(|(i, bytes)| {
                let piece = Piece {
                    position: self.position,
                    committed_at: self.committed_at,
                    count,
                    bytes: bytes.to_vec(),
                };
                (format!("{key}#{generation}.{i}"), piece.encode())
            })
            .collect();
        Ok(StateMessages { records, pieced: true })
    }
}

/// The state topic's records that carry one state: see [`StateRecord::to_messages`].
#[derive(Debug)]
pub struct StateMessages {
    /// Key and value of each, to be produced in order.
    pub records: Vec<(String, Vec<u8>)>,
    /// Whether the state went in pieces (then the next state's pieces go to the other generation).
    pub pieced: bool,
}

/// Partitions of a topic (0 when it does not exist).
fn topic_partitions(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<i32, KafkaSetupError> {
    let meta = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.to_owned(), source })?;
    Ok(meta.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32))
}

/// Creates those of `topics` the cluster does not have; a topic created meanwhile by someone else is fine.
fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    timeout: std::time::Duration,
) -> Result<(), KafkaSetupError> {
    let meta = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.to_owned(), source })?;
    let existing: std::collections::HashSet<&str> = meta.topics().iter().map(|t| t.name()).collect();
    let names: Vec<&str> = topics.iter().copied().filter(|t| !existing.contains(t)).collect();
    if names.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(-1))).collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = block_on(admin.create_topics(&new, &opts))
        .map_err(|source| KafkaSetupError::Admin { topics: names.join(", "), source })?;
    created(results)
}

/// Fails on the first topic the cluster refused to create (one created meanwhile by someone else is
/// fine).
fn created(results: Vec<rdkafka::admin::TopicResult>) -> Result<(), KafkaSetupError> {
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (the admin client's futures are resolved by its own
/// background thread; nothing else here is async).
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Counts producer deliveries that failed, with the last error.
#[derive(Debug, Default, Clone)]
pub struct AckContext {
    failed: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl AckContext {
    /// Deliveries failed so far, and the last error.
    pub fn failures(&self) -> (u64, Option<String>) {
        (self.failed.load(Ordering::SeqCst), self.last_error.lock().ok().and_then(|e| e.clone()))
    }
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(format!("producing to {}: {e}", rdkafka::Message::topic(m)));
            }
        }
    }
}

/// How long the broker may hold a fetch of vigil's own internal readers (the state and control topics)
/// when there is nothing new, in milliseconds: they read to the end before a member starts, and the end
/// is known only from a fetch's answer.
const READER_FETCH_WAIT_MS: &str = "20";

/// Waits until everything `producer` was given is delivered or failed (its delivery reports served, so
/// [`AckContext::failures`] counts every failure), or `timeout` passes.
///
/// Not rdkafka's `flush`: with a threaded producer its waiting thread polls in steps of 100 ms for events
/// the producer's own thread has already taken, so each wait took at least 100 ms however quick the
/// broker was, and a member waits several times per partition it commits. Here the queue's length is
/// read in steps of 0.2 to 5 ms.
pub fn wait_delivered<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: std::time::Duration,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut step = std::time::Duration::from_micros(200);
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(step);
        step = (step * 2).min(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// Consumer lag per (topic, partition), from librdkafka's statistics: how far behind the log end the
/// consumer is, in messages. Shared with whoever reports it (the metrics endpoint).
#[derive(Debug, Default, Clone)]
pub struct Lag(Arc<Mutex<BTreeMap<(String, i32), i64>>>);

impl Lag {
    /// The latest lag of every partition the consumer fetches.
    pub fn snapshot(&self) -> BTreeMap<(String, i32), i64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Records one statistics report (librdkafka's JSON). Lag is the log end (`hi_offset`) minus the
    /// next offset handed to vigil (`app_offset`): how far reading is behind, whether or not the commit
    /// has caught up (librdkafka's own `consumer_lag` counts from the committed offset). Only those
    /// fields are read, so a broker whose reports lack others (rdkafka's typed `Statistics` then fails
    /// to parse, as with tansu) still gives lag.
    pub fn record_json(&self, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else { return };
        let Some(topics) = v.get("topics").and_then(|t| t.as_object()) else { return };
        let Ok(mut m) = self.0.lock() else { return };
        for (topic, t) in topics {
            let Some(parts) = t.get("partitions").and_then(|p| p.as_object()) else { continue };
            for (p, part) in parts {
                let field = |k: &str| part.get(k).and_then(|x| x.as_i64()).unwrap_or(-1);
                let (hi, app) = (field("hi_offset"), field("app_offset"));
                // -1 is the internal "unassigned" partition; negative offsets are ones not known yet.
                let (Ok(p), true) = (p.parse::<i32>(), hi >= 0 && app >= 0) else { continue };
                if p >= 0 {
                    m.insert((topic.clone(), p), (hi - app).max(0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_refusals() {
        let cfg: KafkaConfig =
            toml::from_str("brokers = \"127.0.0.1:9092\"\ntopics = [\"agent-events\"]\n").unwrap();
        assert_eq!(cfg, KafkaConfig::new("127.0.0.1:9092", vec!["agent-events".into()]));
        assert_eq!(cfg.dlq_for("agent-events"), "agent-events.dlq");
        cfg.validate().unwrap();
        let c = cfg.consumer_config();
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));

        let mut bad = cfg.clone();
        bad.options.insert("enable.auto.commit".into(), "true".into());
        assert!(bad.validate().unwrap_err().to_string().contains("auto-commit would lose events"));
        let mut tls = cfg.clone();
        tls.options.insert("security.protocol".into(), "SASL_SSL".into());
        assert_eq!(tls.consumer_config().get("security.protocol"), Some("SASL_SSL"));
        let lag = Lag::default();
        lag.record_json(
            br#"{"topics":{"t":{"partitions":{"0":{"hi_offset":10,"app_offset":3},"1":{"hi_offset":5,"app_offset":-1001},"-1":{"hi_offset":-1001,"app_offset":-1001}}}}}"#,
        );
        lag.record_json(b"not json");
        assert_eq!(lag.snapshot().into_iter().collect::<Vec<_>>(), [(("t".to_owned(), 0), 7)]);
        let e = toml::from_str::<KafkaConfig>("brokers = \"x\"\ntopics = []\nbrokerz = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `brokerz`"), "{e}");
        assert!(KafkaConfig::new("x", vec![]).validate().is_err());
    }

    #[test]
    fn state_records_round_trip_compressed() {
        let rec = StateRecord {
            version: 1,
            group: "g".into(),
            topic: "events".into(),
            partition: 3,
            position: 42,
            committed_at: 7,
            state: serde_json::value::to_raw_value(&serde_json::json!({ "agents": vec!["agent-0001"; 200] }))
                .unwrap(),
        };
        let bytes = rec.encode().unwrap();
        assert!(bytes.len() < serde_json::to_vec(&rec).unwrap().len() / 4, "{} bytes", bytes.len());
        let back = StateRecord::decode(&bytes).unwrap();
        assert_eq!((back.position, back.state.get()), (rec.position, rec.state.get()));
        assert!(StateRecord::decode(b"{}").unwrap_err().to_string().contains("not zstd"));
    }

    /// A state record whose compressed form is about `agents` * 20 bytes (agent names that do not repeat).
    fn state_at(position: u64, agents: usize) -> StateRecord {
        let names: Vec<String> =
            (0..agents).map(|i| format!("{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
        StateRecord {
            version: 1,
            group: "g".into(),
            topic: "events".into(),
            partition: 3,
            position,
            committed_at: position as i64 * 10,
            state: serde_json::value::to_raw_value(&serde_json::json!({ "agents": names })).unwrap(),
        }
    }

    /// Reads `records` (key, value) as `read_states` meets them, in order, for key `k`.
    fn gather(records: &[(String, Vec<u8>)]) -> StoredState {
        let mut g = Gathered::default();
        for (key, value) in records {
            match key.rsplit_once('#').map(|(_, at)| piece_at(at).unwrap()) {
                None => g.whole = Some(StateRecord::decode(value).unwrap()),
                Some((generation, index)) => {
                    g.pieces[generation].insert(index, Piece::decode(value).unwrap());
                }
            }
        }
        g.newest().unwrap()
    }

    /// Issue 13, item 10: a partition's state that outgrew one record stopped its commits. It goes in
    /// pieces now, and a reader finds the newest complete state whatever a writer left half done.
    #[test]
    fn a_state_too_big_for_one_record_goes_in_pieces_and_comes_back_whole() {
        let max = 4096;
        let small = state_at(5, 10).to_messages("k", max, 0).unwrap();
        assert_eq!((small.records.len(), small.records[0].0.as_str(), small.pieced), (1, "k", false));
        let StateMessages { records: pieces, pieced } = state_at(10, 2000).to_messages("k", max, 0).unwrap();
        assert!(pieced && pieces.len() > 3, "{} pieces", pieces.len());
        assert!(
            pieces.iter().all(|(k, v)| k.starts_with("k#0.") && v.len() + k.len() + RECORD_OVERHEAD <= max)
        );
        let back = gather(&pieces);
        assert_eq!((back.record.as_ref().unwrap().position, back.next_generation), (10, 1));
        assert_eq!(back.record.unwrap().state.get(), state_at(10, 2000).state.get());

        // The next state goes to generation 1; its writer dies after two pieces: generation 0 still
        // holds the newest complete state, and the next writer goes to generation 1 again.
        let next = state_at(20, 2100).to_messages("k", max, 1).unwrap().records;
        let mut log = pieces.clone();
        log.extend(next[..2].iter().cloned());
        let back = gather(&log);
        assert_eq!((back.record.unwrap().position, back.next_generation), (10, 1));
        // Written in full, it is the newest, and the one after goes to generation 0.
        log.extend(next[2..].iter().cloned());
        let back = gather(&log);
        assert_eq!((back.record.unwrap().position, back.next_generation), (20, 0));
        // A smaller state in generation 0 leaves pieces of the bigger one after its own: they are ignored.
        let smaller = state_at(30, 1000).to_messages("k", max, 0).unwrap().records;
        assert!(smaller.len() < pieces.len());
        log.extend(smaller);
        let back = gather(&log);
        assert_eq!((back.record.unwrap().position, back.next_generation), (30, 1));
        // A whole record newer than every pieced state wins.
        log.extend(state_at(40, 10).to_messages("k", max, 1).unwrap().records);
        assert_eq!(gather(&log).record.unwrap().position, 40);
        assert!(Piece::decode(b"vigil.p0 and more than a header's bytes").is_none());
    }
}
