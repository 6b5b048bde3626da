use super::*;

#[test]
fn file_names_parse_back_even_when_the_source_has_dashes() {
    assert_eq!(parse_file_name("fleet-0-1-250000.parquet"), Some(("fleet", 0, 1, 250_000)));
    assert_eq!(parse_file_name("agent-events-eu-3-10-20.parquet"), Some(("agent-events-eu", 3, 10, 20)));
    assert_eq!(parse_file_name(".fleet-0-1-2.parquet.tmp"), None);
    assert_eq!(parse_file_name("notes.txt"), None);
}

#[test]
fn recovery_removes_uncommitted_and_temporary_files_of_its_own_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), ..ArchiveConfig::default() };
    let (mut a, cp) = Archive::open(&cfg, "src", 0).unwrap();
    assert!(cp.is_none());
    let line = br#"{"event_id":"e","ts":0,"agent_id":"a","action":"x","resource":"r"}"#;
    let ev = vigil_schemas::decode(line, 1024).unwrap();
    a.push_event(&ev, 1);
    a.push_event(&ev, 2);
    let report = a.flush(serde_json::json!({"k": 1}), 5).unwrap();
    assert_eq!(report.committed_position, 2);
    let hour = dir.path().join("events/dt=1970-01-01/hour=00");
    assert!(hour.join("src-0-1-2.parquet").exists());
    // A flush that never committed, a temporary file, and another source's files.
    for name in ["src-0-3-9.parquet", ".src-0-3-9.parquet.tmp", "other-0-3-9.parquet"] {
        std::fs::write(hour.join(name), b"partial").unwrap();
    }
    let (a, cp) = Archive::open(&cfg, "src", 0).unwrap();
    let cp = cp.unwrap();
    assert_eq!((cp.committed_position, cp.totals.events, &cp.state), (2, 2, &serde_json::json!({"k": 1})));
    assert_eq!(a.committed_position(), 2);
    let mut left: Vec<String> = std::fs::read_dir(&hour)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["other-0-3-9.parquet", "src-0-1-2.parquet"]);
}

#[test]
fn a_file_name_covers_positions_pushed_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), ..ArchiveConfig::default() };
    let (mut a, _) = Archive::open(&cfg, "src", 0).unwrap();
    let line = br#"{"event_id":"e","ts":0,"agent_id":"a","action":"x","resource":"r"}"#;
    let ev = vigil_schemas::decode(line, 1024).unwrap();
    // As the pipelines do: a bad line is dead-lettered while its batch is read, the events come after.
    a.push_dead_letter(&DeadLetter {
        reason: vigil_schemas::Invalid::NotJson { detail: "x".into() },
        position: 3,
        size: 1,
        payload: b"x".to_vec(),
        truncated: false,
    });
    a.push_event(&ev, 1);
    a.push_event(&ev, 2);
    a.flush(serde_json::Value::Null, 5).unwrap();
    assert!(dir.path().join("events/dt=1970-01-01/hour=00/src-0-1-3.parquet").exists());
}

#[test]
fn dead_letters_keep_a_prefix_of_oversize_lines_only() {
    let bad = || vigil_schemas::Invalid::NotJson { detail: "x".into() };
    let big = || vigil_schemas::Invalid::TooLarge { size: 5, limit: 4 };
    let whole = DeadLetter::new(bad(), 1, 5, b"hello", 3);
    assert_eq!((whole.payload.as_slice(), whole.truncated), (&b"hello"[..], false));
    let cut = DeadLetter::new(big(), 2, 5, b"hello", 3);
    assert_eq!((cut.payload.as_slice(), cut.size, cut.truncated), (&b"hel"[..], 5, true));
    // A source that already holds only a prefix of an oversize line (the line reader) says how big it was.
    let held = DeadLetter::new(big(), 3, 2_000_000, b"hello", 64);
    assert_eq!((held.payload.len(), held.truncated), (5, true));
}
