//! The intake journal: a local write-ahead log for sources that keep nothing themselves (an HTTP body is
//! gone once it is answered). Every item is appended with its position, the time it was received and
//! the verdict it was given, and the file is synced before the sender is answered; the archive then
//! flushes on its own schedule (rows or seconds), not once per answer, so a trickle of requests does not
//! make a trickle of tiny Parquet files. On restart, the items after the archive's checkpoint are read
//! back and judged again, as a file source is replayed from its checkpoint.
//!
//! Layout: `<dir>/<first position, 20 digits>.journal`, one segment per archive flush. A segment is
//! removed once the flush that covers it is durable. A record is
//! `len u32 | position u64 | received_ms i64 | verdict u8 | detail u64 | item [len] | crc32 u32`
//! (little-endian; the CRC covers everything before it). A torn record at the end of the last segment (a
//! crash mid-append, never answered) is cut off on open; a bad record anywhere else is an error, since
//! items after it were answered.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of a record besides its item.
const HEADER: usize = 4 + 8 + 8 + 1 + 8;
const TRAILER: usize = 4;
const EXTENSION: &str = "journal";

/// What an item was told when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Whitespace only: counted, not archived.
    Blank,
    /// A valid event.
    Accepted,
    /// Dead-lettered. `first_seen` is the position of the first copy when it was a duplicate.
    Refused {
        /// Source position of the event_id's first copy, for a duplicate; else 0.
        first_seen: u64,
    },
    /// Dead-lettered as over the event cap; the journal holds only the prefix its dead letter keeps.
    TooLarge {
        /// The item's full size in bytes.
        size: u64,
    },
}

/// One item read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its source position.
    pub position: u64,
    /// When it was received, UTC ms.
    pub received_ms: i64,
    /// What its sender was told.
    pub verdict: Verdict,
    /// The item's bytes, as received.
    pub item: Vec<u8>,
}

/// Appends to the current segment; see the module docs.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    segment: PathBuf,
    out: BufWriter<File>,
    /// Whether anything was appended to the current segment since it was opened.
    written: bool,
}

fn corrupt(path: &Path, at: u64, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what} at byte {at}", path.display()))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.{EXTENSION}"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        if let Some(first) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Reads one segment. A torn tail is cut off (and the file truncated to its last whole record) only
/// when `last` says this is the newest segment.
fn read_segment(path: &Path, last: bool, entries: &mut Vec<Entry>) -> io::Result<()> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut at = 0usize;
    while at < bytes.len() {
        match parse(&bytes[at..]) {
            Some((entry, used)) => {
                entries.push(entry);
                at += used;
            }
            None if last => {
                OpenOptions::new().write(true).open(path)?.set_len(at as u64)?;
                break;
            }
            None => return Err(corrupt(path, at as u64, "a damaged record")),
        }
    }
    Ok(())
}

fn parse(b: &[u8]) -> Option<(Entry, usize)> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    if b.len() < HEADER + TRAILER {
        return None;
    }
    let len = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let total = HEADER + len + TRAILER;
    if b.len() < total {
        return None;
    }
    let crc = u32::from_le_bytes(b[HEADER + len..total].try_into().unwrap());
    if crc32fast::hash(&b[..HEADER + len]) != crc {
        return None;
    }
    let verdict = match b[20] {
        0 => Verdict::Blank,
        1 => Verdict::Accepted,
        2 => Verdict::Refused { first_seen: u64_at(21) },
        3 => Verdict::TooLarge { size: u64_at(21) },
        _ => return None,
    };
    let entry = Entry {
        position: u64_at(4),
        received_ms: u64_at(12) as i64,
        verdict,
        item: b[HEADER..HEADER + len].to_vec(),
    };
    Some((entry, total))
}

impl Journal {
    /// Opens the journal in `dir` (created when missing) and reads back every item still in it, oldest
    /// first. Appends go to a new segment starting at `next`, the next position to hand out. The caller
    /// replays what it needs, makes that durable, then calls [`Journal::retire_before`].
    pub fn open(dir: &Path, next: u64) -> io::Result<(Journal, Vec<Entry>)> {
        fs::create_dir_all(dir)?;
        let found = segments(dir)?;
        let mut entries = Vec::new();
        for (i, path) in found.iter().enumerate() {
            read_segment(path, i + 1 == found.len(), &mut entries)?;
        }
        let next = entries.last().map_or(next, |e| next.max(e.position + 1));
        let segment = segment_path(dir, next);
        let out = BufWriter::with_capacity(1 << 20, File::create(&segment)?);
        Ok((Journal { dir: dir.to_owned(), segment, out, written: false }, entries))
    }

    /// Appends one item (buffered; [`Journal::sync`] makes it durable).
    pub fn append(
        &mut self,
        position: u64,
        received_ms: i64,
        verdict: Verdict,
        item: &[u8],
    ) -> io::Result<()> {
        let len = u32::try_from(item.len()).map_err(|_| io::Error::other("a journal item over 4 GiB"))?;
        let (code, detail) = match verdict {
            Verdict::Blank => (0u8, 0u64),
            Verdict::Accepted => (1, 0),
            Verdict::Refused { first_seen } => (2, first_seen),
            Verdict::TooLarge { size } => (3, size),
        };
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..12].copy_from_slice(&position.to_le_bytes());
        header[12..20].copy_from_slice(&received_ms.to_le_bytes());
        header[20] = code;
        header[21..29].copy_from_slice(&detail.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(item);
        self.out.write_all(&header)?;
        self.out.write_all(item)?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.written = true;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Closes the current segment (synced) and starts the next at position `next`; returns the closed
    /// segment, to be removed once the archive flush that covers it is durable. `None` when nothing was
    /// appended since the last rotation (the segment is reused).
    pub fn rotate(&mut self, next: u64) -> io::Result<Option<PathBuf>> {
        if !self.written {
            return Ok(None);
        }
        self.sync()?;
        let segment = segment_path(&self.dir, next);
        let out = BufWriter::with_capacity(1 << 20, File::create(&segment)?);
        let closed = std::mem::replace(&mut self.segment, segment);
        self.out = out;
        self.written = false;
        Ok(Some(closed))
    }

    /// Removes every segment older than the current one: their items are durable in the archive.
    pub fn retire_before_current(&self) -> io::Result<()> {
        for path in segments(&self.dir)? {
            if path != self.segment {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(j: &mut Journal, from: u64, n: u64) {
        for p in from..from + n {
            let verdict = match p % 4 {
                0 => Verdict::Refused { first_seen: p - 1 },
                1 => Verdict::Accepted,
                2 => Verdict::TooLarge { size: 1 << 30 },
                _ => Verdict::Blank,
            };
            j.append(p, 1_000 + p as i64, verdict, format!("item {p}").as_bytes()).unwrap();
        }
    }

    #[test]
    fn items_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, back) = Journal::open(dir.path(), 1).unwrap();
        assert!(back.is_empty());
        items(&mut j, 1, 5);
        let closed = j.rotate(6).unwrap().expect("something was written");
        items(&mut j, 6, 4);
        j.sync().unwrap();
        drop(j);
        let (j, back) = Journal::open(dir.path(), 1).unwrap();
        let positions: Vec<u64> = back.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..10).collect::<Vec<_>>());
        let verdicts: Vec<Verdict> = back[..4].iter().map(|e| e.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Accepted,
                Verdict::TooLarge { size: 1 << 30 },
                Verdict::Blank,
                Verdict::Refused { first_seen: 3 }
            ]
        );
        assert_eq!((back[3].received_ms, back[3].item.as_slice()), (1_004, &b"item 4"[..]));
        assert_eq!(closed, segment_path(dir.path(), 1));
        j.retire_before_current().unwrap();
        drop(j);
        let (_, back) = Journal::open(dir.path(), 10).unwrap();
        assert!(back.is_empty(), "{back:?}");
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 1).unwrap();
        items(&mut j, 1, 3);
        j.sync().unwrap();
        let segment = j.segment.clone();
        drop(j);
        // A crash mid-append: half a record at the end.
        let whole = fs::metadata(&segment).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&[7, 0, 0, 0, 9, 9]).unwrap();
        drop(f);
        let (j, back) = Journal::open(dir.path(), 1).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(fs::metadata(&segment).unwrap().len(), whole, "the torn tail is cut off");
        drop(j);
        // A flipped byte in an older segment is not a torn tail: items after it were answered.
        let mut bytes = fs::read(&segment).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        fs::write(&segment, bytes).unwrap();
        let err = Journal::open(dir.path(), 1).err().expect("damage is refused");
        assert!(err.to_string().contains("damaged record at byte 0"), "{err}");
    }
}
