//! Files of a few rows, written without Parquet's column writers.
//!
//! A replay of sparse history writes one file per hour touched, most of a few rows, and such a file costs
//! Parquet's writer tens of microseconds of CPU for the events table's 28 columns whatever it holds: a
//! column writer, an encoder, metrics and a page builder made and torn down per column, and the footer
//! built through its metadata types. That fixed cost, not the rows, was what such a replay spent its
//! time on; written straight, a tenth of it is left (`cargo bench --bench stages -- small_file`, figures
//! in docs/PERFORMANCE.md).
//! [`SmallFile`] writes the same file straight from the Arrow arrays: per column one v1 data page of
//! PLAIN values (RLE definition levels for a nullable one), uncompressed, the chunk statistics Parquet's
//! writer would make (the same minimum, maximum, null and NaN counts, truncation of long values, size
//! statistics), and a footer whose unchanging parts (the schema, the key-value metadata holding the
//! Arrow schema, `created_by`, the column orders) are encoded once per table. It is what the archive
//! writes for files packed plain (`compress_min_rows`); anything it does not cover (nested columns,
//! compression, dictionaries, page statistics, other logical types) is left to Parquet's writer.
//! `a_small_file_is_what_arrow_writer_writes` holds it to Parquet's writer: the same file, byte for byte,
//! for every type, nulls, NaNs and long strings (an upgrade of the parquet crate that changes what its
//! writer writes fails there, not in an analyst's query).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, Schema};
use parquet::basic::{
    Compression, ConvertedType, LogicalType, Repetition, SortOrder, TimeUnit, Type as PhysicalType,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::{SchemaDescriptor, Type};

/// Thrift compact protocol type codes.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const STRUCT: u8 = 12;

/// Parquet's codes for what the pages hold.
const DATA_PAGE: i32 = 0;
const PLAIN: i32 = 0;
const RLE: i32 = 3;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn list_header(out: &mut Vec<u8>, element: u8, len: usize) {
    if len < 15 {
        out.push((len as u8) << 4 | element);
    } else {
        out.push(0xF0 | element);
        varint(out, len as u64);
    }
}

/// The fields of one Thrift struct being written, in increasing id order (ids are written as deltas
/// from the previous field's).
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    last: i16,
}

impl<'a> Fields<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Fields { out, last: 0 }
    }

    /// Continues a struct whose fields up to `last` were written elsewhere (a prepared prefix).
    fn after(out: &'a mut Vec<u8>, last: i16) -> Self {
        Fields { out, last }
    }

    fn begin(&mut self, id: i16, ty: u8) {
        let delta = id - self.last;
        if (1..=15).contains(&delta) {
            self.out.push((delta as u8) << 4 | ty);
        } else {
            self.out.push(ty);
            varint(self.out, zigzag(id.into()));
        }
        self.last = id;
    }

    fn i16(&mut self, id: i16, v: i16) {
        self.begin(id, I16);
        varint(self.out, zigzag(v.into()));
    }

    fn i32(&mut self, id: i16, v: i32) {
        self.begin(id, I32);
        varint(self.out, zigzag(v.into()));
    }

    fn i64(&mut self, id: i16, v: i64) {
        self.begin(id, I64);
        varint(self.out, zigzag(v));
    }

    fn i8(&mut self, id: i16, v: i8) {
        self.begin(id, BYTE);
        self.out.push(v as u8);
    }

    fn bool(&mut self, id: i16, v: bool) {
        self.begin(id, if v { BOOL_TRUE } else { BOOL_FALSE });
    }

    fn binary(&mut self, id: i16, v: &[u8]) {
        self.begin(id, BINARY);
        varint(self.out, v.len() as u64);
        self.out.extend_from_slice(v);
    }

    /// Starts a list field; its elements follow.
    fn list(&mut self, id: i16, element: u8, len: usize) {
        self.begin(id, LIST);
        list_header(self.out, element, len);
    }

    /// A struct field, written through the returned fields and closed by their [`Fields::end`].
    fn structure(&mut self, id: i16) -> Fields<'_> {
        self.begin(id, STRUCT);
        Fields::new(self.out)
    }

    /// A struct field with no fields (an empty union member).
    fn empty(&mut self, id: i16) {
        self.structure(id).end();
    }

    fn end(self) {
        self.out.push(0);
    }
}

/// What a column's Arrow values are written as.
#[derive(Debug, Clone, Copy)]
enum Values {
    Boolean,
    Int32,
    UInt16,
    UInt32,
    Int64,
    UInt64,
    Timestamp(arrow_schema::TimeUnit),
    Float64,
    Utf8,
    Binary,
}

impl Values {
    /// The Parquet physical type these values must be stored as; `None` for Arrow types not covered.
    fn of(ty: &DataType) -> Option<(Values, PhysicalType)> {
        Some(match ty {
            DataType::Boolean => (Values::Boolean, PhysicalType::BOOLEAN),
            DataType::Int32 => (Values::Int32, PhysicalType::INT32),
            DataType::UInt16 => (Values::UInt16, PhysicalType::INT32),
            DataType::UInt32 => (Values::UInt32, PhysicalType::INT32),
            DataType::Int64 => (Values::Int64, PhysicalType::INT64),
            DataType::UInt64 => (Values::UInt64, PhysicalType::INT64),
            DataType::Timestamp(unit, _) => (Values::Timestamp(*unit), PhysicalType::INT64),
            DataType::Float64 => (Values::Float64, PhysicalType::DOUBLE),
            DataType::Utf8 => (Values::Utf8, PhysicalType::BYTE_ARRAY),
            DataType::Binary => (Values::Binary, PhysicalType::BYTE_ARRAY),
            _ => return None,
        })
    }
}

/// One column of the table.
#[derive(Debug)]
struct Leaf {
    values: Values,
    optional: bool,
    /// Signed sort order: the statistics also go in the deprecated `min`/`max` fields, for old readers.
    signed: bool,
    /// A string column: long statistics are cut at a character boundary.
    utf8: bool,
    /// The column chunk metadata's first fields (type, encodings, path, codec), the same in every file.
    head: Vec<u8>,
    /// Parquet's writer starts another page past this many bytes: such a column is not covered.
    page_bytes: usize,
}

/// A table's files of a few rows: what is the same in all of them, encoded once.
#[derive(Debug)]
pub struct SmallFile {
    leaves: Vec<Leaf>,
    /// The file metadata's first fields: the format version and the schema.
    head: Vec<u8>,
    /// Its last fields (key-value metadata, `created_by`, column orders) and its end.
    tail: Vec<u8>,
    /// Statistics longer than this many bytes are cut (Parquet's `statistics_truncate_length`).
    truncate: Option<usize>,
    /// More rows than this go in several row groups or pages: not covered.
    max_rows: usize,
}

impl SmallFile {
    /// The table's small files as `props` would have Parquet's writer write them; `None` when the schema
    /// or the properties ask for something this writer does not cover.
    pub fn new(schema: &Schema, descr: &SchemaDescriptor, props: &WriterProperties) -> Option<Self> {
        if props.writer_version() != WriterVersion::PARQUET_1_0
            || props.sorting_columns().is_some()
            || descr.num_columns() != schema.fields().len()
            || descr.root_schema().get_fields().len() != schema.fields().len()
        {
            return None;
        }
        let mut leaves = Vec::with_capacity(descr.num_columns());
        for (field, column) in schema.fields().iter().zip(descr.columns()) {
            let (values, physical) = Values::of(field.data_type())?;
            let path = column.path();
            let plain = props.compression(path) == Compression::UNCOMPRESSED
                && !props.dictionary_enabled(path)
                && props.statistics_enabled(path) == EnabledStatistics::Chunk
                && props.bloom_filter_properties(path).is_none();
            let flat = column.max_rep_level() == 0 && column.max_def_level() <= 1 && path.parts().len() == 1;
            if !plain || !flat || column.physical_type() != physical {
                return None;
            }
            let signed = match column.sort_order() {
                SortOrder::SIGNED => true,
                SortOrder::UNSIGNED | SortOrder::TOTAL_ORDER => false,
                _ => return None,
            };
            let utf8 = column.logical_type_ref() == Some(&LogicalType::String)
                || column.converted_type() == ConvertedType::UTF8;
            let mut head = Vec::new();
            let mut f = Fields::new(&mut head);
            f.i32(1, physical_code(physical));
            f.list(2, I32, 2);
            varint(f.out, zigzag(PLAIN.into()));
            varint(f.out, zigzag(RLE.into()));
            f.list(3, BINARY, 1);
            varint(f.out, path.parts()[0].len() as u64);
            f.out.extend_from_slice(path.parts()[0].as_bytes());
            f.i32(4, 0); // UNCOMPRESSED
            let page_bytes = props.column_data_page_size_limit(path);
            leaves.push(Leaf {
                values,
                optional: column.max_def_level() == 1,
                signed,
                utf8,
                head,
                page_bytes,
            });
        }
        let mut head = Vec::new();
        let mut f = Fields::new(&mut head);
        f.i32(1, props.writer_version().as_num());
        f.list(2, STRUCT, count_nodes(descr.root_schema()));
        schema_elements(f.out, descr.root_schema())?;
        let mut tail = Vec::new();
        let mut f = Fields::after(&mut tail, 4);
        if let Some(kv) = props.key_value_metadata() {
            f.list(5, STRUCT, kv.len());
            for pair in kv {
                let mut e = Fields::new(f.out);
                e.binary(1, pair.key.as_bytes());
                if let Some(v) = &pair.value {
                    e.binary(2, v.as_bytes());
                }
                e.end();
            }
        }
        f.binary(6, props.created_by().as_bytes());
        f.list(7, STRUCT, leaves.len());
        for leaf in &leaves {
            let mut order = Fields::new(f.out);
            // IEEE_754_TOTAL_ORDER for floating point, TYPE_ORDER for the rest.
            order.empty(if matches!(leaf.values, Values::Float64) { 2 } else { 1 });
            order.end();
        }
        f.end();
        let max_rows =
            props.max_row_group_row_count().unwrap_or(usize::MAX).min(props.data_page_row_count_limit());
        Some(SmallFile { leaves, head, tail, truncate: props.statistics_truncate_length(), max_rows })
    }

    /// Whether `batch` (of the table's schema) is one of these files: one row group (not none) of one page
    /// per column, and no nulls in a required column (Parquet's writer has its own answer to those).
    pub fn covers(&self, batch: &RecordBatch) -> bool {
        (1..=self.max_rows).contains(&batch.num_rows())
            && batch.columns().iter().zip(&self.leaves).all(|(c, leaf)| {
                (leaf.optional || c.null_count() == 0)
                    && page_bytes(c.as_ref(), leaf.values) < leaf.page_bytes
            })
    }

    /// Appends the whole file for `batch` (which [`SmallFile::covers`]) to `out`.
    pub fn write(&self, batch: &RecordBatch, out: &mut Vec<u8>) {
        let base = out.len();
        out.extend_from_slice(b"PAR1");
        let rows = batch.num_rows();
        let mut chunks = Vec::with_capacity(self.leaves.len());
        let mut page = Vec::new();
        let mut levels = Levels::default();
        for (leaf, array) in self.leaves.iter().zip(batch.columns()) {
            page.clear();
            let nulls = if leaf.optional { array.null_count() } else { 0 };
            if leaf.optional {
                definition_levels(&mut page, array.as_ref(), &mut levels);
            }
            let stats = plain_values(&mut page, array.as_ref(), leaf.values);
            let offset = out.len() - base;
            let mut header = Fields::new(out);
            header.i32(1, DATA_PAGE);
            header.i32(2, page.len() as i32);
            header.i32(3, page.len() as i32);
            let mut data = header.structure(5);
            data.i32(1, rows as i32);
            data.i32(2, PLAIN);
            data.i32(3, RLE);
            data.i32(4, RLE);
            data.end();
            header.end();
            out.extend_from_slice(&page);
            chunks.push(Chunk { offset, size: out.len() - base - offset, nulls, stats });
        }
        let footer = out.len();
        out.extend_from_slice(&self.head);
        let mut meta = Fields::after(out, 2);
        meta.i64(3, rows as i64);
        meta.list(4, STRUCT, 1);
        let mut group = Fields::new(meta.out);
        group.list(1, STRUCT, chunks.len());
        for (leaf, chunk) in self.leaves.iter().zip(&chunks) {
            self.column_chunk(group.out, leaf, chunk, rows);
        }
        let total: usize = chunks.iter().map(|c| c.size).sum();
        group.i64(2, total as i64);
        group.i64(3, rows as i64);
        group.i64(5, 4); // the row group starts after the magic
        group.i64(6, total as i64);
        group.i16(7, 0);
        group.end();
        out.extend_from_slice(&self.tail);
        let len = (out.len() - footer) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(b"PAR1");
    }

    fn column_chunk(&self, out: &mut Vec<u8>, leaf: &Leaf, chunk: &Chunk, rows: usize) {
        let mut c = Fields::new(out);
        c.i64(2, 0); // file_offset: deprecated, and 0 as Parquet's writer leaves it
        let mut m = c.structure(3);
        m.out.extend_from_slice(&leaf.head);
        m.last = 4;
        m.i64(5, rows as i64);
        m.i64(6, chunk.size as i64);
        m.i64(7, chunk.size as i64);
        m.i64(9, chunk.offset as i64);
        let Stats { min, max, nans, unencoded } = &chunk.stats;
        let cut = |v: &[u8], up: bool| match self.truncate {
            Some(limit) if v.len() > limit && matches!(leaf.values, Values::Utf8 | Values::Binary) => {
                if up {
                    cut_above(v, limit, leaf.utf8)
                } else {
                    cut_below(v, limit, leaf.utf8)
                }
            }
            _ => None,
        };
        let min = min.as_deref().map(|v| cut(v, false).map_or((v.to_vec(), true), |c| (c, false)));
        let max = max.as_deref().map(|v| cut(v, true).map_or((v.to_vec(), true), |c| (c, false)));
        let mut s = m.structure(12);
        if leaf.signed {
            if let Some((v, _)) = &max {
                s.binary(1, v);
            }
            if let Some((v, _)) = &min {
                s.binary(2, v);
            }
        }
        s.i64(3, chunk.nulls as i64);
        if let Some((v, _)) = &max {
            s.binary(5, v);
        }
        if let Some((v, _)) = &min {
            s.binary(6, v);
        }
        s.bool(7, max.as_ref().is_some_and(|(_, exact)| *exact));
        s.bool(8, min.as_ref().is_some_and(|(_, exact)| *exact));
        if let Some(n) = nans {
            s.i64(9, *n as i64);
        }
        s.end();
        m.list(13, STRUCT, 1);
        let mut e = Fields::new(m.out);
        e.i32(1, DATA_PAGE);
        e.i32(2, PLAIN);
        e.i32(3, 1);
        e.end();
        if unencoded.is_some() || leaf.optional {
            let mut size = m.structure(16);
            if let Some(n) = unencoded {
                size.i64(1, *n as i64);
            }
            if leaf.optional {
                size.list(3, I64, 2);
                varint(size.out, zigzag(chunk.nulls as i64));
                varint(size.out, zigzag((rows - chunk.nulls) as i64));
            }
            size.end();
        }
        m.end();
        c.end();
    }
}

/// A column chunk written: where, how big, and its statistics.
struct Chunk {
    offset: usize,
    size: usize,
    nulls: usize,
    stats: Stats,
}

/// A column's statistics as plain-encoded values, before long ones are cut.
#[derive(Default)]
struct Stats {
    min: Option<Vec<u8>>,
    max: Option<Vec<u8>>,
    /// For floating point columns.
    nans: Option<u64>,
    /// For byte array columns: the bytes of their values.
    unencoded: Option<u64>,
}

/// At least the bytes of a column's page (its values, and its levels at their largest).
fn page_bytes(array: &dyn Array, values: Values) -> usize {
    let rows = array.len();
    let levels = 4 + 10 + rows.div_ceil(8);
    levels
        + match values {
            Values::Boolean => rows.div_ceil(8),
            Values::Int32 | Values::UInt16 | Values::UInt32 => 4 * rows,
            Values::Int64 | Values::UInt64 | Values::Timestamp(_) | Values::Float64 => 8 * rows,
            Values::Utf8 => {
                let o = array.as_string::<i32>().value_offsets();
                4 * rows + (o[rows] - o[0]) as usize
            }
            Values::Binary => {
                let o = array.as_binary::<i32>().value_offsets();
                4 * rows + (o[rows] - o[0]) as usize
            }
        }
}

/// Definition levels of a nullable column (1 for a value, 0 for a null) after their length, in the
/// RLE/bit-packing hybrid as Parquet's writer chooses its runs ([`Levels`]).
fn definition_levels(page: &mut Vec<u8>, array: &dyn Array, levels: &mut Levels) {
    let at = page.len();
    page.extend_from_slice(&[0; 4]);
    let (rows, nulls) = (array.len(), array.null_count());
    match array.nulls() {
        Some(valid) if nulls != 0 && nulls != rows => {
            valid.iter().for_each(|v| levels.put(page, u8::from(v)));
            levels.finish(page);
        }
        // One value throughout (the usual case in a file of a few rows): the one run the state machine
        // would end up writing.
        _ => {
            varint(page, (rows as u64) << 1);
            page.push(u8::from(nulls == 0));
        }
    }
    let len = (page.len() - at - 4) as u32;
    page[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The RLE/bit-packing hybrid of one-bit values with the runs Parquet's writer picks: values go in
/// groups of eight; a group that only repeats the value before it starts (or continues) a run of that
/// value, written as its count once it ends; other groups are bit-packed together, up to 63 groups to a
/// run. At the end a short tail is a run if it repeats one value, else packed, padded with zeros.
#[derive(Default)]
struct Levels {
    /// Values not yet written: whole groups of a bit-packed run, then the group being filled.
    pending: Vec<u8>,
    /// The last value, and how many times in a row it came since the last group was packed.
    value: u8,
    repeats: usize,
}

impl Levels {
    const GROUP: usize = 8;

    fn put(&mut self, out: &mut Vec<u8>, v: u8) {
        if v == self.value {
            self.repeats += 1;
            if self.repeats > Self::GROUP {
                return; // a run goes on
            }
        } else {
            if self.repeats >= Self::GROUP {
                self.run(out);
            }
            self.value = v;
            self.repeats = 1;
        }
        self.pending.push(v);
        if self.pending.len().is_multiple_of(Self::GROUP) {
            self.group_done(out);
        }
    }

    /// A group is full: it starts a run if it is one repeated value (the packed groups before it are
    /// written), else it stays packed (written once the run holds 63 groups).
    fn group_done(&mut self, out: &mut Vec<u8>) {
        if self.repeats >= Self::GROUP {
            self.pending.truncate(self.pending.len() - Self::GROUP);
            if !self.pending.is_empty() {
                self.packed(out);
            }
            return;
        }
        if self.pending.len() / Self::GROUP + 1 >= 64 {
            self.packed(out);
        }
        self.repeats = 0;
    }

    fn run(&mut self, out: &mut Vec<u8>) {
        varint(out, (self.repeats as u64) << 1);
        out.push(self.value);
        self.pending.clear();
        self.repeats = 0;
    }

    fn packed(&mut self, out: &mut Vec<u8>) {
        out.push(((self.pending.len() / Self::GROUP) as u8) << 1 | 1);
        for group in self.pending.chunks(Self::GROUP) {
            out.push(group.iter().enumerate().fold(0, |byte, (bit, &v)| byte | v << bit));
        }
        self.pending.clear();
    }

    /// Writes what is pending and starts afresh, for the next column.
    fn finish(&mut self, out: &mut Vec<u8>) {
        self.end(out);
        self.value = 0;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() && self.repeats == 0 {
            return;
        }
        let tail = self.pending.len() % Self::GROUP;
        let one_value = self.pending.len() == tail && (self.repeats == tail || tail == 0);
        if self.repeats > 0 && one_value {
            self.run(out);
        } else {
            self.pending.resize(self.pending.len().next_multiple_of(Self::GROUP), 0);
            if !self.pending.is_empty() {
                self.packed(out);
            }
            self.repeats = 0;
        }
    }
}

/// Appends the column's non-null values PLAIN-encoded and returns their statistics.
fn plain_values(page: &mut Vec<u8>, array: &dyn Array, values: Values) -> Stats {
    match values {
        Values::Boolean => {
            let a = array.as_boolean();
            let (mut byte, mut bits, mut min, mut max) = (0u8, 0, None::<bool>, None::<bool>);
            for v in a.iter().flatten() {
                byte |= u8::from(v) << bits;
                bits += 1;
                if bits == 8 {
                    page.push(byte);
                    (byte, bits) = (0, 0);
                }
                min = Some(min.map_or(v, |m| m & v));
                max = Some(max.map_or(v, |m| m | v));
            }
            if bits > 0 {
                page.push(byte);
            }
            let one = |v: Option<bool>| v.map(|b| vec![u8::from(b)]);
            Stats { min: one(min), max: one(max), ..Stats::default() }
        }
        Values::Int32 => ints::<Int32Type, 4>(page, array, |v| v.to_le_bytes()),
        Values::UInt16 => ints::<UInt16Type, 4>(page, array, |v| i32::from(v).to_le_bytes()),
        Values::UInt32 => ints::<UInt32Type, 4>(page, array, |v| v.to_le_bytes()),
        Values::Int64 => ints::<Int64Type, 8>(page, array, |v| v.to_le_bytes()),
        Values::UInt64 => ints::<UInt64Type, 8>(page, array, |v| v.to_le_bytes()),
        Values::Timestamp(unit) => match unit {
            arrow_schema::TimeUnit::Second => {
                ints::<TimestampSecondType, 8>(page, array, |v| v.to_le_bytes())
            }
            arrow_schema::TimeUnit::Millisecond => {
                ints::<TimestampMillisecondType, 8>(page, array, |v| v.to_le_bytes())
            }
            arrow_schema::TimeUnit::Microsecond => {
                ints::<TimestampMicrosecondType, 8>(page, array, |v| v.to_le_bytes())
            }
            arrow_schema::TimeUnit::Nanosecond => {
                ints::<TimestampNanosecondType, 8>(page, array, |v| v.to_le_bytes())
            }
        },
        Values::Float64 => {
            // IEEE 754 total order (the column order Parquet's writer declares for floating point):
            // -0.0 below +0.0, and NaN a bound only of a column of nothing else.
            let a = array.as_primitive::<Float64Type>();
            let (mut min, mut max, mut nan_min, mut nan_max, mut nans, mut values) =
                (None::<f64>, None::<f64>, None::<f64>, None::<f64>, 0, 0);
            for v in a.iter().flatten() {
                page.extend_from_slice(&v.to_le_bytes());
                values += 1;
                let (lo, hi) = if v.is_nan() {
                    nans += 1;
                    (&mut nan_min, &mut nan_max)
                } else {
                    (&mut min, &mut max)
                };
                *lo = Some(lo.map_or(v, |m| if v.total_cmp(&m).is_lt() { v } else { m }));
                *hi = Some(hi.map_or(v, |m| if v.total_cmp(&m).is_gt() { v } else { m }));
            }
            let bytes = |v: Option<f64>| v.map(|v| v.to_le_bytes().to_vec());
            Stats {
                min: bytes(min.or(nan_min)),
                max: bytes(max.or(nan_max)),
                nans: (values > 0).then_some(nans),
                unencoded: None,
            }
        }
        Values::Utf8 => {
            let a = array.as_string::<i32>();
            byte_arrays(page, a.iter().flatten().map(str::as_bytes))
        }
        Values::Binary => {
            let a = array.as_binary::<i32>();
            byte_arrays(page, a.iter().flatten())
        }
    }
}

/// Integers: their order is the Arrow type's (unsigned for unsigned types, as Parquet's sort order of
/// their logical type), written as `put` stores them.
fn ints<T: ArrowPrimitiveType, const N: usize>(
    page: &mut Vec<u8>,
    array: &dyn Array,
    put: impl Fn(T::Native) -> [u8; N],
) -> Stats
where
    T::Native: Ord,
{
    let a = array.as_primitive::<T>();
    let (mut min, mut max) = (None::<T::Native>, None::<T::Native>);
    for v in a.iter().flatten() {
        page.extend_from_slice(&put(v));
        min = Some(min.map_or(v, |m| m.min(v)));
        max = Some(max.map_or(v, |m| m.max(v)));
    }
    Stats { min: min.map(|v| put(v).to_vec()), max: max.map(|v| put(v).to_vec()), ..Stats::default() }
}

/// Byte arrays: each value after its length; ordered bytewise, as unsigned bytes.
fn byte_arrays<'a>(page: &mut Vec<u8>, values: impl Iterator<Item = &'a [u8]>) -> Stats {
    let (mut min, mut max, mut bytes) = (None::<&[u8]>, None::<&[u8]>, 0u64);
    for v in values {
        page.extend_from_slice(&(v.len() as u32).to_le_bytes());
        page.extend_from_slice(v);
        bytes += v.len() as u64;
        min = Some(min.map_or(v, |m| m.min(v)));
        max = Some(max.map_or(v, |m| m.max(v)));
    }
    Stats { min: min.map(<[u8]>::to_vec), max: max.map(<[u8]>::to_vec), nans: None, unencoded: Some(bytes) }
}

/// A lower bound of `v` at most `limit` bytes long: its prefix (cut at a character boundary for a
/// string). `None` when there is none (a first character longer than the limit).
fn cut_below(v: &[u8], limit: usize, utf8: bool) -> Option<Vec<u8>> {
    match std::str::from_utf8(v) {
        Ok(s) if utf8 => (1..=limit).rev().find(|&i| s.is_char_boundary(i)).map(|i| v[..i].to_vec()),
        _ => Some(v[..limit].to_vec()),
    }
}

/// An upper bound of `v` at most `limit` bytes long: a prefix with its last byte (its last character,
/// for a string, keeping its width) raised by one, dropping the bytes after it; `None` when every byte
/// or character of the prefix is already the largest.
fn cut_above(v: &[u8], limit: usize, utf8: bool) -> Option<Vec<u8>> {
    match std::str::from_utf8(v) {
        Ok(s) if utf8 => {
            // A character is at most four bytes: a boundary lies within three of the limit.
            let end = (limit.saturating_sub(3)..=limit).rev().find(|&i| s.is_char_boundary(i))?;
            let prefix = &s[..end];
            prefix.char_indices().rev().find_map(|(at, c)| {
                let next = char::from_u32(c as u32 + 1).filter(|n| n.len_utf8() == c.len_utf8())?;
                let mut out = prefix.as_bytes()[..at].to_vec();
                let mut buf = [0; 4];
                out.extend_from_slice(next.encode_utf8(&mut buf).as_bytes());
                Some(out)
            })
        }
        _ => {
            let mut out = v[..limit].to_vec();
            while let Some(last) = out.pop() {
                if last < u8::MAX {
                    // The largest bytes wrap to zero and carry into the one before, as in Parquet's
                    // writer: the bound keeps its length.
                    out.push(last + 1);
                    out.resize(limit, 0);
                    return Some(out);
                }
            }
            None
        }
    }
}

fn physical_code(t: PhysicalType) -> i32 {
    match t {
        PhysicalType::BOOLEAN => 0,
        PhysicalType::INT32 => 1,
        PhysicalType::INT64 => 2,
        PhysicalType::INT96 => 3,
        PhysicalType::FLOAT => 4,
        PhysicalType::DOUBLE => 5,
        PhysicalType::BYTE_ARRAY => 6,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => 7,
    }
}

fn count_nodes(t: &Type) -> usize {
    match t {
        Type::GroupType { fields, .. } => 1 + fields.iter().map(|f| count_nodes(f)).sum::<usize>(),
        Type::PrimitiveType { .. } => 1,
    }
}

/// The schema tree depth first, as Parquet's `SchemaElement`s; `None` for an annotation not covered.
fn schema_elements(out: &mut Vec<u8>, t: &Type) -> Option<()> {
    let info = t.get_basic_info();
    let mut e = Fields::new(out);
    match t {
        Type::PrimitiveType { physical_type, type_length, .. } => {
            e.i32(1, physical_code(*physical_type));
            if *type_length >= 0 {
                e.i32(2, *type_length);
            }
            e.i32(3, repetition(info.repetition()));
            e.binary(4, info.name().as_bytes());
        }
        Type::GroupType { fields, .. } => {
            if info.has_repetition() {
                e.i32(3, repetition(info.repetition()));
            }
            e.binary(4, info.name().as_bytes());
            e.i32(5, fields.len() as i32);
        }
    }
    if let Some(code) = converted(info.converted_type())? {
        e.i32(6, code);
    }
    if let Type::PrimitiveType { scale, precision, .. } = t
        && (*scale >= 0 || *precision >= 0)
    {
        return None; // decimals: not covered
    }
    if info.has_id() {
        e.i32(9, info.id());
    }
    if let Some(logical) = info.logical_type_ref() {
        let mut u = e.structure(10);
        match logical {
            LogicalType::String => u.empty(1),
            LogicalType::Date => u.empty(6),
            LogicalType::Json => u.empty(12),
            LogicalType::Timestamp(ts) => {
                let mut s = u.structure(8);
                s.bool(1, ts.is_adjusted_to_u_t_c);
                let mut unit = s.structure(2);
                unit.empty(match ts.unit {
                    TimeUnit::MILLIS => 1,
                    TimeUnit::MICROS => 2,
                    TimeUnit::NANOS => 3,
                });
                unit.end();
                s.end();
            }
            LogicalType::Integer(int) => {
                let mut s = u.structure(10);
                s.i8(1, int.bit_width);
                s.bool(2, int.is_signed);
                s.end();
            }
            _ => return None,
        }
        u.end();
    }
    e.end();
    if let Type::GroupType { fields, .. } = t {
        for f in fields {
            schema_elements(out, f)?;
        }
    }
    Some(())
}

fn repetition(r: Repetition) -> i32 {
    match r {
        Repetition::REQUIRED => 0,
        Repetition::OPTIONAL => 1,
        Repetition::REPEATED => 2,
    }
}

/// A converted type's code: `Some(None)` for none, `None` for one not covered.
fn converted(c: ConvertedType) -> Option<Option<i32>> {
    Some(Some(match c {
        ConvertedType::NONE => return Some(None),
        ConvertedType::UTF8 => 0,
        ConvertedType::DATE => 6,
        ConvertedType::TIMESTAMP_MILLIS => 9,
        ConvertedType::TIMESTAMP_MICROS => 10,
        ConvertedType::UINT_8 => 11,
        ConvertedType::UINT_16 => 12,
        ConvertedType::UINT_32 => 13,
        ConvertedType::UINT_64 => 14,
        ConvertedType::INT_8 => 15,
        ConvertedType::INT_16 => 16,
        ConvertedType::INT_32 => 17,
        ConvertedType::INT_64 => 18,
        ConvertedType::JSON => 19,
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, BinaryArray, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampMillisecondArray, UInt16Array, UInt32Array, UInt64Array,
    };
    use arrow_schema::Field;
    use parquet::arrow::ArrowSchemaConverter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::arrow_writer::{ArrowWriter, ArrowWriterOptions};

    use super::*;

    /// The archive's properties for files packed plain, with the Arrow schema in their metadata.
    fn plain_props(schema: &Schema) -> WriterProperties {
        let mut props = WriterProperties::builder()
            .set_created_by("vigil test".into())
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .set_compression(Compression::UNCOMPRESSED)
            .build();
        parquet::arrow::add_encoded_arrow_schema_to_metadata(&Arc::new(schema.clone()), &mut props);
        props
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// Writes `batch` both ways: the files are the same, byte for byte, and read back as the batch.
    fn check(batch: &RecordBatch) {
        let schema = batch.schema();
        let props = plain_props(&schema);
        let descr = ArrowSchemaConverter::new().convert(&schema).unwrap();
        let small = SmallFile::new(&schema, &descr, &props).expect("the schema is covered");
        assert!(small.covers(batch));
        // Appended after what the buffer already holds, offsets counted from the file's start.
        let mut ours = b"already here".to_vec();
        small.write(batch, &mut ours);
        let ours = ours.split_off(12);
        let options = ArrowWriterOptions::new().with_properties(props.clone()).with_skip_arrow_metadata(true);
        let mut w = ArrowWriter::try_new_with_options(Vec::new(), schema.clone(), options).unwrap();
        w.write(batch).unwrap();
        let theirs = w.into_inner().unwrap();
        assert!(
            ours == theirs,
            "{} rows: {} bytes, Parquet's writer {}",
            batch.num_rows(),
            ours.len(),
            theirs.len()
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(file(&ours)).unwrap().build().unwrap();
        let read: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(read, [batch.clone()]);
    }

    fn batch(columns: Vec<(&str, ArrayRef, bool)>) -> RecordBatch {
        let fields: Vec<Field> =
            columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|(_, a, _)| a).collect())
            .unwrap()
    }

    /// `rows` rows of every covered type, required and nullable, with nulls, without and only nulls,
    /// extremes, NaN and both zeros, empty and long strings (cut at the statistics limit, some at a
    /// character that cannot be raised).
    fn every_type(rows: usize) -> RecordBatch {
        let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
        let strings: Vec<Option<String>> = vec![
            Some("agent-7".into()),
            None,
            Some(String::new()),
            Some(long('z', 70)),
            Some(format!("{}é{}", long('a', 62), long('b', 9))),
            Some(long('\u{10FFFF}', 20)),
            Some("db://orders/eu".into()),
        ];
        let bytes: Vec<Option<Vec<u8>>> = vec![
            Some(vec![0xff; 80]),
            Some(vec![1, 2, 0xff, 0xff]),
            None,
            Some(Vec::new()),
            Some([7u8; 65].to_vec()),
        ];
        let all = 0..rows;
        let some = |i: usize| i % 3 != 1;
        let string = |i: usize| strings[i % strings.len()].clone();
        let ts = |i: usize| some(i).then_some(1_700_000_000_000 - i as i64 * 3_600_000);
        let float = |i: usize| [Some(f64::NAN), Some(0.0), None, Some(-2.5), Some(-0.0), Some(9.75)][i % 6];
        batch(vec![
            ("s", Arc::new(StringArray::from_iter(all.clone().map(string))), true),
            (
                "s_req",
                Arc::new(StringArray::from_iter_values(all.clone().map(|i| string(i).unwrap_or_default()))),
                false,
            ),
            ("s_null", Arc::new(StringArray::from(vec![None::<&str>; rows])), true),
            (
                "i32",
                Arc::new(Int32Array::from_iter(all.clone().map(|i| some(i).then_some(i as i32 * 7 - 20)))),
                true,
            ),
            (
                "u16",
                Arc::new(UInt16Array::from_iter_values(all.clone().map(|i| [0, 1, 40_000, u16::MAX][i % 4]))),
                false,
            ),
            (
                "u32",
                Arc::new(UInt32Array::from_iter(
                    all.clone().map(|i| some(i).then_some([3, u32::MAX, 1 << 31][i % 3])),
                )),
                true,
            ),
            (
                "i64",
                Arc::new(Int64Array::from_iter_values(
                    all.clone().map(|i| [i64::MIN, -1, 0, i64::MAX][i % 4]),
                )),
                false,
            ),
            (
                "u64",
                Arc::new(UInt64Array::from_iter_values(
                    all.clone().map(|i| [5, u64::MAX, 1 << 63, 0][i % 4]),
                )),
                false,
            ),
            ("f64", Arc::new(Float64Array::from_iter(all.clone().map(float))), true),
            ("f64_nan", Arc::new(Float64Array::from_iter_values(vec![f64::NAN; rows])), false),
            (
                "f64_zero",
                Arc::new(Float64Array::from_iter_values(
                    all.clone().map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }),
                )),
                false,
            ),
            (
                "flag",
                Arc::new(BooleanArray::from_iter(all.clone().map(|i| some(i).then_some(i % 4 == 0)))),
                true,
            ),
            ("flag_true", Arc::new(BooleanArray::from(vec![true; rows])), false),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from_iter(all.clone().map(ts)).with_timezone("UTC")),
                true,
            ),
            ("bin", Arc::new(BinaryArray::from_iter(all.map(|i| bytes[i % bytes.len()].clone()))), true),
        ])
    }

    /// Every covered type, at row counts around a byte of levels and a slice that starts mid-array, is
    /// written as Parquet's writer writes it; no rows are left to that writer.
    #[test]
    fn a_small_file_is_what_arrow_writer_writes() {
        // 600 rows: bit-packed levels longer than one run of 63 groups.
        for rows in [1, 2, 7, 8, 9, 17, 63, 200, 600] {
            check(&every_type(rows));
        }
        check(&every_type(40).slice(3, 30));
        // A column past a page's bytes, or more rows than a page's: Parquet's writer makes more pages of
        // them, so they are left to it; just under the limit, one page each way.
        let big = |rows: usize, bytes: usize| {
            batch(vec![(
                "payload",
                Arc::new(BinaryArray::from_iter_values((0..rows).map(|i| vec![i as u8; bytes]))),
                false,
            )])
        };
        check(&big(2, 500_000));
        let over = big(3, 500_000);
        let descr = ArrowSchemaConverter::new().convert(&over.schema()).unwrap();
        let small = SmallFile::new(&over.schema(), &descr, &plain_props(&over.schema())).unwrap();
        assert!(!small.covers(&over));
        let mut props = plain_props(&over.schema());
        props = props.into_builder().set_data_page_row_count_limit(2).build();
        let small = SmallFile::new(&over.schema(), &descr, &props).unwrap();
        assert!(small.covers(&big(2, 10)) && !small.covers(&big(3, 10)));
        // No rows: Parquet's writer writes no row group; such a file is left to it.
        let none = every_type(0);
        let descr = ArrowSchemaConverter::new().convert(&none.schema()).unwrap();
        let small = SmallFile::new(&none.schema(), &descr, &plain_props(&none.schema())).unwrap();
        assert!(!small.covers(&none));
    }

    /// Random batches (seeded, so a failure repeats): random nulls, lengths around the statistics limit,
    /// characters of one to four bytes, extremes and NaNs; each is written as Parquet's writer writes it.
    #[test]
    fn random_small_files_are_what_arrow_writer_writes() {
        let chars = ['a', 'z', '~', 'é', 'ÿ', '€', '\u{FFFF}', '😀', '\u{10FFFF}', '\0'];
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let rows = if seed % 10 == 0 { rng.usize(500..700) } else { rng.usize(1..40) };
            // Some batches nearly all nulls, some nearly none: long runs of each.
            let nulls = [4, 60, 128, 250][seed as usize % 4];
            let null = |rng: &mut fastrand::Rng| rng.u8(..) < nulls;
            let text = |rng: &mut fastrand::Rng| {
                let len = [0, 1, 5, 60, 61, 62, 63, 64, 65, 66, 70][rng.usize(..11)];
                let mut s = String::new();
                while s.len() < len {
                    s.push(chars[rng.usize(..chars.len())]);
                }
                s
            };
            let floats = [
                f64::NAN,
                -f64::NAN,
                0.0,
                -0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                1.5,
                -7.25,
                f64::MIN_POSITIVE,
            ];
            let mut strings = Vec::new();
            let mut bins = Vec::new();
            let mut ints = Vec::new();
            let mut u64s = Vec::new();
            let mut f64s = Vec::new();
            let mut flags = Vec::new();
            for _ in 0..rows {
                strings.push((!null(&mut rng)).then(|| text(&mut rng)));
                bins.push((!null(&mut rng)).then(|| {
                    let len = [0, 3, 64, 65, 66][rng.usize(..5)];
                    (0..len).map(|_| [0, 1, 0xfe, 0xff][rng.usize(..4)]).collect::<Vec<u8>>()
                }));
                ints.push(
                    (!null(&mut rng)).then(|| [i32::MIN, -1, 0, 1, i32::MAX, rng.i32(..)][rng.usize(..6)]),
                );
                u64s.push([0, 1, u64::MAX, 1 << 63, rng.u64(..)][rng.usize(..5)]);
                f64s.push((!null(&mut rng)).then(|| floats[rng.usize(..floats.len())]));
                flags.push((!null(&mut rng)).then(|| rng.bool()));
            }
            let b = batch(vec![
                ("s", Arc::new(StringArray::from(strings)), true),
                (
                    "bin",
                    Arc::new(BinaryArray::from(bins.iter().map(|b| b.as_deref()).collect::<Vec<_>>())),
                    true,
                ),
                ("i32", Arc::new(Int32Array::from(ints)), true),
                ("u64", Arc::new(UInt64Array::from(u64s)), false),
                ("f64", Arc::new(Float64Array::from(f64s)), true),
                ("flag", Arc::new(BooleanArray::from(flags)), true),
            ]);
            check(&b);
        }
    }
}
