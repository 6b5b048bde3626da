//! The one place a line becomes blank, an event or a refusal: decode, the future bound, dedup.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};
use std::sync::OnceLock;

use vigil_ingest::archive::{Archive, ArchiveError};
use vigil_ingest::source::Line;
use vigil_schemas::{Event, Invalid};

use super::now_ms;

/// Recent event ids, to refuse duplicates: a bounded set of 64-bit hashes, oldest forgotten first.
#[derive(Debug)]
pub struct DedupWindow {
    cap: usize,
    /// What a position counts, for messages: `line`, `item`, or `position`.
    unit: &'static str,
    seen: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    order: VecDeque<u64>,
}

/// The keys are already hashes; hashing them again would waste the time the window exists to save.
#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl DedupWindow {
    /// A window remembering the last `cap` ids (0: remembers none, refuses no duplicate).
    pub fn new(cap: usize) -> Self {
        DedupWindow {
            cap,
            unit: "position",
            seen: HashMap::with_capacity_and_hasher(cap.min(1 << 20), BuildHasherDefault::default()),
            order: VecDeque::with_capacity(cap.min(1 << 20)),
        }
    }

    /// Names what a position counts in this source (`line` for a file, `item` for the HTTP intake), so a
    /// duplicate's message says "first seen at line 3" where that is what it means.
    pub fn counting(&mut self, unit: &'static str) {
        self.unit = unit;
    }

    /// What a position counts in this source.
    pub fn unit(&self) -> &'static str {
        self.unit
    }

    /// Remembers what `archive` already holds (its newest `cap` events), so that after a restart a resend
    /// of one of them is refused as it would be in one uninterrupted run. Returns the ids remembered.
    pub fn seed_from(&mut self, archive: &Archive) -> Result<usize, ArchiveError> {
        archive.recent_event_ids(self.cap, |agent, id, position| {
            self.check_key(DedupWindow::key(agent, id), position);
        })
    }

    /// The key an event is remembered by: a 64-bit hash of its agent_id and event_id. An id is unique
    /// per agent, so one agent's sender cannot suppress another agent's event by sending its id first.
    /// The hash is keyed afresh by each process (the window is rebuilt from the archive on start, never
    /// stored), so ids cannot be crafted offline to collide. Pure, so it can be computed where the line
    /// is decoded.
    pub fn key(agent_id: &str, event_id: &str) -> u64 {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        KEY.get_or_init(RandomState::new).hash_one((agent_id, event_id))
    }

    /// Reads where the table holds `keys`, and the ids their insertion would evict, and changes
    /// nothing: the window is far larger than a core's cache, so each check is a miss, and in
    /// [`check_key`](Self::check_key) the misses come one after another. Here the lookups of many keys
    /// are independent, so the processor overlaps them, and the checks of those keys that follow find
    /// the table's lines in cache. Returns how many were found (for `black_box`).
    pub fn warm(&self, keys: &[u64]) -> usize {
        if self.cap == 0 {
            return 0;
        }
        let found = keys.iter().filter(|k| self.seen.contains_key(k)).count();
        let evicted = if self.order.len() == self.cap { keys.len() } else { 0 };
        found + self.order.iter().take(evicted).filter(|k| self.seen.contains_key(k)).count()
    }

    /// [`check`](Self::check) by an id's [`key`](Self::key).
    pub fn check_key(&mut self, h: u64, position: u64) -> Option<u64> {
        if self.cap == 0 {
            return None;
        }
        if let Some(&first) = self.seen.get(&h) {
            return Some(first);
        }
        if self.order.len() == self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(h, position);
        self.order.push_back(h);
        None
    }
}

/// An authenticated sender of events (`[[http.sender]]`) and what it may claim.
#[derive(Debug)]
pub struct Sender {
    /// Its configured name.
    pub name: String,
    agents: vigil_detect::GlobSet,
    sources: vigil_detect::GlobSet,
}

impl Sender {
    /// The grants of one configured sender (its token is the server's business).
    pub fn new(cfg: &crate::config::SenderConfig) -> Sender {
        Sender {
            name: cfg.name.clone(),
            agents: vigil_detect::GlobSet::new(&cfg.agents),
            sources: vigil_detect::GlobSet::new(&cfg.sources),
        }
    }

    /// Whether it may send this event: its agent among the granted ones, and its `source` too when
    /// sources are granted.
    pub fn permits(&self, ev: &Event<'_>) -> Result<(), Invalid> {
        let refuse = |field, value: &str| {
            Err(Invalid::NotPermitted { sender: self.name.clone(), field, value: value.to_owned() })
        };
        if !self.agents.matches(&ev.agent_id) {
            return refuse("agent_id", &ev.agent_id);
        }
        if !self.sources.is_empty() {
            let source = ev.source.as_deref().unwrap_or_default();
            if !self.sources.matches(source) {
                return refuse("source", source);
            }
        }
        Ok(())
    }
}

/// Who an item comes from, as far as what it may claim is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub enum Claim<'a> {
    /// No sender authentication where it came in (a file, Kafka, a loopback intake without senders).
    #[default]
    Open,
    /// An authenticated sender: refused unless it [`permits`](Sender::permits) the event.
    By(&'a Sender),
    /// Read back from an intake journal that recorded it as not permitted: it stays refused.
    Refused,
}

impl Claim<'_> {
    /// Whether this event may come from where it came.
    pub fn check(self, ev: &Event<'_>) -> Result<(), Invalid> {
        match self {
            Claim::Open => Ok(()),
            Claim::By(sender) => sender.permits(ev),
            Claim::Refused => Err(Invalid::NotPermitted {
                sender: "(refused before a restart)".into(),
                field: "agent_id",
                value: ev.agent_id.to_string(),
            }),
        }
    }
}

/// The latest event time a pipeline accepts: its clock plus the skew allowed (`input.max_future_seconds`).
/// One event stamped far ahead would otherwise move event time, and so the lateness cut-off, forward for
/// every agent judged with it, and their real events would count as late: a way to blind the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// The receiving clock, UTC ms.
    pub now_ms: i64,
    /// Seconds an event may be ahead of it.
    pub skew_s: u64,
}

impl Horizon {
    /// The horizon now for a skew of `skew_s` seconds; `None` when the check is off (0).
    pub fn now(skew_s: u64) -> Option<Horizon> {
        (skew_s > 0).then(|| Horizon { now_ms: now_ms(), skew_s })
    }
}

/// A line's bytes in `buf` as the contract check sees them: an oversize line only by its prefix.
pub(crate) fn within_cap<'a>(buf: &'a [u8], line: &Line, max: usize) -> &'a [u8] {
    let bytes = &buf[line.start..line.end];
    &bytes[..bytes.len().min(max)]
}

/// Decodes one line: `None` for a blank line, else the event or why the contract refuses it. Pure (no
/// window, no clock), so a lane may decode the lines of a batch on several threads.
pub fn decode_line<'a>(
    bytes: &'a [u8],
    line: &Line,
    max_event_bytes: usize,
) -> Option<Result<Event<'a>, Invalid>> {
    match line.oversize {
        Some(size) => Some(Err(Invalid::TooLarge { size: size as usize, limit: max_event_bytes })),
        None if bytes.iter().all(u8::is_ascii_whitespace) => None,
        None => Some(vigil_schemas::decode(bytes, max_event_bytes)),
    }
}

/// The checks of a decoded event that depend on what came before and on the clock, in source order:
/// `horizon` bounds `ts` from above (the receiving clock plus the allowed skew; `None` checks no bound,
/// for offline scoring of simulated fleets), and the dedup window refuses an event_id it holds. A
/// refused line does not enter the dedup window, so its corrected resend is taken.
pub fn admit<'a>(
    ev: Event<'a>,
    position: u64,
    horizon: Option<Horizon>,
    dedup: &mut DedupWindow,
) -> Result<Event<'a>, Invalid> {
    let key = DedupWindow::key(&ev.agent_id, &ev.event_id);
    admit_keyed(&ev, key, position, horizon, dedup)?;
    Ok(ev)
}

/// 1973-03-03T09:46:40Z in milliseconds; as seconds, the year 5138.
const SECONDS_LOOKALIKE_MS: i64 = 100_000_000_000;

/// [`admit`] with the event_id's dedup key already computed, the event left where it is.
pub fn admit_keyed(
    ev: &Event<'_>,
    key: u64,
    position: u64,
    horizon: Option<Horizon>,
    dedup: &mut DedupWindow,
) -> Result<(), Invalid> {
    // A live intake (one with a clock) sees no event from before 1973: such a time is epoch seconds
    // taken as milliseconds, and would be judged and archived as 1970.
    if horizon.is_some() && ev.ts_ms < SECONDS_LOOKALIKE_MS {
        return Err(Invalid::BadTimestamp {
            problem: vigil_schemas::timestamp::TimestampError::LooksLikeSeconds(ev.ts_ms),
            got: ev.ts_ms.to_string(),
        });
    }
    if let Some(h) = horizon
        && ev.ts_ms > h.now_ms.saturating_add(h.skew_s as i64 * 1000)
    {
        return Err(Invalid::FutureTimestamp {
            ts_ms: ev.ts_ms,
            now_ms: h.now_ms,
            ahead_s: (ev.ts_ms - h.now_ms) / 1000,
            limit_s: h.skew_s,
        });
    }
    match dedup.check_key(key, position) {
        Some(first_position) => Err(Invalid::DuplicateEventId {
            event_id: ev.event_id.to_string(),
            first_position,
            unit: dedup.unit,
        }),
        None => Ok(()),
    }
}

/// Judges one line against the contract: `None` for a blank line, else the event or why it is refused
/// ([`decode_line`], then [`admit`]). Every path in (`run`, `validate`, Kafka, HTTP) shares these two,
/// so they cannot disagree about a line.
pub fn classify<'a>(
    bytes: &'a [u8],
    line: &Line,
    max_event_bytes: usize,
    horizon: Option<Horizon>,
    dedup: &mut DedupWindow,
) -> Option<Result<Event<'a>, Invalid>> {
    decode_line(bytes, line, max_event_bytes)
        .map(|d| d.and_then(|ev| admit(ev, line.position, horizon, dedup)))
}

#[cfg(test)]
mod tests {
    use super::DedupWindow;

    #[test]
    fn warming_the_window_finds_what_it_holds_and_changes_nothing() {
        let mut w = DedupWindow::new(3);
        assert_eq!(w.warm(&[1, 2]), 0, "an empty window holds nothing");
        for (key, position) in [(1, 10), (2, 11), (3, 12)] {
            assert_eq!(w.check_key(key, position), None);
        }
        // 2 is held; 9 is not; a full window would evict 1 and 2 to take two keys, and holds both.
        assert_eq!(w.warm(&[2, 9]), 3);
        assert_eq!(w.warm(&[9]), 1, "one key ahead would evict only the oldest");
        assert_eq!(DedupWindow::new(0).warm(&[1]), 0, "a window of none holds none");
        // The checks after it decide as they would have: 2 is a duplicate, 9 is new and evicts 1.
        assert_eq!(w.check_key(2, 13), Some(11));
        assert_eq!(w.check_key(9, 14), None);
        assert_eq!(w.check_key(1, 15), None, "1 was evicted by 9");
        assert_eq!(w.check_key(3, 16), Some(12));
    }
}
