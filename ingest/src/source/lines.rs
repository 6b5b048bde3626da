//! Splits a byte stream into lines, in chunks, with a cap on line length that bounds memory.
//!
//! Lines are handed out as ranges of one reusable chunk buffer, so the decoder can borrow strings from
//! it. A line over the cap is never held whole: its first bytes are kept as evidence, the rest is counted
//! and discarded, and it comes out marked [`Line::oversize`] so it can be dead-lettered with its size.

use std::io::{self, Read};

/// One line of a chunk: a range of [`Chunk::data`] without the newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Start of the line in the chunk.
    pub start: usize,
    /// End (exclusive). For an oversize line, the end of the kept prefix.
    pub end: usize,
    /// 1-based line number in the stream: the source position.
    pub position: u64,
    /// The line's full length when it was over the cap (only a prefix is in the chunk).
    pub oversize: Option<u64>,
}

/// A reusable buffer of whole lines.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The bytes the lines point into.
    data: Filled,
    /// The lines, in stream order.
    pub lines: Vec<Line>,
}

impl Chunk {
    /// The bytes of one line.
    pub fn bytes(&self, line: &Line) -> &[u8] {
        &self.data.as_slice()[line.start..line.end]
    }

    /// The bytes the lines point into.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }
}

/// A byte buffer that keeps its initialised bytes when emptied: the first `len` bytes of `buf` are the
/// content, the rest is room already zeroed by an earlier fill. A `Vec<u8>` cleared and resized for
/// every read zeroes each byte before the read overwrites it (2,000 reads of 256 KiB in a run of a
/// million events: 5% of its samples, about half of which the read's copy now takes instead, as it meets
/// the cache misses the zeroing met); this zeroes a byte once, when the buffer first grows over it.
#[derive(Debug, Default)]
struct Filled {
    buf: Vec<u8>,
    len: usize,
}

impl Filled {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.grow(bytes.len());
    }

    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// Room for `n` more bytes after the content, to read into; [`Filled::grow`] then keeps what was read.
    fn room(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if end > self.buf.len() {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.len..end]
    }

    fn grow(&mut self, n: usize) {
        self.len += n;
    }
}

/// A line over the cap, being skipped.
#[derive(Debug)]
struct Skip {
    prefix: Vec<u8>,
    size: u64,
}

/// Reads lines in chunks from any byte stream.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    carry: Vec<u8>,
    next_position: u64,
    max_line: usize,
    keep_prefix: usize,
    skipping: Option<Skip>,
    eof: bool,
    bytes: u64,
}

const READ_SIZE: usize = 256 * 1024;

impl<R: Read> LineReader<R> {
    /// A reader whose lines may be at most `max_line` bytes; of a longer line the first `keep_prefix`
    /// bytes are kept.
    pub fn new(inner: R, max_line: usize, keep_prefix: usize) -> Self {
        LineReader {
            inner,
            carry: Vec::new(),
            next_position: 1,
            max_line,
            keep_prefix: keep_prefix.min(max_line),
            skipping: None,
            eof: false,
            bytes: 0,
        }
    }

    /// Bytes taken from the stream so far (after decompression).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Fills `chunk` with whole lines, about `target_bytes` of them (at least one line unless the stream
    /// has ended). Returns `false` once the stream is exhausted and no line was produced, and a
    /// `TimedOut` error when a lingering stream (see [`Lingering`](super::Lingering)) paused before a whole
    /// line arrived: nothing is lost, the next call goes on from there.
    pub fn next_chunk(&mut self, chunk: &mut Chunk, target_bytes: usize) -> io::Result<bool> {
        chunk.lines.clear();
        chunk.data.clear();
        chunk.data.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut line_start = 0;
        let mut scan = 0;
        loop {
            if let Some(skip) = self.skipping.as_mut() {
                match memchr::memchr(b'\n', &chunk.data.as_slice()[line_start..]) {
                    Some(i) => {
                        skip.size += i as u64;
                        let rest = chunk.data.as_slice()[line_start + i + 1..].to_vec();
                        chunk.data.truncate(line_start);
                        self.finish_skip(chunk, line_start);
                        chunk.data.push(b'\n');
                        line_start = chunk.data.len();
                        scan = line_start;
                        chunk.data.extend_from_slice(&rest);
                    }
                    None => {
                        skip.size += (chunk.data.len() - line_start) as u64;
                        chunk.data.truncate(line_start);
                        scan = line_start;
                    }
                }
            }
            if self.skipping.is_none() {
                while let Some(i) = memchr::memchr(b'\n', &chunk.data.as_slice()[scan..]) {
                    let end = scan + i;
                    self.push_line(chunk, line_start, end);
                    line_start = end + 1;
                    scan = line_start;
                }
                scan = chunk.data.len();
                let partial = chunk.data.len() - line_start;
                if partial > self.max_line {
                    let prefix = chunk.data.as_slice()[line_start..line_start + self.keep_prefix].to_vec();
                    self.skipping = Some(Skip { prefix, size: partial as u64 });
                    chunk.data.truncate(line_start);
                    scan = line_start;
                }
            }
            if !chunk.lines.is_empty() && chunk.data.len() >= target_bytes {
                break;
            }
            if self.eof {
                if self.skipping.is_some() {
                    self.finish_skip(chunk, line_start);
                    line_start = chunk.data.len();
                } else if line_start < chunk.data.len() {
                    let end = chunk.data.len();
                    self.push_line(chunk, line_start, end);
                    line_start = end;
                }
                break;
            }
            match self.fill(&mut chunk.data) {
                Ok(()) => {}
                // A lingering source paused: the whole lines so far make a chunk. With none yet, the pause
                // is handed on (what was read is kept for the next call), so the caller can flush on time.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if !chunk.lines.is_empty() {
                        break;
                    }
                    self.carry.extend_from_slice(chunk.data.as_slice());
                    chunk.data.clear();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.carry.extend_from_slice(&chunk.data.as_slice()[line_start..]);
        chunk.data.truncate(line_start);
        Ok(!chunk.lines.is_empty())
    }

    fn push_line(&mut self, chunk: &mut Chunk, start: usize, end: usize) {
        let len = end - start;
        let (end, oversize) =
            if len > self.max_line { (start + self.keep_prefix, Some(len as u64)) } else { (end, None) };
        chunk.lines.push(Line { start, end, position: self.next_position, oversize });
        self.next_position += 1;
    }

    /// Ends an oversize line: its kept prefix goes into the chunk at `at`.
    fn finish_skip(&mut self, chunk: &mut Chunk, at: usize) {
        if let Some(skip) = self.skipping.take() {
            chunk.data.extend_from_slice(&skip.prefix);
            chunk.lines.push(Line {
                start: at,
                end: at + skip.prefix.len(),
                position: self.next_position,
                oversize: Some(skip.size),
            });
            self.next_position += 1;
        }
    }

    fn fill(&mut self, data: &mut Filled) -> io::Result<()> {
        let n = loop {
            match self.inner.read(data.room(READ_SIZE)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        data.grow(n);
        self.bytes += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `.1` bytes at a time, to cross every boundary.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Reads everything with a given chunk target and renders `position:text[!size]` per line.
    fn lines_of(input: &[u8], max_line: usize, target: usize) -> Vec<String> {
        let mut r = LineReader::new(Trickle(input, 7), max_line, 3);
        let mut chunk = Chunk::default();
        let mut out = Vec::new();
        while r.next_chunk(&mut chunk, target).unwrap() {
            for l in &chunk.lines {
                let text = String::from_utf8_lossy(chunk.bytes(l));
                out.push(match l.oversize {
                    Some(n) => format!("{}:{text}!{n}", l.position),
                    None => format!("{}:{text}", l.position),
                });
            }
        }
        assert_eq!(r.bytes_read(), input.len() as u64);
        out
    }

    #[test]
    fn splits_lines_across_reads_and_chunks() {
        for target in [1, 5, 64, 1 << 20] {
            assert_eq!(lines_of(b"a\nbb\n\nccc", 10, target), ["1:a", "2:bb", "3:", "4:ccc"], "{target}");
            assert_eq!(lines_of(b"a\n", 10, target), ["1:a"]);
            assert!(lines_of(b"", 10, target).is_empty());
        }
    }

    #[test]
    fn oversize_lines_keep_a_prefix_and_their_size() {
        let long = "x".repeat(100);
        for target in [1, 16, 1 << 20] {
            let input = format!("ok\n{long}\nfine\n{long}");
            assert_eq!(
                lines_of(input.as_bytes(), 10, target),
                ["1:ok", "2:xxx!100", "3:fine", "4:xxx!100"],
                "{target}"
            );
        }
        // Exactly at the cap is fine; one over is not.
        assert_eq!(lines_of(b"0123456789\n0123456789a\n", 10, 4), ["1:0123456789", "2:012!11"]);
    }

    /// A chunk's buffer keeps its bytes when reused (they are not zeroed again), so what it holds must
    /// end where its last fill did: a short chunk after a long one shows none of the long one's bytes.
    #[test]
    fn a_reused_chunk_holds_only_what_was_read_into_it() {
        let input = format!("{}\nb\nc\n{}\nd", "a".repeat(50), "e".repeat(30));
        let mut r = LineReader::new(Trickle(input.as_bytes(), 4), 100, 3);
        let mut chunk = Chunk::default();
        let mut chunks = Vec::new();
        // A target of one byte: a chunk is the lines the last read completed.
        while r.next_chunk(&mut chunk, 1).unwrap() {
            let mut lines: Vec<u8> = Vec::new();
            for l in &chunk.lines {
                lines.extend_from_slice(chunk.bytes(l));
                lines.push(b'\n');
            }
            if !chunk.data().ends_with(b"\n") {
                lines.pop();
            }
            assert_eq!(chunk.data(), &lines[..]);
            chunks.push(String::from_utf8(chunk.data().to_vec()).unwrap());
        }
        assert_eq!(chunks.concat(), input);
        let sizes: Vec<usize> = chunks.iter().map(String::len).collect();
        assert!(sizes.len() >= 4 && sizes[1] < sizes[0], "a short chunk after a long one: {sizes:?}");
    }
}
