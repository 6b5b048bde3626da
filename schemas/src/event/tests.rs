use super::*;

const GOOD: &str = r#"{"event_id":"e-1","ts":"2026-01-05T09:00:00.250Z","agent_id":"agent-7","action":"data.read","resource":"postgres://crm/customers"}"#;

/// Decodes `line` and renders the outcome in one line, so each case reads as input → expected text.
fn check(line: &str, expect: &str) {
    let got = match decode(line.as_bytes(), 4096) {
        Ok(ev) => format!(
            "ok {} {} {} {} {}",
            ev.event_id,
            ev.ts_ms,
            ev.agent_id,
            ev.outcome.as_str(),
            ev.attributes.as_deref().unwrap_or("-")
        ),
        Err(e) => format!("{}: {e}", e.code()),
    };
    assert_eq!(got, expect, "input: {line}");
}

fn with(field_json: &str) -> String {
    format!("{},{field_json}}}", &GOOD[..GOOD.len() - 1])
}

fn without(field: &str) -> String {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
    v.remove(field);
    serde_json::to_string(&v).unwrap()
}

#[test]
fn good_events_decode() {
    check(GOOD, "ok e-1 1767603600250 agent-7 success -");
    check(&with(r#""outcome":"denied""#), "ok e-1 1767603600250 agent-7 denied -");
    check(
        &GOOD.replace(r#""2026-01-05T09:00:00.250Z""#, "1767603600250"),
        "ok e-1 1767603600250 agent-7 success -",
    );
    check(&with(r#""scope":null,"bytes_read":3.0"#), "ok e-1 1767603600250 agent-7 success -");
}

#[test]
fn strings_borrow_from_the_line_unless_escaped() {
    let ev = decode(GOOD.as_bytes(), 4096).unwrap();
    assert!(matches!(ev.agent_id, Cow::Borrowed(_)));
    let line = GOOD.replace("agent-7", "agent\\u002d7");
    let ev = decode(line.as_bytes(), 4096).unwrap();
    assert_eq!(ev.agent_id, "agent-7");
    assert!(matches!(ev.agent_id, Cow::Owned(_)));
}

#[test]
fn unknown_fields_are_kept_in_attributes() {
    check(&with(r#""team":"blue""#), r#"ok e-1 1767603600250 agent-7 success {"team":"blue"}"#);
    check(
        &with(r#""attributes":{"a":1},"x":[1,2],"y":{"z":null}"#),
        r#"ok e-1 1767603600250 agent-7 success {"a":1,"x":[1,2],"y":{"z":null}}"#,
    );
    check(&with(r#""attributes":{ },"k\n":1"#), r#"ok e-1 1767603600250 agent-7 success {"k\n":1}"#);
    check(&with(r#""attributes":{"a" : 1 }"#), r#"ok e-1 1767603600250 agent-7 success {"a" : 1 }"#);
}

#[test]
fn every_problem_is_named() {
    check("{\"event_id\":", "not_json: not JSON: EOF while parsing a value at line 1 column 12");
    check("[1,2]", "not_object: not an event: expected a JSON object, got array");
    check("\"hi\"", "not_object: not an event: expected a JSON object, got string");
    check(&without("agent_id"), "missing_field: missing required field `agent_id`");
    check(&without("ts"), "missing_field: missing required field `ts`");
    check(&GOOD.replace(r#""agent-7""#, "null"), "missing_field: missing required field `agent_id`");
    check(&GOOD.replace(r#""agent-7""#, "7"), "wrong_type: field `agent_id`: expected string, got integer");
    check(&GOOD.replace(r#""e-1""#, "\"\""), "invalid_value: field `event_id`: must not be empty");
    check(
        &GOOD.replace(r#""e-1""#, &format!("\"{}\"", "x".repeat(129))),
        "invalid_value: field `event_id`: 129 characters, at most 128 allowed",
    );
    check(&with(r#""bytes_read":-5"#), "invalid_value: field `bytes_read`: -5 is negative; must be ≥ 0");
    check(
        &with(r#""bytes_read":"5""#),
        "wrong_type: field `bytes_read`: expected unsigned integer, got string",
    );
    check(&with(r#""records":1.5"#), "wrong_type: field `records`: expected unsigned integer, got number");
    check(
        &with(r#""outcome":"maybe""#),
        r#"invalid_value: field `outcome`: "maybe" is not one of success, failure, denied"#,
    );
    check(&with(r#""cost_usd":-0.5"#), "invalid_value: field `cost_usd`: -0.5 is negative; must be ≥ 0");
    check(&with(r#""attributes":[1]"#), "wrong_type: field `attributes`: expected object, got array");
    check(&with(r#""agent_id":"b""#), "duplicate_field: field `agent_id` appears more than once");
    check(
        &GOOD.replace(r#""2026-01-05T09:00:00.250Z""#, r#""yesterday""#),
        r#"bad_timestamp: field `ts`: not an RFC 3339 timestamp (expected YYYY-MM-DDTHH:MM:SS[.fff]Z or ±HH:MM offset) (got "yesterday")"#,
    );
    check(
        &GOOD.replace(r#""2026-01-05T09:00:00.250Z""#, "-1"),
        "bad_timestamp: field `ts`: epoch milliseconds -1 outside 0..=253402300799999 (got -1)",
    );
    check(
        &GOOD.replace(r#""2026-01-05T09:00:00.250Z""#, "1.7e12"),
        "wrong_type: field `ts`: expected RFC 3339 string or integer epoch milliseconds, got number",
    );
}

#[test]
fn framing_noise_is_tolerated_and_bad_bytes_are_not() {
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(GOOD.as_bytes());
    bom.extend_from_slice(b"\r");
    assert_eq!(decode(&bom, 4096).unwrap().event_id, "e-1");
    let mut bad = GOOD.as_bytes().to_vec();
    bad[20] = 0xff;
    assert_eq!(decode(&bad, 4096), Err(Invalid::NotUtf8 { valid_up_to: 20 }));
    assert_eq!(decode(GOOD.as_bytes(), 10), Err(Invalid::TooLarge { size: GOOD.len(), limit: 10 }));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // Deep nesting is skipped without recursion: no stack overflow, and the reason stays accurate.
    assert_eq!(decode(deep.as_bytes(), 1 << 20).unwrap_err(), Invalid::NotObject { got: "array" });
    let nested = with(&format!("\"attributes\":{{\"j\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)));
    assert_eq!(decode(nested.as_bytes(), 1 << 20).unwrap().attributes.unwrap().len(), 20_006);
}

#[test]
fn every_field_is_type_checked_as_the_table_says() {
    for spec in FIELDS {
        // A boolean is wrong for every field of the contract.
        let line = match spec.required {
            true => {
                GOOD.replacen(&format!("\"{}\":", spec.name), &format!("\"{}\":true,\"_\":", spec.name), 1)
            }
            false => with(&format!("\"{}\":true", spec.name)),
        };
        let err = decode(line.as_bytes(), 4096).unwrap_err();
        assert_eq!(err.field(), Some(spec.name), "{line}: {err}");
        assert_eq!(err.code(), "wrong_type", "{line}: {err}");
        if spec.required {
            let err = decode(without(spec.name).as_bytes(), 4096).unwrap_err();
            assert_eq!(err, Invalid::MissingField { field: spec.name });
        }
    }
}

#[test]
fn encoding_round_trips() {
    let line = with(
        r#""scope":"crm:read","outcome":"failure","bytes_read":10,"bytes_written":0,"records":3,"session_id":"s","agent_role":"sales","principal":"ann@example.com","credential_id":"k1","model":"m","model_provider":"p","input_tokens":5,"output_tokens":6,"cost_usd":0.25,"intent":"say \"hi\"\n\u0001","trace_id":"t","span_id":"sp","source":"svc","attributes":{"a":[1]},"extra":true"#,
    );
    let ev = decode(line.as_bytes(), 4096).unwrap();
    let again = ev.to_json();
    assert_eq!(decode(again.as_bytes(), 4096).unwrap(), ev);
    assert_eq!(ev.intent.as_deref(), Some("say \"hi\"\n\u{1}"));
}

/// Issue 13, item 15: a lone `\ud800` in `attributes` or an unknown field was archived as sent, and
/// every DuckDB JSON query over the archive then failed.
#[test]
fn a_lone_surrogate_escape_in_kept_json_is_refused() {
    let refused = "invalid_value: field `attributes`: holds a lone UTF-16 surrogate escape (like \\ud800 without \
                   its pair), which JSON readers refuse";
    check(&with(r#""attributes":{"note":"\ud800"}"#), refused);
    check(&with(r#""x-extra":"a\udc00b""#), refused);
    check(&with(r#""attributes":{"n":"\ud800\u0041"}"#), refused);
    // Pairs, other escapes, and an escaped backslash before a `u` are fine.
    for ok in [r#"{"n":"\ud83d\ude00"}"#, r#"{"n":"\\ud800"}"#, r#"{"n":"\u00e9\n\""}"#] {
        let line = with(&format!(r#""attributes":{ok}"#));
        assert!(decode(line.as_bytes(), 4096).is_ok(), "{line}");
    }
}

#[test]
fn the_fast_path_knows_every_field_of_the_table() {
    for (i, spec) in FIELDS.iter().enumerate() {
        assert_eq!(field_index(spec.name), Some(i), "{}", spec.name);
    }
    assert_eq!(field_index("Event_id"), None);
    assert_eq!(field_index(""), None);
}

/// Lines of every shape the decoder meets: ordinary events (the fast path's), and escapes, numbers of
/// every kind, nesting, whitespace, duplicates and breakage (mostly the serde path's).
fn shapes() -> Vec<String> {
    let mut lines = vec![
        GOOD.to_owned(),
        r#"{"event_id":"evt-77-0000000001","ts":"2026-01-05T08:00:00.107Z","agent_id":"ops-agent-0409","action":"api.call","resource":"mcp://pagerduty/acknowledge","scope":"alerts:write","bytes_read":26559,"records":52,"session_id":"sess-409-0","agent_role":"ops","credential_id":"key_9fc51beb1e9a","model":"gpt-5","model_provider":"openai","intent":"restart crashed pod","trace_id":"2e9a7554c20b071f3e4153209c324187","span_id":"fe12360425b7b7b1","source":"ops-agent"}"#.to_owned(),
        format!(" \t{GOOD}\n "),
        GOOD.replace(',', " , ").replace(':', " : "),
        GOOD.replace("agent-7", "agént-7 ✓"),
        "{}".to_owned(),
        " { } ".to_owned(),
        "[1,2]".to_owned(),
        String::new(),
        format!("{GOOD} x"),
        format!("{GOOD}{GOOD}"),
        GOOD.replace('}', ",}"),
        GOOD.replace("agent-7", "agent\\u002d7"),
        GOOD.replace("agent-7", "agent\t7"),
        GOOD.replace("\"event_id\"", "\"event\\u005fid\""),
    ];
    for field in [
        r#""bytes_read":0"#,
        r#""bytes_read":007"#,
        r#""bytes_read":18446744073709551615"#,
        r#""bytes_read":18446744073709551616"#,
        r#""bytes_read":99999999999999999999"#,
        r#""bytes_read":1e3"#,
        r#""bytes_read":-0"#,
        r#""bytes_read":-"#,
        r#""bytes_read":1.0"#,
        r#""bytes_read":1e400"#,
        r#""cost_usd":0.1"#,
        r#""cost_usd":0.30000000000000004"#,
        r#""cost_usd":1.7976931348623157e308"#,
        r#""cost_usd":12"#,
        r#""cost_usd":-1"#,
        r#""input_tokens":null,"output_tokens":3"#,
        r#""outcome":"denied""#,
        r#""outcome":true"#,
        r#""scope":nul"#,
        r#""scope":nullx"#,
        r#""scope":["a"]"#,
        r#""attributes":{"a":{"b":[1,2,{"c":"d\"e"}]},"f":-1.5e-3}"#,
        r#""attributes":{"a":]"#,
        r#""attributes":{"a":1]"#,
        r#""attributes":{"a":"\ud800"}"#,
        r#""attributes":{"a":"\x"}"#,
        r#""attributes":"text""#,
        r#""attributes":null"#,
        r#""attributes":{},"attributes":{}"#,
        r#""team":"blue","team":"red""#,
        r#""x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
        r#""x":tru"#,
        r#""x":{"k" "v"}"#,
        r#""agent_id":"b""#,
        "\"k\":\"a\u{1}b\"",
    ] {
        lines.push(with(field));
    }
    lines
}

/// A deterministic stream of mutations: bytes replaced, inserted or removed, from an alphabet of JSON's
/// own punctuation and a few bytes of trouble.
fn mutations(line: &str, seed: u64, n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"{}[]\":,\\ \t\n0123456789-+.eEnultrfa\x01\x7f";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    while out.len() < n {
        let mut b = line.as_bytes().to_vec();
        for _ in 0..1 + next() % 3 {
            let at = next() as usize % (b.len() + 1);
            let byte = ALPHABET[next() as usize % ALPHABET.len()];
            match next() % 3 {
                0 if at < b.len() => b[at] = byte,
                1 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.insert(at, byte),
            }
        }
        if let Ok(text) = String::from_utf8(b) {
            out.push(text);
        }
    }
    out
}

/// The fast path changes speed, never results: wherever it decides, serde decides the same, event or
/// reason alike; and it does decide the ordinary events.
#[test]
fn the_fast_path_decides_as_serde_does() {
    let (mut decided, mut straight, mut total) = (0, 0, 0);
    for (k, line) in shapes().iter().enumerate() {
        let mut texts = vec![line.clone()];
        texts.extend(mutations(line, k as u64 + 1, 300));
        for text in &texts {
            total += 1;
            let by_serde = decode_by_serde(text);
            assert_eq!(decode_str(text), by_serde, "{text}");
            if let Some(ev) = fast::event(text) {
                straight += 1;
                assert_eq!(Ok(ev), by_serde, "decoded straight: {text}");
            }
            let Some(slots) = fast::scan(text) else { continue };
            decided += 1;
            assert_eq!(validate(slots), by_serde, "{text}");
        }
    }
    for line in &shapes()[..5] {
        assert!(fast::scan(line).is_some(), "the fast path should take {line}");
        if decode_by_serde(line).is_ok() {
            assert!(fast::event(line).is_some(), "the fast path should decode {line} straight");
        }
    }
    // Fields in any order, some left out, unknown ones among them: still decoded straight.
    let reordered = r#"{"source":"s","agent_id":"a","team":"x","ts":1767600000000,"event_id":"e","resource":"r","action":"x.y","attributes":{"k":1}}"#;
    assert_eq!(fast::event(reordered).map(Ok), Some(decode_by_serde(reordered)));
    assert!(straight > total / 20, "decoded straight {straight} of {total}");
    // Most mutations break the JSON, which only serde may judge; a good share still reach validation.
    assert!(decided > total / 10, "the fast path decided {decided} of {total}");
}
