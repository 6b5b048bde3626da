//! The control log: every breaker transition and every webhook delivery outcome, appended and synced
//! before anything acts on it. It is two things at once:
//!
//! - **the outbox**: a transition is here before its first delivery attempt; a delivery without a
//!   terminal outcome (delivered, failed, disabled, refused) after it is still owed after a crash;
//! - **the breakers' durable state** in embedded mode: read back in order on start, the transitions put
//!   every halt back in force before the first event is judged.
//!
//! Layout: `<dir>/control.log`, records `len u32 | seq u64 | JSON of a ControlRecord [len] | crc32 u32`
//! (little-endian, the CRC over seq and JSON). `seq` numbers records from 1 and survives compaction: it
//! is the position the archive's `control/` files are named by. A torn record at the end (a crash mid-append, never acted on)
//! is cut off on open; a bad record before the end is an error, since what follows was acted on.
//! When the file passes `compact_bytes` on open it is rewritten (temporary file, fsync, rename) keeping
//! the last transition of each breaker, every transition still owed to an endpoint, and nothing else.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use vigil_schemas::rows::{ControlRecord, Transition};

const FILE: &str = "control.log";
/// The most processes that can share one archive root's control logs at once.
const MAX_SLOT: u32 = 63;

/// A control log that cannot be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The file system refused.
    #[error("the control log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the log.
    #[error("the control log {path} is in use by another vigil process")]
    Busy {
        /// The directory.
        path: PathBuf,
    },
    /// A record before the end is damaged: what followed it was acted on, so it cannot be skipped.
    #[error(
        "the control log {path} is damaged at byte {at}: {what} (records after it exist; restore it from a backup or the archive's control/ table)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where.
        at: u64,
        /// What is wrong.
        what: String,
    },
}

/// The log, open for appending; see the module docs.
#[derive(Debug)]
pub struct Outbox {
    /// Held for as long as the log is open: an exclusive `flock` on `<dir>/lock` (released by the OS
    /// when the process dies, however it dies).
    _lock: File,
    path: PathBuf,
    out: BufWriter<File>,
    /// The next record's number.
    next: u64,
}

/// What a log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every record with its number, oldest first.
    pub records: Vec<(u64, ControlRecord)>,
    /// Bytes of a torn last record cut off.
    pub torn_bytes: u64,
    /// Whether it was compacted.
    pub compacted: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_owned(), source }
}

fn encode(seq: u64, r: &ControlRecord, buf: &mut Vec<u8>) {
    let json = serde_json::to_vec(r).unwrap_or_default();
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&json);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&json);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
}

/// Bytes of a record besides its JSON.
const FRAME: u64 = 4 + 8 + 4;

/// Records with their numbers, the offset after the last good one, and the file's length.
type Read3 = (Vec<(u64, ControlRecord)>, u64, u64);

/// Reads every whole record; returns them and the offset after the last good one.
fn read_all(path: &Path) -> Result<Read3, OutboxError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let total = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::new(file);
    let mut records = Vec::new();
    let mut at = 0u64;
    loop {
        let mut len = [0u8; 4];
        let got = read_up_to(&mut r, &mut len).map_err(io_err(path))?;
        if got == 0 {
            break;
        }
        let torn = |what: &str| -> Result<Read3, OutboxError> {
            Err(OutboxError::Damaged { path: path.to_owned(), at, what: what.to_owned() })
        };
        if got < 4 {
            break;
        }
        let n = u32::from_le_bytes(len) as u64;
        if at + FRAME + n > total {
            // Runs past the end: a torn append.
            break;
        }
        let mut seq = [0u8; 8];
        r.read_exact(&mut seq).map_err(io_err(path))?;
        let mut json = vec![0u8; n as usize];
        r.read_exact(&mut json).map_err(io_err(path))?;
        let mut crc = [0u8; 4];
        r.read_exact(&mut crc).map_err(io_err(path))?;
        let last = at + FRAME + n == total;
        let mut want = crc32fast::Hasher::new();
        want.update(&seq);
        want.update(&json);
        if want.finalize() != u32::from_le_bytes(crc) {
            if last {
                break;
            }
            return torn("checksum mismatch");
        }
        match serde_json::from_slice::<ControlRecord>(&json) {
            Ok(rec) => records.push((u64::from_le_bytes(seq), rec)),
            Err(e) => return torn(&format!("not a control record: {e}")),
        }
        at += FRAME + n;
    }
    Ok((records, at, total))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The records a compaction keeps: the last transition of every breaker, and every transition (with
/// its outcomes so far) that some endpoint is still owed. `owed` says whether a transition is owed to
/// any endpoint given the outcomes recorded for it.
pub fn compacted(
    records: &[(u64, ControlRecord)],
    owed: impl Fn(&Transition, &HashSet<&str>) -> bool,
) -> Vec<(u64, ControlRecord)> {
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut done: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (i, (_, r)) in records.iter().enumerate() {
        match r {
            ControlRecord::Transition(t) => {
                last.insert(t.key(), i);
            }
            ControlRecord::Delivery(d) => {
                done.entry(d.transition_id.as_str()).or_default().insert(d.endpoint.as_str());
            }
        }
    }
    let none = HashSet::new();
    let keep: HashSet<usize> = last.into_values().collect();
    let mut kept_ids: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (i, (seq, r)) in records.iter().enumerate() {
        match r {
            ControlRecord::Transition(t) => {
                let ended = done.get(t.transition_id.as_str()).unwrap_or(&none);
                if keep.contains(&i) || owed(t, ended) {
                    kept_ids.insert(t.transition_id.as_str());
                    out.push((*seq, r.clone()));
                }
            }
            ControlRecord::Delivery(d) => {
                if kept_ids.contains(d.transition_id.as_str()) {
                    out.push((*seq, r.clone()));
                }
            }
        }
    }
    out
}

impl Outbox {
    /// Opens (or creates) the log in `dir` and reads it back. When it is over `compact_bytes`, it is
    /// rewritten with what [`compacted`] keeps, `owed` deciding what endpoints are still owed.
    pub fn open(
        dir: &Path,
        compact_bytes: u64,
        owed: impl Fn(&Transition, &HashSet<&str>) -> bool,
    ) -> Result<(Outbox, Recovered), OutboxError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let Ok(lock) = crate::lockfile::take(&lock_path).map_err(io_err(&lock_path))? else {
            return Err(OutboxError::Busy { path: dir.to_owned() });
        };
        let path = dir.join(FILE);
        let (mut records, good, total) = read_all(&path)?;
        let next = records.last().map_or(1, |(seq, _)| seq + 1);
        let mut rec = Recovered { torn_bytes: total - good, ..Recovered::default() };
        if total > compact_bytes {
            records = compacted(&records, owed);
            let tmp = dir.join(format!("{FILE}.tmp"));
            let mut buf = Vec::new();
            for (seq, r) in &records {
                encode(*seq, r, &mut buf);
            }
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&buf).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            rec.compacted = true;
        } else if rec.torn_bytes > 0 {
            let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
            f.set_len(good).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        if file.metadata().map_err(io_err(&path))?.len() == 0 {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        rec.records = records;
        Ok((Outbox { _lock: lock, path, out: BufWriter::new(file), next }, rec))
    }

    /// Opens the first control log under `base` that no other process holds: `base` itself (slot 0),
    /// then `base/slot-1`, `base/slot-2`, … Several processes sharing one archive root (Kafka members)
    /// each get a log of their own; a restarted one takes over a free slot and what it still owes.
    pub fn open_free_slot(
        base: &Path,
        compact_bytes: u64,
        owed: impl Fn(&Transition, &HashSet<&str>) -> bool + Copy,
    ) -> Result<(Outbox, Recovered, u32), OutboxError> {
        for slot in 0..=MAX_SLOT {
            let dir = if slot == 0 { base.to_owned() } else { base.join(format!("slot-{slot}")) };
            match Outbox::open(&dir, compact_bytes, owed) {
                Ok((log, rec)) => return Ok((log, rec, slot)),
                Err(OutboxError::Busy { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(OutboxError::Busy { path: base.to_owned() })
    }

    /// Appends records and makes them durable before returning; returns the first one's number (the
    /// rest follow in order).
    pub fn append(&mut self, records: &[ControlRecord]) -> Result<u64, OutboxError> {
        let first = self.next;
        if records.is_empty() {
            return Ok(first);
        }
        let mut buf = Vec::with_capacity(256 * records.len());
        for (i, r) in records.iter().enumerate() {
            encode(first + i as u64, r, &mut buf);
        }
        self.out.write_all(&buf).map_err(io_err(&self.path))?;
        self.out.flush().map_err(io_err(&self.path))?;
        self.out.get_ref().sync_data().map_err(io_err(&self.path))?;
        self.next += records.len() as u64;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::rows::{Action, Actor, BreakerState, Delivery, DeliveryOutcome, Mode, Rule};

    fn t(id: &str, agent: &str, action: Action) -> ControlRecord {
        ControlRecord::Transition(Transition {
            transition_id: id.into(),
            ts: 1,
            action,
            agent_id: Some(agent.into()),
            factor: None,
            value: None,
            agents: vec![],
            from: BreakerState::Closed,
            to: BreakerState::Open,
            mode: Mode::Enforce,
            actor: Actor::Rule(Rule::HardLimit),
            reason: "r".into(),
            evidence: Default::default(),
            finding_ids: vec![],
        })
    }

    fn done(id: &str) -> ControlRecord {
        ControlRecord::Delivery(DeliveryOutcome {
            transition_id: id.into(),
            endpoint: "gw".into(),
            ts: 2,
            outcome: Delivery::Delivered,
            attempts: 1,
            status: Some(200),
            detail: String::new(),
        })
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let owed = |_: &Transition, _: &HashSet<&str>| false;
        let (mut log, rec) = Outbox::open(dir.path(), u64::MAX, owed).unwrap();
        assert!(rec.records.is_empty());
        log.append(&[t("1", "a", Action::AgentHalt), done("1")]).unwrap();
        drop(log);
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        drop(f);
        let (_, rec) = Outbox::open(dir.path(), u64::MAX, owed).unwrap();
        assert_eq!((rec.records.len(), rec.torn_bytes), (2, 13));
        // A flipped byte in the first record, with a good one after it.
        let mut bytes = fs::read(&path).unwrap();
        bytes[14] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let err = Outbox::open(dir.path(), u64::MAX, owed).unwrap_err();
        assert!(matches!(err, OutboxError::Damaged { at: 0, .. }), "{err}");
    }

    #[test]
    fn a_log_held_by_one_process_sends_the_next_to_another_slot() {
        let dir = tempfile::tempdir().unwrap();
        let owed = |_: &Transition, _: &HashSet<&str>| false;
        let (_held, _, slot) = Outbox::open_free_slot(dir.path(), u64::MAX, owed).unwrap();
        assert_eq!(slot, 0);
        // flock is per open file description: a second open in this process is refused like another
        // process would be.
        assert!(matches!(Outbox::open(dir.path(), u64::MAX, owed), Err(OutboxError::Busy { .. })));
        let (_second, _, slot) = Outbox::open_free_slot(dir.path(), u64::MAX, owed).unwrap();
        assert_eq!(slot, 1);
        drop(_held);
        let (_again, _, slot) = Outbox::open_free_slot(dir.path(), u64::MAX, owed).unwrap();
        assert_eq!(slot, 0, "a released slot is taken again");
    }

    #[test]
    fn compaction_keeps_each_breakers_last_move_and_what_is_owed() {
        let dir = tempfile::tempdir().unwrap();
        let owed = |t: &Transition, ended: &HashSet<&str>| t.mode == Mode::Enforce && !ended.contains("gw");
        let (mut log, _) = Outbox::open(dir.path(), 0, owed).unwrap();
        log.append(&[
            t("1", "a", Action::AgentHalt),
            done("1"),
            t("2", "a", Action::AgentResume),
            done("2"),
            t("3", "b", Action::AgentHalt),
            t("4", "b", Action::AgentResume),
            done("4"),
        ])
        .unwrap();
        drop(log);
        let (_, rec) = Outbox::open(dir.path(), 0, owed).unwrap();
        assert!(rec.compacted);
        let ids: Vec<String> = rec
            .records
            .iter()
            .map(|(seq, r)| match r {
                ControlRecord::Transition(t) => format!("t{}@{seq}", t.transition_id),
                ControlRecord::Delivery(d) => format!("d{}@{seq}", d.transition_id),
            })
            .collect();
        // a: only its last move (delivered); b: its halt is still owed, then its last move.
        assert_eq!(ids, vec!["t2@3", "d2@4", "t3@5", "t4@6", "d4@7"], "numbers survive compaction");
        let (mut log, _) = Outbox::open(dir.path(), u64::MAX, owed).unwrap();
        assert_eq!(log.append(&[done("3")]).unwrap(), 8);
    }
}
