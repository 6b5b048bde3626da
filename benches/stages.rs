//! Per-stage throughput: decode+validate, detect, Arrow build, Parquet write, over simulated events.
//! `cargo bench --bench stages`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vigil::simulate::{self, SimConfig};
use vigil_detect::{DetectConfig, Engine, Output};
use vigil_ingest::archive::{EventColumns, Origin, Table};

const EVENTS: usize = 20_000;

fn lines() -> Vec<String> {
    let cfg = SimConfig {
        agents: 500,
        duration_ms: 3_600_000,
        start_ms: 1_767_614_400_000,
        seed: 5,
        rate: 40.0,
        incidents: 7,
        bad_model: false,
    };
    let mut out = Vec::new();
    simulate::simulate(
        &cfg,
        |l| {
            if out.len() < EVENTS {
                out.push(l.to_owned());
            }
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    out
}

fn stages(c: &mut Criterion) {
    let lines = lines();
    let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    let events: Vec<_> =
        lines.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
    let origin = Origin { source: "bench", partition: 0, ingested_at: 0 };

    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("decode_validate", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap());
            }
        })
    });
    let mut detect = DetectConfig { policies: simulate::policies(), ..Default::default() };
    detect.sensitive_resources = simulate::SENSITIVE.iter().map(|s| s.to_string()).collect();
    g.bench_function("detect", |b| {
        b.iter_batched(
            || Engine::new(&detect).unwrap(),
            |mut engine| {
                let mut out = Output::default();
                engine.process(&events, &mut out);
                black_box(out.findings.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("arrow_build", |b| {
        b.iter(|| {
            let mut cols = EventColumns::default();
            for (i, e) in events.iter().enumerate() {
                cols.push(e, origin, i as u64);
            }
            black_box(cols.finish())
        })
    });
    let mut cols = EventColumns::default();
    for (i, e) in events.iter().enumerate() {
        cols.push(e, origin, i as u64);
    }
    let batch = cols.finish();
    let dir = tempfile::tempdir().unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    g.bench_function("parquet_write_zstd", |b| {
        b.iter(|| {
            vigil_ingest::archive::write_parquet_atomically(&dir.path().join("b.parquet"), &batch, &props)
                .unwrap()
        })
    });
    g.finish();

    // A file of a few rows (a replay of sparse history writes one per hour touched): Parquet's writer
    // against the archive's straight writer, the same bytes from each, in memory.
    let mut few = EventColumns::default();
    for (i, e) in events.iter().take(11).enumerate() {
        few.push(e, origin, i as u64);
    }
    let few = few.finish();
    let schema = few.schema();
    let mut plain = parquet::file::properties::WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
        .set_offset_index_disabled(true)
        .build();
    parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut plain);
    let descr = parquet::arrow::ArrowSchemaConverter::new().convert(&schema).unwrap();
    let small = vigil_ingest::archive::SmallFile::new(&schema, &descr, &plain).unwrap();
    let options = || {
        parquet::arrow::arrow_writer::ArrowWriterOptions::new()
            .with_properties(plain.clone())
            .with_skip_arrow_metadata(true)
    };
    let with_parquet = || {
        let mut w =
            parquet::arrow::ArrowWriter::try_new_with_options(Vec::new(), schema.clone(), options()).unwrap();
        w.write(&few).unwrap();
        w.into_inner().unwrap()
    };
    let straight = || {
        let mut out = Vec::new();
        small.write(&few, &mut out);
        out
    };
    assert!(with_parquet() == straight(), "the same file both ways");
    let mut g = c.benchmark_group("small_file");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parquet_writer", |b| b.iter(|| black_box(with_parquet())));
    g.bench_function("straight", |b| b.iter(|| black_box(straight())));
    g.finish();
    eprintln!("(input: {} events, {:.0} bytes/event)", lines.len(), bytes as f64 / lines.len() as f64);
}

criterion_group!(benches, stages);
criterion_main!(benches);
