//! Where events come from: NDJSON from a file or stdin (plain, gzip or zstd), and Kafka topics.

pub mod kafka;
mod lines;
mod open;

pub use lines::{Chunk, Line, LineReader};
pub use open::{Input, InputError, open_input, source_name_for};
