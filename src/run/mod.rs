//! Drivers: each reads one kind of source and feeds the pipeline's lanes, one per source partition.
//! A driver decides what a batch is and when to stop; the lane does everything else.

pub mod file;
pub mod http;
pub mod kafka;
