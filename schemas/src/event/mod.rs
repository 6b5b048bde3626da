//! The agent-action event, version 1 of the contract, and its decoder.
//!
//! Decoding borrows every string from the input line where JSON allows it (no escapes), so a batch of
//! events costs no string allocations until the archive copies them into Arrow buffers. Decoding never
//! panics and never stops at the first problem silently: it returns [`Invalid`], which names the field,
//! what was expected and what arrived.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::timestamp::{self, TimestampError};

mod fast;
use fast::field_index;

/// Version of the event contract this crate implements.
pub const CONTRACT_VERSION: u32 = 1;

/// Default cap on one encoded event, in bytes (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Result of an action, as the emitter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action went through (the default when absent).
    #[default]
    Success,
    /// The action was attempted and failed.
    Failure,
    /// The action was refused by an authorisation check.
    Denied,
}

impl Outcome {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One action of one agent, decoded and validated.
///
/// Strings are [`Cow`] so that they borrow from the input line when they can.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event<'a> {
    /// Unique id; the dedup key.
    pub event_id: Cow<'a, str>,
    /// Event time, UTC epoch milliseconds.
    pub ts_ms: i64,
    /// The agent's own identity.
    pub agent_id: Cow<'a, str>,
    /// What it did (`data.read`, `tool.call`, `x-custom`, ...).
    pub action: Cow<'a, str>,
    /// What it touched, as a URI.
    pub resource: Cow<'a, str>,
    /// The permission scope exercised.
    pub scope: Option<Cow<'a, str>>,
    /// Result of the action.
    pub outcome: Outcome,
    /// Bytes read by the action.
    pub bytes_read: Option<u64>,
    /// Bytes written by the action.
    pub bytes_written: Option<u64>,
    /// Records touched by the action.
    pub records: Option<u64>,
    /// The agent's work session.
    pub session_id: Option<Cow<'a, str>>,
    /// Peer group of the agent.
    pub agent_role: Option<Cow<'a, str>>,
    /// The human the agent acts for.
    pub principal: Option<Cow<'a, str>>,
    /// Fingerprint of the credential used.
    pub credential_id: Option<Cow<'a, str>>,
    /// Model behind the agent.
    pub model: Option<Cow<'a, str>>,
    /// Provider of that model.
    pub model_provider: Option<Cow<'a, str>>,
    /// Model input tokens the action consumed.
    pub input_tokens: Option<u64>,
    /// Model output tokens the action consumed.
    pub output_tokens: Option<u64>,
    /// What the action cost, in US dollars.
    pub cost_usd: Option<f64>,
    /// Why the agent acted: the goal or prompt summary.
    pub intent: Option<Cow<'a, str>>,
    /// OpenTelemetry trace id.
    pub trace_id: Option<Cow<'a, str>>,
    /// OpenTelemetry span id.
    pub span_id: Option<Cow<'a, str>>,
    /// The emitting service.
    pub source: Option<Cow<'a, str>>,
    /// Everything else, as the text of one JSON object: the `attributes` object merged with every unknown
    /// top-level field, so nothing the emitter sent is dropped.
    pub attributes: Option<Cow<'a, str>>,
}

/// The JSON type a field should have, as the contract states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A string with a length bound in characters.
    String {
        /// Fewest characters.
        min: usize,
        /// Most characters.
        max: usize,
    },
    /// RFC 3339 string or integer epoch milliseconds.
    Timestamp,
    /// One of `success`, `failure`, `denied`.
    Outcome,
    /// Unsigned integer.
    Unsigned,
    /// Number ≥ 0.
    NonNegativeNumber,
    /// JSON object.
    Object,
}

/// One top-level field of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Wire name.
    pub name: &'static str,
    /// Expected type.
    pub ty: FieldType,
    /// Whether an event without it is rejected.
    pub required: bool,
}

const fn string(name: &'static str, min: usize, max: usize, required: bool) -> FieldSpec {
    FieldSpec { name, ty: FieldType::String { min, max }, required }
}
const fn opt(name: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec { name, ty, required: false }
}
const OPT_STR: FieldType = FieldType::String { min: 0, max: 65_536 };

/// The contract's fields, in archive column order. The JSON Schema file and the decoder are both tested
/// against this table, so the three cannot drift apart.
pub const FIELDS: &[FieldSpec] = &[
    string("event_id", 1, 128, true),
    FieldSpec { name: "ts", ty: FieldType::Timestamp, required: true },
    string("agent_id", 1, 256, true),
    string("action", 1, 256, true),
    string("resource", 1, 8192, true),
    opt("scope", OPT_STR),
    opt("outcome", FieldType::Outcome),
    opt("bytes_read", FieldType::Unsigned),
    opt("bytes_written", FieldType::Unsigned),
    opt("records", FieldType::Unsigned),
    opt("session_id", OPT_STR),
    opt("agent_role", OPT_STR),
    opt("principal", OPT_STR),
    opt("credential_id", OPT_STR),
    opt("model", OPT_STR),
    opt("model_provider", OPT_STR),
    opt("input_tokens", FieldType::Unsigned),
    opt("output_tokens", FieldType::Unsigned),
    opt("cost_usd", FieldType::NonNegativeNumber),
    opt("intent", OPT_STR),
    opt("trace_id", OPT_STR),
    opt("span_id", OPT_STR),
    opt("source", OPT_STR),
    opt("attributes", FieldType::Object),
];

/// Why a line is not a valid event. Every variant is a dead-letter reason with a stable
/// [`code`](Invalid::code).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// The bytes are not UTF-8.
    #[error("not UTF-8: invalid byte at offset {valid_up_to}")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The text is not one JSON value.
    #[error("not JSON: {detail}")]
    NotJson {
        /// The parser's message, with line and column.
        detail: String,
    },
    /// Valid JSON, but not an object.
    #[error("not an event: expected a JSON object, got {got}")]
    NotObject {
        /// The JSON type that arrived.
        got: &'static str,
    },
    /// Over the size cap.
    #[error("too large: {size} bytes, cap is {limit}")]
    TooLarge {
        /// Size of the line in bytes.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// A required field is absent (or null).
    #[error("missing required field `{field}`")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}`: expected {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What the contract wants.
        expected: &'static str,
        /// The JSON type that arrived.
        got: &'static str,
    },
    /// A field has the right type but a value the contract refuses.
    #[error("field `{field}`: {problem}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// `ts` is a string or integer but not a usable time.
    #[error("field `ts`: {problem} (got {got})")]
    BadTimestamp {
        /// What is wrong.
        problem: TimestampError,
        /// The value, shortened.
        got: String,
    },
    /// `ts` is further ahead of the receiving clock than the allowed skew: such an event would move
    /// event time forward for every agent judged with it, so it is refused instead.
    #[error(
        "field `ts`: {} is {ahead_s}s ahead of this host's clock ({}; at most {limit_s}s of skew is accepted)",
        crate::timestamp::format_rfc3339_ms(*ts_ms),
        crate::timestamp::format_rfc3339_ms(*now_ms)
    )]
    FutureTimestamp {
        /// The event's time (UTC ms).
        ts_ms: i64,
        /// The receiving host's clock when it was judged (UTC ms).
        now_ms: i64,
        /// How far ahead, in seconds.
        ahead_s: i64,
        /// The configured limit, in seconds.
        limit_s: u64,
    },
    /// A known field appears twice in one object.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field.
        field: &'static str,
    },
    /// The input could not be read past this point (a truncated or damaged compressed file): what
    /// follows is dead-lettered as one unreadable tail.
    #[error("the input could not be read from decompressed byte {offset} on: {detail}")]
    Unreadable {
        /// Decompressed bytes read before the damage.
        offset: u64,
        /// The reader's message.
        detail: String,
    },
    /// An authenticated sender sent an event it may not claim: for an agent, or from a source, outside
    /// what its config grants it.
    #[error("sender {sender:?} may not send events with {field} {value:?}")]
    NotPermitted {
        /// The sender's configured name.
        sender: String,
        /// `agent_id` or `source`.
        field: &'static str,
        /// What the event claimed.
        value: String,
    },
    /// The event_id was already seen in this stream (within the dedup window).
    #[error("duplicate event_id {event_id:?} (first seen at {unit} {first_position})")]
    DuplicateEventId {
        /// The repeated id.
        event_id: String,
        /// Source position where it was first seen.
        first_position: u64,
        /// What a position counts in this source: `line` (a file), `item` (the HTTP intake), `position`.
        unit: &'static str,
    },
}

impl Invalid {
    /// Machine-readable reason, stable across versions: the dead-letter `reason` column.
    pub const fn code(&self) -> &'static str {
        match self {
            Invalid::NotUtf8 { .. } => "not_utf8",
            Invalid::NotJson { .. } => "not_json",
            Invalid::NotObject { .. } => "not_object",
            Invalid::TooLarge { .. } => "too_large",
            Invalid::MissingField { .. } => "missing_field",
            Invalid::WrongType { .. } => "wrong_type",
            Invalid::InvalidValue { .. } => "invalid_value",
            Invalid::BadTimestamp { .. } => "bad_timestamp",
            Invalid::FutureTimestamp { .. } => "future_timestamp",
            Invalid::DuplicateField { .. } => "duplicate_field",
            Invalid::DuplicateEventId { .. } => "duplicate_event_id",
            Invalid::Unreadable { .. } => "unreadable_input",
            Invalid::NotPermitted { .. } => "not_permitted",
        }
    }

    /// Every reason code, for documentation and metrics.
    pub const CODES: &'static [&'static str] = &[
        "not_utf8",
        "not_json",
        "not_object",
        "too_large",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "bad_timestamp",
        "future_timestamp",
        "duplicate_field",
        "duplicate_event_id",
        "unreadable_input",
        "not_permitted",
    ];

    /// The field the problem is in, when there is one.
    pub const fn field(&self) -> Option<&'static str> {
        match self {
            Invalid::MissingField { field }
            | Invalid::WrongType { field, .. }
            | Invalid::InvalidValue { field, .. }
            | Invalid::DuplicateField { field }
            | Invalid::NotPermitted { field, .. } => Some(field),
            Invalid::BadTimestamp { .. } | Invalid::FutureTimestamp { .. } => Some("ts"),
            Invalid::DuplicateEventId { .. } => Some("event_id"),
            _ => None,
        }
    }
}

/// A JSON value as the decoder first sees it: scalars kept (strings borrowed), containers skipped.
#[derive(Debug)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl Scalar<'_> {
    const fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "string",
            Scalar::U64(_) | Scalar::I64(_) => "integer",
            Scalar::F64(_) => "number",
            Scalar::Bool => "boolean",
            Scalar::Null => "null",
            Scalar::Array => "array",
            Scalar::Object => "object",
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A map key, borrowed where possible.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => Ok(Key(s)),
            other => Err(de::Error::custom(format_args!("object key is {}", other.type_name()))),
        }
    }
}

/// The top-level object, fields sorted into slots but not yet validated.
#[derive(Default)]
struct Slots<'a> {
    values: [Option<Scalar<'a>>; FIELD_COUNT],
    attributes: Option<&'a RawValue>,
    extra: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate: Option<&'static str>,
}

const FIELD_COUNT: usize = 23; // FIELDS without `attributes`, which is kept as raw JSON.
const ATTRIBUTES: usize = FIELD_COUNT;

enum Top<'a> {
    Object(Box<Slots<'a>>),
    Other(&'static str),
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = Box::<Slots<'de>>::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match field_index(&key) {
                Some(ATTRIBUTES) => {
                    let raw: &'de RawValue = map.next_value()?;
                    if slots.attributes.replace(raw).is_some() {
                        slots.duplicate.get_or_insert("attributes");
                    }
                }
                Some(i) => {
                    let v: Scalar<'de> = map.next_value()?;
                    if slots.values[i].replace(v).is_some() {
                        slots.duplicate.get_or_insert(FIELDS[i].name);
                    }
                }
                None => {
                    let raw: &'de RawValue = map.next_value()?;
                    slots.extra.push((key, raw));
                }
            }
        }
        Ok(Top::Object(slots))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other("array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other("string"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::Other("integer"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::Other("integer"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::Other("boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Top::Other("null"))
    }
}

impl<'de> de::Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

/// Decodes one encoded event (one NDJSON line without its newline, or one Kafka message value).
///
/// A leading UTF-8 byte-order mark and a trailing carriage return are tolerated; anything else that is not
/// one valid event comes back as [`Invalid`].
///
/// ```
/// use vigil_schemas::{decode, Outcome};
/// let line = br#"{"event_id":"e1","ts":"2026-01-05T09:00:00Z","agent_id":"a1","action":"data.read",
///                 "resource":"postgres://crm/customers","outcome":"denied","team":"blue"}"#;
/// let ev = decode(line, 1 << 20).unwrap();
/// assert_eq!(ev.agent_id, "a1");
/// assert_eq!(ev.outcome, Outcome::Denied);
/// assert_eq!(ev.attributes.as_deref(), Some(r#"{"team":"blue"}"#));
/// ```
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Event<'_>, Invalid> {
    if bytes.len() > max_bytes {
        return Err(Invalid::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| Invalid::NotUtf8 { valid_up_to: e.valid_up_to() })?;
    decode_str(text)
}

/// Decodes one event from text already known to be UTF-8 (see [`decode`]; no size cap here).
pub fn decode_str(text: &str) -> Result<Event<'_>, Invalid> {
    if let Some(ev) = fast::event(text) {
        return Ok(ev);
    }
    if let Some(slots) = fast::scan(text) {
        return validate(slots);
    }
    decode_by_serde(text)
}

/// [`decode_str`] by serde alone: every text the fast path leaves (escapes, malformed JSON, unusual
/// shapes) is decided here, and the differential test compares the two.
fn decode_by_serde(text: &str) -> Result<Event<'_>, Invalid> {
    let top: Top<'_> = serde_json::from_str(text).map_err(|e| Invalid::NotJson { detail: e.to_string() })?;
    match top {
        Top::Object(slots) => validate(*slots),
        Top::Other(got) => Err(Invalid::NotObject { got }),
    }
}

fn take<'a>(slots: &mut Slots<'a>, i: usize) -> Option<Scalar<'a>> {
    match slots.values[i].take() {
        Some(Scalar::Null) | None => None,
        some => some,
    }
}

/// A string field's value, held to the field's length bounds.
#[inline(always)]
fn string_of<'a>(i: usize, v: Scalar<'a>) -> Result<Cow<'a, str>, Invalid> {
    let spec = &FIELDS[i];
    let FieldType::String { min, max } = spec.ty else { unreachable!("{} is a string field", spec.name) };
    let Scalar::Str(s) = v else {
        return Err(Invalid::WrongType { field: spec.name, expected: "string", got: v.type_name() });
    };
    // Byte length bounds the character count from above, and a string of any bytes has a character:
    // unless a bound needs the exact count, 0 or 1 stands for it (no char walk).
    let exact = s.len() > max || min > 1;
    let chars = if exact { s.chars().count() } else { s.len().min(1) };
    if chars < min {
        Err(Invalid::InvalidValue { field: spec.name, problem: "must not be empty".into() })
    } else if chars > max {
        Err(Invalid::InvalidValue {
            field: spec.name,
            problem: format!("{chars} characters, at most {max} allowed"),
        })
    } else {
        Ok(s)
    }
}

/// An unsigned integer field's value.
fn unsigned_of(i: usize, v: Scalar<'_>) -> Result<u64, Invalid> {
    let field = FIELDS[i].name;
    match v {
        Scalar::U64(v) => Ok(v),
        Scalar::I64(v) => {
            Err(Invalid::InvalidValue { field, problem: format!("{v} is negative; must be ≥ 0") })
        }
        // 3.0 is an unsigned integer in JSON Schema's eyes; 3.5 is not.
        // Every whole number below 2^64 fits (1.8e19 included).
        Scalar::F64(v) if v >= 0.0 && v.fract() == 0.0 && v < 18_446_744_073_709_551_616.0 => Ok(v as u64),
        other => Err(Invalid::WrongType { field, expected: "unsigned integer", got: other.type_name() }),
    }
}

fn timestamp_of(v: Scalar<'_>) -> Result<i64, Invalid> {
    match v {
        Scalar::Str(t) => timestamp::parse_rfc3339_ms(&t)
            .map_err(|problem| Invalid::BadTimestamp { problem, got: shorten(&t) }),
        Scalar::U64(v) => timestamp::check_epoch_ms(i128::from(v))
            .map_err(|problem| Invalid::BadTimestamp { problem, got: v.to_string() }),
        Scalar::I64(v) => timestamp::check_epoch_ms(i128::from(v))
            .map_err(|problem| Invalid::BadTimestamp { problem, got: v.to_string() }),
        other => Err(Invalid::WrongType {
            field: "ts",
            expected: "RFC 3339 string or integer epoch milliseconds",
            got: other.type_name(),
        }),
    }
}

fn outcome_of(v: Scalar<'_>) -> Result<Outcome, Invalid> {
    match v {
        Scalar::Str(o) => match &*o {
            "success" => Ok(Outcome::Success),
            "failure" => Ok(Outcome::Failure),
            "denied" => Ok(Outcome::Denied),
            _ => Err(Invalid::InvalidValue {
                field: "outcome",
                problem: format!("{} is not one of success, failure, denied", shorten(&o)),
            }),
        },
        other => Err(Invalid::WrongType { field: "outcome", expected: "string", got: other.type_name() }),
    }
}

fn cost_of(v: Scalar<'_>) -> Result<f64, Invalid> {
    let negative = |v: &dyn fmt::Display| Invalid::InvalidValue {
        field: "cost_usd",
        problem: format!("{v} is negative; must be ≥ 0"),
    };
    match v {
        Scalar::U64(v) => Ok(v as f64),
        Scalar::F64(v) if v >= 0.0 => Ok(v),
        Scalar::F64(v) => Err(negative(&v)),
        Scalar::I64(v) => Err(negative(&v)),
        other => Err(Invalid::WrongType { field: "cost_usd", expected: "number", got: other.type_name() }),
    }
}

/// Sets field `i` (an index into [`FIELDS`], not `attributes`) of `ev` from a value that is not `null`,
/// or says why the value does not fit. The one place a field's value is checked: the serde path and the
/// fast path's two ways (through [`Slots`], and straight into an event) all come here. Inlined: the
/// straight path then writes each value into the event in place and never builds the error it drops.
#[inline(always)]
fn set_field<'a>(ev: &mut Event<'a>, i: usize, v: Scalar<'a>) -> Result<(), Invalid> {
    match i {
        0 => ev.event_id = string_of(i, v)?,
        1 => ev.ts_ms = timestamp_of(v)?,
        2 => ev.agent_id = string_of(i, v)?,
        3 => ev.action = string_of(i, v)?,
        4 => ev.resource = string_of(i, v)?,
        5 => ev.scope = Some(string_of(i, v)?),
        6 => ev.outcome = outcome_of(v)?,
        7 => ev.bytes_read = Some(unsigned_of(i, v)?),
        8 => ev.bytes_written = Some(unsigned_of(i, v)?),
        9 => ev.records = Some(unsigned_of(i, v)?),
        10 => ev.session_id = Some(string_of(i, v)?),
        11 => ev.agent_role = Some(string_of(i, v)?),
        12 => ev.principal = Some(string_of(i, v)?),
        13 => ev.credential_id = Some(string_of(i, v)?),
        14 => ev.model = Some(string_of(i, v)?),
        15 => ev.model_provider = Some(string_of(i, v)?),
        16 => ev.input_tokens = Some(unsigned_of(i, v)?),
        17 => ev.output_tokens = Some(unsigned_of(i, v)?),
        18 => ev.cost_usd = Some(cost_of(v)?),
        19 => ev.intent = Some(string_of(i, v)?),
        20 => ev.trace_id = Some(string_of(i, v)?),
        21 => ev.span_id = Some(string_of(i, v)?),
        22 => ev.source = Some(string_of(i, v)?),
        _ => unreachable!("field {i} is not a scalar field of the contract"),
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{:?}…", &s[..at]),
        None => format!("{s:?}"),
    }
}

/// The event in `slots`, or the first thing wrong with it: a duplicate field, then each field in the
/// table's order (missing when required, or a value that does not fit), then `attributes`.
fn validate<'a>(mut slots: Slots<'a>) -> Result<Event<'a>, Invalid> {
    if let Some(field) = slots.duplicate {
        return Err(Invalid::DuplicateField { field });
    }
    let mut ev = Event::default();
    for (i, spec) in FIELDS[..FIELD_COUNT].iter().enumerate() {
        match take(&mut slots, i) {
            Some(v) => set_field(&mut ev, i, v)?,
            None if spec.required => return Err(Invalid::MissingField { field: spec.name }),
            None => {}
        }
    }
    ev.attributes = merge_attributes(slots.attributes, &slots.extra)?;
    Ok(ev)
}

/// Builds the `attributes` text: the emitter's `attributes` object as sent (borrowed when there are no
/// unknown top-level fields), with unknown top-level fields appended as members.
fn merge_attributes<'a>(
    attributes: Option<&'a RawValue>,
    extra: &[(Cow<'a, str>, &'a RawValue)],
) -> Result<Option<Cow<'a, str>>, Invalid> {
    let inner = match attributes.map(RawValue::get) {
        None | Some("null") => None,
        Some(text) if text.starts_with('{') => Some(text),
        Some(text) => {
            let got = match text.as_bytes()[0] {
                b'[' => "array",
                b'"' => "string",
                b't' | b'f' => "boolean",
                _ => "number",
            };
            return Err(Invalid::WrongType { field: "attributes", expected: "object", got });
        }
    };
    // Kept as sent, these texts reach every reader of the archive: a `\ud800` with no low surrogate after
    // it is legal to skip but not to read, and it made every DuckDB JSON query over the archive fail.
    let texts = inner.into_iter().chain(extra.iter().map(|(_, v)| v.get()));
    for text in texts {
        if has_lone_surrogate(text) {
            return Err(Invalid::InvalidValue {
                field: "attributes",
                problem: "holds a lone UTF-16 surrogate escape (like \\ud800 without its pair), which JSON readers \
                          refuse"
                    .into(),
            });
        }
    }
    if extra.is_empty() {
        return Ok(inner.map(Cow::Borrowed));
    }
    let mut out = String::with_capacity(64);
    out.push('{');
    if let Some(text) = inner {
        let body = text[1..text.len() - 1].trim();
        out.push_str(body);
    }
    for (key, value) in extra {
        if out.len() > 1 {
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Ok(Some(Cow::Owned(out)))
}

/// Whether JSON text has a `\u` escape of a UTF-16 surrogate that is not half of a pair.
fn has_lone_surrogate(text: &str) -> bool {
    let b = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = b.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = memchr_backslash(&b[i..]) {
        let at = i + off;
        match b.get(at + 1) {
            Some(b'u') => {
                let u = unit(at + 2).unwrap_or(0);
                if (0xD800..0xDC00).contains(&u) {
                    let low = (b.get(at + 6) == Some(&b'\\') && b.get(at + 7) == Some(&b'u'))
                        .then(|| unit(at + 8))
                        .flatten();
                    if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                        return true;
                    }
                    i = at + 12;
                } else if (0xDC00..0xE000).contains(&u) {
                    return true;
                } else {
                    i = at + 6;
                }
            }
            // Any other escape (`\\` included) is two bytes.
            _ => i = at + 2,
        }
        if i >= b.len() {
            break;
        }
    }
    false
}

fn memchr_backslash(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\\')
}

#[cfg(test)]
mod tests;

impl Event<'_> {
    /// Encodes the event as one line of contract JSON (no newline), `ts` as RFC 3339 with milliseconds.
    /// Decoding the result gives back an equal event.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON encoding of the event to `out` (see [`Event::to_json`]).
    pub fn write_json(&self, out: &mut String) {
        let mut o = JsonObject::open(out);
        o.string("event_id", Some(&self.event_id));
        o.key("ts");
        o.out.push('"');
        timestamp::write_rfc3339_ms(o.out, self.ts_ms);
        o.out.push('"');
        o.string("agent_id", Some(&self.agent_id));
        o.string("action", Some(&self.action));
        o.string("resource", Some(&self.resource));
        o.string("scope", self.scope.as_deref());
        if self.outcome != Outcome::Success {
            o.string("outcome", Some(self.outcome.as_str()));
        }
        o.unsigned("bytes_read", self.bytes_read);
        o.unsigned("bytes_written", self.bytes_written);
        o.unsigned("records", self.records);
        o.string("session_id", self.session_id.as_deref());
        o.string("agent_role", self.agent_role.as_deref());
        o.string("principal", self.principal.as_deref());
        o.string("credential_id", self.credential_id.as_deref());
        o.string("model", self.model.as_deref());
        o.string("model_provider", self.model_provider.as_deref());
        o.unsigned("input_tokens", self.input_tokens);
        o.unsigned("output_tokens", self.output_tokens);
        if let Some(n) = self.cost_usd.and_then(serde_json::Number::from_f64) {
            o.key("cost_usd");
            o.out.push_str(&n.to_string());
        }
        o.string("intent", self.intent.as_deref());
        o.string("trace_id", self.trace_id.as_deref());
        o.string("span_id", self.span_id.as_deref());
        o.string("source", self.source.as_deref());
        if let Some(a) = self.attributes.as_deref() {
            o.key("attributes");
            o.out.push_str(a);
        }
        o.out.push('}');
    }
}

/// Writes the members of one JSON object into a `String`, commas included.
struct JsonObject<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> JsonObject<'o> {
    fn open(out: &'o mut String) -> Self {
        out.push('{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    fn string(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.key(name);
            push_json_string(self.out, v);
        }
    }

    fn unsigned(&mut self, name: &str, value: Option<u64>) {
        if let Some(v) = value {
            self.key(name);
            self.out.push_str(&v.to_string());
        }
    }
}

/// Appends `s` as a JSON string literal, escaped as RFC 8259 requires.
pub fn push_json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(esc);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}
