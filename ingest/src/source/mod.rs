//! Where events come from: NDJSON from a file or stdin (plain, gzip or zstd), Kafka topics, and the
//! bodies of HTTP requests.

pub mod http;
pub mod kafka;
mod lines;
mod linger;
mod open;

pub use lines::{Chunk, Line, LineReader};
pub use linger::Lingering;
pub use open::{
    Input, InputError, RESERVED_SOURCE, is_reserved, open_input, source_name_for, source_name_problem,
};
