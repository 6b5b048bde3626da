//! vigil's event contract: the agent-action event (version 1), its decoder and validator, the JSON Schema
//! it is published as, the finding and decision rows, and the Arrow schemas of the archive.
//!
//! This crate depends on neither tokio nor rdkafka: anything that moves bytes can use it.
//!
//! ```
//! let line = br#"{"event_id":"e1","ts":1767603600000,"agent_id":"a","action":"tool.call","resource":"mcp://github/create_issue"}"#;
//! let event = vigil_schemas::decode(line, vigil_schemas::DEFAULT_MAX_EVENT_BYTES).unwrap();
//! assert_eq!(event.resource, "mcp://github/create_issue");
//! ```

pub mod arrow;
pub mod event;
pub mod rows;
pub mod swar;
pub mod timestamp;

pub use event::{
    CONTRACT_VERSION, DEFAULT_MAX_EVENT_BYTES, Event, FIELDS, FieldSpec, FieldType, Invalid, Outcome, decode,
    decode_str,
};

/// The JSON Schema (draft 2020-12) of contract version 1, as published in
/// `schemas/agent-action.v1.schema.json`.
pub const JSON_SCHEMA_V1: &str = include_str!("../agent-action.v1.schema.json");

#[cfg(test)]
mod schema_file_tests {
    use super::*;
    use serde_json::Value;

    /// The published JSON Schema and the decoder's field table must say the same thing.
    #[test]
    fn json_schema_matches_the_field_table() {
        let schema: Value = serde_json::from_str(JSON_SCHEMA_V1).unwrap();
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let props = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut table: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        table.sort_unstable();
        assert_eq!(names, table, "the same fields");
        let required: Vec<&str> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let table_required: Vec<&str> = FIELDS.iter().filter(|f| f.required).map(|f| f.name).collect();
        assert_eq!(required, table_required);
        for f in FIELDS {
            let p = &props[f.name];
            match f.ty {
                FieldType::String { min, max } => {
                    assert_eq!(p["type"], "string", "{}", f.name);
                    assert_eq!(p["maxLength"], max, "{}", f.name);
                    assert_eq!(
                        p.get("minLength").and_then(Value::as_u64).unwrap_or(0),
                        min as u64,
                        "{}",
                        f.name
                    );
                }
                FieldType::Timestamp => {
                    assert_eq!(p["oneOf"][0]["format"], "date-time");
                    assert_eq!(p["oneOf"][1]["maximum"], timestamp::MAX_EPOCH_MS);
                }
                FieldType::Outcome => {
                    assert_eq!(p["enum"], serde_json::json!(["success", "failure", "denied"]))
                }
                FieldType::Unsigned => {
                    assert_eq!(
                        (p["type"].as_str(), p["minimum"].as_u64()),
                        (Some("integer"), Some(0)),
                        "{}",
                        f.name
                    )
                }
                FieldType::NonNegativeNumber => {
                    assert_eq!(
                        (p["type"].as_str(), p["minimum"].as_u64()),
                        (Some("number"), Some(0)),
                        "{}",
                        f.name
                    )
                }
                FieldType::Object => assert_eq!(p["type"], "object", "{}", f.name),
            }
        }
    }

    #[test]
    fn archive_schema_has_every_contract_field() {
        let schema = arrow::events_schema();
        for f in FIELDS {
            assert!(schema.field_with_name(f.name).is_ok(), "{}", f.name);
        }
        assert_eq!(schema.fields().len(), FIELDS.len() + arrow::INGEST_COLUMNS.len());
    }
}
