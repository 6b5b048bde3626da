//! vigil's event movers: sources that produce lines, and the Parquet archive that keeps everything.
//!
//! **Only this crate knows source positions and archive files.** It knows nothing of how events are
//! judged beyond the shape of the findings it archives.

pub mod archive;
pub mod journal;
pub mod lockfile;
pub mod outbox;
pub mod source;

pub use archive::{
    Archive, ArchiveConfig, ArchiveError, Checkpoint, DeadLetter, FlushJob, FlushReport, FlushWriter,
};
