//! Column builders for the archive's four tables: rows go in one at a time (strings copied from the
//! borrowed input exactly once), a [`RecordBatch`] comes out.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use vigil_schemas::Event;
use vigil_schemas::arrow::{control_schema, dead_letters_schema, events_schema, findings_schema};
use vigil_schemas::rows::{ControlRecord, Finding};

use super::DeadLetter;

/// Rows a new table's builders have room for before they grow. They double as they fill, and Arrow's
/// `finish` leaves them empty, so this only sizes a table's first rows; it is small because it once sized
/// a set of builders per event-time hour touched (the archive now keeps one set per table: see
/// `Partitioned`).
const START_ROWS: usize = 8;

fn text() -> StringBuilder {
    StringBuilder::with_capacity(START_ROWS, START_ROWS * 32)
}

fn ts() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(START_ROWS).with_timezone("UTC")
}

/// Where a row came from, stamped on every archived row.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Source name (file stem, `stdin`, or Kafka topic).
    pub source: &'a str,
    /// Partition (0 for files).
    pub partition: i32,
    /// When vigil ingested it, UTC ms.
    pub ingested_at: i64,
}

/// A table's column builders.
pub trait Table: Default + Send {
    /// The table's directory under the archive root.
    const DIR: &'static str;
    /// The Arrow schema of its files.
    fn schema() -> SchemaRef;
    /// Rows buffered.
    fn rows(&self) -> usize;
    /// Builds the buffered rows into a batch and resets the builders.
    fn finish(&mut self) -> RecordBatch;
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    // The builders are declared in schema order with schema types, so this cannot fail; a mismatch is a
    // bug in this file that every archive test would catch.
    RecordBatch::try_new(schema, columns).expect("column builders match the schema")
}

/// The columns that say where a row of input came from (`_source`, `_partition`, `_position`,
/// `_ingested_at`), last in the tables of what came in: events and dead letters.
#[derive(Debug)]
struct Provenance {
    source: StringBuilder,
    partition: Int32Builder,
    position: UInt64Builder,
    ingested_at: TimestampMillisecondBuilder,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            source: text(),
            partition: Int32Builder::with_capacity(START_ROWS),
            position: UInt64Builder::with_capacity(START_ROWS),
            ingested_at: ts(),
        }
    }
}

impl Provenance {
    fn push(&mut self, origin: Origin<'_>, position: u64) {
        self.source.append_value(origin.source);
        self.partition.append_value(origin.partition);
        self.position.append_value(position);
        self.ingested_at.append_value(origin.ingested_at);
    }

    /// Appends the four columns to a table's others.
    fn finish_into(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.push(Arc::new(self.source.finish()));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.position.finish()));
        columns.push(Arc::new(self.ingested_at.finish()));
    }
}

/// Builders for `events/`.
#[derive(Debug)]
pub struct EventColumns {
    event_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    agent_id: StringBuilder,
    action: StringBuilder,
    resource: StringBuilder,
    scope: StringBuilder,
    outcome: StringBuilder,
    bytes_read: UInt64Builder,
    bytes_written: UInt64Builder,
    records: UInt64Builder,
    session_id: StringBuilder,
    agent_role: StringBuilder,
    principal: StringBuilder,
    credential_id: StringBuilder,
    model: StringBuilder,
    model_provider: StringBuilder,
    input_tokens: UInt64Builder,
    output_tokens: UInt64Builder,
    cost_usd: Float64Builder,
    intent: StringBuilder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    source: StringBuilder,
    attributes: StringBuilder,
    provenance: Provenance,
    rows: usize,
}

impl Default for EventColumns {
    fn default() -> Self {
        EventColumns {
            event_id: text(),
            ts: ts(),
            agent_id: text(),
            action: text(),
            resource: text(),
            scope: text(),
            outcome: text(),
            bytes_read: UInt64Builder::with_capacity(START_ROWS),
            bytes_written: UInt64Builder::with_capacity(START_ROWS),
            records: UInt64Builder::with_capacity(START_ROWS),
            session_id: text(),
            agent_role: text(),
            principal: text(),
            credential_id: text(),
            model: text(),
            model_provider: text(),
            input_tokens: UInt64Builder::with_capacity(START_ROWS),
            output_tokens: UInt64Builder::with_capacity(START_ROWS),
            cost_usd: Float64Builder::with_capacity(START_ROWS),
            intent: text(),
            trace_id: text(),
            span_id: text(),
            source: text(),
            attributes: text(),
            provenance: Provenance::default(),
            rows: 0,
        }
    }
}

impl EventColumns {
    /// Appends one event.
    pub fn push(&mut self, ev: &Event<'_>, origin: Origin<'_>, position: u64) {
        self.event_id.append_value(&ev.event_id);
        self.ts.append_value(ev.ts_ms);
        self.agent_id.append_value(&ev.agent_id);
        self.action.append_value(&ev.action);
        self.resource.append_value(&ev.resource);
        self.scope.append_option(ev.scope.as_deref());
        self.outcome.append_value(ev.outcome.as_str());
        self.bytes_read.append_option(ev.bytes_read);
        self.bytes_written.append_option(ev.bytes_written);
        self.records.append_option(ev.records);
        self.session_id.append_option(ev.session_id.as_deref());
        self.agent_role.append_option(ev.agent_role.as_deref());
        self.principal.append_option(ev.principal.as_deref());
        self.credential_id.append_option(ev.credential_id.as_deref());
        self.model.append_option(ev.model.as_deref());
        self.model_provider.append_option(ev.model_provider.as_deref());
        self.input_tokens.append_option(ev.input_tokens);
        self.output_tokens.append_option(ev.output_tokens);
        self.cost_usd.append_option(ev.cost_usd);
        self.intent.append_option(ev.intent.as_deref());
        self.trace_id.append_option(ev.trace_id.as_deref());
        self.span_id.append_option(ev.span_id.as_deref());
        self.source.append_option(ev.source.as_deref());
        self.attributes.append_option(ev.attributes.as_deref());
        self.provenance.push(origin, position);
        self.rows += 1;
    }
}

impl Table for EventColumns {
    const DIR: &'static str = "events";
    fn schema() -> SchemaRef {
        events_schema()
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let s = self;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(s.event_id.finish()),
            Arc::new(s.ts.finish()),
            Arc::new(s.agent_id.finish()),
            Arc::new(s.action.finish()),
            Arc::new(s.resource.finish()),
            Arc::new(s.scope.finish()),
            Arc::new(s.outcome.finish()),
            Arc::new(s.bytes_read.finish()),
            Arc::new(s.bytes_written.finish()),
            Arc::new(s.records.finish()),
            Arc::new(s.session_id.finish()),
            Arc::new(s.agent_role.finish()),
            Arc::new(s.principal.finish()),
            Arc::new(s.credential_id.finish()),
            Arc::new(s.model.finish()),
            Arc::new(s.model_provider.finish()),
            Arc::new(s.input_tokens.finish()),
            Arc::new(s.output_tokens.finish()),
            Arc::new(s.cost_usd.finish()),
            Arc::new(s.intent.finish()),
            Arc::new(s.trace_id.finish()),
            Arc::new(s.span_id.finish()),
            Arc::new(s.source.finish()),
            Arc::new(s.attributes.finish()),
        ];
        s.provenance.finish_into(&mut columns);
        batch(events_schema(), columns)
    }
}

/// Builders for `dead-letters/`.
#[derive(Debug)]
pub struct DeadLetterColumns {
    reason: StringBuilder,
    field: StringBuilder,
    detail: StringBuilder,
    size: UInt64Builder,
    payload: BinaryBuilder,
    truncated: BooleanBuilder,
    payload_text: StringBuilder,
    provenance: Provenance,
    rows: usize,
}

impl Default for DeadLetterColumns {
    fn default() -> Self {
        DeadLetterColumns {
            reason: text(),
            field: text(),
            detail: text(),
            size: UInt64Builder::with_capacity(START_ROWS),
            payload: BinaryBuilder::with_capacity(START_ROWS, START_ROWS * 64),
            truncated: BooleanBuilder::with_capacity(START_ROWS),
            payload_text: text(),
            provenance: Provenance::default(),
            rows: 0,
        }
    }
}

impl DeadLetterColumns {
    /// Appends one dead letter, at `position` as the archive shows it.
    pub fn push(&mut self, d: &DeadLetter, origin: Origin<'_>, position: u64) {
        self.reason.append_value(d.reason.code());
        self.field.append_option(d.reason.field());
        self.detail.append_value(d.reason.to_string());
        self.size.append_value(d.size);
        self.payload.append_value(&d.payload);
        self.truncated.append_value(d.truncated);
        self.payload_text.append_option(std::str::from_utf8(&d.payload).ok());
        self.provenance.push(origin, position);
        self.rows += 1;
    }
}

impl Table for DeadLetterColumns {
    const DIR: &'static str = "dead-letters";
    fn schema() -> SchemaRef {
        dead_letters_schema()
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let s = self;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(s.reason.finish()),
            Arc::new(s.field.finish()),
            Arc::new(s.detail.finish()),
            Arc::new(s.size.finish()),
            Arc::new(s.payload.finish()),
            Arc::new(s.truncated.finish()),
            Arc::new(s.payload_text.finish()),
        ];
        s.provenance.finish_into(&mut columns);
        batch(dead_letters_schema(), columns)
    }
}

/// Appends one list row of strings.
fn push_strings(list: &mut ListBuilder<StringBuilder>, items: &[String]) {
    for item in items {
        list.values().append_value(item);
    }
    list.append(true);
}

fn string_list() -> ListBuilder<StringBuilder> {
    ListBuilder::with_capacity(text(), START_ROWS).with_field(Arc::new(arrow_schema::Field::new(
        "item",
        arrow_schema::DataType::Utf8,
        false,
    )))
}

/// Builders for `findings/`.
#[derive(Debug)]
pub struct FindingColumns {
    finding_id: StringBuilder,
    kind: StringBuilder,
    severity: StringBuilder,
    agent_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    window_start: TimestampMillisecondBuilder,
    window_end: TimestampMillisecondBuilder,
    score: Float64Builder,
    summary: StringBuilder,
    evidence: StringBuilder,
    event_ids: ListBuilder<StringBuilder>,
    m_source: StringBuilder,
    m_ingested_at: TimestampMillisecondBuilder,
    rows: usize,
}

impl Default for FindingColumns {
    fn default() -> Self {
        FindingColumns {
            finding_id: text(),
            kind: text(),
            severity: text(),
            agent_id: text(),
            ts: ts(),
            window_start: ts(),
            window_end: ts(),
            score: Float64Builder::with_capacity(START_ROWS),
            summary: text(),
            evidence: text(),
            event_ids: string_list(),
            m_source: text(),
            m_ingested_at: ts(),
            rows: 0,
        }
    }
}

impl FindingColumns {
    /// Appends one finding.
    pub fn push(&mut self, f: &Finding, origin: Origin<'_>) {
        self.finding_id.append_value(&f.finding_id);
        self.kind.append_value(f.kind.as_str());
        self.severity.append_value(f.severity.as_str());
        self.agent_id.append_value(&f.agent_id);
        self.ts.append_value(f.ts);
        self.window_start.append_value(f.window_start);
        self.window_end.append_value(f.window_end);
        self.score.append_value(f.score);
        self.summary.append_value(&f.summary);
        self.evidence.append_value(serde_json::Value::Object(f.evidence.clone()).to_string());
        push_strings(&mut self.event_ids, &f.event_ids);
        self.m_source.append_value(origin.source);
        self.m_ingested_at.append_value(origin.ingested_at);
        self.rows += 1;
    }
}

impl Table for FindingColumns {
    const DIR: &'static str = "findings";
    fn schema() -> SchemaRef {
        findings_schema()
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let s = self;
        batch(
            findings_schema(),
            vec![
                Arc::new(s.finding_id.finish()),
                Arc::new(s.kind.finish()),
                Arc::new(s.severity.finish()),
                Arc::new(s.agent_id.finish()),
                Arc::new(s.ts.finish()),
                Arc::new(s.window_start.finish()),
                Arc::new(s.window_end.finish()),
                Arc::new(s.score.finish()),
                Arc::new(s.summary.finish()),
                Arc::new(s.evidence.finish()),
                Arc::new(s.event_ids.finish()),
                Arc::new(s.m_source.finish()),
                Arc::new(s.m_ingested_at.finish()),
            ],
        )
    }
}

/// Builders for `control/`.
#[derive(Debug)]
pub struct ControlColumns {
    record: StringBuilder,
    transition_id: StringBuilder,
    ts: TimestampMillisecondBuilder,
    action: StringBuilder,
    scope: StringBuilder,
    agent_id: StringBuilder,
    factor: StringBuilder,
    value: StringBuilder,
    agents: ListBuilder<StringBuilder>,
    from_state: StringBuilder,
    to_state: StringBuilder,
    mode: StringBuilder,
    actor: StringBuilder,
    reason: StringBuilder,
    evidence: StringBuilder,
    finding_ids: ListBuilder<StringBuilder>,
    endpoint: StringBuilder,
    delivery: StringBuilder,
    attempts: UInt32Builder,
    http_status: UInt16Builder,
    detail: StringBuilder,
    m_source: StringBuilder,
    m_ingested_at: TimestampMillisecondBuilder,
    rows: usize,
}

impl Default for ControlColumns {
    fn default() -> Self {
        ControlColumns {
            record: text(),
            transition_id: text(),
            ts: ts(),
            action: text(),
            scope: text(),
            agent_id: text(),
            factor: text(),
            value: text(),
            agents: string_list(),
            from_state: text(),
            to_state: text(),
            mode: text(),
            actor: text(),
            reason: text(),
            evidence: text(),
            finding_ids: string_list(),
            endpoint: text(),
            delivery: text(),
            attempts: UInt32Builder::with_capacity(START_ROWS),
            http_status: UInt16Builder::with_capacity(START_ROWS),
            detail: text(),
            m_source: text(),
            m_ingested_at: ts(),
            rows: 0,
        }
    }
}

impl ControlColumns {
    /// Appends one transition or delivery outcome.
    pub fn push(&mut self, r: &ControlRecord, origin: Origin<'_>) {
        match r {
            ControlRecord::Transition(t) => {
                self.record.append_value("transition");
                self.transition_id.append_value(&t.transition_id);
                self.ts.append_value(t.ts);
                self.action.append_value(t.action.as_str());
                self.scope.append_value(t.scope().as_str());
                self.agent_id.append_option(t.agent_id.as_deref());
                self.factor.append_option(t.factor.map(|f| f.as_str()));
                self.value.append_option(t.value.as_deref());
                push_strings(&mut self.agents, &t.agents);
                self.from_state.append_value(t.from.as_str());
                self.to_state.append_value(t.to.as_str());
                self.mode.append_value(t.mode.as_str());
                self.actor.append_value(t.actor.wire());
                self.reason.append_value(&t.reason);
                self.evidence.append_value(serde_json::Value::Object(t.evidence.clone()).to_string());
                push_strings(&mut self.finding_ids, &t.finding_ids);
                self.endpoint.append_null();
                self.delivery.append_null();
                self.attempts.append_null();
                self.http_status.append_null();
                self.detail.append_null();
            }
            ControlRecord::Delivery(d) => {
                self.record.append_value("delivery");
                self.transition_id.append_value(&d.transition_id);
                self.ts.append_value(d.ts);
                for b in [
                    &mut self.action,
                    &mut self.scope,
                    &mut self.agent_id,
                    &mut self.factor,
                    &mut self.value,
                    &mut self.from_state,
                    &mut self.to_state,
                    &mut self.mode,
                    &mut self.actor,
                    &mut self.reason,
                    &mut self.evidence,
                ] {
                    b.append_null();
                }
                self.agents.append(false);
                self.finding_ids.append(false);
                self.endpoint.append_value(&d.endpoint);
                self.delivery.append_value(d.outcome.as_str());
                self.attempts.append_value(d.attempts);
                self.http_status.append_option(d.status);
                self.detail.append_value(&d.detail);
            }
        }
        self.m_source.append_value(origin.source);
        self.m_ingested_at.append_value(origin.ingested_at);
        self.rows += 1;
    }
}

impl Table for ControlColumns {
    const DIR: &'static str = "control";
    fn schema() -> SchemaRef {
        control_schema()
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let s = self;
        batch(
            control_schema(),
            vec![
                Arc::new(s.record.finish()),
                Arc::new(s.transition_id.finish()),
                Arc::new(s.ts.finish()),
                Arc::new(s.action.finish()),
                Arc::new(s.scope.finish()),
                Arc::new(s.agent_id.finish()),
                Arc::new(s.factor.finish()),
                Arc::new(s.value.finish()),
                Arc::new(s.agents.finish()),
                Arc::new(s.from_state.finish()),
                Arc::new(s.to_state.finish()),
                Arc::new(s.mode.finish()),
                Arc::new(s.actor.finish()),
                Arc::new(s.reason.finish()),
                Arc::new(s.evidence.finish()),
                Arc::new(s.finding_ids.finish()),
                Arc::new(s.endpoint.finish()),
                Arc::new(s.delivery.finish()),
                Arc::new(s.attempts.finish()),
                Arc::new(s.http_status.finish()),
                Arc::new(s.detail.finish()),
                Arc::new(s.m_source.finish()),
                Arc::new(s.m_ingested_at.finish()),
            ],
        )
    }
}
