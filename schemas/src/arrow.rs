//! Arrow schemas of the archive's tables. The Parquet files under `events/`, `findings/`, `control/` and
//! `dead-letters/` carry exactly these columns; the hive partition columns `dt` and `hour` live in the
//! directory names, not in the files.
//!
//! Each schema is built once and shared by every batch of its table (a replay of sparse history finishes
//! a batch per hour touched, and the archive's writer knows a table's batches by their schema).

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::event::{FIELDS, FieldType};

/// Timestamps in the archive: UTC milliseconds.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Columns vigil adds to every archived event: where and when it was ingested.
pub const INGEST_COLUMNS: &[&str] = &["_source", "_partition", "_position", "_ingested_at"];

fn ingest_fields() -> [Field; 4] {
    [
        Field::new("_source", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_position", DataType::UInt64, false),
        Field::new("_ingested_at", timestamp_type(), false),
    ]
}

/// Schema of `events/`: the contract's fields in contract order (`attributes` as JSON text), then the
/// ingest columns.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_events_schema);
    SCHEMA.clone()
}

fn build_events_schema() -> SchemaRef {
    let mut fields: Vec<Field> = FIELDS
        .iter()
        .map(|f| {
            let ty = match f.ty {
                FieldType::String { .. } | FieldType::Outcome | FieldType::Object => DataType::Utf8,
                FieldType::Timestamp => timestamp_type(),
                FieldType::Unsigned => DataType::UInt64,
                FieldType::NonNegativeNumber => DataType::Float64,
            };
            let nullable = !(f.required || matches!(f.ty, FieldType::Outcome));
            Field::new(f.name, ty, nullable)
        })
        .collect();
    fields.extend(ingest_fields());
    Arc::new(Schema::new(fields))
}

/// Schema of `dead-letters/`: what was refused, why, and the original bytes.
pub fn dead_letters_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_dead_letters_schema);
    SCHEMA.clone()
}

fn build_dead_letters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_truncated", DataType::Boolean, false),
        Field::new("payload_text", DataType::Utf8, true),
        Field::new("_source", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_position", DataType::UInt64, false),
        Field::new("_ingested_at", timestamp_type(), false),
    ]))
}

/// Schema of `findings/`: one row per finding (see the detect crate for meanings).
pub fn findings_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_findings_schema);
    SCHEMA.clone()
}

fn build_findings_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("finding_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("agent_id", DataType::Utf8, false),
        Field::new("ts", timestamp_type(), false),
        Field::new("window_start", timestamp_type(), false),
        Field::new("window_end", timestamp_type(), false),
        Field::new("score", DataType::Float64, false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("event_ids", DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))), false),
        Field::new("_source", DataType::Utf8, false),
        Field::new("_ingested_at", timestamp_type(), false),
    ]))
}

/// Schema of `control/`: every breaker transition (halts, warns, resumes; `mode` says whether it was
/// enforced, sent as a warning, or only recorded) with who made it and why, and beside it every webhook
/// delivery outcome (`record = 'delivery'`), so the record says "halt delivered to gateway X at T" or
/// "not delivered (reason)".
pub fn control_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_control_schema);
    SCHEMA.clone()
}

fn build_control_schema() -> SchemaRef {
    let list = || DataType::List(Arc::new(Field::new("item", DataType::Utf8, false)));
    Arc::new(Schema::new(vec![
        Field::new("record", DataType::Utf8, false),
        Field::new("transition_id", DataType::Utf8, false),
        Field::new("ts", timestamp_type(), false),
        Field::new("action", DataType::Utf8, true),
        Field::new("scope", DataType::Utf8, true),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("factor", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("agents", list(), true),
        Field::new("from_state", DataType::Utf8, true),
        Field::new("to_state", DataType::Utf8, true),
        Field::new("mode", DataType::Utf8, true),
        Field::new("actor", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("evidence", DataType::Utf8, true),
        Field::new("finding_ids", list(), true),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("delivery", DataType::Utf8, true),
        Field::new("attempts", DataType::UInt32, true),
        Field::new("http_status", DataType::UInt16, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("_source", DataType::Utf8, false),
        Field::new("_ingested_at", timestamp_type(), false),
    ]))
}
