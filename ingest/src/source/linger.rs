//! A stream that says "nothing more for now": for a pipe that trickles (stdin from `tail -f`, a slow
//! exporter), so that what arrived is judged and archived after a short wait instead of when a whole
//! batch has filled, which at a trickle can take hours.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Blocks read from the inner stream on a thread of its own.
const BLOCK: usize = 64 * 1024;

/// Reads `inner` on its own thread; a `read` that has waited `linger` since the first byte it handed
/// out after the last pause returns `TimedOut`, which [`LineReader`](super::LineReader) answers by
/// handing over the whole lines it holds. A `read` that has waited `idle` with nothing at all returns
/// `TimedOut` too, which `LineReader` hands on when it holds no whole line, so that the caller can do
/// its timed work (a due flush) while the stream is quiet. Bytes are never lost or reordered: a pause
/// only cuts a batch.
pub struct Lingering {
    blocks: Receiver<io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
    linger: Duration,
    idle: Duration,
    /// When the first byte since the last pause was handed out.
    since: Option<Instant>,
}

impl std::fmt::Debug for Lingering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lingering")
            .field("linger", &self.linger)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Lingering {
    /// Starts reading `inner` on a thread; at most a few blocks are read ahead.
    pub fn new(mut inner: Box<dyn Read + Send>, linger: Duration, idle: Duration) -> io::Result<Lingering> {
        let (tx, blocks) = mpsc::sync_channel(4);
        std::thread::Builder::new().name("vigil-stdin".into()).spawn(move || {
            loop {
                let mut block = vec![0u8; BLOCK];
                match inner.read(&mut block) {
                    Ok(0) => break,
                    Ok(n) => {
                        block.truncate(n);
                        if tx.send(Ok(block)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        })?;
        Ok(Lingering { blocks, pending: Vec::new(), at: 0, linger, idle, since: None })
    }
}

impl Read for Lingering {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            let block = match self.since {
                None => self.blocks.recv_timeout(self.idle),
                Some(t) => {
                    let left = self.linger.saturating_sub(t.elapsed());
                    self.blocks.recv_timeout(left)
                }
            };
            match block {
                Ok(b) => {
                    self.pending = b?;
                    self.at = 0;
                    self.since.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.since = None;
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no more input for now"));
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Chunk, LineReader};

    /// A pipe that writes what it is given, then stays open.
    struct Trickle(Receiver<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.recv() {
                Ok(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(b.len())
                }
                Err(_) => Ok(0),
            }
        }
    }

    /// Issue 13, item 14: a slow stdin stream was not judged or archived until 4 MiB had arrived.
    #[test]
    fn a_trickle_is_handed_over_in_whole_lines_after_the_linger() {
        let (tx, rx) = mpsc::channel();
        let lingering =
            Lingering::new(Box::new(Trickle(rx)), Duration::from_millis(50), Duration::from_secs(60))
                .unwrap();
        let mut reader = LineReader::new(lingering, 1 << 20, 1024);
        let mut chunk = Chunk::default();
        tx.send(b"{\"a\":1}\n{\"b\":".to_vec()).unwrap();
        // Far less than the 4 MiB asked for, and the stream still open: the whole line comes after the
        // linger; the half line waits for the rest of it.
        assert!(reader.next_chunk(&mut chunk, 4 << 20).unwrap());
        assert_eq!(chunk.lines.len(), 1);
        assert_eq!(chunk.bytes(&chunk.lines[0]), b"{\"a\":1}");
        tx.send(b"2}\n".to_vec()).unwrap();
        assert!(reader.next_chunk(&mut chunk, 4 << 20).unwrap());
        assert_eq!((chunk.bytes(&chunk.lines[0]), chunk.lines[0].position), (&b"{\"b\":2}"[..], 2));
        drop(tx);
        assert!(!reader.next_chunk(&mut chunk, 4 << 20).unwrap());
    }

    /// An idle stdin run did not flush until its next batch: with nothing coming, the reader now says so
    /// after `idle`, keeping a half line for later.
    #[test]
    fn a_quiet_stream_says_so_after_the_idle_time_and_keeps_a_half_line() {
        let (tx, rx) = mpsc::channel();
        let lingering =
            Lingering::new(Box::new(Trickle(rx)), Duration::from_millis(20), Duration::from_millis(50))
                .unwrap();
        let mut reader = LineReader::new(lingering, 1 << 20, 1024);
        let mut chunk = Chunk::default();
        let quiet = |r: io::Result<bool>| r.expect_err("nothing whole yet").kind() == io::ErrorKind::TimedOut;
        assert!(quiet(reader.next_chunk(&mut chunk, 4 << 20)));
        tx.send(b"{\"a\":".to_vec()).unwrap();
        assert!(quiet(reader.next_chunk(&mut chunk, 4 << 20)));
        tx.send(b"1}\n".to_vec()).unwrap();
        assert!(reader.next_chunk(&mut chunk, 4 << 20).unwrap());
        assert_eq!((chunk.lines.len(), chunk.bytes(&chunk.lines[0])), (1, &b"{\"a\":1}"[..]));
        drop(tx);
        assert!(!reader.next_chunk(&mut chunk, 4 << 20).unwrap());
    }
}
