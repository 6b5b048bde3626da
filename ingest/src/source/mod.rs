//! Where events come from. This version reads NDJSON from a file or stdin, plain, gzip or zstd.

mod lines;
mod open;

pub use lines::{Chunk, Line, LineReader};
pub use open::{Input, InputError, open_input, source_name_for};
