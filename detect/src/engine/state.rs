//! The engine's state: per agent (windows, baselines, counters, open incidents), what spans agents
//! (credential owners), and what is kept between windows. Everything here is in the snapshot.

use super::*;

/// Count of one agent's actions in one event-time minute, for the hard rate cap, as snapshots hold it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MinuteCount {
    pub(super) minute: i32,
    pub(super) count: u32,
    pub(super) fired: bool,
}

/// The top bit of a packed count: whether the cap's finding was said.
const FIRED: u32 = 1 << 31;

/// A [`MinuteCount`] in eight bytes instead of twelve (per-agent state is budgeted): the count saturates
/// at 2^31 - 1 and its top bit says whether the finding was said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackedMinute {
    pub(super) minute: i32,
    packed: u32,
}

impl PackedMinute {
    pub(super) fn count(self) -> u32 {
        self.packed & !FIRED
    }
    pub(super) fn fired(self) -> bool {
        self.packed & FIRED != 0
    }
    /// Counts one more action.
    pub(super) fn add(&mut self) {
        if self.count() < !FIRED {
            self.packed += 1;
        }
    }
    pub(super) fn fire(&mut self) {
        self.packed |= FIRED;
    }
}

impl From<MinuteCount> for PackedMinute {
    fn from(m: MinuteCount) -> Self {
        PackedMinute { minute: m.minute, packed: m.count.min(!FIRED) | if m.fired { FIRED } else { 0 } }
    }
}

impl From<PackedMinute> for MinuteCount {
    fn from(m: PackedMinute) -> Self {
        MinuteCount { minute: m.minute, count: m.count(), fired: m.fired() }
    }
}

/// Minutes counted for the hard cap, per agent: up to four, so an event stamped a few minutes early or
/// late is counted in its own minute without resetting the current one. When a fifth minute arrives
/// the one with the fewest actions (the oldest of those) makes room: a minute near the cap is never the
/// one dropped while sparser ones are kept, so stray early or late events cannot switch the cap off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<MinuteCount>", into = "Vec<MinuteCount>")]
pub(super) struct Minutes(pub(super) [PackedMinute; 4]);

impl Minutes {
    /// The counter of `minute`, made (in place of the sparsest) if not kept.
    pub(super) fn slot(&mut self, minute: i32) -> &mut PackedMinute {
        let slots = &mut self.0;
        let i = match slots.iter().position(|m| m.count() > 0 && m.minute == minute) {
            Some(i) => i,
            None => {
                let i = (0..slots.len()).min_by_key(|&i| (slots[i].count(), slots[i].minute)).unwrap_or(0);
                slots[i] = PackedMinute { minute, packed: 0 };
                i
            }
        };
        &mut slots[i]
    }
}

impl From<Vec<MinuteCount>> for Minutes {
    fn from(v: Vec<MinuteCount>) -> Self {
        let mut m = Minutes::default();
        for (slot, c) in m.0.iter_mut().zip(v.into_iter().filter(|c| c.count > 0)) {
            *slot = c.into();
        }
        m
    }
}

impl From<Minutes> for Vec<MinuteCount> {
    fn from(m: Minutes) -> Self {
        m.0.into_iter().filter(|c| c.count() > 0).map(Into::into).collect()
    }
}

/// An incident still open: later findings of the same kind and key fold into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct OpenFinding {
    pub(super) kind: FindingKind,
    pub(super) severity: Severity,
    /// Findings folded into it (saturating).
    pub(super) folded: u16,
    /// The incident key folded to 32 bits (`fold_key`): only compared, among an agent's few open ones.
    #[serde(deserialize_with = "read_key")]
    pub(super) key: u32,
    /// Event time of its latest finding: open incidents older than two cooldowns are forgotten.
    pub(super) last_ts: i64,
}

/// An incident key (a cooldown period's start in milliseconds, or a session hash) in 32 bits. Keys that
/// fit are kept as they are, so a folded key read back from a snapshot folds to itself.
pub(super) fn fold_key(key: u64) -> u32 {
    u32::try_from(key).unwrap_or((key ^ (key >> 32)) as u32)
}

/// Snapshots written before keys were folded hold them whole.
pub(super) fn read_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    u64::deserialize(d).map(fold_key)
}

/// A key (generalised resource or scope) touched in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct WindowKey {
    pub(super) hash: u64,
    pub(super) count: u32,
    /// For keys the agent did not know when they were touched: the earliest use, as evidence. Boxed:
    /// few keys have one, and a window's keys are scanned for every event, so they are kept small.
    pub(super) sample: Option<Box<Sample>>,
}

/// One use of something new: what it was and the event that did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Sample {
    pub(super) text: String,
    pub(super) ts: i64,
    pub(super) event_id: String,
}

impl Sample {
    pub(super) fn earlier(&self, ts: i64, event_id: &str) -> bool {
        (ts, event_id) < (self.ts, self.event_id.as_str())
    }
}

/// A model (with provider) used in a window that the agent had not used before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct WindowModel {
    pub(super) hash: u64,
    pub(super) provider: u64,
    pub(super) sample: Sample,
}

/// One agent's activity in one event-time window. Every field is order-independent: sums, minimums,
/// and sets capped by a rule that does not look at arrival order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Window {
    pub(super) start: i64,
    pub(super) count: u32,
    pub(super) bytes_read: u64,
    pub(super) bytes_written: u64,
    pub(super) denied: u32,
    /// Model tokens, input and output.
    pub(super) tokens: u64,
    pub(super) keys: Vec<WindowKey>,
    pub(super) models: Vec<WindowModel>,
    /// The earliest (ts, event_id) of the window.
    pub(super) samples: Samples,
}

/// The earliest few (ts, event_id) of a window, in order, held in the window itself: ids of up to 24
/// bytes inline (`CompactString`), so recording one reads and writes no other cache line than the
/// window's (a vector of heap strings cost two dependent misses per event). A longer id takes a heap
/// buffer, kept for the slot's next id when the window goes back to the pool; only the live slots are
/// compared, written and read back.
#[derive(Debug, Clone, Default)]
pub(super) struct Samples {
    len: usize,
    /// Once all `SAMPLES` slots are live, the time of the latest: an event after it cannot be among
    /// the earliest and is turned away here, without comparing ids.
    latest: i64,
    slots: [(i64, CompactString); SAMPLES],
}

impl Samples {
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &str)> {
        self.slots[..self.len].iter().map(|(t, id)| (*t, id.as_str()))
    }

    /// The samples' event ids, in order (a finding's evidence).
    pub(super) fn event_ids(&self) -> Vec<String> {
        self.iter().map(|(_, id)| id.to_owned()).collect()
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps (ts, event_id) if it is among the earliest `SAMPLES`.
    fn add(&mut self, ts: i64, event_id: &str) {
        if self.len == SAMPLES {
            let (t, id) = &self.slots[SAMPLES - 1];
            if ts > self.latest || (ts, event_id) >= (*t, id.as_str()) {
                return;
            }
            self.len -= 1;
        }
        let at = self.slots[..self.len].partition_point(|(t, id)| (*t, id.as_str()) < (ts, event_id));
        // The spare slot at `len` moves to `at`, the ones after it down by one.
        self.slots[at..=self.len].rotate_right(1);
        let slot = &mut self.slots[at];
        slot.0 = ts;
        slot.1.clear();
        slot.1.push_str(event_id);
        self.len += 1;
        if self.len == SAMPLES {
            self.latest = self.slots[SAMPLES - 1].0;
        }
    }

    /// Heap bytes beyond the window's own (the buffers of ids longer than the inline 24 bytes).
    fn heap_bytes(&self) -> usize {
        self.slots.iter().filter(|(_, s)| s.is_heap_allocated()).map(|(_, s)| s.capacity()).sum()
    }
}

impl PartialEq for Samples {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut read = Vec::<(i64, String)>::deserialize(d)?;
        // Written sorted and at most `SAMPLES`; a hand-edited snapshot is held to that.
        read.sort();
        read.truncate(SAMPLES);
        let mut samples = Samples::default();
        for (ts, id) in &read {
            samples.add(*ts, id);
        }
        Ok(samples)
    }
}

impl Window {
    pub(super) fn new(start: i64) -> Window {
        Window {
            start,
            count: 0,
            bytes_read: 0,
            bytes_written: 0,
            denied: 0,
            tokens: 0,
            keys: Vec::new(),
            models: Vec::new(),
            samples: Samples::default(),
        }
    }

    /// Counts a key. The first time a window sees a key it asks `known` whether the agent knows it; for
    /// a key it does not know, `text` is kept with the earliest use as evidence.
    pub(super) fn touch(
        &mut self,
        hash: u64,
        cap: usize,
        known: impl FnOnce() -> bool,
        text: &str,
        ts: i64,
        event_id: &str,
    ) {
        let slot = match self.keys.iter().position(|k| k.hash == hash) {
            Some(i) => i,
            None => {
                if self.keys.len() >= cap {
                    // Keep the smallest hashes: the same set whatever the arrival order.
                    let (imax, max) = self
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| (i, k.hash))
                        .max_by_key(|&(_, h)| h)
                        .unwrap_or((0, 0));
                    if hash > max {
                        return;
                    }
                    self.keys.swap_remove(imax);
                }
                let sample = (!known())
                    .then(|| Box::new(Sample { text: text.to_owned(), ts, event_id: event_id.to_owned() }));
                self.keys.push(WindowKey { hash, count: 1, sample });
                return;
            }
        };
        let k = &mut self.keys[slot];
        k.count += 1;
        if let Some(s) = k.sample.as_mut()
            && s.earlier(ts, event_id)
        {
            **s = Sample { text: text.to_owned(), ts, event_id: event_id.to_owned() };
        }
    }

    /// Empties the window for reuse, keeping its buffers.
    pub(super) fn reset(&mut self) {
        self.count = 0;
        self.bytes_read = 0;
        self.bytes_written = 0;
        self.denied = 0;
        self.tokens = 0;
        self.keys.clear();
        self.models.clear();
        self.samples.clear();
    }

    pub(super) fn sample(&mut self, ts: i64, event_id: &str) {
        self.samples.add(ts, event_id);
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes_read.saturating_add(self.bytes_written)
    }
}

/// The last few of something, kept inline (no allocation, no pointer to chase on the hot path); when
/// full, the oldest is dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Recent<T> {
    pub(super) len: u8,
    pub(super) items: [T; 4],
}

impl<T: Copy + Default> Recent<T> {
    pub(super) fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items[..usize::from(self.len)]
    }

    /// Appends, dropping the oldest when full; returns the new item's index.
    pub(super) fn push(&mut self, item: T) -> usize {
        if usize::from(self.len) == self.items.len() {
            self.items.rotate_left(1);
            self.len -= 1;
        }
        self.items[usize::from(self.len)] = item;
        self.len += 1;
        usize::from(self.len) - 1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Recent<(u32, u32)> {
    pub(super) fn contains(&self, model: u32) -> bool {
        self.as_slice().iter().any(|m| m.0 == model)
    }
}

/// Bytes moved in one session, as snapshots hold it.
#[derive(Serialize, Deserialize)]
struct SessionRepr {
    bytes: u64,
    hash: u32,
    fired: bool,
}

/// Bytes moved in one session, in twelve bytes (an agent keeps four; a `u64` field would align each to
/// sixteen): the count in two halves, and the low 31 bits of the session id's hash with the top bit
/// saying whether the cap's finding was said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "SessionRepr", into = "SessionRepr")]
pub(super) struct SessionBytes {
    low: u32,
    high: u32,
    tagged: u32,
}

impl SessionBytes {
    pub(super) fn hash_of(session: &str) -> u32 {
        stable_hash(&[session.as_bytes()]) as u32 & !FIRED
    }
    pub(super) fn new(hash: u32) -> Self {
        SessionBytes { low: 0, high: 0, tagged: hash & !FIRED }
    }
    pub(super) fn hash(self) -> u32 {
        self.tagged & !FIRED
    }
    pub(super) fn bytes(self) -> u64 {
        u64::from(self.high) << 32 | u64::from(self.low)
    }
    pub(super) fn add(&mut self, n: u64) {
        let b = self.bytes().saturating_add(n);
        (self.low, self.high) = (b as u32, (b >> 32) as u32);
    }
    pub(super) fn fired(self) -> bool {
        self.tagged & FIRED != 0
    }
    pub(super) fn fire(&mut self) {
        self.tagged |= FIRED;
    }
}

impl From<SessionRepr> for SessionBytes {
    fn from(r: SessionRepr) -> Self {
        let mut s = SessionBytes::new(r.hash);
        s.add(r.bytes);
        if r.fired {
            s.fire();
        }
        s
    }
}

impl From<SessionBytes> for SessionRepr {
    fn from(s: SessionBytes) -> Self {
        SessionRepr { bytes: s.bytes(), hash: s.hash(), fired: s.fired() }
    }
}

/// The start of an agent's last closed window, `i64::MIN` for none: an `Option<i64>` in eight bytes
/// instead of sixteen (per-agent state is budgeted), and the same `null` or number in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Option<i64>", into = "Option<i64>")]
pub(super) struct LastWindow(pub(super) i64);

impl LastWindow {
    pub(super) fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl Default for LastWindow {
    fn default() -> Self {
        LastWindow(i64::MIN)
    }
}

impl From<Option<i64>> for LastWindow {
    fn from(v: Option<i64>) -> Self {
        LastWindow(v.unwrap_or(i64::MIN))
    }
}

impl From<LastWindow> for Option<i64> {
    fn from(v: LastWindow) -> Self {
        v.get()
    }
}

/// What the volume detectors measure per window. Bytes written are judged on their own as well as in
/// the bytes moved: for most agents reads are far larger than writes, so a steady stream of data going
/// out (an exfiltration paced to stay small) hides in the reads' noise but stands out among the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quantity {
    Actions,
    /// Bytes read plus written.
    Bytes,
    Denials,
    /// Model tokens, input and output.
    Tokens,
    /// Bytes written or sent.
    Written,
}

impl Quantity {
    /// The finding a surprising value is.
    pub(super) const fn kind(self) -> FindingKind {
        match self {
            Quantity::Actions => FindingKind::VolumeSpike,
            Quantity::Bytes | Quantity::Written => FindingKind::DataSpike,
            Quantity::Denials => FindingKind::DeniedBurst,
            Quantity::Tokens => FindingKind::TokenSpike,
        }
    }

    /// Whether it counts actions (judged with the Poisson floor and an exponential prior tail) rather
    /// than a volume (bytes, tokens: a heavy prior tail).
    pub(super) const fn counts_actions(self) -> bool {
        matches!(self, Quantity::Actions | Quantity::Denials)
    }

    /// Its name in evidence and in the baseline the control API shows.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Quantity::Actions => "actions",
            Quantity::Bytes => "bytes",
            Quantity::Denials => "denials",
            Quantity::Tokens => "tokens",
            Quantity::Written => "bytes_written",
        }
    }

    /// Its value in a window.
    pub(super) fn of(self, w: &Window) -> u64 {
        match self {
            Quantity::Actions => u64::from(w.count),
            Quantity::Bytes => w.bytes(),
            Quantity::Denials => u64::from(w.denied),
            Quantity::Tokens => w.tokens,
            Quantity::Written => w.bytes_written,
        }
    }
}

/// The measures, in the order of `Levels::per_window` (new ones are appended, so a snapshot written
/// with fewer still restores: see `padded`).
pub(super) const MEASURES: [Quantity; 5] =
    [Quantity::Actions, Quantity::Bytes, Quantity::Denials, Quantity::Tokens, Quantity::Written];
/// The measures also judged per span, as indices into `MEASURES`: actions and bytes (a burst of denials
/// is acute, a slow one is left to the per-window judge and `scope_drift`; tokens have their budgets).
pub(super) const SPANNED: [usize; 3] = [0, 1, 4];
/// The measures the cumulative detector follows: actions, bytes, and bytes written, where a steady
/// trickle out shows (no span of its own: the cumulative detector is what finds a sustained one, and
/// an idle agent's state is budgeted).
pub(super) const CUMULATIVE: [usize; 3] = [0, 1, 4];
/// The measure the excess detector follows (bytes written or sent), as an index into `SPANNED`.
pub(super) const EXCESS: usize = 2;
const _: () = assert!(matches!(MEASURES[SPANNED[EXCESS]], Quantity::Written));

/// Baselines of the measures at two time scales: each window, and each span of
/// `baseline.span_windows` windows (aligned on event time), so that a slow rise, invisible in any one
/// window, shows in the span's sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Levels {
    #[serde(deserialize_with = "padded")]
    pub(super) per_window: [Tail; MEASURES.len()],
    #[serde(deserialize_with = "padded")]
    pub(super) per_span: [Tail; SPANNED.len()],
    /// The span being summed (its index: start / span length), `NO_SPAN` when none is.
    #[serde(default = "no_span")]
    pub(super) pending: i32,
    /// The last span judged, so the empty spans since count as zeros (`NO_SPAN`: none yet).
    #[serde(default = "no_span")]
    pub(super) last_span: i32,
    /// The pending span's sums so far.
    #[serde(default, deserialize_with = "padded")]
    pub(super) span_sum: [u64; SPANNED.len()],
    /// The cumulative detector's statistic per measure it follows (see `slow_rise`).
    #[serde(default, deserialize_with = "padded")]
    pub(super) slow: [f32; CUMULATIVE.len()],
    /// The excess detector's run of bytes written (see `excess_rise`), while one goes on: boxed, as
    /// runs are rare and an idle agent's state is budgeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) excess: Option<Box<Excess>>,
    /// The most of each measure the ceiling detector follows in a window lately (see `ceiling`).
    #[serde(default)]
    pub(super) peaks: Peaks,
}

/// The most of each measure the ceiling detector follows (`CUMULATIVE`) in one window, over the current
/// period of half the baseline's memory and the one before it (together the most of the last half to
/// whole memory), in 12 bytes: per-agent state is budgeted, so each most is kept as `log2(1 + x)` in
/// thousandths, rounded up (a most is known to within 0.07%, never below what it was), and the periods
/// are those of the agent's windows, not stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Peaks {
    #[serde(rename = "n", deserialize_with = "padded")]
    now: [u16; CUMULATIVE.len()],
    #[serde(rename = "b", deserialize_with = "padded")]
    before: [u16; CUMULATIVE.len()],
}

/// Thousandths of a doubling: `log2(1 + u64::MAX)` is 64, so 64,000 at most.
const PEAK_UNIT: f64 = 1000.0;

impl Peaks {
    /// From a window of period `from` (the agent's last) to one of period `to`: the next period keeps
    /// the last one's mosts as the ones before; a later one keeps nothing.
    pub(super) fn pass(&mut self, from: i64, to: i64) {
        if to == from + 1 {
            self.before = self.now;
            self.now = Default::default();
        } else if to > from + 1 {
            *self = Peaks::default();
        }
    }

    /// The most of `CUMULATIVE[c]` in a window over the last one to two periods (0 when none).
    pub(super) fn most(&self, c: usize) -> f64 {
        (f64::from(self.now[c].max(self.before[c])) / PEAK_UNIT).exp2() - 1.0
    }

    /// Records a window's values (all measures, in the order of `MEASURES`).
    pub(super) fn note(&mut self, observed: &[u64; MEASURES.len()]) {
        for (p, &m) in self.now.iter_mut().zip(&CUMULATIVE) {
            if observed[m] > 0 {
                let code = ((observed[m] as f64).ln_1p() / std::f64::consts::LN_2 * PEAK_UNIT).ceil();
                *p = (*p).max(code.min(f64::from(u16::MAX)) as u16);
            }
        }
    }
}

/// A run of the excess detector: the bytes written beyond `high` summed over the spans since `from`,
/// against yardsticks fixed when the run began or last reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Excess {
    /// Bytes beyond `high` so far (above 0).
    #[serde(rename = "s")]
    pub(super) sum: f32,
    /// The agent's usual high per span: what each span is counted beyond.
    #[serde(rename = "h")]
    pub(super) high: f32,
    /// The sum at which the run is reported.
    #[serde(rename = "i")]
    pub(super) interval: f32,
    /// The span the run began in.
    #[serde(rename = "f")]
    pub(super) from: i32,
    /// The incident the run was reported as (its key), 0 before it was.
    #[serde(rename = "k")]
    pub(super) incident: u64,
}

/// What one agent of a role does in one window, per measure: learned from the windows of the role's
/// agents that have a baseline of their own (in the order windows close, which is fixed: see `sweep`),
/// it is the yardstick for the agents that have none yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct PeerLevels {
    #[serde(deserialize_with = "padded")]
    pub(super) per_window: [Tail; MEASURES.len()],
}

/// Reads an array saved when there were fewer measures: the ones added since start empty.
fn padded<'de, D, T, const N: usize>(d: D) -> Result<[T; N], D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    let saved = Vec::<T>::deserialize(d)?;
    if saved.len() > N {
        return Err(serde::de::Error::invalid_length(saved.len(), &"no more values than measures"));
    }
    let mut out: [T; N] = std::array::from_fn(|_| T::default());
    for (o, x) in out.iter_mut().zip(saved) {
        *o = x;
    }
    Ok(out)
}

pub(super) const NO_SPAN: i32 = i32::MIN;

pub(super) const fn no_span() -> i32 {
    NO_SPAN
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            per_window: Default::default(),
            per_span: Default::default(),
            pending: NO_SPAN,
            last_span: NO_SPAN,
            span_sum: [0; SPANNED.len()],
            slow: [0.0; CUMULATIVE.len()],
            excess: None,
            peaks: Peaks::default(),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct AgentState {
    /// Index into the engine's roles (0 is "no role"): the role it is bound to, by config or by the
    /// first it declared.
    pub(super) role: u16,
    /// Whether `[[detect.role]]` bound the role (worked out again on restore).
    #[serde(skip)]
    pub(super) pinned: bool,
    /// Windows accounted for since the agent's first (closed ones and the empty ones between).
    pub(super) windows: u32,
    /// Events counted in closed windows (saturating).
    pub(super) events: u32,
    /// Start of the last closed window.
    pub(super) last_window: LastWindow,
    /// Baselines of actions, bytes, denials and tokens, per window and per span.
    #[serde(default)]
    pub(super) levels: Levels,
    /// The daily and weekly rhythm of its actions per span, once it has been busy (see `rhythm.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rhythm: Option<Box<Rhythm>>,
    /// Keys learned, with their long and short weights.
    pub(super) keys: KeyTable,
    /// (model+provider, provider) hashes seen (low 32 bits), inline.
    pub(super) models: Recent<(u32, u32)>,
    /// Sessions whose bytes are being summed, inline.
    pub(super) sessions: Recent<SessionBytes>,
    /// The last credential checked, so a steady agent skips the fleet-wide lookup.
    pub(super) last_credential: u64,
    /// The minutes counted for the hard cap.
    pub(super) rate: Minutes,
    /// Open incidents.
    pub(super) open: Vec<OpenFinding>,
    /// Windows not yet closed (usually one; two around a boundary within the lateness), each boxed and
    /// the boxes held inline: opening and closing a window moves a pointer, not the window's ~270
    /// bytes (twice each way, through the pool), and reaching it is one hop from the state, as when the
    /// windows themselves lay in a vector's buffer.
    pub(super) open_windows: OpenWindows,
    /// The policies that cover this agent, for the role they were worked out with.
    #[serde(skip)]
    pub(super) covered_by: Option<Coverage>,
}

/// An agent's open windows (see [`AgentState::open_windows`]); serialised as a list of windows.
pub(super) type OpenWindows = smallvec::SmallVec<[Box<Window>; 2]>;

/// The open windows by the time they end, each end with the agents whose window ends then. Ends are
/// aligned on the window length, so few are open at once (about the lateness and skew over the window
/// length): adding one and finding the first are lookups in a map of a handful, where a heap of every
/// open window was a walk over log2(n) scattered entries for each window opened and closed.
#[derive(Debug, Default)]
pub(super) struct Closing {
    by_end: BTreeMap<i64, Vec<u32>>,
    /// Emptied lists, kept for the next ends.
    spare: Vec<Vec<u32>>,
}

impl Closing {
    pub(super) fn push(&mut self, end: i64, agent: u32) {
        let spare = &mut self.spare;
        self.by_end.entry(end).or_insert_with(|| spare.pop().unwrap_or_default()).push(agent);
    }

    /// The earliest end of an open window.
    pub(super) fn first_end(&self) -> Option<i64> {
        self.by_end.first_key_value().map(|(&end, _)| end)
    }

    /// The latest end of an open window.
    pub(super) fn last_end(&self) -> Option<i64> {
        self.by_end.last_key_value().map(|(&end, _)| end)
    }

    /// Moves every (end, agent) whose end is at or before `w` to `due`, in no particular order.
    pub(super) fn take_through(&mut self, w: i64, due: &mut Vec<(i64, u32)>) {
        while let Some(first) = self.by_end.first_entry() {
            if *first.key() > w {
                break;
            }
            let (end, mut agents) = first.remove_entry();
            due.extend(agents.iter().map(|&agent| (end, agent)));
            agents.clear();
            self.spare.push(agents);
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_end.clear();
    }
}

/// Reading ahead. At thousands of agents an event's state is not in cache, and what judging it reads
/// is a chain (the index's bucket, the agent's state, the buffers it points to, the open window's keys),
/// each a miss the core waits out before it knows the next address. The engine reads a group of events'
/// states a link at a time first, for all of them: the misses of one link overlap, and the events are
/// then judged from cache. Plain reads whose values go to `black_box` (the workspace forbids the
/// `unsafe` a prefetch instruction needs); they change nothing.
impl AgentState {
    /// The first link for judging an event: the state's fields it reads, and its buffers' addresses.
    pub(super) fn warm_event(&self) -> u64 {
        let mut x = u64::from(self.role) ^ self.last_credential ^ self.rate.0[0].minute as u64;
        x ^= u64::from(self.sessions.len) ^ u64::from(self.models.len) ^ self.open_windows.len() as u64;
        x ^ self.covered_by.as_ref().map_or(0, |c| c.0.len() as u64)
    }

    /// The first link for closing a window: the baselines, the counts, and the buffers' addresses.
    pub(super) fn warm_close(&self) -> u64 {
        let mut x = u64::from(self.windows) ^ u64::from(self.events) ^ self.last_window.0 as u64;
        x ^= self.levels.per_window.iter().chain(&self.levels.per_span).map(Tail::warm).fold(0, |a, b| a ^ b);
        x ^ self.levels.pending as u64 ^ self.open_windows.len() as u64 ^ self.keys.keys.len() as u64
    }

    /// The next link: what the buffers hold (the policies covering it, the open windows, and to close
    /// one, the learned keys).
    pub(super) fn warm_buffers(&self, closing: bool) -> u64 {
        let mut x = self.covered_by.as_ref().and_then(|c| c.0.first()).map_or(0, |&p| u64::from(p));
        for w in &self.open_windows {
            x ^= u64::from(w.count) ^ w.keys.len() as u64 ^ w.samples.latest as u64;
        }
        if closing {
            // One key in each cache line of the learned keys (12 bytes each).
            x ^= self.keys.keys.iter().step_by(5).map(|k| u64::from(k.hash)).fold(0, |a, b| a ^ b);
        }
        x
    }

    /// The last link: the open windows' keys, one in each cache line (24 bytes each), all of which an
    /// event's key is compared with.
    pub(super) fn warm_window_keys(&self) -> u64 {
        let keys = self.open_windows.iter().flat_map(|w| w.keys.iter().step_by(2));
        keys.map(|k| k.hash).fold(0, |a, b| a ^ b)
    }
}

impl AgentState {
    /// Bytes this state holds, inline and on the heap (an estimate that counts capacities).
    pub(super) fn footprint(&self) -> usize {
        use std::mem::size_of;
        let mut n = size_of::<AgentState>();
        n += self.keys.keys.capacity() * size_of::<crate::keys::Learned>();
        n += self.open.capacity() * size_of::<OpenFinding>();
        if self.open_windows.spilled() {
            n += self.open_windows.capacity() * size_of::<Box<Window>>();
        }
        for w in &self.open_windows {
            n += size_of::<Window>();
            n += w.keys.capacity() * size_of::<WindowKey>() + w.models.capacity() * size_of::<WindowModel>();
            n += w.samples.heap_bytes();
            n += w
                .keys
                .iter()
                .filter_map(|k| k.sample.as_ref())
                .map(|s| s.text.len() + s.event_id.len())
                .sum::<usize>();
        }
        if let Some(r) = &self.rhythm {
            n += r.footprint();
        }
        if self.levels.excess.is_some() {
            n += size_of::<Excess>();
        }
        if let Some(c) = &self.covered_by {
            n += c.0.len() * 2;
        }
        n
    }
}

/// The indices of the policies covering an agent and of the role they were worked out for, in one
/// boxed slice (16 bytes inline, where a role and a slice took 24: per-agent state is budgeted): the
/// role first (`NO_ROLE` for none; role indices stop below it, see `Engine::intern_role`), then the
/// policies.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Coverage(Box<[u16]>);

const NO_ROLE: u16 = u16::MAX;

impl Coverage {
    pub(super) fn new(role: Option<u16>, policies: &[u16]) -> Self {
        Coverage(std::iter::once(role.unwrap_or(NO_ROLE)).chain(policies.iter().copied()).collect())
    }

    /// The role the coverage was worked out for.
    pub(super) fn role(&self) -> Option<u16> {
        self.0.first().copied().filter(|&r| r != NO_ROLE)
    }

    /// The policies' indices.
    pub(super) fn policies(&self) -> &[u16] {
        self.0.get(1..).unwrap_or(&[])
    }
}

/// Who first used a credential (the owner), and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CredentialOwner {
    pub(super) agent: u32,
    pub(super) first_ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_hold_the_most_of_the_current_period_and_the_one_before() {
        let window = |actions: u64| {
            let mut o = [0; MEASURES.len()];
            o[CUMULATIVE[0]] = actions;
            o
        };
        let mut p = Peaks::default();
        p.note(&window(7));
        p.pass(10, 10);
        p.note(&window(5));
        // Kept to within 0.07%, never below.
        let most = p.most(0);
        assert!((7.0..7.0 * 1.0007).contains(&most), "{most}");
        // The next period keeps the last one's most beside its own.
        p.pass(10, 11);
        p.note(&window(3));
        assert_eq!(p.most(0), most);
        // Two periods on, the 7 is forgotten; a gap of more than one period forgets both.
        p.pass(11, 12);
        assert!((3.0..3.01).contains(&p.most(0)), "{}", p.most(0));
        p.pass(12, 14);
        assert_eq!(p.most(0), 0.0);
        p.note(&window(u64::MAX));
        assert!(p.most(0) > 1e19);
        let back: Peaks = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn samples_keep_the_earliest_whatever_the_order_and_reuse_their_slots() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut s = Samples::default();
        for round in 0..200 {
            // Between rounds the window goes back to the pool: its slots are kept, its samples dropped.
            s.clear();
            let n = round % 13;
            let mut all = Vec::new();
            for i in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Few distinct times, so ties are broken by the id; some ids too long to be held inline.
                let long = if rng % 3 == 0 { "-an-event-id-longer-than-24-bytes" } else { "" };
                let (ts, id) = ((rng % 4) as i64, format!("e{}-{i}{long}", rng % 97));
                s.add(ts, &id);
                all.push((ts, id));
            }
            all.sort();
            all.truncate(SAMPLES);
            let kept: Vec<(i64, String)> = s.iter().map(|(t, id)| (t, id.to_owned())).collect();
            assert_eq!(kept, all, "round {round}");
            let back: Samples = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn levels_saved_before_bytes_written_was_a_measure_restore_with_it_empty() {
        let mut levels = Levels::default();
        levels.per_window[1].learn(5_000.0, 0.99);
        levels.per_span[0].learn(12.0, 0.99);
        (levels.pending, levels.span_sum[1], levels.slow[1]) = (7, 9_000, 3.5);
        // The shape an older version wrote: four measures per window, two followed by the cumulative
        // detector.
        let mut old = serde_json::to_value(&levels).unwrap();
        for (field, len) in [("per_window", 4), ("slow", 2)] {
            old[field].as_array_mut().unwrap().truncate(len);
        }
        let back: Levels = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(back, levels);
        // More values than measures is not a snapshot of any version.
        old["slow"] = serde_json::json!([0.0, 0.0, 0.0, 0.0]);
        let err = serde_json::from_value::<Levels>(old).unwrap_err().to_string();
        assert!(err.contains("no more values than measures"), "{err}");
    }
}
