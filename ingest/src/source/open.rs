//! Opening an NDJSON input: a path or `-` for stdin; gzip and zstd are recognised by their magic bytes,
//! whatever the file is called.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An input that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An opened input.
pub struct Input {
    /// The decompressed byte stream.
    pub reader: Box<dyn Read + Send>,
    /// Default source name for archive file names: derived from the file name, or `stdin`.
    pub name: String,
    /// Size of the underlying file in bytes (compressed), when known.
    pub size: Option<u64>,
    /// Bytes consumed from the underlying file so far (compressed), for progress.
    pub consumed: Arc<AtomicU64>,
    /// `gzip`, `zstd` or `plain`.
    pub compression: &'static str,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").field("name", &self.name).field("compression", &self.compression).finish()
    }
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A source name safe for a file name: letters, digits, `.`, `_` and `-` kept, anything else `_`.
pub fn source_name_for(path: &Path) -> String {
    let stem = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into());
    let stem = [".gz", ".zst", ".ndjson", ".jsonl", ".json"]
        .iter()
        .fold(stem, |s, ext| s.strip_suffix(ext).map(str::to_owned).unwrap_or(s));
    let name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    // Files whose names start with `_` or `.` are skipped as hidden by pyarrow, pandas, Spark, Hive and
    // Athena: such a source's archive would look empty to them.
    let name = name.trim_start_matches(['_', '.']);
    if name.is_empty() {
        "input".into()
    } else if is_reserved(name) {
        format!("input-{name}")
    } else {
        name.to_owned()
    }
}

/// The source name of vigil's own control log in the archive (`control/` files named by its record
/// numbers; `vigil-control.N` for the N-th process sharing an archive root); no input's name may start
/// with it.
pub const RESERVED_SOURCE: &str = "vigil-control";

/// Whether `name` is one of vigil's own source names (`vigil-control`, `vigil-control.N`).
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_SOURCE)
}

/// Why a source name cannot name archive files, or `None` when it can: letters, digits, `.`, `_` and
/// `-`, starting with a letter or digit (readers skip files starting with `_` or `.`).
pub fn source_name_problem(name: &str) -> Option<&'static str> {
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        Some("must start with a letter or digit (readers skip files starting with '_' or '.')")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        Some("may only hold letters, digits, '.', '_' and '-'")
    } else if is_reserved(name) {
        Some("is reserved for vigil's own control records (names starting vigil-control)")
    } else {
        None
    }
}

/// Opens `path` (or stdin for `-`), decompressing gzip or zstd transparently.
pub fn open_input(path: &Path) -> Result<Input, InputError> {
    let err = |source| InputError::Open { path: path.to_owned(), source };
    let consumed = Arc::new(AtomicU64::new(0));
    let (raw, name, size): (Box<dyn Read + Send>, String, Option<u64>) = if path == Path::new("-") {
        (Box::new(io::stdin()), "stdin".into(), None)
    } else {
        let file = File::open(path).map_err(err)?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), source_name_for(path), size)
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, Counting { inner: raw, count: consumed.clone() });
    let head = buffered.fill_buf().map_err(err)?;
    let (reader, compression): (Box<dyn Read + Send>, &'static str) = if head.starts_with(&[0x1f, 0x8b]) {
        (Box::new(flate2::bufread::MultiGzDecoder::new(buffered)), "gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        (Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(err)?), "zstd")
    } else {
        (Box::new(buffered), "plain")
    };
    Ok(Input { reader, name, size, consumed, compression })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, item 12: source names starting with `_` or `.` made archive files that pyarrow, pandas,
    /// Spark, Hive and Athena skip as hidden (pyarrow saw 0 of 250 rows), and `..` was a valid name.
    #[test]
    fn source_names_never_start_with_an_underscore_or_a_dot() {
        assert_eq!(source_name_for(Path::new("/logs/_events.ndjson.gz")), "events");
        assert_eq!(source_name_for(Path::new(".hidden.jsonl")), "hidden");
        assert_eq!(source_name_for(Path::new("__.ndjson")), "input");
        assert_eq!(source_name_for(Path::new("gateway eu.ndjson")), "gateway_eu");
        for bad in ["..", ".x", "_x", "", "a/b"] {
            assert!(source_name_problem(bad).is_some(), "{bad:?} should be refused");
        }
        assert_eq!(source_name_problem("gateway-eu.v2_1"), None);
    }
}
