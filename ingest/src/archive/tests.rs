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
    let report = a.flush(serde_json::value::to_raw_value(&serde_json::json!({"k": 1})).unwrap(), 5).unwrap();
    assert_eq!(report.committed_position, 2);
    let hour = dir.path().join("events/dt=1970-01-01/hour=00");
    assert!(hour.join("src-0-1-2.parquet").exists());
    // A flush that never committed, a temporary file, and another source's files.
    for name in ["src-0-3-9.parquet", ".src-0-3-9.parquet.tmp", "other-0-3-9.parquet"] {
        std::fs::write(hour.join(name), b"partial").unwrap();
    }
    drop(a); // a restart: the process that had it open is gone
    let (a, cp) = Archive::open(&cfg, "src", 0).unwrap();
    let cp = cp.unwrap();
    assert_eq!((cp.committed_position, cp.totals.events, cp.state.get()), (2, 2, r#"{"k":1}"#));
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
    a.flush(no_state(), 5).unwrap();
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

/// Every file under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = archive_files(root)
        .unwrap()
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The compression of a Parquet file's first column chunk, and its row count.
fn compression_and_rows(path: &Path) -> (Compression, i64) {
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(&reader);
    (meta.row_group(0).column(0).compression(), meta.file_metadata().num_rows())
}

#[test]
fn a_replay_of_sparse_history_writes_a_file_per_day_with_batched_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        dir: dir.path().to_owned(),
        partition: Partitioning::Day,
        sync_files_each_up_to: 2,
        compress_min_rows: 3,
        zstd_min_rows: 3,
        ..ArchiveConfig::default()
    };
    let (mut a, _) = Archive::open(&cfg, "old", 0).unwrap();
    // Four days, each a few hours apart within the day: one event on three days, three on the last.
    let days = [0i64, 40, 400];
    let mut position = 0;
    for (d, hours) in days.iter().map(|d| (*d, vec![1i64])).chain([(401, vec![2, 9, 17])]) {
        for h in hours {
            position += 1;
            let ts = d * 86_400_000 + h * 3_600_000;
            let line = format!(
                r#"{{"event_id":"e{position}","ts":{ts},"agent_id":"a","action":"x","resource":"r"}}"#
            );
            a.push_event(&vigil_schemas::decode(line.as_bytes(), 1024).unwrap(), position);
        }
    }
    let report = a.flush(no_state(), 5).unwrap();
    assert_eq!((report.files.len(), report.rows, report.committed_position), (4, 6, 6));
    let expected = [
        "events/dt=1970-01-01/old-0-1-6.parquet",
        "events/dt=1970-02-10/old-0-1-6.parquet",
        "events/dt=1971-02-05/old-0-1-6.parquet",
        "events/dt=1971-02-06/old-0-1-6.parquet",
    ];
    // No hour directories, no temporary files left behind by the batched path.
    assert_eq!(files_under(dir.path()), expected);
    // The lone events are stored uncompressed; the day with three rows is compressed.
    let (c, rows) = compression_and_rows(&dir.path().join(expected[0]));
    assert_eq!((c, rows), (Compression::UNCOMPRESSED, 1));
    let (c, rows) = compression_and_rows(&dir.path().join(expected[3]));
    assert!(matches!(c, Compression::ZSTD(_)), "{c:?}");
    assert_eq!(rows, 3);
    // A restart reads it back as committed: nothing is removed.
    drop(a); // a restart: the process that had it open is gone
    let (_, cp) = Archive::open(&cfg, "old", 0).unwrap();
    assert_eq!(cp.unwrap().committed_position, 6);
    assert_eq!(files_under(dir.path()).len(), 4);
}

/// Buffers event `e<position>` at `position`, in event hour `hour` (of 1970-01-01 onwards).
fn push(a: &mut Archive, position: u64, hour: i64) {
    let line = format!(
        r#"{{"event_id":"e{position}","ts":{},"agent_id":"a","action":"x","resource":"r"}}"#,
        hour * 3_600_000 + position as i64
    );
    a.push_event(&vigil_schemas::decode(line.as_bytes(), 1024).unwrap(), position);
}

/// A replay spread thin flushes on the files it would write, not only on rows: rows for `flush_files`
/// directories make a flush due, however few they are, and every table counts.
#[test]
fn rows_for_flush_files_directories_make_a_flush_due() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), flush_files: 3, ..ArchiveConfig::default() };
    let (mut a, _) = Archive::open(&cfg, "thin", 0).unwrap();
    // Many rows in one hour are one file: not due (flush_rows is 250,000).
    for p in 1..=50 {
        push(&mut a, p, 0);
    }
    assert_eq!((a.pending_files(), a.should_flush()), (1, false));
    push(&mut a, 51, 5);
    assert_eq!((a.pending_files(), a.should_flush()), (2, false));
    // A dead letter is a file of its own table.
    let bad = vigil_schemas::Invalid::NotJson { detail: "x".into() };
    a.push_dead_letter(&DeadLetter::new(bad, 52, 8, b"not json", 64));
    assert_eq!((a.pending_files(), a.should_flush()), (3, true));
    let report = a.flush(no_state(), 5).unwrap();
    assert_eq!((report.files.len(), report.rows), (3, 52));
    assert_eq!((a.pending_files(), a.should_flush()), (0, false));
    // Zero is refused with its name.
    let err = ArchiveConfig { flush_files: 0, ..ArchiveConfig::default() }.validate().unwrap_err();
    assert_eq!(err.to_string(), "archive.flush_files must be at least 1");
}

/// Rows handed over in parts are encoded into a temporary file that the flush finishes (with the rows
/// that came after the part) and names; they count toward the flush rules meanwhile. A writer dropped
/// before the flush removes its temporary file, and one that died leaves it to recovery.
#[test]
fn parts_go_into_a_temporary_file_that_their_flush_finishes_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        dir: dir.path().to_owned(),
        part_rows: 3,
        flush_files: 10,
        ..ArchiveConfig::default()
    };
    let (mut a, _) = Archive::open(&cfg, "thin", 0).unwrap();
    for p in 1..=5 {
        push(&mut a, p, 0);
    }
    push(&mut a, 6, 1);
    let parts = a.take_parts();
    // Hour 0 has reached three rows; hour 1 has not.
    assert_eq!(parts.iter().map(|p| (p.index, p.batch.num_rows())).collect::<Vec<_>>(), [(0, 5)]);
    assert!(a.take_parts().is_empty(), "a part is taken once");
    assert_eq!((a.pending_rows(), a.pending_files()), (6, 2));
    let mut writer = a.writer();
    for part in parts {
        writer.part(part, false).unwrap();
    }
    let hour0 = "events/dt=1970-01-01/hour=00";
    assert_eq!(files_under(dir.path()), [format!("{hour0}/.thin-0-1-1.parquet.tmp")]);
    for p in 7..=8 {
        push(&mut a, p, 0);
    }
    let report = writer.write(a.take_flush(no_state(), 9).unwrap()).unwrap();
    assert_eq!((report.files.len(), report.rows, report.committed_position), (2, 8, 8));
    let files = files_under(dir.path());
    assert_eq!(
        files,
        [format!("{hour0}/thin-0-1-8.parquet"), "events/dt=1970-01-01/hour=01/thin-0-1-8.parquet".into()]
    );
    let (c, rows) = compression_and_rows(&dir.path().join(&files[0]));
    assert_eq!((c, rows), (Compression::UNCOMPRESSED, 7), "packed by the rows of its first part");
    assert_eq!(a.pending_rows(), 0);

    // A part whose flush never comes: the writer removes its file when dropped...
    for p in 9..=11 {
        push(&mut a, p, 0);
    }
    let mut writer = a.writer();
    writer.part(a.take_parts().pop().unwrap(), false).unwrap();
    assert_eq!(files_under(dir.path()).len(), 3);
    drop(writer);
    assert_eq!(files_under(dir.path()), files);
    // ...and a writer that died (its process killed) leaves it to the next open's recovery.
    for p in 12..=14 {
        push(&mut a, p, 0);
    }
    let mut writer = a.writer();
    writer.part(a.take_parts().pop().unwrap(), false).unwrap();
    std::mem::forget(writer);
    assert_eq!(files_under(dir.path()).len(), 3);
    drop(a);
    let (_, cp) = Archive::open(&cfg, "thin", 0).unwrap();
    assert_eq!(cp.unwrap().committed_position, 8);
    assert_eq!(files_under(dir.path()), files);
}

/// A flush reports the bytes of the files it wrote as they are on disk (counted while writing, not asked
/// of the file system), on each path: files synced one by one, a batched flush, and files opened by parts.
#[test]
fn the_bytes_a_flush_reports_are_its_files_on_disk() {
    let on_disk =
        |report: &FlushReport| report.files.iter().map(|f| fs::metadata(f).unwrap().len()).sum::<u64>();
    for (part_rows, sync_each_up_to) in [(40, 100), (40, 1), (0, 100), (0, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            dir: dir.path().to_owned(),
            part_rows,
            sync_files_each_up_to: sync_each_up_to,
            ..ArchiveConfig::default()
        };
        let (mut a, _) = Archive::open(&cfg, "sized", 0).unwrap();
        let mut writer = a.writer();
        // Hour 0: 50 rows, hour 1: 30 (both stored plain), hour 2: 1,500 (zstd); with parts on, hours 0
        // and 2 are opened by parts and finished by the flush.
        let hours = [(0, 50), (1, 30), (2, 1_500)];
        let mut p = 0;
        for (hour, rows) in hours {
            for _ in 0..rows {
                p += 1;
                push(&mut a, p, hour);
                for part in a.take_parts() {
                    writer.part(part, false).unwrap();
                }
            }
        }
        let report = writer.write(a.take_flush(no_state(), 9).unwrap()).unwrap();
        let case = format!("part_rows {part_rows}, synced each up to {sync_each_up_to}");
        assert_eq!(report.files.len(), 3, "{case}");
        assert!(report.bytes > 0);
        assert_eq!(report.bytes, on_disk(&report), "{case}");
        // And the one-file path of Archive::flush.
        push(&mut a, p + 1, 7);
        let report = a.flush(no_state(), 10).unwrap();
        assert_eq!((report.files.len(), report.bytes), (1, on_disk(&report)), "{case}");
    }
}

/// A flush of many files (the batched path: written on several threads, synced once) that fails to write
/// one of them fails as a whole: nothing is renamed and the checkpoint does not move.
#[test]
fn a_batched_flush_that_cannot_write_one_file_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        ArchiveConfig { dir: dir.path().to_owned(), sync_files_each_up_to: 2, ..ArchiveConfig::default() };
    let (mut a, _) = Archive::open(&cfg, "src", 0).unwrap();
    for (p, hour) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
        push(&mut a, p, hour);
    }
    // A directory where the third hour's temporary file goes: creating the file fails.
    let blocked = dir.path().join("events/dt=1970-01-01/hour=02/.src-0-1-4.parquet.tmp");
    std::fs::create_dir_all(&blocked).unwrap();
    let err = a.flush(no_state(), 5).unwrap_err();
    assert!(err.to_string().contains("hour=02"), "{err}");
    assert!(read_checkpoint(dir.path(), "src", 0).unwrap().is_none_or(|c| c.committed_position == 0));
    let finals: Vec<_> = files_under(dir.path()).into_iter().filter(|f| !f.contains("/.")).collect();
    assert!(finals.is_empty(), "{finals:?}");
}

/// Issue 13, item 12: the temporary-file prefix of source `a` (`.a-0-`) matched source `a-0`'s
/// temporary files, so opening `a` deleted a flush `a-0` was writing.
#[test]
fn opening_source_a_leaves_the_temporary_files_of_source_a_0_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), ..ArchiveConfig::default() };
    let hour = dir.path().join("events/dt=1970-01-01/hour=00");
    std::fs::create_dir_all(&hour).unwrap();
    for name in [".a-0-0-1-2.parquet.tmp", ".a-0-1-2.parquet.tmp"] {
        std::fs::write(hour.join(name), b"partial").unwrap();
    }
    Archive::open(&cfg, "a", 0).unwrap();
    // Its own temporary file goes; the other source's stays.
    assert!(hour.join(".a-0-0-1-2.parquet.tmp").exists());
    assert!(!hour.join(".a-0-1-2.parquet.tmp").exists());
}

/// Issue 13, item 4: two processes on one archive both answered and lost acknowledged events. A source
/// partition is open in one place at a time; the second is refused and told who holds it.
#[test]
fn a_second_writer_of_one_source_is_refused_and_told_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), ..ArchiveConfig::default() };
    let (first, _) = Archive::open(&cfg, "http", 0).unwrap();
    let Err(err) = Archive::open(&cfg, "http", 0) else { panic!("refused while the first is open") };
    let said = err.to_string();
    assert!(said.contains("in use") && said.contains(&format!("process {}", std::process::id())), "{said}");
    // Another source or partition of the same archive is its own.
    Archive::open(&cfg, "http", 1).unwrap();
    Archive::open(&cfg, "other", 0).unwrap();
    drop(first);
    Archive::open(&cfg, "http", 0).expect("free again once the first is closed");
}

/// A flush holds a table per event-time hour it touches: a replay of sparse history makes thousands of
/// tables of a few rows, which must cost about what their rows do (Arrow's default capacity of 1,024
/// rows per column made each about 200 KiB, and a two-year replay's flush 2.8 GB).
#[test]
fn a_table_of_a_few_rows_is_small() {
    let line = br#"{"event_id":"e","ts":0,"agent_id":"a","action":"x","resource":"r","bytes_read":5}"#;
    let ev = vigil_schemas::decode(line, 1024).unwrap();
    let origin = Origin { source: "src", partition: 0, ingested_at: 0 };
    let mut t = EventColumns::default();
    for position in 1..=3 {
        t.push(&ev, origin, position);
    }
    let batch = t.finish();
    assert_eq!(batch.num_rows(), 3);
    let bytes = batch.get_array_memory_size();
    assert!(bytes < 16 * 1024, "three rows take {bytes} bytes");
    // And many rows still fit: the builders grow.
    for position in 1..=5_000 {
        t.push(&ev, origin, position);
    }
    assert_eq!(t.finish().num_rows(), 5_000);
}

/// A flush of many files is written on `write_threads` threads: the same files, rows and report (in the
/// same order) whatever the count; zero threads is refused.
#[test]
fn a_flush_of_many_files_is_the_same_on_one_thread_or_three() {
    let flush = |threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            dir: dir.path().to_owned(),
            sync_files_each_up_to: 2,
            write_threads: threads,
            ..ArchiveConfig::default()
        };
        cfg.validate().unwrap();
        let (mut a, _) = Archive::open(&cfg, "s", 0).unwrap();
        // Seven hours, hour h holding h + 1 events.
        let mut position = 0;
        for h in 0..7i64 {
            for _ in 0..=h {
                position += 1;
                let ts = h * 3_600_000 + position;
                let line = format!(
                    r#"{{"event_id":"e{position}","ts":{ts},"agent_id":"a","action":"x","resource":"r"}}"#
                );
                a.push_event(&vigil_schemas::decode(line.as_bytes(), 1024).unwrap(), position as u64);
            }
        }
        let report = a.flush(no_state(), 5).unwrap();
        let files: Vec<(String, i64)> = report
            .files
            .iter()
            .map(|f| {
                let rel = f.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned();
                (rel, compression_and_rows(f).1)
            })
            .collect();
        assert_eq!(files_under(dir.path()).len(), 7, "no temporary file left");
        (files, report.rows, report.committed_position)
    };
    let one = flush(1);
    assert_eq!(one.0.len(), 7);
    assert_eq!(one.0[6], ("events/dt=1970-01-01/hour=06/s-0-1-28.parquet".to_owned(), 7));
    assert_eq!((one.1, one.2), (28, 28));
    assert_eq!(flush(3), one);
    let zero = ArchiveConfig { write_threads: 0, ..ArchiveConfig::default() };
    assert_eq!(zero.validate(), Err(ArchiveConfigError::WriteThreads));
}

#[test]
fn a_prepared_table_writes_what_arrow_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        dir: dir.path().to_owned(),
        compress_min_rows: 3,
        zstd_min_rows: 7,
        ..ArchiveConfig::default()
    };
    let (mut a, _) = Archive::open(&cfg, "src", 0).unwrap();
    let line = br#"{"event_id":"e","ts":0,"agent_id":"a","action":"x","resource":"r","model":"m"}"#;
    let ev = vigil_schemas::decode(line, 1024).unwrap();
    let writer = a.writer();
    // Two rows (written plain), five (Snappy) and nine (zstd): each with the writer's prepared options
    // and with ArrowWriter working out the schema and its metadata itself, from the same properties.
    let packed = [(2, Packing::Plain), (5, Packing::Snappy), (9, Packing::Zstd)];
    for (rows, packing) in packed {
        for p in 1..=rows {
            a.push_event(&ev, p);
        }
        let job = a.take_flush(no_state(), 5).unwrap();
        let (table, _, batch) = &job.batches[0];
        assert_eq!(*table, "events");
        // The batch is one the prepared options are used for, not the fallback.
        assert!(
            writer
                .layout
                .tables
                .iter()
                .any(|p| p.table == "events" && p.schema == batch.schema() && p.descr.is_some())
        );
        let props = &writer.layout.props[packing as usize];
        let prepared = writer.layout.options_for(table, batch);
        let (x, y) = (dir.path().join("x.parquet"), dir.path().join("y.parquet"));
        write_parquet(&x, &x, batch, prepared, false, 1).unwrap();
        write_parquet(&y, &y, batch, ArrowWriterOptions::new().with_properties(props.clone()), false, 1)
            .unwrap();
        // Every column, the random identifiers (their own zstd level) among them, packed alike.
        let reader = parquet::file::reader::SerializedFileReader::new(File::open(&x).unwrap()).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        for column in meta.row_group(0).columns() {
            let c = column.compression();
            let want = match packing {
                Packing::Plain => matches!(c, Compression::UNCOMPRESSED),
                Packing::Snappy => matches!(c, Compression::SNAPPY),
                Packing::Zstd => matches!(c, Compression::ZSTD(_)),
            };
            assert!(want, "{rows} rows, {}: {c:?}", column.column_path());
        }
        // What the flush writes: a file packed plain straight, the others by Parquet's writer.
        let z = dir.path().join("z.parquet");
        writer.layout.write_file(&z, &z, table, batch, false, 1).unwrap();
        let (x, y, z) = (std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap(), std::fs::read(&z).unwrap());
        assert!(x.windows(12).any(|w| w == b"ARROW:schema"), "the Arrow schema is in the metadata");
        assert_eq!(x, y, "{rows} rows");
        assert_eq!(z, y, "{rows} rows, as the flush writes them");
    }
    // Events and dead letters are written straight when packed plain; findings and control records
    // (lists of ids) by Parquet's writer.
    let straight: Vec<_> = writer.layout.tables.iter().map(|p| (p.table, p.small.is_some())).collect();
    assert_eq!(
        straight,
        [
            (EventColumns::DIR, true),
            (FindingColumns::DIR, false),
            (ControlColumns::DIR, false),
            (DeadLetterColumns::DIR, true)
        ]
    );
}

#[test]
fn a_state_written_into_the_checkpoint_as_it_is_made_gives_the_same_file() {
    #[derive(Debug)]
    struct Streamed(&'static str);
    impl StateJson for Streamed {
        fn write_json(&self, out: &mut dyn io::Write) -> io::Result<()> {
            out.write_all(self.0.as_bytes())
        }
    }
    let state = r#"{"agents":{"a":{"w":[1,2]}},"note":"\"state\":null"}"#;
    // A source whose name holds the state field's key: inside a string it is escaped, never matched.
    for source in ["src", r#"x","state":null,"y"#] {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            version: 1,
            source: source.to_owned(),
            partition: 3,
            committed_position: 42,
            committed_at: 7,
            totals: Totals::default(),
            state: no_state(),
            input_fingerprint: Some("f".into()),
        };
        std::fs::create_dir_all(checkpoint_path(dir.path(), source, 3).parent().unwrap()).unwrap();
        let whole = Checkpoint {
            state: serde_json::value::RawValue::from_string(state.into()).unwrap(),
            ..cp.clone()
        };
        write_checkpoint(dir.path(), &whole).unwrap();
        let path = checkpoint_path(dir.path(), source, 3);
        let want = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        write_checkpoint_with(dir.path(), &cp, &Streamed(state)).unwrap();
        assert_eq!(
            String::from_utf8(std::fs::read(&path).unwrap()).unwrap(),
            String::from_utf8(want).unwrap()
        );
        let back: Checkpoint = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((back.source.as_str(), back.state.get()), (source, state));
    }
}

/// Each row's `_position`, in the file's order.
fn positions(path: &Path) -> Vec<u64> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("_position").unwrap();
        let column = column.as_any().downcast_ref::<arrow_array::UInt64Array>().unwrap();
        out.extend(column.values().iter().copied());
    }
    out
}

/// Rows of hours that come interleaved (a stream at an hour's turn, late events) are each hour's rows
/// in the order they came, whether they reach the writer in parts taken between batches or at the
/// flush: one set of builders holds them all, with the hour of each run.
#[test]
fn interleaved_hours_keep_each_hours_rows_in_the_order_they_came() {
    // Hour of each position: runs of one, of a few, and a long one.
    let hours: Vec<i64> = (1..=60u64)
        .map(|p| {
            if p % 7 == 0 || (20..26).contains(&p) {
                1
            } else if p % 3 == 0 {
                2
            } else {
                0
            }
        })
        .collect();
    // 20: hour 0 goes in parts, the thinner hours span the batches its parts finished (joined at the flush).
    for part_rows in [0, 4, 9, 20] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig { dir: dir.path().to_owned(), part_rows, ..ArchiveConfig::default() };
        let (mut a, _) = Archive::open(&cfg, "mix", 0).unwrap();
        let mut writer = a.writer();
        for (i, &hour) in hours.iter().enumerate() {
            push(&mut a, i as u64 + 1, hour);
            // Parts taken every five rows, as a lane takes them between batches.
            if i % 5 == 4 {
                for part in a.take_parts() {
                    writer.part(part, false).unwrap();
                }
            }
        }
        let report = writer.write(a.take_flush(no_state(), 9).unwrap()).unwrap();
        assert_eq!((report.files.len(), report.rows), (3, 60), "part_rows {part_rows}");
        for hour in 0..3 {
            let want: Vec<u64> = (1..=60).filter(|&p| hours[p as usize - 1] == hour).collect();
            let path = dir.path().join(format!("events/dt=1970-01-01/hour={hour:02}/mix-0-1-60.parquet"));
            assert_eq!(positions(&path), want, "hour {hour}, part_rows {part_rows}");
        }
    }
}

/// Whether each column of a Parquet file's first row group has min/max statistics, by name.
fn columns_with_min_max(path: &Path) -> Vec<(String, bool)> {
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(&reader);
    let group = meta.row_group(0);
    group
        .columns()
        .iter()
        .map(|c| {
            let min_max =
                c.statistics().is_some_and(|s| s.min_bytes_opt().is_some() && s.max_bytes_opt().is_some());
            (c.column_path().string(), min_max)
        })
        .collect()
}

#[test]
fn only_the_text_columns_named_have_min_max_statistics_in_a_compressed_file() {
    for (named, snappy) in [(None, false), (Some(vec!["resource".to_owned()]), false), (None, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ArchiveConfig {
            dir: dir.path().to_owned(),
            compress_min_rows: 2,
            zstd_min_rows: if snappy { 100 } else { 2 },
            ..ArchiveConfig::default()
        };
        if let Some(named) = &named {
            cfg.text_statistics = named.clone();
        }
        let (mut a, _) = Archive::open(&cfg, "st", 0).unwrap();
        for p in 1..=5 {
            push(&mut a, p, 0);
        }
        let report = a.flush(no_state(), 5).unwrap();
        assert_eq!(report.files.len(), 1);
        let file = dir.path().join("events/dt=1970-01-01/hour=00/st-0-1-5.parquet");
        let (c, _) = compression_and_rows(&file);
        assert!(if snappy { c == Compression::SNAPPY } else { matches!(c, Compression::ZSTD(_)) }, "{c:?}");
        let stats = columns_with_min_max(&file);
        let has = |name: &str| stats.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1;
        // Numbers and times always; of the text columns, those named.
        assert!(has("ts") && has("_position") && has("_ingested_at"), "{stats:?}");
        let text = ["event_id", "agent_id", "action", "resource", "_source"];
        let want: Vec<bool> = text.iter().map(|c| cfg.text_statistics.iter().any(|n| n == c)).collect();
        assert_eq!(text.map(has).to_vec(), want, "{stats:?}");
    }
}

#[test]
fn a_file_written_plain_keeps_every_columns_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig { dir: dir.path().to_owned(), ..ArchiveConfig::default() };
    let (mut a, _) = Archive::open(&cfg, "pl", 0).unwrap();
    for p in 1..=3 {
        push(&mut a, p, 0);
    }
    a.flush(no_state(), 3).unwrap();
    let file = dir.path().join("events/dt=1970-01-01/hour=00/pl-0-1-3.parquet");
    assert_eq!(compression_and_rows(&file), (Compression::UNCOMPRESSED, 3));
    let stats = columns_with_min_max(&file);
    for name in ["event_id", "agent_id", "action", "resource", "ts"] {
        assert!(stats.iter().any(|(n, m)| n == name && *m), "{name}: {stats:?}");
    }
}

/// Parts written hurried (their columns on `write_threads` threads, while the lane waits) make the same
/// file, byte for byte, as parts written on the writer's thread alone.
#[test]
fn hurried_parts_write_the_same_file() {
    let mut files = Vec::new();
    for hurried in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // Parts of 5,000 rows: over the rows from which a batch's columns are spread over threads.
        let cfg = ArchiveConfig { dir: dir.path().to_owned(), part_rows: 5_000, ..ArchiveConfig::default() };
        let (mut a, _) = Archive::open(&cfg, "same", 0).unwrap();
        let mut writer = a.writer();
        let mut parts = 0;
        for p in 1..=12_000 {
            push(&mut a, p, 0);
            if p % 1_000 == 0 {
                for part in a.take_parts() {
                    writer.part(part, hurried).unwrap();
                    parts += 1;
                }
            }
        }
        writer.write(a.take_flush(no_state(), 9).unwrap()).unwrap();
        assert_eq!(parts, 2, "hurried {hurried}");
        let names = files_under(dir.path());
        let bytes: Vec<Vec<u8>> = names.iter().map(|n| fs::read(dir.path().join(n)).unwrap()).collect();
        files.push((names, bytes));
    }
    assert_eq!(files[0].0, files[1].0);
    assert!(files[0].1 == files[1].1, "the same bytes");
}
